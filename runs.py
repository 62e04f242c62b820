"""Run folders: one per experiment, written safely, locked while a run writes, found again later.

    runs/lr0.01-bs64/            model.pt  history.json  training_curves.png
    runs/lr0.1-bs32/             (a run with --lr 0.1 --batch-size 32)
    runs/lr0.1-bs32-2/           (the same again: a new folder, never an overwrite)
    runs/h128-relu-lr0.01-bs64/  (after HIDDEN = 128 and ACTIVATION = nn.ReLU in model.py)
"""
import glob
import json
import os
import shlex

try:
    import fcntl
except ImportError:  # Windows: no advisory locks, so two runs into one folder are not caught there
    fcntl = None

import checkpoint
import cli
from cli import UserError, signals_held

RUN_FILES = ("model.pt", "history.json", "training_curves.png")
STANDARD = "784-64-10 sigmoid"  # the project's network: another one is named in the folder


def folder_name(config, arch=STANDARD):
    """'lr0.01-bs64'; 'h128-relu-' first for another network, '-seed3' for a seed other than 0."""
    (hidden, activation), (standard_hidden, standard_activation) = (checkpoint.ARCH.fullmatch(a).groups()
                                                                    for a in (arch, STANDARD))
    parts = [f"h{hidden}"] * (hidden != standard_hidden) + [activation] * (activation != standard_activation)
    parts += [f"lr{config['lr']:g}", f"bs{config['batch_size']}"] + [f"seed{config['seed']}"] * (config["seed"] != 0)
    return "-".join(parts)


class Run:
    """The folder a training run writes into, held while it runs:

        with Run(out, config, arch, exact, continues) as run:
            run.save(ckpt)                           # model.pt and history.json, whole or not at all
            run.write("training_curves.png", png_bytes)

    The folder is exactly `out` when `exact` or when the run `continues` a checkpoint, else a new one
    under `out` named by folder_name. It is made, and locked so that a second train.py cannot write
    there at once; what a killed run left half-written is removed; another run's files are never
    written over, only the checkpoint the run continues. Ctrl-C, SIGTERM or SIGHUP inside the block
    ends with what is saved and the command that goes on.
    """

    def __init__(self, out, config, arch, exact=False, continues=None):
        self.made = not (exact or continues)  # a new folder, ours to remove if nothing gets saved in it
        self.folder = new_folder(out, folder_name(config, arch)) if self.made else out
        self.model_path = os.path.join(self.folder, "model.pt")
        self.continues, self.saved = continues, None  # saved: (epoch, of how many) once this run saved one
        check_writable(self.folder, "pass --out DIR")
        self.lock = lock(self.folder)
        try:
            self.check_files(continues)
        except BaseException:
            self.close()
            raise
        for name in RUN_FILES:  # half-written by a killed run; we hold the lock now
            for stale in glob.glob(os.path.join(glob.escape(self.folder), glob.escape(name) + ".*.tmp")):
                os.unlink(stale)

    def check_files(self, continues):
        """UserError if the run would write over anything but the checkpoint it continues."""
        for name in RUN_FILES:
            path = os.path.join(self.folder, name)
            if os.path.lexists(path) and not os.path.isfile(path):
                raise UserError(f"{os.path.abspath(path)} is in the way (not a regular file): "
                                "move it, or pass another --out")
        in_place = continues and os.path.isfile(self.model_path) and os.path.samefile(self.model_path, continues)
        if not in_place and any(os.path.lexists(os.path.join(self.folder, name)) for name in RUN_FILES):
            where = os.path.abspath(self.folder)
            raise UserError(f"{where} already holds a run: pass --resume to continue it, or another --out"
                            if continues is None else f"{where} holds another run's files, which resuming "
                            f"{continues} would replace: pass --out DIR to continue it in a folder of its own")

    def __enter__(self):
        return self

    def __exit__(self, kind, error, traceback):
        self.close()
        if isinstance(error, KeyboardInterrupt):
            raise cli.Stopped.saying(error, self.where_to_go_on()) from None

    def close(self):
        if self.lock:
            self.lock.close()  # the folder is free again
            self.lock = None
        if self.made and not self.saved:  # nothing in it: no empty folder for compare.py to skip
            if os.path.isfile(os.path.join(self.folder, ".lock")):
                os.unlink(os.path.join(self.folder, ".lock"))
            if not os.listdir(self.folder):
                os.rmdir(self.folder)

    def kept(self):
        """Where the last finished epoch is."""
        if self.saved:
            return f"{self.model_path} keeps epoch {self.saved[0]}"
        return f"{self.continues} is as it was" if self.continues else "nothing was saved"

    def where_to_go_on(self):
        if self.saved and self.saved[0] == self.saved[1]:
            return f"all {self.saved[1]} epochs are saved in {self.model_path}; only the curves were not drawn"
        if self.saved:
            return f"epoch {self.saved[0]}/{self.saved[1]} is saved in {self.model_path}; continue with: " \
                + shlex.join(["python", "train.py", "--resume", self.model_path])
        return f"no epoch had finished, {self.kept()}"

    def save(self, ckpt):
        """model.pt and history.json, written together: a signal waits until both are on disk."""
        data = checkpoint.dumps(ckpt)
        history = json.dumps(ckpt["history"], indent=1).encode() + b"\n"
        with signals_held():
            write(self.model_path, data)
            write(os.path.join(self.folder, "history.json"), history)
            self.saved = ckpt["epoch"], ckpt["config"]["epochs"]  # before a held signal is raised

    def write(self, name, data):
        """Another file of the run's (a picture), written atomically; returns its path."""
        path = os.path.join(self.folder, name)
        write(path, data, f"the run itself is saved in {self.model_path}")
        return path


