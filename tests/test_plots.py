"""plots.py: what each figure draws (read off the matplotlib figure before it becomes a PNG), which
mistakes are picked, and that each is a real PNG."""
import io

import pytest
import torch
from PIL import Image

import plots


@pytest.fixture()
def figures(monkeypatch):
    """Make the plot functions return their Figure instead of PNG bytes."""
    monkeypatch.setattr(plots, "png", lambda fig: fig)


def history(lrs, batch=64):
    return [{"epoch": i, "train_loss": 1 / i, "test_loss": 1.1 / i, "train_acc": 50 + i, "test_acc": 49 + i,
             "seconds": 0.3, "lr": lr, "batch_size": batch} for i, lr in enumerate(lrs, 1)]


def test_schedule_names_each_change_with_its_first_epoch():
    assert plots.schedule(history([0.1] * 3), "lr") == "0.1"
    assert plots.schedule(history([0.1, 0.1, 0.05, 0.05, 0.2]), "lr") == "0.1, 0.05 from epoch 3, 0.2 from epoch 5"


def test_training_curves_title_and_lines(figures):
    fig = plots.training_curves(history([0.1, 0.1, 0.05]), "784-128-10 relu", seed=4)
    assert fig._suptitle.get_text() == ("784-128-10 relu MLP, SGD lr 0.1, 0.05 from epoch 3, batch 64, "
                                        "seed 4, 3 epochs")
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
    fig = plots.compare([("lr 0.01", history([0.01] * 3)), ("lr 0.1", history([0.1] * 5))])
    acc_ax, loss_ax = fig.axes
    assert [line.get_label() for line in acc_ax.lines] == ["lr 0.01", "lr 0.1"]
    assert len(loss_ax.lines[1].get_xdata()) == 5


def test_every_figure_is_a_png():
    confusion = torch.arange(100).view(10, 10)
    for data in (plots.training_curves(history([0.1] * 2), "784-64-10 sigmoid", 0), plots.confusion_matrix(confusion),
                 plots.mistakes(torch.rand(2, 1, 28, 28), torch.tensor([[0.9, 0.1], [0.1, 0.9]]), torch.tensor([1, 1])),
                 plots.compare([("a", history([0.1]))])):
        with Image.open(io.BytesIO(data)) as image:
            assert image.format == "PNG" and image.width >= 300 and image.height >= 200


def test_compare_names_every_run_it_can_and_tells_them_apart(figures):
    fig = plots.compare([("_seed 1", history([0.1] * 2)), ("lr 0.1", history([0.1] * 2))])
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == [" _seed 1", "lr 0.1"]
    fig = plots.compare([(f"run {i}", history([0.1])) for i in range(15)])
    assert len({line.get_color() for line in fig.axes[0].lines}) == 15  # no colour used twice
    fig = plots.compare([(f"run {i}", history([0.1])) for i in range(plots.LEGEND_RUNS + 1)])
    assert fig.axes[0].get_legend() is None and "too many to name" in fig._suptitle.get_text()
