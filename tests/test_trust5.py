"""Trust, round 5 (issue 37), besides the path gate (tests/test_paths.py): reads bounded by a file's
size before they start, lines bounded in length, --threads bounded by the CPUs there are, and the
smaller four (a temporary name that fits, compare.py redrawing its own picture in every format, a
colour mode Pillow cannot convert, the README's examples leaving nothing untracked)."""
import os
import re
import shutil
import struct
import subprocess
import time
import zipfile

import pytest
import torch
from PIL import Image, ImageDraw

import evaluate
import train
from conftest import ROOT, main_error, run_script
from machinery import cli, mnist_files, photo, plots, runs

MB = 2**20


def sparse(path, size, head=b""):
    """A file of `size` bytes that takes no room: `head`, then a hole (as truncate -s makes)."""
    with open(path, "wb") as f:
        f.write(head)
        f.truncate(size)
    return str(path)


def drawn_digit(path, size=(200, 200)):
    image = Image.new("L", size, 255)
    ImageDraw.Draw(image).line([(60, 40), (140, 40), (90, 170)], fill=0, width=14)
    image.save(path)
    return str(path)


# --- every read bounded by the file's size, before it starts ---

def test_a_sparse_20_gb_jpeg_is_refused_by_its_size_at_once(tmp_path):
    path = sparse(tmp_path / "huge.jpg", 20 * 2**30, b"\xff\xd8\xff\xe0\x00\x10JFIF\x00")
    start = time.perf_counter()
    with pytest.raises(cli.UserError) as e:
        photo.read_digit(path)
    assert time.perf_counter() - start < 0.5  # 73.6 s before: jpeg_scans read the 20 GB to the end
    assert str(e.value) == ("20 GB, more than an image file this reads (64 MB at most): scale it down, "
                            "or save it again with an image program")


def test_the_image_size_bound_at_its_edge(tmp_path):
    head = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00"
    with pytest.raises(cli.UserError, match=r"^67,108,865 bytes, more than an image file this reads \(64 MB at most\)"):
        photo.read_digit(sparse(tmp_path / "over.jpg", 64 * MB + 1, head))
    with pytest.raises(cli.UserError) as e:  # at the bound: read, and refused for what it holds instead
        photo.read_digit(sparse(tmp_path / "at.jpg", 64 * MB, head))
    assert "MB at most" not in str(e.value)


def test_a_checkpoint_over_the_bound_is_refused_by_its_size(tmp_path):
    path = sparse(tmp_path / "model.pt", 64 * MB + 1, b"PK\x03\x04")
    start = time.perf_counter()
    line = main_error(evaluate, path, "--no-plots")
    assert time.perf_counter() - start < 5
    assert "model.pt: 67,108,865 bytes, larger than any checkpoint train.py writes (64 MB at most)" in line


def test_an_mnist_file_that_claims_a_million_images_is_refused_by_its_size(tmp_path):
    """Its header and its size agree, so it looked sound: torchvision would have read 784 MB."""
    raw = tmp_path / "t10k-images-idx3-ubyte"
    sparse(raw, 16 + 784 * 1_000_000, struct.pack(">IIII", 2051, 1_000_000, 28, 28))
    with pytest.raises(cli.UserError) as e:
        mnist_files.check_idx(str(raw))
    assert str(e.value) == (f"{raw}: 748 MB, larger than any MNIST file (47,040,016 bytes at most): "
                            f"{mnist_files.FIX}")
    at_bound = tmp_path / "train-images-idx3-ubyte"  # the real train file's size is still read
    sparse(at_bound, 47_040_016, struct.pack(">IIII", 2051, 60_000, 28, 28))
    assert mnist_files.check_idx(str(at_bound)) == 60_000


# --- every line bounded in length, at cli.shown ---

