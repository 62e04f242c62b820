"""Your own digit: a photo, scan or drawing of one digit made into the 28x28 image MNIST would have.

    small, x, note = photo.read_digit("my_digit.jpg")  # 'L' image, (1, 28, 28) tensor, remark
    probabilities = photo.classify(model, x, device)

As MNIST was made: light ink on black, the ink fitted into a 20x20 box keeping its aspect ratio
(anti-aliased), pasted into 28x28 with its centre of mass at the centre. evaluate.py --image
and draw.py both go through read_digit. Problems are a UserError with one line to show.

First the file is read (open_gray down to to_gray): what it costs is known before a pixel is
decoded, and refused over about a second's work. Then the strokes are found (mnist_style on).
"""
import contextlib
import ctypes
import functools
import io
import logging
import os
import stat
import struct
import threading
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from PIL import ExifTags, Image, UnidentifiedImageError
from torchvision.transforms import functional as TF

from cli import UserError

WORK_SIDE = 1024  # larger images are reduced to this before any full-size conversion
SMALL_SIDE = 256  # the strokes are worked on at this size: plenty for a 20x20 result, and quick
COARSE_SIDE = 64  # the paper is found at this size
MAX_PIXELS = 180_000_000  # a 13,400 x 13,400 scan; beyond it an image is refused, not decoded
FORMATS = ["PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF"]  # what a photo, scan or drawing comes in:
# Pillow is not to try the 30-odd others it knows, any of which a damaged file may pass for

# Reading an image is bounded before anything is decoded, by what it declares: its size, its mode
# and format, and the pieces Pillow's own Python code walks one at a time. The cost, in
# nanoseconds on the 2-core machine of benchmarks/photo_worst.py, must stay within about 0.8 s,
# so any file reads in about a second with the steps after it.
BUDGET_NS = 800_000_000
BYTE_NS = 12  # a byte of decoded pixels, decoded and reduced: see decode_ns
PYTHON_DECODER = 20  # times as much where Pillow decodes in Python: an RLE-compressed BMP
SCAN_PIXEL_NS = 1  # a JPEG's pixel, per scan: its coefficients are decoded at full size, however small the draft
PIECES = {"PNG": (10_000, "chunks"), "JPEG": (4_000, "markers and stray bytes before its pixels"),
          "GIF": (1_000, "blocks"), "TIFF": (25_000, "tags, strips and tiles")}  # nanoseconds each
TRANSPOSE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
             5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
             8: Image.Transpose.ROTATE_90}  # EXIF orientation -> what shows the image upright, as ImageOps has it
PILLOW = threading.Lock()  # one reader at a time while quiet() has the process's settings changed


class TooLarge(UserError):
    """More than this reads: pixels, or the cost of decoding them."""


class NoDigit(UserError):
    """Nothing stands out from the paper."""


def read_digit(source, max_pixels=MAX_PIXELS):
    """(28x28 'L' image, its (1, 28, 28) ToTensor tensor, a remark or '') for a path or bytes."""
    gray, note = open_gray(source, max_pixels)
    try:
        small = mnist_style(gray)
    except NoDigit:
        if not note:
            raise
        raise NoDigit("no digit found: the first frame, the only one read of several, is blank "
                      "or has too little contrast") from None
    return small, torch.from_numpy(np.asarray(small, dtype=np.float32) / 255)[None], note  # as ToTensor


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
    if not isinstance(source, (bytes, bytearray)):
        if os.path.isdir(source):
            raise UserError("a folder, not an image")
        if not os.path.exists(source):
            raise UserError("no such file")
        if not stat.S_ISREG(os.stat(source).st_mode):
            raise UserError("not a regular file (a device, FIFO or socket): pass an image file")
    try:
        with quiet(), (io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else open(source, "rb")) as f:
            gray, several = decoded(f, max_pixels)
    except UserError:
        raise
    except UnidentifiedImageError:
        raise UserError("not an image that PIL can read (PNG, JPEG, ...)") from None
    except Image.DecompressionBombError:  # Pillow's own limit, met past a GIF's declared size (a frame beyond it)
        raise TooLarge(f"more pixels than this reads ({max_pixels / 1e6:.0f} megapixels); "
                       "scale it down first") from None
    except Exception as e:  # a damaged file fails inside Pillow in any way: OSError, TypeError, ...
        raise UserError(f"cannot read this image ({' '.join(str(e).split()) or type(e).__name__})") from None
    if min(gray.shape) < 1:
        raise UserError("the image is empty")
    return gray, ("the first of several frames was read" if several else "")


