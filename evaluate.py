"""Evaluate a checkpoint saved by train.py on the 10,000 MNIST test images.

    python evaluate.py                      # runs/model.pt
    python evaluate.py runs/model.pt --device cpu --no-plots
    python evaluate.py --image my_digit.png [more.jpg ...] [--save-input [DIR]]

Prints the test loss and accuracy (with train.py's own evaluate), per-class accuracy,
precision, recall and F1, and the confusion matrix; writes confusion_matrix.png and
mistakes.png next to the checkpoint. With --image, it classifies your own photos or scans of
digits instead, after turning each into an MNIST-style 28x28 image (data.load_digit_image).
"""
import os
import sys

import torch

import data
import train

CHECKPOINT = os.path.join(train.OUT_DIR, "model.pt")  # what train.py writes by default
DATA_DIR = train.DATA_DIR  # holds MNIST/raw/
DEVICE = train.DEVICE  # auto, cpu, cuda, cuda:N, mps
MISTAKES_SHOWN = 36  # the most confident mistakes, in a 6x6 grid


def class_metrics(confusion):
    """Per digit: (images, correct, recall %, precision %, F1 %) from a confusion matrix.

    Recall is the per-class accuracy: of the images of digit d, the share classified d.
    """
    rows = []
    for d in range(confusion.shape[0]):
        correct, images, predicted = confusion[d, d].item(), confusion[d].sum().item(), confusion[:, d].sum().item()
        recall = 100.0 * correct / images if images else 0.0
        precision = 100.0 * correct / predicted if predicted else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        rows.append((images, correct, recall, precision, f1))
    return rows


@torch.no_grad()
def predict(model, loader, device):
    """(probabilities (N, 10), labels (N,)) on the CPU, in the loader's order."""
    model.eval()
    probs, labels = [], []
    for x, y in loader:
        probs.append(torch.softmax(model(x.to(device)), dim=1).cpu())
        labels.append(y.cpu())
    return torch.cat(probs), torch.cat(labels)


def format_report(loss, confusion):
    correct, total = confusion.trace().item(), confusion.sum().item()
    lines = [f"test loss: {loss:.4f}", f"test accuracy: {100.0 * correct / total:.2f}% ({correct}/{total})", "",
             "digit  images  correct  accuracy  precision  recall      F1"]
    for d, (images, right, recall, precision, f1) in enumerate(class_metrics(confusion)):
        lines.append(f"{d:5d}  {images:6d}  {right:7d}  {recall:7.2f}%  {precision:8.2f}%  {recall:5.2f}%  {f1:5.2f}%")
    lines += ["", "confusion matrix (rows: true digit, columns: predicted digit)",
              "      " + "".join(f"{d:6d}" for d in range(10))]
    lines += [f"{d:6d}" + "".join(f"{n:6d}" for n in row) for d, row in enumerate(confusion.tolist())]
    return "\n".join(lines)


def plot_confusion(confusion, path):
    fig = train.new_figure(figsize=(6.5, 5.5))
    ax = fig.subplots()
    im = ax.imshow(confusion.numpy(), cmap="Blues")
    fig.colorbar(im, ax=ax, label="images")
    top = confusion.max().item()
    for t in range(10):
        for p in range(10):
            n = confusion[t, p].item()
            ax.text(p, t, str(n), ha="center", va="center", fontsize=8, color="white" if n > top / 2 else "black")
    ax.set_xticks(range(10))
    ax.set_yticks(range(10))
    ax.set_xlabel("predicted digit")
    ax.set_ylabel("true digit")
    acc = 100.0 * confusion.trace().item() / confusion.sum().item()
    ax.set_title(f"MNIST test confusion matrix, accuracy {acc:.2f}%")
    train.save_png(fig, path)


