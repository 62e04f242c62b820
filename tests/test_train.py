"""train.py: its two functions against plain math, and main() as a user runs it: output, determinism,
resume, interruption, bad flags, the thread policy."""
import os
import shlex
import signal

import pytest
import torch
import torch.nn.functional as F

from machinery import cli
from machinery import plots
import data
import train
from conftest import (DEVICES, ROOT, FAKE_TEST, assert_one_line_error, assert_same_run, in_order, main_error, run_process,
                      run_script, train_run)
from model import Net



def test_evaluate_matches_hand_counted_confusion_across_batches(fake_mnist):
    torch.manual_seed(0)
    model = Net()
    loader = in_order(fake_mnist, 64, "fast")
    assert len(loader) == 4  # 200 images in batches of 64: the sums must carry across batches
    loss, acc, confusion = train.evaluate(model, loader, torch.device("cpu"))
    x = torch.cat([x for x, _ in loader])
    y = torch.cat([y for _, y in loader])
    logits = model(x)
    expected = torch.zeros(10, 10, dtype=torch.int64)
    for t, p in zip(y.tolist(), logits.argmax(1).tolist()):
        expected[t, p] += 1
    assert torch.equal(confusion, expected) and expected.sum() == FAKE_TEST
    assert loss == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-5)
    assert acc == 100.0 * expected.trace().item() / FAKE_TEST


def test_train_one_epoch_takes_one_sgd_step_per_batch(fake_mnist):
    torch.manual_seed(0)
    model, reference = Net(), Net()
    reference.load_state_dict(model.state_dict())
    batches = list(in_order(fake_mnist, 64, train=True))[:3]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loss, acc = train.train_one_epoch(model, batches, optimizer, torch.device("cpu"))
    losses, correct = [], 0
    for x, y in batches:  # the same steps by hand: w -= lr * grad
        logits = reference(x)
        batch_loss = F.cross_entropy(logits, y)
        reference.zero_grad()
        batch_loss.backward()
        with torch.no_grad():
            for p in reference.parameters():
                p -= 0.1 * p.grad
        losses.append(batch_loss.item())
        correct += (logits.argmax(1) == y).sum().item()
    assert loss == pytest.approx(sum(losses) / 3, rel=1e-6) and acc == 100.0 * correct / 192
    for a, b in zip(model.parameters(), reference.parameters()):
        assert torch.allclose(a, b, atol=1e-7)


def test_prints_one_line_per_epoch_and_saves_everything(trained):
    out, stdout = trained
    lines = [line for line in stdout.splitlines() if line.startswith("epoch")]
    assert len(lines) == 2
    for i, line in enumerate(lines, 1):
        assert line.startswith(f"epoch {i}/2  train loss ") and " acc " in line and "  test loss " in line
        assert line.endswith("s") and line.count("%") == 2
    for name in ("model.pt", "training_curves.png", "lesson/model.py", "lesson/data.py", "lesson/train.py"):
        assert os.path.getsize(out / name) > 0
    for name in ("model.py", "data.py", "train.py"):  # the lesson the run was trained with, as text
        assert (out / "lesson" / name).read_bytes() == open(os.path.join(ROOT, name), "rb").read()
    assert f"saved {out / 'training_curves.png'}" in stdout
    assert not [f for f in os.listdir(out) if f.endswith(".tmp")]
    ckpt = torch.load(out / "model.pt", weights_only=True)
    assert ckpt["arch"] == str(Net()) and ckpt["config"]["lr"] == train.LEARNING_RATE
    assert [(h["lr"], h["batch_size"]) for h in ckpt["history"]] == [(train.LEARNING_RATE, train.BATCH_SIZE)] * 2


