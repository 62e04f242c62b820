"""Train the MNIST classifier with plain SGD; after every epoch, test it and save <run>/model.pt.

    python train.py                       # the constants below, into a new folder under runs/
    python train.py --lr 0.1 --epochs 5   # override a constant for one run
    python train.py --resume              # continue the newest run (its own settings)
    python train.py --dry-run             # one batch of each through the whole path, nothing kept

Edit freely: the network in model.py, the transform in data.py, the optimizer (momentum, Adam, a
scheduler) or the loss here. Each run keeps the lesson files it ran with in <run>/lesson/.
"""
import math
import os
import tempfile
import time

import torch
import torch.nn.functional as F

import data
from machinery import cli, cuda_graph, runs
from model import Net

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


def train_step(model, optimizer, x, y):
    """One SGD step on a batch; returns its summed loss and its number of right answers, as tensors."""
    logits = model(x)
    loss = F.cross_entropy(logits, y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.detach() * len(y), (logits.argmax(1) == y).sum()


def train_one_epoch(model, batches, optimizer, device, step=train_step, dry_run=False):
    """A step per batch (train_step, or on a GPU its CUDA graph); returns (mean loss, accuracy %)."""
    model.train()
    total_loss = torch.zeros((), device=device)  # on the device: read once an epoch, not synced every batch
    correct = torch.zeros((), dtype=torch.int64, device=device)
    seen = 0
    for x, y in batches:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        batch_loss, batch_correct = step(model, optimizer, x, y)
        total_loss += batch_loss
        correct += batch_correct
        seen += len(y)
        if dry_run:
            break
    return total_loss.item() / seen, 100.0 * correct.item() / seen


@torch.no_grad()
def evaluate(model, loader, device, dry_run=False):
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
        if dry_run:
            break
    confusion = confusion.view(10, 10).cpu()
    seen = confusion.sum().item()
    return total_loss.item() / seen, 100.0 * confusion.trace().item() / seen, confusion


def parse_args(argv=None):
    """The settings: the constants above, or a resumed run's own; a flag written now overrides either."""
    p = cli.ArgumentParser(description="Train the MNIST classifier of model.py with plain SGD.")
    p.add_argument("--epochs", type=cli.int_in(1, 10_000), default=EPOCHS, help="train up to this epoch")
    p.add_argument("--batch-size", type=cli.int_in(1, 2**31 - 1), default=BATCH_SIZE, help="images per step")
    p.add_argument("--lr", type=cli.learning_rate, default=LEARNING_RATE, help="SGD learning rate")
    p.add_argument("--seed", type=cli.int_in(0, 2**63 - 1), default=SEED, help="weights and shuffle seed")
    p.add_argument("--threads", type=cli.threads, default=THREADS, help="CPU threads, at most the CPUs there are")
    p.add_argument("--data-dir", default=DATA_DIR, help="folder that holds MNIST/raw/")
    p.add_argument("--out", metavar="DIR", help=f"write into exactly DIR (default: a new folder in {RUNS_DIR}/)")
    p.add_argument("--device", type=cli.device_name, default=DEVICE, help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--loader", type=cli.one_of(data.LOADERS), default=LOADER, help="fast or classic")
    p.add_argument("--resume", nargs="?", const="", metavar="CKPT", help="continue a run (default: the newest)")
    p.add_argument("--no-plots", action="store_true", help="do not draw training_curves.png")
    p.add_argument("--dry-run", action="store_true", help="one batch of each through the whole path, nothing kept")
    p.add_argument("--no-cuda-graph", dest="cuda_graph", action="store_false", default=CUDA_GRAPH,
                   help="on CUDA too, train_step as written (default: replayed as a CUDA graph)")
    p.set_defaults(resuming=[], runs_dir=RUNS_DIR)  # resuming: what a resumed run goes on from, said once locked
    args = p.parse_args(argv)
    if args.dry_run and (args.resume is not None or args.out):
        p.error("--dry-run checks a new run in a folder of its own: leave out --resume and --out")
    if args.dry_run:  # one epoch of one batch, into a folder of its own that is removed afterwards
        args.epochs, args.out = 1, tempfile.mkdtemp(prefix="dry-run-")
    if args.resume is not None:  # the run's saved settings become the defaults, checked as flags are
        args = runs.resumed_settings(p, argv, args, RUNS_DIR)
    return args


def main(argv=None):
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    auto = torch.accelerator.current_accelerator(check_available=True) or torch.device("cpu")  # CUDA, MPS, ... or CPU
    device = auto if args.device == "auto" else torch.device(args.device)
    model = Net().to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr)
    step = cuda_graph.replayed(train_step, device) if args.cuda_graph else train_step  # quicker, same bits
    config = {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed,
              "loader": args.loader, "threads": args.threads, "device": args.device, "data_dir": args.data_dir}
    with runs.Run(args, model, optimizer) as folder:  # a new folder in runs/, locked; Ctrl-C says what is saved
        ckpt = runs.resumed(args, model, optimizer) if args.resume else None  # checked against them, as built
        train_loader, test_loader = data.build_loaders(args.data_dir, args.batch_size, args.seed, args.loader, device)
        history = []
        if ckpt:  # go on exactly where the checkpoint stopped
            model.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
            train_loader.generator.set_state(ckpt["generator"])  # the shuffle
            torch.set_rng_state(ckpt["rng"])  # dropout's and augmentation's random numbers
            history = ckpt["history"]
        parameters = sum(p.numel() for p in model.parameters())
        print(f"run {folder}: {type(model).__name__} with {parameters:,} parameters, device {device}, threads "
              f"{torch.get_num_threads()}, loader {args.loader}, {len(train_loader.dataset):,} train / "
              f"{len(test_loader.dataset):,} test images", *args.resuming, sep="\n")
        for epoch in range(len(history) + 1, args.epochs + 1):  # a resumed run goes on after its last epoch
            start, lr = time.perf_counter(), optimizer.param_groups[0]["lr"]  # the rate this epoch trains with
            train_loss, train_acc = train_one_epoch(model, train_loader, optimizer, device, step, args.dry_run)
            seconds = time.perf_counter() - start
            test_loss, test_acc, _ = evaluate(model, test_loader, device, args.dry_run)
            if not (math.isfinite(train_loss) and math.isfinite(test_loss)):  # the weights are lost: keep the last
                raise SystemExit(f"error: the training loss became {train_loss:g} and the test loss {test_loss:g} in "
                                 f"epoch {epoch}: stopped without saving it, the epochs before stay as they were "
                                 "saved; lower the learning rate (--lr)")
            history.append({"epoch": epoch, "train_loss": train_loss, "train_acc": train_acc, "test_loss": test_loss,
                            "test_acc": test_acc, "seconds": seconds, "lr": float(lr), "batch_size": args.batch_size})
            checkpoint = {"model": model.state_dict(), "arch": str(model), "optimizer": optimizer.state_dict(),
                          "generator": train_loader.generator.get_state(), "rng": torch.get_rng_state(),
                          "config": config, "epoch": epoch, "history": history}
            path = os.path.join(folder, "model.pt")
            torch.save(checkpoint, path + ".tmp")
            os.replace(path + ".tmp", path)  # whole or not at all: a crash mid-save leaves the last epoch's
            print(f"epoch {epoch:{len(str(args.epochs))}d}/{args.epochs}  train loss {train_loss:.4f} acc "
                  f"{train_acc:.2f}%  test loss {test_loss:.4f} acc {test_acc:.2f}%  {seconds:.2f}s", flush=True)
        if not args.no_plots:
            print("saved", runs.save_curves(folder, history))
    if args.dry_run:  # the whole path ran; the folder went with the run
        return print(f"dry run: one batch of each through the whole path; {folder} removed")
    print(f"saved {os.path.join(folder, 'model.pt')} (epoch {len(history)}, "
          f"test accuracy {history[-1]['test_acc']:.2f}%)")


if __name__ == "__main__":
    cli.run(main)
