"""The path gate (machinery/paths.py) at every path the project opens or writes by name: a FIFO, a
folder, a socket and a dangling link each get one line saying what the path is, at once.

A FIFO opened the plain way waits for a writer forever, so each case runs in a thread with a
deadline (`within`): a regression fails here, with the FIFO opened from the other end to let the
thread go, instead of stalling the run.
"""
import os
import shutil
import socket
import threading

import pytest

import compare
import evaluate
import train
from machinery import checkpoint, cli, mnist_files, paths, photo, plots, runs

KINDS = ("fifo", "folder", "socket", "dangling")
KIND_SAID = {"fifo": "a FIFO (a named pipe)", "folder": "a folder", "socket": "a socket"}


def said(path, kind):
    """What the gate says a path made by make() is: 'a FIFO (a named pipe)', 'a symbolic link to ...'."""
    return KIND_SAID.get(kind) or f"a symbolic link to {path}.nowhere, which does not exist"


def make(path, kind):
    """A path that is not a regular file: a FIFO, a folder, a socket or a link to nothing."""
    path = str(path)
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "folder":
        os.mkdir(path)
    elif kind == "socket":  # bound by its relative name: an AF_UNIX path has at most 107 bytes
        here = os.getcwd()
        os.chdir(os.path.dirname(path))
        try:
            s = socket.socket(socket.AF_UNIX)
            s.bind(os.path.basename(path))
            s.close()
        finally:
            os.chdir(here)
    else:
        os.symlink(path + ".nowhere", path)
    return path


def release(path):
    """Let a thread stuck opening the FIFO at path go: open its other end, both ways, without blocking."""
    for flags in (os.O_WRONLY, os.O_RDONLY):
        try:
            os.close(os.open(path, flags | os.O_NONBLOCK))
        except OSError:
            pass


def within(call, fifo=None, seconds=10):
    """call() in a daemon thread: what it raised (None if nothing), or a failure if it hangs."""
    done = []

    def target():
        try:
            call()
            done.append(None)
        except BaseException as e:  # noqa: B036 (SystemExit from argparse too)
            done.append(e)
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    hung = thread.is_alive()
    while thread.is_alive() and fifo:  # let it go, so that it does not hold its files past the test
        release(fifo)
        thread.join(1)
    assert not hung, f"hung for {seconds} s"
    return done[0]


def refused(call, fifo=None):
    """The one line of the UserError call() raises, within the deadline."""
    error = within(call, fifo)
    assert isinstance(error, cli.UserError), repr(error)
    assert "\n" not in str(error)
    return str(error)


def test_a_device_is_named_as_one(tmp_path):
    os.symlink("/dev/null", tmp_path / "null.png")
    line = refused(lambda: paths.open_regular(str(tmp_path / "null.png"), "an image", "pass an image file"))
    assert line == f"{tmp_path / 'null.png'} is a device, not a regular file, so not an image: pass an image file"


@pytest.mark.parametrize("kind", ["fifo", "socket"])
def test_data_dir_that_is_not_a_folder(tmp_path, kind):
    path = make(tmp_path / "data", kind)
    line = refused(lambda: mnist_files.ensure(path, train=False), path)
    assert line == f"--data-dir {path} is {said(path, kind)}, not a folder: pass the folder that holds MNIST/raw/"


@pytest.mark.parametrize("kind", KINDS)
def test_the_gate_names_what_a_path_is(tmp_path, kind):
    path = make(tmp_path / "thing", kind)
    line = refused(lambda: paths.open_regular(path, "a checkpoint", "pass the model.pt a run wrote"), path)
    assert line == (f"{path} is {said(path, kind)}, not a regular file, so not a checkpoint: "
                    "pass the model.pt a run wrote")
    assert refused(lambda: paths.check_target(path, "a picture", "pass another --out"), path) == line.replace(
        "a checkpoint: pass the model.pt a run wrote", "a picture: pass another --out")
    (tmp_path / "file").write_bytes(b"x")
    paths.check_target(str(tmp_path / "file"), "a picture", "")  # a regular file, or a name not taken: fine
    paths.check_target(str(tmp_path / "new"), "a picture", "")
    with paths.open_regular(str(tmp_path / "file"), "", "") as f:
        assert f.read() == b"x"


def test_a_regular_file_swapped_in_is_checked_on_its_descriptor(tmp_path, monkeypatch):
    """What was opened is what counts: a look at the name that says 'regular' is not trusted."""
    fifo = make(tmp_path / "swapped", "fifo")
    monkeypatch.setattr(paths, "kind", lambda path: None)  # as if it had been a file when looked at
    line = refused(lambda: paths.open_regular(fifo, "an image", "pass an image file"), fifo)
    assert "is a FIFO (a named pipe), not a regular file" in line


@pytest.mark.parametrize("kind", KINDS)
def test_evaluate_plots_dir_with_a_picture_that_is_not_a_file(trained, tmp_path, kind):
    out, _ = trained
    path = make(tmp_path / "confusion_matrix.png", kind)
    line = refused(lambda: evaluate.main([str(out / "model.pt"), "--plots-dir", str(tmp_path)]), path)
    assert line == (f"{path} is {said(path, kind)}, not a regular file, so not a picture: move it, or pass --no-plots, "
                    "or --plots-dir DIR for the pictures")
    assert os.path.lexists(path)


@pytest.mark.parametrize("kind", ["fifo", "socket", "dangling"])
def test_evaluate_plots_dir_that_is_not_a_folder(trained, tmp_path, kind):
    out, _ = trained
    path = make(tmp_path / "pictures", kind)
    line = refused(lambda: evaluate.main([str(out / "model.pt"), "--plots-dir", path]), path)
    assert line == f"{path} is {said(path, kind)}{', not a folder' * (kind != 'dangling')}; pass --no-plots, " \
                   "or --plots-dir DIR for the pictures"


