"""Train the MNIST classifier: plain SGD on cross-entropy, test accuracy after every epoch.

    python train.py                       # the constants below, into a new folder under runs/
    python train.py --lr 0.1 --epochs 5   # override a constant for one run
    python train.py --resume              # continue the newest run (its own settings)

After every epoch it saves <run>/model.pt and <run>/history.json; at the end it draws
<run>/training_curves.png. Evaluate a checkpoint with evaluate.py, compare runs with compare.py.
"""
import cli  # first, before torch (seconds to import): Ctrl-C during that import ends in one line

import argparse
import math
import time

import torch
import torch.nn.functional as F

import cuda_graph
import data
import plots
import runs
from model import Net, architecture

EPOCHS = 30  # passes over the 60,000 training images (chosen from the curve in README.md)
BATCH_SIZE = 64  # images per SGD step
LEARNING_RATE = 0.01  # plain SGD, no momentum
SEED = 0  # initial weights and shuffle order
THREADS = 1  # CPU threads: as fast as 2 on an idle machine, far faster on a busy one (docs/robustness.md)
DATA_DIR = "data"  # holds MNIST/raw/; downloaded there on first use
RUNS_DIR = "runs"  # each run gets a folder of its own in here, unless --out names one
DEVICE = "auto"  # auto (CUDA, MPS, ... when there is one, else cpu), cpu, cuda, cuda:N, mps
LOADER = "fast"  # fast (one tensor, indexed per batch) or classic (torchvision, per sample)
CUDA_GRAPH = True  # on CUDA: each step replayed as one CUDA graph (cuda_graph.py), same weights, far quicker


