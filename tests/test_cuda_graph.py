"""cuda_graph.py: the step it records, run eagerly on the CPU batch by batch, against train.train_one_epoch
bit for bit; where CUDA is present, the recorded graph against the eager loop, and train.py's choice."""
import contextlib
import copy

import pytest
import torch

import cuda_graph
import data
import train
from conftest import assert_same_run, train_run
from model import Net

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available here")


def twins(device, lr):
    """Two models with the same initial weights, each with its own plain SGD as train.py makes it."""
    torch.manual_seed(0)
    a = Net().to(device)
    b = copy.deepcopy(a)
    return (a, torch.optim.SGD(a.parameters(), lr=lr)), (b, torch.optim.SGD(b.parameters(), lr=lr))


def assert_same_bits(a, b):
    """Every weight of a and b the same, bit for bit (-0.0 and 0.0 told apart, as NaNs would be)."""
    for (key, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x.cpu().view(torch.int32), y.cpu().view(torch.int32)), key


def loader(data_dir, batch_size, device, kind="fast"):
    return data.build_loaders(data_dir, batch_size, seed=0, loader=kind, device=device)[0]


def stepwise_epoch(model, batches, optimizer):
    """GraphedEpoch's epoch without a graph: each full batch copied into static tensors and
    cuda_graph.sgd_step run on them, where the graph would replay it; a last smaller batch on its own."""
    model.train()
    total_loss, correct = torch.zeros(()), torch.zeros((), dtype=torch.int64)
    static_x = static_y = None
    seen = 0
    for x, y in batches:
        if static_x is None:
            static_x, static_y = torch.empty_like(x), torch.empty_like(y)
        if x.shape == static_x.shape:
            static_x.copy_(x)
            static_y.copy_(y)
            cuda_graph.sgd_step(model, optimizer, static_x, static_y, total_loss, correct)
        else:
            cuda_graph.sgd_step(model, optimizer, x, y, total_loss, correct)
        seen += len(y)
    return total_loss.item() / seen, 100.0 * correct.item() / seen


@pytest.fixture()
def threads():
    """train.py's thread count for the test (far quicker on a busy machine), the previous one after."""
    before = torch.get_num_threads()
    torch.set_num_threads(train.THREADS)
    yield
    torch.set_num_threads(before)


def check_stepwise_against_train_one_epoch(data_dir, batch_size, epochs):
    cpu = torch.device("cpu")
    (model, optimizer), (reference, ref_optimizer) = twins(cpu, lr=0.05)
    batches, ref_batches = loader(data_dir, batch_size, cpu), loader(data_dir, batch_size, cpu)
    assert len(batches.dataset) % batch_size, "the test needs a last smaller batch"
    for epoch in range(epochs):
        sums = stepwise_epoch(model, batches, optimizer)
        assert sums == train.train_one_epoch(reference, ref_batches, ref_optimizer, cpu), epoch
        if epoch == 0:
            bound = cuda_graph.binding(model, optimizer)
        assert cuda_graph.binding(model, optimizer) == bound  # the same weight and grad tensors throughout
    assert_same_bits(model, reference)


def test_the_recorded_step_run_eagerly_on_the_cpu_is_train_one_epoch_bit_for_bit(fake_mnist, threads):
    check_stepwise_against_train_one_epoch(fake_mnist, batch_size=48, epochs=3)  # 640 = 13 x 48 + 16


def test_the_recorded_step_on_real_mnist_is_train_one_epoch_bit_for_bit(real_mnist, threads):
    check_stepwise_against_train_one_epoch(real_mnist, batch_size=64, epochs=1)  # 60,000 = 937 x 64 + 32


def test_binding_tells_when_a_graph_must_be_captured_anew():
    model, optimizer = twins(torch.device("cpu"), lr=0.05)[0]
    model(torch.zeros(2, 784)).sum().backward()
    bound = cuda_graph.binding(model, optimizer)
    model.load_state_dict(Net().state_dict())  # copies into the same tensors: the graph still holds
    assert cuda_graph.binding(model, optimizer) == bound
    optimizer.param_groups[0]["lr"] = 0.1  # baked into the recorded step: capture anew
    assert cuda_graph.binding(model, optimizer) != bound
    optimizer.param_groups[0]["lr"] = 0.05
    optimizer.zero_grad()  # new grad tensors at the next backward: capture anew
    assert cuda_graph.binding(model, optimizer) != bound


class StandIn:
    """For the CPU: a stream that orders nothing, and a "graph" whose replay runs the step eagerly."""

    def __init__(self, step=None):
        self.step = step

    def wait_stream(self, other):
        pass

    def replay(self):
        self.step()


