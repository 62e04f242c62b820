"""The "fast" loader: the classic DataLoader's batches, bit for bit, 7-11x quicker.

The classic loader (data.py) makes each image a PIL image, then runs data.py's transform on it, and
stacks 64 of them for a batch; on two CPU cores that takes longer than the training step itself.
Here the images stay in one tensor (on the GPU when training there) and a batch is one indexing
operation. What stays identical: the order (the same RandomSampler, drawing from the same
generator, and the one draw a DataLoader makes per epoch), and the values:

- ToTensor alone (data.py as it comes): the uint8 images are kept, and a batch is made as ToTensor
  makes it: the CPU divides by 255 exactly as ToTensor does, and elsewhere each byte's value is
  looked up in a 256-entry table that ToTensor's own arithmetic made.
- any other transform that draws no random numbers (Normalize, Pad, Resize, a Compose of them, a
  Lambda): it runs once on every image, through the data set itself as the classic loader runs
  it, and the results are kept; a batch is the same stack of the same tensors.
- a transform that draws random numbers (data.py's AUGMENT: RandomRotation, RandomAffine, any
  augmentation) must draw anew for every image of every epoch: the classic loader runs it as
  written, and a line says so.
"""
import random

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler, SequentialSampler
from torchvision import transforms

# ToTensor's float for each byte value: the byte as float32, divided by 255, on the CPU. A GPU
# divides by a constant as a multiplication by 1/255, which differs in the last bit for some bytes.
TO_TENSOR = torch.arange(256, dtype=torch.float32).div(255)
PROBES = 16  # seeds a transform is run with to see whether it draws random numbers
PROBED = 4  # images it is run on with each seed


class InMemoryMNIST(Dataset):
    """A torchvision MNIST data set whose transform is ToTensor, as two tensors on `device`; a batch
    is one index_select."""

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


class TransformedMNIST(InMemoryMNIST):
    """Any data set whose transform draws no random numbers: every item as the data set itself
    gives it (its transform and target_transform run once here), stacked as a batch stacks them."""

    def __init__(self, dataset, device):
        items = [dataset[i] for i in range(len(dataset))]
        self.images = torch.stack([x for x, _ in items]).to(device)
        self.targets = torch.as_tensor([y for _, y in items]).to(device)

    def __getitems__(self, indices):
        return self.images.index_select(0, indices), self.targets.index_select(0, indices)


def random_transform(dataset):
    """The name of what in the data set's transform draws random numbers, or None: each class named
    Random..., or, for anything else (a Lambda adding noise), a change in what it gives for the same
    images with other seeds of torch, random and numpy, whose states are put back afterwards."""
    named = [t for t in getattr(dataset.transform, "transforms", [dataset.transform])
             if type(t).__name__.startswith("Random")]
    if named:
        return type(named[0]).__name__
    states = torch.get_rng_state(), random.getstate(), np.random.get_state()
    try:
        seen = []
        for seed in range(PROBES):
            torch.manual_seed(seed), random.seed(seed), np.random.seed(seed)
            seen.append([dataset[i][0] for i in range(min(PROBED, len(dataset)))])
    finally:
        torch.set_rng_state(states[0]), random.setstate(states[1]), np.random.set_state(states[2])
    same = all(torch.is_tensor(a) and torch.equal(a, b) for other in seen[1:] for a, b in zip(seen[0], other))
    return None if same else ", ".join(type(t).__name__ for t in getattr(dataset.transform, "transforms",
                                                                          [dataset.transform]))


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
    not, with its generator), as (images, labels) on `device`, from the data set held in memory;
    `loader` itself where its transform draws random numbers, with a line saying so."""
    dataset = loader.dataset
    if type(dataset.transform) is transforms.ToTensor and dataset.target_transform is None:
        data = InMemoryMNIST(dataset, device)
    else:
        drawn = random_transform(dataset)
        if drawn:
            print(f"the {'training' if isinstance(loader.sampler, RandomSampler) else 'test'} images go through "
                  f"the classic loader: data.py's transform draws random numbers ({drawn}), anew for each image "
                  "every epoch")
            return loader
        data = TransformedMNIST(dataset, device)
    generator = loader.generator
    sampler = RandomSampler(data, generator=generator) if isinstance(loader.sampler, RandomSampler) \
        else SequentialSampler(data)
    return DataLoader(data, batch_sampler=EpochBatchSampler(sampler, loader.batch_size, device),
                      collate_fn=as_is, generator=generator)
