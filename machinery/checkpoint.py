"""A checkpoint, read back safely: what train.py's torch.save writes, and nothing a hostile file could add.

    ckpt = checkpoint.load("runs/lr0.01-bs64/model.pt")  # the dict train.py saved, checked
    model = checkpoint.model_from(ckpt, path)            # its network, rebuilt by model.py, with its weights

load() refuses a file before unpickling it unless it is the archive torch.save writes (no compressed
entries, bounded size) and its pickle asks only for the globals that tensors, state dicts and plain
values need (ALLOWED_GLOBALS); then torch.load(weights_only=True) reads it, and problem() walks every
value against one description of what torch writes: the state dicts of any torch module, optimizer or
scheduler (tensors of every dtype, int64 counters, float steps, buffers), plain values in plain
containers, within bounds on bytes, values, depth and tensor sizes. The keys train.py writes are
checked as it writes them; a key a learner adds holds any such plain value or tensor.
"""
import copy
import glob
import io
import os
import pickletools
import re
import warnings
import zipfile
from collections import OrderedDict

import torch
from PIL import Image
from torch import nn

import data
import model as model_py
from machinery import paths
from machinery.cli import UserError, shown
from model import Net

MAX_BYTES = 64 * 2**20  # ours are 0.2 MB; room for a 784-20000-10 network, or a CNN with Adam's state
MAX_PICKLE = 2**20  # the dict without its tensors: a history of about 12,000 epochs (84 bytes each)
MAX_VALUES = 200_000  # values in the dict, every container's entries counted
MAX_DEPTH = 32  # containers within containers
MAX_TEXT = 100_000  # characters in one string (a network's description, a note)
MAX_KEY = 1000  # characters in the name of a key
DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.complex64, torch.complex128,
          torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8, torch.bool, torch.uint16, torch.uint32,
          torch.uint64, torch.float8_e4m3fn, torch.float8_e5m2)
STORAGES = ("Float", "Double", "Half", "BFloat16", "ComplexFloat", "ComplexDouble", "Long", "Int", "Short",
            "Char", "Byte", "Bool")
ALLOWED_GLOBALS = ({"collections OrderedDict", "torch._utils _rebuild_tensor_v2", "torch._utils _rebuild_tensor_v3",
                    "torch.storage UntypedStorage", "torch._utils _rebuild_parameter", "torch device", "torch Size",
                    "builtins set", "builtins frozenset", "__builtin__ set", "__builtin__ frozenset", "_codecs encode"}
                   | {f"torch {name}Storage" for name in STORAGES} | {f"torch {str(d)[6:]}" for d in DTYPES})
ENTRY = re.compile(r"[^/]+/(data\.pkl|byteorder|version|\.format_version|\.storage_alignment|"
                   r"\.data/serialization_id|\.data/version|data/\d+)")
TRAIN_AGAIN = "train a new one with python train.py"
TEMPLATE = re.compile(r"784-([0-9]{1,7})-10 ([^ ]+)")  # how an older train.py described Net(hidden, activation)


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
        if bad or len(pickles) != 1 or len(entries) > 1000 or sum(e.file_size for e in entries) > MAX_BYTES:
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


class Walk:
    """What problem() has seen so far: values counted, tensor bytes added up, each object once."""

    def __init__(self):
        self.values, self.bytes, self.seen = 0, 0, set()


def tensor_problem(t, walk, no_nan=False):
    """Why t is not a tensor as torch.save writes one (dense, of a plain dtype, claiming no more elements
    than its storage holds: a stride-0 view of one float can claim 150 million), or None."""
    if type(t) not in (torch.Tensor, nn.Parameter) or t.layout != torch.strided or t.dtype not in DTYPES:
        return "not a plain tensor"
    size = t.numel() * t.element_size()
    if t.dim() > 16 or size > t.untyped_storage().nbytes():
        return "a tensor claiming more elements than its storage holds"
    walk.bytes += size
    if walk.bytes > MAX_BYTES:
        return f"tensors of more than {MAX_BYTES // 2**20} MB in all"
    if no_nan and (t.is_floating_point() or t.is_complex()) and t.isnan().any():
        return "holds NaN values"
    return None


