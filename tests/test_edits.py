"""The edits a learner makes to the lesson take effect and are kept: another optimizer or a scheduler in
train.py, BatchNorm, Dropout or a CNN in model.py, Normalize or an augmentation in data.py, a key of
their own in the checkpoint. Each trains and saves every epoch, is evaluated, compared, served by
draw.py's predict and resumed bit for bit, through the real entry points (main(argv), in this process), on the small data set.

train.py is edited as a learner edits it: its text, with a line replaced, run as a module of its own.
model.py's class is swapped for the learner's (every module that took Net from model.py sees it), and
data.py's TRANSFORM set, as its constant is edited."""
import importlib.util
import os

import pytest
import torch
from torch import nn
from torchvision import transforms

import compare
import data
import draw
import evaluate
import model
import train
from conftest import ROOT, assert_same_run, main_error
from machinery import checkpoint

SEVEN = os.path.join(ROOT, "docs", "example_seven.png")
OPTIMIZER = "    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr)\n"
SCHEDULER = (  # a learner's StepLR: made after the optimizer, restored with it, saved beside it
    (OPTIMIZER, OPTIMIZER + "    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)\n"),
    ("            optimizer.load_state_dict(ckpt[\"optimizer\"])\n",
     "            optimizer.load_state_dict(ckpt[\"optimizer\"])\n            scheduler.load_state_dict(ckpt[\"scheduler\"])\n"),
    ("\"optimizer\": optimizer.state_dict(),", "\"optimizer\": optimizer.state_dict(), \"scheduler\": scheduler.state_dict(),"))


def edited_train(tmp_path, *replacements, name="train_edited"):
    """train.py's text with each (old, new) replaced, as a module of its own (its file in tmp_path)."""
    with open(os.path.join(ROOT, "train.py")) as f:
        text = f.read()
    for old, new in replacements:
        assert old in text, old
        text = text.replace(old, new)
    path = tmp_path / f"{name}.py"
    path.write_text(text)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def with_network(monkeypatch, cls):
    """model.py's Net edited into cls: train.py, the checkpoint's loader and model.py itself build it."""
    for module in (model, train, checkpoint):
        monkeypatch.setattr(module, "Net", cls)


def run(script, fake_mnist, out, *flags):
    script.main(["--data-dir", fake_mnist, "--out", str(out), "--device", "cpu", "--no-plots", *map(str, flags)])
    return torch.load(out / "model.pt", weights_only=True)


def trains_saves_evaluates_compares_and_resumes(script, fake_mnist, tmp_path, capsys, epochs=3):
    """The whole life of a run: trained `epochs` epochs straight, and again stopped after one and resumed;
    both end bit for bit alike. Evaluated, compared, and its answer for a photo read. Returns the run."""
    whole = run(script, fake_mnist, tmp_path / "whole", "--epochs", epochs)
    assert whole["epoch"] == epochs and len(whole["history"]) == epochs
    run(script, fake_mnist, tmp_path / "resumed", "--epochs", 1)
    resumed = run(script, fake_mnist, tmp_path / "resumed", "--epochs", epochs, "--resume",
                  tmp_path / "resumed" / "model.pt")
    assert_same_run(whole, resumed)
    capsys.readouterr()
    evaluate.main([str(tmp_path / "whole" / "model.pt"), "--data-dir", fake_mnist, "--no-plots"])
    report = capsys.readouterr().out
    assert f"test accuracy: {whole['history'][-1]['test_acc']:.2f}%" in report, report
    evaluate.main([str(tmp_path / "whole" / "model.pt"), "--image", SEVEN])
    assert f"{SEVEN}: " in capsys.readouterr().out
    compare.main([str(tmp_path / "whole"), str(tmp_path / "resumed"), "--out", str(tmp_path / "c.png")])
    rows = capsys.readouterr().out.splitlines()
    assert rows[1].startswith(str(tmp_path / "whole")) and rows[2].startswith(str(tmp_path / "resumed")), rows
    path = str(tmp_path / "whole" / "model.pt")
    with open(SEVEN, "rb") as f:  # what draw.py answers the page: the network the run holds
        status, answer = draw.predict(checkpoint.model_from(checkpoint.load(path), path).eval(), "cpu", f.read())
    assert status == 200 and 0 <= answer["digit"] <= 9 and len(answer["probabilities"]) == 10, answer
    return whole