def test_graphed_epoch_with_a_stand_in_graph_is_train_one_epoch_bit_for_bit(fake_mnist, monkeypatch):
    """GraphedEpoch's own bookkeeping on the CPU (warm-up, static tensors, last batch, sums, capturing
    anew for a new lr), with the CUDA calls stood in for: a replay runs the recorded step eagerly."""
    recorded, replays = [], []

    def record(step, stream, device):
        recorded.append(step)
        return StandIn(lambda: replays.append(step()))

    monkeypatch.setattr(torch.cuda, "Stream", lambda device: StandIn())
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device: StandIn())
    monkeypatch.setattr(torch.cuda, "stream", lambda stream: contextlib.nullcontext())
    monkeypatch.setattr(cuda_graph, "record", record)
    cpu = torch.device("cpu")
    (model, optimizer), (reference, ref_optimizer) = twins(cpu, lr=0.05)
    batches, ref_batches = loader(fake_mnist, 48, cpu), loader(fake_mnist, 48, cpu)
    graphed = cuda_graph.GraphedEpoch(cpu)
    for lr in (0.05, 0.05, 0.05, 0.2):
        optimizer.param_groups[0]["lr"] = ref_optimizer.param_groups[0]["lr"] = lr
        sums = graphed(model, batches, optimizer, cpu)
        assert sums == train.train_one_epoch(reference, ref_batches, ref_optimizer, cpu), lr
        assert_same_bits(model, reference)
    assert len(recorded) == 2 and graphed.x.shape == (48, 1, 28, 28)  # 640 = 13 x 48 + 16
    assert len(replays) == 4 * 13 - 2 * cuda_graph.WARMUP_STEPS  # warm-up again after the new lr



def test_cpu_trains_train_one_epoch_as_written(fake_mnist, tmp_path, monkeypatch):
    def no_graph(device):
        raise AssertionError(f"a CUDA graph on {device}")

    monkeypatch.setattr(cuda_graph, "GraphedEpoch", no_graph)
    assert train_run(fake_mnist, tmp_path / "plain", "--epochs", 2, "--device", "cpu")["epoch"] == 2


def counted(monkeypatch):
    """How often GraphedEpoch captured a graph and replayed one, from here on."""
    counts = {"captures": 0, "replays": 0}
    capture, replay = cuda_graph.GraphedEpoch.capture, torch.cuda.CUDAGraph.replay

    def counting_capture(self, *args):
        counts["captures"] += 1
        return capture(self, *args)

    def counting_replay(self):
        counts["replays"] += 1
        return replay(self)

    monkeypatch.setattr(cuda_graph.GraphedEpoch, "capture", counting_capture)
    monkeypatch.setattr(torch.cuda.CUDAGraph, "replay", counting_replay)
    return counts


def check_graph_against_eager(data_dir, batch_size, epochs, kind, counted):
    cuda = torch.device("cuda")
    (model, optimizer), (reference, ref_optimizer) = twins(cuda, lr=train.LEARNING_RATE)
    batches, ref_batches = loader(data_dir, batch_size, cuda, kind), loader(data_dir, batch_size, cuda, kind)
    full = len(batches.dataset) // batch_size
    assert len(batches.dataset) % batch_size, "the test needs a last smaller batch"
    graphed = cuda_graph.GraphedEpoch(cuda)
    for epoch in range(epochs):
        sums = graphed(model, batches, optimizer, cuda)
        assert sums == train.train_one_epoch(reference, ref_batches, ref_optimizer, cuda), epoch
    assert counted == {"captures": 1, "replays": epochs * full - cuda_graph.WARMUP_STEPS}
    assert_same_bits(model, reference)


@needs_cuda
@pytest.mark.parametrize("kind", data.LOADERS)
def test_graph_epochs_give_the_eager_weights_and_sums(fake_mnist, kind, counted):
    check_graph_against_eager(fake_mnist, batch_size=48, epochs=3, kind=kind, counted=counted)


@needs_cuda
def test_graph_epochs_on_real_mnist_give_the_eager_weights_and_sums(real_mnist, counted):
    check_graph_against_eager(real_mnist, batch_size=64, epochs=3, kind="fast", counted=counted)


@needs_cuda
def test_a_changed_learning_rate_is_captured_anew(fake_mnist, counted):
    cuda = torch.device("cuda")
    (model, optimizer), (reference, ref_optimizer) = twins(cuda, lr=0.05)
    batches, ref_batches = loader(fake_mnist, 48, cuda), loader(fake_mnist, 48, cuda)
    graphed = cuda_graph.GraphedEpoch(cuda)
    for lr in (0.05, 0.05, 0.2):
        optimizer.param_groups[0]["lr"] = ref_optimizer.param_groups[0]["lr"] = lr
        assert graphed(model, batches, optimizer, cuda) == train.train_one_epoch(reference, ref_batches,
                                                                                  ref_optimizer, cuda)
    assert counted["captures"] == 2
    assert_same_bits(model, reference)


@needs_cuda
def test_train_py_replays_a_graph_on_cuda_and_resumes_with_a_new_lr_as_eager_does(fake_mnist, tmp_path, counted):
    flags = ["--device", "cuda", "--batch-size", 48]
    graph = tmp_path / "graph"
    train_run(fake_mnist, graph, "--epochs", 2, "--lr", 0.05, *flags)
    assert counted["captures"] == 1
    graph_run = train_run(fake_mnist, graph, "--epochs", 4, "--lr", 0.1, "--resume", *flags)
    assert counted["captures"] == 2  # a new process, or main(), captures with the lr it resumes with
    eager = tmp_path / "eager"
    train_run(fake_mnist, eager, "--epochs", 2, "--lr", 0.05, "--no-cuda-graph", *flags)
    eager_run = train_run(fake_mnist, eager, "--epochs", 4, "--lr", 0.1, "--resume", "--no-cuda-graph", *flags)
    assert counted["captures"] == 2
    assert [h["lr"] for h in graph_run["history"]] == [0.05, 0.05, 0.1, 0.1]
    assert_same_run(graph_run, eager_run)
