"""The "fast" loader: the classic DataLoader's batches, bit for bit, about 11x quicker.

The classic loader (data.py) makes each image a PIL image, then a tensor (ToTensor), and stacks 64
of them for a batch; on two CPU cores that takes longer than the training step itself. Here the
uint8 images stay in one tensor (on the GPU when training there) and a batch is one indexing
operation. What stays identical: the order (the same RandomSampler, drawing from the same
generator, and the one draw a DataLoader makes per epoch), and the values, ToTensor's bits on any
device: the CPU divides by 255 exactly as ToTensor does, and elsewhere each byte's value is looked
up in a 256-entry table that ToTensor's own arithmetic made.
"""
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler, SequentialSampler

# ToTensor's float for each byte value: the byte as float32, divided by 255, on the CPU. A GPU
# divides by a constant as a multiplication by 1/255, which differs in the last bit for some bytes.
TO_TENSOR = torch.arange(256, dtype=torch.float32).div(255)


class InMemoryMNIST(Dataset):
    """A torchvision MNIST data set as two tensors on `device`; a batch is one index_select."""

    def __init__(self, dataset, device):
        self.images = dataset.data.to(device).unsqueeze(1)  # (N, 1, 28, 28) uint8: memory as the classic one
        self.targets = dataset.targets.to(device)  # (N,) int64
        self.values = TO_TENSOR.to(device)
        self.divides = torch.device(device).type == "cpu"  # exactly, as ToTensor; a GPU does not

    def __len__(self):
        return len(self.targets)

    def __getitems__(self, indices):  # a whole batch at once: the DataLoader asks for nothing else
        # index_select is several times quicker than images[indices]
        images = self.images.index_select(0, indices)
        if self.divides:
            floats = images.div(255)  # about twice as quick as the table on a CPU
        else:
            floats = self.values.index_select(0, images.flatten().long()).view(images.shape)
        return floats, self.targets.index_select(0, indices)


class EpochBatchSampler:
    """Batches of indices, drawn for the whole epoch at once and kept on `device`.

    It draws from the sampler as torch's BatchSampler does (same indices, same generator calls),
    and on a GPU the indices cross to the device once per epoch instead of once per batch.
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


def as_is(batch):
    return batch  # __getitems__ made the batch already: nothing to collate


def loader_like(loader, device):
    """A loader giving the batches of `loader` (a DataLoader over a torchvision MNIST, shuffled or
    not, with its generator), as (images, labels) on `device`, from the data set held in memory."""
    data = InMemoryMNIST(loader.dataset, device)
    generator = loader.generator
    sampler = RandomSampler(data, generator=generator) if isinstance(loader.sampler, RandomSampler) \
        else SequentialSampler(data)
    return DataLoader(data, batch_sampler=EpochBatchSampler(sampler, loader.batch_size, device),
                      collate_fn=as_is, generator=generator)