@contextlib.contextmanager
def quiet():
    """Pillow's warnings on a damaged file ('Corrupt EXIF data'), its log lines ('More samples per
    pixel than can be decoded', which logging's last resort prints) and what libtiff prints to
    stderr itself are kept from the user while a file is read: read_digit's one line says it all.
    Each is a setting of the whole process, so each is changed for the read only and put back after,
    one reader at a time: catch_warnings alone is not thread-safe (readers in several threads at
    once left its filter behind for good)."""
    Image.init()  # Pillow's formats registered in Image.OPEN, and their modules' loggers made (once)
    loggers = [logger for name, logger in list(logging.root.manager.loggerDict.items())
               if name.startswith("PIL.") and isinstance(logger, logging.Logger)]
    with PILLOW, warnings.catch_warnings():
        warnings.filterwarnings("ignore", module=r"PIL\.")
        disabled, handlers = [logger.disabled for logger in loggers], libtiff_handlers(None, None)
        for logger in loggers:
            logger.disabled = True
        try:
            yield
        finally:
            for logger, was in zip(loggers, disabled):
                logger.disabled = was
            libtiff_handlers(*handlers)


def libtiff_handlers(warning, error):
    """Set libtiff's warning and error handlers (None: it prints nothing; the error still reaches
    Pillow), returning the two it had. Pillow has no switch for them; libtiff, which its C module
    links, has."""
    setters = libtiff_setters()
    return (setters[0](warning), setters[1](error)) if setters else (None, None)


@functools.cache
def libtiff_setters():
    try:
        library = ctypes.CDLL(Image.core.__file__)
        setters = library.TIFFSetWarningHandler, library.TIFFSetErrorHandler
    except (OSError, AttributeError):  # a Pillow without libtiff, or built into one file: nothing to set
        return None
    for setter in setters:
        setter.restype, setter.argtypes = ctypes.c_void_p, [ctypes.c_void_p]
    return setters


