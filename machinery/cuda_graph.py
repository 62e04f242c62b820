"""train.py's own step, replayed on CUDA as a CUDA graph: recorded once, then launched per batch as one.

On a GPU the eager step waits on Python to launch ~20 tiny kernels per batch: an H200 took 1.06 s per
epoch eagerly and 0.073 s with the step replayed as a graph (measured with a throwaway script). The
graph records whatever train.train_step does (an edit there, such as clipping or weight decay, is
recorded too), and replays the same kernels on the same batches, so the weights come out bit for bit
as train_one_epoch's eager steps make them.

    step = replayed(train_step, device)  # train_step itself anywhere but on CUDA
    batch_loss, batch_correct = step(model, optimizer, x, y)  # as train_step(model, optimizer, x, y)
"""
import torch

WARMUP_STEPS = 3  # eager steps before a capture, as in PyTorch's CUDA graph notes; real steps, counted


def replayed(step, device):
    """`step` replayed as a CUDA graph on a CUDA device; `step` itself elsewhere."""
    return GraphedStep(step, device) if device.type == "cuda" else step


def binding(model, optimizer):
    """What a recorded step is tied to: where the weights and the optimizer's state (momentum, say) lie,
    and the optimizer's settings, which optimizer.step() handed its kernels as Python numbers."""
    state = [t.data_ptr() for s in optimizer.state.values() for t in s.values() if torch.is_tensor(t)]
    settings = [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]
    return [p.data_ptr() for p in model.parameters()], state, settings


class GraphedStep:
    """Called as train_step, with the same result. A batch of a size seen WARMUP_STEPS times already is
    copied into static input tensors and the step recorded for that size is replayed; until then (the
    first batches, a last smaller batch) the step runs eagerly. Those eager steps are the epoch's own
    steps, so warming up changes nothing that the eager loop would not.

    The recorded step keeps its own grads: with zero_grad() setting them to None, backward makes new
    ones inside the graph's memory, and optimizer.step() in the graph reads those."""

    def __init__(self, step, device):
        self.step, self.device = step, device
        self.stream = torch.cuda.Stream(device)  # warm-up and capture on a side stream (PyTorch's notes)
        self.graphs, self.seen, self.bound = {}, {}, None
        self.unrecordable = None  # why the step cannot be recorded: it then runs as written, eagerly

    def __call__(self, model, optimizer, x, y):
        if self.unrecordable:
            return self.step(model, optimizer, x, y)
        bound = binding(model, optimizer)
        if bound != self.bound:  # other weights, optimizer state or lr: what was recorded no longer fits
            self.graphs, self.seen, self.bound = {}, {}, bound
        size = (x.shape, y.shape)
        if size not in self.graphs and self.seen.get(size, 0) >= WARMUP_STEPS:
            try:
                self.graphs[size] = self.capture(model, optimizer, x, y)
            except RuntimeError as e:  # an optimizer that cannot be recorded (Adam without capturable=True), ...
                self.unrecordable = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
                print(f"train_step runs as written, eagerly: it cannot be recorded as a CUDA graph "
                      f"({self.unrecordable}); --no-cuda-graph says so from the start")
                return self.step(model, optimizer, x, y)
        if size not in self.graphs:
            self.seen[size] = self.seen.get(size, 0) + 1
            return self.eager(model, optimizer, x, y)
        graph, static_x, static_y, outputs = self.graphs[size]
        static_x.copy_(x, non_blocking=True)  # the batch into the graph's input tensors
        static_y.copy_(y, non_blocking=True)
        graph.replay()
        return outputs  # overwritten by the next replay: train_one_epoch adds them up at once

    def eager(self, model, optimizer, x, y):
        """The step, eagerly, on the side stream (where PyTorch asks to warm up), then joined back."""
        self.stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self.stream):
            outputs = self.step(model, optimizer, x, y)
        torch.cuda.current_stream(self.device).wait_stream(self.stream)
        return outputs

    def capture(self, model, optimizer, x, y):
        """(graph, static x, static y, the step's outputs): the step recorded on static tensors shaped
        like x and y. Recording runs nothing; the first replay takes this batch's step."""
        static_x, static_y = torch.empty_like(x), torch.empty_like(y)
        # optimizer.step() hands the learning rate to its kernels as a Python float, so the graph keeps the
        # lr it sees now; a changed lr changes binding(), and the next step records anew.
        graph, outputs = record(lambda: self.step(model, optimizer, static_x, static_y), self.stream, self.device)
        return graph, static_x, static_y, outputs


def record(step, stream, device):
    """(a CUDA graph of the GPU work step() launches, step()'s outputs); recording it runs nothing."""
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.device(device), torch.cuda.graph(graph, stream=stream):
        outputs = step()
    return graph, outputs
