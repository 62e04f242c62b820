"""plots.py: what each figure draws (read off the matplotlib figure before it becomes a PNG), which
mistakes are picked, where each hidden unit's tile goes, and that each figure is a real PNG."""
import io
import warnings

import numpy as np
import pytest
import torch
from matplotlib import colormaps
from PIL import Image

from machinery import plots
from model import Net

REAL_PNG = plots.png  # the figures fixture replaces it


@pytest.fixture()
def figures(monkeypatch):
    """Make the plot functions return their Figure instead of PNG bytes."""
    monkeypatch.setattr(plots, "png", lambda fig, format="png": fig)


def history(lrs, batch=64, offset=0):
    return [{"epoch": i, "train_loss": 1 / i, "test_loss": 1.1 / i + offset, "train_acc": 50 + i,
             "test_acc": 49 + i + offset, "seconds": 0.3, "lr": lr, "batch_size": batch} for i, lr in enumerate(lrs, 1)]


def test_schedule_names_each_change_with_its_first_epoch():
    assert plots.schedule(history([0.1] * 3), "lr") == "0.1"
    assert plots.schedule(history([0.1, 0.1, 0.05, 0.05, 0.2]), "lr") == "0.1, 0.05 from epoch 3, 0.2 from epoch 5"


def test_training_curves_title_and_lines(figures):
    fig = plots.training_curves(history([0.1, 0.1, 0.05]), "784-128-10 relu", seed=4)
    assert fig._suptitle.get_text() == "784-128-10 relu\nlr 0.1, 0.05 from epoch 3, batch 64, seed 4, 3 epochs"
    loss_ax, acc_ax = fig.axes
    assert [line.get_label() for line in acc_ax.lines] == ["train", "test"]
    assert list(acc_ax.lines[1].get_ydata()) == [50, 51, 52] and list(loss_ax.lines[0].get_xdata()) == [1, 2, 3]


def test_confusion_matrix_picture_has_true_digits_in_rows_and_its_accuracy(figures):
    confusion = 10 * torch.eye(10, dtype=torch.int64)
    confusion[3, 5] = 7  # seven 3s read as 5: row 3, column 5
    fig = plots.confusion_matrix(confusion)
    ax = fig.axes[0]
    assert (ax.images[0].get_array() == confusion.numpy()).all()
    assert (ax.get_ylabel(), ax.get_xlabel()) == ("true digit", "predicted digit")
    assert {t.get_position(): t.get_text() for t in ax.texts}[(5, 3)] == "7"  # x: predicted, y: true
    assert ax.get_title() == f"MNIST test confusion matrix, accuracy {100 * 100 / 107:.2f}%"


def test_pick_mistakes_takes_the_most_confident_wrong_answers():
    probs = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.4, 0.6], [0.3, 0.7], [0.95, 0.05]])
    labels = torch.tensor([0, 0, 0, 1, 1])  # wrong: 1 (0.8 sure), 2 (0.6), 4 (0.95)
    assert plots.pick_mistakes(probs, labels).tolist() == [4, 1, 2]
    assert plots.pick_mistakes(probs, labels, shown=2).tolist() == [4, 1]
    assert plots.pick_mistakes(probs, torch.tensor([0, 1, 1, 1, 0])).tolist() == []


def test_mistakes_picture_shows_the_picked_images(figures):
    images = torch.rand(5, 1, 28, 28)
    probs = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.4, 0.6], [0.3, 0.7], [0.95, 0.05]])
    fig = plots.mistakes(images, probs, torch.tensor([0, 0, 0, 1, 1]))
    shown = [ax for ax in fig.axes if ax.images]
    assert [ax.get_title() for ax in shown] == ["true 1 → 0\n95% sure", "true 0 → 1\n80% sure",
                                                "true 0 → 1\n60% sure"]
    assert torch.equal(torch.tensor(shown[0].images[0].get_array().data), images[4, 0])
    assert fig._suptitle.get_text() == "3 most confident of 3 mistakes on the test set"


def test_compare_draws_one_line_per_run(figures):
    fig = plots.compare([("lr 0.01", history([0.01] * 3)), ("lr 0.1", history([0.1] * 5, offset=2))])
    acc_ax, loss_ax = fig.axes
    assert [line.get_label() for line in acc_ax.lines] == ["lr 0.01", "lr 0.1"]
    assert len(loss_ax.lines[1].get_xdata()) == 5


