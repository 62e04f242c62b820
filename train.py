"""Train the MNIST classifier: plain SGD on cross-entropy, test accuracy after every epoch.

    python train.py                       # the constants below
    python train.py --epochs 5 --device cpu
    python train.py --resume              # continue runs/model.pt up to EPOCHS

After every epoch it writes <out>/model.pt (atomically) and <out>/history.json; at the end
<out>/training_curves.png. Evaluate a checkpoint with evaluate.py.
"""
import argparse
import contextlib
import json
import math
import os
import pickle
import re
import signal
import sys
import time
import warnings

import torch
import torch.nn.functional as F

import data
from model import Net

EPOCHS = 30  # passes over the 60,000 training images (chosen from the curve in README.md)
BATCH_SIZE = 64  # images per SGD step
LEARNING_RATE = 0.01  # plain SGD, no momentum
SEED = 0  # initial weights and shuffle order
DATA_DIR = data.DATA_DIR  # holds MNIST/raw/; downloaded there on first use
OUT_DIR = "runs"  # model.pt, history.json, training_curves.png
DEVICE = "auto"  # auto (cuda, then mps, then cpu), cpu, cuda, cuda:N, mps
LOADER = "fast"  # fast (one tensor, indexed per batch) or classic (torchvision, per sample)


class ArgumentParser(argparse.ArgumentParser):
    def error(self, message):  # one line that says what to do, not the whole usage block
        self.exit(2, f"error: {message}; see python {self.prog} --help\n")


class ConfigError(Exception):
    """A hyperparameter or device that cannot be used."""


class CheckpointError(Exception):
    """A checkpoint that cannot be used: missing, damaged, unsafe, or of another model."""


