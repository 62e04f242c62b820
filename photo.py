"""Your own digit: a photo, scan or drawing of one digit made into the 28x28 image MNIST would have.

    small, x, note = photo.read_digit("my_digit.jpg")  # 'L' image, (1, 28, 28) tensor, remark
    probabilities = photo.classify(model, x, device)

As MNIST was made: light ink on black, the ink fitted into a 20x20 box keeping its aspect ratio
(anti-aliased), pasted into 28x28 with its centre of mass at the centre. evaluate.py --image
and draw.py both go through read_digit. Problems are a UserError with one line to show.
"""
import io
import os
import stat
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError
from torchvision.transforms import functional as TF

from cli import UserError

WORK_SIDE = 1024  # larger images are reduced to this before any full-size conversion
SMALL_SIDE = 256  # the morphology runs at this size: plenty for a 20x20 result, and quick
MAX_PIXELS = 180_000_000  # a 13,400 x 13,400 scan; beyond it an image is refused, not decoded


class TooLarge(UserError):
    """More pixels than this reads."""


class NoDigit(UserError):
    """Nothing stands out from the paper."""


def read_digit(source, max_pixels=MAX_PIXELS):
    """(28x28 'L' image, its (1, 28, 28) ToTensor tensor, a remark or '') for a path or bytes."""
    gray, note = open_gray(source, max_pixels)
    small = mnist_style(gray)
    return small, TF.to_tensor(small), note


@torch.no_grad()
def classify(model, x, device):
    """The ten probabilities for one (1, 28, 28) image, on the CPU."""
    model.eval()
    return torch.softmax(model(x[None].to(device)), dim=1)[0].cpu()


def summary(probs):
    """'7 (99.5%)  top 3: 7 99.5%, 9 0.4%, 3 0.1%' for ten probabilities."""
    top = probs.topk(3)
    pairs = list(zip(top.indices.tolist(), top.values.tolist()))
    return f"{pairs[0][0]} ({100 * pairs[0][1]:.1f}%)  top 3: " + ", ".join(f"{d} {100 * p:.1f}%" for d, p in pairs)


