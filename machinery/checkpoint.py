"""The checkpoint: a dict of tensors and plain values, written as bytes and read back safely.

    {"model": state_dict, "arch": "784-64-10 sigmoid", "optimizer": ..., "generator": ...,
     "config": {...}, "epoch": 3, "history": [{"epoch": 1, ...}, ...]}

load() refuses a file before unpickling it unless it is the archive torch.save writes (no
compressed entries, bounded size) and its pickle asks only for the few globals such a dict needs;
then torch.load(weights_only=True) reads it, and problem() checks every key, type, range and tensor
against the one description below (DESCRIPTION) before anything else uses it.
"""
import io
import os
import pickletools
import re
import warnings
import zipfile

import torch

from torch import nn

import data
import model as model_py
from machinery import paths
from machinery.cli import UserError, shown
from model import Net

MAX_BYTES = 64 * 2**20  # ours are 0.2 MB; this leaves room for a 784-20000-10 network
MAX_PICKLE = 2**20  # the dict without its tensors: a history of about 12,000 epochs (84 bytes each)
ALLOWED_GLOBALS = {"collections OrderedDict", "torch._utils _rebuild_tensor_v2",
                   "torch FloatStorage", "torch LongStorage", "torch ByteStorage"}
ENTRY = re.compile(r"[^/]+/(data\.pkl|byteorder|version|\.format_version|\.storage_alignment|"
                   r"\.data/serialization_id|\.data/version|data/\d+)")
TRAIN_AGAIN = "train a new one with python train.py"
TEMPLATE = re.compile(r"784-([0-9]{1,7})-10 ([^ ]+)")  # what Net(hidden, activation) is described as


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
            return shown(arg.replace(" ", "."))  # its names come from the file
        if op.name in ("STACK_GLOBAL", "INST", "OBJ", "NEWOBJ", "NEWOBJ_EX", "EXT1", "EXT2", "EXT4"):
            return f"an object through {op.name}"
    return None


def opened(path):
    """The checkpoint file at path, opened through the path gate: a regular file of at most MAX_BYTES by its
    descriptor's size (a FIFO, a socket or a dangling link is refused, not waited on), else UserError."""
    return paths.open_regular(path, "a checkpoint", TRAIN_AGAIN, MAX_BYTES,
                              f"larger than any checkpoint train.py writes ({MAX_BYTES // 2**20} MB at most); "
                              + TRAIN_AGAIN)


def check_archive(path, f=None):
    """Raise UserError unless path (or f, the file opened from it) looks like a torch.save of a small dict
    (before unpickling it)."""
    if f is None:
        with opened(path) as f:
            return check_archive(path, f)
    name = shown(path)
    if not zipfile.is_zipfile(f):
        f.seek(0)
        head = f.read(MAX_BYTES)  # no more than the size opened() checked, whatever the file became since
        try:  # a plain pickle (or torch's legacy format) is only worth naming if it asks for code
            found = unsafe_global(head) if head.startswith(b"\x80") else None
        except ValueError:
            found = None
        if found:
            raise UserError(f"{name}: refused, it would call {found}, and loading it could run that code; "
                            "use a checkpoint that train.py wrote")
        if head[:8] == b"\x89PNG\r\n\x1a\n" or head[:3] in (b"\xff\xd8\xff", b"GIF"):
            raise UserError(f"{name} is an image, not a checkpoint: pass images after --image")
        raise UserError(f"{name}: not a checkpoint (not the archive torch.save writes: empty, "
                        f"truncated or another kind of file); {TRAIN_AGAIN}")
    with zipfile.ZipFile(f) as archive:
        entries = archive.infolist()
        bad = [e.filename for e in entries if not ENTRY.fullmatch(e.filename) or e.compress_type != 0]
        pickles = [e for e in entries if e.filename.endswith("/data.pkl")]
        if bad or len(pickles) != 1 or len(entries) > 100 or sum(e.file_size for e in entries) > MAX_BYTES:
            raise UserError(f"{name}: refused, its archive holds entries that torch.save does not write "
                            f"({shown((bad or ['data.pkl'])[0])}); {TRAIN_AGAIN}")
        if pickles[0].file_size > MAX_PICKLE:  # reading a pickle this size would take minutes
            raise UserError(f"{name}: refused, its history is far longer than train.py writes "
                            f"({pickles[0].file_size / 2**20:.0f} MB); {TRAIN_AGAIN}")
        try:
            if archive.testzip() is not None:  # a checksum that does not match: damaged since it was written
                raise zipfile.BadZipFile
            found = unsafe_global(archive.read(pickles[0]))
        except (ValueError, zipfile.BadZipFile, OSError):
            raise UserError(f"{name}: not a readable checkpoint, damaged; {TRAIN_AGAIN}") from None
    if found:
        raise UserError(f"{name}: refused, it would call {found}, and loading it could run that code; "
                        "use a checkpoint that train.py wrote")


