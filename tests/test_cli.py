"""cli.py: flag ranges, explicit flags, device choice, and how a script
ends: one line for a mistake, for Ctrl-C (a second one too), and for a closed pipe."""
import argparse
import contextlib
import io
import signal
import subprocess
import sys
import time

import pytest
import torch

from machinery import cli
from conftest import ROOT


def test_int_in_and_learning_rate_accept_their_range_only():
    parse = cli.int_in(1, 10)
    assert parse("1") == 1 and parse("10") == 10
    for text, message in (("0", "0 is out of range: use 1 to 10"), ("11", "out of range"), ("1.5", "not a whole")):
        with pytest.raises(argparse.ArgumentTypeError, match=message):
            parse(text)
    assert cli.learning_rate("0.01") == 0.01 and cli.learning_rate("3e38") == 3e38
    for text in ("0", "-1", "nan", "inf", "1e39", "abc"):
        with pytest.raises(argparse.ArgumentTypeError):
            cli.learning_rate(text)


def test_parser_errors_are_one_line(capsys):
    p = cli.ArgumentParser(prog="train.py")
    p.add_argument("--epochs", type=cli.int_in(1, 5), default=3, help="epochs")
    with pytest.raises(SystemExit) as e:
        p.parse_args(["--epochs", "9"])
    assert e.value.code == 2
    assert capsys.readouterr().err == ("error: argument --epochs: 9 is out of range: use 1 to 5; "
                                       "see python train.py --help\n")
    assert "epochs (default: 3)" in p.format_help()


def test_device_choice():
    assert cli.device("cpu") == torch.device("cpu")
    accelerator = torch.accelerator.current_accelerator() if torch.accelerator.is_available() else None
    with pytest.raises(cli.UserError, match="unknown device 'tpu'"):
        cli.device("tpu")
    if accelerator is None:
        with pytest.raises(cli.UserError, match="--device cuda: CUDA is not available here; use --device cpu"):
            cli.device("cuda")
    else:
        with pytest.raises(cli.UserError, match="only"):
            cli.device(f"{accelerator.type}:{torch.accelerator.device_count()}")


def test_a_device_index_past_the_last_device_is_refused(monkeypatch):
    # as on a machine with one CUDA device, which this test need not run on
    monkeypatch.setattr(torch.accelerator, "is_available", lambda: True)
    monkeypatch.setattr(torch.accelerator, "current_accelerator", lambda: torch.device("cuda"))
    monkeypatch.setattr(torch.accelerator, "device_count", lambda: 1)
    assert cli.device("cuda:0") == torch.device("cuda:0") and cli.device("cuda") == torch.device("cuda")
    with pytest.raises(cli.UserError, match=r"^--device cuda:1: only 1 cuda device\(s\) here$"):
        cli.device("cuda:1")
    with pytest.raises(cli.UserError, match="MPS is not available here"):
        cli.device("mps")


def test_run_turns_a_user_error_into_one_line_and_restores_handlers():
    def main():
        raise cli.UserError("what to do")
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as e:
        cli.run(main)
    assert e.value.code == "error: what to do" and signal.getsignal(signal.SIGTERM) == before


def test_a_second_ctrl_c_while_the_first_is_handled_is_one_line_too():
    class Interrupted(io.StringIO):  # the second Ctrl-C lands as the first one's line is written
        interrupted = False

        def write(self, text):
            if not self.interrupted:
                self.interrupted = True
                raise KeyboardInterrupt
            return super().write(text)

    def main():
        raise cli.Stopped(signal.SIGTERM, "what was kept")
    with contextlib.redirect_stderr(Interrupted()) as err:
        try:
            cli.run(main)
        except SystemExit as e:
            code = e.code
        except KeyboardInterrupt:  # caught here: raised on, it would stop pytest itself
            pytest.fail("the second Ctrl-C went past cli.run: a traceback, not one line")
    assert code == 130 and err.getvalue() == "\ninterrupted (SIGINT)\n"
    assert all(signal.getsignal(s) is signal.SIG_IGN for s in cli.STOP_SIGNALS)  # till the exit


@pytest.mark.slow  # a process of its own
def test_a_closed_pipe_ends_quietly(trained, fake_mnist):
    out, _ = trained
    # `true` reads nothing and exits at once: every line evaluate.py prints meets a closed pipe
    command = f"{sys.executable} evaluate.py {out / 'model.pt'} --data-dir {fake_mnist} --no-plots | true"
    proc = subprocess.run(["bash", "-c", command + "; exit ${PIPESTATUS[0]}"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.stderr == "" and proc.returncode == 1


@pytest.mark.slow  # a process of its own
def test_a_second_ctrl_c_is_one_line_too(tmp_path, stoppable_train):
    proc = stoppable_train(tmp_path / "run", 1, "--no-plots")
    proc.send(signal.SIGINT)
    # Any gap will do: wherever the second one lands, the end must be the same. Without one, both
    # can arrive before Python handles the first, and count as one.
    time.sleep(0.02)
    proc.send(signal.SIGINT)
    returncode, stderr = proc.finish()
    assert returncode == 130 and "Traceback" not in stderr, stderr
    assert stderr.strip().splitlines()[-1].startswith("interrupted (SIGINT)")


def test_a_terminal_that_cannot_show_a_character_gets_it_written_out():
    """PYTHONIOENCODING=ascii and a folder named in Greek: no UnicodeEncodeError, in output or the error."""
    out, err = (io.TextIOWrapper(io.BytesIO(), encoding="ascii") for _ in range(2))

    def main():
        print("run runs/αβ: ...")
        raise cli.UserError("runs/αβ already holds a run")

    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), pytest.raises(SystemExit) as e:
        cli.run(main)
    out.flush()
    assert out.buffer.getvalue() == b"run runs/\\u03b1\\u03b2: ...\n"
    assert e.value.code == "error: runs/\\u03b1\\u03b2 already holds a run"
    assert out.errors == err.errors == "strict"  # put back as it was