def png(image):
    """A PIL image as PNG bytes."""
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def open_gray(source, max_pixels=MAX_PIXELS):
    """(float tensor (H, W) in [0, 1] with H, W <= WORK_SIDE, remark) for a path or bytes."""
    if isinstance(source, (bytes, bytearray)):
        source = io.BytesIO(source)
    elif os.path.isdir(source):
        raise UserError("a folder, not an image")
    elif not os.path.exists(source):
        raise UserError("no such file")
    elif not stat.S_ISREG(os.stat(source).st_mode):
        raise UserError("not a regular file (a device, FIFO or socket): pass an image file")
    try:
        with warnings.catch_warnings(), Image.open(source) as image:
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # MAX_PIXELS is the limit
            if image.width * image.height > max_pixels:
                raise TooLarge(f"{image.width}x{image.height} pixels is more than this reads "
                                f"({max_pixels / 1e6:.0f} megapixels); scale it down first")
            frames = getattr(image, "n_frames", 1)
            image.draft(image.mode, (WORK_SIDE, WORK_SIDE))  # JPEG: decode at 1/2, 1/4 or 1/8 size
            if max(image.size) > WORK_SIDE:  # reduce first: conversions then work on the small copy
                image = reduced(image, -(-max(image.size) // WORK_SIDE))
            image = ImageOps.exif_transpose(image)
            gray = to_gray(image)
    except UserError:
        raise
    except UnidentifiedImageError:
        raise UserError("not an image that PIL can read (PNG, JPEG, ...)") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise UserError(f"cannot read this image ({str(e) or type(e).__name__})") from None
    if min(gray.shape) < 1:
        raise UserError("the image is empty")
    return gray, (f"the first of its {frames} frames was read" if frames > 1 else "")


def reduced(image, factor):
    """image scaled down by an integer factor with box averages, a strip at a time: resizing it whole
    would first make a full-size copy (RGBA to RGBa), as large as the decoded image itself."""
    width, height = image.size
    out = Image.new(image.mode, (-(-width // factor), -(-height // factor)))
    step = 64 * factor
    for top in range(0, height, step):
        strip = image.crop((0, top, width, min(top + step, height)))
        out.paste(strip.resize((out.width, -(-strip.height // factor)), Image.Resampling.BOX), (0, top // factor))
    return out


def fit(size, side):
    scale = side / max(size)
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


def to_gray(image):
    """Grey levels in [0, 1]: transparency counts as paper, 16-bit data keeps its range."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        values = np.asarray(image, dtype=np.float32)
        top = 1.0 if values.max() <= 1 else 255.0 if values.max() <= 255 else 65535.0
        return torch.from_numpy(values / top).clamp(0, 1)
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        paper = Image.new("RGBA", image.size, "white")  # transparent means paper, not black
        image = Image.alpha_composite(paper, image.convert("RGBA"))
    return TF.pil_to_tensor(image.convert("L"))[0].float() / 255


def max_filter(x, size):
    """Grey-level dilation of a (H, W) tensor with a size x size square, done separably."""
    if size <= 7:  # max_pool2d is quicker for small squares, running_max for large ones
        return F.max_pool2d(x[None, None], size, stride=1, padding=size // 2)[0, 0]
    return running_max(running_max(x, size).T, size).T


def running_max(x, size):
    """The max over a window of `size` centred on each element of the last dimension, in O(n) for
    any size (van Herk and Gil-Werman: maxima within blocks, from the left and from the right)."""
    n, half = x.shape[-1], size // 2
    blocks = -(-(n + 2 * half) // size)
    padded = F.pad(x, (half, blocks * size - n - half), value=float("-inf")).view(*x.shape[:-1], blocks, size)
    from_left = padded.cummax(-1).values.flatten(-2)
    from_right = padded.flip(-1).cummax(-1).values.flip(-1).flatten(-2)
    return torch.maximum(from_right[..., :n], from_left[..., size - 1: size - 1 + n])


def median3(x):
    """Each pixel's median over its 3x3 neighbourhood (edges replicated): a sorting network of 19
    compare-exchanges over shifted copies, 15x quicker than sorting each neighbourhood."""
    h, w = x.shape
    padded = F.pad(x[None, None], (1, 1, 1, 1), mode="replicate")[0, 0]
    v = [padded[i: i + h, j: j + w] for i in range(3) for j in range(3)]
    for a, b in ((1, 2), (4, 5), (7, 8), (0, 1), (3, 4), (6, 7), (1, 2), (4, 5), (7, 8), (0, 3),
                 (5, 8), (4, 7), (3, 6), (1, 4), (2, 5), (4, 7), (4, 2), (6, 4), (4, 2)):
        v[a], v[b] = torch.minimum(v[a], v[b]), torch.maximum(v[a], v[b])
    return v[4]


def opening(x, size):
    return max_filter(-max_filter(-x, size), size)


def mnist_style(x):
    """A (H, W) grey-level tensor of one digit -> the 28x28 'L' image MNIST would have made of it.

    Raises UserError when no ink stands out from the paper."""
    # Sensor noise, from neighbouring pixels (every third row is plenty): mostly paper, so their
    # differences are mostly noise.
    noise = (x[::3, 1:] - x[::3, :-1]).abs().median().item() / (0.6745 * 2 ** 0.5) if x.shape[1] > 1 else 0.0
    x = median3(x)  # paper grain and sensor noise: a 3x3 median removes specks, strokes survive
    small = fit(x.shape[::-1], min(SMALL_SIDE, max(x.shape)))[::-1]
    # The paper, not the image's edge, decides the polarity: a thick light region (strokes are thin)
    # means dark ink on paper, which MNIST has the other way round; what lies around the paper
    # (a desk) is set to the paper's own shade. No such region: light ink on a dark ground.
    preview = F.adaptive_avg_pool2d(x[None, None], small)[0, 0]
    paper = paper_mask(preview)
    if paper is not None:
        paper = F.interpolate(paper[None, None].float(), size=x.shape, mode="nearest")[0, 0].bool()
        x = torch.where(paper, 1 - x, 1 - x[paper].median())
    size = max(preview.shape) // 5 | 1
    # Down to the working size keeping each block's inkiest pixel, so a thin pencil line survives.
    x = F.adaptive_max_pool2d(x[None, None], small)[0, 0]
    # Uneven lighting and the desk: the background is what survives a grey-level opening with a
    # square wider than any stroke; subtracting it (a white top-hat) leaves the strokes on black.
    x = (x - opening(x, size)).clamp(min=0)
    level = x.median()
    contrast = x.max().item() - level.item()
    if contrast < max(0.1, 6 * noise):
        raise NoDigit("no digit found: the image is blank or has too little contrast")
    x = (((x - level) / contrast - 0.2) / 0.6).clamp(0, 1)  # paper and noise to 0, strokes to white
    x = drop_border_clutter(x)
    rows, cols = (x > 0.5).any(1).nonzero(), (x > 0.5).any(0).nonzero()
    x = x[rows.min(): rows.max() + 1, cols.min(): cols.max() + 1]
    x = thicken(x)
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


def paper_mask(x):
    """Where a (H, W) image's paper is (a bool mask), or None when nothing light is thick enough to
    be paper. The paper is the light part once thin strokes are opened away, and everything it
    encloses (the ink on it); the rest, reached from the image's edge, is a desk when it runs along
    a good part of that edge."""
    low, high = x.flatten().quantile(torch.tensor([0.01, 0.99]))
    light = (x > low + 0.35 * (high - low)).float()  # paper in poor light still counts as light
    size = max(x.shape) // 15 | 1
    thick = max_filter(-max_filter(-light, size), size) > 0.5
    if thick.float().mean() < 0.1:
        return None
    outside = reached_from_edge(~thick)
    edge = torch.cat([outside[0], outside[-1], outside[:, 0], outside[:, -1]])
    if edge.float().mean() < 0.2:  # ink running off the page, not a desk along its sides
        return torch.ones_like(thick)
    return max_filter(outside.float(), 5) < 0.5  # a margin: the paper's own edge is not ink


def reached_from_edge(mask):
    """The part of a bool mask connected to the image's edge through the mask (8-neighbours)."""
    reached = torch.zeros_like(mask)
    reached[0], reached[-1], reached[:, 0], reached[:, -1] = mask[0], mask[-1], mask[:, 0], mask[:, -1]
    while True:
        grown = max_filter(reached.float(), 3).bool() & mask
        if torch.equal(grown, reached):
            return reached
        reached = grown


def drop_border_clutter(x):
    """Remove ink that touches the image's edge (a desk's corner, the paper's edge), unless
    the digit itself does: then nothing else would be left, and all is kept."""
    ink = x > 0.5
    reached = reached_from_edge(ink)
    if (ink & ~reached).sum() < 0.3 * ink.sum():
        return x
    return x * ~max_filter(reached.float(), 5).bool()


def thicken(x):
    """Widen strokes far thinner than MNIST's (about a tenth of the digit's height; under half of
    that here): a fine pen or a light pencil would otherwise shrink to a faint line at 20x20."""
    ink = x > 0.5
    edge = ink & ~(-max_filter(-ink.float(), 3)).bool()  # ink pixels with a paper neighbour
    width = 2 * ink.sum().item() / max(edge.sum().item(), 1)  # area / half the outline
    if width >= 0.05 * max(x.shape):
        return x
    return max_filter(x, round(0.08 * max(x.shape) - width) | 1)
