"""mnist_files.py: every way the four files can be missing, misplaced or damaged gets a line that
names the file (absolute path) and what to do; through the real command line where it matters.
What is read is the raw files checked, whatever else the folder holds."""
import os
import shutil

import pytest
import torch

import data

from machinery import mnist_files
import train
from machinery.cli import UserError
from conftest import FAKE_TEST, FAKE_TRAIN, assert_one_line_error, fake_digits, main_error, run_script, write_idx


@pytest.fixture()
def copy(fake_mnist, tmp_path):
    """A writable copy of the small data set: (data dir, its raw folder)."""
    root = tmp_path / "d"
    shutil.copytree(fake_mnist, root)
    return root, root / "MNIST" / "raw"


def test_missing_data_without_network_names_the_files_and_the_option(tmp_path):
    proc = run_script("train.py", "--data-dir", tmp_path / "nowhere", "--out", tmp_path / "out", "--epochs", 1)
    line = assert_one_line_error(proc, "download failed", "train-images-idx3-ubyte", "t10k-labels-idx1-ubyte",
                                 "MNIST/raw/", "--data-dir")
    assert str(tmp_path / "nowhere") in line
    assert not os.path.exists(tmp_path / "nowhere")  # no empty folders left behind
    assert proc.stdout.startswith(f"downloading MNIST into {tmp_path / 'nowhere' / 'MNIST' / 'raw'}/")
    assert not os.path.exists(tmp_path / "out")


def test_one_missing_file_is_named(copy, tmp_path):
    root, raw = copy
    (raw / "t10k-labels-idx1-ubyte").unlink()
    proc = run_script("train.py", "--data-dir", root, "--out", tmp_path / "out", "--epochs", 1)
    assert_one_line_error(proc, f"t10k-labels-idx1-ubyte is missing from {raw}/ and the download failed")


def test_relative_data_dirs_are_shown_absolute(copy, tmp_path):
    root, raw = copy
    (raw / "train-images-idx3-ubyte").write_bytes(b"")
    proc = run_script("train.py", "--data-dir", "d", "--out", tmp_path / "out", cwd=tmp_path)
    assert_one_line_error(proc, f"{raw / 'train-images-idx3-ubyte'} is not an MNIST file (wrong magic number)")


def test_files_in_the_wrong_folder_are_pointed_out(fake_mnist):
    with pytest.raises(UserError, match="belong in <data dir>/MNIST/raw/"):
        mnist_files.ensure(os.path.join(fake_mnist, "MNIST", "raw"), train=True)


@pytest.mark.parametrize("make, message", [
    (lambda p: os.symlink("/dev/zero", p), "is not a regular file (a device, FIFO or socket)"),
    (lambda p: os.mkfifo(p), "is not a regular file (a device, FIFO or socket)"),
    (lambda p: os.symlink("/no/such/file", p), "is a symbolic link to /no/such/file, which does not exist"),
    (lambda p: os.mkdir(p), "is a folder, not an MNIST file"),
])
def test_files_that_are_not_regular_files_are_named(copy, tmp_path, make, message):
    root, raw = copy
    path = raw / "train-labels-idx1-ubyte"
    path.unlink()
    make(path)
    proc = run_script("train.py", "--data-dir", root, "--out", tmp_path / "out", "--epochs", 1)
    assert_one_line_error(proc, f"{path} {message}", "replace it with the original file")


def test_a_data_dir_that_is_a_file(fake_mnist, tmp_path):
    (tmp_path / "file").write_text("not a folder")
    line = main_error(train, "--data-dir", tmp_path / "file")
    assert f"--data-dir {tmp_path / 'file'} is a file, not a folder" in line


@pytest.mark.parametrize("damage, message", [
    (lambda b: b[:-100], "truncated or corrupt"),
    (lambda b: b"\x00\x00\x08\x01" + b[4:], "wrong magic number"),
    (lambda b: b"", "wrong magic number"),
    (lambda b: b[:4] + b"\x00\x00\x00\x00" + b[8:16], "holds no items"),  # a valid header, 0 images
])
def test_damaged_files_are_refused_by_name(copy, damage, message):
    root, raw = copy
    path = raw / "train-images-idx3-ubyte"
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(UserError, match=message) as e:
        mnist_files.ensure(str(root), train=True)
    assert str(path) in str(e.value)