def test_png_holds_the_figure_as_drawn(figures):
    """Each figure, rendered: a PNG of the figure's size at 100 dpi, showing the colours it drew."""
    from matplotlib.colors import to_rgb

    blues, rdbu = (colormaps[name] for name in ("Blues", "RdBu_r"))
    fc2 = torch.eye(10).repeat(1, 7)[:, :64]
    for fig, colours in (
            (plots.training_curves(history([0.1] * 2), "784-64-10 sigmoid", 0), ["tab:blue", "tab:orange"]),
            (plots.confusion_matrix(torch.arange(100).view(10, 10)), [blues(1.0), blues(0.0)]),
            (plots.compare([("a", history([0.1] * 3)), ("b", history([0.2] * 3, offset=5))]),
             ["tab:blue", "tab:orange"]),
            (plots.hidden_units(torch.randn(64, 784), fc2, "784-64-10 sigmoid", 1), [rdbu(1.0), rdbu(0.0)])):
        with Image.open(io.BytesIO(REAL_PNG(fig))) as image:
            assert image.format == "PNG" and image.size == tuple(round(100 * s) for s in fig.get_size_inches())
            rgb = np.asarray(image.convert("RGB")).astype(np.int32)
            pixels = set(np.unique(rgb[..., 0] << 16 | rgb[..., 1] << 8 | rgb[..., 2]).tolist())
        for colour in colours:  # the lines, or the colour map's two ends, are in the picture
            r, g, b = (round(255 * c) for c in to_rgb(colour))
            assert r << 16 | g << 8 | b in pixels, colour


def test_compare_writes_the_format_asked_for():
    magic = {"png": b"\x89PNG", "jpg": b"\xff\xd8\xff", "jpeg": b"\xff\xd8\xff", "webp": b"RIFF", "tif": b"II*\0",
             "tiff": b"II*\0", "pdf": b"%PDF", "svg": b"<?xml"}
    assert set(magic) == set(plots.FORMATS)
    assert plots.compare([("a", history([0.1] * 2))], "jpg").startswith(magic["jpg"])
    fig = plots.new_figure(figsize=(2, 2))
    fig.subplots().plot([1, 2], [3, 4])
    for format in plots.FORMATS:
        assert plots.png(fig, format).startswith(magic[format]), format


def test_compare_names_every_run_it_can_and_tells_them_apart(figures):
    fig = plots.compare([("_seed 1", history([0.1] * 2)), ("lr 0.1", history([0.1] * 2, offset=2))])
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == [" _seed 1", "lr 0.1"]
    fig = plots.compare([(f"run {i}", history([0.1])) for i in range(15)])
    assert len({line.get_color() for line in fig.axes[0].lines}) == 15  # no colour used twice
    fig = plots.compare([(f"run {i}", history([0.1])) for i in range(plots.LEGEND_RUNS + 1)])
    assert fig.axes[0].get_legend() is None and "too many to name" in fig._suptitle.get_text()


def test_compare_keeps_runs_that_coincide_visible(figures):
    run = history([0.1] * 4)
    runs = [("a", run), ("b", history([0.1] * 4, offset=2)), ("a again", [dict(h) for h in run]),
            ("a, 2 epochs", run[:2]), ("a, once more", [dict(h, test_loss=h["test_loss"] + 1e-9) for h in run])]
    acc_ax, loss_ax = plots.compare(runs).axes
    assert [t.get_text() for t in acc_ax.get_legend().get_texts()] == [
        "a", "b", "a again (dashed: coincides with a)", "a, 2 epochs (dashed: coincides with a)",
        "a, once more (dashed: coincides with a)"]
    for ax in (acc_ax, loss_ax):
        a, b, *on_a = ax.lines
        assert a.get_linestyle() == b.get_linestyle() == "-" and a.get_zorder() == b.get_zorder()
        # each drawn over a, hollow, and in a dash pattern of its own: all three show where they lie on a
        assert len({line.get_linestyle() for line in on_a}) == 3 and "-" not in {l.get_linestyle() for l in on_a}
        assert all(line.get_zorder() > a.get_zorder() and line.get_markerfacecolor() == "none" for line in on_a)


