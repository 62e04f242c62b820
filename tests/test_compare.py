"""compare.py through its command line: three runs, one of them damaged, and a folder that is no run."""
import os

from PIL import Image

from conftest import assert_one_line_error, run_script


def test_compares_the_runs_it_can_read_and_skips_the_rest(fake_mnist, tmp_path):
    for flags in ([], ["--lr", "0.1"], ["--lr", "0.1", "--batch-size", "32"]):
        proc = run_script("train.py", "--data-dir", fake_mnist, "--epochs", 2, "--no-plots", *flags, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
    (tmp_path / "runs" / "lr0.1-bs32" / "model.pt").write_bytes(b"damaged")
    (tmp_path / "runs" / "notes").mkdir()
    proc = run_script("compare.py", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.splitlines() == [
        "skipped runs/lr0.1-bs32: runs/lr0.1-bs32/model.pt: not a checkpoint (not the archive torch.save writes: "
        "empty, truncated or another kind of file); train a new one with python train.py",
        "skipped runs/notes: no model.pt, not a run"]
    header, *rows, saved = proc.stdout.splitlines()
    assert header.split() == ["run", "lr", "epochs", "final", "acc", "best", "acc", "train", "s"]
    assert [row.split()[:3] for row in rows] == [["runs/lr0.01-bs64", "0.01", "2"], ["runs/lr0.1-bs64", "0.1", "2"]]
    assert saved == "saved runs/compare.png"
    with Image.open(tmp_path / "runs" / "compare.png") as picture:
        assert picture.format == "PNG"


def test_with_nothing_to_compare_it_says_how_to_start(tmp_path):
    proc = run_script("compare.py", cwd=tmp_path)
    assert_one_line_error(proc, "no runs to compare", "train some with python train.py")
    assert not os.path.exists(tmp_path / "runs")