def test_the_curves_show_the_whole_history_and_the_runs_seed(fake_mnist, tmp_path, monkeypatch):
    drawn, draw = [], plots.training_curves
    monkeypatch.setattr(plots, "training_curves", lambda *args: drawn.append(args) or draw(*args))
    train.main(["--data-dir", fake_mnist, "--out", str(tmp_path / "run"), "--epochs", "3", "--seed", "5",
                "--device", "cpu"])
    (history, arch, seed), = drawn
    ckpt = torch.load(tmp_path / "run" / "model.pt", weights_only=True)
    assert history == ckpt["history"] and len(history) == 3 and seed == 5
    assert arch == "Net(fc1: Linear(784, 64), activation: Sigmoid(), fc2: Linear(64, 10))"
    with open(tmp_path / "run" / "training_curves.png", "rb") as f:
        assert f.read() == draw(history, arch, seed)


def test_same_seed_gives_bit_identical_weights(fake_mnist, tmp_path):
    a = train_run(fake_mnist, tmp_path / "a", "--epochs", "3", "--seed", "7")
    b = train_run(fake_mnist, tmp_path / "b", "--epochs", "3", "--seed", "7")
    c = train_run(fake_mnist, tmp_path / "c", "--epochs", "3", "--seed", "8")
    assert_same_run(a, b)
    assert not torch.equal(a["model"]["fc1.weight"], c["model"]["fc1.weight"])


@pytest.mark.parametrize("device", DEVICES)
def test_resume_in_process_ends_bit_identical(fake_mnist, tmp_path, device):
    whole = train_run(fake_mnist, tmp_path / "whole", "--epochs", "4", "--lr", "0.05", device=device)
    train_run(fake_mnist, tmp_path / "parts", "--epochs", "2", "--lr", "0.05", device=device)
    resumed = train_run(fake_mnist, tmp_path / "parts", "--epochs", "4", "--resume", device=device)
    assert_same_run(whole, resumed)


def test_edited_constants_are_the_defaults(fake_mnist, tmp_path, monkeypatch):
    for name, value in (("EPOCHS", 2), ("LEARNING_RATE", 0.03), ("DATA_DIR", fake_mnist),
                        ("RUNS_DIR", str(tmp_path)), ("DEVICE", "cpu")):
        monkeypatch.setattr(train, name, value)
    train.main(["--no-plots"])
    ckpt = torch.load(tmp_path / "lr0.03-bs64" / "model.pt", weights_only=True)
    assert ckpt["epoch"] == 2 and ckpt["config"]["lr"] == 0.03


@pytest.mark.slow  # a process of its own
def test_stopped_with_ctrl_c_and_resumed_with_the_printed_command_ends_bit_identical(fake_mnist, tmp_path,
                                                                                    stoppable_train):
    flags = ["--data-dir", fake_mnist, "--lr", "0.05", "--batch-size", "32", "--device", "cpu", "--no-plots"]
    out = tmp_path / "parts"
    proc = stoppable_train(out, 2, *flags[2:])
    proc.send(signal.SIGINT)
    returncode, stderr = proc.finish()
    assert returncode == 130 and "Traceback" not in stderr, stderr
    line = stderr.strip().splitlines()[-1]
    assert line.startswith("interrupted (SIGINT): epoch ") and " is saved in " in line, line
    saved = int(line.split("): epoch ")[1].split("/")[0])
    command = shlex.split(line.split("continue with: ")[1])
    assert command[:2] == ["python", "train.py"] and "--lr" not in command and "--batch-size" not in command
    # in this process, to two epochs more: what matters is what the printed command says
    resumed = run_script(command[1], *command[2:], "--epochs", saved + 2)
    assert resumed.returncode == 0, resumed.stderr
    whole = train_run(fake_mnist, tmp_path / "whole", *flags[2:], "--epochs", str(saved + 2))
    assert_same_run(whole, torch.load(out / "model.pt", weights_only=True))


def test_resume_keeps_the_runs_settings_and_says_what_a_flag_changes(fake_mnist, tmp_path, capsys):
    out = tmp_path / "run"
    train_run(fake_mnist, out, "--epochs", "2", "--lr", "0.1", "--batch-size", "32")
    resumed = train_run(fake_mnist, out, "--epochs", "4", "--resume", "--lr", "0.05")
    stdout = capsys.readouterr().out
    assert "lr 0.1 -> 0.05 from epoch 3" in stdout.splitlines() and "batch size" not in stdout
    assert [(h["lr"], h["batch_size"]) for h in resumed["history"]] == [(0.1, 32)] * 2 + [(0.05, 32)] * 2
    assert resumed["config"]["lr"] == 0.05 and resumed["config"]["batch_size"] == 32
    assert "goes on from its own weights" in main_error(train, "--resume", out / "model.pt", "--seed", 3,
                                                        "--epochs", 6, "--data-dir", fake_mnist)
    assert "at epoch 4 already" in main_error(train, "--resume", out / "model.pt", "--data-dir", fake_mnist)