@pytest.mark.parametrize("optimizer", [
    "torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)",
    "torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, nesterov=True, weight_decay=5e-4)",
    "torch.optim.Adam(model.parameters(), lr=1e-3)",
    "torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)",
    "torch.optim.RMSprop(model.parameters(), lr=1e-3)",
])
def test_another_optimizer(fake_mnist, tmp_path, capsys, optimizer):
    script = edited_train(tmp_path, (OPTIMIZER, f"    optimizer = {optimizer}\n"))
    ckpt = trains_saves_evaluates_compares_and_resumes(script, fake_mnist, tmp_path, capsys)
    group = ckpt["optimizer"]["param_groups"][0]
    if "momentum=0.9" in optimizer:
        assert group["momentum"] == 0.9 and all("momentum_buffer" in s for s in ckpt["optimizer"]["state"].values())
    else:
        assert ckpt["optimizer"]["state"][0]["step"] == 3 * 10  # 3 epochs of 10 batches: its own state, kept
    plain = run(train, fake_mnist, tmp_path / "plain", "--epochs", 3)
    assert not torch.equal(plain["model"]["fc1.weight"], ckpt["model"]["fc1.weight"])  # the edit took effect
    name, lr = optimizer.split("(")[0].split(".")[-1], 1e-3 if "lr=1e-3" in optimizer else 0.01
    assert [h["lr"] for h in ckpt["history"]] == [lr] * 3  # the rate it trained with, not --lr's
    script.RUNS_DIR = str(tmp_path / "runs")
    script.main(["--data-dir", fake_mnist, "--device", "cpu", "--no-plots", "--epochs", "1"])
    assert os.listdir(tmp_path / "runs") == [f"lr{lr:g}-bs64" if name == "SGD" else f"{name.lower()}-lr{lr:g}-bs64"]


def test_an_edited_rate_in_the_optimizer_line_takes_effect_on_resume(fake_mnist, tmp_path, capsys):
    """No scheduler saved: the lr written in train.py now is the one that goes on, and a line says so."""
    first = edited_train(tmp_path, (OPTIMIZER, "    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)\n"))
    run(first, fake_mnist, tmp_path / "a", "--epochs", 1)
    later = edited_train(tmp_path, (OPTIMIZER, "    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)\n"),
                         name="train_later")
    capsys.readouterr()
    ckpt = run(later, fake_mnist, tmp_path / "a", "--epochs", 2, "--resume", tmp_path / "a" / "model.pt")
    assert "lr 0.001 -> 0.0001 from epoch 2 (train.py's optimizer now)" in capsys.readouterr().out
    assert [h["lr"] for h in ckpt["history"]] == [1e-3, 1e-4]


def test_a_scheduler_saved_in_the_dict_resumes_where_it_was(fake_mnist, tmp_path, capsys):
    """StepLR halving the rate every epoch, stepped after each epoch and saved beside the optimizer."""
    script = edited_train(tmp_path, *SCHEDULER, ("            seconds = time.perf_counter() - start\n",
                                                 "            seconds = time.perf_counter() - start\n"
                                                 "            scheduler.step()\n"))
    ckpt = trains_saves_evaluates_compares_and_resumes(script, fake_mnist, tmp_path, capsys)
    assert ckpt["scheduler"]["last_epoch"] == 3 and ckpt["optimizer"]["param_groups"][0]["lr"] == 0.01 / 8
    assert [h["lr"] for h in ckpt["history"]] == [0.01, 0.01 / 2, 0.01 / 4]  # the rate each epoch trained with


