"""Shared fixtures: a small MNIST-format data set on disk, the real one when given, and a runner
for the scripts as a user starts them.

Real-data tests read MNIST_DATA_DIR (a folder holding MNIST/raw/). Without it they skip,
except under CI (CI set), where a skip would hide them, so they fail instead.
"""
import contextlib
import importlib
import io
import json
import os
import queue
import signal
import struct
import subprocess
import sys
import threading
import time
import zlib

import pytest
import torch
from torch.utils.data import DataLoader

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# The tests that matter on a GPU run on each device present: a plain pytest on a CUDA machine covers it.
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
GATE_EPOCHS = 10  # real-data run with the default hyperparameters, shared by the real-data tests
FAKE_TRAIN, FAKE_TEST = 640, 200  # 10 training batches of 64, one test batch


def in_order(data_dir, batch_size, kind="classic", device="cpu", train=False):
    """A loader over one split of data_dir, not shuffled: classic, or the fast one made from it."""
    import data
    from machinery import fast_mnist

    loader = DataLoader(data.load_mnist(data_dir, train), batch_size=batch_size, generator=torch.Generator())
    return fast_mnist.loader_like(loader, device) if kind == "fast" else loader


def train_run(data_dir, out, *flags, device="cpu"):
    """train.py's main() in this process, into exactly `out`, without pictures: the checkpoint saved."""
    import train

    train.main(["--data-dir", data_dir, "--out", str(out), "--device", device, "--no-plots", *map(str, flags)])
    return torch.load(os.path.join(out, "model.pt"), weights_only=True)