@pytest.mark.slow  # a process of its own
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_and_sighup_stop_like_ctrl_c(tmp_path, sig, stoppable_train):
    out = tmp_path / "run"
    proc = stoppable_train(out, 2)
    proc.send(sig)
    returncode, stderr = proc.finish()
    assert returncode == 128 + sig and "Traceback" not in stderr, stderr
    line = stderr.strip().splitlines()[-1]
    assert line.startswith(f"interrupted ({sig.name}): epoch ") and "continue with: python train.py --resume" in line
    saved = int(line.split("): epoch ")[1].split("/")[0])
    ckpt = torch.load(out / "model.pt", weights_only=True)
    assert ckpt["epoch"] == saved >= 2 and len(ckpt["history"]) == saved
    assert not [f for f in os.listdir(out) if f.endswith(".tmp")]


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(fake_mnist, tmp_path):
    out = tmp_path / "run"
    proc = run_script("train.py", "--data-dir", fake_mnist, "--out", out, "--epochs", 1, "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    before = {name: (out / name).read_bytes() for name in ("model.pt", "training_curves.png")}
    # a learning rate of 1e38 is finite and valid, and drives the weights to inf within an epoch
    proc = run_script("train.py", "--resume", "--out", out, "--data-dir", fake_mnist, "--epochs", 3, "--lr", "1e38")
    assert_one_line_error(proc, "the training loss became nan and the test loss nan in epoch 2: stopped without "
                          "saving it, the epochs before stay as they were saved", "--lr")
    assert {name: (out / name).read_bytes() for name in before} == before
    proc = run_script("train.py", "--resume", out / "model.pt", "--out", tmp_path / "more", "--data-dir", fake_mnist,
                      "--epochs", 3, "--lr", "1e38")
    assert_one_line_error(proc, "in epoch 2: stopped without saving it")  # in the new folder; the old one is as it was
    assert not (tmp_path / "more").exists()
    assert {name: (out / name).read_bytes() for name in before} == before
    proc = run_script("train.py", "--data-dir", fake_mnist, "--epochs", 3, "--lr", "1e38", "--device", "cpu",
                      cwd=tmp_path)
    assert_one_line_error(proc, "in epoch 1: stopped without saving it")
    assert os.listdir(tmp_path / "runs") == []  # no empty run folder left for compare.py to skip


@pytest.mark.parametrize("step, value, said", [("train_one_epoch", float("inf"), "the training loss became inf and"),
                                               ("evaluate", float("nan"), "and the test loss nan")])
def test_a_non_finite_training_or_test_loss_alone_stops_the_run(fake_mnist, tmp_path, monkeypatch, step, value, said):
    real = getattr(train, step)
    monkeypatch.setattr(train, step, lambda *args: (value, *real(*args)[1:]))  # the other loss stays finite
    proc = run_script("train.py", "--data-dir", fake_mnist, "--epochs", 2, "--device", "cpu", cwd=tmp_path)
    assert_one_line_error(proc, said, "in epoch 1: stopped without saving it")
    assert os.listdir(tmp_path / "runs") == []


def test_ctrl_c_during_a_save_or_the_curves_says_what_is_saved(fake_mnist, tmp_path, monkeypatch):
    save, calls = torch.save, []

    def interrupted_save(obj, path, *args, **kwargs):  # Ctrl-C arrives while epoch 2's model.pt is written
        calls.append(path)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGINT)
        return save(obj, path, *args, **kwargs)

    monkeypatch.setattr(torch, "save", interrupted_save)
    proc = run_script("train.py", "--data-dir", fake_mnist, "--out", tmp_path / "a", "--epochs", 3, "--device", "cpu")
    monkeypatch.setattr(torch, "save", save)
    saved = torch.load(tmp_path / "a" / "model.pt", weights_only=True)["epoch"]  # whole: epoch 1, or 2 if it ended
    assert proc.returncode == 130 and saved in (1, 2) and proc.stderr.strip() == (
        f"interrupted (SIGINT): epoch {saved}/3 is saved in {tmp_path / 'a' / 'model.pt'}; continue with: "
        f"python train.py --resume {tmp_path / 'a' / 'model.pt'}"), proc.stderr
    assert not [f for f in os.listdir(tmp_path / "a") if f.endswith(".tmp")]

    def stopped(*args):
        raise KeyboardInterrupt
    monkeypatch.setattr(plots, "training_curves", stopped)
    proc = run_script("train.py", "--data-dir", fake_mnist, "--out", tmp_path / "b", "--epochs", 2, "--device", "cpu")
    assert proc.stderr.strip() == (f"interrupted (SIGINT): all 2 epochs are saved in {tmp_path / 'b' / 'model.pt'}; "
                                   "only the curves were not drawn"), proc.stderr