def metadata_problem(v):
    """What torch's state_dict() hangs on itself as _metadata: {module prefix: {"version": int, ...}}."""
    if type(v) is not OrderedDict and type(v) is not dict:
        return "_metadata not a dict"
    for prefix, entry in v.items():
        if type(prefix) is not str or not isinstance(entry, dict) or any(type(k) is not str for k in entry):
            return "_metadata not the module versions torch writes"
        version = entry.get("version")
        if not (version is None or type(version) is int and 0 <= version < 2**31):
            return "_metadata with a version that is not a whole number"
    return None


def plain(v, walk, no_nan=False, depth=0):
    """Why v is not a plain value (None, a bool, number, text, bytes, dtype or tensor) or a list, tuple,
    set or dict of them, or None."""
    walk.values += 1
    if walk.values > MAX_VALUES:
        return f"more than {MAX_VALUES:,} values"
    if depth > MAX_DEPTH:
        return f"containers nested more than {MAX_DEPTH} deep"
    kind = type(v)
    if v is None or kind in (bool, float, complex, torch.dtype, torch.device):
        return None
    if kind is int:
        return None if v.bit_length() <= 256 else "a number of more than 256 bits"
    if kind in (str, bytes):
        return None if len(v) <= MAX_TEXT else f"a text of more than {MAX_TEXT:,} characters"
    if kind in (torch.Tensor, nn.Parameter):
        return tensor_problem(v, walk, no_nan)
    if kind not in (list, tuple, torch.Size, set, frozenset, dict, OrderedDict):
        return f"a {kind.__name__}, which torch.save of plain values does not write"
    if id(v) in walk.seen:  # a value the pickle refers to twice (or to itself) is looked at once
        return None
    walk.seen.add(id(v))
    extra = {k: a for k, a in vars(v).items() if k != "_metadata"} if kind is OrderedDict else {}
    if extra:
        return "a dict with attributes torch does not write"
    if kind is OrderedDict and "_metadata" in vars(v):
        found = metadata_problem(v._metadata)
        if found:
            return found
    items = v.items() if kind in (dict, OrderedDict) else enumerate(v)
    for key, value in items:
        if kind in (dict, OrderedDict) and not (key is None or type(key) in (str, int, float, bool, tuple)):
            return "a dict key that is not text or a number"
        found = (plain(key, walk, False, depth + 1) if type(key) is not int else None) or \
            plain(value, walk, no_nan, depth + 1)
        if found:
            return f"[{shown(repr(key))[:60]}] {found}" if kind in (dict, OrderedDict) else found
    return None


def state_dict(v, walk):
    """A module's state_dict(): names to tensors (weights, buffers, counters; no NaN, though a mask may
    hold -inf), a module's own _extra_state as plain values, and the module versions torch hangs on it as
    _metadata."""
    if not isinstance(v, dict) or not v:
        return "not a dict of tensors"
    for key, t in v.items():
        if type(key) is not str or not key.isprintable() or len(key) > MAX_KEY:
            return "has a name that is not a module's"
        found = (tensor_problem(t, walk, no_nan=True) if torch.is_tensor(t) else
                 plain(t, walk) if key.endswith("_extra_state") else "not a tensor")
        if found:
            return f"{shown(key)} {found}"
    attributes = vars(v) if type(v) is OrderedDict else {}
    if set(attributes) - {"_metadata"}:
        return "a dict with attributes torch does not write"
    return metadata_problem(attributes["_metadata"]) if "_metadata" in attributes else None