def whole(low, high):
    return lambda v: None if type(v) is int and low <= v <= high else f"not a whole number from {low} to {high:,}"


def number(low, high):
    """A number from low to high: finite, so a float holds it, and small enough to plot."""
    def check(v):
        try:
            fits = type(v) in (int, float) and low <= v <= high
        except OverflowError:
            fits = False
        return None if fits else f"not a number from {low:g} to {high:g}"
    return check


def text(limit):
    """Printable text: a control character in it could reach the terminal as an escape sequence."""
    return lambda v: (None if type(v) is str and 0 < len(v) <= limit and v.isprintable()
                      else f"not a printable text of 1 to {limit} characters")


def one_of(*names):
    return lambda v: None if type(v) is str and v in names else f"not one of {', '.join(names)}"


def device_text(v):
    return None if type(v) is str and re.fullmatch(r"auto|cpu|mps|cuda(:[0-9]{1,3})?", v) else "not a device name"


def entries(of, required):
    """A dict holding the keys of `of` (all of `required`, no others), each as its check says."""
    def check(v):
        if not isinstance(v, dict):
            return "not a dict"
        for key in v:
            if key not in of:
                return f"{shown(key) if isinstance(key, str) else type(key).__name__!r}: a key train.py does not write"
        for key, is_ok in of.items():
            if key in v:
                problem = is_ok(v[key])
                if problem:
                    return f"{key} {problem}"
            elif key in required:
                return f"no {key}"
        return None
    return check


def tensor_problem(t, dtypes):
    """Why t is not a plain tensor of its own: one of dtypes, finite, laid out densely over a storage that
    holds its elements and no more (a stride-0 view of one float can claim 150 million), or None."""
    if type(t) is not torch.Tensor or t.dtype not in dtypes:
        return f"not a tensor of {', '.join(str(d).replace('torch.', '') for d in dtypes)}"
    if not t.is_contiguous() or t.storage_offset() != 0 or t.untyped_storage().nbytes() != t.numel() * t.element_size():
        return "not a tensor laid out as torch.save writes one"
    if t.is_floating_point() and not torch.isfinite(t).all():
        return "holds NaN or infinite values"
    return None


def weights(v):
    if not isinstance(v, dict) or not v:
        return "not a dict of tensors"
    for key, t in v.items():
        if type(key) is not str or not key.isprintable() or len(key) > 200:
            return "has a name train.py does not write"
        problem = tensor_problem(t, (torch.float32, torch.float64, torch.float16, torch.bfloat16))
        if problem:
            return f"{key} {problem}"
    return None


def generator_state(v):
    problem = tensor_problem(v, (torch.uint8,))
    if problem:
        return problem
    try:
        torch.Generator().set_state(v)  # the one exact check of an mt19937 state: all zeros is none
    except (RuntimeError, TypeError):
        return "not a state a shuffle generator can take"
    return None


def optimizer_state(v):
    """What torch.optim.SGD(params, lr) saves: no state, one group of plain SGD (no momentum...)."""
    reference = torch.optim.SGD([torch.zeros(1)], lr=1.0).state_dict()
    if not isinstance(v, dict) or set(v) != set(reference) or v["state"] != {}:
        return "not the plain SGD train.py builds"
    groups = v["param_groups"]
    if not (type(groups) is list and len(groups) == 1 and isinstance(groups[0], dict)):
        return "not the plain SGD train.py builds"
    group, params = groups[0], groups[0].get("params")
    if not (type(params) is list and params == list(range(len(params))) and 0 < len(params) <= 1000):
        return "not the plain SGD train.py builds"
    if {**group, "lr": 1.0, "params": [0]} != reference["param_groups"][0] or number(1e-45, 3.4e38)(group["lr"]):
        return "not the plain SGD train.py builds"
    return None


CONFIG = {"epochs": whole(1, 10_000), "batch_size": whole(1, 2**31 - 1), "lr": number(1e-45, 3.4e38),
          "seed": whole(0, 2**63 - 1), "loader": one_of(*data.LOADERS), "threads": whole(1, 1024),
          "device": device_text, "data_dir": text(4096)}
