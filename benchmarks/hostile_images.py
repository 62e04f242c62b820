"""Hostile image files, built here to cost as much to read as image_files.py lets them, or more.

photo_worst.py times each one; draw_load.py posts the slowest of them to draw.py beside an honest
client. `largest_read(make)` finds, by bisection, the largest n whose make(n) image_files.py still
reads rather than refusing it before decoding.
"""
import io
import os
import struct
import sys
import zlib

from PIL import Image, ImageDraw

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from machinery import image_files  # noqa: E402


def chunk(kind, body):
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_of(width, height, colour=0, depth=8, before=b"", after=b""):
    """A PNG (colour type 0 grey, 2 RGB, 4 grey+alpha, 6 RGBA) of a black bar on white, compressed
    row by row, with raw chunks before and after its pixels."""
    size = (width * {0: 1, 2: 3, 4: 2, 6: 4}[colour] * depth + 7) // 8
    white = b"\0" + b"\xff" * size
    bar = (b"\0" + b"\xff" * (size * 9 // 20) + b"\0" * (size // 10)).ljust(len(white), b"\xff")
    packer, rows = zlib.compressobj(9), bytearray()
    for y in range(height):
        rows += packer.compress(bar if height // 4 < y < height * 3 // 4 else white)
    rows += packer.flush()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0))
            + before + chunk(b"IDAT", bytes(rows)) + after + chunk(b"IEND", b""))


def rle_bmp(side, rle4=False):
    """An RLE8 or RLE4 BMP: one pixel, then end-of-line, on every row: a few bytes a row, and
    Pillow's decoder, written in Python, fills each row to its end a pixel at a time."""
    pixels = bytes([1, 1, 0, 0]) * side + b"\0\1"
    palette = b"\xff\xff\xff\0" + b"\0" * 4 * ((16 if rle4 else 256) - 1)
    offset = 14 + 40 + len(palette)
    info = struct.pack("<IiiHHIIiiII", 40, side, side, 1, 4 if rle4 else 8, 2 if rle4 else 1, len(pixels), 0, 0, 0, 0)
    return b"BM" + struct.pack("<IHHI", offset + len(pixels), 0, 0, offset) + info + palette + pixels


def serpentine(side=256, width=3):
    """A line winding back and forth across a black drawing, touching the left edge once: the
    edge cleanup followed it a pixel at a time."""
    image = Image.new("L", (side, side), 0)
    draw = ImageDraw.Draw(image)
    y, right = 2, True
    while y + 2 * width < side - 2:
        draw.rectangle([2, y, side - 3, y + width - 1], fill=255)
        x = side - 2 - width if right else 2
        draw.rectangle([x, y, x + width - 1, y + 2 * width], fill=255)
        y, right = y + 2 * width, not right
    draw.rectangle([0, 2, 2, 2 + width - 1], fill=255)
    return saved(image, "PNG", optimize=True)


def saved(image, fmt, **options):
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def digit_page(size, mode="L"):
    """A 7 drawn on light paper."""
    page = Image.new("L", size, 235)
    w, h = size
    ImageDraw.Draw(page).line([(w * 0.3, h * 0.2), (w * 0.7, h * 0.2), (w * 0.45, h * 0.8)], fill=20,
                              width=max(3, w // 40))
    return page.convert(mode, dither=Image.Dither.NONE)


def tiff_tiles(side, tile=16):
    """An uncompressed TIFF of side x side in tile x tile tiles, all of them the same bytes."""
    n = (side // tile) ** 2
    pixels = b"\xff" * tile * tile
    offsets_at = 8 + len(pixels)
    counts_at = offsets_at + 4 * n
    entries = [(256, 4, 1, side), (257, 4, 1, side), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 1),
               (322, 3, 1, tile), (323, 3, 1, tile), (324, 4, n, offsets_at), (325, 4, n, counts_at)]
    directory = struct.pack("<H", len(entries)) + b"".join(
        struct.pack("<HHII", tag, kind, count, value) for tag, kind, count, value in entries) + b"\0\0\0\0"
    return (b"II*\0" + struct.pack("<I", counts_at + 4 * n) + pixels + struct.pack(f"<{n}I", *[8] * n)
            + struct.pack(f"<{n}I", *[len(pixels)] * n) + directory)


def jpeg_scans(side, scans):
    """A progressive JPEG whose last scan is repeated: libjpeg decodes each one over all the pixels."""
    data = saved(digit_page((side, side)), "JPEG", progressive=True, quality=90)
    last = data.rindex(b"\xff\xda")
    return data[:-2] + data[last:-2] * scans + b"\xff\xd9"


def jpeg_markers(count):
    """A small JPEG with `count` empty markers before its pixels: Pillow walks each one in Python."""
    jpeg = saved(digit_page((64, 64)), "JPEG")
    return jpeg[:2] + b"\xff\xe5\x00\x02" * count + jpeg[2:]


def gif_with_comment(blocks):
    """A GIF with a comment of `blocks` one-byte blocks before its image."""
    data = saved(digit_page((64, 64), "L"), "GIF")
    at = data.index(b",")
    return data[:at] + b"\x21\xfe" + b"\x01A" * blocks + b"\0" + data[at:]


def refused_unread(data):
    """Whether image_files.py refuses data before decoding it (its pieces, size or cost)."""
    return image_files.read_cost(data) == (0.0, 0)


def largest_read(make, low=16, high=20_000):
    """The largest n for which make(n) is not refused unread, by bisection (make(low) is read)."""
    while high - low > max(1, low // 100):
        middle = (low + high) // 2
        low, high = (low, middle) if refused_unread(make(middle)) else (middle, high)
    return low