def optimizer_state(v, walk):
    """Any torch optimizer's state_dict(): {"state": {param index: {name: tensor or number}},
    "param_groups": [{"params": [indices], settings...}]}, its tensors finite."""
    if not isinstance(v, dict) or set(v) != {"state", "param_groups"}:
        return "not an optimizer's state_dict"
    groups, state = v["param_groups"], v["state"]
    if type(groups) is not list or not 0 < len(groups) <= 1000 or not all(isinstance(g, dict) for g in groups):
        return "param_groups not a list of parameter groups"
    params = [i for g in groups for i in (g.get("params") if type(g.get("params")) is list else [None])]
    if not all(type(i) is int for i in params) or sorted(params) != list(range(len(params))) or len(params) > 100_000:
        return "param_groups whose params are not numbered 0, 1, 2, ..."
    if not isinstance(state, dict) or not all(type(k) is int and 0 <= k < len(params) for k in state):
        return "state not kept by parameter number"
    for g in groups:
        lr = g.get("lr", 0.0)
        lr = lr.item() if torch.is_tensor(lr) and lr.numel() == 1 and lr.is_floating_point() else lr
        if not all(type(k) is str for k in g) or not (type(lr) in (int, float) and 0 <= lr <= 3.4e38):
            return "a parameter group whose lr is not a number from 0 to 3.4e38"
    for i, s in state.items():
        if not isinstance(s, dict) or not all(type(k) is str for k in s):
            return f"state {i} not a dict of named values"
    return plain(groups, walk) or plain(state, walk, no_nan=True)


def generator_state(v, walk):
    found = tensor_problem(v, walk) or (None if v.dtype == torch.uint8 else "not a generator's state")
    if found:
        return found
    try:
        torch.Generator().set_state(v)  # the one exact check of an mt19937 state: all zeros is none
    except (RuntimeError, TypeError):
        return "not a state a random number generator can take"
    return None


def whole(low, high):
    return lambda v, walk: None if type(v) is int and low <= v <= high else f"not a whole number from {low} to {high:,}"


def number(low, high):
    """A number from low to high: finite, so a float holds it, and small enough to plot."""
    def check(v, walk):  # an int of any size compares with a float exactly
        return None if type(v) in (int, float) and low <= v <= high else f"not a number from {low:g} to {high:g}"
    return check


def text(limit, newlines=False):
    """Printable text (newlines only where allowed): a control character could reach the terminal."""
    def check(v, walk):
        ok = type(v) is str and 0 < len(v) <= limit and (v.replace("\n", "") if newlines else v).isprintable()
        return None if ok else f"not a printable text of 1 to {limit:,} characters"
    return check


def one_of(*names):
    return lambda v, walk: None if type(v) is str and v in names else f"not one of {', '.join(names)}"


def device_text(v, walk):
    return None if type(v) is str and re.fullmatch(r"auto|cpu|mps|cuda(:[0-9]{1,3})?", v) else "not a device name"


def entries(of, required):
    """A dict holding all of `required`, each key of `of` as its check says, any other key a plain value."""
    def check(v, walk):
        if not isinstance(v, dict):
            return "not a dict"
        if not all(type(key) is str for key in v):
            return "a key that is not text"
        for key, value in v.items():
            if len(key) > MAX_KEY:
                return f"{shown(key)}: a key of more than {MAX_KEY:,} characters"
            found = of[key](value, walk) if key in of else plain(value, walk)
            if found:
                return f"{shown(key)} {found}"
        missing = [key for key in required if key not in v]
        return f"no {missing[0]}" if missing else None
    return check


CONFIG = {"epochs": whole(1, 10_000), "batch_size": whole(1, 2**31 - 1), "lr": number(1e-45, 3.4e38),
          "seed": whole(0, 2**63 - 1), "loader": one_of(*data.LOADERS), "threads": whole(1, 1024),
          "device": device_text, "data_dir": text(4096)}
HISTORY_ENTRY = {"epoch": CONFIG["epochs"], "train_loss": number(0, 1e30), "train_acc": number(0, 100),
                 "test_loss": number(0, 1e30), "test_acc": number(0, 100), "seconds": number(0, 1e9),
                 "lr": CONFIG["lr"], "batch_size": CONFIG["batch_size"]}
# Older train.py versions wrote no arch (read off the weights then), no lr or batch size per epoch, no
# threads, device, data folder or random state: those may be missing. A run that was never trained further
# has no use for its optimizer and generator, so evaluating needs neither; resuming needs both.
REQUIRED = ("model", "config", "epoch", "history")
REQUIRED_CONFIG = ("epochs", "batch_size", "lr", "seed", "loader")
REQUIRED_ENTRY = ("epoch", "train_loss", "train_acc", "test_loss", "test_acc", "seconds")


