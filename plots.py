"""Every figure, returned as PNG bytes for the caller to write: training curves, confusion matrix,
the most confident mistakes, and several runs compared. matplotlib without pyplot: no window.
"""
import io
import warnings

MISTAKES_SHOWN = 36  # the most confident mistakes, in a 6x6 grid
LEGEND_RUNS = 20  # compare.png names at most this many runs; more would cover the lines


def new_figure(**kwargs):
    from matplotlib.figure import Figure  # imported here: only the runs that draw pay for it

    return Figure(layout="constrained", **kwargs)


def png(fig):
    buffer = io.BytesIO()
    with warnings.catch_warnings():  # a glyph the font lacks (a run named in CJK) is drawn as a box, silently
        warnings.simplefilter("ignore")
        fig.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


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
        ax.plot(epochs, [h[f"train_{key}"] for h in history], "o-", ms=3, label="train")
        ax.plot(epochs, [h[f"test_{key}"] for h in history], "o-", ms=3, label="test")
        ax.set_xlabel("epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"{arch} MLP, SGD lr {schedule(history, 'lr')}, batch {schedule(history, 'batch_size')}, "
                 f"seed {seed}, {len(history)} epochs")
    return png(fig)


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


def compare(runs):
    """Test accuracy and test loss per epoch, one line per run: runs is [(label, history)]."""
    from matplotlib import colormaps

    fig = new_figure(figsize=(10, 4))
    acc_ax, loss_ax = fig.subplots(1, 2)
    colours = colormaps["tab10" if len(runs) <= 10 else "tab20" if len(runs) <= 20 else "viridis"]
    for i, (label, history) in enumerate(runs):
        epochs = [h["epoch"] for h in history]
        colour = colours(i if len(runs) <= 20 else i / (len(runs) - 1))
        label = " " + label if label.startswith("_") else label  # matplotlib leaves '_...' out of legends
        acc_ax.plot(epochs, [h["test_acc"] for h in history], "o-", ms=2, color=colour, label=label)
        loss_ax.plot(epochs, [h["test_loss"] for h in history], "o-", ms=2, color=colour, label=label)
    for ax, name in ((acc_ax, "test accuracy (%)"), (loss_ax, "test loss")):
        ax.set_xlabel("epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    if len(runs) <= LEGEND_RUNS:
        acc_ax.legend(fontsize=8)
    fig.suptitle(f"{len(runs)} runs compared" + (f" (too many to name: compare.py's table names them)"
                                                if len(runs) > LEGEND_RUNS else ""))
    return png(fig)
