"""Every figure, returned as PNG bytes for the caller to write: training curves, confusion matrix,
the most confident mistakes, the hidden units' input weights, and several runs compared (train.py's
curves are written here too, by save_training_curves). matplotlib without pyplot: no window.
"""
import io
import math
import os
import warnings

import torch

from machinery import paths
from machinery import runs
from machinery.cli import UserError

SOFTWARE = "MNIST classifier, plots.py"  # written into every picture drawn here, in each format (drawn_here)
MARK_BYTES = 64 * 2**10  # where drawn_here looks for it: the file's first and last 64 KB (a PDF's Info is last)
MISTAKES_SHOWN = 36  # the most confident mistakes, in a 6x6 grid
LEGEND_RUNS = 20  # compare.png names at most this many runs; more would cover the lines
MAX_TILES = 512  # hidden units drawn at most: a 784-20000-10 network would take minutes and 50 MB
TILES_PER_ROW = 16  # hidden-unit tiles a row at least: a digit with more units goes on over more rows
TILE_PIXELS = 2.5  # picture pixels per weight of a hidden-unit tile: a 70-pixel tile shows its strokes
# What png(fig, format) writes. Not eps: matplotlib's PostScript backend prints a line about
# transparency (the grid's) on every figure.
FORMATS = ("png", "jpg", "jpeg", "webp", "tif", "tiff", "pdf", "svg")
# matplotlib places ticks and margins by arithmetic on the axis limits (their span, 5% margins, a tick
# step rounded up to 1, 2, 5 or 10 times a power of ten) that overflows to inf near float's largest
# value: a loss of 1e308 ends in "arange: cannot compute length". Drawn at this bound, any value
# keeps that arithmetic finite, with room to spare, and still reads as off the scale of a loss.
PLOTTABLE = 1e300
CLIPPED = f", clipped to ±{PLOTTABLE:g}"
DASHES = ("--", ":", "-.")  # a second and third run on the same line differ from each other too


def new_figure(**kwargs):
    from matplotlib.figure import Figure  # imported here: only the runs that draw pay for it

    return Figure(layout="constrained", **kwargs)


def png(fig, format="png"):
    """The figure as PNG bytes, or in another of FORMATS."""
    buffer = io.BytesIO()
    with warnings.catch_warnings():  # a glyph the font lacks (a run named in CJK) is drawn as a box, silently
        warnings.simplefilter("ignore")
        fig.savefig(buffer, format=format, dpi=100, **marked(format))
    return buffer.getvalue()


def marked(format):
    """savefig's arguments that write SOFTWARE into a picture of this format: PNG's Software text, SVG's and
    PDF's Creator, the EXIF Software tag of a JPEG, WebP or TIFF (which matplotlib leaves to Pillow)."""
    if format == "png":
        return {"metadata": {"Software": SOFTWARE}}
    if format in ("svg", "pdf"):
        return {"metadata": {"Creator": SOFTWARE}}
    from PIL import Image

    exif = Image.Exif()
    exif[0x0131] = SOFTWARE  # Software
    return {"pil_kwargs": {"exif": exif.tobytes()}}


def drawn_here(path):
    """Whether the file at path is a picture drawn here (it names SOFTWARE, in any of FORMATS): one the scripts
    may draw again over. Any other file in its place is the user's, and stays as it is; one that is not a
    regular file (a FIFO, a folder) is not looked into (paths.check_target says what it is)."""
    try:
        with paths.open_regular(path, "", "") as f:
            head = f.read(MARK_BYTES)
            f.seek(max(0, os.fstat(f.fileno()).st_size - MARK_BYTES))
            tail = f.read(MARK_BYTES)
    except (OSError, UserError):
        return False
    if head.startswith(b"\x89PNG"):
        return f"tEXtSoftware\0{SOFTWARE}".encode() in head
    return SOFTWARE.encode() in head or SOFTWARE.encode() in tail


def clip(value):
    """value, or the bound ±PLOTTABLE it lies beyond."""
    return min(max(value, -PLOTTABLE), PLOTTABLE)


def plot(ax, epochs, values, *args, **kwargs):
    """ax.plot of one value per epoch, a huge one drawn at ±PLOTTABLE; the y label, set before, says so."""
    shown = [clip(v) for v in values]
    if shown != list(values) and not ax.get_ylabel().endswith(CLIPPED):
        ax.set_ylabel(ax.get_ylabel() + CLIPPED)
    return ax.plot(epochs, shown, *args, **kwargs)


def schedule(history, key):
    """A per-epoch setting as it ran: '0.1' throughout, or '0.1, 0.05 from epoch 8'."""
    parts, last = [], object()
    for h in history:
        if h[key] != last:
            parts.append(f"{h[key]:g}" if not parts else f"{h[key]:g} from epoch {h['epoch']}")
            last = h[key]
    return ", ".join(parts)