def history(v, walk):
    if type(v) is not list:
        return "not a list"
    check = entries(HISTORY_ENTRY, REQUIRED_ENTRY)
    for i, h in enumerate(v, 1):
        found = check(h, walk) or (None if h["epoch"] == i else f"epoch {h['epoch']}, not {i}")
        if found:
            return f"entry {i}: {found}"
    return None


# The keys train.py writes, each with its check; any other key (a learner's own) holds a plain value.
DESCRIPTION = {"model": state_dict, "arch": text(MAX_TEXT, newlines=True), "optimizer": optimizer_state,
               "generator": generator_state, "rng": generator_state, "config": entries(CONFIG, REQUIRED_CONFIG),
               "epoch": whole(1, 10_000), "history": history}


def problem(ckpt):
    """What is wrong with a loaded checkpoint, against DESCRIPTION, or None."""
    found = entries(DESCRIPTION, REQUIRED)(ckpt, Walk())
    if not found and ckpt["epoch"] != len(ckpt["history"]):
        found = f"epoch {ckpt['epoch']} with {len(ckpt['history'])} history entries"
    return found


class Checkpoint(dict):
    """The checked dict. A key it does not hold (a scheduler saved by an edited train.py, asked of a run
    saved before the edit) is one line naming the checkpoint, not a KeyError."""

    def __init__(self, ckpt, path):
        super().__init__(ckpt)
        self.path = path

    def __missing__(self, key):
        raise UserError(f"{shown(self.path)} holds no {shown(repr(key))}: it was saved by a train.py that did not "
                        "save one; go on from a run saved with it, or start a new run")


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
    return Checkpoint(ckpt, path)


def described(arch):
    """A network's description on one line: print(model)'s text, compacted ('Net(fc1: Linear(784, 64),
    activation: Sigmoid(), fc2: Linear(64, 10))'), or an older train.py's ('784-64-10 sigmoid') as it is."""
    line = ""
    for part in (p.strip() for p in arch.split("\n")):  # part by part: a crafted text costs its length, once
        child = re.match(r"\(([^()]*)\): ", part)
        if child:
            part = f"{child[1]}: {part[child.end():]}"
            line += part if line.endswith("(") else ", " + part
        else:
            line += part
    line = re.sub(r"in_features=(\d+), out_features=(\d+), bias=True", r"\1, \2", line)
    return shown(line)


def legacy_description(model):
    """How an older train.py described a network ('784-64-10 sigmoid'): the sizes its Linear layers chain,
    then each other layer in order. Kept to recognise the runs it saved."""
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


def same_network(model, arch):
    """Whether model is the network arch describes: print(model)'s text, or an older train.py's line."""
    return str(model) == arch or legacy_description(model) == arch


def activations():
    """The activations a HIDDEN/ACTIVATION edit can name: torch.nn's own (nothing else from torch.nn, such
    as Module, Identity or Sequential), and the classes model.py defines, by name as each is described."""
    known = {cls.__name__: cls for cls in vars(nn.modules.activation).values()
             if isinstance(cls, type) and issubclass(cls, nn.Module) and cls.__module__ == nn.modules.activation.__name__}
    known.update({name: cls for name, cls in vars(model_py).items() if isinstance(cls, type)
                  and issubclass(cls, nn.Module) and cls.__module__ == model_py.__name__})
    return known