def test_labels_outside_0_to_9_are_refused(copy):
    root, raw = copy
    path = raw / "t10k-labels-idx1-ubyte"
    path.write_bytes(path.read_bytes()[:-1] + b"\x0c")  # the last label becomes 12
    with pytest.raises(UserError, match="t10k-labels-idx1-ubyte holds labels above 9"):
        mnist_files.ensure(str(root), train=False)


def test_images_and_labels_from_different_sets_are_refused(copy):
    root, raw = copy
    shutil.copy(raw / "t10k-labels-idx1-ubyte", raw / "train-labels-idx1-ubyte")
    with pytest.raises(UserError, match="640 images but 200 labels"):
        mnist_files.ensure(str(root), train=True)


def test_swapped_train_and_test_files_are_caught_by_their_known_counts(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for split, n in (("train", 10_000), ("t10k", 60_000)):  # the real counts, under each other's names
        write_idx(raw / f"{split}-images-idx3-ubyte", torch.zeros(n, 28, 28, dtype=torch.uint8))
        write_idx(raw / f"{split}-labels-idx1-ubyte", torch.zeros(n, dtype=torch.uint8))
    proc = run_script("train.py", "--data-dir", tmp_path, "--out", tmp_path / "out", "--epochs", 1)
    assert_one_line_error(proc, "train-images-idx3-ubyte holds 10,000 items, as the t10k file does",
                          "files look swapped")


LEGACY = {  # what an MNIST/processed/training.pt or test.pt may hold (torchvision before 0.9 made them)
    "truncated": b"PK\x03\x04" + b"\0" * 60,
    "a label of 200": (torch.zeros(FAKE_TEST, 28, 28, dtype=torch.uint8), torch.full((FAKE_TEST,), 200)),
    "a 1-tuple": (torch.zeros(FAKE_TEST, 28, 28, dtype=torch.uint8),),
    "float images": (torch.rand(FAKE_TEST, 28, 28), torch.zeros(FAKE_TEST, dtype=torch.long)),
    "reshaped images": (torch.zeros(FAKE_TEST, 784, dtype=torch.uint8), torch.zeros(FAKE_TEST, dtype=torch.long)),
}


def plant_legacy(root, content):
    folder = root / "MNIST" / "processed"
    folder.mkdir(exist_ok=True)
    for name in ("training.pt", "test.pt"):
        if isinstance(content, bytes):
            (folder / name).write_bytes(content)
        else:
            torch.save(content, folder / name)


@pytest.mark.parametrize("legacy", LEGACY)
def test_the_checked_raw_files_are_read_whatever_the_processed_folder_holds(copy, legacy):
    """torchvision reads MNIST/processed/training.pt and test.pt instead of the raw files when both
    are there (before: a traceback, or float or reshaped images read without a word)."""
    root, _ = copy
    plant_legacy(root, LEGACY[legacy])
    for is_train, n, seed in ((True, FAKE_TRAIN, 1), (False, FAKE_TEST, 2)):  # what conftest wrote
        images, labels = fake_digits(n, seed)
        dataset = data.load_mnist(str(root), is_train)
        assert torch.equal(dataset.data, images) and torch.equal(dataset.targets, labels.long())


def test_a_processed_folder_does_not_stop_the_download_of_a_missing_file(copy):
    """With a legacy pair present torchvision skipped the download, and reading the missing file
    gave a traceback; now the download is tried (and fails here, offline) as without it."""
    root, raw = copy
    plant_legacy(root, LEGACY["a 1-tuple"])
    (raw / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(UserError, match="t10k-labels-idx1-ubyte is missing from .* and the download failed"):
        mnist_files.ensure(str(root), train=False)
