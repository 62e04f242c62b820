"""data.py: the two loaders on small IDX files, read through torchvision's real MNIST reader."""
import pytest
import torch
from torchvision import transforms

import data
from machinery import fast_mnist
from conftest import DEVICES, FAKE_TEST, FAKE_TRAIN, fake_digits


def epoch_batches(loader):
    return [(x.clone(), y.clone()) for x, y in loader]


def assert_same_batches(a, b):
    assert len(a) == len(b)
    for (xa, ya), (xb, yb) in zip(a, b):
        assert xa.dtype == xb.dtype == torch.float32 and ya.dtype == yb.dtype == torch.int64
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_loaders_read_the_files_with_to_tensor_semantics(fake_mnist):
    train, test = data.build_loaders(fake_mnist, batch_size=64, seed=0)
    assert len(train.dataset) == FAKE_TRAIN and len(train) == 10
    assert len(test.dataset) == FAKE_TEST
    images, labels = fake_digits(FAKE_TEST, seed=2)  # what conftest wrote for the test split
    (x, y), = list(test)  # not shuffled: one batch, in file order
    assert x.shape == (FAKE_TEST, 1, 28, 28)
    assert torch.equal(x[:, 0], images.float() / 255) and torch.equal(y, labels.long())


@pytest.mark.parametrize("batch_size", [64, 100])
def test_fast_and_classic_loaders_yield_identical_batches(fake_mnist, batch_size):
    fast_train, fast_test = data.build_loaders(fake_mnist, batch_size, seed=3, loader="fast")
    classic_train, classic_test = data.build_loaders(fake_mnist, batch_size, seed=3, loader="classic")
    for _ in range(3):  # several epochs: the generator must advance alike
        assert_same_batches(epoch_batches(fast_train), epoch_batches(classic_train))
    assert_same_batches(epoch_batches(fast_test), epoch_batches(classic_test))
    assert len(fast_train) == len(classic_train) == -(-FAKE_TRAIN // batch_size)


@pytest.mark.parametrize("loader", data.LOADERS)
def test_the_seed_decides_the_training_order(fake_mnist, loader):
    """The same seed gives the same batches, another seed another order (a shuffle seeded with 0
    whatever the seed passed every other test)."""
    orders = {}
    for run, seed in (("first", 1), ("again", 1), ("other", 2)):
        train, _ = data.build_loaders(fake_mnist, 64, seed=seed, loader=loader)
        orders[run] = torch.cat([y for _, y in epoch_batches(train)])
    assert torch.equal(orders["first"], orders["again"])
    assert not torch.equal(orders["first"], orders["other"])


def test_train_shuffles_each_epoch_test_does_not(fake_mnist):
    train, test = data.build_loaders(fake_mnist, 64, seed=0)
    images = [torch.cat([x.flatten(1) for x, _ in epoch_batches(train)]) for _ in range(2)]
    assert not torch.equal(images[0], images[1])
    assert torch.equal(images[0].sum(1).sort().values, images[1].sum(1).sort().values)  # same images
    assert_same_batches(epoch_batches(test), epoch_batches(test))


@pytest.mark.parametrize("loader", data.LOADERS)
def test_evaluating_and_global_rng_do_not_change_training_order(fake_mnist, loader):
    plain, _ = data.build_loaders(fake_mnist, 64, seed=5, loader=loader)
    busy, test = data.build_loaders(fake_mnist, 64, seed=5, loader=loader)
    expected = [epoch_batches(plain) for _ in range(2)]
    got = []
    for _ in range(2):
        got.append(epoch_batches(busy))
        epoch_batches(test)
        torch.rand(10)  # someone else using the global RNG
    for a, b in zip(expected, got):
        assert_same_batches(a, b)


@pytest.mark.parametrize("device", DEVICES)
def test_fast_and_classic_batches_are_bit_identical_on_each_device(fake_mnist, device):
    fast, _ = data.build_loaders(fake_mnist, 64, seed=3, loader="fast", device=device)
    classic, _ = data.build_loaders(fake_mnist, 64, seed=3, loader="classic", device=device)
    for (xf, yf), (xc, yc) in zip(fast, classic):
        assert xf.device.type == device and torch.equal(xf, xc.to(device)) and torch.equal(yf, yc.to(device))


def test_fast_loader_keeps_the_data_on_the_training_device(fake_mnist):
    """With CUDA the data set lives on the GPU and batches need no host-to-device copy. Without a
    GPU, the meta device stands in: count the operations whose inputs sit on another device."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class CrossDeviceOps(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.count = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            inputs = [a for a in args if isinstance(a, torch.Tensor)]
            if isinstance(out, torch.Tensor) and any(a.device != out.device for a in inputs):
                self.count += 1
            return out

    device = torch.device("meta")
    train, test = data.build_loaders(fake_mnist, 64, seed=0, loader="fast", device=device)
    assert train.dataset.images.device == device and test.dataset.targets.device == device
    with CrossDeviceOps() as ops:
        batches = [(x.to(device), y.to(device)) for x, y in train]  # as train_one_epoch does
    assert len(batches) == 10 and all(x.device == device and y.device == device for x, y in batches)
    assert ops.count == 1  # the epoch's shuffled order, once; nothing per batch


def test_fast_loader_floats_are_to_tensors_own_on_any_device(fake_mnist):
    """ToTensor divides by 255 on the CPU; a GPU divides by a constant as a multiplication by 1/255,
    which is off in the last bit for some bytes. The fast loader looks each byte up instead."""
    every_byte = torch.arange(256, dtype=torch.uint8)
    as_to_tensor = transforms.ToTensor()(every_byte.view(16, 16).numpy()).flatten()
    assert torch.equal(fast_mnist.TO_TENSOR, as_to_tensor)
    assert not torch.equal(every_byte.float() * (1 / 255), as_to_tensor)  # what the table avoids
    _, test = data.build_loaders(fake_mnist, 64, seed=0, loader="fast")
    x, _ = next(iter(test))  # all 200 test images, image 0 with every byte value
    test.dataset.divides = False  # the way a GPU goes, here on the CPU: the same bits
    assert torch.equal(next(iter(test))[0], x)
    test.dataset.values = torch.arange(256, dtype=torch.float32)  # bytes as they are: the table is used
    x, _ = next(iter(test))
    assert torch.equal(x, x.round()) and x.max() == 255


def test_fast_and_classic_give_the_same_epoch_on_real_mnist(real_mnist):
    fast, _ = data.build_loaders(real_mnist, 64, seed=0, loader="fast")
    classic, _ = data.build_loaders(real_mnist, 64, seed=0, loader="classic")
    assert_same_batches(epoch_batches(fast), epoch_batches(classic))
    assert torch.equal(fast.generator.get_state(), classic.generator.get_state())
