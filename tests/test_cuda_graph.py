"""cuda_graph.py: its bookkeeping on the CPU with CUDA stood in for, against train.train_one_epoch bit for
bit, and that it records train.py's own train_step, edits included; where CUDA is present, the recorded
graph against the eager loop, and train.py's choice."""
import contextlib
import copy

import pytest
import torch

from machinery import cuda_graph
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


@pytest.fixture()
def threads():
    """train.py's thread count for the test (far quicker on a busy machine), the previous one after."""
    before = torch.get_num_threads()
    torch.set_num_threads(train.THREADS)
    yield
    torch.set_num_threads(before)


def test_binding_tells_when_a_graph_must_be_recorded_anew():
    model, optimizer = twins(torch.device("cpu"), lr=0.05)[0]
    bound = cuda_graph.binding(model, optimizer)
    model.load_state_dict(Net().state_dict())  # copies into the same tensors: the graph still holds
    assert cuda_graph.binding(model, optimizer) == bound
    optimizer.param_groups[0]["lr"] = 0.1  # baked into the recorded step: record anew
    assert cuda_graph.binding(model, optimizer) != bound
    optimizer.param_groups[0]["lr"] = 0.05
    assert cuda_graph.binding(model, optimizer) == bound
    model.fc1.weight = torch.nn.Parameter(model.fc1.weight.detach().clone())  # a weight tensor elsewhere
    assert cuda_graph.binding(model, optimizer) != bound
    momentum, momentum_optimizer = twins(torch.device("cpu"), lr=0.05)[0]
    momentum_optimizer = torch.optim.SGD(momentum.parameters(), lr=0.05, momentum=0.9)
    momentum(torch.zeros(2, 784)).sum().backward()
    momentum_optimizer.step()  # makes the momentum buffers the recorded step updates in place
    bound = cuda_graph.binding(momentum, momentum_optimizer)
    momentum_optimizer.load_state_dict(copy.deepcopy(momentum_optimizer.state_dict()))  # new buffers: anew
    assert cuda_graph.binding(momentum, momentum_optimizer) != bound


class StandIn:
    """For the CPU: a stream that orders nothing, and a "graph" whose replay runs the step eagerly and
    leaves its results in the outputs recorded, as a CUDA graph's replay does."""

    def __init__(self, step=None, outputs=None):
        self.step, self.outputs = step, outputs

    def wait_stream(self, other):
        pass

    def replay(self):
        for static, new in zip(self.outputs, self.step()):
            static.copy_(new)


@pytest.fixture()
def stand_in(monkeypatch):
    """CUDA's streams and graphs stood in for on the CPU; returns the list of (step, replays) recorded."""
    recorded = []

    def record(step, stream, device):
        entry = [step, 0]
        recorded.append(entry)

        def counted():
            entry[1] += 1
            return step()
        graph = StandIn(counted, [torch.zeros(()), torch.zeros((), dtype=torch.int64)])
        return graph, graph.outputs

    monkeypatch.setattr(torch.cuda, "Stream", lambda device: StandIn())
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device: StandIn())
    monkeypatch.setattr(torch.cuda, "stream", lambda stream: contextlib.nullcontext())
    monkeypatch.setattr(cuda_graph, "record", record)
    return recorded


def test_graphed_step_with_a_stand_in_graph_is_train_one_epoch_bit_for_bit(fake_mnist, stand_in, threads):
    """GraphedStep's own bookkeeping on the CPU (warm-up per batch size, static tensors, the last smaller
    batch, recording anew for a new lr), with the CUDA calls stood in for: a replay runs the step eagerly."""
    cpu = torch.device("cpu")
    (model, optimizer), (reference, ref_optimizer) = twins(cpu, lr=0.05)
    batches, ref_batches = loader(fake_mnist, 48, cpu), loader(fake_mnist, 48, cpu)  # 640 = 13 x 48 + 16
    graphed = cuda_graph.GraphedStep(train.train_step, cpu)
    for lr in (0.05, 0.05, 0.05, 0.05, 0.2):
        optimizer.param_groups[0]["lr"] = ref_optimizer.param_groups[0]["lr"] = lr
        sums = train.train_one_epoch(model, batches, optimizer, cpu, graphed)
        assert sums == train.train_one_epoch(reference, ref_batches, ref_optimizer, cpu), lr
        assert_same_bits(model, reference)
    # 48 recorded after three eager steps, 16 (one an epoch) in the fourth epoch, 48 again for lr 0.2
    assert [replays for _, replays in stand_in] == [4 * 13 - 3, 1, 13 - 3]