HISTORY_ENTRY = {"epoch": CONFIG["epochs"], "train_loss": number(0, 1e30), "train_acc": number(0, 100),
                 "test_loss": number(0, 1e30), "test_acc": number(0, 100), "seconds": number(0, 1e9),
                 "lr": CONFIG["lr"], "batch_size": CONFIG["batch_size"]}
# Older train.py versions wrote no arch (read off the weights then), no lr or batch size per epoch, no
# threads, device or data folder: those may be missing. A run that was never trained further has no use
# for its optimizer and generator, so evaluating needs neither; resuming needs both.
REQUIRED = ("model", "config", "epoch", "history")
REQUIRED_CONFIG = ("epochs", "batch_size", "lr", "seed", "loader")
REQUIRED_ENTRY = ("epoch", "train_loss", "train_acc", "test_loss", "test_acc", "seconds")


def history(v):
    if type(v) is not list:
        return "not a list"
    check = entries(HISTORY_ENTRY, REQUIRED_ENTRY)
    for i, h in enumerate(v, 1):
        problem = check(h) or (None if h["epoch"] == i else f"epoch {h['epoch']}, not {i}")
        if problem:
            return f"entry {i}: {problem}"
    return None


# Everything a checkpoint may hold, and nothing else: each key with the check its value must pass.
DESCRIPTION = {"model": weights, "arch": text(2000), "optimizer": optimizer_state, "generator": generator_state,
               "config": entries(CONFIG, REQUIRED_CONFIG), "epoch": whole(1, 10_000), "history": history}


def problem(ckpt):
    """What is wrong with a loaded checkpoint, against DESCRIPTION, or None."""
    found = entries(DESCRIPTION, REQUIRED)(ckpt)
    if not found and ckpt["epoch"] != len(ckpt["history"]):
        found = f"epoch {ckpt['epoch']} with {len(ckpt['history'])} history entries"
    return found


def data_unknown(path, data_dir):
    """The line for a checkpoint of an older train.py, which did not save where its data was."""
    return (f"{shown(path)} does not say where its data was (an older train.py): reading {shown(data_dir)}; "
            "pass --data-dir DIR if that is not it")


def load(path, map_location="cpu"):
    """The checkpoint dict at path, checked (see the module's docstring); UserError if unusable.
    One from an older train.py comes back as today's: its network read off its weights, and each
    epoch's lr and batch size taken from its settings."""
    name = shown(path)
    if os.path.isdir(path):
        hint = f": pass {os.path.join(name, 'model.pt')}" if os.path.isfile(os.path.join(path, "model.pt")) else ""
        raise UserError(f"{name} is a folder, not a checkpoint file{hint}")
    paths.check_target(path, "a checkpoint", TRAIN_AGAIN)  # a FIFO, a socket, a device, a dangling link
    if not os.path.exists(path):
        raise UserError(f"{name}: no such checkpoint file; {TRAIN_AGAIN}")
    with opened(path) as f:  # checked and read through one descriptor: nothing swapped in between
        check_archive(path, f)
        f.seek(0)
        contents = io.BytesIO(f.read(MAX_BYTES))
    try:
        with warnings.catch_warnings():  # torch warns about odd pickles before refusing them
            warnings.simplefilter("ignore")
            ckpt = torch.load(contents, map_location=map_location, weights_only=True)
    except Exception as e:
        raise UserError(f"{name}: not a readable checkpoint, damaged or truncated "
                        f"({type(e).__name__}); {TRAIN_AGAIN}") from None
    found = problem(ckpt)
    if found:
        raise UserError(f"{name}: not a checkpoint of this train.py ({found}); {TRAIN_AGAIN}")
    if "arch" not in ckpt:  # the first train.py: fc1, sigmoid, fc2, with no record of it
        shapes = {key: tuple(t.shape) for key, t in ckpt["model"].items()}
        hidden = shapes.get("fc1.bias", (0,))[0]
        first = {"fc1.weight": (hidden, 784), "fc1.bias": (hidden,), "fc2.weight": (10, hidden), "fc2.bias": (10,)}
        if shapes != first:
            raise UserError(f"{name}: from an older train.py, and its weights are not a 784-H-10 network's; "
                            f"{TRAIN_AGAIN}")
        ckpt["arch"] = f"784-{hidden}-10 sigmoid"
    for h in ckpt["history"]:
        h.setdefault("lr", ckpt["config"]["lr"])
        h.setdefault("batch_size", ckpt["config"]["batch_size"])
    return ckpt


