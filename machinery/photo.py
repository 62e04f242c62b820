"""Your own digit: a photo, scan or drawing of one digit made into the 28x28 image MNIST would have.

    small, x, note = photo.read_digit("my_digit.jpg")  # 'L' image, (1, 28, 28) tensor, remark
    probabilities = photo.classify(model, x, device)

As MNIST was made: light ink on black, the ink fitted into a 20x20 box keeping its aspect ratio
(anti-aliased), pasted into 28x28 with its centre of mass at the centre. evaluate.py --image
and draw.py both go through read_digit. Problems are a UserError with one line to show.

First the file is read, by image_files.open_gray: what it costs is known before a pixel is
decoded, and refused over about a second's work (TooLarge). Then the strokes are found here
(mnist_style on).
"""
import io

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms import functional as TF

from machinery import image_files
from machinery.cli import UserError
from machinery.image_files import MAX_PIXELS, open_gray

SMALL_SIDE = 256  # the strokes are worked on at this size: plenty for a 20x20 result, and quick
COARSE_SIDE = 64  # the paper is found at this size
CLEANUP_NS = 60  # a pixel of the image read, made to look like MNIST: at most (a serpentine drawing)
TooLarge = image_files.TooLarge  # what read_digit's callers catch, as photo.TooLarge


class NoDigit(UserError):
    """Nothing stands out from the paper."""


def read_digit(source, max_pixels=MAX_PIXELS, transform=None):
    """(28x28 'L' image, what `transform` (data.py's TRANSFORM) makes of it, a remark or '') for a path or
    bytes; with no transform, the (1, 28, 28) tensor ToTensor makes."""
    gray, note = open_gray(source, max_pixels)
    try:
        small = mnist_style(gray)
    except NoDigit:
        if not note:
            raise
        raise NoDigit("no digit found: the first frame, the only one read of several, is blank "
                      "or has too little contrast") from None
    if transform is not None:
        return small, transform(small), note
    return small, torch.from_numpy(np.asarray(small, dtype=np.float32) / 255)[None], note  # as ToTensor


def seconds_to_read(data):
    """What read_digit takes for the bytes of an image, estimated from its header: decoding, as
    image_files reckons it, and the cleanup here. A drawing of 256x256: 7 ms (3 ms measured); a
    line winding over it, which the edge cleanup follows: 5 ms (16 ms); over 1000x1000, 72 (68)."""
    decoding, pixels = image_files.read_cost(data)
    return decoding + pixels * CLEANUP_NS / 1e9


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


def fit(size, side):
    scale = side / max(size)
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


def max_filter(x, size):
    """Grey-level dilation of a (H, W) tensor with a size x size square, rows then columns (for a
    bool mask: the mask grown by the square; ~max_filter(~mask) is the mask shrunk by it)."""
    return running_max(running_max(x, size, -1), size, -2)


def running_max(x, size, dim):
    """The max over a window of `size` centred on each element along dim -1 or -2. Maxima of
    windows twice as wide come from two shifted copies, so any size takes log2(size) + 1 steps of
    plain elementwise maxima (no sliding-window kernel, which is far slower here)."""
    half = size // 2
    lowest = -float("inf") if x.is_floating_point() else 0  # beyond the edge: never the max
    x = F.pad(x, (half, half) if dim == -1 else (0, 0, half, half), value=lowest)
    width = 1
    while 2 * width <= size:  # x[i] is the max of the `width` elements from i on
        x = torch.maximum(x.narrow(dim, 0, x.shape[dim] - width), x.narrow(dim, width, x.shape[dim] - width))
        width *= 2
    shift = size - width  # the last window overlaps: max of [i, i + width) and [i + shift, i + size)
    return torch.maximum(x.narrow(dim, 0, x.shape[dim] - shift), x.narrow(dim, shift, x.shape[dim] - shift))


