"""MNIST train/test DataLoaders, built on torchvision's datasets.MNIST and ToTensor.

    from data import build_loaders
    train_loader, test_loader = build_loaders("data", batch_size=64, seed=0)

Two loaders give the same batches, bit for bit:
- "classic": torchvision's per-sample pipeline (uint8 -> PIL image -> ToTensor), collated.
- "fast" (default): the uint8 images stay in one tensor (on the GPU when training there)
  and each batch is one indexing operation, converted to float exactly as ToTensor does.

The first run downloads the four MNIST files into <data dir>/MNIST/raw/.
"""
import os
import struct

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler, SequentialSampler
from torchvision import datasets, transforms

DATA_DIR = "data"  # where MNIST/raw/ lives or is downloaded to
TEST_BATCH_SIZE = 1000  # evaluation only; fixed so train.py and evaluate.py sum the loss alike
LOADERS = ("fast", "classic")

FILES = {  # file name -> (IDX magic number, shape of one item)
    "train-images-idx3-ubyte": (2051, (28, 28)),
    "train-labels-idx1-ubyte": (2049, ()),
    "t10k-images-idx3-ubyte": (2051, (28, 28)),
    "t10k-labels-idx1-ubyte": (2049, ()),
}


class DataError(Exception):
    """The MNIST files are missing, cannot be downloaded, or are damaged."""


def raw_folder(data_dir):
    return os.path.join(data_dir, "MNIST", "raw")


def check_idx_file(path, magic, item_shape):
    """Raise DataError unless path is a whole IDX file of uint8 items of item_shape."""
    item_bytes = 1
    for d in item_shape:
        item_bytes *= d
    header_len = 4 + 4 * (1 + len(item_shape))
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        header = f.read(header_len)
    fix = "delete it to download it again, or replace it with the original file"
    if len(header) < header_len or struct.unpack(">I", header[:4])[0] != magic:
        raise DataError(f"{path} is not an MNIST file (wrong magic number): {fix}")
    count, *shape = struct.unpack(f">{1 + len(item_shape)}I", header[4:])
    if tuple(shape) != item_shape or size != header_len + count * item_bytes:
        raise DataError(
            f"{path} is truncated or corrupt ({size:,} bytes, expected "
            f"{header_len + count * item_bytes:,} for {count:,} items): {fix}"
        )
    return count


def check_files(data_dir):
    """Validate the four raw files (headers and sizes only, so it is cheap)."""
    raw = raw_folder(data_dir)
    counts = {name: check_idx_file(os.path.join(raw, name), *spec) for name, spec in FILES.items()}
    for split in ("train", "t10k"):
        n_img, n_lab = counts[f"{split}-images-idx3-ubyte"], counts[f"{split}-labels-idx1-ubyte"]
        if n_img != n_lab:
            raise DataError(
                f"{raw}: {split} has {n_img:,} images but {n_lab:,} labels: "
                "the files come from different sets; replace them with the original files"
            )


def load_mnist(data_dir, train, download=True):
    """torchvision's MNIST with ToTensor, downloading the files on first use."""
    raw = raw_folder(data_dir)
    missing = [name for name in FILES if not os.path.isfile(os.path.join(raw, name))]
    for folder in (data_dir, os.path.join(data_dir, "raw")):
        if missing and all(os.path.isfile(os.path.join(folder, name)) for name in FILES):
            raise DataError(f"the MNIST files are in {folder}/, but they belong in <data dir>/MNIST/raw/: "
                            f"pass the folder above MNIST/ as --data-dir, or move them into {raw}/")
    if missing and download:
        try:
            datasets.MNIST(data_dir, train=train, download=True)
        except (RuntimeError, OSError) as e:
            reason = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
            raise DataError(
                f"MNIST is not in {raw}/ and the download failed ({reason}). "
                f"Put the four files {', '.join(FILES)} (unzipped) into {raw}/, "
                "or pass --data-dir to a folder that has MNIST/raw/ in it"
            ) from None
    elif missing:
        raise DataError(f"{', '.join(missing)} missing from {raw}/: pass --data-dir to the folder that has MNIST/raw/")
    check_files(data_dir)
    return datasets.MNIST(data_dir, train=train, transform=transforms.ToTensor())


class FastMNIST(Dataset):
    """MNIST kept as one uint8 tensor; a batch is one indexing operation.

    ToTensor turns uint8 into float32 and divides by 255; doing the same on a whole batch
    gives the same bits. Keeping uint8 (not float) keeps memory at the classic loader's.
    """

    def __init__(self, images, targets):
        self.images = images.unsqueeze(1)  # (N, 1, 28, 28) uint8, a view
        self.targets = targets  # (N,) int64

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        image, target = self.__getitems__([i])
        return image[0], int(target[0])

    def __getitems__(self, indices):
        idx = torch.as_tensor(indices, device=self.images.device)
        # index_select is several times quicker than images[idx]; uint8 / 255 is computed in
        # float32 in one kernel, the same bits as ToTensor's .to(float32).div(255)
        images = self.images.index_select(0, idx).div(255)
        return images, self.targets.index_select(0, idx)


class EpochBatchSampler:
    """Batches from a sampler, drawn for the whole epoch at once and kept on `device`.

    It draws from the sampler exactly as torch's BatchSampler does (same indices, same
    generator calls), so both loaders see the same order, and on a GPU the indices cross
    to the device once per epoch instead of once per batch.
    """

    def __init__(self, sampler, batch_size, device):
        self.sampler, self.batch_size, self.device = sampler, batch_size, device

    def __iter__(self):
        # np.fromiter takes the sampler's ints about 4x quicker than torch.tensor(list(...)). It
        # runs the sampler to its end, as BatchSampler does: RandomSampler draws once more there.
        order = np.fromiter(self.sampler, dtype=np.int64)
        yield from torch.from_numpy(order).to(self.device).split(self.batch_size)

    def __len__(self):
        return (len(self.sampler) + self.batch_size - 1) // self.batch_size


def passthrough(batch):
    return batch


def make_loader(dataset, batch_size, shuffle, generator, loader="fast", device="cpu"):
    """A DataLoader over a torchvision MNIST dataset; both kinds yield identical batches.

    The generator drives the shuffle (and the one draw a DataLoader makes per epoch), so
    iterating any other loader never changes this one's order.
    """
    if loader == "classic":
        return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator,
                          pin_memory=torch.device(device).type == "cuda")
    fast = FastMNIST(dataset.data.to(device), dataset.targets.to(device))
    sampler = RandomSampler(fast, generator=generator) if shuffle else SequentialSampler(fast)
    return DataLoader(fast, batch_sampler=EpochBatchSampler(sampler, batch_size, device),
                      collate_fn=passthrough, generator=generator)


def build_test_loader(data_dir, loader="fast", device="cpu", seed=0):
    """All 10,000 test images in order; its own generator only feeds the DataLoader's per-epoch
    draw, so iterating it never touches the global RNG."""
    return make_loader(load_mnist(data_dir, False), TEST_BATCH_SIZE, False,
                       torch.Generator().manual_seed(seed), loader, device)


def build_loaders(data_dir, batch_size, seed, loader="fast", device="cpu"):
    """(train_loader, test_loader): train shuffles with its own seeded generator, test does not."""
    generator = torch.Generator().manual_seed(seed)
    train = make_loader(load_mnist(data_dir, True), batch_size, True, generator, loader, device)
    return train, build_test_loader(data_dir, loader, device, seed)
