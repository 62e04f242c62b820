"""What makes the scripts behave as commands: one-line errors, flag ranges, device choice, signals.

A script ends with `cli.run(main)`. Then a mistake the user can fix is one line on stderr and a
non-zero exit, never a traceback; Ctrl-C, SIGTERM and SIGHUP end it the same way, a second Ctrl-C
too; a closed pipe (`| head`) ends it quietly. Importing this module changes nothing: run()
installs its signal handlers and puts them back when main() is done.
"""
import argparse
import math
import os
import signal
import sys

STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))


class UserError(Exception):
    """Something the user can fix (a flag, a file, a folder); the message says what to do."""


SHOWN_MAX = 300  # the most characters a text from outside takes in a line
SHOWN_HEAD, SHOWN_TAIL = 200, 60  # what a longer one keeps of its start and its end, beside the mark


def shown(text):
    """Text from a file, a checkpoint, a request or a folder's name as it may reach the terminal: each
    control character (an escape sequence, a newline, a carriage return) written out as \\x1b, \\n,
    \\r, and a text longer than 300 characters shortened in the middle to about 300, with a mark that says
    how long it was ('...…[500,000 characters]…...'): a key of 500,000 characters is not a line of 500 KB."""
    text = str(text)
    if len(text) <= SHOWN_MAX and text.isprintable():
        return text
    written = _written(text, SHOWN_MAX)
    if len(written) == len(text):
        return "".join(written)
    head, tail = _written(text, SHOWN_HEAD), _written(reversed(text), SHOWN_TAIL)[::-1]
    return f"{''.join(head)}…[{len(text):,} characters]…{''.join(tail)}"


def _written(chars, limit):
    """The characters, each written out if it is not printable, as long as they fit in `limit` in all."""
    out, used = [], 0
    for c in chars:
        c = c if c.isprintable() else ascii(c)[1:-1]
        if used + len(c) > limit:
            break
        out.append(c)
        used += len(c)
    return out


class HelpFormatter(argparse.HelpFormatter):
    def _get_help_string(self, action):  # each flag's help ends with its default, taken from the constant
        if any(action.default is v for v in (None, False, argparse.SUPPRESS)) or "default" in action.help:
            return action.help
        return f"{action.help} (default: %(default)s)"


class ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line errors; `saved_in`, once set, names the checkpoint whose settings are
    the defaults."""
    saved_in = None

    def __init__(self, **kwargs):
        super().__init__(formatter_class=HelpFormatter, **kwargs)

    def error(self, message):  # one line that says what to do, not the whole usage block
        if self.saved_in:  # the flags passed before: it is a saved setting that failed its check
            raise UserError(f"{self.saved_in}: a saved setting is not one train.py accepts here ({message}); "
                            "pass that flag with a value it accepts, or train a new run")
        self.exit(2, f"error: {message}; see python {self.prog} --help\n")


def int_in(low, high):
    """An argparse type: an int from low to high."""
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{shown(text)}' is not a whole number") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is out of range: use {low} to {high:,}")
        return value
    return parse


def cpus():
    """The CPUs this process may run on (its affinity, where the system has one), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def threads(text):
    """An argparse type: a number of CPU threads, from 1 to the CPUs there are (more only wait for each
    other: --threads 1024 on 2 cores had not finished an epoch in 150 s)."""
    value, most = int_in(-2**63, 2**63)(text), cpus()
    if value > most:
        raise argparse.ArgumentTypeError(f"{value} threads is more than the {most} CPU(s) this machine gives "
                                         f"this process: use 1 to {most}")
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is out of range: use 1 to {most}, the CPU(s) this machine "
                                         "gives this process")
    return value


def one_of(names):
    """An argparse type: one of these names (unlike choices=, it checks a default given as text too)."""
    def parse(text):
        if text not in names:
            raise argparse.ArgumentTypeError(f"'{shown(text)}' is not one of {', '.join(names)}")
        return text
    return parse


