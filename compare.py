"""Compare training runs: a table of what differs and how each did, and one picture of them all.

    python compare.py                          # every run in runs/
    python compare.py runs/lr0.01-bs64 runs/lr0.1-bs64

Prints one row per run (the settings that differ between the runs, the last and the best test
accuracy with the epoch of each, the seconds of its training passes summed) and draws
runs/compare.png: test accuracy and loss per epoch. --out x.svg (or .jpg, .pdf, ...) draws that format.
A folder that is not a run, or holds a damaged checkpoint, is skipped with one line. Each lesson file
(model.py, data.py, train.py) that differs between the runs gets a line saying which ran which.
"""
import argparse
import os
import sys

from machinery import checkpoint
from machinery import cli
from machinery import paths
from machinery import plots
from machinery import runs
from train import RUNS_DIR

SETTINGS = ("arch", "lr", "batch_size", "seed", "loader")  # what a label may name
# A history records each epoch's training pass only (train.py's `seconds`): the test pass, start-up
# and saving run outside that clock, so the sum is less than the run took, and says so.
TABLE_NOTE = ("acc @ N: the test accuracy after epoch N\n"
              "train s: the epochs' training passes summed, without tests, start-up or saving (not the wall time)")


def read_runs(folders):
    """([(folder, settings, history)], [one line per folder skipped])."""
    found, skipped = [], []
    for folder in folders:
        path = os.path.join(folder, "model.pt")
        if not folder.isprintable():  # a newline or an escape in its name would reach the terminal
            skipped.append(f"skipped {cli.shown(folder)}: a name with control characters in it")
            continue
        if not os.path.isfile(path):
            skipped.append(f"skipped {cli.shown(folder)}: no model.pt, not a run")
            continue
        try:
            ckpt = checkpoint.load(path)
        except cli.UserError as e:
            skipped.append(f"skipped {cli.shown(folder)}: {e}")
            continue
        history = ckpt["history"]
        settings = {"arch": checkpoint.described(ckpt["arch"]), "lr": plots.schedule(history, "lr"),
                    "batch_size": plots.schedule(history, "batch_size"),
                    "seed": ckpt["config"]["seed"], "loader": ckpt["config"]["loader"]}
        found.append((folder, settings, history))
    return found, skipped


def labels(found, differing):
    """What tells each run apart, e.g. 'lr 0.1, batch 32'; the folder's name where that is not enough."""
    names = {"batch_size": "batch", "arch": ""}
    said = [", ".join(f"{names.get(k, k)} {s[k]}".strip() for k in differing) for _, s, _ in found]
    return [text if text and said.count(text) == 1 else f"{os.path.basename(folder)}{': ' + text if text else ''}"
            for text, (folder, _, _) in zip(said, found)]


def table(found, differing):
    """The runs side by side, then a line on what the numbers measure."""
    header = ["run"] + [k.replace("_", " ") for k in differing] + ["last test acc", "best test acc", "train s"]
    rows = []
    for folder, settings, history in found:
        best = max(history, key=lambda h: h["test_acc"])  # the first epoch that reached it
        rows.append([folder] + [str(settings[k]) for k in differing]
                    + [f"{history[-1]['test_acc']:.2f}% @ {history[-1]['epoch']}",
                       f"{best['test_acc']:.2f}% @ {best['epoch']}", f"{sum(h['seconds'] for h in history):.1f}"])
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in [header] + rows]
    return "\n".join(lines + [TABLE_NOTE])


def lesson_differences(found):
    """A line for each lesson file (model.py, data.py, train.py) that is not the same in every run that
    kept its lesson: which runs ran which version of it."""
    kept = {folder: runs.lesson_kept(folder) for folder, _, _ in found}
    kept = {folder: files for folder, files in kept.items() if files}
    lines = []
    for name in runs.LESSON:
        versions = {}
        for folder, files in kept.items():
            versions.setdefault(files.get(name), []).append(folder)
        if len(versions) > 1:
            groups = " | ".join(", ".join(folders) for folders in versions.values())
            lines.append(f"{name}: {len(versions)} versions among the runs ({groups}; diff their lesson/{name})")
    return lines


def picture_file(text):
    """An argparse type: a file name whose suffix names a format plots.py writes."""
    if os.path.splitext(text)[1][1:].lower() not in plots.FORMATS:
        raise argparse.ArgumentTypeError(f"'{cli.shown(text)}' does not end in a picture format compare.py writes: "
                                         f"use .{', .'.join(plots.FORMATS)}")
    return text


def main(argv=None):
    p = cli.ArgumentParser(description="Compare training runs in a table and one picture.")
    p.add_argument("runs", nargs="*", metavar="RUN", help=f"run folders (default: every folder in {RUNS_DIR}/)")
    p.add_argument("--out", type=picture_file, default=os.path.join(RUNS_DIR, "compare.png"),
                   help="where to draw the picture, in the format its suffix names")
    args = p.parse_args(argv)
    paths.check_target(args.out, "a picture", "move it, or pass another --out")  # a FIFO, a folder: not waited on
    if os.path.lexists(args.out) and not plots.drawn_here(args.out):  # a file of the user's own: theirs
        raise cli.UserError(f"{cli.shown(args.out)} is not a picture compare.py drew, so it stays as it is: "
                            "move it, or pass another --out")
    folders = args.runs
    if not folders and os.path.isdir(RUNS_DIR):
        folders = sorted(os.path.join(RUNS_DIR, name) for name in os.listdir(RUNS_DIR)
                         if os.path.isdir(os.path.join(RUNS_DIR, name)))
    found, skipped = read_runs(folders)
    for line in skipped:
        print(line, file=sys.stderr)
    if not found:
        raise cli.UserError(f"no runs to compare in {cli.shown(', '.join(args.runs) or os.path.abspath(RUNS_DIR))}: "
                            "train some with python train.py")
    differing = [k for k in SETTINGS if len({str(s[k]) for _, s, _ in found}) > 1]
    print(table(found, differing))
    for line in lesson_differences(found):
        print(line)
    picture = plots.compare(list(zip(labels(found, differing), [h for _, _, h in found])),
                            os.path.splitext(args.out)[1][1:].lower())
    runs.write(args.out, picture)
    print(f"saved {cli.shown(args.out)}")


if __name__ == "__main__":
    cli.run(main)
