"""Wall time of a whole command, on the machine as it is or with competing busy processes.

    python benchmarks/end_to_end.py -- python train.py --data-dir data --out runs/idle
    python benchmarks/end_to_end.py --busy -- python train.py --data-dir data --out runs/busy

--busy starts one spinning process per spare core for the command's duration (competition.py).
"""
import argparse
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import competition  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--busy", action="store_true", help="one busy process per spare core while it runs")
    p.add_argument("command", nargs=argparse.REMAINDER, help="the command, after --")
    args = p.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        sys.exit("error: give the command after --; see python benchmarks/end_to_end.py --help")
    processes = competition.spare_cores() if args.busy else 0
    with competition.busy(processes):
        start = time.perf_counter()
        code = subprocess.run(command).returncode
        seconds = time.perf_counter() - start
    condition = f"with {processes} busy process(es)" if processes else "on the machine as it is"
    print(f"{seconds:.1f} s wall, {condition}, exit status {code}: {' '.join(command)}")
    sys.exit(code)


if __name__ == "__main__":
    main()