def test_another_loss_in_train_step(fake_mnist, tmp_path, capsys):
    script = edited_train(tmp_path, ("    loss = F.cross_entropy(logits, y)\n",
                                     "    loss = F.cross_entropy(logits, y, label_smoothing=0.1)\n"))
    ckpt = trains_saves_evaluates_compares_and_resumes(script, fake_mnist, tmp_path, capsys)
    plain = run(train, fake_mnist, tmp_path / "plain", "--epochs", 3)
    assert ckpt["history"][0]["train_loss"] != plain["history"][0]["train_loss"]


def test_a_key_of_ones_own_is_kept_and_read_back(fake_mnist, tmp_path, capsys):
    script = edited_train(tmp_path, ("\"config\": config,", "\"config\": config, \"note\": \"my run\", "
                                                           "\"mean\": torch.tensor([0.1307]),"))
    ckpt = trains_saves_evaluates_compares_and_resumes(script, fake_mnist, tmp_path, capsys)
    loaded = checkpoint.load(str(tmp_path / "whole" / "model.pt"))
    assert loaded["note"] == "my run" == ckpt["note"] and torch.equal(loaded["mean"], torch.tensor([0.1307]))


class BatchNormDropout(nn.Module):
    """model.py with BatchNorm and Dropout added, and a second, wider hidden layer of ReLUs."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(784, 128)
        self.bn = nn.BatchNorm1d(128)
        self.dropout = nn.Dropout(0.2)
        self.fc2 = nn.Linear(128, 64)
        self.fc3 = nn.Linear(64, 10)

    def forward(self, x):
        x = self.dropout(torch.relu(self.bn(self.fc1(x.flatten(1)))))
        return self.fc3(torch.relu(self.fc2(x)))


class ConvNet(nn.Module):
    """pytorch/examples' MNIST network, narrower: Conv2d, max-pooling, dropout and two Linear layers."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, 1)
        self.conv2 = nn.Conv2d(8, 16, 3, 1)
        self.dropout1 = nn.Dropout(0.25)
        self.fc1 = nn.Linear(16 * 12 * 12, 32)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x):
        x = torch.max_pool2d(torch.relu(self.conv2(torch.relu(self.conv1(x)))), 2)
        return self.fc2(torch.relu(self.fc1(self.dropout1(x).flatten(1))))


@pytest.mark.parametrize("network", [BatchNormDropout, ConvNet])
def test_another_network(fake_mnist, tmp_path, capsys, monkeypatch, network):
    """Dropout draws random numbers: resuming bit for bit needs the random state saved with the run."""
    with_network(monkeypatch, network)
    ckpt = trains_saves_evaluates_compares_and_resumes(train, fake_mnist, tmp_path, capsys)
    assert ckpt["arch"] == str(network()) and network.__name__ in checkpoint.described(ckpt["arch"])
    if network is BatchNormDropout:
        assert ckpt["model"]["bn.num_batches_tracked"] == 3 * 10  # an int64 counter, kept
    else:
        assert "Linear(2304, 32)" in checkpoint.described(ckpt["arch"]) and "Conv2d(8, 16" in ckpt["arch"]
    train.main(["--data-dir", fake_mnist, "--out", str(tmp_path / "again"), "--device", "cpu", "--epochs", "1"])
    assert f"run {tmp_path / 'again'}: {network.__name__} with " in capsys.readouterr().out


