"""Evaluate a checkpoint saved by train.py on the 10,000 MNIST test images.

    python evaluate.py                       # the newest run's model.pt
    python evaluate.py runs/lr0.01-bs64/model.pt --no-plots
    python evaluate.py --image my_digit.png [more.jpg ...] [--save-input [DIR]] [--evidence [DIR]]

Prints the test loss and accuracy (train.py's own evaluate), per-digit recall, precision and F1,
and the confusion matrix; draws confusion_matrix.png, mistakes.png, mistakes_evidence.png (which
pixels pushed the network to each confident mistake) and hidden_units.png (what each hidden unit's
input weights look like) beside the checkpoint.
"""
import os
import sys

import torch

from machinery import checkpoint
from machinery import cli
import data
from machinery import evidence
from machinery import paths
from machinery import photo
from machinery import plots
from machinery import runs
from train import DATA_DIR, DEVICE, RUNS_DIR, THREADS, evaluate

PICTURES = ("confusion_matrix.png", "mistakes.png", "mistakes_evidence.png", "hidden_units.png")  # beside it
EXPLAINED = 12  # the most confident mistakes whose evidence mistakes_evidence.png shows


def class_metrics(confusion):
    """Per digit: (images, correct, recall %, precision %, F1 %) from a confusion matrix.

    Recall is the per-digit accuracy: of the images of digit d, the share classified d."""
    rows = []
    for d in range(confusion.shape[0]):
        correct, images, predicted = confusion[d, d].item(), confusion[d].sum().item(), confusion[:, d].sum().item()
        recall = 100.0 * correct / images if images else 0.0
        precision = 100.0 * correct / predicted if predicted else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        rows.append((images, correct, recall, precision, f1))
    return rows


def format_report(loss, confusion):
    correct, total = confusion.trace().item(), confusion.sum().item()
    lines = [f"test loss: {loss:.4f}", f"test accuracy: {100.0 * correct / total:.2f}% ({correct}/{total})", "",
             "digit  images  correct  recall  precision      F1   (recall: the digit's own accuracy)"]
    for d, (images, right, recall, precision, f1) in enumerate(class_metrics(confusion)):
        lines.append(f"{d:5d}  {images:6d}  {right:7d}  {recall:5.2f}%  {precision:8.2f}%  {f1:5.2f}%")
    lines += ["", "confusion matrix (rows: true digit, columns: predicted digit)",
              "      " + "".join(f"{d:6d}" for d in range(10))]
    lines += [f"{d:6d}" + "".join(f"{n:6d}" for n in row) for d, row in enumerate(confusion.tolist())]
    return "\n".join(lines)


def evaluate_keeping(model, loader, device):
    """train.py's evaluate, and the images, labels and probabilities the pictures need, from one
    pass over the test set: its batches are kept, then given to evaluate and to the model again."""
    batches = list(loader)
    loss, _, confusion = evaluate(model, batches, device)
    with torch.no_grad():
        probs = torch.cat([torch.softmax(model(x.to(device)), dim=1).cpu() for x, _ in batches])
    images, labels = torch.cat([x for x, _ in batches]).cpu(), torch.cat([y for _, y in batches]).cpu()
    return loss, confusion, images, probs, labels


def mistakes_evidence(model, images, probs, labels, device):
    """mistakes_evidence.png: what pushed the network to each of its most confident mistakes."""
    picked = plots.pick_mistakes(probs, labels, EXPLAINED).tolist()
    explained = [evidence.evidence(model, images[i].to(device)) for i in picked]
    return plots.mistakes_evidence([images[i] for i in picked], [pixels for _, _, pixels in explained],
                                   [labels[i].item() for i in picked], [a for a, _, _ in explained],
                                   [r for _, r, _ in explained])


