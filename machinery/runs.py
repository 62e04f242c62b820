"""Run folders: one per experiment, locked while a run writes, keeping the lesson it ran, found again later.

    runs/lr0.01-bs64/            model.pt  training_curves.png  lesson/ (model.py data.py train.py)
    runs/lr0.1-bs32/             (a run with --lr 0.1 --batch-size 32)
    runs/lr0.1-bs32-2/           (the same again: a new folder, never an overwrite)
    runs/h128-relu-lr0.01-bs64/  (after HIDDEN = 128 and ACTIVATION = nn.ReLU in model.py)
"""
import glob
import os
import re
import secrets
import shlex
import shutil

try:
    import fcntl
except ImportError:  # Windows: no advisory locks, so two runs into one folder are not caught there
    fcntl = None

from machinery import checkpoint
from machinery import cli
from machinery import paths
from machinery.cli import UserError, shown

RUN_FILES = ("model.pt", "training_curves.png")
STANDARD = "784-64-10 sigmoid"  # the project's network: another one is named in the folder
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LESSON = ("model.py", "data.py", "train.py")  # kept with each run, as text: never imported from there
MAX_LESSON = 2**20  # bytes of one lesson file kept


def folder_name(config, arch=STANDARD, optimizer="SGD"):
    """'lr0.01-bs64'; 'h128-relu-' first for another network, 'adam-' for another optimizer, '-seed3' for a
    seed other than 0."""
    def words(a):  # its words, each layer's arguments (in parentheses, nested too) left out
        while re.search(r"\([^()]*\)", a):
            a = re.sub(r"\([^()]*\)", "", a)
        return a.split()
    (sizes, *layers), (standard_sizes, *standard_layers) = (words(a) for a in (arch, STANDARD))
    hidden = "-".join(sizes.replace("+", "-").split("-")[1:-1])
    layers = [re.sub(r"[^a-z0-9._]", "", layer.split("(")[0].lower()).strip("._") for layer in layers]
    parts = [f"h{hidden}"] * (sizes != standard_sizes) + [n for n in layers if n] * (layers != standard_layers)
    parts += [re.sub(r"[^a-z0-9]", "", optimizer.lower())] * (optimizer != "SGD") + [f"lr{config['lr']:g}", f"bs{config['batch_size']}"] + [f"seed{config['seed']}"] * (config["seed"] != 0)
    return "-".join(parts)[-120:].lstrip("-.")


