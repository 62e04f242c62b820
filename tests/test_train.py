"""train.py's functions and main() in-process: determinism, resume, checkpoints, constants."""
import io
import json
import os

import pytest
import torch

import data
import train
from model import Net


def train_run(fake_mnist, out, *extra):
    train.main(["--data-dir", fake_mnist, "--out", str(out), "--device", "cpu", "--no-plots", *extra])
    return torch.load(os.path.join(out, "model.pt"), weights_only=True)


def assert_same_run(a, b):
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert torch.equal(a["generator"], b["generator"])
    assert a["optimizer"] == b["optimizer"] and a["epoch"] == b["epoch"]
    strip = lambda history: [{k: v for k, v in h.items() if k != "seconds"} for h in history]  # noqa: E731
    assert strip(a["history"]) == strip(b["history"])


def test_same_seed_gives_bit_identical_weights(fake_mnist, tmp_path):
    a = train_run(fake_mnist, tmp_path / "a", "--epochs", "3", "--seed", "7")
    b = train_run(fake_mnist, tmp_path / "b", "--epochs", "3", "--seed", "7")
    c = train_run(fake_mnist, tmp_path / "c", "--epochs", "3", "--seed", "8")
    assert_same_run(a, b)
    assert not torch.equal(a["model"]["fc1.weight"], c["model"]["fc1.weight"])


def test_fast_and_classic_loaders_train_bit_identical_weights(fake_mnist, tmp_path):
    fast = train_run(fake_mnist, tmp_path / "fast", "--epochs", "2", "--loader", "fast")
    classic = train_run(fake_mnist, tmp_path / "classic", "--epochs", "2", "--loader", "classic")
    assert_same_run(fast, classic)


def test_resume_ends_bit_identical_to_an_uninterrupted_run(fake_mnist, tmp_path, capsys):
    whole = train_run(fake_mnist, tmp_path / "whole", "--epochs", "4")
    train_run(fake_mnist, tmp_path / "parts", "--epochs", "2")
    resumed = train_run(fake_mnist, tmp_path / "parts", "--epochs", "4", "--resume")
    assert "resuming" in capsys.readouterr().out
    assert resumed["epoch"] == 4 and len(resumed["history"]) == 4
    assert_same_run(whole, resumed)


def test_checkpoint_round_trip(fake_mnist, tmp_path):
    ckpt = train_run(fake_mnist, tmp_path, "--epochs", "2", "--lr", "0.05", "--batch-size", "32")
    assert ckpt["config"]["lr"] == 0.05 and ckpt["config"]["batch_size"] == 32 and ckpt["epoch"] == 2
    assert [h["epoch"] for h in ckpt["history"]] == [1, 2]
    loaded = train.load_checkpoint(os.path.join(tmp_path, "model.pt"))
    model = train.model_from_checkpoint(loaded, "model.pt", torch.device("cpu"))
    x = torch.rand(4, 1, 28, 28)
    reference = Net()
    reference.load_state_dict(ckpt["model"])
    assert torch.equal(model(x), reference(x))
    with open(os.path.join(tmp_path, "history.json")) as f:
        assert [h["test_acc"] for h in json.load(f)] == [h["test_acc"] for h in ckpt["history"]]


def test_edited_constants_are_the_defaults(fake_mnist, tmp_path, monkeypatch):
    monkeypatch.setattr(train, "EPOCHS", 2)
    monkeypatch.setattr(train, "LEARNING_RATE", 0.03)
    monkeypatch.setattr(train, "DATA_DIR", fake_mnist)
    monkeypatch.setattr(train, "OUT_DIR", str(tmp_path))
    monkeypatch.setattr(train, "DEVICE", "cpu")
    train.main(["--no-plots"])
    ckpt = torch.load(tmp_path / "model.pt", weights_only=True)
    assert ckpt["epoch"] == 2 and ckpt["config"]["lr"] == 0.03


def test_evaluate_matches_a_plain_loop(fake_mnist):
    torch.manual_seed(0)
    model = Net()
    loader = data.build_test_loader(fake_mnist)
    loss, acc, confusion = train.evaluate(model, loader, torch.device("cpu"))
    x, y = next(iter(loader))
    logits = model(x)
    pred = logits.argmax(1)
    assert loss == pytest.approx(torch.nn.functional.cross_entropy(logits, y).item(), rel=1e-6)
    assert acc == pytest.approx(100.0 * (pred == y).float().mean().item())
    assert confusion.sum() == len(y)
    for t, p in [(0, 0), (3, 5), (9, 1)]:
        assert confusion[t, p] == ((y == t) & (pred == p)).sum()


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "model.pt"
    path.write_bytes(b"old")

    def fail(f):
        f.write(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train.atomic_write(str(path), fail)
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["model.pt"]
    train.atomic_write(str(path), lambda f: f.write(b"new"))
    assert path.read_bytes() == b"new"


def test_progress_shows_on_a_terminal_only():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    batches = list(range(100))
    quiet, shown = io.StringIO(), Terminal()
    assert list(train.with_progress(batches, "epoch 1/2", quiet, after=0)) == batches
    assert list(train.with_progress(batches, "epoch 1/2", shown, after=0)) == batches
    assert quiet.getvalue() == "" and "epoch 1/2  batch 100/100" in shown.getvalue()


@pytest.mark.parametrize("epochs, batch_size, lr, message", [
    (0, 64, 0.01, "epochs must be at least 1"),
    (1, 0, 0.01, "batch size must be at least 1"),
    (1, 64, 0.0, "positive finite"),
    (1, 64, -1.0, "positive finite"),
    (1, 64, float("nan"), "positive finite"),
    (1, 64, float("inf"), "positive finite"),
])
def test_bad_hyperparameters_are_refused(epochs, batch_size, lr, message):
    with pytest.raises(train.ConfigError, match=message):
        train.check_hyperparameters(epochs, batch_size, lr, "fast")


def test_devices():
    assert train.resolve_device("cpu") == torch.device("cpu")
    assert train.resolve_device("auto").type in ("cpu", "cuda", "mps")
    with pytest.raises(train.ConfigError, match="unknown device"):
        train.resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(train.ConfigError, match="CUDA is not available"):
            train.resolve_device("cuda")
