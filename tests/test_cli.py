"""train.py and evaluate.py run as a user runs them, and every way they refuse bad input."""
import os
import pickle
import shutil
import signal
import subprocess
import sys

import pytest
import torch

import evaluate
import train
from conftest import ROOT, assert_one_line_error, run_script


def main_error(module, *args):
    """Run module.main(args) in this process; return its one-line error (as sys.exit prints it)."""
    with pytest.raises(SystemExit) as e:
        module.main([str(a) for a in args])
    message = e.value.code
    assert isinstance(message, str) and message.startswith("error: ") and "\n" not in message, message
    return message


def test_train_prints_one_line_per_epoch_and_saves_everything(trained):
    out, stdout = trained
    lines = [line for line in stdout.splitlines() if line.startswith("epoch")]
    assert len(lines) == 2
    for i, line in enumerate(lines, 1):
        assert line.startswith(f"epoch {i}/2  train loss ") and " acc " in line and "  test loss " in line
        assert line.endswith("s") and line.count("%") == 2
    for name in ("model.pt", "history.json", "training_curves.png"):
        assert os.path.getsize(out / name) > 0
    assert f"saved {out / 'training_curves.png'}" in stdout
    assert not [f for f in os.listdir(out) if f.endswith(".tmp")]


def test_evaluate_reports_the_accuracy_train_printed(trained, fake_mnist):
    out, train_stdout = trained
    last_epoch = [line for line in train_stdout.splitlines() if line.startswith("epoch 2/2")][0]
    train_acc = last_epoch.split("test loss ")[1].split(" acc ")[1].split("%")[0]
    proc = run_script("evaluate.py", out / "model.pt", "--data-dir", fake_mnist, "--device", "cpu", "--no-plots")
    assert proc.returncode == 0, proc.stderr
    line = [x for x in proc.stdout.splitlines() if x.startswith("test accuracy: ")][0]
    correct, total = line.split("(")[1].rstrip(")").split("/")
    assert line == f"test accuracy: {train_acc}% ({correct}/{total})" and total == "200"
    assert "confusion matrix" in proc.stdout


def test_missing_data_without_network_names_the_files_and_the_option(tmp_path):
    proc = run_script("train.py", "--data-dir", tmp_path / "nowhere", "--out", tmp_path / "out", "--epochs", 1)
    line = assert_one_line_error(proc, "download failed", "train-images-idx3-ubyte", "t10k-labels-idx1-ubyte",
                                 "MNIST/raw/", "--data-dir")
    assert str(tmp_path / "nowhere") in line
    assert not os.path.exists(tmp_path / "nowhere")  # no empty folders left behind
    assert proc.stdout.startswith(f"downloading MNIST into {tmp_path / 'nowhere' / 'MNIST' / 'raw'}/")
    assert not os.path.exists(tmp_path / "out")


def test_corrupt_idx_file_is_named(fake_mnist, tmp_path):
    shutil.copytree(fake_mnist, tmp_path / "d")
    path = tmp_path / "d" / "MNIST" / "raw" / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:1000])
    proc = run_script("train.py", "--data-dir", tmp_path / "d", "--out", tmp_path / "out", "--epochs", 1)
    assert_one_line_error(proc, "t10k-images-idx3-ubyte", "truncated or corrupt", "delete it")
    labels = tmp_path / "d" / "MNIST" / "raw" / "train-labels-idx1-ubyte"
    labels.write_bytes(b"\x00\x00\x08\x03" + labels.read_bytes()[4:])  # an image file's magic number
    assert "wrong magic number" in main_error(train, "--data-dir", tmp_path / "d", "--out", tmp_path / "out")
    assert not os.path.exists(tmp_path / "out")