class Run:
    """The folder a training run writes into, held while it runs:

        with Run(args, model, optimizer) as folder:
            torch.save(...)  # folder/model.pt, written by train.py

    The folder is a new one in args.runs_dir named by folder_name, or exactly args.out, or for a resumed
    run the one resumed_settings chose. It is made, and locked so that a second train.py cannot write
    there at once; another run's files are never written over, only the checkpoint the run continues.
    The lesson as it is now (model.py, data.py, train.py) is kept in folder/lesson/ (or, resuming after an
    edit, lesson-from-epoch-N/). Ctrl-C, SIGTERM or SIGHUP inside the block ends saying what is saved
    and the command that goes on; a run that saved nothing leaves nothing behind.
    """

    def __init__(self, args, model, optimizer):
        arch = checkpoint.legacy_description(model)  # short enough for a folder's name
        # the rate the optimizer was given (Adam's own, say), and its name where it is not SGD
        named = dict(vars(args), lr=float(optimizer.param_groups[0]["lr"]))
        self.made = args.out is None or not os.path.lexists(args.out)  # ours to remove if nothing is saved
        self.tmp_made = False  # whether a model.pt.tmp there is ours (torch.save's, cut short) to remove
        self.temporary = args.dry_run  # a folder of its own, removed whatever happens
        self.folder = (new_folder(args.runs_dir, folder_name(named, arch, type(optimizer).__name__))
                       if args.out is None else args.out)
        self.model_path = os.path.join(self.folder, "model.pt")
        self.continues, self.epochs = args.resume, args.epochs
        if not self.folder.isprintable():  # printed as it is, by train.py
            raise UserError(f"--out {shown(self.folder)}: a name with control characters in it; pass another")
        check_writable(self.folder, "pass --out DIR")
        self.lock_made = not os.path.lexists(os.path.join(self.folder, ".lock"))  # else the user's, or a run's
        self.lock = lock(self.folder)
        self.kept, self.started_at = [], saved_epoch(self.folder)  # the lesson it keeps, the epoch it goes on from
        try:
            self.check_files(args.resume)
            self.tmp_made = True  # none was there: one there from now on is train.py's own
            self.keep_lesson()
        except BaseException:
            self.close()
            raise

    def check_files(self, continues):
        """UserError if the run would write over anything but the checkpoint it continues."""
        if os.path.lexists(self.model_path + ".tmp"):  # torch.save would write through a link or FIFO there
            raise UserError(f"{shown(os.path.abspath(self.model_path + '.tmp'))} is in the way (left by a run that "
                            "was killed, or not ours): remove it, or pass another --out")
        for name in RUN_FILES + ("lesson",):
            path = os.path.join(self.folder, name)
            if os.path.lexists(path) and not (os.path.isdir(path) if name == "lesson" else os.path.isfile(path)):
                raise UserError(f"{shown(os.path.abspath(path))} is in the way ({paths.kind(path) or 'a file'}, "
                                "not a regular file): move it, or pass another --out")
        in_place = continues and os.path.isfile(self.model_path) and os.path.samefile(self.model_path, continues)
        if not in_place and any(os.path.lexists(os.path.join(self.folder, name)) for name in RUN_FILES):
            where = shown(os.path.abspath(self.folder))
            raise UserError(f"{where} already holds a run: pass --resume to continue it, or another --out"
                            if continues is None else f"{where} holds another run's files, which resuming "
                            f"{shown(continues)} would replace: pass --out DIR to continue it in a folder of its own")

    def keep_lesson(self):
        """The lesson files as they are now, into lesson/; a resumed run whose lesson changed since keeps
        the new one in lesson-from-epoch-N/, beside the one it started with."""
        now = {}
        for name in LESSON:
            try:
                with open(os.path.join(ROOT, name), "rb") as f:
                    now[name] = f.read(MAX_LESSON)
            except OSError:
                continue
        kept = lesson_kept(self.folder)
        if kept == now:
            return
        folder = os.path.join(self.folder, "lesson" if not kept else f"lesson-from-epoch-{saved_epoch(self.folder) + 1}")
        if os.path.lexists(folder):  # a lesson folder of that epoch, from elsewhere: never written over
            raise UserError(f"{shown(os.path.abspath(folder))} is in the way: move it, or pass another --out")
        os.makedirs(folder)
        for name, text in now.items():
            write(os.path.join(folder, name), text)
            self.kept.append(os.path.join(folder, name))

    def __enter__(self):
        return self.folder

    def __exit__(self, kind, error, traceback):
        cut_short = self.tmp_made and os.path.isfile(self.model_path + ".tmp")  # torch.save failed, or was stopped
        self.close()
        if isinstance(error, KeyboardInterrupt):
            raise cli.Stopped.saying(error, self.where_to_go_on()) from None
        if cut_short and isinstance(error, (OSError, RuntimeError)):
            raise UserError(f"cannot write {shown(os.path.abspath(self.model_path))} ({why_not_written(error, self.folder)})"
                            f"; the previous file, if any, is unchanged: {kept(self.folder, self.continues)}") from None

    def close(self):
        if self.lock:
            self.lock.close()  # the folder is free again
            self.lock = None
        if self.temporary:
            shutil.rmtree(self.folder, ignore_errors=True)
            return
        if self.tmp_made and os.path.isfile(self.model_path + ".tmp"):  # a save cut short (Ctrl-C): model.pt is whole
            os.unlink(self.model_path + ".tmp")
        if saved_epoch(self.folder) == self.started_at:  # no epoch saved: the lesson it kept goes again
            for path in self.kept:
                if os.path.isfile(path):
                    os.unlink(path)
            for path in {os.path.dirname(p) for p in self.kept}:
                if os.path.isdir(path) and not os.listdir(path):
                    os.rmdir(path)
        if not os.path.lexists(self.model_path):  # nothing saved ever: what this run made goes too
            if self.lock_made and os.path.isfile(os.path.join(self.folder, ".lock")):
                os.unlink(os.path.join(self.folder, ".lock"))
            if self.made and os.path.isdir(self.folder) and not os.listdir(self.folder):
                os.rmdir(self.folder)

    def where_to_go_on(self):
        """What is saved, read from the folder itself, and the command that goes on from it."""
        saved, path = saved_epoch(self.folder), shown(self.model_path)
        if saved and saved == self.epochs:
            return f"all {saved} epochs are saved in {path}; only the curves were not drawn"
        if saved:
            return (f"epoch {saved}/{self.epochs} is saved in {path}; continue with: "
                    + shlex.join(["python", "train.py", "--resume", path]))
        return f"no epoch had finished, {kept(self.folder, self.continues)}"


def why_not_written(error, folder):
    """What stopped a write, in a few words: torch.save says 'iostream error' where the disk was full."""
    if getattr(error, "strerror", None):
        return error.strerror
    try:
        stat = os.statvfs(folder)
        if stat.f_bavail * stat.f_frsize < 2**20:
            return "No space left on device"
    except OSError:
        pass
    return shown(str(error).splitlines()[0] if str(error) else type(error).__name__)[:200]


