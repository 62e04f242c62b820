"""Opening an image file safely: the formats read, a decode budget, the image upright, in grey.

    gray, note = image_files.open_gray("my_digit.jpg")  # (H, W) float tensor in [0, 1], remark

Any file at all, however large, damaged or hostile, is read in about a second or refused with a
UserError of one line: only the six formats a photo, scan or drawing comes in are tried, and what
decoding will cost is estimated from the header (its size, mode and format, and the pieces Pillow
walks one at a time in Python) before a pixel is decoded. Large images are reduced in strips, a
phone's rotation (EXIF) is obeyed, and Pillow's and libtiff's messages are kept quiet during the
read only. photo.py makes the grey levels this returns look like MNIST.
"""
import ctypes
import functools
import io
import logging
import os
import struct
import threading
import warnings

import numpy as np
import torch
from PIL import ExifTags, Image, UnidentifiedImageError

from machinery import paths
from machinery.cli import UserError

WORK_SIDE = 1024  # larger images are reduced to this before any full-size conversion
MAX_PIXELS = 180_000_000  # a 13,400 x 13,400 scan; beyond it an image is refused, not decoded
MAX_BYTES = 64 * 2**20  # a file larger than this is refused by its size before a byte is read (a photo
# is a few MB; 64 MB are read and their JPEG scans counted in 0.2 s): a sparse 20 GB JPEG took 74 s
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


class TooLarge(UserError):
    """More than this reads: pixels, or the cost of decoding them."""


def open_gray(source, max_pixels=MAX_PIXELS):
    """(float tensor (H, W) in [0, 1] with H, W <= WORK_SIDE, remark) for a path or bytes."""
    if not isinstance(source, (bytes, bytearray)):
        if os.path.isdir(source):
            raise UserError("a folder, not an image")
        paths.check_target(source, "an image", "pass an image file", named=False)  # a FIFO, a dangling link...
        if not os.path.exists(source):
            raise UserError("no such file")
    try:
        with quiet(), (io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else open_file(source)) as f:
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


def open_file(path):
    """The image file at path, through the path gate: a regular file (not a FIFO, a socket, a device or a
    dangling link, refused without waiting on it) of at most MAX_BYTES by its size, else UserError."""
    return paths.open_regular(path, "an image", "pass an image file", MAX_BYTES,
                              f"more than an image file this reads ({MAX_BYTES // 2**20} MB at most): "
                              "scale it down, or save it again with an image program", named=False)


def check_mode(image):
    """UserError unless Pillow can turn this image's mode into grey (it cannot a LAB TIFF's, and said so in
    its own words): tried on one pixel, before anything is decoded."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):  # to_gray reads these itself
        return
    alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info  # as to_gray has it
    try:
        Image.new(image.mode, (1, 1)).convert("RGBA" if alpha else "L")
    except (ValueError, OSError, KeyError):
        raise UserError(f"its colours are in {image.mode} mode, which this cannot turn into grey: save it again "
                        "as RGB or greyscale with an image program") from None


class Quiet:
    """Pillow's warnings on a damaged file ('Corrupt EXIF data'), its log lines ('More samples per
    pixel than can be decoded', which logging's last resort prints) and what libtiff prints to
    stderr itself are kept from the user while a file is read: photo.read_digit's one line says it
    all. Each is a setting of the whole process, so the first reader in changes them and the last
    one out puts them back, in whichever thread; readers in other threads meanwhile share them
    (draw.py reads a drawing while a slow photo is being read). catch_warnings entered by each
    reader is not thread-safe: 600 reads in 8 threads left its filter behind for good. (Python's
    warnings filters are the process's up to 3.13; 3.14's context-aware warnings, the default of its
    free-threaded build only, would keep them per thread.)"""

    def __init__(self):
        self.lock, self.readers, self.put_back = threading.Lock(), 0, None

    def __enter__(self):
        with self.lock:
            if not self.readers:
                self.put_back = quieted()
            self.readers += 1

    def __exit__(self, *exc):
        with self.lock:
            self.readers -= 1
            if not self.readers:
                self.put_back()


def quieted():
    """Quiet Pillow's warnings and loggers and libtiff, returning what puts them back."""
    Image.init()  # Pillow's formats registered in Image.OPEN, and their modules' loggers made (once)
    loggers = [logger for name, logger in list(logging.root.manager.loggerDict.items())
               if name.startswith("PIL.") and isinstance(logger, logging.Logger)]
    caught = warnings.catch_warnings()
    caught.__enter__()
    try:
        warnings.filterwarnings("ignore", module=r"PIL\.")
        disabled, handlers = [logger.disabled for logger in loggers], libtiff_handlers(None, None)
    except BaseException:
        caught.__exit__(None, None, None)
        raise
    for logger in loggers:
        logger.disabled = True

    def put_back():
        try:
            for logger, was in zip(loggers, disabled):
                logger.disabled = was
            libtiff_handlers(*handlers)
        finally:
            caught.__exit__(None, None, None)
    return put_back


QUIET = Quiet()


def quiet():
    """`with quiet():` Pillow and libtiff say nothing while a file is read (see Quiet)."""
    return QUIET


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
        check_mode(image)
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
    """The cost of reading an opened image, pieces_ns with decoding (nanoseconds, as BUDGET_NS); TooLarge
    unless it is within max_pixels and BUDGET_NS. A JPEG is set to be decoded at the smallest scale
    that keeps WORK_SIDE."""
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
    return pieces_ns + cost


def read_cost(data):
    """(seconds, pixels): what decoding the bytes of an image costs by the budget's reckoning, from
    its header and the pieces Pillow walks (as many as the bytes hold: a server looks at small
    files only), and the pixels it has once reduced to WORK_SIDE. (0, 0) for a file refused before
    decoding, which is as quick to refuse again."""
    f = io.BytesIO(data)
    try:
        with quiet():
            image, pieces_ns = opened(f)
            with image:
                cost = check_cost(image, f, pieces_ns, MAX_PIXELS)
                factor = -(-max(image.size) // WORK_SIDE)
                return cost / 1e9, -(-image.width // factor) * -(-image.height // factor)
    except Exception:  # refused, or not an image of the formats read
        return 0.0, 0


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
