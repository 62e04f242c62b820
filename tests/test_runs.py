"""runs.py: a folder per run, never an overwrite, one writer at a time, the newest run found again,
and writes that fail (full disk, read-only folder, a folder in the way) say so and keep the old file."""
import os
import shutil
import signal

import pytest
import torch

from machinery import cli
from machinery import runs
import train
from conftest import ROOT, assert_one_line_error, main_error, run_script


def test_write_keeps_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "model.pt"
    path.write_bytes(b"old")
    runs.write(str(path), b"new")
    assert path.read_bytes() == b"new" and os.listdir(tmp_path) == ["model.pt"]
    (tmp_path / "taken").mkdir()  # refused before a temporary file is made (tests/test_paths.py: when the rename fails)
    with pytest.raises(cli.UserError, match=r"cannot write .*taken \(a folder, not a regular file\); keep out"):
        runs.write(str(tmp_path / "taken"), b"x", "keep out")
    assert sorted(os.listdir(tmp_path)) == ["model.pt", "taken"] and path.read_bytes() == b"new"


def test_folder_names_say_what_a_learner_varies():
    assert runs.folder_name({"lr": 0.01, "batch_size": 64, "seed": 0}) == "lr0.01-bs64"
    assert runs.folder_name({"lr": 0.1, "batch_size": 32, "seed": 3}) == "lr0.1-bs32-seed3"
    assert runs.folder_name({"lr": 1e-4, "batch_size": 64, "seed": 0}) == "lr0.0001-bs64"
    config = {"lr": 0.01, "batch_size": 64, "seed": 0}
    assert runs.folder_name(config, "784-128-10 relu") == "h128-relu-lr0.01-bs64"
    assert runs.folder_name(config, "784-128-10 sigmoid") == "h128-lr0.01-bs64"
    assert runs.folder_name(config, "784-64-10 tanh") == "tanh-lr0.01-bs64"


def test_resume_writes_over_its_own_checkpoint_only(trained, fake_mnist, tmp_path, capsys):
    out, _ = trained
    folder = tmp_path / "run"
    shutil.copytree(out, folder)
    (folder / "snapshot.pt").write_bytes((out / "model.pt").read_bytes())
    (folder / "model.pt").write_bytes(b"another run's checkpoint")
    line = main_error(train, "--resume", folder / "snapshot.pt", "--epochs", 3, "--data-dir", fake_mnist)
    assert f"{folder} holds another run's files, which resuming" in line and "pass --out DIR" in line
    assert (folder / "model.pt").read_bytes() == b"another run's checkpoint"
    # --out DIR: the run goes on in DIR, and the checkpoint it came from stays as it was
    before = (folder / "snapshot.pt").read_bytes()
    train.main(["--resume", str(folder / "snapshot.pt"), "--out", str(tmp_path / "more"), "--epochs", "3",
                "--data-dir", fake_mnist, "--no-plots"])
    assert torch.load(tmp_path / "more" / "model.pt", weights_only=True)["epoch"] == 3
    assert (folder / "snapshot.pt").read_bytes() == before
    assert "run " + str(tmp_path / "more") in capsys.readouterr().out
    line = main_error(train, "--resume", folder / "snapshot.pt", "--out", tmp_path / "more", "--epochs", 4,
                      "--data-dir", fake_mnist)
    assert "holds another run's files" in line  # DIR must not hold a run already