@pytest.mark.parametrize("flags, message", [
    (["--epochs", "0"], "argument --epochs: 0 is out of range: use 1 to 10,000"),
    (["--epochs", "ten"], "argument --epochs: 'ten' is not a whole number"),
    (["--batch-size", str(2**64)], "argument --batch-size: 18446744073709551616 is out of range"),
    (["--seed", str(2**70)], "argument --seed: 1180591620717411303424 is out of range"),
    (["--lr", "nan"], "argument --lr: nan is not a positive finite number float32 can hold"),
    (["--lr", "-0.1"], "is not a positive finite number"),
    (["--lr", "1e39"], "argument --lr: 1e39 is not a positive finite number float32 can hold"),
    (["--threads", "0"], "argument --threads: 0 is out of range"),
    (["--device", "tpu"], "unknown device 'tpu'"),
    (["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
    pytest.param(["--device", "cuda"], "CUDA is not available",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")),
])
def test_bad_flags_get_one_line_and_touch_nothing(trained, fake_mnist, flags, message, capsys):
    out, _ = trained
    before = (out / "model.pt").read_bytes()
    with pytest.raises(SystemExit) as e:
        cli.run(lambda: train.main(["--data-dir", fake_mnist, "--out", str(out), "--resume", "--epochs", "9", *flags]))
    said = str(e.value.code) if isinstance(e.value.code, str) else capsys.readouterr().err
    assert len(said.strip().splitlines()) == 1 and said.startswith("error: ") and message in said, said
    assert e.value.code != 0 and (out / "model.pt").read_bytes() == before


def test_the_thread_count_is_the_one_the_scripts_run_with(fake_mnist, tmp_path):
    torch.set_num_threads(2)  # not what THREADS says: the script must set it
    proc = run_script("train.py", "--data-dir", fake_mnist, "--out", tmp_path / "a", "--epochs", 1, "--no-plots",
                      "--device", "cpu")
    assert f"cpu, threads {train.THREADS}," in proc.stdout.splitlines()[0]
    proc = run_script("train.py", "--data-dir", fake_mnist, "--out", tmp_path / "b", "--epochs", 1, "--threads", 2,
                      "--device", "cpu")
    assert "cpu, threads 2," in proc.stdout.splitlines()[0]
    assert torch.load(tmp_path / "b" / "model.pt", weights_only=True)["config"]["threads"] == 2


def test_a_resumed_run_keeps_its_threads_device_and_data_and_checks_them(fake_mnist, tmp_path, capsys):
    out = tmp_path / "run"
    train_run(fake_mnist, out, "--epochs", "1", "--threads", "2")
    torch.set_num_threads(1)
    train.main(["--resume", str(out / "model.pt"), "--epochs", "2", "--no-plots"])  # no --data-dir, --device
    assert f"run {out}: Net with 50,890 parameters, device cpu, threads 2," in capsys.readouterr().out
    ckpt = torch.load(out / "model.pt", weights_only=True)
    assert ckpt["config"]["threads"] == 2 and ckpt["config"]["data_dir"] == fake_mnist and ckpt["epoch"] == 2
    for key, value in (("lr", -1.0), ("batch_size", 0), ("seed", 2**64), ("threads", 0), ("epochs", 10**30)):
        bad = dict(ckpt, config=dict(ckpt["config"], **{key: value}))
        torch.save(bad, tmp_path / "bad.pt")
        line = main_error(train, "--resume", tmp_path / "bad.pt", *(["--epochs", 3] if key != "epochs" else []))
        assert f"{tmp_path / 'bad.pt'}: not a checkpoint of this train.py (config {key} not a " in line, line
    # Saved by another optimizer's settings: train.py's optimizer as it is now goes on, saying what changed
    other = dict(ckpt, optimizer=torch.optim.SGD(Net().parameters(), lr=0.01, momentum=0.9, maximize=True).state_dict())
    (tmp_path / "other").mkdir()
    torch.save(other, tmp_path / "other" / "model.pt")
    capsys.readouterr()
    train.main(["--resume", str(tmp_path / "other" / "model.pt"), "--epochs", "3", "--no-plots"])
    said = capsys.readouterr().out
    assert ("maximize True -> False from epoch 3 (train.py's optimizer now)\n"
            "momentum 0.9 -> 0 from epoch 3 (train.py's optimizer now)\n") in said, said
    adam = dict(ckpt, optimizer=torch.optim.Adam(Net().parameters()).state_dict())
    torch.save(adam, tmp_path / "adam.pt")
    line = main_error(train, "--resume", tmp_path / "adam.pt", "--epochs", 3)
    assert "adam.pt: trained with another optimizer (its settings: amsgrad, betas, " in line
    assert "than the one train.py builds now (SGD): undo the edit to train.py to resume" in line


@pytest.mark.slow  # a process of its own
def test_the_commands_run_end_to_end(fake_mnist, tmp_path):
    """The one smoke run as a user starts it, each script a process of its own."""
    out = tmp_path / "run"
    proc = run_process("train.py", "--data-dir", fake_mnist, "--out", out, "--epochs", 1, "--device", "cpu")
    assert proc.returncode == 0 and proc.stdout.splitlines()[1].startswith("epoch 1/1  train loss "), proc.stderr
    proc = run_process("evaluate.py", out / "model.pt", "--data-dir", fake_mnist, "--device", "cpu")
    assert proc.returncode == 0 and "test accuracy: " in proc.stdout and proc.stderr == "", proc.stderr
    assert sorted(os.listdir(out)) == [".lock", "confusion_matrix.png", "hidden_units.png", "lesson",
                                       "mistakes.png", "mistakes_evidence.png", "model.pt", "training_curves.png"]


def test_dry_run_takes_one_batch_of_each_through_the_whole_path_and_keeps_nothing(fake_mnist, tmp_path, capsys,
                                                                                   monkeypatch):
    steps, tested, saved = [], [], []
    step, evaluate, save = train.train_step, train.evaluate, torch.save

    def counted(loader):
        for batch in loader:
            tested.append(len(batch[1]))
            yield batch

    monkeypatch.setattr(train, "train_step", lambda *args: steps.append(1) or step(*args))
    monkeypatch.setattr(train, "evaluate", lambda model, loader, *args: evaluate(model, counted(loader), *args))
    monkeypatch.setattr(torch, "save", lambda obj, path: saved.append(path) or save(obj, path))
    monkeypatch.setattr(data, "TEST_BATCH_SIZE", 50)  # four test batches: one is taken
    monkeypatch.chdir(tmp_path)
    train.main(["--data-dir", fake_mnist, "--dry-run", "--device", "cpu"])
    out = capsys.readouterr().out.splitlines()
    assert out[1].startswith("epoch 1/1  train loss ") and out[-1].startswith("dry run: one batch of each")
    assert len(steps) == 1 and tested == [50]
    assert len(saved) == 1 and not os.path.exists(os.path.dirname(saved[0]))  # saved the real way, then removed
    assert os.listdir(tmp_path) == []