def train_one_epoch(model, batches, optimizer, device):
    """One SGD pass; returns (mean loss, accuracy %) over the batches as they were trained on."""
    model.train()
    # Sums stay on the device: reading them once per epoch avoids a sync per batch on a GPU.
    total_loss = torch.zeros((), device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    seen = 0
    for x, y in batches:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total_loss += loss.detach() * len(y)
        correct += (logits.argmax(1) == y).sum()
        seen += len(y)
    return total_loss.item() / seen, 100.0 * correct.item() / seen


@torch.no_grad()
def evaluate(model, loader, device):
    """(mean loss, accuracy %, 10x10 confusion matrix with rows true and columns predicted)."""
    model.eval()
    total_loss = torch.zeros((), device=device)
    confusion = torch.zeros(100, dtype=torch.int64, device=device)
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        logits = model(x)
        total_loss += F.cross_entropy(logits, y, reduction="sum")
        # cell (true digit, predicted digit) is number y * 10 + prediction: one count for the whole batch
        confusion += torch.bincount(y * 10 + logits.argmax(1), minlength=100)
    confusion = confusion.view(10, 10).cpu()
    seen = confusion.sum().item()
    return total_loss.item() / seen, 100.0 * confusion.trace().item() / seen, confusion


def epoch_line(h, epochs):
    width = len(str(epochs))
    return (f"epoch {h['epoch']:{width}d}/{epochs}  train loss {h['train_loss']:.4f} acc {h['train_acc']:.2f}%  "
            f"test loss {h['test_loss']:.4f} acc {h['test_acc']:.2f}%  {h['seconds']:.2f}s")


def parse_args(argv, saved=None, saved_in=None):
    """(settings, the flags written on the command line). When resuming, the run's `saved` settings
    are the defaults, checked as flags are, and only a flag written now overrides one."""
    p = cli.ArgumentParser(description="Train the MNIST classifier of model.py with plain SGD.", saved_in=saved_in)
    p.add_argument("--epochs", type=cli.int_in(1, 10_000), default=EPOCHS, help="train up to this epoch")
    p.add_argument("--batch-size", type=cli.int_in(1, 2**31 - 1), default=BATCH_SIZE, help="images per step")
    p.add_argument("--lr", type=cli.learning_rate, default=LEARNING_RATE, help="SGD learning rate")
    p.add_argument("--seed", type=cli.int_in(0, 2**63 - 1), default=SEED, help="weights and shuffle seed")
    p.add_argument("--threads", type=cli.int_in(1, 1024), default=THREADS, help="CPU threads")
    p.add_argument("--data-dir", default=DATA_DIR, help="folder that holds MNIST/raw/")
    p.add_argument("--out", default=RUNS_DIR, metavar="DIR",
                   help=f"write into exactly DIR (default: a new folder in {RUNS_DIR}/)")
    p.add_argument("--device", default=DEVICE, help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--loader", default=LOADER, type=cli.one_of(data.LOADERS), help="fast or classic")
    p.add_argument("--resume", nargs="?", const="", metavar="CHECKPOINT",
                   help="continue a run with its own settings (default: the newest run in --out)")
    p.add_argument("--no-plots", action="store_true", help="do not draw training_curves.png")
    p.add_argument("--cuda-graph", action=argparse.BooleanOptionalAction, default=CUDA_GRAPH,
                   help="on CUDA, replay each step as a CUDA graph; --no-cuda-graph: train_one_epoch as written")
    if saved:  # argparse checks a default given as text with the flag's own type
        p.set_defaults(**{key: str(value) for key, value in saved.items() if p.get_default(key) is not None})
    return p.parse_args(argv), cli.explicit_flags(p, argv)


def main(argv=None):
    args, given = parse_args(argv)
    ckpt = None
    if args.resume is not None:  # go on with the run's own settings, unless a flag says otherwise
        ckpt, path, folder, changes = runs.resume(args, given)
        args, _ = parse_args(argv, saved=ckpt["config"], saved_in=path)  # the saved settings as defaults
        args.resume, args.out = path, folder
        print(f"resuming {path} after epoch {ckpt['epoch']}/{args.epochs}", *changes, sep="\n")
    torch.set_num_threads(args.threads)
    device = cli.device(args.device)
    train_loader, test_loader = data.build_loaders(args.data_dir, args.batch_size, args.seed, args.loader, device)

    torch.manual_seed(args.seed)
    model = Net().to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr)
    history = []
    if ckpt:  # the weights, optimizer and shuffle order as the checkpoint left them
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        optimizer.param_groups[0]["lr"] = args.lr  # a --lr written now wins over the saved one
        train_loader.generator.set_state(ckpt["generator"])
        history = ckpt["history"]
    config = {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed,
              "loader": args.loader, "threads": args.threads, "device": args.device, "data_dir": args.data_dir}
    arch = architecture(model)
    # A new folder under runs/ named after the settings (or exactly --out, or the resumed run's own)
    with runs.Run(args.out, config, arch, exact="out" in given, continues=args.resume) as run:
        print(f"run {run.folder}: {arch}, device {device}, threads {torch.get_num_threads()}, "
              f"loader {args.loader}, {len(train_loader.dataset):,} train / {len(test_loader.dataset):,} test images")
        graphed = args.cuda_graph and device.type == "cuda"  # the same steps, replayed quicker on a GPU
        train_epoch = cuda_graph.GraphedEpoch(device) if graphed else train_one_epoch
        for epoch in range(len(history) + 1, args.epochs + 1):
            start = time.perf_counter()
            train_loss, train_acc = train_epoch(model, train_loader, optimizer, device)
            seconds = time.perf_counter() - start
            test_loss, test_acc, _ = evaluate(model, test_loader, device)
            if not (math.isfinite(train_loss) and math.isfinite(test_loss)):
                raise cli.UserError(f"the training loss became {train_loss} in epoch {epoch}; stopped, {run.kept()}. "
                                    "Lower the learning rate (--lr)")
            history.append({"epoch": epoch, "train_loss": train_loss, "train_acc": train_acc, "test_loss": test_loss,
                            "test_acc": test_acc, "seconds": seconds, "lr": args.lr, "batch_size": args.batch_size})
            run.save({"model": model.state_dict(), "arch": arch, "optimizer": optimizer.state_dict(),
                      "generator": train_loader.generator.get_state(), "config": config, "epoch": epoch,
                      "history": history})  # torch.save into a temporary file, then renamed: never half-written
            print(epoch_line(history[-1], args.epochs), flush=True)
        if not args.no_plots:
            print("saved", run.write("training_curves.png", plots.training_curves(history, arch, args.seed)))
    print(f"saved {run.model_path} (epoch {len(history)}, test accuracy {history[-1]['test_acc']:.2f}%)")


if __name__ == "__main__":
    cli.run(main)
