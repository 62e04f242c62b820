"""The checkpoint: a dict of tensors and plain values, written as bytes and read back safely.

    {"model": state_dict, "arch": "784-64-10 sigmoid", "optimizer": ..., "generator": ...,
     "config": {...}, "epoch": 3, "history": [{"epoch": 1, ...}, ...]}

load() refuses a file before unpickling it unless it is the archive torch.save writes (no
compressed entries, bounded size) and its pickle asks only for the few globals such a dict needs;
then torch.load(weights_only=True) reads it and the structure is checked.
"""
import io
import math
import os
import pickletools
import re
import warnings
import zipfile

import torch

from torch import nn

from cli import UserError
from model import ACTIVATION, Net, architecture

MAX_BYTES = 64 * 2**20  # ours are 0.2 MB; this leaves room for a 784-20000-10 network
MAX_PICKLE = 2**20  # the dict without its tensors: a history of about 12,000 epochs (84 bytes each)
ALLOWED_GLOBALS = {"collections OrderedDict", "torch._utils _rebuild_tensor_v2",
                   "torch FloatStorage", "torch LongStorage", "torch ByteStorage"}
ENTRY = re.compile(r"[^/]+/(data\.pkl|byteorder|version|\.format_version|\.storage_alignment|"
                   r"\.data/serialization_id|\.data/version|data/\d+)")
HISTORY_KEYS = ("epoch", "train_loss", "train_acc", "test_loss", "test_acc", "seconds", "lr", "batch_size")
CONFIG_TYPES = {"epochs": int, "batch_size": int, "lr": float, "seed": int, "loader": str}
TRAIN_AGAIN = "train a new one with python train.py"
ARCH = re.compile(r"784-([1-9][0-9]{0,6})-10 ([a-z0-9_]+)")  # what model.architecture writes
MODULES = {cls.__name__.lower(): cls for cls in vars(nn).values()
           if isinstance(cls, type) and issubclass(cls, nn.Module)}  # an arch names its activation so


def dumps(ckpt):
    buffer = io.BytesIO()
    torch.save(ckpt, buffer)
    return buffer.getvalue()


def unsafe_global(pickle_bytes):
    """The first global outside ALLOWED_GLOBALS that this pickle asks for, or None.

    Raises ValueError for a pickle that cannot be decoded, and for opcodes that build objects
    without naming their class where this check can see it (torch.save never writes them)."""
    for op, arg, _ in pickletools.genops(pickle_bytes):
        if op.name == "GLOBAL" and arg not in ALLOWED_GLOBALS:
            return arg.replace(" ", ".")
        if op.name in ("STACK_GLOBAL", "INST", "OBJ", "NEWOBJ", "NEWOBJ_EX", "EXT1", "EXT2", "EXT4"):
            return f"an object through {op.name}"
    return None