def network(arch, weights, path):
    """A network described exactly as `arch`: model.py's Net as it is now, or Net(hidden, activation) as
    an edit of HIDDEN or ACTIVATION makes it. Anything else (a layer added or gone, an activation with
    other arguments, a class model.py no longer has) is refused, saying which network the run holds."""
    candidates, known = [Net], {}
    legacy = TEMPLATE.fullmatch(arch)
    hidden = re.search(r"\(fc1\): Linear\(in_features=784, out_features=([0-9]{1,7}),", arch)
    activation = re.search(r"\(activation\): (\w+)\(", arch)
    if legacy:
        hidden, activation = int(legacy[1]), legacy[2].split("(")[0]
        known = {name.lower(): cls for name, cls in activations().items()}
        known.update({f"model.{name.lower()}": cls for name, cls in activations().items()})
        known.update({f"model.{name}": cls for name, cls in activations().items()})
    elif hidden and activation:
        hidden, activation, known = int(hidden[1]), activation[1], activations()
    else:
        hidden = None
    # its weights hold its size: no huge network is built from a line of text. print(model) names a class
    # without its module: torch's Tanh is not taken for the run's own class Tanh, kept in its model.py
    if type(hidden) is int and activation in known and 795 * hidden + 10 == sum(t.numel() for t in weights.values()) and not (
            known[activation].__module__.startswith("torch.") and lesson_defines(path, activation)):
        candidates.append(lambda: Net(hidden, known[activation]))
    for build in candidates:
        try:
            net = build()
        except Exception:  # a class that is no activation, or needs arguments
            continue
        if same_network(net, arch):
            return net
    raise UserError(f"{shown(path)} holds a {described(arch)} network, which model.py does not build now: make "
                    f"model.py build it again to use that run{own_lesson(path)}")


def lesson_defines(path, name):
    """Whether the model.py kept with the run at path (read as text, never run) defines a class `name`."""
    for kept in sorted(glob.glob(os.path.join(glob.escape(os.path.dirname(path) or "."), "lesson*", "model.py"))):
        with paths.open_regular(kept, "a kept lesson file", "move it") as f:  # a FIFO: no wait
            if re.search(rf"^class {re.escape(name)}\b".encode(), f.read(2**20), re.M):
                return True
    return False


def own_lesson(path):
    """Where the run's own model.py is kept, for a message: ', as its own model.py did (FOLDER/lesson/model.py)'."""
    kept = os.path.join(os.path.dirname(path) or ".", "lesson", "model.py")
    if os.path.isfile(kept):
        return f", as its own did: diff model.py {shown(kept)}"
    return "; if you committed that model.py, git log -p model.py has it"


def probe_inputs():
    """Two images, all paper and all ink, as data.py's TRANSFORM makes them: what the network is fed."""
    images = [Image.new("L", (28, 28), level) for level in (0, 255)]
    try:
        return torch.stack([data.TRANSFORM(image) for image in images])
    except Exception:  # a transform that takes no PIL image: the images as ToTensor makes them
        return torch.stack([torch.zeros(1, 28, 28), torch.ones(1, 28, 28)])


def model_from(ckpt, path, device="cpu"):
    """The network the checkpoint holds, with its weights; it may differ from what model.py builds now.
    It must answer two images with ten finite numbers each: weights that overflow (finite, each one) are
    refused here, not shown as 'nan%' later."""
    model = network(ckpt["arch"], ckpt["model"], path)
    try:
        model.load_state_dict(ckpt["model"])
    except (RuntimeError, ValueError, KeyError, TypeError, AttributeError):
        raise UserError(f"{shown(path)}: its weights do not fit its {described(ckpt['arch'])} network; "
                        f"{TRAIN_AGAIN}") from None
    model.eval()
    try:
        with torch.no_grad():
            outputs = model(probe_inputs())
    except Exception as e:
        raise UserError(f"{shown(path)}: its {described(ckpt['arch'])} network does not run on an image as "
                        f"data.py makes it ({type(e).__name__}); {TRAIN_AGAIN}") from None
    if not torch.is_tensor(outputs) or outputs.shape != (2, 10):
        raise UserError(f"{shown(path)}: its network does not answer an image with 10 numbers; {TRAIN_AGAIN}")
    if not torch.isfinite(outputs).all():
        raise UserError(f"{shown(path)}: its network's outputs overflow (they are not finite numbers), so its "
                        f"answers would be meaningless; {TRAIN_AGAIN}")
    return model.to(device)


def describe(ckpt):
    """The run's network on one line, and what model.py builds now when that differs."""
    built = Net()
    if same_network(built, ckpt["arch"]):
        return described(ckpt["arch"])
    return f"{described(ckpt['arch'])} (model.py now builds {described(str(built))})"


def _same(a, b):
    try:
        return torch.equal(a, b) if torch.is_tensor(a) and torch.is_tensor(b) else bool(a == b)
    except Exception:
        return False