@pytest.mark.parametrize("transform", [
    transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))]),
    transforms.Compose([transforms.Pad(2), transforms.Resize(28), transforms.ToTensor()]),
    transforms.Compose([transforms.ToTensor(), transforms.Lambda(lambda x: 1 - x)]),
])
def test_a_deterministic_transform_is_applied_by_the_fast_loader_bit_for_bit(fake_mnist, tmp_path, monkeypatch,
                                                                              transform):
    monkeypatch.setattr(data, "TRANSFORM", transform)
    fast = run(train, fake_mnist, tmp_path / "fast", "--epochs", 2)
    classic = run(train, fake_mnist, tmp_path / "classic", "--epochs", 2, "--loader", "classic")
    for key in fast["model"]:
        assert torch.equal(fast["model"][key], classic["model"][key]), key
    batch, _ = next(iter(data.build_test_loader(fake_mnist)))  # the fast loader's
    dataset = data.load_mnist(fake_mnist, train=False)
    assert torch.equal(batch, torch.stack([dataset[i][0] for i in range(len(batch))]))  # what data.py makes
    monkeypatch.undo()
    plain = run(train, fake_mnist, tmp_path / "plain", "--epochs", 2)
    assert not torch.equal(plain["model"]["fc1.weight"], fast["model"]["fc1.weight"])  # it took effect
    assert not torch.equal(next(iter(data.build_test_loader(fake_mnist)))[0], batch)


def test_an_augmentation_draws_anew_every_epoch_on_the_training_images_only_and_resumes_bit_for_bit(
        fake_mnist, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(data, "AUGMENT", [transforms.RandomRotation(20)])
    train_loader, test_loader = data.build_loaders(fake_mnist, 64, 0, "fast")
    said = capsys.readouterr().out
    assert said == ("the training images go through the classic loader: data.py's transform draws random numbers "
                    "(RandomRotation), anew for each image every epoch\n"), said
    first, second = (torch.cat([x for x, _ in train_loader]) for _ in range(2))
    assert first.shape == second.shape and not torch.equal(first.sort().values, second.sort().values)
    tested = [torch.cat([x for x, _ in test_loader]) for _ in range(2)]  # the test images as they are: fast
    assert torch.equal(*tested) and type(test_loader.dataset).__name__ == "InMemoryMNIST"
    ckpt = trains_saves_evaluates_compares_and_resumes(train, fake_mnist, tmp_path, capsys)
    evaluate.main([str(tmp_path / "whole" / "model.pt"), "--data-dir", fake_mnist, "--no-plots"])
    assert f"test accuracy: {ckpt['history'][-1]['test_acc']:.2f}%" in capsys.readouterr().out  # a measurement


def test_a_lambda_drawing_noise_is_seen_to_be_random(fake_mnist, monkeypatch, capsys):
    """A Lambda's randomness has no name to go by: the transform is run with several seeds to see it."""
    noisy = transforms.Compose([transforms.ToTensor(), transforms.Lambda(lambda x: x + 0.1 * torch.randn_like(x))])
    monkeypatch.setattr(data, "TRANSFORM", noisy)
    state = torch.get_rng_state()
    train_loader, _ = data.build_loaders(fake_mnist, 64, 0, "fast")
    assert torch.equal(torch.get_rng_state(), state)  # looking changed no random state
    assert "draws random numbers (ToTensor, Lambda)" in capsys.readouterr().out
    assert type(train_loader.dataset).__name__ == "MNIST"  # the classic loader's own data set


def test_old_runs_are_refused_with_where_their_own_model_py_is(fake_mnist, tmp_path, capsys, monkeypatch):
    """A learner's uncommitted network is never lost: the refusal names the run's kept model.py."""
    with_network(monkeypatch, ConvNet)
    run(train, fake_mnist, tmp_path / "cnn", "--epochs", 1)
    kept = tmp_path / "cnn" / "lesson" / "model.py"
    assert kept.read_text() == open(os.path.join(ROOT, "model.py")).read()
    monkeypatch.undo()
    for module, args in ((evaluate, [tmp_path / "cnn" / "model.pt", "--no-plots"]),
                         (train, ["--resume", tmp_path / "cnn" / "model.pt", "--epochs", 2])):
        line = main_error(module, *args, "--data-dir", fake_mnist)
        assert "holds a ConvNet(conv1: Conv2d(1, 8, kernel_size=(3, 3), stride=(1, 1)), conv2: " in line, line
        assert f"diff model.py {kept}" in line, line
    kept.write_text(kept.read_text() + "# as the learner's model.py was\n")  # differs from model.py now
    main_error(train, "--resume", tmp_path / "cnn" / "model.pt", "--epochs", 2, "--data-dir", fake_mnist)
    assert sorted(os.listdir(tmp_path / "cnn")) == [".lock", "lesson", "model.pt"]  # a refused resume keeps nothing


def test_a_resumed_run_whose_lesson_changed_keeps_both(fake_mnist, tmp_path, capsys, monkeypatch):
    run(train, fake_mnist, tmp_path / "a", "--epochs", 1)
    run(train, fake_mnist, tmp_path / "b", "--epochs", 1)
    original = (tmp_path / "a" / "lesson" / "train.py").read_text()
    edited = original.replace("EPOCHS = 30", "EPOCHS = 31")
    (tmp_path / "b" / "lesson" / "train.py").write_text(edited)  # as if b was trained with another train.py
    capsys.readouterr()
    compare.main([str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "c.png")])
    out = capsys.readouterr().out
    assert (f"train.py: 2 versions among the runs ({tmp_path / 'a'} | {tmp_path / 'b'}; diff their lesson/train.py)"
            in out), out
    assert "model.py:" not in out and "data.py:" not in out
    run(train, fake_mnist, tmp_path / "b", "--epochs", 2, "--resume", tmp_path / "b" / "model.pt")
    assert (tmp_path / "b" / "lesson" / "train.py").read_text() == edited  # what it started with, as it was
    assert (tmp_path / "b" / "lesson-from-epoch-2" / "train.py").read_text() == original  # what epoch 2 ran