@pytest.mark.parametrize("flags, message", [
    (["--epochs", "0"], "epochs must be at least 1"),
    (["--batch-size", "0"], "batch size must be at least 1"),
    (["--lr", "nan"], "positive finite"),
    (["--lr", "-0.1"], "positive finite"),
    (["--lr", "inf"], "positive finite"),
    (["--device", "tpu"], "unknown device"),
    pytest.param(["--device", "cuda"], "CUDA is not available",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")),
])
def test_bad_hyperparameters_touch_nothing(trained, fake_mnist, flags, message):
    out, _ = trained
    before = (out / "model.pt").read_bytes()
    assert message in main_error(train, "--data-dir", fake_mnist, "--out", out, *flags)
    assert (out / "model.pt").read_bytes() == before


def test_an_output_folder_that_cannot_be_made_is_refused(fake_mnist, tmp_path):
    (tmp_path / "file").write_text("a file, not a folder")
    assert "cannot make the output folder" in main_error(train, "--data-dir", fake_mnist, "--out", tmp_path / "file")


def test_bad_hyperparameter_from_the_command_line(trained, fake_mnist):
    out, _ = trained
    proc = run_script("train.py", "--data-dir", fake_mnist, "--out", out, "--lr", "nan")
    assert_one_line_error(proc, "learning rate must be a positive finite number (got nan)")
    proc = run_script("train.py", "--epochs", "ten", "--loader", "fast")
    assert_one_line_error(proc, "argument --epochs: invalid int value: 'ten'", "see python train.py --help")
    proc = run_script("evaluate.py", "--no-such-flag")
    assert_one_line_error(proc, "unrecognized arguments: --no-such-flag", "see python evaluate.py --help")


def bad_checkpoints(tmp_path, good):
    """Files that are not usable checkpoints, by name."""
    good_bytes = good.read_bytes()
    files = {"empty": b"", "truncated": good_bytes[: len(good_bytes) // 2], "text": b"hello, not a checkpoint\n"}
    for name, content in files.items():
        (tmp_path / f"{name}.pt").write_bytes(content)
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other_dict.pt")
    ckpt = torch.load(good, weights_only=True)
    ckpt["model"] = {"fc1.weight": torch.zeros(32, 784), "fc1.bias": torch.zeros(32),
                     "fc2.weight": torch.zeros(10, 32), "fc2.bias": torch.zeros(10)}
    torch.save(ckpt, tmp_path / "other_arch.pt")
    return {"missing": "no such checkpoint", "empty": "not a readable checkpoint",
            "truncated": "not a readable checkpoint", "text": "not a readable checkpoint",
            "other_dict": "not a checkpoint of train.py", "other_arch": "another architecture"}


def test_unusable_checkpoints_are_refused_in_one_line(trained, fake_mnist, tmp_path):
    out, _ = trained
    for name, message in bad_checkpoints(tmp_path, out / "model.pt").items():
        path = tmp_path / f"{name}.pt"
        before = path.read_bytes() if path.exists() else None
        assert message in main_error(evaluate, path, "--data-dir", fake_mnist, "--no-plots")
        assert message in main_error(train, "--resume", path, "--data-dir", fake_mnist, "--epochs", 5)
        assert (path.read_bytes() if path.exists() else None) == before
    proc = run_script("evaluate.py", tmp_path / "truncated.pt", "--data-dir", fake_mnist)
    assert_one_line_error(proc, "not a readable checkpoint", "truncated")


class Exploit:
    """Unpickling this runs a shell command: what a crafted checkpoint would do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_checkpoint_that_would_run_code_is_refused(fake_mnist, tmp_path):
    marker = tmp_path / "pwned"
    payload = {"model": Exploit(marker), "config": {}, "epoch": 1, "history": []}
    torch.save(payload, tmp_path / "evil.pt")
    (tmp_path / "evil.pkl").write_bytes(pickle.dumps(payload))  # the legacy, plain-pickle format
    proc = run_script("evaluate.py", tmp_path / "evil.pt", "--data-dir", fake_mnist)
    assert_one_line_error(proc, f"refused, it would call {os.system.__module__}.system", "could run that code")
    for path in (tmp_path / "evil.pt", tmp_path / "evil.pkl"):
        assert "could run that code" in main_error(evaluate, path, "--data-dir", fake_mnist)
        assert "could run that code" in main_error(train, "--resume", path, "--data-dir", fake_mnist, "--epochs", 3)
    assert not marker.exists()
    pickle.loads((tmp_path / "evil.pkl").read_bytes())  # plain unpickling does run it
    assert marker.exists()


def test_resume_past_the_last_epoch_says_what_to_do(trained, fake_mnist):
    out, _ = trained
    assert "at epoch 2 already" in main_error(train, "--resume", out / "model.pt", "--data-dir", fake_mnist,
                                               "--epochs", 2)


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(fake_mnist, tmp_path):
    out = tmp_path / "run"
    assert run_script("train.py", "--data-dir", fake_mnist, "--out", out, "--epochs", 1).returncode == 0
    before = {name: (out / name).read_bytes() for name in ("model.pt", "history.json")}
    # a learning rate of 1e38 is finite and valid, and drives the weights to inf within an epoch
    proc = run_script("train.py", "--resume", "--out", out, "--data-dir", fake_mnist, "--epochs", 3, "--lr", "1e38")
    assert_one_line_error(proc, "the training loss became", "in epoch 2", "keeps epoch 1", "--lr")
    assert {name: (out / name).read_bytes() for name in before} == before


def test_ctrl_c_stops_cleanly_at_a_saved_epoch(fake_mnist, tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "train.py", "--data-dir", fake_mnist, "--out", out, "--epochs", "100000",
                             "--device", "cpu"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:
        if line.split()[:2] == ["epoch", "2/100000"]:
            break
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Traceback" not in stderr, stderr
    line = stderr.strip().splitlines()[-1]
    assert line.startswith("interrupted: epoch ")
    again = f"python train.py --resume {out / 'model.pt'} --epochs 100000 --data-dir {fake_mnist}"
    assert line.endswith(f"continue with: {again}")
    saved_epoch = int(line.split("interrupted: epoch ")[1].split("/")[0])
    ckpt = torch.load(out / "model.pt", weights_only=True)
    assert ckpt["epoch"] == saved_epoch >= 2 and len(ckpt["history"]) == saved_epoch