def lesson_kept(folder):
    """{name: bytes} of the lesson files the run in folder kept last (its newest lesson folder), or {}."""
    folders = sorted(glob.glob(os.path.join(glob.escape(folder), "lesson-from-epoch-*")),
                     key=lambda p: int(p.rsplit("-", 1)[1]) if p.rsplit("-", 1)[1].isdigit() else 0)
    for candidate in folders[::-1] + [os.path.join(folder, "lesson")]:
        if os.path.isdir(candidate):
            found = {}
            for name in LESSON:
                path = os.path.join(candidate, name)
                if os.path.isfile(path):
                    with paths.open_regular(path, "a kept lesson file", "move it") as f:  # a FIFO: no wait
                        found[name] = f.read(MAX_LESSON)
            return found
    return {}


def data_py_changed(checkpoint_path):
    """A line when data.py is not the one the run at checkpoint_path last trained with (its kept lesson):
    its TRANSFORM makes the images the network is given, here too. None if the same, or not kept."""
    folder = os.path.dirname(checkpoint_path) or "."
    kept = lesson_kept(folder).get("data.py")
    try:
        with paths.open_regular(os.path.join(ROOT, "data.py"), "data.py", "") as f:
            now = f.read(MAX_LESSON)
    except (OSError, UserError):
        return None
    if kept is None or kept == now:
        return None
    where = max(glob.glob(os.path.join(glob.escape(folder), "lesson*", "data.py")), key=os.path.getmtime)
    return (f"note: data.py is not the one this run trained with (diff data.py {shown(where)}): its TRANSFORM "
            "is what the images become here")


def saved_epoch(folder):
    """The last epoch saved in folder/model.pt, or 0."""
    path = os.path.join(folder, "model.pt")
    if not os.path.isfile(path):
        return 0
    try:
        return checkpoint.load(path)["epoch"]
    except UserError:
        return 0


def kept(folder, continues=None):
    """Where the last finished epoch is, for a message."""
    saved = saved_epoch(folder)
    if saved:
        return f"{shown(os.path.join(folder, 'model.pt'))} keeps epoch {saved}"
    return f"{shown(continues)} is as it was" if continues else "nothing was saved"


def resumed(args, model, optimizer):
    """The checkpoint a --resume run goes on from, as the locked folder holds it, checked against the
    network and optimizer train.py builds now; its optimizer settings are train.py's now (the lr the
    saved one, or a --lr given now). Adds the lines that say what changed to args.resuming."""
    ckpt = checkpoint.load(args.resume)
    changes = checkpoint.resumable(ckpt, args.resume, model, optimizer, lr_given=args.lr != ckpt["config"]["lr"])
    args.resuming += changes
    ckpt.setdefault("rng", checkpoint.torch.Generator().manual_seed(ckpt["config"]["seed"]).get_state())
    return ckpt


def save_curves(folder, history):
    """folder/training_curves.png: loss and accuracy per epoch; returns its path."""
    from machinery import plots  # matplotlib, only for a run that draws

    ckpt = checkpoint.load(os.path.join(folder, "model.pt"))
    return plots.save_training_curves(folder, history, checkpoint.described(ckpt["arch"]), ckpt["config"]["seed"])


def resumed_settings(parser, argv, args, runs_dir):
    """The settings a --resume [CHECKPOINT] run goes on with (default: the newest run in --out or runs_dir):
    the run's own, checked by the parser as flags are, with the flags written now over them. Sets
    .resume to the checkpoint, .out to the folder it goes on in (its own, or the --out given with a
    CHECKPOINT), and .resuming to the lines that say so; refuses what cannot go on."""
    path = args.resume or newest_checkpoint(args.out or runs_dir)
    if not path.isprintable():  # train.py prints the folder it writes into: no escape may reach the terminal
        raise UserError(f"{shown(path)}: a name with control characters in it; rename it to resume that run")
    ckpt = checkpoint.load(path)
    config = ckpt["config"]
    parser.saved_in = shown(path)  # a saved setting that fails its flag's check names the checkpoint
    # the settings train.py saves, each taken as its flag takes text (nothing else the file holds: a saved
    # "dry_run" or "runs_dir" must not become a setting)
    parser.set_defaults(**{key: str(value) for key, value in config.items()
                           if key in checkpoint.CONFIG and parser.get_default(key) is not None})
    resumed = parser.parse_args(argv)
    if resumed.seed != config["seed"]:
        raise UserError(f"--seed {resumed.seed}: a resumed run goes on from its own weights and shuffle "
                        f"(seed {config['seed']}); leave --seed out, or start a new run")
    if resumed.epochs <= ckpt["epoch"]:
        raise UserError(f"{shown(path)} is at epoch {ckpt['epoch']} already; "
                        f"pass --epochs N with N > {ckpt['epoch']} to train further")
    resumed.resuming = [f"resuming {shown(path)} after epoch {ckpt['epoch']}/{resumed.epochs}"]
    resumed.resuming += [f"{key.replace('_', ' ')} {config[key]} -> {getattr(resumed, key)} from epoch "
                         f"{ckpt['epoch'] + 1}" for key in ("lr", "batch_size", "loader", "threads", "device")
                         if key in config and getattr(resumed, key) != config[key]]
    if "data_dir" not in config:
        resumed.resuming.append(checkpoint.data_unknown(path, resumed.data_dir))
    resumed.resume = path
    resumed.out = args.out if args.resume and args.out else os.path.dirname(path) or "."
    return resumed


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
            raise UserError(f"cannot make the run folder {shown(os.path.abspath(folder))} ({e.strerror or e}); "
                            "pass --out DIR") from None
    raise UserError(f"{root} holds too many runs named {name}; pass --out DIR")