def training_curves(history, arch, seed):
    """Loss and accuracy per epoch, train and test."""
    epochs = [h["epoch"] for h in history]
    fig = new_figure(figsize=(10, 4))
    loss_ax, acc_ax = fig.subplots(1, 2)
    for ax, key, label in ((loss_ax, "loss", "cross-entropy loss"), (acc_ax, "acc", "accuracy (%)")):
        ax.set_ylabel(label)
        plot(ax, epochs, [h[f"train_{key}"] for h in history], "o-", ms=3, label="train")
        plot(ax, epochs, [h[f"test_{key}"] for h in history], "o-", ms=3, label="test")
        ax.set_xlabel("epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"{arch}\nlr {schedule(history, 'lr')}, batch {schedule(history, 'batch_size')}, "
                 f"seed {seed}, {len(history)} epochs", fontsize=9)
    return png(fig)


def save_training_curves(folder, history, arch, seed):
    """training_curves written into folder/training_curves.png, whole or not at all; returns its path."""
    path = os.path.join(folder, "training_curves.png")
    hint = f"the run itself is saved in {os.path.join(folder, 'model.pt')}"
    runs.write(path, training_curves(history, arch, seed), hint)
    return path


def confusion_matrix(confusion):
    fig = new_figure(figsize=(6.5, 5.5))
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
    return png(fig)


def pick_mistakes(probs, labels, shown=MISTAKES_SHOWN):
    """Indices of the misclassified images, most confident first, at most `shown` of them."""
    confidence, predicted = probs.max(dim=1)
    wrong = (predicted != labels).nonzero().flatten()
    return wrong[confidence[wrong].argsort(descending=True, stable=True)][:shown]