def architecture(model):
    """The network as its modules say: '784-64-10 sigmoid' is model.py's. First the sizes its Linear layers
    chain, then each other layer in the order it was made, with its arguments if it has any
    ('leakyrelu(negative_slope=0.2)'); a class not from torch.nn is named with its module ('model.Tanh').
    Enough to write model.py again by hand, and what a network is rebuilt from (network())."""
    chains, others = [], []
    for module in model.modules():
        cls = type(module)
        if cls is nn.Linear and module.bias is not None:
            if chains and chains[-1][-1] == module.in_features:
                chains[-1].append(module.out_features)
            else:
                chains.append([module.in_features, module.out_features])
        elif module is not model and (not list(module.children()) or not cls.__module__.startswith("torch.nn.")):
            torch_nn = cls.__module__.startswith("torch.nn.")
            name = cls.__name__.lower() if torch_nn else f"{cls.__module__}.{cls.__qualname__}"
            others.append(name + (f"({module.extra_repr()})" if module.extra_repr() else ""))
    return " ".join(["+".join("-".join(map(str, chain)) for chain in chains)] + others).strip()


def network(arch, weights, path):
    """A network described exactly as `arch`: model.py's Net as it is now, or Net(hidden, activation) as
    an edit of HIDDEN or ACTIVATION makes it. Anything else (a layer added or gone, an activation with
    other arguments, a class model.py no longer has) is refused, saying which network the run holds."""
    candidates = [Net]
    template = TEMPLATE.fullmatch(arch)
    if template:  # its weights hold its size: no huge network is built from a line of text
        hidden, activation = int(template[1]), template[2].split("(")[0]
        fits = 784 * hidden + hidden + 10 * hidden + 10 == sum(t.numel() for t in weights.values())
        known = {cls.__name__.lower(): cls for cls in vars(nn).values() if isinstance(cls, type)}
        known.update({f"model.{name}": cls for name, cls in vars(model_py).items() if isinstance(cls, type)})
        if fits and activation in known:
            candidates.append(lambda: Net(hidden, known[activation]))
    for build in candidates:
        try:
            net = build()
        except Exception:  # a class that is no activation, or needs arguments
            continue
        if architecture(net) == arch:
            return net
    raise UserError(f"{shown(path)} holds a {shown(arch)} network, which model.py does not build now: make "
                    "model.py build it again to use that run (the description lists its layers: sizes, then the "
                    "others in order); if you committed that model.py, git log -p model.py has it")


def model_from(ckpt, path, device="cpu"):
    """The network the checkpoint holds, with its weights; it may differ from what model.py builds now."""
    model = network(ckpt["arch"], ckpt["model"], path)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError:
        raise UserError(f"{shown(path)}: its weights do not fit its {shown(ckpt['arch'])} network; "
                        f"{TRAIN_AGAIN}") from None
    return model.to(device)


def describe(ckpt):
    """'784-64-10 sigmoid', and what model.py builds now when that differs."""
    built = architecture(Net())
    return shown(ckpt["arch"]) if ckpt["arch"] == built else f"{shown(ckpt['arch'])} (model.py now builds {built})"


def check_resumable(ckpt, path):
    """UserError unless training can go on from this checkpoint with model.py as it is now."""
    built = architecture(Net())
    if ckpt["arch"] != built:
        raise UserError(f"{shown(path)} holds a {shown(ckpt['arch'])} network, but model.py now builds {built}: a "
                        "run goes on with the network it started with; undo the edit to model.py (git diff "
                        "model.py shows it) to resume, or leave out --resume to start a new run")
    if "optimizer" not in ckpt or "generator" not in ckpt:
        raise UserError(f"{shown(path)}: has no optimizer or generator state to resume from (the plain SGD "
                        "train.py builds, and its shuffle); evaluate it, or train a new run")


def restore(path, model, optimizer, generator):
    """For --resume: the weights, the optimizer's state and the shuffle generator's, as the checkpoint at path
    left them; returns its history. With no path (a new run) nothing changes, and the history is []. The
    optimizer keeps the settings it was built with: a --lr written now wins over the saved one."""
    if path is None:
        return []
    ckpt = load(path)
    check_resumable(ckpt, path)
    model.load_state_dict(ckpt["model"])
    settings = [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]
    optimizer.load_state_dict(ckpt["optimizer"])
    for group, own in zip(optimizer.param_groups, settings):
        group.update(own)
    generator.set_state(ckpt["generator"])
    return ckpt["history"]
