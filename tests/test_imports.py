"""Importing a module of the project changes nothing outside it: every top-level *.py and every module
of machinery/ (the package itself first) is imported in a new process, and what the process holds (hooks, signal handlers, warning filters, loggers, limits,
threads, random states, environment, working folder, standard streams) is compared after each."""
import glob
import json
import os
import subprocess
import sys

from conftest import ROOT

STATE = r'''
import ast, ctypes, gc, glob, hashlib, importlib, json, logging, os, random, signal, socket, sys, threading, warnings

root, modules = sys.argv[1], sys.argv[2:]
sys.path.insert(0, root)


def third_party(path):
    """What a module imports when it is imported (not inside its functions) from outside the project."""
    names, nodes = set(), list(ast.parse(open(path).read()).body)
    while nodes:
        node = nodes.pop()
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
        elif isinstance(node, (ast.If, ast.Try)):
            nodes += node.body + node.orelse + getattr(node, "finalbody", []) + getattr(node, "handlers", [])
        elif isinstance(node, ast.ExceptHandler):
            nodes += node.body
    return {n for n in names if n.split(".")[0] not in {m.split(".")[0] for m in modules}}


# Imported first, so that what they do to the process on import is not put down to the project.
def source(module):
    path = os.path.join(root, *module.split("."))
    return os.path.join(path, "__init__.py") if os.path.isdir(path) else path + ".py"


for name in sorted(set().union(*(third_party(source(m)) for m in modules))):
    try:
        importlib.import_module(name)
    except ImportError:  # `from package import function`, or a module not on this platform
        pass

import numpy, torch
from PIL import Image


def digest(value):
    return hashlib.sha256(repr(value).encode()).hexdigest()[:16]


def libtiff_handlers():
    """libtiff's warning and error handlers, read by setting them and putting them back."""
    try:
        lib = ctypes.CDLL(Image.core.__file__)
    except OSError:
        return None
    handlers = []
    for name in ("TIFFSetWarningHandler", "TIFFSetErrorHandler"):
        setter = getattr(lib, name, None)
        if setter is None:
            return None
        setter.restype, setter.argtypes = ctypes.c_void_p, [ctypes.c_void_p]
        handlers.append(setter(None))
        setter(handlers[-1])
    return handlers


def logger(log):
    return [logging.getLevelName(log.level), [repr(h) for h in log.handlers], log.disabled, log.propagate,
            [repr(f) for f in log.filters]]


def state():
    umask = os.umask(0o022)
    os.umask(umask)
    return {
        "sys.excepthook": repr(sys.excepthook), "threading.excepthook": repr(threading.excepthook),
        "sys.unraisablehook": repr(sys.unraisablehook), "sys.displayhook": repr(sys.displayhook),
        **{f"signal {s.name}": repr(signal.getsignal(s)) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP,
                                                                  signal.SIGPIPE, signal.SIGALRM)},
        "warnings.filters": [repr(f) for f in warnings.filters],
        "logging root": logger(logging.getLogger()), "logging PIL": logger(logging.getLogger("PIL")),
        "logging.disable": logging.root.manager.disable,
        "PIL.Image.MAX_IMAGE_PIXELS": Image.MAX_IMAGE_PIXELS, "libtiff handlers": libtiff_handlers(),
        "torch threads": torch.get_num_threads(), "torch interop threads": torch.get_num_interop_threads(),
        "torch default dtype": str(torch.get_default_dtype()), "torch grad": torch.is_grad_enabled(),
        "torch deterministic": torch.are_deterministic_algorithms_enabled(),
        "torch matmul precision": torch.get_float32_matmul_precision(),
        "torch RNG": digest(torch.get_rng_state().tolist()), "random RNG": digest(random.getstate()),
        "numpy RNG": digest(numpy.random.get_state()[1].tolist()),
        "os.environ": dict(os.environ), "cwd": os.getcwd(), "umask": umask,
        "streams": [id(sys.stdin), id(sys.stdout), id(sys.stderr)],
        "threads": sorted(t.name for t in threading.enumerate()),
        "socket timeout": socket.getdefaulttimeout(), "recursion limit": sys.getrecursionlimit(),
        "switch interval": sys.getswitchinterval(), "gc": gc.isenabled(),
    }


def difference(before, after):
    """What changed, in short: for the environment the variables, for a list the entries."""
    if isinstance(before, dict):
        return {k: [before.get(k), after.get(k)] for k in sorted(before.keys() | after.keys())
                if before.get(k) != after.get(k)}
    if isinstance(before, list) and set(map(repr, before)) != set(map(repr, after)):
        return {"gone": [x for x in before if x not in after], "new": [x for x in after if x not in before]}
    return f"{before!r} -> {after!r}"


changes = []
for module in modules:
    before, loaded = state(), set(sys.modules)
    importlib.import_module(module)
    after = state()
    also = sorted(set(sys.modules) - loaded & set(modules) - {module})  # the project modules it imported
    name = module + (" (with " + ", ".join(also) + ")" if also else "")
    changes += [f"importing {name}: {key} {difference(before[key], after[key])}"
                for key in before if before[key] != after[key]]
print(json.dumps(changes))
'''


def test_importing_any_module_changes_nothing_outside_it():
    modules = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(ROOT, "*.py")))
    modules += ["machinery"] + sorted(f"machinery.{os.path.basename(p)[:-3]}"
                                      for p in glob.glob(os.path.join(ROOT, "machinery", "*.py"))
                                      if not p.endswith("__init__.py"))
    assert {"machinery.cli", "machinery.checkpoint", "machinery.photo", "train", "draw"} <= set(modules)
    proc = subprocess.run([sys.executable, "-c", STATE, ROOT, *modules], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    changes = json.loads(proc.stdout)
    assert not changes, "\n".join(changes)