def test_two_default_runs_land_in_two_folders_and_evaluate_finds_the_newest(fake_mnist, tmp_path):
    for _ in range(2):
        proc = run_script("train.py", "--data-dir", fake_mnist, "--epochs", 1, "--no-plots", cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
    assert sorted(os.listdir(tmp_path / "runs")) == ["lr0.01-bs64", "lr0.01-bs64-2"]
    assert proc.stdout.startswith("run runs/lr0.01-bs64-2: ")
    proc = run_script("evaluate.py", "--data-dir", fake_mnist, "--no-plots", cwd=tmp_path)
    assert proc.stdout.startswith("checkpoint runs/lr0.01-bs64-2/model.pt: Net(fc1: Linear(784, 64), activation: "
                                  "Sigmoid(), fc2: Linear(64, 10)), epoch 1"), proc.stderr
    os.utime(tmp_path / "runs" / "lr0.01-bs64" / "model.pt")  # now the first is the newest
    proc = run_script("train.py", "--resume", "--data-dir", fake_mnist, "--epochs", 2, "--no-plots", cwd=tmp_path)
    assert proc.stdout.splitlines()[1] == "resuming runs/lr0.01-bs64/model.pt after epoch 1/2", proc.stderr
    assert torch.load(tmp_path / "runs" / "lr0.01-bs64" / "model.pt", weights_only=True)["epoch"] == 2
    assert torch.load(tmp_path / "runs" / "lr0.01-bs64-2" / "model.pt", weights_only=True)["epoch"] == 1


def test_names_found_on_disk_reach_the_terminal_written_out(trained, fake_mnist, tmp_path):
    """The newest run's folder, picked by evaluate.py and train.py --resume, and an image's file name, can
    hold an escape sequence or a newline: they are written out (\\x1b), never sent to the terminal raw."""
    out, _ = trained
    folder = tmp_path / "runs" / "clear\x1b[2J\nerror: fake"
    shutil.copytree(out, folder, ignore=shutil.ignore_patterns(".lock", "*.png"))
    proc = run_script("evaluate.py", "--data-dir", fake_mnist, "--no-plots", cwd=tmp_path)
    assert proc.returncode == 0 and "\x1b" not in proc.stdout + proc.stderr, proc.stderr
    assert "\nerror: fake" not in proc.stdout and r"clear\x1b[2J\nerror: fake" in proc.stdout
    proc = run_script("train.py", "--resume", "--epochs", 3, "--data-dir", fake_mnist, cwd=tmp_path)
    assert_one_line_error(proc, r"runs/clear\x1b[2J\nerror: fake/model.pt: a name with control characters in it")
    proc = run_script("train.py", "--out", tmp_path / "new\x1b[2J", "--data-dir", fake_mnist)
    assert_one_line_error(proc, r"new\x1b[2J: a name with control characters in it")
    assert not (tmp_path / "new\x1b[2J").exists()
    image = tmp_path / "seven\x1b[31m.png"
    image.write_bytes(open(os.path.join(ROOT, "docs", "example_seven.png"), "rb").read())
    proc = run_script("evaluate.py", out / "model.pt", "--image", image, "--evidence")
    assert proc.returncode == 0 and "\x1b" not in proc.stdout and r"seven\x1b[31m" in proc.stdout, proc.stderr


def test_an_occupied_out_is_refused_without_resume(trained, fake_mnist):
    out, _ = trained
    before = {name: (out / name).read_bytes() for name in ("model.pt", "training_curves.png", "lesson/train.py")}
    proc = run_script("train.py", "--data-dir", fake_mnist, "--out", out, "--epochs", 1)
    assert_one_line_error(proc, f"{out} already holds a run: pass --resume to continue it, or another --out")
    assert {name: (out / name).read_bytes() for name in before} == before


@pytest.mark.slow  # a process of its own
def test_a_second_run_into_the_same_folder_is_refused_while_the_first_runs(fake_mnist, tmp_path, stoppable_train):
    out = tmp_path / "run"
    first = stoppable_train(out, 1, "--no-plots")
    first.send(signal.SIGSTOP)  # paused, holding its lock: it cannot end before the second run tries
    saved = torch.load(out / "model.pt", weights_only=True)["epoch"]  # one epoch more: quick even if not refused
    proc = run_script("train.py", "--data-dir", fake_mnist, "--out", out, "--resume", "--epochs", saved + 1)
    assert_one_line_error(proc, f"another train.py is writing into {out}")
    first.send(signal.SIGINT)  # taken when it goes on
    first.send(signal.SIGCONT)
    assert first.finish()[0] == 130
    # the lock went with the process: the folder is free again
    saved = torch.load(out / "model.pt", weights_only=True)["epoch"]
    proc = run_script("train.py", "--data-dir", fake_mnist, "--out", out, "--resume", "--epochs", saved + 1)
    assert proc.returncode == 0 and "\nresuming " in proc.stdout, proc.stderr


def test_files_of_the_users_own_are_never_removed_or_rewritten(trained, fake_mnist, tmp_path):
    """Only files whose names this process chose are removed (its own temporary files, by exact name):
    nothing is deleted by pattern, and a .lock of the user's own is locked, not written to."""
    out = tmp_path / "run"
    shutil.copytree(trained[0], out, ignore=shutil.ignore_patterns(".lock"))
    there = set(os.listdir(out))  # the run's files, and the pictures other tests drew beside them
    mine = {"model.pt.backup.tmp": b"a backup", "history.json.old.tmp": b"[]", "notes.tmp": b"notes",
            ".model.pt.99999.0123abcd.tmp": b"even one named as ours", ".lock": b"the user's own lock notes"}
    for name, content in mine.items():
        (out / name).write_bytes(content)
    proc = run_script("train.py", "--data-dir", fake_mnist, "--out", out, "--resume", "--epochs", 3, "--no-plots")
    assert proc.returncode == 0, proc.stderr
    refused = run_script("train.py", "--data-dir", fake_mnist, "--out", out, "--epochs", 1)
    assert "already holds a run" in refused.stderr
    assert {name: (out / name).read_bytes() for name in mine} == mine
    assert set(os.listdir(out)) == there | set(mine) | {"model.pt", "lesson", "training_curves.png"}


def test_a_folder_named_model_pt_is_refused_before_training(fake_mnist, tmp_path):
    (tmp_path / "run" / "model.pt").mkdir(parents=True)
    proc = run_script("train.py", "--data-dir", fake_mnist, "--out", tmp_path / "run", "--epochs", 1)
    assert_one_line_error(proc, f"{tmp_path / 'run' / 'model.pt'} is in the way (a folder, not a regular file)")
    assert "epoch" not in proc.stdout


def test_a_full_disk_keeps_the_last_checkpoint_and_says_so(fake_mnist, disk):
    out = disk(340)  # room for one checkpoint (212 KB) and its history, not for a second beside it
    proc = run_script("train.py", "--data-dir", fake_mnist, "--out", out, "--epochs", 3, "--no-plots")
    line = assert_one_line_error(proc, f"cannot write {out / 'model.pt'} (No space left on device)", "unchanged")
    assert proc.stdout.splitlines()[-1].startswith("epoch 1/3")
    assert torch.load(out / "model.pt", weights_only=True)["epoch"] == 1, line
    assert not [f for f in os.listdir(out) if f.endswith(".tmp")]

    out = disk(240)  # the checkpoint fits, the picture does not
    proc = run_script("train.py", "--data-dir", fake_mnist, "--out", out, "--epochs", 1)
    assert_one_line_error(proc, f"cannot write {out / 'training_curves.png'} (No space left on device)",
                          f"the run itself is saved in {out / 'model.pt'}")
    assert torch.load(out / "model.pt", weights_only=True)["epoch"] == 1


def test_evaluate_beside_a_read_only_checkpoint_says_how_to_go_on(trained, fake_mnist, disk, tmp_path):
    out, _ = trained
    folder = disk(1024, {"model.pt": (out / "model.pt").read_bytes()})
    proc = run_script("evaluate.py", folder / "model.pt", "--data-dir", fake_mnist)
    assert_one_line_error(proc, f"cannot write into {folder}", "pass --no-plots, or --plots-dir DIR")
    assert "test accuracy" not in proc.stdout  # refused before the work, not after
    proc = run_script("evaluate.py", folder / "model.pt", "--data-dir", fake_mnist, "--plots-dir", tmp_path / "pics")
    pictures = ["confusion_matrix.png", "hidden_units.png", "mistakes.png", "mistakes_evidence.png"]
    assert proc.returncode == 0 and sorted(os.listdir(tmp_path / "pics")) == pictures
    assert run_script("evaluate.py", folder / "model.pt", "--data-dir", fake_mnist, "--no-plots").returncode == 0
    proc = run_script("train.py", "--resume", folder / "model.pt", "--data-dir", fake_mnist, "--epochs", 3)
    assert_one_line_error(proc, f"cannot write into {folder}; pass --out DIR")  # before its lock file, too


def test_resume_with_no_run_yet_says_how_to_start(fake_mnist, tmp_path):
    proc = run_script("train.py", "--resume", "--data-dir", fake_mnist, cwd=tmp_path)
    assert_one_line_error(proc, f"no run in {tmp_path / 'runs'} yet: train one with python train.py")


def test_an_out_that_is_a_file_is_named_as_one(fake_mnist, tmp_path):
    (tmp_path / "notes").write_text("mine")
    line = main_error(train, "--data-dir", fake_mnist, "--out", tmp_path / "notes", "--epochs", 1)
    assert f"{tmp_path / 'notes'} is a file, not a folder; pass --out DIR" in line
    assert (tmp_path / "notes").read_text() == "mine"
    os.symlink(tmp_path / "gone", tmp_path / "link")
    line = main_error(train, "--data-dir", fake_mnist, "--out", tmp_path / "link", "--epochs", 1)
    assert f"{tmp_path / 'link'} is a symbolic link to {tmp_path / 'gone'}, which does not exist; pass --out" in line
    assert not (tmp_path / "gone").exists()
