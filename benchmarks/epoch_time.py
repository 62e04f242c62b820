"""Epoch time of the fast loader and of the bare training step (the floor) for each CPU thread count,
on the machine as it is and with competing busy processes; and the classic loader, for comparison.
On CUDA also the epoch train.py runs there: each step replayed as a CUDA graph (cuda_graph.py).

    python benchmarks/epoch_time.py [--data-dir DIR] [--device cpu] [--rounds 5]
    python benchmarks/epoch_time.py --device cuda --rounds 3   # adds the graph columns

Everything runs in this one process, interleaved round by round, from the same initial weights:
in each round, each condition (idle: the machine as it is; busy: one spinning process per spare
core, started and stopped by this script) times every thread count. The floor is train.py's own
train_one_epoch over batches sliced beforehand. On CUDA, "graph" is train_one_epoch with
train.train_step replayed by cuda_graph.GraphedStep over the
fast loader and "graph floor" over the sliced batches: one model, captured once before the rounds
(that first epoch is timed apart) and reset to the initial weights in place before each epoch, so the
graph replays throughout. It prints each one's fastest and median epoch, checks the targets of the
thread policy (train.THREADS) and, on CUDA, the graph's.

Why the threads matter: the matrices are small (64x784 by 784x64), so a second intra-op thread
gains little on an idle machine, and when another process takes a core every parallel region
waits for a thread the OS has descheduled.
"""
import argparse
import os
import statistics
import sys
import time

import torch
from torch.utils.data import DataLoader

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from machinery import cli  # noqa: E402
import competition  # noqa: E402
from machinery import cuda_graph  # noqa: E402
import data  # noqa: E402
from machinery import fast_mnist  # noqa: E402
import train  # noqa: E402
from model import Net  # noqa: E402

ROUNDS = 5  # interleaved repetitions


def time_epoch(batches, init_state, device):
    model = Net().to(device)
    model.load_state_dict(init_state)
    optimizer = torch.optim.SGD(model.parameters(), lr=train.LEARNING_RATE)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    train.train_one_epoch(model, batches, optimizer, device)  # ends in .item(): synchronised
    return time.perf_counter() - start