def test_shown_bounds_a_text_with_a_mark():
    assert cli.shown("a" * 300) == "a" * 300
    long = cli.shown("a" * 500_000)
    assert long == "a" * 200 + "…[500,000 characters]…" + "a" * 60 and len(long) <= 300
    escaped = cli.shown("\x1b" * 1000)  # written out, and still bounded: no escape cut in half
    assert len(escaped) <= 300 and escaped.startswith("\\x1b" * 50 + "…[1,000 characters]…")
    assert cli.shown("ab\ncd") == "ab\\ncd"


def test_a_checkpoint_key_of_500000_characters_is_shown_short(trained, tmp_path):
    out, _ = trained
    ckpt = torch.load(out / "model.pt", weights_only=True)
    ckpt["k" * 500_000] = 1
    torch.save(ckpt, tmp_path / "model.pt")
    line = main_error(evaluate, tmp_path / "model.pt", "--no-plots")
    assert len(line) < 1000 and "…[500,000 characters]…" in line and "a key of more than 1,000 characters" in line


def test_a_pickle_global_of_500000_characters_is_shown_short(tmp_path):
    path = tmp_path / "model.pt"
    path.write_bytes(b"\x80\x02c" + b"m" * 500_000 + b"\nf\n.")
    line = main_error(evaluate, path, "--no-plots")
    assert len(line) < 1000 and "…[500,002 characters]…" in line and "refused, it would call" in line


def test_a_zip_entry_name_of_60000_characters_is_shown_short(tmp_path):
    path = tmp_path / "model.pt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
        archive.writestr("archive/" + "z" * 60_000, b"")
    line = main_error(evaluate, path, "--no-plots")
    assert len(line) < 1000 and "…[60,008 characters]…" in line and "entries that torch.save does not write" in line


def test_a_flag_value_of_100000_characters_is_shown_short():
    proc = run_script("train.py", "--epochs", "9" * 100_000)
    assert proc.returncode == 2 and len(proc.stderr) < 1000, proc.stderr[:500]
    assert "argument --epochs: '999" in proc.stderr and "…[100,000 characters]…" in proc.stderr
    assert "9' is not a whole number; see python train.py --help" in proc.stderr


def test_compare_shows_a_long_run_name_short(tmp_path):
    long = tmp_path / ("r" * 250)
    long.mkdir()
    proc = run_script("compare.py", long, "--out", tmp_path / "c.png")
    assert proc.returncode == 1 and "…[" in proc.stderr and max(map(len, proc.stderr.splitlines())) < 700
    proc = run_script("compare.py", "--out", "x" * 100_000 + ".gif")
    assert proc.returncode == 2 and "…[100,004 characters]…" in proc.stderr and len(proc.stderr) < 1000


# --- --threads: at most the CPUs there are ---

@pytest.fixture()
def three_cpus(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2}, raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 3)


def test_threads_up_to_the_cpus_there_are(three_cpus, capsys):
    assert train.parse_args(["--threads", "3"]).threads == 3
    assert train.parse_args(["--threads", "1"]).threads == 1
    for value in ("4", "1024"):
        with pytest.raises(SystemExit) as e:
            train.parse_args(["--threads", value])
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert f"argument --threads: {value} threads is more than the 3 CPU(s) this machine gives this process: " \
               "use 1 to 3; see python" in err and len(err.splitlines()) == 1
    with pytest.raises(SystemExit):
        train.parse_args(["--threads", "0"])
    assert "argument --threads: 0 is out of range: use 1 to 3, the CPU(s) this machine gives this process" \
        in capsys.readouterr().err