def same_bits(a, b):
    """a and b hold the same values bit for bit (-0.0 is not 0.0 here), in dicts, lists and tensors alike."""
    if torch.is_tensor(a) or torch.is_tensor(b):
        return (torch.is_tensor(a) and torch.is_tensor(b) and a.dtype == b.dtype and a.shape == b.shape and
                torch.equal(a.detach().reshape(-1).contiguous().view(torch.uint8),
                            b.detach().reshape(-1).contiguous().view(torch.uint8)))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same_bits(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(same_bits(x, y) for x, y in zip(a, b))
    return a == b


def assert_same_run(a, b):
    """Two checkpoints of one run, bit for bit: the weights' bits, the shuffle, the random numbers, the
    optimizer (and every other state saved beside it), the settings and the history (its seconds aside)."""
    for key in a["model"]:
        assert same_bits(a["model"][key], b["model"][key]), key
    strip = lambda history: [{k: v for k, v in h.items() if k != "seconds"} for h in history]  # noqa: E731
    assert strip(a["history"]) == strip(b["history"])
    assert a.keys() == b.keys()
    for key in a.keys() - {"history"}:
        assert same_bits(a[key], b[key]), key


def write_idx(path, tensor):
    """Write a uint8 tensor as an IDX file, the format of the MNIST files."""
    magic = 0x0800 + tensor.dim()  # 0x08: unsigned byte
    with open(path, "wb") as f:
        f.write(struct.pack(f">I{tensor.dim()}I", magic, *tensor.shape))
        f.write(tensor.to(torch.uint8).numpy().tobytes())


def fake_digits(n, seed):
    """Images with a class-dependent bright bar plus noise, so a model can learn them."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 10, (n,), generator=g)
    images = torch.randint(0, 60, (n, 28, 28), generator=g)
    for i, d in enumerate(labels.tolist()):
        images[i, 2 + 2 * d: 6 + 2 * d, 4:24] = 255
    images[0].view(-1)[:256] = torch.arange(256)  # every byte value, for the loaders' bit-exact floats
    return images.to(torch.uint8), labels.to(torch.uint8)


def make_fake_mnist(root):
    raw = os.path.join(root, "MNIST", "raw")
    os.makedirs(raw, exist_ok=True)
    for prefix, n, seed in (("train", FAKE_TRAIN, 1), ("t10k", FAKE_TEST, 2)):
        images, labels = fake_digits(n, seed)
        write_idx(os.path.join(raw, f"{prefix}-images-idx3-ubyte"), images)
        write_idx(os.path.join(raw, f"{prefix}-labels-idx1-ubyte"), labels)
    return str(root)


def pytest_collection_modifyitems(items):
    """The real-data tests are slow too: `python -m pytest -m "not slow"` is the quick check."""
    for item in items:
        if {"real_mnist", "real_run"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def fake_mnist(tmp_path_factory):
    """A data dir with four small IDX files, read through the real torchvision loader."""
    return make_fake_mnist(tmp_path_factory.mktemp("fake_mnist"))


@pytest.fixture(scope="session")
def trained(fake_mnist, tmp_path_factory):
    """A two-epoch run of train.py on the small data set, into --out: (out dir, its stdout)."""
    out = tmp_path_factory.mktemp("run")
    proc = run_script("train.py", "--data-dir", fake_mnist, "--out", out, "--epochs", 2, "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    return out, proc.stdout


@pytest.fixture(scope="session")
def real_mnist():
    path = os.environ.get("MNIST_DATA_DIR")
    if not path:
        if os.environ.get("CI"):
            pytest.fail("CI must run the real-data tests: set MNIST_DATA_DIR to a folder holding MNIST/raw/")
        pytest.skip("set MNIST_DATA_DIR to a folder holding MNIST/raw/ to run the real-data tests")
    raw = os.path.join(path, "MNIST", "raw", "train-images-idx3-ubyte")
    assert os.path.isfile(raw), f"MNIST_DATA_DIR={path} has no MNIST/raw/train-images-idx3-ubyte"
    return path


@pytest.fixture(scope="session")
def real_run(real_mnist, tmp_path_factory):
    """train.py with the default hyperparameters for GATE_EPOCHS epochs: (out dir, stdout)."""
    out = tmp_path_factory.mktemp("real_run")
    proc = run_script("train.py", "--data-dir", real_mnist, "--out", out, "--epochs", GATE_EPOCHS, "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    return out, proc.stdout


# No network in the tests: a download attempt fails at once, in this process and in any it starts.
os.environ.update(http_proxy="http://127.0.0.1:9", https_proxy="http://127.0.0.1:9", HTTP_PROXY="http://127.0.0.1:9",
                  HTTPS_PROXY="http://127.0.0.1:9", no_proxy="localhost,127.0.0.1,::1",
                  NO_PROXY="localhost,127.0.0.1,::1")


def run_script(script, *args, cwd=None):
    """`python <script> <args>` as a user runs it, but in this process (no second torch import):
    its exit status, stdout and stderr, as subprocess.run would give them."""
    from machinery import cli

    module = importlib.import_module(script[:-3])
    argv = [str(a) for a in args]
    out, err, code = io.StringIO(), io.StringIO(), 0
    saved = sys.argv, os.getcwd(), torch.get_num_threads(), torch.get_rng_state()
    sys.argv = [script, *argv]  # argparse names the script in its messages
    os.chdir(cwd or ROOT)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            cli.run(lambda: module.main(argv))
    except SystemExit as e:  # as the interpreter ends: a message goes to stderr, with status 1
        code = e.code if isinstance(e.code, int) else 0 if e.code is None else 1
        if isinstance(e.code, str):
            err.write(e.code + "\n")
    finally:  # what the script set for its process is put back for the next test
        sys.argv = saved[0]
        os.chdir(saved[1])
        torch.set_num_threads(saved[2])
        torch.set_rng_state(saved[3])
    return subprocess.CompletedProcess([script, *argv], code, out.getvalue(), err.getvalue())


def run_process(script, *args, cwd=None, timeout=300):
    """`python <script> <args>` in a process of its own: for what needs one (signals, peak memory,
    a lock held by another process, the end-to-end smoke run)."""
    return subprocess.run([sys.executable, os.path.join(ROOT, script), *map(str, args)], cwd=cwd or ROOT,
                          capture_output=True, text=True, timeout=timeout)


def _default_stop_signals():
    """In a child, before it runs: Ctrl-C, SIGTERM and SIGHUP as a terminal would deliver them, even
    where this pytest was started with them ignored (nohup, trap '' INT), which a child inherits."""
    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, signal.SIG_DFL)


def start_process(script, *args, cwd=None):
    """`python <script> <args>` started, its stdout and stderr piped: for signals and locks."""
    return subprocess.Popen([sys.executable, os.path.join(ROOT, script), *map(str, args)], cwd=cwd or ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_default_stop_signals)


class Child:
    """A script in a process of its own whose output is read as it comes, never without a deadline:
    a line that never comes fails the test in seconds (and ends the child), it does not hang it.
    One still running when its test ends is killed."""
    running = []

    def __init__(self, script, *args, cwd=None):
        self.proc = start_process(script, *args, cwd=cwd)
        Child.running.append(self)
        self.lines, self.stderr = queue.Queue(), []
        self.readers = [threading.Thread(target=self._read, args=(self.proc.stdout, self.lines.put), daemon=True),
                        threading.Thread(target=self._read, args=(self.proc.stderr, self.stderr.append), daemon=True)]
        for reader in self.readers:
            reader.start()

    @staticmethod
    def _read(stream, keep):
        for line in stream:
            keep(line)
        keep(None)  # the end of the stream

    def line(self, prefix, timeout=60):
        """The next line of stdout that starts with prefix."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                self.kill()
                pytest.fail(f"no line starting {prefix!r} within {timeout} s; stderr: {self.stderr_text()[-2000:]}")
            if line is None:
                self.proc.wait(timeout)
                pytest.fail(f"the process ended (status {self.proc.returncode}) before a line starting {prefix!r}; "
                            f"stderr: {self.stderr_text()[-2000:]}")
            if line.startswith(prefix):
                return line

    def send(self, sig):
        self.proc.send_signal(sig)

    def finish(self, timeout=60):
        """(exit status, all of stderr) once the process has ended; killed if it has not within timeout."""
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"still running after {timeout} s; stderr: {self.stderr_text()[-2000:]}")
        for reader in self.readers:
            reader.join(timeout)
        return self.proc.returncode, self.stderr_text()

    def stderr_text(self):
        return "".join(line for line in self.stderr if line)

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


