"""The slowest images to read: hostile files under 4 MB, each built here, timed through photo.read_digit.

    python benchmarks/photo_worst.py [--repeat 3]

Each file is made to cost as much as image_files.py lets it (its size, mode and pieces just within
the budget) or to cost far more than it (refused before decoding); the time is the best of --repeat
reads, with one torch thread as evaluate.py and draw.py use. The cost model in image_files.py
(BUDGET_NS) is meant to keep every one within about a second on the 2-core machine of the README.
"""
import argparse
import math
import os
import sys
import time

import torch

from hostile_images import (chunk, digit_page, gif_with_comment, jpeg_markers, jpeg_scans, largest_read, png_of,
                            rle_bmp, saved, serpentine, tiff_tiles)

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from machinery import photo  # noqa: E402
from machinery.cli import UserError  # noqa: E402


def cases():
    """(name, bytes) of each hostile file."""
    yield "serpentine drawing, touches the edge once", serpentine()
    for rle4 in (False, True):
        name = "RLE4" if rle4 else "RLE8"
        side = largest_read(lambda s: rle_bmp(s, rle4))
        yield f"{name} BMP {side}x{side}, the largest read", rle_bmp(side, rle4)
        yield f"{name} BMP 7000x7000", rle_bmp(7000, rle4)
    for colour, name in ((0, "grey"), (6, "RGBA"), (2, "RGB"), (4, "grey+alpha")):
        side = largest_read(lambda s: png_of(s, s, colour))
        yield f"{name} PNG {side}x{side}, the largest read", png_of(side, side, colour)
    side = largest_read(lambda s: png_of(s, s, 0, 16))
    yield f"16-bit grey PNG {side}x{side}, the largest read", png_of(side, side, 0, 16)
    yield "RGBA PNG 13300x13300 (700 MB of pixels)", png_of(13300, 13300, 6)
    for fmt, mode, options in (("GIF", "L", {}), ("PNG", "P", {}), ("WEBP", "RGB", {"quality": 10}),
                               ("WEBP", "RGBA", {"lossless": True}), ("TIFF", "L", {"compression": "tiff_deflate"}),
                               ("TIFF", "RGB", {"compression": "jpeg"}), ("TIFF", "1", {"compression": "group4"})):
        side = largest_read(lambda s: saved(digit_page((s, s), mode), fmt, **options), high=12_000)
        yield (f"{mode} {fmt} {side}x{side}{' ' + str(options) if options else ''}, the largest read",
               saved(digit_page((side, side), mode), fmt, **options))
    yield "JPEG 13000x13000", saved(digit_page((13000, 13000)), "JPEG", quality=50)
    scans = largest_read(lambda n: jpeg_scans(2000, n), 1, 5000)
    yield f"progressive JPEG 2000x2000 of {scans} scans, the most read", jpeg_scans(2000, scans)
    yield f"progressive JPEG 2000x2000 of {2 * scans} scans", jpeg_scans(2000, 2 * scans)
    jpeg = saved(digit_page((64, 64)), "JPEG")
    pieces = {
        "PNG with {:,} empty chunks before its pixels": lambda n: png_of(64, 64, before=chunk(b"abCd", b"") * n),
        "PNG with {:,} empty chunks after its pixels": lambda n: png_of(64, 64, after=chunk(b"abCd", b"") * n),
        "JPEG with {:,} empty markers": jpeg_markers,
        "JPEG with {:,} fill bytes": lambda n: jpeg[:2] + b"\xff" * n + jpeg[2:],
        "GIF with a comment of {:,} blocks": lambda n: gif_with_comment(n),
        "TIFF in {:,} tiles of 16x16": lambda n: tiff_tiles(16 * math.isqrt(n)),
    }
    for name, make in pieces.items():
        n = largest_read(make, 1, 1_000_000)
        yield name.format(n) + ", the most read", make(n)
        more = 4 * n
        while len(make(more)) >= 4 * 2**20:
            more = more * 3 // 4
        yield name.format(more), make(more)


def timed(data, repeat):
    best, outcome = float("inf"), ""
    for _ in range(repeat):
        start = time.perf_counter()
        try:
            photo.read_digit(data)
            outcome = "read"
        except UserError as e:
            outcome = f"refused: {e}"
        best = min(best, time.perf_counter() - start)
    return best, outcome


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    worst = 0.0
    for name, data in cases():
        assert len(data) < 4 * 2**20, (name, len(data))
        seconds, outcome = timed(data, args.repeat)
        worst = max(worst, seconds)
        print(f"{seconds:6.2f} s  {len(data) / 1e3:8.1f} KB  {name}: {outcome[:90]}", flush=True)
    print(f"worst: {worst:.2f} s")


if __name__ == "__main__":
    main()
