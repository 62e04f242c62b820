"""Epoch time of the classic loader, the fast loader, and the bare training step (the floor).

    python benchmarks/epoch_time.py [--data-dir DIR] [--device cpu] [--rounds 3]

All three run in this one process, interleaved round by round, from the same initial weights,
so a slower or busier machine moves them together. The ratios use each one's fastest round:
on a shared machine the slower rounds measure the neighbours (timeit's advice); the medians
are printed too. The floor is train.py's own train_one_epoch over batches sliced beforehand.
"""
import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import data  # noqa: E402
import train  # noqa: E402
from model import Net  # noqa: E402

ROUNDS = 5  # interleaved repetitions
BATCH_SIZE = train.BATCH_SIZE
SEED = train.SEED


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_epoch(batches, init_state, device):
    model = Net().to(device)
    model.load_state_dict(init_state)
    optimizer = torch.optim.SGD(model.parameters(), lr=train.LEARNING_RATE)
    sync(device)
    start = time.perf_counter()
    train.train_one_epoch(model, batches, optimizer, device)  # ends in .item(): synchronised
    return time.perf_counter() - start


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=train.DATA_DIR,
                   help=f"folder that holds MNIST/raw/ (default: {train.DATA_DIR})")
    p.add_argument("--device", default="cpu", help="cpu, cuda, ... (default: cpu)")
    p.add_argument("--rounds", type=int, default=ROUNDS, help=f"interleaved rounds (default: {ROUNDS})")
    args = p.parse_args()
    try:
        device = train.resolve_device(args.device)
        train_set = data.load_mnist(args.data_dir, train=True)
    except (train.ConfigError, data.DataError) as e:
        sys.exit(f"error: {e}")

    def loader(kind):
        return data.make_loader(train_set, BATCH_SIZE, True, torch.Generator().manual_seed(SEED), kind, device)

    floor_batches = [(x.to(device), y.to(device)) for x, y in loader("fast")]
    torch.manual_seed(SEED)
    init_state = Net().state_dict()
    time_epoch(floor_batches, init_state, device)  # warm-up: first-call allocations, kernels
    times = {"classic": [], "fast": [], "floor": []}
    for r in range(args.rounds):
        times["classic"].append(time_epoch(loader("classic"), init_state, device))
        times["fast"].append(time_epoch(loader("fast"), init_state, device))
        times["floor"].append(time_epoch(floor_batches, init_state, device))
        print(f"round {r + 1}/{args.rounds}: " + "  ".join(f"{k} {v[-1]:.3f}s" for k, v in times.items()), flush=True)
    best = {k: min(v) for k, v in times.items()}
    med = {k: statistics.median(v) for k, v in times.items()}
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{os.cpu_count()} CPU cores"
    print(f"\ndevice {device} ({name}), torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"batch {BATCH_SIZE}, {len(floor_batches)} batches/epoch, {args.rounds} rounds")
    for label, t in (("fastest", best), ("median", med)):
        print(f"{label:8s} epoch seconds: classic {t['classic']:.3f}  fast {t['fast']:.3f}  floor {t['floor']:.3f}"
              f"   classic/fast {t['classic'] / t['fast']:.2f}  fast/floor {t['fast'] / t['floor']:.3f}")
    print(f"targets: classic/fast >= 5 ({best['classic'] / best['fast']:.2f}), "
          f"fast/floor <= 1.15 ({best['fast'] / best['floor']:.3f})")


if __name__ == "__main__":
    main()