def plot_mistakes(images, probs, labels, path, shown=MISTAKES_SHOWN):
    """The most confident misclassified images, each titled true -> predicted (confidence)."""
    conf, pred = probs.max(dim=1)
    wrong = (pred != labels).nonzero().flatten()
    wrong = wrong[conf[wrong].argsort(descending=True)][:shown]
    cols = 6
    rows = max(1, (len(wrong) + cols - 1) // cols)
    fig = train.new_figure(figsize=(cols * 1.4, rows * 1.55 + 0.5))
    axes = fig.subplots(rows, cols, squeeze=False).flatten()
    for ax in axes:
        ax.axis("off")
    for ax, i in zip(axes, wrong.tolist()):
        ax.imshow(images[i].reshape(28, 28).cpu().numpy(), cmap="gray_r", vmin=0, vmax=255)
        ax.set_title(f"true {labels[i]} → {pred[i]}\n{100 * conf[i]:.0f}% sure", fontsize=8)
    fig.suptitle(f"{len(wrong)} most confident of {(pred != labels).sum()} mistakes on the test set")
    train.save_png(fig, path)


@torch.no_grad()
def classify_images(model, paths, device, save_dir=None):
    """Yield (path, top-3 [(digit, probability)], saved 28x28 path or None, error or None)."""
    model.eval()
    for path in paths:
        try:
            small, x = data.load_digit_image(path)
        except data.DataError as e:
            yield path, None, None, str(e)
            continue
        saved = None
        if save_dir is not None:
            stem = os.path.splitext(os.path.basename(path))[0]
            saved = os.path.join(save_dir or os.path.dirname(path), f"{stem}.mnist.png")
            try:
                small.save(saved)
            except OSError as e:
                yield path, None, None, f"cannot write {saved} ({e.strerror or e})"
                continue
        probs = torch.softmax(model(x[None].to(device)), dim=1)[0].cpu()
        top = probs.topk(3)
        yield path, list(zip(top.indices.tolist(), top.values.tolist())), saved, None


def parse_args(argv):
    p = train.ArgumentParser(description="Evaluate a train.py checkpoint on the MNIST test set.")
    p.add_argument("checkpoint", nargs="?", default=CHECKPOINT, help=f"checkpoint file (default: {CHECKPOINT})")
    p.add_argument("--data-dir", default=DATA_DIR, help=f"folder that holds MNIST/raw/ (default: {DATA_DIR})")
    p.add_argument("--device", default=DEVICE, help=f"auto, cpu, cuda, cuda:N or mps (default: {DEVICE})")
    p.add_argument("--no-plots", action="store_true", help="do not write confusion_matrix.png and mistakes.png")
    p.add_argument("--image", nargs="+", metavar="PATH", help="classify these photos or scans of digits instead")
    p.add_argument("--save-input", nargs="?", const="", metavar="DIR",
                   help="with --image: write the 28x28 image the model saw as NAME.mnist.png, "
                        "into DIR or beside each input")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    try:
        run(args)
    except (train.ConfigError, train.CheckpointError, data.DataError) as e:
        sys.exit(f"error: {e}")


def run(args):
    if args.save_input is not None and not args.image:
        raise train.ConfigError("--save-input goes with --image PATH ...")
    device = train.resolve_device(args.device)
    ckpt = train.load_checkpoint(args.checkpoint)
    model = train.model_from_checkpoint(ckpt, args.checkpoint, device)
    if args.image:
        return run_images(model, args.image, device, args.save_input)
    loader = data.build_test_loader(args.data_dir, device=device)
    print(f"checkpoint {args.checkpoint}: epoch {ckpt['epoch']}, device {device}")
    loss, _, confusion = train.evaluate(model, loader, device)
    print(format_report(loss, confusion))
    if not args.no_plots:
        folder = os.path.dirname(args.checkpoint) or "."
        probs, labels = predict(model, loader, device)
        for name, plot in (("confusion_matrix.png", lambda p: plot_confusion(confusion, p)),
                           ("mistakes.png", lambda p: plot_mistakes(loader.dataset.images, probs, labels, p))):
            plot(os.path.join(folder, name))
            print(f"saved {os.path.join(folder, name)}")



def run_images(model, paths, device, save_dir):
    if save_dir:
        try:
            os.makedirs(save_dir, exist_ok=True)
        except OSError as e:
            raise train.ConfigError(f"--save-input {save_dir}: cannot make that folder ({e.strerror or e})") from None
    failed = 0
    for path, top, saved, error in classify_images(model, paths, device, save_dir):
        if error:
            failed += 1
            print(f"error: {path}: {error}", file=sys.stderr)
            continue
        (digit, p), *_ = top
        print(f"{path}: {digit} ({100 * p:.1f}%)  top 3: " + ", ".join(f"{d} {100 * q:.1f}%" for d, q in top))
        if saved:
            print(f"  saved what the model saw: {saved}")
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
