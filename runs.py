"""Run folders: one per experiment, written safely, locked while a run writes, found again later.

    runs/lr0.01-bs64/      model.pt  history.json  training_curves.png
    runs/lr0.1-bs32/       (a run with --lr 0.1 --batch-size 32)
    runs/lr0.1-bs32-2/     (the same again: a new folder, never an overwrite)
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
from cli import UserError, signals_held

FILES = ("model.pt", "history.json", "training_curves.png")


def folder_name(config):
    """'lr0.01-bs64', and '-seed3' for a seed other than 0: what a learner varies, at a glance."""
    return f"lr{config['lr']:g}-bs{config['batch_size']}" + (f"-seed{config['seed']}" if config["seed"] else "")


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


def resume(args, explicit):
    """Load the checkpoint to continue (the newest run's by default) and take on its settings.

    A flag written on the command line overrides its saved value; returns (checkpoint, what
    changed, one line each). The run goes on in the checkpoint's folder."""
    args.resume = args.resume or newest_checkpoint(args.out)
    ckpt = checkpoint.load(args.resume)
    config, said = ckpt["config"], []
    if "seed" in explicit and args.seed != config["seed"]:
        raise UserError(f"--seed {args.seed}: a resumed run goes on from its own weights and shuffle "
                        f"(seed {config['seed']}); leave --seed out, or start a new run")
    for key in ("lr", "batch_size", "loader", "seed", "epochs"):
        if key not in explicit:
            setattr(args, key, config[key])
        elif getattr(args, key) != config[key] and key != "epochs":
            said.append(f"{key.replace('_', ' ')} {config[key]} -> {getattr(args, key)} "
                        f"from epoch {ckpt['epoch'] + 1}")
    if args.epochs <= ckpt["epoch"]:
        raise UserError(f"{args.resume} is at epoch {ckpt['epoch']} already; "
                        f"pass --epochs N with N > {ckpt['epoch']} to train further")
    args.out = os.path.dirname(args.resume) or "."
    return ckpt, said


def prepare(args, explicit, config):
    """The folder this run writes into, made and locked, with no stale temporary files in it.

    A new run gets a new folder under the runs folder, named by folder_name(config), unless
    --out names one; a resumed run stays in its checkpoint's folder."""
    exact = args.resume is not None or "out" in explicit
    folder = args.out if exact else new_folder(args.out, folder_name(config))
    check_writable(folder, "pass --out DIR")
    lock(folder)
    for stale in glob.glob(os.path.join(folder, "*.tmp")):  # left by a killed run; we hold the lock now
        os.unlink(stale)
    for name in FILES:
        path = os.path.join(folder, name)
        if os.path.lexists(path) and not os.path.isfile(path):
            raise UserError(f"{os.path.abspath(path)} is in the way (not a regular file): "
                            "move it, or pass another --out")
    if args.resume is None and os.path.lexists(os.path.join(folder, "model.pt")):
        raise UserError(f"{os.path.abspath(folder)} already holds a run: pass --resume to continue it, "
                        "or another --out")
    return folder


def lock(folder):
    """Hold an advisory lock on folder/.lock until this process ends (the OS drops it then)."""
    if fcntl is None:
        return
    if getattr(lock, "held", None):  # one run per process: an earlier run's folder is free again
        lock.held.close()
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
    lock.held = handle  # kept open for the process's life


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
    if not os.path.isdir(folder):
        try:
            os.makedirs(folder)
        except OSError as e:
            raise UserError(f"cannot make {os.path.abspath(folder)} ({e.strerror or e}); {hint}") from None
    if not os.access(folder, os.W_OK):
        raise UserError(f"cannot write into {os.path.abspath(folder)}; {hint}")


def unused_name(folder, filename, suffix, taken):
    """folder/STEM+suffix, or STEM-2+suffix, ...: a name not in `taken` (which it joins), so that
    d.png and d.gif do not save over each other."""
    check_writable(folder, "pass --save-input DIR with a folder you can write to")
    stem = os.path.splitext(filename)[0]
    for n in range(1, len(taken) + 2):
        path = os.path.join(folder, (stem if n == 1 else f"{stem}-{n}") + suffix)
        if path not in taken:
            taken.add(path)
            return path


def save_epoch(folder, ckpt):
    """model.pt and history.json, written together: a signal waits until both are on disk."""
    data = checkpoint.dumps(ckpt)
    history = json.dumps(ckpt["history"], indent=1).encode() + b"\n"
    with signals_held():
        write(os.path.join(folder, "model.pt"), data)
        write(os.path.join(folder, "history.json"), history)


def resume_command(ckpt_path, data_dir, default_data_dir):
    """The command that continues this run exactly: the rest comes from its checkpoint."""
    command = ["python", "train.py", "--resume", ckpt_path]
    if data_dir != default_data_dir:
        command += ["--data-dir", data_dir]
    return shlex.join(command)