def mistakes(images, probs, labels, shown=MISTAKES_SHOWN):
    """The most confident mistakes, each titled true -> predicted (confidence)."""
    confidence, predicted = probs.max(dim=1)
    picked = pick_mistakes(probs, labels, shown)
    cols = 6
    rows = max(1, (len(picked) + cols - 1) // cols)
    fig = new_figure(figsize=(cols * 1.4, rows * 1.55 + 0.5))
    axes = fig.subplots(rows, cols, squeeze=False).flatten()
    for ax in axes:
        ax.axis("off")
    for ax, i in zip(axes, picked.tolist()):
        ax.imshow(images[i].reshape(28, 28).cpu().numpy(), cmap="gray_r", vmin=0, vmax=1)
        ax.set_title(f"true {labels[i]} → {predicted[i]}\n{100 * confidence[i]:.0f}% sure", fontsize=8)
    fig.suptitle(f"{len(picked)} most confident of {(predicted != labels).sum()} mistakes on the test set")
    return png(fig)


def show_evidence(ax, pixels, scale=None):
    """An evidence map (evidence.py) on one colour scale centred at zero: red pushed toward the answer,
    blue toward the runner-up, white moved nothing. Returns the image, for a colour bar."""
    scale = scale or float(pixels.abs().max()) or 1.0
    ax.axis("off")
    return ax.imshow(pixels.cpu().numpy(), cmap="bwr", vmin=-scale, vmax=scale)


def evidence(image, pixels, answer, runner_up, name=""):
    """What the network saw, and its evidence map beside it, with the one-line legend naming both digits."""
    fig = new_figure(figsize=(5, 2.9))
    seen, why = fig.subplots(1, 2)
    seen.imshow(image.reshape(28, 28).cpu().numpy(), cmap="gray", vmin=0, vmax=1)
    seen.set_title("what the network saw", fontsize=9)
    seen.axis("off")
    fig.colorbar(show_evidence(why, pixels), ax=why, shrink=0.8, ticks=[])
    why.set_title(f"why {answer}, not {runner_up}", fontsize=9)
    fig.suptitle(f"{name + ': ' if name else ''}red pushed toward {answer}, blue toward {runner_up}", fontsize=9)
    return png(fig)


def mistakes_evidence(images, maps, true, said, runners_up):
    """For each confident mistake: the image, and the evidence for what the network said against its
    runner-up (red toward the wrong answer), titled with the true digit."""
    cols = 6
    rows = max(1, (2 * len(maps) + cols - 1) // cols)
    fig = new_figure(figsize=(cols * 1.4, rows * 1.55 + 0.5))
    axes = fig.subplots(rows, cols, squeeze=False).flatten()
    for ax in axes:
        ax.axis("off")
    for k, (image, pixels) in enumerate(zip(images, maps)):
        seen, why = axes[2 * k], axes[2 * k + 1]
        seen.imshow(image.reshape(28, 28).cpu().numpy(), cmap="gray_r", vmin=0, vmax=1)
        seen.set_title(f"true {true[k]}", fontsize=8)
        show_evidence(why, pixels)
        why.set_title(f"why {said[k]}, not {runners_up[k]}", fontsize=8)
    fig.suptitle(f"The {len(maps)} most confident mistakes: red pushed toward the wrong answer, "
                 "blue toward the runner-up", fontsize=10)
    return png(fig)


def hidden_unit_layout(fc1_weight, fc2_weight):
    """Which hidden unit's tile goes where in the hidden-units picture: (order, digits, scale).

    order: the unit of each tile, tile by tile. The units are grouped by the digit each pushes up
    the most, its largest weight into the output layer (fc2_weight[:, unit].argmax()), digit 0's
    first; within a digit, the unit that pushes it hardest comes first. digits: that digit, tile by
    tile. scale: the largest |weight| into each tile's unit, tile by tile; the tile's colours run
    from -scale to +scale."""
    fc2_weight = fc2_weight.detach().cpu()
    digit = fc2_weight.argmax(dim=0)  # per unit
    push = fc2_weight.gather(0, digit[None]).flatten()  # how hard the unit pushes that digit up
    order = sorted(range(len(digit)), key=lambda u: (digit[u].item(), -push[u].item()))
    scale = fc1_weight.detach().cpu().abs().amax(dim=1)
    return order, [digit[u].item() for u in order], [scale[u].item() for u in order]


def tile_grid(digits, cols):
    """Where each hidden unit's tile goes: ([(row, column)] tile by tile, [the digit of each row]).

    digits: each tile's digit, grouped digit by digit as hidden_unit_layout gives them. Each digit
    starts a row and goes on over as many more as its tiles need, `cols` to a row; a digit no unit
    pushes keeps one empty row. Every row, a continuation too, has its digit to be labelled with."""
    places, row_digits = [], []
    for d in range(10):
        n = digits.count(d)
        places += [(len(row_digits) + k // cols, k % cols) for k in range(n)]
        row_digits += [d] * max(1, -(-n // cols))
    return places, row_digits


def has_hidden_units(model):
    """Whether model has model.py's fc1 (784 inputs to hidden units) and fc2 (those units to 10 digits)."""
    fc1, fc2 = getattr(model, "fc1", None), getattr(model, "fc2", None)
    return (isinstance(fc1, torch.nn.Linear) and isinstance(fc2, torch.nn.Linear) and fc1.in_features == 784
            and fc2.in_features == fc1.out_features and fc2.out_features == 10)


def hidden_units(fc1_weight, fc2_weight, arch, epoch):
    """Each hidden unit's 784 input weights as a 28x28 tile, red where ink turns the unit on, blue
    where ink turns it off; the tiles of the units that push one digit up the most are a block of
    rows, each row named with that digit on both sides.

    Each tile has its own colour scale, its largest |weight| at full colour. On one scale shared by
    all, the default 30-epoch run's weakest unit reached only 41% of full colour (half the units
    under 63%), and the strokes of the faint tiles, most of the 2s and 6s, hardly showed; on their
    own scales every tile shows its strokes. What a shared scale would show, how strong each unit
    is, matters less here than what it responds to.

    The tiles are drawn as one image, not one axes each: 64 axes took 2.5 s, one image a fraction.
    The digit is not written on the tiles: at a 7-point size on a 28-pixel tile it covered strokes
    and could not be read; the row labels name it at a size that can."""
    units = len(fc1_weight)
    fc1_weight, fc2_weight = fc1_weight[:MAX_TILES], fc2_weight[:, :MAX_TILES]  # a picture that stays a picture
    order, digits, scale = hidden_unit_layout(fc1_weight, fc2_weight)
    weights = fc1_weight.detach().cpu().float()
    # wider rows past 256 units: 512 at 16 a row would be 40 rows, a strip too tall to take in
    widest = max(TILES_PER_ROW, math.ceil(math.sqrt(len(order))))
    cols = max(1, min(max(digits.count(d) for d in range(10)), widest))
    places, row_digits = tile_grid(digits, cols)
    step, group_gap = 28 + 2, 8  # a tile and the gap after it; more space between the digits' blocks
    tops = [r * step + d * group_gap for r, d in enumerate(row_digits)]
    mosaic = torch.full((tops[-1] + 28, cols * step - 2), float("nan"))  # NaN: blank between tiles
    # TILE_PIXELS per weight, at the 100 dpi png() draws at: the size of the image, plus room for
    # the labels, the colour bar and the title; the layout then fits the image into it unchanged
    fig = new_figure(figsize=(max(7.5, mosaic.shape[1] * TILE_PIXELS / 100 + 2.6),  # at least the title's width
                              mosaic.shape[0] * TILE_PIXELS / 100 + 1.0))
    fig.set_layout_engine("compressed")  # no blank margins around an image that keeps its aspect
    ax = fig.subplots()
    for unit, s, (row, col) in zip(order, scale, places):
        mosaic[tops[row]:tops[row] + 28, col * step:col * step + 28] = weights[unit].reshape(28, 28) / (s or 1.0)
    for d in range(10):
        if d not in digits:
            ax.text(1, tops[row_digits.index(d)] + 14, "no unit", va="center", fontsize=9, color="gray")
    im = ax.imshow(mosaic.numpy(), cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest")
    ax.set_yticks([top + 13.5 for top in tops], [str(d) for d in row_digits], fontsize=12)
    ax.tick_params(axis="y", left=False, labelright=True)  # named on both sides: a long row is read from either end
    ax.set_ylabel("the digit the unit pushes up the most")
    ax.set_xticks([])
    for side in ax.spines.values():
        side.set_visible(False)
    bar = fig.colorbar(im, ax=ax, shrink=min(0.6, 4 / len(row_digits)), aspect=15, ticks=[-1, 0, 1], pad=0.04)
    bar.ax.set_yticklabels(["−max: off", "0", "+max: on"], fontsize=8)
    bar.set_label("weight ÷ the tile's\nlargest |weight|", fontsize=8)
    shown = f"{len(order)} hidden units" if len(order) == units else f"first {len(order)} of {units} hidden units"
    fig.suptitle(f"{arch}, epoch {epoch}: the input weights of its {shown}\n"
                 "red: ink there turns the unit on, blue: turns it off; each tile on its own colour scale",
                 fontsize=10)
    return png(fig)


def covered(a, b, tolerance):
    """Whether every point of a lies on one of b's: the same epoch, each value within its tolerance.
    a and b: {epoch: (test accuracy, test loss)}."""
    return all(e in b and all(abs(x - y) <= t for x, y, t in zip(a[e], b[e], tolerance)) for e in a)


def coinciding(points):
    """For each run, the index of a run whose line hides it, or None. A run that lies on another
    (two identical runs, or 5 epochs of a run that went on to 30) would be hidden wherever it is
    drawn under it; of two that lie on each other, the later one is marked."""
    # a pixel of the picture's ~300-pixel-high axes: closer than that, two lines are one line
    values = [list(zip(*p.values())) for p in points if p]
    if not values:
        return [None] * len(points)
    tolerance = [(max(max(v[i]) for v in values) - min(min(v[i]) for v in values)) / 300 for i in range(2)]
    return [next((j for j, b in enumerate(points) if j != i and covered(a, b, tolerance)
                  and (j < i or not covered(b, a, tolerance))), None) for i, a in enumerate(points)]


def compare(runs, format="png"):
    """Test accuracy and test loss per epoch, one line per run: runs is [(label, history)]. A run
    whose line another hides is drawn dashed on top of it, and its legend entry says so."""
    from matplotlib import colormaps

    fig = new_figure(figsize=(10, 4))
    acc_ax, loss_ax = fig.subplots(1, 2)
    for ax, name in ((acc_ax, "test accuracy (%)"), (loss_ax, "test loss")):
        ax.set_xlabel("epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    colours = colormaps["tab10" if len(runs) <= 10 else "tab20" if len(runs) <= 20 else "viridis"]
    points = [{h["epoch"]: (clip(h["test_acc"]), clip(h["test_loss"])) for h in history} for _, history in runs]
    under = coinciding(points)
    for i, (label, history) in enumerate(runs):
        epochs = [h["epoch"] for h in history]
        colour = colours(i if len(runs) <= 20 else i / (len(runs) - 1))
        label = " " + label if label.startswith("_") else label  # matplotlib leaves '_...' out of legends
        style = dict(color=colour, marker="o", ms=2, ls="-")
        if under[i] is not None:  # dashed and hollow, drawn over the line it lies on: both colours show
            style.update(ms=5, mfc="none", ls=DASHES[under[:i].count(under[i]) % len(DASHES)], zorder=3)
            label += f" (dashed: coincides with {runs[under[i]][0]})"
        plot(acc_ax, epochs, [h["test_acc"] for h in history], label=label, **style)
        plot(loss_ax, epochs, [h["test_loss"] for h in history], label=label, **style)
    if len(runs) <= LEGEND_RUNS:
        acc_ax.legend(fontsize=8)
    fig.suptitle(f"{len(runs)} runs compared" + (" (too many to name: compare.py's table names them)"
                                                if len(runs) > LEGEND_RUNS else ""))
    return png(fig, format)