def resumable(ckpt, path, model, optimizer, lr_given=False):
    """UserError unless training can go on from this checkpoint with the network and optimizer train.py
    builds now. Returns the lines that say what changes: the optimizer's settings as train.py now builds
    them win over the saved ones; so does its lr where a --lr is given now or no scheduler was saved (one
    that was moves the lr on, and goes on from where it was). The checkpoint's optimizer state is updated
    to match, and tried on copies of the network and optimizer (loaded, and one step taken), so that what
    would fail in train.py's own load_state_dict or step fails here, in one line."""
    if not same_network(model, ckpt["arch"]):
        raise UserError(f"{shown(path)} holds a {described(ckpt['arch'])} network, but model.py now builds "
                        f"{described(str(model))}: a run goes on with the network it started with; undo the "
                        f"edit to model.py{own_lesson(path)}, or leave out --resume to start a new run")
    if "optimizer" not in ckpt or "generator" not in ckpt:
        raise UserError(f"{shown(path)}: has no optimizer or generator state to resume from; evaluate it, "
                        "or train a new run")
    built_weights = model.state_dict()
    if set(ckpt["model"]) != set(built_weights) or any(
            torch.is_tensor(t) and (t.shape != built_weights[k].shape or t.dtype != built_weights[k].dtype)
            for k, t in ckpt["model"].items()):
        raise UserError(f"{shown(path)}: its weights do not fit its {described(ckpt['arch'])} network; {TRAIN_AGAIN}")
    saved, built = ckpt["optimizer"]["param_groups"], optimizer.state_dict()["param_groups"]
    if len(saved) != len(built) or any(len(s["params"]) != len(b["params"]) for s, b in zip(saved, built)):
        raise UserError(f"{shown(path)}: its optimizer holds other parameters than train.py's now; "
                        "leave out --resume to start a new run")
    if any(set(s) - {"initial_lr"} != set(b) - {"initial_lr"} for s, b in zip(saved, built)):  # a scheduler's
        settings = shown(", ".join(sorted(str(k) for k in set(saved[0]) - {"params"})))
        raise UserError(f"{shown(path)}: trained with another optimizer (its settings: {settings}) than the one "
                        f"train.py builds now ({type(optimizer).__name__}): undo the edit to train.py to resume, "
                        "or leave out --resume to start a new run")
    # a saved scheduler moves the lr on (and OneCycleLR, CyclicLR the momentum): its values go on as saved
    schedulers = [v for v in ckpt.values() if isinstance(v, dict) and "last_epoch" in v]
    scheduled = ({"lr"} if not lr_given else set()) | (
        {"momentum", "betas"} if any(v.get("cycle_momentum") is True for v in schedulers) else set())
    changes = []
    for s, b in zip(saved, built):
        for key in sorted(set(b) - {"params", "initial_lr"} - (scheduled if schedulers else set())):
            if not _same(s[key], b[key]):
                if key != "lr" or not lr_given:  # a --lr given now is said by resumed_settings already
                    changes.append(f"{key} {shown(s[key])[:100]} -> {shown(b[key])[:100]} from epoch "
                                   f"{ckpt['epoch'] + 1} (train.py's optimizer now)")
                s[key] = b[key]
    try:
        trial_model, trial = copy.deepcopy((model, optimizer))  # one copy: its groups hold the copy's weights
        if hasattr(optimizer, "_params"):  # LBFGS keeps its parameters aside too, which a copy does not carry
            trial._params = [p for group in trial.param_groups for p in group["params"]]
        trial.load_state_dict(copy.deepcopy(ckpt["optimizer"]))  # load_state_dict keeps the tensors it is given
        for p in trial_model.parameters():
            p.grad = torch.zeros_like(p)
        trial.step(lambda: torch.zeros(()))
    except Exception as e:  # anything torch's load_state_dict or step would raise in train.py
        raise UserError(f"{shown(path)}: its optimizer state does not work with train.py's "
                        f"{type(optimizer).__name__} ({type(e).__name__}); {TRAIN_AGAIN}") from None
    return list(dict.fromkeys(changes))