def check_archive(path):
    """Raise UserError unless path looks like a torch.save of a small dict (before unpickling it)."""
    size = os.path.getsize(path)
    if size > MAX_BYTES:
        raise UserError(f"{path}: {size / 2**20:.0f} MB, larger than any checkpoint train.py writes "
                        f"({MAX_BYTES // 2**20} MB at most); {TRAIN_AGAIN}")
    if not zipfile.is_zipfile(path):
        with open(path, "rb") as f:
            head = f.read()
        try:  # a plain pickle (or torch's legacy format) is only worth naming if it asks for code
            found = unsafe_global(head) if head.startswith(b"\x80") else None
        except ValueError:
            found = None
        if found:
            raise UserError(f"{path}: refused, it would call {found}, and loading it could run that code; "
                            "use a checkpoint that train.py wrote")
        if head[:8] == b"\x89PNG\r\n\x1a\n" or head[:3] in (b"\xff\xd8\xff", b"GIF"):
            raise UserError(f"{path} is an image, not a checkpoint: pass images after --image")
        raise UserError(f"{path}: not a checkpoint (not the archive torch.save writes: empty, "
                        f"truncated or another kind of file); {TRAIN_AGAIN}")
    with zipfile.ZipFile(path) as archive:
        entries = archive.infolist()
        bad = [e.filename for e in entries if not ENTRY.fullmatch(e.filename) or e.compress_type != 0]
        pickles = [e for e in entries if e.filename.endswith("/data.pkl")]
        if bad or len(pickles) != 1 or len(entries) > 100 or sum(e.file_size for e in entries) > MAX_BYTES:
            raise UserError(f"{path}: refused, its archive holds entries that torch.save does not write "
                            f"({(bad or ['data.pkl'])[0]}); {TRAIN_AGAIN}")
        if pickles[0].file_size > MAX_PICKLE:  # reading a pickle this size would take minutes
            raise UserError(f"{path}: refused, its history is far longer than train.py writes "
                            f"({pickles[0].file_size / 2**20:.0f} MB); {TRAIN_AGAIN}")
        try:
            if archive.testzip() is not None:  # a checksum that does not match: damaged since it was written
                raise zipfile.BadZipFile
            found = unsafe_global(archive.read(pickles[0]))
        except (ValueError, zipfile.BadZipFile, OSError):
            raise UserError(f"{path}: not a readable checkpoint, damaged; {TRAIN_AGAIN}") from None
    if found:
        raise UserError(f"{path}: refused, it would call {found}, and loading it could run that code; "
                        "use a checkpoint that train.py wrote")


def load(path, map_location="cpu"):
    """The checkpoint dict at path, checked (see the module's docstring); UserError if unusable."""
    if os.path.isdir(path):
        hint = f": pass {os.path.join(path, 'model.pt')}" if os.path.isfile(os.path.join(path, "model.pt")) else ""
        raise UserError(f"{path} is a folder, not a checkpoint file{hint}")
    if not os.path.exists(path):
        raise UserError(f"{path}: no such checkpoint file; {TRAIN_AGAIN}")
    if not os.path.isfile(path):
        raise UserError(f"{path} is not a regular file, so not a checkpoint; {TRAIN_AGAIN}")
    check_archive(path)
    try:
        with warnings.catch_warnings():  # torch warns about odd pickles before refusing them
            warnings.simplefilter("ignore")
            ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        raise UserError(f"{path}: not a readable checkpoint, damaged or truncated "
                        f"({type(e).__name__}); {TRAIN_AGAIN}") from None
    problem = structure_problem(ckpt)
    if problem:
        raise UserError(f"{path}: not a checkpoint of this train.py ({problem}); {TRAIN_AGAIN}")
    return ckpt


def structure_problem(ckpt):
    """What is wrong with a loaded checkpoint's structure, or None."""
    if not isinstance(ckpt, dict):
        return "not a dict"
    for key, kind in (("model", dict), ("arch", str), ("config", dict), ("epoch", int), ("history", list)):
        if not isinstance(ckpt.get(key), kind) or isinstance(ckpt.get(key), bool):
            return f"no {key!r} of type {kind.__name__}"
    if not all(isinstance(v, torch.Tensor) for v in ckpt["model"].values()):
        return "'model' holds more than tensors"
    for key, kind in CONFIG_TYPES.items():
        if not isinstance(ckpt["config"].get(key), kind) or isinstance(ckpt["config"].get(key), bool):
            return f"config has no {key!r} of type {kind.__name__}"
    epoch, history = ckpt["epoch"], ckpt["history"]
    if epoch < 1 or len(history) != epoch:
        return f"epoch {epoch} with {len(history)} history entries"
    for i, h in enumerate(history, 1):
        if not isinstance(h, dict) or not all(finite(h.get(k)) for k in HISTORY_KEYS) or h["epoch"] != i:
            return f"history entry {i} is incomplete"
    if not ARCH.fullmatch(ckpt["arch"]) or ckpt["config"]["loader"] not in ("fast", "classic"):
        return f"an arch or loader train.py does not write: {ascii(ckpt['arch'])}, {ascii(ckpt['config']['loader'])}"
    return None


