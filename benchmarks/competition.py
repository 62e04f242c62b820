"""Busy processes that compete for the CPU, as a browser or a neighbour's job would.

    with competition.busy(1):   # one process spinning on a core until the block ends
        ...
"""
import contextlib
import os
import signal
import subprocess
import sys

SPIN = "import time\nend = time.time() + {seconds}\nwhile time.time() < end:\n    pass\n"


def spare_cores():
    """One busy process per core beyond the one the measured work mainly runs on."""
    return max(1, (os.cpu_count() or 2) - 1)


@contextlib.contextmanager
def busy(processes, seconds=900):
    """Start `processes` spinning Python processes (each ends by itself after `seconds` at the
    latest); stop them by their process ids when the block ends."""
    procs = [subprocess.Popen([sys.executable, "-c", SPIN.format(seconds=seconds)]) for _ in range(processes)]
    try:
        yield [p.pid for p in procs]
    finally:
        for p in procs:
            os.kill(p.pid, signal.SIGKILL)
            p.wait()
