"""compare.py: four runs, two of them the same, one damaged, and a folder that is no run; every column
of the table checked against the runs' histories, and what the picture draws; the format --out names."""
import os
import re

import torch
from PIL import Image

import compare
from machinery import plots
from conftest import assert_one_line_error, run_script


def test_compares_the_runs_it_can_read_and_skips_the_rest(fake_mnist, tmp_path, monkeypatch):
    for flags in ([], [], ["--lr", "0.1"], ["--lr", "0.1", "--batch-size", "32"], ["--lr", "0.1", "--seed", "2"]):
        epochs = 3 if "2" in flags else 2  # one run longer than the others: the table says which epoch
        proc = run_script("train.py", "--data-dir", fake_mnist, "--epochs", epochs, "--no-plots", "--device", "cpu",
                          *flags, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
    (tmp_path / "runs" / "lr0.1-bs32" / "model.pt").write_bytes(b"damaged")
    (tmp_path / "runs" / "notes").mkdir()
    drawn, png = [], plots.png
    monkeypatch.setattr(plots, "png", lambda fig, format: drawn.append((fig, png(fig, format))) or drawn[-1][1])
    proc = run_script("compare.py", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.splitlines() == [
        "skipped runs/lr0.1-bs32: runs/lr0.1-bs32/model.pt: not a checkpoint (not the archive torch.save writes: "
        "empty, truncated or another kind of file); train a new one with python train.py",
        "skipped runs/notes: no model.pt, not a run"]
    header, *rows, note1, note2, saved = proc.stdout.splitlines()
    assert "\n".join([note1, note2]) == compare.TABLE_NOTE
    assert re.split(r"\s{2,}", header) == ["run", "lr", "seed", "last test acc", "best test acc", "train s"]
    folders = ["runs/lr0.01-bs64", "runs/lr0.01-bs64-2", "runs/lr0.1-bs64", "runs/lr0.1-bs64-seed2"]
    assert [row.split()[0] for row in rows] == folders
    histories = [torch.load(tmp_path / folder / "model.pt", weights_only=True)["history"] for folder in folders]
    for row, history, seed in zip(rows, histories, [0, 0, 0, 2]):
        best = max(history, key=lambda h: h["test_acc"])  # the first epoch to reach the best
        assert re.split(r"\s{2,}", row)[1:] == [f"{history[0]['lr']:g}", str(seed),
                                               f"{history[-1]['test_acc']:.2f}% @ {len(history)}",
                                               f"{best['test_acc']:.2f}% @ {best['epoch']}",
                                               f"{sum(h['seconds'] for h in history):.1f}"]
    assert [len(h) for h in histories] == [2, 2, 2, 3]
    assert saved == "saved runs/compare.png"
    (fig, picture), = drawn
    assert (tmp_path / "runs" / "compare.png").read_bytes() == picture  # what was drawn, as it was drawn
    acc_ax, loss_ax = fig.axes
    for key, ax in (("test_acc", acc_ax), ("test_loss", loss_ax)):
        assert [list(line.get_ydata()) for line in ax.lines] == [[h[key] for h in history] for history in histories]
    # the same settings twice: one run's line would hide the other's
    assert [t.get_text() for t in acc_ax.get_legend().get_texts()] == [
        "lr0.01-bs64: lr 0.01, seed 0", "lr0.01-bs64-2: lr 0.01, seed 0 (dashed: coincides with lr0.01-bs64: lr 0.01, "
        "seed 0)", "lr 0.1, seed 0", "lr 0.1, seed 2"]
    assert [line.get_linestyle() for line in acc_ax.lines] == ["-", "--", "-", "-"]


def test_the_picture_is_written_in_the_format_its_name_says(trained, tmp_path):
    out, _ = trained
    proc = run_script("compare.py", out, "--out", tmp_path / "runs.JPG")
    assert (proc.returncode, proc.stderr) == (0, "")
    with Image.open(tmp_path / "runs.JPG") as picture:
        assert picture.format == "JPEG" and picture.size == (1000, 400)
    proc = run_script("compare.py", out, "--out", tmp_path / "runs.svg")
    assert (proc.returncode, proc.stderr) == (0, "") and (tmp_path / "runs.svg").read_text().startswith("<?xml")
    for name in ("runs.gif", "runs", "runs.png.txt", "runs.eps"):
        proc = run_script("compare.py", out, "--out", tmp_path / name)
        assert_one_line_error(proc, f"{tmp_path / name}' does not end in a picture format compare.py writes: "
                                    "use .png, .jpg, .jpeg, .webp, .tif, .tiff, .pdf, .svg")
        assert not os.path.exists(tmp_path / name)


def test_a_picture_of_the_users_own_is_never_drawn_over(trained, tmp_path):
    out, _ = trained
    proc = run_script("compare.py", out, "--out", tmp_path / "c.png")
    again = run_script("compare.py", out, "--out", tmp_path / "c.png")  # its own: drawn again
    assert proc.returncode == again.returncode == 0 and again.stdout == proc.stdout, again.stderr
    for name in ("c.png", "runs.JPG"):
        Image.new("RGB", (8, 8), (1, 2, 3)).save(tmp_path / name, format="PNG" if name.endswith("png") else "JPEG")
        before = (tmp_path / name).read_bytes()
        proc = run_script("compare.py", out, "--out", tmp_path / name)
        assert_one_line_error(proc, f"{tmp_path / name} is not a picture compare.py drew, so it stays as it is")
        assert (tmp_path / name).read_bytes() == before


def test_table_names_the_epoch_of_each_accuracy_and_what_its_seconds_are():
    def run(accs):
        return [{"epoch": i, "test_acc": acc, "seconds": 0.3} for i, acc in enumerate(accs, 1)]
    found = [("runs/a", {"lr": "0.1"}, run([90, 92.5, 91, 92.5])), ("runs/long-name", {"lr": "0.01"}, run([80]))]
    assert compare.table(found, ["lr"]).splitlines() == [
        "run             lr    last test acc  best test acc  train s",
        "runs/a          0.1   92.50% @ 4     92.50% @ 2     1.2",
        "runs/long-name  0.01  80.00% @ 1     80.00% @ 1     0.3",
        *compare.TABLE_NOTE.splitlines()]
    assert compare.TABLE_NOTE.splitlines()[1].startswith("train s: the epochs' training passes summed, without tests")


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
    assert [row.split()[0] for row in proc.stdout.splitlines()[1:-3]] == ["runs/good"]  # the table note, saved