@pytest.mark.parametrize("kind", KINDS)
def test_a_checkpoint_that_is_not_a_file(tmp_path, kind):
    path = make(tmp_path / "model.pt", kind)
    line = refused(lambda: evaluate.main([path, "--no-plots"]), path)
    assert line == (f"{path} is a folder, not a checkpoint file" if kind == "folder" else
                    f"{path} is {said(path, kind)}, not a regular file, so not a checkpoint: "
                    f"{checkpoint.TRAIN_AGAIN}")


@pytest.mark.parametrize("kind", KINDS)
def test_resume_from_a_checkpoint_that_is_not_a_file(tmp_path, kind):
    path = make(tmp_path / "model.pt", kind)
    line = refused(lambda: train.parse_args(["--resume", path]), path)
    assert line.startswith(f"{path} is {said(path, kind)}")


@pytest.mark.parametrize("kind", KINDS)
def test_compare_out_that_is_not_a_file(trained, tmp_path, kind):
    out, _ = trained
    path = make(tmp_path / "compare.png", kind)
    line = refused(lambda: compare.main([str(out), "--out", path]), path)
    assert line == f"{path} is {said(path, kind)}, not a regular file, so not a picture: move it, or pass another --out"
    assert plots.drawn_here(path) is False  # asked directly, it does not wait either


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", [".lock", "model.pt"])
def test_train_out_with_a_run_file_that_is_not_a_file(fake_mnist, tmp_path, kind, name):
    """.lock or model.pt a FIFO (a folder, a socket, a link to nothing): refused, without waiting on it."""
    out = tmp_path / "run"
    out.mkdir()
    path = make(out / name, kind)
    line = refused(lambda: train.main(["--data-dir", fake_mnist, "--out", str(out), "--epochs", "1",
                                       "--device", "cpu", "--no-plots"]), path)
    if name == ".lock":
        assert line == (f"{path} is {said(path, kind)}, not a regular file, so not a lock file: "
                        "remove it, or pass another --out")
        assert os.listdir(out) == [".lock"]
    else:
        assert f"model.pt is in the way ({said(path, kind)}, not a regular file): move it" in line
    assert os.path.lexists(path)


@pytest.mark.parametrize("kind", ["fifo", "socket", "dangling"])
def test_train_out_that_is_not_a_folder(fake_mnist, tmp_path, kind):
    out = make(tmp_path / "run", kind)
    line = refused(lambda: train.main(["--data-dir", fake_mnist, "--out", out, "--epochs", "1", "--device", "cpu"]),
                   out)
    assert line == f"{out} is {said(out, kind)}{', not a folder' * (kind != 'dangling')}; pass --out DIR"


@pytest.mark.parametrize("kind", KINDS)
def test_an_image_that_is_not_a_file(tmp_path, kind):
    path = make(tmp_path / "digit.png", kind)
    line = refused(lambda: photo.read_digit(path), path)
    assert line == ("a folder, not an image" if kind == "folder" else
                    f"{said(path, kind)}, not a regular file, so not an image: pass an image file")


@pytest.mark.parametrize("kind", KINDS)
def test_an_mnist_file_that_is_not_a_file(fake_mnist, tmp_path, kind):
    data = tmp_path / "data"
    shutil.copytree(fake_mnist, data)
    raw = data / "MNIST" / "raw" / "t10k-labels-idx1-ubyte"
    raw.unlink()
    make(raw, kind)
    line = refused(lambda: mnist_files.ensure(str(data), train=False), str(raw))
    assert line.startswith(str(raw)) and "delete it to download it again" in line


@pytest.mark.parametrize("kind", KINDS)
def test_save_input_beside_a_name_that_is_not_a_file(tmp_path, kind):
    """A NAME.mnist.png that is not a file is not written over, nor waited on: the next name is taken."""
    make(tmp_path / "d.mnist.png", kind)
    taken = set()
    target = within(lambda: taken.add(runs.unused_name(str(tmp_path), "d.png", ".mnist.png", set())),
                    str(tmp_path / "d.mnist.png"))
    assert target is None
    (path,) = taken
    assert path == str(tmp_path / "d-2.mnist.png")
    runs.write(path, b"png")


@pytest.mark.parametrize("kind", ["fifo", "socket", "dangling"])
def test_save_input_into_a_folder_that_is_not_one(tmp_path, kind):
    folder = make(tmp_path / "saved", kind)
    line = refused(lambda: runs.unused_name(folder, "d.png", ".mnist.png", set()), folder)
    assert line == (f"{folder} is {said(folder, kind)}{', not a folder' * (kind != 'dangling')}; "
                    "pass --save-input DIR with a folder you can write to")


@pytest.mark.parametrize("kind", KINDS)
def test_write_over_a_path_that_is_not_a_file(tmp_path, kind):
    path = make(tmp_path / "picture.png", kind)
    line = refused(lambda: runs.write(path, b"new", "keep out"), path)
    assert line == f"cannot write {path} ({said(path, kind)}, not a regular file); keep out"
    assert os.path.lexists(path) and sorted(os.listdir(tmp_path)) == ["picture.png"]  # nothing else left


def test_write_removes_its_temporary_file_when_the_rename_fails(tmp_path, monkeypatch):
    def failing(src, dst):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(runs.os, "replace", failing)
    with pytest.raises(cli.UserError, match=r"cannot write .*x\.png \(No space left on device\); keep out"):
        runs.write(str(tmp_path / "x.png"), b"x", "keep out")
    assert os.listdir(tmp_path) == []