def test_compare_marks_only_runs_that_another_hides(figures):
    run = history([0.1] * 30)
    # a pixel of the loss axis is 1/300 of its span (0.04 to 1.1 here): 1/100 apart is visible
    close = [dict(h, test_loss=h["test_loss"] + 1.1 / 100) for h in run]
    longer = history([0.1] * 31)  # a hides under it, not it under a: the longer line stays solid
    lines = plots.compare([("a", run), ("close", close), ("longer", longer)]).axes[0].lines
    assert [line.get_linestyle() for line in lines] == ["--", "-", "-"]
    assert lines[0].get_label() == "a (dashed: coincides with longer)"


@pytest.mark.parametrize("value", [1e308, -1e308, 1.7976931348623157e308, 1e-308, 5e-324])
def test_huge_and_tiny_finite_values_are_drawn(figures, value):
    """Near float's largest value matplotlib's tick arithmetic overflowed: a traceback at rendering."""
    run = [dict(h, test_loss=value if h["epoch"] == 2 else h["test_loss"], train_acc=-value)
           for h in history([0.1] * 3)]
    shown = min(max(value, -plots.PLOTTABLE), plots.PLOTTABLE)
    curves = plots.training_curves(run, "784-64-10 sigmoid", 0)
    loss_ax, acc_ax = curves.axes
    assert list(loss_ax.lines[1].get_ydata()) == [1.1, shown, 1.1 / 3]  # test loss
    assert list(acc_ax.lines[0].get_ydata()) == [-shown] * 3  # train accuracy
    compared = plots.compare([("a", run), ("b", history([0.1] * 3))])
    assert list(compared.axes[1].lines[0].get_ydata()) == [1.1, shown, 1.1 / 3]
    for fig, loss_ax, acc_ax in ((curves, *curves.axes), (compared, *compared.axes[::-1])):
        clipped = abs(value) > plots.PLOTTABLE
        assert loss_ax.get_ylabel().endswith(", clipped to ±1e+300") == clipped, loss_ax.get_ylabel()
        assert acc_ax.get_ylabel().endswith(", clipped to ±1e+300") == (clipped and fig is curves)
        with Image.open(io.BytesIO(REAL_PNG(fig))) as image:
            assert image.format == "PNG"


def test_hidden_unit_layout_groups_units_by_the_digit_they_push_most():
    fc2 = torch.zeros(10, 4)
    fc2[3, 0], fc2[1, 1], fc2[3, 2], fc2[1, 3] = 0.9, 0.5, 1.2, 0.8  # units 1, 3 push 1; units 0, 2 push 3
    fc2[7, 1] = 0.4  # unit 1 pushes 7 too, less than 1
    fc1 = torch.full((4, 784), 0.01)
    fc1[0, 5], fc1[1, 9], fc1[2, 0], fc1[3, 783] = 0.5, -2.0, 0.25, 1.0  # the largest |weight| of each
    order, digits, scale = plots.hidden_unit_layout(fc1, fc2)
    assert order == [3, 1, 2, 0]  # digit 1's units, hardest pusher first, then digit 3's
    assert digits == [1, 1, 3, 3]
    assert scale == [1.0, 2.0, 0.25, 0.5]  # per tile: its unit's largest |weight|, a negative one too


def test_tile_grid_gives_every_row_its_digit_continuations_too():
    places, row_digits = plots.tile_grid([0, 0, 0, 2, 2, 2, 2, 2], cols=3)
    assert row_digits == [0, 1, 2, 2] + list(range(3, 10))  # 1 and 3-9: an empty row each; 2 over two rows
    assert places == [(0, 0), (0, 1), (0, 2), (2, 0), (2, 1), (2, 2), (3, 0), (3, 1)]


def pixels_per_weight(fig):
    """Picture pixels a tile's weight takes, the image placed by the layout (the figure's dpi is png()'s)."""
    fig.draw_without_rendering()
    ax = fig.axes[0]
    return ax.get_window_extent().height / ax.images[0].get_array().shape[0]


def row_labels(ax):
    """{y: digit} of the rows' labels, on the left and (the same) on the right."""
    ticks = ax.yaxis.get_major_ticks()
    assert all(t.label1.get_visible() and t.label2.get_visible() for t in ticks)
    assert [t.label1.get_text() for t in ticks] == [t.label2.get_text() for t in ticks]
    return dict(zip(ax.get_yticks(), [int(t.label1.get_text()) for t in ticks]))