def parse_args(argv):
    p = cli.ArgumentParser(description="Evaluate a train.py checkpoint on the MNIST test set.")
    p.add_argument("checkpoint", nargs="?", help=f"checkpoint file (default: the newest in {RUNS_DIR}/)")
    p.add_argument("--data-dir", help=f"folder that holds MNIST/raw/ (default: the run's own, else {DATA_DIR})")
    p.add_argument("--device", default=DEVICE, help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--no-plots", action="store_true",
                   help="do not draw confusion_matrix.png, mistakes.png and hidden_units.png")
    p.add_argument("--plots-dir", metavar="DIR", help="draw the pictures here (default: beside the checkpoint)")
    p.add_argument("--image", nargs="+", metavar="PATH", help="classify these photos or drawings of digits instead")
    p.add_argument("--evidence", nargs="?", const="", metavar="DIR",
                   help="with --image: save which pixels pushed toward the answer (red) or the runner-up (blue) "
                        "as NAME.evidence.png, in DIR or beside each")
    p.add_argument("--save-input", nargs="?", const="", metavar="DIR",
                   help="with --image: save the 28x28 image the model saw as NAME.mnist.png, in DIR or beside each")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if (args.save_input is not None or args.evidence is not None) and not args.image:
        raise cli.UserError(f"{'--save-input' if args.save_input is not None else '--evidence'} goes with "
                            "--image PATH ...")
    checkpoints = [p for p in args.image or [] if p.endswith(".pt")]
    if checkpoints:
        raise cli.UserError(f"{cli.shown(checkpoints[0])} looks like a checkpoint: name it before --image, as in "
                            f"python evaluate.py {cli.shown(checkpoints[0])} --image {cli.shown(args.image[0])}")
    torch.set_num_threads(THREADS)
    device = cli.device(args.device)
    path = args.checkpoint or runs.newest_checkpoint(RUNS_DIR)
    ckpt = checkpoint.load(path)
    model = checkpoint.model_from(ckpt, path, device)
    print(f"checkpoint {cli.shown(path)}: {checkpoint.describe(ckpt)}, epoch {ckpt['epoch']}, device {device}",
          *filter(None, [runs.data_py_changed(path)]), sep="\n")
    if args.image:
        return classify_images(model, args.image, device, args.save_input, args.evidence)
    folder = args.plots_dir or os.path.dirname(path) or "."
    hint = "pass --no-plots, or --plots-dir DIR for the pictures"
    # hidden_units.png reads fc1 and fc2 as model.py's Net makes them: another network gets the other three
    names = PICTURES if plots.has_hidden_units(model) else PICTURES[:3]
    if not args.no_plots and len(names) < len(PICTURES):
        print("hidden_units.png is not drawn: it shows fc1's weights from the 784 pixels to hidden units that "
              "fc2 takes to the 10 digits, as model.py's Net has them, and this network has no such fc1 and fc2")
    if not args.no_plots:
        runs.check_writable(folder, hint)
        for name in names:  # a picture of the user's own in the way is theirs: nothing is drawn over it
            paths.check_target(os.path.join(folder, name), "a picture", f"move it, or {hint}")  # a FIFO: no wait
            if os.path.lexists(os.path.join(folder, name)) and not plots.drawn_here(os.path.join(folder, name)):
                raise cli.UserError(f"{cli.shown(os.path.join(folder, name))} is not a picture evaluate.py drew, "
                                    f"so it stays as it is: move it, or {hint}")
    data_dir = args.data_dir or ckpt["config"].get("data_dir")
    if data_dir is None:
        data_dir = DATA_DIR
        print(checkpoint.data_unknown(path, DATA_DIR))
    loader = data.build_test_loader(data_dir, device=device)
    loss, confusion, images, probs, labels = evaluate_keeping(model, loader, device)
    print(format_report(loss, confusion))
    if not args.no_plots:
        for name in names:
            picture = (plots.confusion_matrix(confusion) if name == "confusion_matrix.png" else
                       plots.mistakes(images, probs, labels) if name == "mistakes.png" else
                       mistakes_evidence(model, images, probs, labels, device) if name == "mistakes_evidence.png"
                       else plots.hidden_units(model.fc1.weight, model.fc2.weight, checkpoint.described(ckpt["arch"]),
                                          ckpt["epoch"]))
            runs.write(os.path.join(folder, name), picture, hint)
            print(f"saved {cli.shown(os.path.join(folder, name))}")


def classify_images(model, paths, device, save_dir, evidence_dir=None):
    """One line per image; a file that cannot be read, or its pictures saved, gets an error line, the
    others go on, and the exit status is 1."""
    failed, saved = 0, set()
    for path in paths:
        try:
            small, x, note = photo.read_digit(path, transform=data.TRANSFORM)  # as the network was trained
            said = photo.summary(photo.classify(model, x, device)) + (f"  ({note})" if note else "")
            print(f"{cli.shown(path)}: {said}")
            if save_dir is not None:
                target = runs.unused_name(save_dir or os.path.dirname(path), os.path.basename(path), ".mnist.png",
                                          saved)
                runs.write(target, photo.png(small))
                print(f"  saved what the model saw: {cli.shown(target)}")
            if evidence_dir is not None:
                answer, runner_up, pixels = evidence.evidence(model, x.to(device))
                target = runs.unused_name(evidence_dir or os.path.dirname(path), os.path.basename(path),
                                          ".evidence.png", saved)
                runs.write(target, plots.evidence(x, pixels, answer, runner_up, os.path.basename(path)))
                print(f"  saved why {answer}, not {runner_up}: {cli.shown(target)}")
        except cli.UserError as e:
            failed += 1
            print(f"error: {cli.shown(path)}: {e}", file=sys.stderr)
    if failed:
        raise SystemExit(1)


if __name__ == "__main__":
    cli.run(main)
