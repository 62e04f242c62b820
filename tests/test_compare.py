"""compare.py: three runs, one of them damaged, and a folder that is no run; every column of the table
checked against the runs' histories, and the labels the picture's legend shows."""
import os

import torch
from PIL import Image

import compare
import plots
from conftest import assert_one_line_error, run_script


def test_compares_the_runs_it_can_read_and_skips_the_rest(fake_mnist, tmp_path, monkeypatch):
    for flags in ([], ["--lr", "0.1"], ["--lr", "0.1", "--batch-size", "32"], ["--lr", "0.1", "--seed", "2"]):
        proc = run_script("train.py", "--data-dir", fake_mnist, "--epochs", 2, "--no-plots", "--device", "cpu",
                          *flags, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
    (tmp_path / "runs" / "lr0.1-bs32" / "model.pt").write_bytes(b"damaged")
    (tmp_path / "runs" / "notes").mkdir()
    drawn, draw = [], plots.compare
    monkeypatch.setattr(plots, "compare", lambda runs: drawn.append(runs) or draw(runs))
    proc = run_script("compare.py", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.splitlines() == [
        "skipped runs/lr0.1-bs32: runs/lr0.1-bs32/model.pt: not a checkpoint (not the archive torch.save writes: "
        "empty, truncated or another kind of file); train a new one with python train.py",
        "skipped runs/notes: no model.pt, not a run"]
    header, *rows, saved = proc.stdout.splitlines()
    assert header.split() == ["run", "lr", "seed", "epochs", "final", "acc", "best", "acc", "train", "s"]
    assert [row.split()[0] for row in rows] == ["runs/lr0.01-bs64", "runs/lr0.1-bs64", "runs/lr0.1-bs64-seed2"]
    for row in rows:
        history = torch.load(tmp_path / row.split()[0] / "model.pt", weights_only=True)["history"]
        lr, seed = history[0]["lr"], 2 if row.startswith("runs/lr0.1-bs64-seed2") else 0
        assert row.split()[1:] == [f"{lr:g}", str(seed), "2", f"{history[-1]['test_acc']:.2f}%",
                                   f"{max(h['test_acc'] for h in history):.2f}%",
                                   f"{sum(h['seconds'] for h in history):.1f}"]
    assert saved == "saved runs/compare.png"
    (runs,) = drawn
    assert [label for label, _ in runs] == ["lr 0.01, seed 0", "lr 0.1, seed 0", "lr 0.1, seed 2"]
    with Image.open(tmp_path / "runs" / "compare.png") as picture:
        assert picture.format == "PNG"


def test_labels_say_what_differs_and_fall_back_to_the_folder():
    found = [("runs/a", {"lr": "0.1", "batch_size": "64"}, []), ("runs/b", {"lr": "0.1", "batch_size": "32"}, []),
             ("runs/c", {"lr": "0.1", "batch_size": "32"}, [])]
    assert compare.labels(found, ["batch_size"]) == ["batch 64", "b: batch 32", "c: batch 32"]
    assert compare.labels(found, []) == ["a", "b", "c"]


def test_with_nothing_to_compare_it_says_how_to_start(tmp_path):
    proc = run_script("compare.py", cwd=tmp_path)
    assert_one_line_error(proc, "no runs to compare", "train some with python train.py")
    assert not os.path.exists(tmp_path / "runs")


def test_runs_it_cannot_show_are_skipped_with_one_line_each(trained, tmp_path):
    out, _ = trained
    ckpt = torch.load(out / "model.pt", weights_only=True)
    for name, changed in (("good", ckpt), ("huge", dict(ckpt, history=[dict(h, lr=10**400) for h in ckpt["history"]])),
                          ("clear\x1b[2J", ckpt)):
        (tmp_path / "runs" / name).mkdir(parents=True)
        torch.save(changed, tmp_path / "runs" / name / "model.pt")
    proc = run_script("compare.py", cwd=tmp_path)
    assert proc.returncode == 0 and "\x1b" not in proc.stdout + proc.stderr, proc.stderr
    assert proc.stderr.splitlines() == [r"skipped runs/clear\x1b[2J: a name with control characters in it",
                                        "skipped runs/huge: runs/huge/model.pt: not a checkpoint of this train.py "
                                        "(history entry 1: lr not a number from 1e-45 to 3.4e+38); "
                                        "train a new one with python train.py"]
    assert [row.split()[0] for row in proc.stdout.splitlines()[1:-1]] == ["runs/good"]