def newest_checkpoint(root):
    """The most recently written root/*/model.pt (or root/model.pt), or UserError if none."""
    found = [p for p in glob.glob(os.path.join(root, "*", "model.pt")) + [os.path.join(root, "model.pt")]
             if os.path.isfile(p)]
    if not found:
        raise UserError(f"no run in {shown(os.path.abspath(root))} yet: train one with python train.py, "
                        "or name a checkpoint")
    return max(found, key=os.path.getmtime)


def lock(folder):
    """An open file holding an advisory lock on folder/.lock: close it, or end the process, to let go.
    The file is made if missing and never written to: a .lock of the user's own stays as it was."""
    if fcntl is None:
        return None
    handle = paths.open_regular(os.path.join(folder, ".lock"), "a lock file", "remove it, or pass another --out",
                                flags=os.O_WRONLY | os.O_APPEND | os.O_CREAT)  # a FIFO or a folder: one line
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise UserError(f"another train.py is writing into {shown(os.path.abspath(folder))}: "
                        "wait for it to end, or pass another --out") from None
    return handle  # the lock holds while this stays open


def write(path, data, hint="the previous file, if any, is unchanged"):
    """Write bytes to path atomically: a temporary file beside it, then os.replace.

    A crash, a full disk or Ctrl-C midway leaves the old file whole; a failure is a UserError
    naming the file, the reason and the hint."""
    folder, name = os.path.split(path)
    found = paths.kind(path)  # a FIFO, a folder, a socket, a dangling link: the user's, left as it is
    if found:
        raise UserError(f"cannot write {shown(os.path.abspath(path))} ({found}, not a regular file); {hint}")
    # ours alone to remove; short, so that it fits wherever the name itself fits (a name of 236 characters
    # and the process and suffix was over the 255 bytes a file name may have)
    tmp = os.path.join(folder, f".{secrets.token_hex(4)}.{os.getpid() % 100_000}.tmp")
    try:
        with open(tmp, "xb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        _remove(tmp)
        raise UserError(f"cannot write {shown(os.path.abspath(path))} ({e.strerror or e}); {hint}") from None
    except BaseException:
        _remove(tmp)
        raise


def _remove(tmp):
    if os.path.exists(tmp):
        os.unlink(tmp)


def check_writable(folder, hint):
    """UserError now, before the work, if files cannot be written into folder."""
    where = shown(os.path.abspath(folder))
    if os.path.islink(folder) and not os.path.exists(folder):
        raise UserError(f"{where} is a symbolic link to {shown(os.readlink(folder))}, which does not exist; {hint}")
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise UserError(f"{where} is {paths.kind(folder) or 'a file'}, not a folder; {hint}")
    if not os.path.isdir(folder):
        try:
            os.makedirs(folder)
        except OSError as e:
            raise UserError(f"cannot make {where} ({e.strerror or e}); {hint}") from None
    if not os.access(folder, os.W_OK):
        raise UserError(f"cannot write into {where}; {hint}")


def unused_name(folder, filename, suffix, taken):
    """folder/STEM+suffix, or STEM-2+suffix, ...: a name neither in `taken` (which it joins) nor on
    disk, so that d.png and d.gif do not save over each other, nor over a file that was there."""
    check_writable(folder, "pass --save-input DIR with a folder you can write to")
    stem = os.path.splitext(filename)[0]
    while stem and len(os.fsencode(f"{stem}-99999{suffix}")) > 255:  # a file name has 255 bytes at most
        stem = stem[:-1]
    for n in range(1, len(taken) + 100_000):
        path = os.path.join(folder, (stem if n == 1 else f"{stem}-{n}") + suffix)
        if path not in taken and not os.path.lexists(path):
            taken.add(path)
            return path
    raise UserError(f"{shown(folder)} holds too many files named {shown(stem)}*{suffix}; pass --save-input DIR")
