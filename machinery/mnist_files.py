"""The four MNIST files on disk: where they belong, the download when one is missing, the
checks that make reading them safe (the kind of file, the IDX header, the size, the count), and
torchvision's reader of them, made to read those files and nothing else.

Each problem is a UserError naming the file, with its absolute path, and what to do.
"""
import math
import os
import stat
import struct

from torchvision import datasets

from machinery import paths
from machinery.cli import UserError

SPLITS = {"train": 60_000, "t10k": 10_000}  # the real files' counts
IDX_FILES = {f"{split}-{kind}": (magic, shape, split)  # name -> (IDX magic number, one item's shape, split)
         for split in SPLITS for kind, magic, shape in (("images-idx3-ubyte", 2051, (28, 28)),
                                                        ("labels-idx1-ubyte", 2049, ()))}
FIX = "delete it to download it again, or replace it with the original file"


def raw_folder(data_dir):
    return os.path.join(os.path.abspath(data_dir), "MNIST", "raw")


def kind_problem(path):
    """Why path cannot be read as a data file (a folder, a FIFO, a dangling link...), or None."""
    if os.path.islink(path) and not os.path.exists(path):
        return f"{path} is a symbolic link to {os.readlink(path)}, which does not exist"
    if os.path.isdir(path):
        return f"{path} is a folder, not an MNIST file"
    if os.path.exists(path) and not stat.S_ISREG(os.stat(path).st_mode):
        return f"{path} is not a regular file (a device, FIFO or socket), so not an MNIST file"
    return None


class MNIST(datasets.MNIST):
    """torchvision's datasets.MNIST, always from the raw files that ensure() checked. Where an
    MNIST/processed/ folder holds training.pt and test.pt (what torchvision before 0.9 made of
    the raw files), torchvision reads those instead, unchecked, and does not download: a damaged
    or edited one gave a traceback, or a network trained on wrong data without a word."""

    def _check_legacy_exist(self):
        return False


def ensure(data_dir, train):
    """Raise UserError unless this split's two files are in place and sound; download if missing."""
    raw, split = raw_folder(data_dir), "train" if train else "t10k"
    if os.path.exists(data_dir) and not os.path.isdir(data_dir):
        raise UserError(f"--data-dir {os.path.abspath(data_dir)} is {paths.kind(data_dir) or 'a file'}, not a folder: "
                        "pass the folder that holds MNIST/raw/")
    for name in IDX_FILES:
        problem = kind_problem(os.path.join(raw, name))
        if problem:
            raise UserError(f"{problem}: {FIX}")
    missing = [name for name in IDX_FILES if not os.path.exists(os.path.join(raw, name))]
    for folder in (os.path.abspath(data_dir), os.path.join(os.path.abspath(data_dir), "raw")):
        if missing and all(os.path.isfile(os.path.join(folder, name)) for name in IDX_FILES):
            raise UserError(f"the MNIST files are in {folder}/, but they belong in <data dir>/MNIST/raw/: "
                            f"pass the folder above MNIST/ as --data-dir, or move them into {raw}/")
    if missing:
        fetch(data_dir, raw, missing)
    counts = [check_idx(os.path.join(raw, f"{split}-{kind}")) for kind in ("images-idx3-ubyte", "labels-idx1-ubyte")]
    if counts[0] != counts[1]:
        raise UserError(f"{raw}: {split} has {counts[0]:,} images but {counts[1]:,} labels: "
                        "the files come from different sets; replace them with the original files")


def fetch(data_dir, raw, missing):
    """torchvision's download of the four files into raw/, or a UserError saying how to do without."""
    # The one step that can take a while: say so before torchvision's percentage appears.
    print(f"downloading MNIST into {raw}/ (four files, about 12 MB)", flush=True)
    made, folder = [], raw  # the folders the download will create, innermost first
    while folder and not os.path.isdir(folder):
        made.append(folder)
        folder = os.path.dirname(folder)
    try:
        MNIST(data_dir, train=True, download=True)
    except (RuntimeError, OSError) as e:
        for folder in made:  # a mistyped --data-dir leaves no empty folders behind
            if os.path.isdir(folder) and not os.listdir(folder):
                os.rmdir(folder)
        reason = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        which = (f"{missing[0]} is missing from {raw}/" if len(missing) == 1 else f"MNIST is not in {raw}/")
        raise UserError(f"{which} and the download failed ({reason}). Put the four files "
                        f"{', '.join(IDX_FILES)} (unzipped) into {raw}/, or pass --data-dir to a folder "
                        "that has MNIST/raw/ in it") from None


def check_idx(path):
    """The item count of a whole, sound IDX file of uint8 items as IDX_FILES describes it."""
    magic, item_shape, split = IDX_FILES[os.path.basename(path)]
    header_len = 4 + 4 * (1 + len(item_shape))
    largest = header_len + max(SPLITS.values()) * math.prod(item_shape)  # the real train file's size
    with paths.open_regular(path, "an MNIST file", FIX, largest,
                            f"larger than any MNIST file ({largest:,} bytes at most): {FIX}") as f:
        size = os.fstat(f.fileno()).st_size
        header = f.read(header_len)
        if len(header) < header_len or struct.unpack(">I", header[:4])[0] != magic:
            raise UserError(f"{path} is not an MNIST file (wrong magic number): {FIX}")
        count, *shape = struct.unpack(f">{1 + len(item_shape)}I", header[4:])
        expected = header_len + count * math.prod(item_shape)
        if tuple(shape) != item_shape or size != expected:
            raise UserError(f"{path} is truncated or corrupt ({size:,} bytes, expected {expected:,} "
                            f"for {count:,} items): {FIX}")
        if count == 0:
            raise UserError(f"{path} holds no items: {FIX}")
        other = next(s for s in SPLITS if s != split)
        if count == SPLITS[other] != SPLITS[split]:
            raise UserError(f"{path} holds {count:,} items, as the {other} file does: the train and t10k "
                            "files look swapped; put each under its own name")
        if not item_shape and max(f.read(largest)) > 9:
            raise UserError(f"{path} holds labels above 9: replace it with the original file")
    return count