# 300 epochs of the small data set: seconds (30 ms an epoch on two busy cores). Long enough that a
# signal sent on reading epoch 1 or 2 (well under a millisecond later) cannot come too late, short
# enough that a child which never gets its signal, or ignores it, ends by itself soon.
STOPPABLE_EPOCHS = 300


@pytest.fixture()
def stoppable_train(fake_mnist):
    """stoppable_train(out, epochs_done, *flags) -> a Child running train.py on the small data set,
    once it has printed the line of each epoch up to epochs_done (each checked as it comes)."""
    def start(out, epochs_done, *flags):
        child = Child("train.py", "--data-dir", fake_mnist, "--out", out, "--epochs", STOPPABLE_EPOCHS,
                      "--device", "cpu", *flags)
        width = len(str(STOPPABLE_EPOCHS))
        for epoch in range(1, epochs_done + 1):
            line = child.line("epoch")
            assert line.startswith(f"epoch {epoch:{width}d}/{STOPPABLE_EPOCHS}  train loss "), line
        return child
    return start


@pytest.fixture(autouse=True)
def no_leaks():
    """What an in-process run changes for the whole process is put back after each test, and no
    process a test started outlives it."""
    threads, handlers = torch.get_num_threads(), {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM,
                                                                                   signal.SIGHUP)}
    yield
    while Child.running:
        Child.running.pop().kill()
    torch.set_num_threads(threads)
    for s, handler in handlers.items():
        signal.signal(s, handler)


PEAKS = """
import contextlib, importlib, io, json, resource, sys
sys.path.insert(0, sys.argv[1])
from machinery import cli
module = importlib.import_module(sys.argv[2])
for argv in json.loads(sys.argv[3]):
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            module.main(argv)
        said = out.getvalue()
    except cli.UserError as e:
        said = f"error: {e}"
    except SystemExit as e:
        said = out.getvalue() + f"exit {e.code}"
    print(json.dumps([resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, said]), flush=True)
"""


def peak_memory(script, *argvs):
    """[(peak resident MB so far, what main printed or the error it raised)] after each of the
    argvs, all run by one new process, one after the other: the first is the baseline."""
    argvs = json.dumps([[str(a) for a in argv] for argv in argvs])
    proc = subprocess.run([sys.executable, "-c", PEAKS, ROOT, script[:-3], argvs], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr
    return [tuple(json.loads(line)) for line in proc.stdout.splitlines()]


def chunk(kind, body):
    """One PNG chunk: its length, kind, body and checksum."""
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def huge_png(path, side=13300):
    """A white side x side RGBA PNG with a black bar, written row by row: 726 KB holding 700 MB."""
    white, bar = b"\0" + b"\xff" * (4 * side), b"\0" + (b"\xff" * 4 * (side // 2 - 300)
                                                       + b"\0\0\0\xff" * 600 + b"\xff" * 4 * (side - side // 2 - 300))
    packer = zlib.compressobj(9)
    rows = bytearray()
    for y in range(side):
        rows += packer.compress(bar if side // 5 < y < 4 * side // 5 else white)
    rows += packer.flush()
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 6, 0, 0, 0))
                + chunk(b"IDAT", bytes(rows)) + chunk(b"IEND", b""))




def main_error(module, *args):
    """Run module.main(args) in this process as cli.run does; return the one line it exits with."""
    from machinery import cli

    with pytest.raises(SystemExit) as e:
        cli.run(lambda: module.main([str(a) for a in args]))
    message = e.value.code
    assert isinstance(message, str) and message.startswith("error: ") and "\n" not in message, message
    return message


def assert_one_line_error(proc, *fragments):
    """Non-zero exit, one line on stderr that starts with 'error:' and names each fragment."""
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


@pytest.fixture()
def disk(tmp_path):
    """disk(kb) -> a folder on a fresh tmpfs of that size; disk(kb, files) fills it and makes it
    read-only. Root only (as CI and these machines run); elsewhere the test skips, under CI it fails."""
    mounted = []

    def make(kb, files=None):
        folder = tmp_path / f"disk{len(mounted)}"
        folder.mkdir()
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={kb}k", "tmpfs", str(folder)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            if os.environ.get("CI"):
                pytest.fail(f"CI must run the full-disk tests, and mount failed: {proc.stderr}")
            pytest.skip(f"cannot mount a small tmpfs here (root needed): {proc.stderr.strip()}")
        mounted.append(folder)
        for name, content in (files or {}).items():
            (folder / name).write_bytes(content)
        if files is not None:
            subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)
        return folder

    yield make
    for folder in mounted:
        subprocess.run(["umount", str(folder)], check=False)
