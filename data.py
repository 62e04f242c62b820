"""MNIST train/test DataLoaders, built on torchvision's datasets.MNIST and ToTensor.

    from data import build_loaders
    train_loader, test_loader = build_loaders("data", batch_size=64, seed=0)

Two loaders give the same batches, bit for bit:
- "classic": torchvision's per-sample pipeline (uint8 -> PIL image -> ToTensor), collated.
- "fast" (default): the uint8 images stay in one tensor (on the GPU when training there)
  and each batch is one indexing operation, converted to float exactly as ToTensor does.

The first run downloads the four MNIST files into <data dir>/MNIST/raw/.

load_digit_image(path) turns a photo or scan of one digit into a 28x28 MNIST-style image.
"""
import math
import os
import struct

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset, RandomSampler, SequentialSampler
from torchvision import datasets, transforms
from torchvision.transforms import functional as TF

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
    item_bytes = math.prod(item_shape)
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


def check_files(data_dir, train):
    """Validate one split's two raw files (headers and sizes only, so it is cheap)."""
    raw, split = raw_folder(data_dir), "train" if train else "t10k"
    n_img = check_idx_file(os.path.join(raw, f"{split}-images-idx3-ubyte"), *FILES[f"{split}-images-idx3-ubyte"])
    n_lab = check_idx_file(os.path.join(raw, f"{split}-labels-idx1-ubyte"), *FILES[f"{split}-labels-idx1-ubyte"])
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
        # The one step that can take a while: say so before torchvision's percentage appears.
        print(f"downloading MNIST into {raw}/ (four files, about 12 MB)", flush=True)
        made, folder = [], raw  # the folders the download will create, innermost first
        while folder and not os.path.isdir(folder):
            made.append(folder)
            folder = os.path.dirname(folder)
        try:
            datasets.MNIST(data_dir, train=train, download=True)
        except (RuntimeError, OSError) as e:
            for folder in made:  # a mistyped --data-dir leaves no empty folders behind
                if os.path.isdir(folder) and not os.listdir(folder):
                    os.rmdir(folder)
            reason = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
            raise DataError(
                f"MNIST is not in {raw}/ and the download failed ({reason}). "
                f"Put the four files {', '.join(FILES)} (unzipped) into {raw}/, "
                "or pass --data-dir to a folder that has MNIST/raw/ in it"
            ) from None
    elif missing:
        raise DataError(f"{', '.join(missing)} missing from {raw}/: pass --data-dir to the folder that has MNIST/raw/")
    check_files(data_dir, train)
    dataset = datasets.MNIST(data_dir, train=train, transform=transforms.ToTensor())
    if dataset.targets.max() > 9:  # right size, wrong content: cross-entropy would fail much later
        name = f"{'train' if train else 't10k'}-labels-idx1-ubyte"
        raise DataError(f"{os.path.join(raw, name)} holds labels above 9: replace it with the original file")
    return dataset


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


def _max_filter(x, size):
    """Grey-level dilation of a (H, W) tensor with a size x size square, done separably."""
    x = F.max_pool2d(x[None, None], (size, 1), stride=1, padding=(size // 2, 0))
    return F.max_pool2d(x, (1, size), stride=1, padding=(0, size // 2))[0, 0]


def mnist_style(gray):
    """A grayscale PIL image of one digit -> the 28x28 'L' image MNIST would have made of it.

    As MNIST was made: light ink on black, the ink fitted into a 20x20 box keeping its aspect
    ratio (anti-aliased), then pasted into 28x28 with its centre of mass at the centre.
    Raises DataError when no ink stands out from the background.
    """
    gray = gray.copy()
    gray.thumbnail((256, 256), Image.Resampling.LANCZOS)  # plenty for a 20x20 result, and quick
    x = TF.pil_to_tensor(gray)[0].float() / 255
    # Sensor noise, from neighbouring pixels: mostly paper, so their differences are mostly noise.
    noise = (x[:, 1:] - x[:, :-1]).abs().median().item() / (0.6745 * 2 ** 0.5)
    # Paper grain and sensor noise: a 3x3 median removes specks, strokes survive.
    x = F.pad(x[None, None], (1, 1, 1, 1), mode="replicate").unfold(2, 3, 1).unfold(3, 3, 1)
    x = x.flatten(-2).median(-1).values[0, 0]
    # The page's edge is paper. Paper nearer the brightest than the darkest pixel means dark ink
    # on light paper (dim light included), which MNIST has the other way round: invert.
    k = max(1, min(x.shape) // 20)
    edge = torch.cat([x[:k].flatten(), x[-k:].flatten(), x[:, :k].flatten(), x[:, -k:].flatten()])
    if edge.median() > (x.min() + x.max()) / 2:
        x = 1 - x
    # Uneven lighting: the background is what survives a grey-level opening with a square
    # wider than any stroke; subtracting it (a white top-hat) leaves the strokes on black.
    size = max(x.shape) // 5 | 1
    background = _max_filter(-_max_filter(-x, size), size)
    x = (x - background).clamp(min=0)
    # The opening sits at the noise's floor, so paper is left at the median; ink must rise above
    # it well clear of the noise, or there is no digit to read.
    level = x.median()
    contrast = x.max().item() - level.item()
    if contrast < max(0.1, 6 * noise):
        raise DataError("no digit found: the image is blank or has too little contrast")
    x = (((x - level) / contrast - 0.2) / 0.6).clamp(0, 1)  # paper and noise to 0, strokes to white
    rows, cols = (x > 0.5).any(1).nonzero(), (x > 0.5).any(0).nonzero()
    x = x[rows.min(): rows.max() + 1, cols.min(): cols.max() + 1]
    h, w = x.shape
    scale = 20 / max(h, w)
    h, w = max(1, round(h * scale)), max(1, round(w * scale))
    x = TF.resize(x[None], [h, w], antialias=True)[0].clamp(0, 1)
    ys, xs = torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32)
    cy, cx = (x.sum(1) * ys).sum() / x.sum(), (x.sum(0) * xs).sum() / x.sum()
    top, left = round(14 - cy.item()), round(14 - cx.item())  # MNIST's centre of mass is (14, 14)
    canvas = torch.zeros(28, 28)
    y0, x0, y1, x1 = max(top, 0), max(left, 0), min(top + h, 28), min(left + w, 28)  # clipped to the canvas
    canvas[y0:y1, x0:x1] = x[y0 - top: y1 - top, x0 - left: x1 - left]
    return Image.fromarray((canvas * 255).round().to(torch.uint8).numpy(), mode="L")


def load_digit_image(path):
    """(28x28 'L' image, its (1, 28, 28) ToTensor tensor) for a photo or scan of one digit."""
    try:
        with Image.open(path) as image:
            image = ImageOps.exif_transpose(image)
            if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
                paper = Image.new("RGBA", image.size, "white")  # transparent means paper, not black
                image = Image.alpha_composite(paper, image.convert("RGBA"))
            gray = image.convert("L")
    except FileNotFoundError:
        raise DataError("no such file") from None
    except UnidentifiedImageError:
        raise DataError("not an image that PIL can read (PNG, JPEG, ...)") from None
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f"cannot read this image ({e})") from None
    if min(gray.size) < 1:
        raise DataError("the image is empty")
    small = mnist_style(gray)
    return small, transforms.ToTensor()(small)