# 2.25 picture pixels per weight, a 63-pixel tile, is where a tile's strokes can be told apart; 128
# and 256 units used to get less than 2, and labels on the tiles no one could read
READABLE = 2.25


def test_hidden_units_picture_one_tile_per_unit_on_a_scale_centred_at_zero(figures):
    net = Net(hidden=128)  # as after a learner's edit of HIDDEN: the tiles follow the weights' shape
    with torch.no_grad():
        net.fc2.weight.copy_(torch.eye(10).repeat(1, 13)[:, :128])  # unit u pushes digit u % 10
    fig = plots.hidden_units(net.fc1.weight, net.fc2.weight, "784-128-10 sigmoid", 7)
    assert fig._suptitle.get_text().startswith("784-128-10 sigmoid, epoch 7: the input weights of its 128 hidden units")
    assert "each tile on its own colour scale" in fig._suptitle.get_text()
    ax = fig.axes[0]
    image = ax.images[0]
    assert image.norm.vmin == -image.norm.vmax == -1 and image.get_cmap().name == "RdBu_r"
    mosaic = torch.tensor(image.get_array().filled(float("nan")))
    assert mosaic.isfinite().sum() == 128 * 784  # 128 tiles of 28x28, blank between them
    assert len(ax.texts) == 0  # nothing written over the tiles' strokes
    assert list(row_labels(ax).values()) == list(range(10))  # 13 units a digit: a row each
    first = net.fc1.weight[0].detach()  # digit 0's first tile: unit 0, the first of those that push 0
    assert torch.allclose(mosaic[:28, :28], (first / first.abs().max()).reshape(28, 28))
    assert pixels_per_weight(fig) >= READABLE


def test_hidden_units_picture_of_256_units_labels_every_row(figures):
    pushes = [3] * 40 + [u % 10 for u in range(216)]  # 61 units push 3: four rows; 21 or 22 the others: two
    fc1 = torch.randn(256, 784, generator=torch.Generator().manual_seed(0))
    fig = plots.hidden_units(fc1, torch.eye(10)[:, pushes], "784-256-10 relu", 3)
    ax = fig.axes[0]
    mosaic = torch.tensor(ax.images[0].get_array().filled(float("nan")))
    assert mosaic.isfinite().sum() == 256 * 784
    labels = row_labels(ax)
    assert list(labels.values()) == [0, 0, 1, 1, 2, 2, 3, 3, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9]
    for y, digit in labels.items():  # each label beside its row's first tile: a unit that pushes that digit
        top = round(y - 13.5)
        tile = mosaic[top:top + 28, :28]
        assert tile.isfinite().all() and any(torch.allclose(tile, (w / w.abs().max()).reshape(28, 28))
                                             for w in fc1[[u for u, d in enumerate(pushes) if d == digit]])
    assert pixels_per_weight(fig) >= READABLE


def test_hidden_units_picture_says_when_no_unit_pushes_a_digit(figures):
    fig = plots.hidden_units(torch.randn(3, 784), torch.eye(10)[:, [2, 5, 2]], "784-3-10 relu", 1)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.texts] == ["no unit"] * 8
    labels = row_labels(ax)
    beside = [labels[min(labels, key=lambda y: abs(y - t.get_position()[1]))] for t in ax.texts]
    assert beside == [0, 1, 3, 4, 6, 7, 8, 9]  # each in the row of a digit that no unit pushes


def test_hidden_units_picture_of_a_huge_network_shows_its_first_units(figures):
    fig = plots.hidden_units(torch.randn(3000, 784), torch.randn(10, 3000), "784-3000-10 sigmoid", 1)
    assert f"its first {plots.MAX_TILES} of 3000 hidden units" in fig._suptitle.get_text()
    mosaic = torch.tensor(fig.axes[0].images[0].get_array().filled(float("nan")))
    assert mosaic.isfinite().sum() == plots.MAX_TILES * 784
    assert pixels_per_weight(fig) >= READABLE


def test_figures_print_no_library_warnings(recwarn):
    warnings.simplefilter("always")  # not once per place: every warning there is
    plots.compare([("数字 lr 0.1", history([0.1] * 2))] + [(f"run {i}", history([0.1])) for i in range(19)])
    assert not recwarn.list, [str(w.message) for w in recwarn.list]  # CJK glyphs the font lacks, in the legend
