"""MNIST train/test DataLoaders: torchvision's datasets.MNIST with ToTensor.

    from data import build_loaders
    train_loader, test_loader = build_loaders("data", batch_size=64, seed=0)

Edit TRANSFORM to change what every image becomes (Normalize, Pad): the training and test images,
and the photos and drawings evaluate.py and draw.py read. Put random changes (augmentation, such as
RandomRotation) in AUGMENT: they apply to the training images only, anew every epoch, so the test
accuracy stays a measurement. The first run downloads the MNIST files into <data dir>/MNIST/raw/.
"""
import torch
from torch.utils.data import DataLoader
from torchvision import transforms

from machinery import fast_mnist, mnist_files

TRANSFORM = transforms.ToTensor()  # a PIL image -> a (1, 28, 28) float tensor in [0, 1]
AUGMENT = []  # random changes to the training images, before TRANSFORM: [transforms.RandomRotation(10)]
TEST_BATCH_SIZE = 1000  # evaluation only; fixed so train.py and evaluate.py sum the loss alike
LOADERS = ("fast", "classic")  # fast: the classic loader's batches, bit for bit, 7-11x quicker


def load_mnist(data_dir, train):
    """torchvision's MNIST with TRANSFORM (the training set: AUGMENT first): each item is (image, label)."""
    mnist_files.ensure(data_dir, train)  # the four raw files in place (downloaded if missing) and sound
    transform = transforms.Compose([*AUGMENT, TRANSFORM]) if train and AUGMENT else TRANSFORM
    # torchvision's datasets.MNIST, made to read those raw files whatever else the folder holds
    return mnist_files.MNIST(data_dir, train=train, transform=transform)


def build_loaders(data_dir, batch_size, seed, loader="fast", device="cpu"):
    """(train_loader, test_loader). The training set is shuffled each epoch by a seeded generator
    of its own, so evaluating, or anything else that draws random numbers, never changes its order."""
    train_set = load_mnist(data_dir, train=True)
    train_loader = DataLoader(train_set, batch_size=batch_size, shuffle=True,
                              generator=torch.Generator().manual_seed(seed))
    if loader == "fast":  # the same batches, from the images held in one tensor (machinery/fast_mnist.py)
        train_loader = fast_mnist.loader_like(train_loader, device)
    return train_loader, build_test_loader(data_dir, loader, device)


def build_test_loader(data_dir, loader="fast", device="cpu"):
    """All 10,000 test images, in order."""
    test_set = load_mnist(data_dir, train=False)
    # a DataLoader draws a number at every pass: from its own generator, not the global one
    test_loader = DataLoader(test_set, batch_size=TEST_BATCH_SIZE, shuffle=False, generator=torch.Generator())
    if loader == "fast":
        test_loader = fast_mnist.loader_like(test_loader, device)
    return test_loader