def decoded(f, max_pixels):
    """(to_gray's grey levels, whether there are more frames) of an image file, upright, reduced
    to at most WORK_SIDE."""
    image, pieces_ns = opened(f)
    with image:
        check_cost(image, f, pieces_ns, max_pixels)
        # Whether there are more frames, not how many: counting reads every one (a 3 MB TIFF of
        # 30,000 directories took 11 s), where this looks at the next one at most.
        several = getattr(image, "is_animated", False)
        # Reduce first, so conversions work on the small copy; a phone's rotation (EXIF) is read once
        # the pixels are (a PNG may keep it after them) and applied to what they became.
        small = reduced(image, -(-max(image.size) // WORK_SIDE)) if max(image.size) > WORK_SIDE else image
        small.load()
        turn = TRANSPOSE.get(image.getexif().get(ExifTags.Base.Orientation))
        return to_gray(small.transpose(turn) if turn else small), several


def check_cost(image, f, pieces_ns, max_pixels):
    """TooLarge unless an opened image is within max_pixels and its cost, with pieces_ns, within
    BUDGET_NS; a JPEG is set to be decoded at the smallest scale that keeps WORK_SIDE."""
    width, height = image.size
    if width * height > max_pixels:  # the header's size: nothing decoded yet
        raise TooLarge(f"{width}x{height} pixels is more than this reads "
                       f"({max_pixels / 1e6:.0f} megapixels); scale it down first")
    image.draft(image.mode, (WORK_SIDE, WORK_SIDE))  # JPEG: decode at 1/2, 1/4 or 1/8 size
    cost = decode_ns(image, width * height, f)
    if pieces_ns + cost > BUDGET_NS:
        limit = (BUDGET_NS - pieces_ns) / (cost / (width * height)) / 1e6
        raise TooLarge(f"{width}x{height} pixels is more than this reads ({limit:.1f} megapixels for this "
                       f"{kind(image, f)}); scale it down first")


def opened(f):
    """(the image in file f as Image.open(f, formats=FORMATS) opens it, what Pillow's walk through
    its pieces costs), within quiet(), which has Pillow's formats registered. Image.open itself
    would first check the size against Image.MAX_IMAGE_PIXELS, a limit of the whole process, in its
    own words; decoded() checks it in ours. Before Pillow parses the file, the pieces it would walk
    one at a time in Python are counted: a hostile file packs millions of them in a few MB (a JPEG
    of 900,000 empty markers took 7 s to open)."""
    prefix = f.read(16)
    for fmt in FORMATS:
        factory, accept = Image.OPEN.get(fmt, (None, lambda prefix: False))  # (WebP: where Pillow has it)
        if not accept(prefix):
            continue
        f.seek(0)
        ns_each, what = PIECES.get(fmt, (0, ""))
        pieces = WALKS[fmt](f, BUDGET_NS // ns_each + 1) if ns_each else 0
        if pieces * ns_each > BUDGET_NS:
            raise UserError(f"this {fmt} is cut into more than {BUDGET_NS // ns_each:,} {what}, far more than an "
                            "image needs: save it again with an image program")
        f.seek(0)
        try:
            return factory(f, ""), pieces * ns_each
        except (SyntaxError, IndexError, TypeError, struct.error):  # not this format after all, as Image.open has it
            continue
    raise UnidentifiedImageError("not an image of the formats read")


def decode_ns(image, declared, f):
    """What decoding an opened image and reducing it costs, from its size and mode (and a JPEG's
    scans), before anything is decoded."""
    # Pillow holds RGB in 4 bytes a pixel; a palette image takes 1, but is reduced as RGBA.
    cost = image.width * image.height * BYTE_NS * {"1": 1, "L": 1, "P": 2}.get(image.mode, 4)
    if any(tile.codec_name in Image.DECODERS for tile in image.tile):  # a decoder written in Python
        cost *= PYTHON_DECODER
    if image.format in ("JPEG", "MPO"):
        cost += declared * jpeg_scans(f) * SCAN_PIXEL_NS
    return cost


def kind(image, f):
    """'RGBA PNG', 'RLE-compressed BMP', 'JPEG of 12 scans'... for a message."""
    if any(tile.codec_name in Image.DECODERS for tile in image.tile):
        return f"RLE-compressed {image.format}"
    if image.format in ("JPEG", "MPO"):
        return f"JPEG of {jpeg_scans(f):,} scans"
    shade = {"1": "black-and-white", "L": "grey", "P": "palette"}.get(image.mode, image.mode)
    return f"{shade} {image.format}"


def jpeg_scans(f):
    """The scans (start-of-scan markers) in a JPEG file, counted a MB at a time."""
    f.seek(0)
    scans, last = 0, b""
    while block := f.read(1 << 20):
        scans += (last + block).count(b"\xff\xda")  # the byte before: a marker cut in two is counted once
        last = block[-1:]
    return max(scans, 1)


def png_pieces(f, limit):
    """The chunks Pillow reads one by one: all of them, to the end (the EXIF may come last)."""
    f.seek(8)
    pieces = 0
    while pieces < limit and len(head := f.read(8)) == 8 and head[4:] != b"IEND":
        f.seek(int.from_bytes(head[:4], "big") + 4, os.SEEK_CUR)  # its data and CRC
        pieces += 1
    return pieces


def jpeg_pieces(f, limit):
    """What Pillow's JPEG reader walks, up to the first scan: each marker, and each byte between
    them (stray bytes and fill bytes are read one at a time)."""
    f.seek(2)
    pieces = 0
    while pieces < limit and (byte := f.read(1)):
        pieces += 1
        if byte != b"\xff":
            continue
        marker = f.read(1)
        if marker == b"\xff":  # a fill byte: the next one starts the marker
            f.seek(-1, os.SEEK_CUR)
        elif marker in (b"", b"\xda"):  # the first scan: libjpeg takes it from here
            break
        elif marker not in (b"\x00", b"\x01") and not b"\xd0" <= marker <= b"\xd9":  # a marker with a length
            f.seek(max(int.from_bytes(f.read(2), "big") - 2, 0), os.SEEK_CUR)
    return pieces


def gif_pieces(f, limit):
    """The blocks Pillow reads one by one: those before the first image, and (to learn whether a
    second one follows) those of the first image and after it, up to the second."""
    header = f.read(13)
    if len(header) == 13 and header[10] & 0x80:
        f.seek(3 << ((header[10] & 7) + 1), os.SEEK_CUR)  # the global colour table
    pieces = images = 0
    while pieces < limit and images < 2:
        block = f.read(1)
        if block == b"!":
            f.seek(1, os.SEEK_CUR)  # the extension's label
        elif block == b",":
            images += 1
            descriptor = f.read(9)
            if len(descriptor) == 9 and descriptor[8] & 0x80:
                f.seek(3 << ((descriptor[8] & 7) + 1), os.SEEK_CUR)  # a local colour table
            f.seek(1, os.SEEK_CUR)  # the LZW code size
        else:
            break
        while pieces < limit and (size := f.read(1)) not in (b"", b"\0"):
            f.seek(size[0], os.SEEK_CUR)
            pieces += 1
        pieces += 1
    return pieces


def tiff_pieces(f, limit):
    """The tags of the first two image directories (the second is read to learn whether there is
    one), and the strips or tiles of the first: Pillow reads each tag, and makes a piece of each
    strip or tile, one at a time."""
    head = f.read(16)
    order = "<" if head[:2] == b"II" else ">"
    big = head[2:4] in (b"+\0", b"\0+")  # BigTIFF: 8-byte counts and offsets, 20-byte tags
    number = struct.Struct(order + ("Q" if big else "I"))  # an offset, or a tag's count of values
    tags, size = struct.Struct(order + ("Q" if big else "H")), 20 if big else 12  # a directory's count of tags; a tag
    at = number.unpack_from(head, 8 if big else 4)[0] if len(head) >= (16 if big else 8) else 0
    pieces = 0
    for directory in range(2):
        f.seek(at)
        raw = f.read(tags.size)
        if not at or len(raw) < tags.size:
            break
        count = tags.unpack(raw)[0]
        pieces += count
        if pieces >= limit:
            break
        table = f.read(count * size)
        for i in range(0, len(table) - size + 1, size) if directory == 0 else ():
            if struct.unpack_from(order + "H", table, i)[0] in (273, 324):  # StripOffsets, TileOffsets
                pieces += number.unpack_from(table, i + 4)[0]  # how many there are
        raw = f.read(number.size)
        at = number.unpack(raw)[0] if len(raw) == number.size else 0
    return pieces


WALKS = {"PNG": png_pieces, "JPEG": jpeg_pieces, "GIF": gif_pieces, "TIFF": tiff_pieces}


def reduced(image, factor):
    """image scaled down by an integer factor with box averages, a strip at a time: resizing it whole
    would first make a full-size copy (RGBA to RGBa), as large as the decoded image itself. A
    palette image's pixels are indices into its colours, not shades to average (Pillow would take
    one of each box, and the copy would lose the palette and transparency): each strip is turned
    into its colours, and transparency, first; so is each of a 1-bit image's."""
    mode = {"P": "RGBA", "PA": "RGBA", "1": "L"}.get(image.mode, image.mode)
    width, height = image.size
    out = Image.new(mode, (-(-width // factor), -(-height // factor)))
    step = 64 * factor
    for top in range(0, height, step):
        strip = image.crop((0, top, width, min(top + step, height))).convert(mode)
        out.paste(strip.resize((out.width, -(-strip.height // factor)), Image.Resampling.BOX), (0, top // factor))
    return out


def fit(size, side):
    scale = side / max(size)
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


def to_gray(image):
    """Grey levels in [0, 1]: transparency counts as paper, 16-bit data keeps its range."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        values = np.asarray(image, dtype=np.float32)
        known = np.isfinite(values)  # a float image may hold NaN (or infinity) where it has no value:
        if not known.all():  # such a pixel takes the image's typical shade (its paper, mostly)
            values = np.where(known, values, np.median(values[known]) if known.any() else 0)
        top = 1.0 if values.max() <= 1 else 255.0 if values.max() <= 255 else 65535.0
        return torch.from_numpy(values / top).clamp(0, 1)
    opaque = image.mode in ("RGBA", "LA") and image.getchannel("A").getextrema() == (255, 255)
    if not opaque and (image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info):
        paper = Image.new("RGBA", image.size, "white")  # transparent means paper, not black
        image = Image.alpha_composite(paper, image.convert("RGBA"))  # (a browser's canvas is opaque)
    return torch.from_numpy(np.asarray(image.convert("L"), dtype=np.float32) / 255)


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