def finite(value):
    """A number a float can hold (bool is no number here; 10**400 is none either)."""
    try:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    except OverflowError:
        return False


def network(arch, path):
    """A Net built as `arch` says ('784-128-10 relu'), whatever model.py's HIDDEN and ACTIVATION are
    now; UserError if model.py cannot build it (a layer added or removed, say)."""
    match = ARCH.fullmatch(arch)
    known = MODULES | {ACTIVATION.__name__.lower(): ACTIVATION}  # model.py's own, if it defines one
    activation = known.get(match[2]) if match else None
    try:
        net = Net(int(match[1]), activation)
        net(torch.zeros(1, 784))  # an activation that needs arguments, or is no activation, fails here
    except Exception:
        net = None
    if net is None or architecture(net) != arch:
        raise UserError(not_buildable(path, arch))
    return net


def not_buildable(path, arch, reason=""):
    return (f"{path} holds a {arch} network, which model.py no longer builds{reason}: to use that run, bring "
            "back the model.py it was trained with (git log model.py lists its versions; git checkout "
            "COMMIT -- model.py)")


def model_from(ckpt, path, device="cpu"):
    """The network the checkpoint holds, with its weights; it may differ from what model.py builds now."""
    hidden = ckpt["model"].get("fc1.weight")
    if hidden is None or hidden.dim() != 2 or f"-{hidden.shape[0]}-" not in ckpt["arch"]:
        raise UserError(f"{path}: its weights do not fit its {ckpt['arch']} network; {TRAIN_AGAIN}")
    model = network(ckpt["arch"], path)  # the size was checked first: no huge network from a bad arch
    try:
        model.load_state_dict(ckpt["model"])
    except (RuntimeError, TypeError, AttributeError) as e:
        reason = str(e).strip().splitlines()[-1].strip() if str(e).strip() else type(e).__name__
        raise UserError(not_buildable(path, ckpt["arch"], f" ({reason})")) from None
    if not all(torch.isfinite(p).all() for p in model.parameters()):
        raise UserError(f"{path}: its weights hold NaN or infinite values, so every answer would be "
                        "meaningless; train again with a lower --lr")
    return model.to(device)


def describe(ckpt):
    """'784-64-10 sigmoid', and what model.py builds now when that differs."""
    built = architecture(Net())
    return ckpt["arch"] if ckpt["arch"] == built else f"{ckpt['arch']} (model.py now builds {built})"


def check_resumable(ckpt, path):
    """UserError unless training can go on from this checkpoint with model.py as it is now."""
    built = architecture(Net())
    if ckpt["arch"] != built:
        raise UserError(f"{path} holds a {ckpt['arch']} network, but model.py now builds {built}: a run "
                        "goes on with the network it started with; undo the edit to model.py (git diff "
                        "model.py shows it) to resume, or leave out --resume to start a new run")
    model_from(ckpt, path)
    optimizer, generator = ckpt.get("optimizer"), ckpt.get("generator")
    if not (plain_sgd(optimizer) and isinstance(generator, torch.Tensor) and generator.dtype == torch.uint8
            and generator.shape == torch.Generator().get_state().shape):
        raise UserError(f"{path}: has no usable optimizer or generator state to resume from "
                        "(the plain SGD train.py builds, and its shuffle); evaluate it, or train a new run")


def plain_sgd(state):
    """Whether `state` is what torch.optim.SGD(Net().parameters(), lr) saves: no momentum, no extras."""
    reference = torch.optim.SGD(Net().parameters(), lr=1.0).state_dict()
    if not isinstance(state, dict) or set(state) != set(reference) or state["state"] != {}:
        return False
    groups = state["param_groups"]
    if not (isinstance(groups, list) and len(groups) == 1 and isinstance(groups[0], dict)):
        return False
    lr = groups[0].get("lr")
    return {**groups[0], "lr": 1.0} == reference["param_groups"][0] and isinstance(lr, float) and 0 < lr < 3.4e38
