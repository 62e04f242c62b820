"""train.py's epoch on CUDA, with each SGD step recorded once as a CUDA graph and replayed per batch.

On a GPU the eager step waits on Python to launch ~20 tiny kernels per batch: an H200 took 1.06 s per
epoch eagerly and 0.073 s with the step replayed as a graph (measured with a throwaway script). What
stays identical to train.train_one_epoch: the steps (the same kernels, in the same order, on the same
batches), so the weights come out bit for bit the same, and so do the loss and accuracy sums.

    train_epoch = GraphedEpoch(device)  # then, as train_one_epoch:
    train_loss, train_acc = train_epoch(model, train_loader, optimizer, device)
"""
import torch
import torch.nn.functional as F

WARMUP_STEPS = 3  # eager steps before the capture, as in PyTorch's CUDA graph notes; real steps, counted


def sgd_step(model, optimizer, x, y, total_loss, correct):
    """train_one_epoch's step on the batch x, y, keeping its results in tensors that stay put: the grads
    (once the first step has made them) are zeroed in place, not replaced, since a graph replays into
    the addresses it recorded, and the batch's loss sum and correct count are added into total_loss and
    correct. Without a graph (a last smaller batch, the warm-up, the CPU in the tests) it is an ordinary
    eager step."""
    logits = model(x)
    loss = F.cross_entropy(logits, y)
    optimizer.zero_grad(set_to_none=False)  # backward then adds into zeros: 0 + grad, the grad's own value
    loss.backward()
    optimizer.step()
    total_loss += loss.detach() * len(y)
    correct += (logits.argmax(1) == y).sum()


def binding(model, optimizer):
    """What a captured step is tied to: where the weights and grads it updates in place lie, and the
    learning rates that optimizer.step() handed its kernels as Python floats."""
    params = list(model.parameters())
    return ([p.data_ptr() for p in params], [None if p.grad is None else p.grad.data_ptr() for p in params],
            [group["lr"] for group in optimizer.param_groups])


class GraphedEpoch:
    """Called as train.train_one_epoch, with the same result. Each full batch is copied into static input
    tensors and the recorded step replayed; a last smaller batch runs the same step eagerly, into the
    same grads and sums. The first WARMUP_STEPS full batches run eagerly too: they are the epoch's own
    first steps, so warming up changes nothing that the eager loop would not."""

    def __init__(self, device):
        self.device = device
        self.stream = torch.cuda.Stream(device)  # warm-up, and capture, on a side stream (PyTorch's notes)
        self.total_loss = torch.zeros((), device=device)  # the sums the graph adds into: made once
        self.correct = torch.zeros((), dtype=torch.int64, device=device)
        self.graph, self.warmed_up = None, 0

    def __call__(self, model, batches, optimizer, device):
        model.train()
        self.total_loss.zero_()
        self.correct.zero_()
        full, seen = None, 0
        for x, y in batches:
            if full is None:  # a DataLoader's batches all have the first one's size, but the last
                full = x.shape
                if self.graph is not None and (full != self.x.shape or binding(model, optimizer) != self.bound):
                    self.graph, self.warmed_up = None, 0  # other weights, grads, lr or batch size: capture anew
            if x.shape != full:  # the last, smaller batch: eagerly, into the same grads and sums
                self.eager_step(model, optimizer, x, y)
            elif self.graph is None and self.warmed_up < WARMUP_STEPS:
                self.eager_step(model, optimizer, x, y)
                self.warmed_up += 1
            else:
                if self.graph is None:
                    self.capture(model, optimizer, x, y)
                self.x.copy_(x, non_blocking=True)  # the batch into the graph's input tensors
                self.y.copy_(y, non_blocking=True)
                self.graph.replay()
            seen += len(y)
        return self.total_loss.item() / seen, 100.0 * self.correct.item() / seen

    def eager_step(self, model, optimizer, x, y):
        """sgd_step, eagerly, on the side stream (where PyTorch asks to warm up), then joined back."""
        x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        self.stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self.stream):
            sgd_step(model, optimizer, x, y, self.total_loss, self.correct)
        torch.cuda.current_stream(self.device).wait_stream(self.stream)

    def capture(self, model, optimizer, x, y):
        """Record sgd_step on static input tensors shaped like x, y. The grads exist already (made by the
        warm-up), so the graph zeroes and fills those same tensors, as the last smaller batch does."""
        self.x = torch.empty_like(x, device=self.device)
        self.y = torch.empty_like(y, device=self.device)
        # optimizer.step() hands the learning rate to its kernels as a Python float, so the graph keeps
        # the lr it sees now. train.py captures in the first epoch it trains, after main() has set the lr
        # for good (a --lr given when resuming included); an lr changed later makes the next epoch
        # capture anew (binding). Plain SGD has no step count or state: no `capturable` needed.
        self.graph = record(lambda: sgd_step(model, optimizer, self.x, self.y, self.total_loss, self.correct),
                            self.stream, self.device)
        self.bound = binding(model, optimizer)


def record(step, stream, device):
    """A CUDA graph of the GPU work step() launches; recording it runs nothing."""
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.device(device), torch.cuda.graph(graph, stream=stream):
        step()
    return graph