def learning_rate(text):
    """An argparse type: a positive float that float32 (the weights' type) can hold."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{shown(text)}' is not a number") from None
    if not (math.isfinite(value) and 0 < value <= 3.4e38):
        raise argparse.ArgumentTypeError(f"{shown(text)} is not a positive finite number float32 can hold")
    return value


def device(name):
    """torch.device for a --device value; 'auto' takes the accelerator (CUDA, MPS, ...) if any."""
    import torch

    accelerator = torch.accelerator.current_accelerator() if torch.accelerator.is_available() else None
    if name == "auto":
        return accelerator or torch.device("cpu")
    try:
        chosen = torch.device(name)
    except RuntimeError:
        chosen = None
    if chosen is None or chosen.type not in ("cpu", "cuda", "mps"):
        raise UserError(f"unknown device {name!r}: use auto, cpu, cuda, cuda:N or mps")
    if chosen.type != "cpu" and (accelerator is None or accelerator.type != chosen.type):
        raise UserError(f"--device {name}: {chosen.type.upper()} is not available here; use --device cpu or auto")
    if chosen.type != "cpu" and (chosen.index or 0) >= torch.accelerator.device_count():
        raise UserError(f"--device {name}: only {torch.accelerator.device_count()} {chosen.type} device(s) here")
    return chosen


def device_name(text):
    """An argparse type: a --device value naming a device this machine has (see device); the text itself,
    so that a run saves 'auto' as 'auto' and goes on with whatever accelerator it finds later."""
    try:
        device(text)
    except UserError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


class Stopped(KeyboardInterrupt):
    """Ctrl-C, SIGTERM or SIGHUP, with what to say about it: raised where Ctrl-C raises
    KeyboardInterrupt, so all three end alike."""

    def __init__(self, signum=signal.SIGINT, said=""):
        super().__init__(said)
        self.signum = signum

    @classmethod
    def saying(cls, stop, said):
        """The KeyboardInterrupt `stop` (whichever signal it came from), with `said` to print."""
        return cls(getattr(stop, "signum", signal.SIGINT), said)


def _stop(signum, frame):
    raise Stopped(signum)


def _quiet_stdout():
    """After a closed pipe: send what is left to /dev/null, so exiting does not fail too."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def run(main):
    """Run a script's main() as a command (see the module's docstring)."""
    previous = {s: signal.getsignal(s) for s in STOP_SIGNALS}
    for s in STOP_SIGNALS[1:]:  # Ctrl-C (SIGINT) raises KeyboardInterrupt already
        signal.signal(s, _stop)
    # A terminal that cannot show a character (PYTHONIOENCODING=ascii, a folder named in Greek) gets it
    # written out as \u03b1, rather than an encoding error in the middle of a run
    streams = {s: s.errors for s in (sys.stdout, sys.stderr) if hasattr(s, "reconfigure")}
    for stream in streams:
        stream.reconfigure(errors="backslashreplace")
    try:
        try:
            main()
            sys.stdout.flush()  # here, not at exit: a closed pipe must be caught below
        except UserError as e:
            encoding = getattr(sys.stderr, "encoding", None) or "utf-8"  # the exit message, written after this
            sys.exit(f"error: {e}".encode(encoding, "backslashreplace").decode(encoding))
        except KeyboardInterrupt as e:
            _stopped(e, str(e), previous)  # str(e): what was kept, and how to go on
        except BrokenPipeError:
            _quiet_stdout()
            sys.exit(1)
    except KeyboardInterrupt as e:  # a second Ctrl-C, come while the first was being handled
        _stopped(e, "", previous)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        for stream, errors in streams.items():
            stream.reconfigure(errors=errors)


def _stopped(stop, said, previous):
    """The line that says which signal stopped the script, and its exit status."""
    for s in STOP_SIGNALS:  # ignored from here to the exit: another Ctrl-C must not cut this short
        previous[s] = signal.SIG_IGN
        signal.signal(s, signal.SIG_IGN)
    signum = getattr(stop, "signum", signal.SIGINT)
    print(f"\ninterrupted ({signal.Signals(signum).name}){': ' + said if said else ''}", file=sys.stderr)
    sys.exit(128 + signum)