def test_a_run_saved_before_an_edit_lacks_its_new_key_in_one_line(fake_mnist, tmp_path):
    """The scheduler added to train.py, then a run saved before it resumed: ckpt["scheduler"] is a line."""
    run(train, fake_mnist, tmp_path / "old", "--epochs", 1)
    script = edited_train(tmp_path, *SCHEDULER)
    line = main_error(script, "--resume", tmp_path / "old" / "model.pt", "--epochs", 2, "--data-dir", fake_mnist)
    assert line == (f"error: {tmp_path / 'old' / 'model.pt'} holds no 'scheduler': it was saved by a train.py that "
                    "did not save one; go on from a run saved with it, or start a new run")
    assert sorted(os.listdir(tmp_path / "old")) == [".lock", "lesson", "model.pt"]  # as it was


def test_evaluating_with_another_data_py_says_so(fake_mnist, tmp_path, capsys):
    run(train, fake_mnist, tmp_path / "a", "--epochs", 1)
    kept = tmp_path / "a" / "lesson" / "data.py"
    evaluate.main([str(tmp_path / "a" / "model.pt"), "--data-dir", fake_mnist, "--no-plots"])
    assert "note: data.py" not in capsys.readouterr().out  # the data.py it trained with
    kept.write_text(kept.read_text().replace("TRANSFORM = transforms.ToTensor()", "TRANSFORM = transforms.Compose("
                                             "[transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))])"))
    evaluate.main([str(tmp_path / "a" / "model.pt"), "--data-dir", fake_mnist, "--no-plots"])
    assert capsys.readouterr().out.splitlines()[1] == (f"note: data.py is not the one this run trained with (diff "
                                                       f"data.py {kept}): its TRANSFORM is what the images become here")


def test_a_network_without_fc1_and_fc2_says_why_it_has_no_hidden_units_picture(fake_mnist, tmp_path, capsys,
                                                                                 monkeypatch):
    with_network(monkeypatch, ConvNet)
    run(train, fake_mnist, tmp_path / "cnn", "--epochs", 1)
    evaluate.main([str(tmp_path / "cnn" / "model.pt"), "--data-dir", fake_mnist])
    assert "hidden_units.png is not drawn: it shows fc1's weights from the 784 pixels" in capsys.readouterr().out
    assert not (tmp_path / "cnn" / "hidden_units.png").exists() and (tmp_path / "cnn" / "mistakes.png").exists()
