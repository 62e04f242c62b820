"""MNIST train/test DataLoaders, built on torchvision's datasets.MNIST and ToTensor.

    from data import build_loaders
    train_loader, test_loader = build_loaders("data", batch_size=64, seed=0)

Two loaders give the same batches, bit for bit:
- "classic": torchvision's per-sample pipeline (uint8 -> PIL image -> ToTensor), collated.
- "fast" (default): the uint8 images stay in one tensor (on the GPU when training there)
  and each batch is one indexing operation, converted to float exactly as ToTensor does.

The first run downloads the four MNIST files into <data dir>/MNIST/raw/ (mnist_files.py
checks them before torchvision reads them).
"""
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler, SequentialSampler
from torchvision import datasets, transforms

import mnist_files

TEST_BATCH_SIZE = 1000  # evaluation only; fixed so train.py and evaluate.py sum the loss alike
LOADERS = ("fast", "classic")


def load_mnist(data_dir, train, download=True):
    """torchvision's MNIST with ToTensor, downloading the files on first use."""
    mnist_files.ensure(data_dir, train, download)
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