def resume(args, given):
    """(checkpoint, its path, the folder the run goes on in, one line per setting a flag changes),
    for --resume [CHECKPOINT] (default: the newest run in --out); refuses what cannot go on."""
    path = args.resume or newest_checkpoint(args.out)
    if not path.isprintable():  # it is printed below: a newline or escape would reach the terminal
        raise UserError(f"{ascii(path)[1:-1]}: a path with control characters in it; rename it to resume it")
    ckpt = checkpoint.load(path)
    checkpoint.check_resumable(ckpt, path)
    config = ckpt["config"]
    if "seed" in given and args.seed != config["seed"]:
        raise UserError(f"--seed {args.seed}: a resumed run goes on from its own weights and shuffle "
                        f"(seed {config['seed']}); leave --seed out, or start a new run")
    epochs = args.epochs if "epochs" in given else config["epochs"]
    if epochs <= ckpt["epoch"]:
        raise UserError(f"{path} is at epoch {ckpt['epoch']} already; "
                        f"pass --epochs N with N > {ckpt['epoch']} to train further")
    notes = [f"{key.replace('_', ' ')} {config[key]} -> {getattr(args, key)} from epoch {ckpt['epoch'] + 1}"
             for key in ("lr", "batch_size", "loader", "threads", "device")
             if key in given and key in config and getattr(args, key) != config[key]]
    # --resume CHECKPOINT --out DIR goes on in DIR and leaves the checkpoint as it is
    folder = args.out if args.resume and "out" in given else os.path.dirname(path) or "."
    return ckpt, path, folder, notes


def new_folder(root, name):
    """root/name, or root/name-2, -3, ... : a folder no earlier run has used, made now."""
    for n in range(1, 100_000):
        folder = os.path.join(root, name if n == 1 else f"{name}-{n}")
        try:
            os.makedirs(folder)
            return folder
        except FileExistsError:
            continue
        except OSError as e:
            raise UserError(f"cannot make the run folder {os.path.abspath(folder)} ({e.strerror or e}); "
                            "pass --out DIR") from None
    raise UserError(f"{root} holds too many runs named {name}; pass --out DIR")


def newest_checkpoint(root):
    """The most recently written root/*/model.pt (or root/model.pt), or UserError if none."""
    found = [p for p in glob.glob(os.path.join(root, "*", "model.pt")) + [os.path.join(root, "model.pt")]
             if os.path.isfile(p)]
    if not found:
        raise UserError(f"no run in {os.path.abspath(root)} yet: train one with python train.py, "
                        "or name a checkpoint")
    return max(found, key=os.path.getmtime)


def lock(folder):
    """An open file holding an advisory lock on folder/.lock: close it, or end the process, to let go."""
    if fcntl is None:
        return None
    handle = open(os.path.join(folder, ".lock"), "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        pid = handle.read().strip() or "?"
        raise UserError(f"another train.py (process {pid}) is writing into {os.path.abspath(folder)}: "
                        "wait for it to end, or pass another --out") from None
    handle.truncate(0)
    handle.write(str(os.getpid()))
    handle.flush()
    return handle  # the lock holds while this stays open


def write(path, data, hint="the previous file, if any, is unchanged"):
    """Write bytes to path atomically: a temporary file beside it, then os.replace.

    A crash, a full disk or Ctrl-C midway leaves the old file whole; a failure is a UserError
    naming the file, the reason and the hint."""
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        _remove(tmp)
        raise UserError(f"cannot write {os.path.abspath(path)} ({e.strerror or e}); {hint}") from None
    except BaseException:
        _remove(tmp)
        raise


def _remove(tmp):
    if os.path.exists(tmp):
        os.unlink(tmp)


def check_writable(folder, hint):
    """UserError now, before the work, if files cannot be written into folder."""
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise UserError(f"{os.path.abspath(folder)} is a file, not a folder; {hint}")
    if not os.path.isdir(folder):
        try:
            os.makedirs(folder)
        except OSError as e:
            raise UserError(f"cannot make {os.path.abspath(folder)} ({e.strerror or e}); {hint}") from None
    if not os.access(folder, os.W_OK):
        raise UserError(f"cannot write into {os.path.abspath(folder)}; {hint}")


def unused_name(folder, filename, suffix, taken):
    """folder/STEM+suffix, or STEM-2+suffix, ...: a name neither in `taken` (which it joins) nor on
    disk, so that d.png and d.gif do not save over each other, nor over a file that was there."""
    check_writable(folder, "pass --save-input DIR with a folder you can write to")
    stem = os.path.splitext(filename)[0]
    for n in range(1, len(taken) + 100_000):
        path = os.path.join(folder, (stem if n == 1 else f"{stem}-{n}") + suffix)
        if path not in taken and not os.path.lexists(path):
            taken.add(path)
            return path
    raise UserError(f"{folder} holds too many files named {stem}*{suffix}; pass --save-input DIR")