class GraphEpochs:
    """Timed epochs of train.train_step replayed as a CUDA graph (cuda_graph.GraphedStep) on one model: its
    graph, captured in the first epoch, replays in every later one, since the weights are reset in place
    (the same tensors) before each."""

    def __init__(self, init_state, device):
        self.init_state, self.device = init_state, device
        self.model = Net().to(device)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=train.LEARNING_RATE)
        self.graphed = cuda_graph.GraphedStep(train.train_step, device)

    def time(self, batches):
        self.model.load_state_dict(self.init_state)  # copied into the tensors the graph updates
        torch.cuda.synchronize(self.device)
        start = time.perf_counter()
        train.train_one_epoch(self.model, batches, self.optimizer, self.device, self.graphed)  # ends synchronised
        return time.perf_counter() - start


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=train.DATA_DIR,
                   help=f"folder that holds MNIST/raw/ (default: {train.DATA_DIR})")
    p.add_argument("--device", default="cpu", help="cpu, cuda, ... (default: cpu)")
    p.add_argument("--rounds", type=int, default=ROUNDS, help=f"interleaved rounds (default: {ROUNDS})")
    args = p.parse_args()
    try:
        device = cli.device(args.device)
        train_set = data.load_mnist(args.data_dir, train=True)
    except cli.UserError as e:
        sys.exit(f"error: {e}")

    def loader(kind):  # as data.build_loaders makes it
        classic = DataLoader(train_set, batch_size=train.BATCH_SIZE, shuffle=True,
                             generator=torch.Generator().manual_seed(train.SEED))
        return fast_mnist.loader_like(classic, device) if kind == "fast" else classic

    floor_batches = [(x.to(device), y.to(device)) for x, y in loader("fast")]
    torch.manual_seed(train.SEED)
    init_state = Net().state_dict()
    thread_counts = sorted({1, train.THREADS, os.cpu_count() or 1})
    conditions = {"idle": 0, "busy": competition.spare_cores()}
    epoch = {"fast": lambda: time_epoch(loader("fast"), init_state, device),
             "floor": lambda: time_epoch(floor_batches, init_state, device)}
    if device.type == "cuda":
        graph = GraphEpochs(init_state, device)
        epoch.update({"graph": lambda: graph.time(loader("fast")), "graph floor": lambda: graph.time(floor_batches)})
    times = {(c, t, kind): [] for c in conditions for t in thread_counts for kind in epoch}
    times["classic"] = []
    time_epoch(floor_batches, init_state, device)  # warm-up: first-call allocations, kernels
    if device.type == "cuda":
        capture_epoch = graph.time(floor_batches)  # warm-up steps, the capture, then replays
    for r in range(args.rounds):
        for condition, processes in conditions.items():
            with competition.busy(processes):
                for threads in thread_counts:
                    torch.set_num_threads(threads)
                    for kind, timed in epoch.items():
                        times[condition, threads, kind].append(timed())
                if condition == "idle":
                    torch.set_num_threads(train.THREADS)
                    times["classic"].append(time_epoch(loader("classic"), init_state, device))
        print(f"round {r + 1}/{args.rounds} done", flush=True)

    best = {k: min(v) for k, v in times.items()}
    med = {k: statistics.median(v) for k, v in times.items()}
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{os.cpu_count()} CPU cores"
    print(f"\ndevice {device} ({name}), torch {torch.__version__}, batch {train.BATCH_SIZE}, "
          f"{len(floor_batches)} batches/epoch, {args.rounds} rounds, busy = {conditions['busy']} spinning process(es)")
    print("condition  threads" + "".join(f"   {kind}: fastest  median" for kind in epoch) + "   (seconds per epoch)")
    for condition in conditions:
        for t in thread_counts:
            print(f"{condition:9s}  {t:7d}" + "".join(f"   {best[condition, t, kind]:{len(kind) + 9}.3f}  "
                                                      f"{med[condition, t, kind]:6.3f}" for kind in epoch))
    print(f"classic loader, idle, {train.THREADS} thread(s): "
          f"fastest {best['classic']:.3f}  median {med['classic']:.3f}")
    t = train.THREADS
    busy_vs_idle = med["busy", t, "fast"] / med["idle", t, "fast"]
    vs_best = med["idle", t, "fast"] / min(med["idle", n, "fast"] for n in thread_counts)
    print(f"\ntargets with THREADS = {t}:")
    print(f"  busy median / idle median        {busy_vs_idle:6.2f}  (<= 1.5)")
    print(f"  idle median / best thread count  {vs_best:6.2f}  (<= 1.10)")
    print(f"  classic / fast (idle, fastest)   {best['classic'] / best['idle', t, 'fast']:6.2f}  (>= 5)")
    print(f"  fast / floor (idle, fastest)     {best['idle', t, 'fast'] / best['idle', t, 'floor']:6.3f}  (<= 1.15)")
    if device.type == "cuda":
        graph_median = med["idle", t, "graph"]
        print(f"\nCUDA graph, idle, {t} thread(s) (first epoch, warm-up steps and capture: {capture_epoch:.3f} s):")
        print(f"  graph median                     {graph_median:6.3f}  (<= 0.12 s per epoch on an H200)")
        print(f"  fast / graph (medians)           {med['idle', t, 'fast'] / graph_median:6.2f}  "
              "(eager over graph; 1.06 / 0.073 = 14.5 measured before)")
        print(f"  graph / floor (medians)          {graph_median / med['idle', t, 'floor']:6.3f}  "
              "(graph over the eager floor)")
        print(f"  graph / graph floor (medians)    {graph_median / med['idle', t, 'graph floor']:6.2f}  "
              "(what the fast loader adds)")


if __name__ == "__main__":
    main()
