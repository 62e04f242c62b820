"""Resuming: a checkpoint that passes the loading gate but would fail in train.py's own load_state_dict or
step is refused in one line, before anything is trained or written; what a run folder holds (a saved
setting, a file where the run writes) never makes train.py delete or write through anything."""
import os

import pytest
import torch

import train
from conftest import main_error
from machinery import checkpoint
from model import Net


@pytest.fixture()
def run(trained, tmp_path):
    """A folder holding a copy of a real two-epoch run, and its checkpoint dict, to craft."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "model.pt").write_bytes((trained[0] / "model.pt").read_bytes())
    return out, torch.load(out / "model.pt", weights_only=True)


def momentum_state(ckpt, **state):
    """The checkpoint as if trained with SGD momentum 0.9, its first buffer replaced by `state`."""
    net = Net()
    net.load_state_dict(ckpt["model"])
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    net(torch.rand(2, 784)).sum().backward()
    optimizer.step()
    saved = optimizer.state_dict()
    saved["state"][0].update(state)
    return dict(ckpt, optimizer=saved)


def adam_state(ckpt, **state):
    net = Net()
    optimizer = torch.optim.Adam(net.parameters())
    net(torch.rand(2, 784)).sum().backward()
    optimizer.step()
    saved = optimizer.state_dict()
    saved["state"][0].update(state)
    return dict(ckpt, optimizer=saved)


def crafts(ckpt):
    """(what, checkpoint, the refusal's words): each passes checkpoint.load, none can be trained on."""
    weights = ckpt["model"]
    yield "a weight of another shape", dict(ckpt, model=dict(weights, **{"fc1.weight": torch.zeros(64, 780)})), \
        "its weights do not fit"
    yield "a weight more", dict(ckpt, model=dict(weights, extra=torch.zeros(3))), "its weights do not fit"
    yield "a momentum buffer transposed", momentum_state(ckpt, momentum_buffer=weights["fc1.weight"].t()), \
        "its optimizer state does not work with train.py's SGD"
    yield "a momentum buffer smaller", momentum_state(ckpt, momentum_buffer=torch.zeros(3)), "does not work"
    yield "a momentum buffer of text", momentum_state(ckpt, momentum_buffer="s"), "does not work"
    yield "a cycling scheduler's momentum of text", dict(momentum_state(ckpt), scheduler={
        "last_epoch": 1, "cycle_momentum": True}, optimizer=dict(momentum_state(ckpt)["optimizer"], param_groups=[
            dict(momentum_state(ckpt)["optimizer"]["param_groups"][0], momentum="\x1b[31mabc")])), "does not work"


def adam_crafts(ckpt):
    yield "Adam's step as text", adam_state(ckpt, step="x"), "its optimizer state does not work with train.py's Adam"
    yield "Adam's step of five", adam_state(ckpt, step=torch.zeros(5)), "does not work"
    yield "Adam's moments of another shape", adam_state(ckpt, exp_avg=torch.zeros(7, 7)), "does not work"


def assert_refused(run_folder, fake_mnist, crafted, said, script=train):
    path = run_folder / "model.pt"
    torch.save(crafted, path)
    before = path.read_bytes()
    checkpoint.load(str(path))  # the loading gate lets it through: it is what torch could write
    line = main_error(script, "--resume", path, "--epochs", 4, "--data-dir", fake_mnist)
    assert said in line and "\x1b" not in line and len(line) < 400, line
    assert path.read_bytes() == before and sorted(os.listdir(run_folder)) == [".lock", "model.pt"]


def test_crafted_states_are_refused_in_one_line_before_training(run, fake_mnist):
    folder, ckpt = run
    found = list(crafts(ckpt))
    assert len(found) == 6
    momentum = train.torch.optim.SGD
    for what, crafted, said in found:
        if "momentum" in what or "cycling" in what:  # train.py with momentum, as the run was trained
            train.torch.optim.SGD = lambda params, lr: momentum(params, lr=lr, momentum=0.9)
        try:
            assert_refused(folder, fake_mnist, crafted, said)
        finally:
            train.torch.optim.SGD = momentum


def test_crafted_adam_states_are_refused(run, fake_mnist, monkeypatch):
    folder, ckpt = run
    adam = torch.optim.Adam
    monkeypatch.setattr(torch.optim, "SGD", lambda params, lr: adam(params))  # train.py's optimizer line: Adam
    for what, crafted, said in adam_crafts(ckpt):
        assert_refused(folder, fake_mnist, crafted, said)


def test_a_scheduler_key_of_ones_own_does_not_break_the_gate(run, fake_mnist, capsys):
    """A value that only looks like a scheduler's (a tensor where cycle_momentum would be) is a plain value."""
    folder, ckpt = run
    torch.save(dict(ckpt, mine={"last_epoch": 2, "cycle_momentum": torch.zeros(3)}), folder / "model.pt")
    train.main(["--resume", str(folder / "model.pt"), "--epochs", "3", "--data-dir", fake_mnist, "--no-plots"])
    assert "epoch 3/3" in capsys.readouterr().out


def test_lbfgs_whose_state_is_one_flat_vector_resumes(trained):
    """LBFGS keeps its history under parameter 0, flat: what any torch optimizer writes is taken."""
    net = Net()
    optimizer = torch.optim.LBFGS(net.parameters(), lr=0.1, max_iter=2)
    x, y = torch.rand(8, 784), torch.randint(0, 10, (8,))

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(net(x), y)
        loss.backward()
        return loss

    optimizer.step(closure)
    ckpt = dict(torch.load(trained[0] / "model.pt", weights_only=True), model=net.state_dict(),
                optimizer=optimizer.state_dict())
    again = Net()
    assert checkpoint.resumable(ckpt, "lbfgs.pt", again, torch.optim.LBFGS(again.parameters(), lr=0.1, max_iter=2)) == []


def test_a_saved_setting_that_is_not_one_train_py_saves_is_not_taken(run, fake_mnist):
    """A config holding "dry_run" (any value reads as true once text) removed the run's folder; "runs_dir",
    "resuming" would have been taken too. Only the settings train.py saves become defaults."""
    folder, ckpt = run
    (folder / "my_notes.txt").write_text("mine")
    crafted = dict(ckpt, config=dict(ckpt["config"], dry_run=False, no_plots=False, runs_dir="/", resuming="x"))
    torch.save(crafted, folder / "model.pt")
    train.main(["--resume", str(folder / "model.pt"), "--epochs", "3", "--data-dir", fake_mnist])
    assert (folder / "my_notes.txt").read_text() == "mine" and (folder / "training_curves.png").exists()
    assert torch.load(folder / "model.pt", weights_only=True)["epoch"] == 3


@pytest.mark.parametrize("kind", ["link", "fifo", "file"])
def test_a_temporary_checkpoint_name_taken_is_refused_and_nothing_written_through(run, fake_mnist, tmp_path, kind):
    folder, _ = run
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    tmp = folder / "model.pt.tmp"
    if kind == "link":
        os.symlink(victim, tmp)
    elif kind == "fifo":
        os.mkfifo(tmp)
    else:
        tmp.write_text("left by a run that was killed")
    line = main_error(train, "--resume", folder / "model.pt", "--epochs", 3, "--data-dir", fake_mnist)
    assert f"{tmp} is in the way (left by a run that was killed, or not ours): remove it" in line
    assert victim.read_text() == "precious" and os.path.lexists(tmp)


def test_a_lesson_folder_in_the_way_is_refused(run, fake_mnist):
    folder, _ = run
    (folder / "lesson").mkdir()
    (folder / "lesson" / "train.py").write_text("# another train.py")
    (folder / "lesson-from-epoch-3").write_text("not a folder")
    line = main_error(train, "--resume", folder / "model.pt", "--epochs", 3, "--data-dir", fake_mnist)
    assert f"{folder / 'lesson-from-epoch-3'} is in the way: move it, or pass another --out" in line
    assert (folder / "lesson-from-epoch-3").read_text() == "not a folder"


def test_a_crafted_description_costs_its_length_once():
    """A description of 99,999 newlines took 27 s to put on one line (quadratic regular expressions)."""
    import time

    start = time.perf_counter()
    checkpoint.described("\n" * 99_999 + "(" * 50_000)
    assert time.perf_counter() - start < 1.0  # measured: 0.04 s