def resolve_device(name):
    """torch.device for a --device value; 'auto' picks cuda, then mps, then cpu."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"unknown device {name!r}: use auto, cpu, cuda, cuda:N or mps")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: CUDA is not available here; use --device cpu or auto")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ConfigError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) here")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"--device {name}: MPS is not available here; use --device cpu or auto")
    return device


def check_hyperparameters(epochs, batch_size, lr, loader):
    if epochs < 1:
        raise ConfigError(f"epochs must be at least 1 (got {epochs})")
    if batch_size < 1:
        raise ConfigError(f"batch size must be at least 1 (got {batch_size})")
    if not (math.isfinite(lr) and lr > 0):
        raise ConfigError(f"learning rate must be a positive finite number (got {lr})")
    if loader not in data.LOADERS:
        raise ConfigError(f"unknown loader {loader!r}: use {' or '.join(data.LOADERS)}")


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
        confusion += torch.bincount(y * 10 + logits.argmax(1), minlength=100)
    confusion = confusion.view(10, 10).cpu()
    seen = confusion.sum().item()
    return total_loss.item() / seen, 100.0 * confusion.trace().item() / seen, confusion


def atomic_write(path, write):
    """Call write(binary_file) on a temporary file beside path, then rename it over path.

    A crash or Ctrl-C midway leaves the old file whole: os.replace is atomic on one filesystem.
    """
    tmp = f"{path}.{os.getpid()}.tmp"  # same folder, so the rename never crosses filesystems
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def deferred_interrupt():
    """Hold Ctrl-C until the block is done, then raise it: a save is never cut in half."""
    caught = []
    previous = signal.signal(signal.SIGINT, lambda *_: caught.append(True))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        raise KeyboardInterrupt


def load_checkpoint(path, device="cpu"):
    """The checkpoint dict, loaded with weights_only=True: tensors and plain values, never code."""
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such checkpoint file; train one with python train.py")
    try:
        with warnings.catch_warnings():  # torch warns about odd pickles before refusing them
            warnings.simplefilter("ignore")
            ckpt = torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as e:
        # The safe loader refuses anything beyond tensors and plain values, naming what it met.
        found = re.search(r"GLOBAL (\S+)", str(e))
        what = f"it would call {found.group(1)}" if found else "it holds more than plain tensors and values"
        raise CheckpointError(f"{path}: refused, {what}, and loading it could run that code; "
                              "use a checkpoint that train.py wrote") from None
    except Exception as e:
        raise CheckpointError(f"{path}: not a readable checkpoint, empty, truncated or of another "
                              f"format ({type(e).__name__}); train a new one or use another file") from None
    keys = ("model", "config", "epoch", "history")
    if not isinstance(ckpt, dict) or any(k not in ckpt for k in keys):
        raise CheckpointError(f"{path}: not a checkpoint of train.py (a dict with {', '.join(keys)})")
    return ckpt


def model_from_checkpoint(ckpt, path, device):
    model = Net()
    try:
        model.load_state_dict(ckpt["model"])
    except (RuntimeError, TypeError, AttributeError) as e:
        reason = str(e).strip().splitlines()[-1].strip() if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: weights of another architecture, not 784-64-10 ({reason})") from None
    return model.to(device)


def with_progress(batches, label, stream=sys.stderr, after=2.0):
    """Yield batches; on a terminal, show a batch counter once the epoch has taken `after` s."""
    if not stream.isatty():
        yield from batches
        return
    start, shown, total = time.perf_counter(), False, len(batches)
    for i, batch in enumerate(batches, 1):
        yield batch
        if i % 25 == 0 and time.perf_counter() - start > after:
            stream.write(f"\r{label}  batch {i}/{total}")
            stream.flush()
            shown = True
    if shown:
        stream.write("\r\033[K")
        stream.flush()


def new_figure(**kwargs):
    from matplotlib.figure import Figure  # no pyplot: never a window, works headless

    return Figure(layout="constrained", **kwargs)


def save_png(fig, path):
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))


def plot_history(history, config, path):
    """Loss and accuracy per epoch, train and test, saved as a PNG."""
    epochs = [h["epoch"] for h in history]
    fig = new_figure(figsize=(10, 4))
    loss_ax, acc_ax = fig.subplots(1, 2)
    for ax, key, label in ((loss_ax, "loss", "cross-entropy loss"), (acc_ax, "acc", "accuracy (%)")):
        ax.plot(epochs, [h[f"train_{key}"] for h in history], "o-", ms=3, label="train")
        ax.plot(epochs, [h[f"test_{key}"] for h in history], "o-", ms=3, label="test")
        ax.set_xlabel("epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"784-64-10 sigmoid MLP, SGD lr {config['lr']}, batch {config['batch_size']}, "
                 f"seed {config['seed']}, {len(history)} epochs")
    save_png(fig, path)


def epoch_line(h, epochs):
    width = len(str(epochs))
    return (f"epoch {h['epoch']:{width}d}/{epochs}  train loss {h['train_loss']:.4f} acc {h['train_acc']:.2f}%  "
            f"test loss {h['test_loss']:.4f} acc {h['test_acc']:.2f}%  {h['seconds']:.2f}s")


def parse_args(argv):
    p = ArgumentParser(description="Train the 784-64-10 MNIST classifier with SGD.")
    p.add_argument("--epochs", type=int, default=EPOCHS, help=f"train up to this epoch (default: {EPOCHS})")
    p.add_argument("--batch-size", type=int, default=BATCH_SIZE, help=f"training batch size (default: {BATCH_SIZE})")
    p.add_argument("--lr", type=float, default=LEARNING_RATE, help=f"SGD learning rate (default: {LEARNING_RATE})")
    p.add_argument("--seed", type=int, default=SEED, help=f"weights and shuffle seed (default: {SEED})")
    p.add_argument("--data-dir", default=DATA_DIR, help=f"folder that holds MNIST/raw/ (default: {DATA_DIR})")
    p.add_argument("--out", default=OUT_DIR, help=f"output folder (default: {OUT_DIR})")
    p.add_argument("--device", default=DEVICE, help=f"auto, cpu, cuda, cuda:N or mps (default: {DEVICE})")
    p.add_argument("--loader", default=LOADER, choices=data.LOADERS, help=f"data path (default: {LOADER})")
    p.add_argument("--resume", nargs="?", const="", metavar="CHECKPOINT",
                   help="continue a saved run up to --epochs, writing beside its checkpoint "
                        "(default checkpoint: <out>/model.pt)")
    p.add_argument("--no-plots", action="store_true", help="do not write training_curves.png")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    try:
        run(args)
    except (ConfigError, CheckpointError, data.DataError) as e:
        sys.exit(f"error: {e}")
    except KeyboardInterrupt:  # outside the epochs (those report what is saved themselves)
        print("\ninterrupted", file=sys.stderr)
        sys.exit(130)


def run(args):
    check_hyperparameters(args.epochs, args.batch_size, args.lr, args.loader)
    device = resolve_device(args.device)
    ckpt, ckpt_path = None, os.path.join(args.out, "model.pt")
    if args.resume is not None:
        ckpt_path = args.resume or ckpt_path
        ckpt = load_checkpoint(ckpt_path)
        if ckpt["epoch"] >= args.epochs:
            raise ConfigError(f"{ckpt_path} is at epoch {ckpt['epoch']} already; "
                              f"pass --epochs N with N > {ckpt['epoch']} to train further")
    out = os.path.dirname(ckpt_path) or "."

    train_loader, test_loader = data.build_loaders(args.data_dir, args.batch_size, args.seed, args.loader, device)
    torch.manual_seed(args.seed)
    model = model_from_checkpoint(ckpt, ckpt_path, device) if ckpt else Net().to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr)
    config = {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed,
              "loader": args.loader, "device": str(device)}
    history = []
    if ckpt is not None:
        try:
            optimizer.load_state_dict(ckpt["optimizer"])
            train_loader.generator.set_state(ckpt["generator"])
        except (KeyError, ValueError, RuntimeError, TypeError):
            raise CheckpointError(f"{ckpt_path}: has no usable optimizer or generator state to resume from") from None
        for group in optimizer.param_groups:
            group["lr"] = args.lr  # the command line wins over the saved learning rate
        history = list(ckpt["history"])
        print(f"resuming {ckpt_path} after epoch {ckpt['epoch']}/{args.epochs}")
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot make the output folder {out} ({e.strerror or e}); pass --out DIR") from None
    if not os.access(out, os.W_OK):
        raise ConfigError(f"cannot write into {out}; pass --out DIR")
    print(f"device {device}, loader {args.loader}, {len(train_loader.dataset):,} train / "
          f"{len(test_loader.dataset):,} test images")

    try:
        for epoch in range(len(history) + 1, args.epochs + 1):
            start = time.perf_counter()
            batches = with_progress(train_loader, f"epoch {epoch}/{args.epochs}")
            train_loss, train_acc = train_one_epoch(model, batches, optimizer, device)
            seconds = time.perf_counter() - start
            test_loss, test_acc, _ = evaluate(model, test_loader, device)
            if not (math.isfinite(train_loss) and math.isfinite(test_loss)):
                kept = f"{ckpt_path} keeps epoch {len(history)}" if history else "nothing was saved"
                sys.exit(f"error: the training loss became {train_loss} in epoch {epoch}; stopped, {kept}. "
                         "Lower the learning rate (--lr)")
            with deferred_interrupt():  # the checkpoint on disk and `history` move together
                history = history + [{"epoch": epoch, "train_loss": train_loss, "train_acc": train_acc,
                                      "test_loss": test_loss, "test_acc": test_acc, "seconds": seconds}]
                ckpt = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                        "generator": train_loader.generator.get_state(), "config": config,
                        "epoch": epoch, "history": history}
                atomic_write(ckpt_path, lambda f: torch.save(ckpt, f))
                atomic_write(os.path.join(out, "history.json"),
                             lambda f: f.write(json.dumps(history, indent=1).encode() + b"\n"))
            print(epoch_line(history[-1], args.epochs), flush=True)
    except KeyboardInterrupt:
        if not history:
            print("\ninterrupted: no epoch had finished, nothing was saved", file=sys.stderr)
            sys.exit(130)
        again = f"python train.py --resume {ckpt_path}"
        again += f" --epochs {args.epochs}" if args.epochs != EPOCHS else ""
        again += f" --data-dir {args.data_dir}" if args.data_dir != DATA_DIR else ""
        print(f"\ninterrupted: epoch {len(history)}/{args.epochs} is saved in {ckpt_path}; continue with: {again}",
              file=sys.stderr)
        sys.exit(130)
    if not args.no_plots:
        curves = os.path.join(out, "training_curves.png")
        plot_history(history, config, curves)
        print(f"saved {curves}")
    print(f"saved {ckpt_path} (epoch {len(history)}, test accuracy {history[-1]['test_acc']:.2f}%)")


if __name__ == "__main__":
    main()
