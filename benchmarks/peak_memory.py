"""Peak memory (RSS) of a one-epoch train.py run with each loader, each in a process of its own.

    python benchmarks/peak_memory.py [--data-dir DIR]

The fast loader keeps the images as one uint8 tensor, as torchvision's dataset does, so the two
should peak within a few MB of each other.
"""
import argparse
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import train  # noqa: E402


def peak_rss_mb(*args):
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "train.py"), *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(proc.stderr.read().decode().strip())
    return usage.ru_maxrss / 1024  # kilobytes on Linux


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=train.DATA_DIR,
                   help=f"folder that holds MNIST/raw/ (default: {train.DATA_DIR})")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        peaks = {kind: peak_rss_mb("--data-dir", args.data_dir, "--epochs", "1", "--device", "cpu", "--no-plots",
                                   "--loader", kind, "--out", os.path.join(tmp, kind)) for kind in ("classic", "fast")}
    print(f"peak RSS of one epoch: classic {peaks['classic']:.0f} MB, fast {peaks['fast']:.0f} MB, "
          f"difference {peaks['fast'] - peaks['classic']:+.0f} MB")


if __name__ == "__main__":
    main()