def test_the_graph_records_the_step_train_py_defines_as_edited(fake_mnist, tmp_path, stand_in, monkeypatch):
    """A learner's edit to train_step (here weight decay) is what the graph path replays: main() on the
    CPU, with the graph path forced and CUDA stood in for, ends where the eager loop with that edit ends."""
    def with_weight_decay(model, optimizer, x, y):
        sums = plain_step(model, optimizer, x, y)
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(0.99)
        return sums

    plain_step = train.train_step
    plain = train_run(fake_mnist, tmp_path / "plain", "--epochs", 2, "--batch-size", 48, "--no-cuda-graph")
    monkeypatch.setattr(train, "train_step", with_weight_decay)
    eager = train_run(fake_mnist, tmp_path / "eager", "--epochs", 2, "--batch-size", 48, "--no-cuda-graph")
    assert not stand_in
    monkeypatch.setattr(cuda_graph, "replayed", lambda step, device: cuda_graph.GraphedStep(step, device))
    graphed = train_run(fake_mnist, tmp_path / "graphed", "--epochs", 2, "--batch-size", 48)
    assert [step for step, _ in stand_in] and sum(replays for _, replays in stand_in) == 2 * 13 - 3
    assert_same_run(graphed, eager)
    assert not torch.equal(graphed["model"]["fc1.weight"], plain["model"]["fc1.weight"])


def test_a_step_that_cannot_be_recorded_runs_as_written_and_says_so(fake_mnist, tmp_path, stand_in, monkeypatch,
                                                                    capsys):
    """Adam without capturable=True refuses to be recorded (torch raises while capturing): the run goes on
    eagerly, bit for bit as --no-cuda-graph, with one line saying why."""
    def refused(step, stream, device):
        raise RuntimeError("Attempting CUDA graph capture of step() for an instance of Adam but param_groups' "
                           "capturable is False.")

    eager = train_run(fake_mnist, tmp_path / "eager", "--epochs", 2, "--no-cuda-graph")
    monkeypatch.setattr(cuda_graph, "record", refused)
    monkeypatch.setattr(cuda_graph, "replayed", lambda step, device: cuda_graph.GraphedStep(step, device))
    capsys.readouterr()
    graphed = train_run(fake_mnist, tmp_path / "graphed", "--epochs", 2)
    said = capsys.readouterr().out
    assert said.count("train_step runs as written, eagerly: it cannot be recorded as a CUDA graph (Attempting CUDA "
                      "graph capture of step() for an instance of Adam") == 1, said
    assert_same_run(graphed, eager)


def test_cpu_trains_train_step_as_written(fake_mnist, tmp_path, monkeypatch):
    def no_graph(step, device):
        raise AssertionError(f"a CUDA graph on {device}")

    monkeypatch.setattr(cuda_graph, "GraphedStep", no_graph)
    assert train_run(fake_mnist, tmp_path / "plain", "--epochs", 2, "--device", "cpu")["epoch"] == 2


@pytest.fixture()
def counted(monkeypatch):
    """How often GraphedStep recorded a graph and replayed one, from here on."""
    counts = {"captures": 0, "replays": 0}
    capture, replay = cuda_graph.GraphedStep.capture, torch.cuda.CUDAGraph.replay

    def counting_capture(self, *args):
        counts["captures"] += 1
        return capture(self, *args)

    def counting_replay(self):
        counts["replays"] += 1
        return replay(self)

    monkeypatch.setattr(cuda_graph.GraphedStep, "capture", counting_capture)
    monkeypatch.setattr(torch.cuda.CUDAGraph, "replay", counting_replay)
    return counts


def check_graph_against_eager(data_dir, batch_size, epochs, kind, counted):
    cuda = torch.device("cuda")
    (model, optimizer), (reference, ref_optimizer) = twins(cuda, lr=train.LEARNING_RATE)
    batches, ref_batches = loader(data_dir, batch_size, cuda, kind), loader(data_dir, batch_size, cuda, kind)
    full = len(batches.dataset) // batch_size
    assert len(batches.dataset) % batch_size, "the test needs a last smaller batch"
    graphed = cuda_graph.GraphedStep(train.train_step, cuda)
    for epoch in range(epochs):
        sums = train.train_one_epoch(model, batches, optimizer, cuda, graphed)
        assert sums == train.train_one_epoch(reference, ref_batches, ref_optimizer, cuda), epoch
    assert counted == {"captures": 1, "replays": epochs * full - cuda_graph.WARMUP_STEPS}  # the last batch eager
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
    graphed = cuda_graph.GraphedStep(train.train_step, cuda)
    for lr in (0.05, 0.05, 0.2):
        optimizer.param_groups[0]["lr"] = ref_optimizer.param_groups[0]["lr"] = lr
        assert train.train_one_epoch(model, batches, optimizer, cuda, graphed) == train.train_one_epoch(
            reference, ref_batches, ref_optimizer, cuda)
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