def median3(x):
    """Each pixel's median over its 3x3 neighbourhood (edges replicated). Each column of three is
    sorted once and shared by three neighbourhoods; the median of nine is then the median of the
    columns' largest low, middle median and smallest high (Paeth's exact shortcut): 16 elementwise
    steps instead of sorting every neighbourhood."""
    p = F.pad(x[None, None], (1, 1, 1, 1), mode="replicate")[0, 0]
    a, b, c = p[:-2], p[1:-1], p[2:]
    lo, hi = torch.minimum(a, b), torch.maximum(a, b)
    mid = torch.maximum(lo, torch.minimum(hi, c))  # median of a, b, c
    lo, hi = torch.minimum(lo, c), torch.maximum(hi, c)
    lows = torch.maximum(torch.maximum(lo[:, :-2], lo[:, 1:-1]), lo[:, 2:])
    highs = torch.minimum(torch.minimum(hi[:, :-2], hi[:, 1:-1]), hi[:, 2:])
    return median_of(lows, median_of(mid[:, :-2], mid[:, 1:-1], mid[:, 2:]), highs)


def median_of(a, b, c):
    return torch.maximum(torch.minimum(a, b), torch.minimum(torch.maximum(a, b), c))


def opening(x, size):
    return max_filter(-max_filter(-x, size), size)


@torch.inference_mode()  # no autograd bookkeeping on the way: a few per cent quicker
def mnist_style(x):
    """A (H, W) grey-level tensor of one digit -> the 28x28 'L' image MNIST would have made of it.

    Raises UserError when no ink stands out from the paper."""
    # Sensor noise, from neighbouring pixels (every third row is plenty): mostly paper, so their
    # differences are mostly noise.
    noise = (x[::3, 1:] - x[::3, :-1]).abs().median().item() / (0.6745 * 2 ** 0.5) if x.shape[1] > 1 else 0.0
    small = fit(x.shape[::-1], min(SMALL_SIDE, max(x.shape)))[::-1]
    strokes = drawn_strokes(x, small) if noise == 0 else None
    x = photographed_strokes(x, small, noise) if strokes is None else strokes
    ink = x > 0.5
    rows, cols = ink.any(1).tolist(), ink.any(0).tolist()  # the ink's box, as lists: quicker
    x = x[rows.index(True): len(rows) - rows[::-1].index(True), cols.index(True): len(cols) - cols[::-1].index(True)]
    x = thicken(x)
    h, w = x.shape
    scale = 20 / max(h, w)
    h, w = max(1, round(h * scale)), max(1, round(w * scale))
    x = TF.resize(x[None], [h, w], antialias=True)[0].clamp(0, 1).numpy()  # at most 20x20: numpy from here
    cy, cx = x.sum(1) @ np.arange(h) / x.sum(), x.sum(0) @ np.arange(w) / x.sum()
    top, left = round(14 - cy), round(14 - cx)  # MNIST's centre of mass is (14, 14)
    canvas = np.zeros((28, 28), dtype=np.float32)
    y0, x0, y1, x1 = max(top, 0), max(left, 0), min(top + h, 28), min(left + w, 28)  # clipped to the canvas
    canvas[y0:y1, x0:x1] = x[y0 - top: y1 - top, x0 - left: x1 - left]
    return Image.fromarray((canvas * 255).round().astype(np.uint8), mode="L")