def test_a_saved_threads_setting_over_the_cpus_is_refused_on_resume(trained, tmp_path, three_cpus):
    out, _ = trained
    ckpt = torch.load(out / "model.pt", weights_only=True)
    for threads, fits in ((3, True), (4, False)):
        ckpt["config"]["threads"] = threads  # within the file format's bound (checkpoint.CONFIG): a crafted run
        path = tmp_path / f"t{threads}" / "model.pt"
        path.parent.mkdir()
        torch.save(ckpt, path)
        if fits:
            assert train.parse_args(["--resume", str(path), "--epochs", "5"]).threads == 3
            continue
        with pytest.raises(cli.UserError) as e:
            train.parse_args(["--resume", str(path), "--epochs", "5"])
        assert str(e.value) == (f"{path}: a saved setting is not one train.py accepts here (argument --threads: 4 "
                                "threads is more than the 3 CPU(s) this machine gives this process: use 1 to 3); "
                                "pass that flag with a value it accepts, or train a new run")
        args = train.parse_args(["--resume", str(path), "--epochs", "5", "--threads", "2"])  # a flag wins over it
        assert args.threads == 2


def test_cpus_follows_the_affinity_where_there_is_one(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {5}, raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    assert cli.cpus() == 1
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)
    assert cli.cpus() == 64


# --- the smaller four ---

def test_a_long_target_name_writes_where_it_fits(tmp_path):
    path = tmp_path / ("n" * 246 + ".png")  # 250 bytes: the temporary name was 21 longer than 255
    runs.write(str(path), b"picture")
    assert path.read_bytes() == b"picture" and os.listdir(tmp_path) == [path.name]


def test_save_input_for_an_image_named_in_236_characters(trained, tmp_path):
    out, _ = trained
    image = drawn_digit(tmp_path / ("d" * 232 + ".png"))
    proc = run_script("evaluate.py", out / "model.pt", "--image", image, "--save-input")
    assert proc.returncode == 0, proc.stderr
    assert os.path.isfile(tmp_path / ("d" * 232 + ".mnist.png"))
    assert not [name for name in os.listdir(tmp_path) if name.endswith(".tmp")]


def test_save_input_shortens_a_name_that_would_not_fit(tmp_path):
    target = runs.unused_name(str(tmp_path), "e" * 250 + ".png", ".mnist.png", set())
    assert len(os.path.basename(target).encode()) <= 255 and target.endswith(".mnist.png")
    runs.write(target, b"x")
    assert os.path.isfile(target)


@pytest.mark.parametrize("fmt", plots.FORMATS)
def test_compare_draws_over_its_own_picture_in_every_format(trained, tmp_path, fmt):
    out, _ = trained
    picture = tmp_path / f"compare.{fmt}"
    for _ in range(2):  # the second time over the first: it is compare.py's own
        proc = run_script("compare.py", out, "--out", picture)
        assert proc.returncode == 0, proc.stderr
    assert plots.drawn_here(str(picture))
    mine = tmp_path / f"mine.{fmt}"
    shutil.copy(os.path.join(ROOT, "docs", "example_seven.png"), mine)  # a picture of the user's: kept
    proc = run_script("compare.py", out, "--out", mine)
    assert proc.returncode == 1 and "is not a picture compare.py drew" in proc.stderr


def test_a_lab_tiff_gets_the_projects_own_line(tmp_path):
    path = tmp_path / "lab.tif"
    Image.new("LAB", (64, 64), (50, 0, 0)).save(path)
    with pytest.raises(cli.UserError) as e:
        photo.read_digit(str(path))
    assert str(e.value) == ("its colours are in LAB mode, which this cannot turn into grey: save it again as RGB "
                            "or greyscale with an image program")


def test_the_readme_examples_leave_nothing_untracked():
    """What the README's examples write inside the checkout (its 'saved ...' lines) is ignored by git."""
    if shutil.which("git") is None or not os.path.exists(os.path.join(ROOT, ".git")):
        pytest.skip("not a git checkout")
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        text = f.read()
    written = re.findall(r"^\s*saved [^:\n]*: (\S+)$", text, re.M) + re.findall(r"^saved (\S+)", text, re.M)
    assert "runs/example_seven.evidence.png" in written and "runs/lr0.01-bs64/training_curves.png" in written
    for path in written:
        proc = subprocess.run(["git", "check-ignore", "-q", path], cwd=ROOT)
        assert proc.returncode == 0, f"{path}, which the README's example writes, would be left untracked"