def drawn_strokes(x, size):
    """The strokes of a drawing made on a computer (the page's canvas, a paint program), white on
    black at the working size; None for anything else. Such a drawing has no noise (the caller
    checks), one flat shade all along its edge (so no desk and no clutter there), and no ink
    region thick enough to be a sheet of paper or a filled blob: a photo's cleanup would have
    nothing to do (its paper is the whole image, its top-hat takes off a flat background), and
    skipping it reads a drawing several times quicker."""
    edge = torch.cat([x[0], x[-1], x[:, 0], x[:, -1]])
    if not bool((edge == edge[0]).all()):
        return None
    ink = (x - edge[0]).abs()  # darker or lighter than the paper: either way it is ink
    # No square of ink a fifth of the side wide (the top-hat's width below): none holds a whole
    # block of a tenth of the side, while a sheet of paper or a blob does, and a pen stroke never.
    if solid_block(ink > 0.5 * ink.max(), max(1, max(x.shape) // 10)):
        return None
    return stretched(pooled(ink, size), 0.0, 0.0)


def photographed_strokes(x, size, noise):
    """The strokes of a photo or scan, white on black at the working size: sensor noise, the
    paper's polarity, a desk around it, uneven lighting and clutter at the edge taken out."""
    x = median3(x)  # paper grain and sensor noise: a 3x3 median removes specks, strokes survive
    # The paper, not the image's edge, decides the polarity: a thick light region (strokes are thin)
    # means dark ink on paper, which MNIST has the other way round; what lies around the paper
    # (a desk) is set to the paper's own shade. No such region: light ink on a dark ground.
    # The paper is large, so a coarse look finds it; but what counts as light is measured on the
    # image itself: in the preview a small digit's strokes are averaged into the paper, and the
    # preview's own range can be no more than the paper's noise or its uneven light.
    preview = F.adaptive_avg_pool2d(x[None, None], fit(x.shape[::-1], min(COARSE_SIDE, max(x.shape)))[::-1])[0, 0]
    paper = paper_mask(preview, *x.aminmax())
    # Down to the working size keeping each block's inkiest pixel, so a thin pencil line survives.
    if paper is None:
        x = pooled(x, size)
    else:
        shade = preview[paper].median()
        paper = F.interpolate(paper[None, None].float(), size=size, mode="nearest")[0, 0].bool()
        x = torch.where(paper, 1 + pooled(-x, size), 1 - shade)  # 1 - each block's darkest pixel
    # Uneven lighting and the desk: the background is what survives a grey-level opening with a
    # square wider than any stroke; subtracting it (a white top-hat) leaves the strokes on black.
    x = (x - opening(x, max(size) // 5 | 1)).clamp(min=0)
    return drop_border_clutter(stretched(x, x.median().item(), noise))  # the median: the paper's level


def stretched(x, level, noise):
    """x with the paper's level to 0 and the strokes to 1: from 20% to 80% of the way up to the
    brightest stroke, so faint noise and anti-aliased edges go to 0. Raises NoDigit when nothing
    stands out from the paper by more than the noise."""
    contrast = x.max().item() - level
    if contrast < max(0.1, 6 * noise):
        raise NoDigit("no digit found: the image is blank or has too little contrast")
    return (((x - level) / contrast - 0.2) / 0.6).clamp(0, 1)


def solid_block(mask, side):
    """Whether a (H, W) bool mask is all True over one of the side x side blocks it is cut into.
    Any all-True square of 2 * side - 1 or wider holds a whole block; a band narrower than side
    never does. A mask narrower than side has no block at all."""
    if side > min(mask.shape):
        return False
    return bool((F.avg_pool2d(mask[None, None].float(), side) == 1).any())


def pooled(x, size):
    """A (H, W) tensor brought down to size (h, w) keeping each block's largest value: the blocks
    of adaptive_max_pool2d, taken a dimension at a time as the maxima of a few gathered rows or
    columns, which is several times quicker here than the pooling kernel."""
    for dim, n in enumerate(size):
        m = x.shape[dim]
        if m == n:
            continue
        i = torch.arange(n)
        start, end = i * m // n, ((i + 1) * m + n - 1) // n  # block i is [start, end)
        out = x.index_select(dim, start)
        for step in range(1, int((end - start).max())):
            out = torch.maximum(out, x.index_select(dim, torch.minimum(start + step, end - 1)))
        x = out
    return x


def paper_mask(x, low, high):
    """Where a (H, W) image's paper is (a bool mask), or None when nothing light is thick enough to
    be paper. Light is over a third of the way from the darkest shade `low` to the lightest `high`
    (of the full image). The paper is the light part once thin strokes are opened away, and
    everything it encloses (the ink on it); the rest, reached from the image's edge, is a desk
    when it runs along a good part of that edge."""
    light = x > low + 0.35 * (high - low)  # paper in poor light still counts as light
    size = max(x.shape) // 15 | 1
    thick = max_filter(~max_filter(~light, size), size)  # an opening: thin light lines go
    if thick.float().mean() < 0.1:
        return None
    outside = reached_from_edge(~thick)
    edge = torch.cat([outside[0], outside[-1], outside[:, 0], outside[:, -1]])
    if edge.float().mean() < 0.2:  # ink running off the page, not a desk along its sides
        return torch.ones_like(thick)
    paper = ~max_filter(outside, 3)  # a margin: the paper's own edge is not ink
    return paper if paper.any() else None  # (in a few pixels' image the margin is all there is)


def reached_from_edge(mask):
    """The part of a bool mask connected to the image's edge through the mask (8-neighbours).

    Union-find for all pixels at once, where growing the edge's part a pixel at a time took a step
    per pixel along a winding stroke (a serpentine line: a second). Each pixel points to a pixel of
    its component with a smaller number, or to itself; the edge's pixels are number 0. Each round,
    for every two neighbours, the end of either's pointers is pointed at the other's end if that
    is smaller; then pointers are followed to their ends by doubling. A few rounds, each linear."""
    h, w = mask.shape
    edge = torch.zeros_like(mask)
    edge[0], edge[-1], edge[:, 0], edge[:, -1] = True, True, True, True
    if not (mask & edge).any():  # the usual case: nothing to find
        return torch.zeros_like(mask)
    number = torch.arange(1, h * w + 1).view(h, w)
    parent = torch.cat([torch.zeros(1, dtype=torch.long), torch.where(mask & edge, 0, number).flatten()])
    first, second = [], []  # the neighbours' numbers, pair by pair: right, below, below right, below left
    for dy, dx in ((0, 1), (1, 0), (1, 1), (1, -1)):
        a = slice(0, h - dy), slice(max(-dx, 0), w - max(dx, 0))
        b = slice(dy, h), slice(max(dx, 0), w - max(-dx, 0))
        both = mask[a] & mask[b]
        first.append(number[a][both])
        second.append(number[b][both])
    first, second = torch.cat(first), torch.cat(second)
    while True:
        ends = parent.index_select(0, first), parent.index_select(0, second)
        if not (ends[0] != ends[1]).any():
            return (parent[1:] == 0).view(h, w)
        parent.scatter_reduce_(0, ends[0], ends[1], "amin")
        parent.scatter_reduce_(0, ends[1], ends[0], "amin")
        while ((further := parent.index_select(0, parent)) != parent).any():
            parent = further


def drop_border_clutter(x):
    """Remove ink that touches the image's edge (a desk's corner, the paper's edge), unless
    the digit itself does: then nothing else would be left, and all is kept."""
    ink = x > 0.5
    reached = reached_from_edge(ink)
    if not reached.any() or (ink & ~reached).sum() < 0.3 * ink.sum():
        return x
    return x * ~max_filter(reached, 5)


def thicken(x):
    """Widen strokes far thinner than MNIST's (about a tenth of the digit's height; under half of
    that here): a fine pen or a light pencil would otherwise shrink to a faint line at 20x20."""
    ink = x > 0.5
    edge = ink & max_filter(~ink, 3)  # ink pixels with a paper neighbour
    width = 2 * ink.sum().item() / max(edge.sum().item(), 1)  # area / half the outline
    if width >= 0.05 * max(x.shape):
        return x
    return max_filter(x, round(0.08 * max(x.shape) - width) | 1)
