"""photo.py: photos, scans and drawings brought to MNIST's format: polarity from the paper, thin
strokes kept, a digit read alike on any page; image_files.py, through photo.read_digit: odd files
(16-bit, palette, animated, huge, damaged, FIFOs) read safely or refused in one line; on real
data, the model reads photos of test digits about as well as the digits themselves."""
import ctypes
import importlib
import io
import logging
import math
import os
import random
import struct
import threading
import warnings
import zlib

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, TiffImagePlugin, WebPImagePlugin
from torchvision import transforms

from machinery import checkpoint
import data
from machinery import image_files
from machinery import photo as ph
from machinery.cli import UserError
from conftest import ROOT, chunk, huge_png, peak_memory




def photograph(digit, g):
    """An MNIST digit made to look photographed: dark ink on light paper, 3-5x larger, off-centre
    on a larger page, lit unevenly, with sensor noise."""
    size = round(28 * (3 + 2 * torch.rand(1, generator=g).item()))
    ink = Image.fromarray(digit.numpy(), mode="L").resize((size, size), Image.Resampling.BICUBIC)
    h, w = round(size * 1.7), size * 2
    page = torch.zeros(h, w)
    top, left = (int(torch.randint(0, n - size, (1,), generator=g)) for n in (h, w))
    ink = torch.frombuffer(bytearray(ink.tobytes()), dtype=torch.uint8).view(size, size)
    page[top:top + size, left:left + size] = ink / 255
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    paper = 0.95 - 0.35 * (0.6 * xx + 0.4 * yy)  # the light falls off across the page
    image = paper * (1 - 0.8 * page) + 0.04 * torch.randn(h, w, generator=g)
    return Image.fromarray((image.clamp(0, 1) * 255).round().to(torch.uint8).numpy(), mode="L")


def encoded(image, fmt, **options):
    buf = io.BytesIO()
    image.save(buf, fmt, **({"quality": 85} if fmt == "JPEG" else {}), **options)
    buf.seek(0)
    return buf


def drawn(digit):
    """A digit drawn with PIL: dark blue ink on off-white paper, in colour."""
    image = Image.new("RGB", (240, 320), (235, 232, 220))
    pen = {"fill": (30, 30, 60), "width": 18}
    d = ImageDraw.Draw(image)
    if digit == 0:
        d.ellipse([70, 60, 170, 260], outline=pen["fill"], width=pen["width"])
    elif digit == 1:
        d.line([(130, 60), (120, 260)], **pen)
    elif digit == 3:
        d.arc([70, 60, 170, 160], 210, 90, **pen)
        d.arc([70, 160, 170, 260], 270, 150, **pen)
    elif digit == 4:
        d.line([(140, 260), (140, 60), (60, 190), (190, 190)], joint="curve", **pen)
    elif digit == 7:
        d.line([(60, 70), (180, 70), (100, 260)], joint="curve", **pen)
    return image


def read(source):
    """read_digit's (28x28 image, tensor) for a path or a BytesIO."""
    small, x, _ = ph.read_digit(source.getvalue() if isinstance(source, io.BytesIO) else str(source))
    return small, x


def trained_model(real_run):
    out, _ = real_run
    return checkpoint.model_from(checkpoint.load(str(out / "model.pt")), "model.pt").eval()


def ink_box_and_centre(x):
    """(longest side of the ink's bounding box, centre of mass (y, x)) of a (28, 28) image."""
    rows, cols = (x > 0).any(1).nonzero(), (x > 0).any(0).nonzero()
    side = max(rows.max() - rows.min() + 1, cols.max() - cols.min() + 1).item()
    r = torch.arange(28, dtype=torch.float32)
    return side, ((x.sum(1) * r).sum() / x.sum()).item(), ((x.sum(0) * r).sum() / x.sum()).item()


def test_output_is_mnist_shaped_whatever_the_polarity(monkeypatch):
    bar = Image.new("L", (300, 400), 230)
    ImageDraw.Draw(bar).line([(100, 50), (200, 350)], fill=20, width=25)
    inverted = Image.eval(bar, lambda v: 255 - v)
    small, x = read(encoded(bar, "PNG"))
    assert small.size == (28, 28) and x.shape == (1, 28, 28) and x.dtype == torch.float32
    assert torch.equal(x, transforms.ToTensor()(small))  # what the network was trained on
    assert torch.equal(x, read(encoded(inverted, "PNG"))[1])
    side, cy, cx = ink_box_and_centre(x[0])
    assert side == 20 and abs(cy - 14) <= 0.5 and abs(cx - 14) <= 0.5  # as MNIST: 20x20 box, centre of mass
    assert x.max() >= 0.9 and x[0, 0, 0] == 0.0  # white ink on black
    # A clean drawing takes the quick way; with noise the photo way, where the paper, not the edge,
    # decides the polarity: dark on light paper, grey paper in poor light, light on a dark board.
    photo_way = []
    monkeypatch.setattr(ph, "photographed_strokes",
                        lambda *args, strokes=ph.photographed_strokes: photo_way.append(1) or strokes(*args))
    for image in (bar, inverted, Image.eval(bar, lambda v: v * 100 // 255)):
        _, x_photo = read(encoded(with_noise(image), "PNG"))
        assert cosine(x, x_photo) > 0.95 and x_photo[0, 0, 0] == 0.0
    assert len(photo_way) == 3


def test_transparent_background_counts_as_paper():
    image = Image.new("RGBA", (200, 200), (0, 0, 0, 0))
    ImageDraw.Draw(image).line([(100, 30), (100, 170)], fill=(0, 0, 0, 255), width=16)
    _, x = read(encoded(image, "PNG"))
    assert ink_box_and_centre(x[0])[0] == 20


def test_blank_or_unreadable_input_is_refused(tmp_path):
    g = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 300), torch.linspace(0, 1, 200), indexing="ij")
    for sigma in (0.02, 0.04, 0.08):  # lit unevenly, with sensor noise, and no ink at all
        blank = (0.9 - 0.3 * xx + sigma * torch.randn(300, 200, generator=g)).clamp(0, 1)
        Image.fromarray((blank * 255).to(torch.uint8).numpy()).save(tmp_path / f"blank{sigma}.png")
        with pytest.raises(UserError, match="no digit found"):
            read(tmp_path / f"blank{sigma}.png")
    Image.new("L", (50, 50), 255).save(tmp_path / "white.png")
    (tmp_path / "text.png").write_text("not an image")
    (tmp_path / "empty.jpg").write_bytes(b"")
    for name, message in [("white.png", "no digit found"), ("text.png", "not an image"),
                          ("empty.jpg", "not an image"), ("missing.png", "no such file")]:
        with pytest.raises(UserError, match=message):
            read(tmp_path / name)


def test_photos_come_back_close_to_the_original_digits(real_mnist):
    test_set = data.load_mnist(real_mnist, train=False)
    g = torch.Generator().manual_seed(0)
    for fmt in ("PNG", "JPEG"):
        similarity = []
        for i in range(100):
            _, x = read(encoded(photograph(test_set.data[i], g), fmt))
            original = test_set.data[i].float() / 255
            similarity.append(torch.cosine_similarity(x.flatten(), original.flatten(), dim=0))
        # Measured on these 100 photos: mean cosine similarity 0.954 PNG, 0.951 JPEG (10th percentile 0.86).
        assert torch.stack(similarity).mean() >= 0.93, fmt


def test_model_reads_photos_about_as_well_as_the_originals(real_run, real_mnist):
    model = trained_model(real_run)
    test_set = data.load_mnist(real_mnist, train=False)
    g = torch.Generator().manual_seed(1)
    n, right = 200, {"original": 0, "PNG": 0, "JPEG": 0}
    with torch.no_grad():
        for i in range(n):
            digit, label = test_set.data[i], test_set.targets[i].item()
            right["original"] += model(digit.float()[None] / 255).argmax().item() == label
            picture = photograph(digit, g)
            for fmt in ("PNG", "JPEG"):
                right[fmt] += model(read(encoded(picture, fmt))[1]).argmax().item() == label
    # Measured with the 10-epoch model on these 200 digits: originals 182, PNG photos 188, JPEG 187.
    assert right["PNG"] >= right["original"] + 3 and right["JPEG"] >= right["original"] + 3, right


def test_model_reads_digits_drawn_with_pil(real_run):
    model = trained_model(real_run)
    with torch.no_grad():
        probs = {d: torch.softmax(model(read(encoded(drawn(d), "PNG"))[1]), dim=1)[0] for d in (0, 1, 3, 4, 7)}
    # Measured with the 10-epoch model: 5 of 5 right, the right digit's probability 0.37 for the 0,
    # 0.95 for the 1, 0.79 for the 3, 0.31 for the 4 and 0.97 for the 7.
    assert all(p.argmax().item() == d and p[d] > 0.25 for d, p in probs.items()), probs


def digit_on(page, box, width, ink, digit):
    """Draw a 1, 2 or 3 into box on a PIL page, with a pen of that width and shade."""
    d = ImageDraw.Draw(page)
    x0, y0, x1, y1 = box
    at = lambda fx, fy: (x0 + fx * (x1 - x0), y0 + fy * (y1 - y0))  # noqa: E731
    if digit == 1:
        d.line([at(0.5, 0.0), at(0.5, 1.0)], fill=ink, width=width)
    elif digit == 3:
        d.arc([*at(0.15, 0.0), *at(0.85, 0.5)], 200, 90, fill=ink, width=width)
        d.arc([*at(0.15, 0.5), *at(0.85, 1.0)], 270, 160, fill=ink, width=width)
    else:
        d.arc([*at(0.15, 0.0), *at(0.85, 0.55)], 180, 40, fill=ink, width=width)
        d.line([at(0.8, 0.4), at(0.15, 1.0), at(0.9, 1.0)], fill=ink, width=width, joint="curve")
    return page


def with_noise(image, seed=0):
    g = torch.Generator().manual_seed(seed)
    values = torch.from_numpy(np.array(image)).float() + 6 * torch.randn(image.size[::-1], generator=g)
    return Image.fromarray(values.clamp(0, 255).to(torch.uint8).numpy())


def cosine(a, b):
    return torch.cosine_similarity(a.flatten(), b.flatten(), dim=0).item()


def test_paper_on_a_dark_desk_is_read_as_paper():
    sheet = digit_on(Image.new("L", (600, 800), 225), (150, 150, 450, 650), 36, 40, 3)
    desk = Image.new("L", (1000, 1100), 30)
    desk.paste(sheet, (200, 150))
    _, on_paper = read(encoded(with_noise(sheet), "PNG"))
    _, on_desk = read(encoded(with_noise(desk), "PNG"))
    # Measured: 0.995; the rule of before (the image's edge is paper) read the desk as paper: 0.48.
    assert cosine(on_paper, on_desk) > 0.9
    assert on_desk[0, :, :3].max() == 0 and on_desk[0, :, -3:].max() == 0  # no paper edges left as strokes


def test_a_thin_light_pencil_line_is_kept():
    marker = digit_on(Image.new("L", (1200, 1600), 230), (300, 300, 900, 1300), 70, 30, 2)
    pencil = digit_on(Image.new("L", (1200, 1600), 230), (300, 300, 900, 1300), 4, 160, 2)
    _, bold = read(encoded(with_noise(marker), "PNG"))
    _, thin = read(encoded(with_noise(pencil), "PNG"))
    # Measured: similarity 0.646, brightest pixel 0.996, 54 pixels of ink against the marker's 55;
    # before, the pencil came out faint: brightest 0.17, no pixel above 0.5.
    assert cosine(bold, thin) > 0.63 and thin.max() >= 0.95 and (thin > 0.5).sum() >= 0.7 * (bold > 0.5).sum()


def page_photo(size, height, pen, at=(0.5, 0.5), ink=40, paper=225, noise=4.0, digit=2, clutter=None, falloff=0.15):
    """A digit `height` pixels tall drawn on a page of `size` (w, h) centred at `at` (fractions of
    the page), the light falling off by `falloff` across it, with sensor noise of `noise` grey
    levels. clutter: "strip" (a table's dark edge along part of the left side) or "corner" (a
    desk's corner, top left)."""
    w, h = size
    cx, cy = at[0] * w, at[1] * h
    box = (cx - 0.25 * height, cy - 0.5 * height, cx + 0.25 * height, cy + 0.5 * height)
    page = digit_on(Image.new("L", size, paper), box, pen, ink, digit)
    if clutter == "strip":
        ImageDraw.Draw(page).rectangle([0, 0.4 * h, 0.02 * w, h], fill=min(ink, paper))
    elif clutter == "corner":
        ImageDraw.Draw(page).polygon([(0, 0), (0.15 * w, 0), (0, 0.15 * h)], fill=min(ink, paper))
    across = 0.6 * np.linspace(0, 1, w, dtype=np.float32) + 0.4 * np.linspace(0, 1, h, dtype=np.float32)[:, None]
    grain = np.random.default_rng(0).standard_normal((h, w), dtype=np.float32)
    values = np.array(page) * (1 - falloff * across) + noise * grain
    return Image.fromarray(values.clip(0, 255).round().astype(np.uint8))


def blurred_cosine(a, b):
    """cosine of two (1, 28, 28) images each blurred by a 3x3 mean: the same digit a pixel wider or
    shifted still scores high (thin strokes alone would not overlap)."""
    blur = lambda x: torch.nn.functional.avg_pool2d(x, 3, 1, 1)  # noqa: E731
    return cosine(blur(a), blur(b))


PAGES = {  # name: page_photo's arguments, each a way the one photo recipe above never varies
    "large on a small page": dict(size=(300, 400), height=250, pen=25),
    "small on a large page": dict(size=(1600, 1200), height=160, pen=16, at=(0.3, 0.6)),
    "small, thin pen, small page": dict(size=(400, 300), height=60, pen=3, at=(0.7, 0.4)),
    "small on a page reduced 3x": dict(size=(2400, 1800), height=200, pen=25, at=(0.6, 0.3), noise=6),
    "chalk on a board, small": dict(size=(1000, 800), height=150, pen=15, ink=220, paper=45, at=(0.4, 0.6)),
    "chalk on a board, large": dict(size=(500, 600), height=450, pen=45, ink=220, paper=45),
    "noisy": dict(size=(600, 800), height=400, pen=40, noise=14),
    "without noise": dict(size=(600, 800), height=400, pen=40, noise=0),
    "a table's edge at the side": dict(size=(600, 800), height=400, pen=40, clutter="strip"),
    "a desk's corner": dict(size=(800, 600), height=400, pen=40, clutter="corner", at=(0.55, 0.5)),
    "a table's edge, smaller digit": dict(size=(1200, 900), height=300, pen=30, clutter="strip", at=(0.6, 0.5)),
}


@pytest.mark.parametrize("name", PAGES)
def test_a_digit_is_read_the_same_on_any_page(name):
    """Digit size against the page, page size, pen, noise, polarity and clutter at the edge vary;
    the result is the digit as read from a clean page it fills. (Before: a small thin digit or
    chalk on a board was 'no digit found', the paper found from quantiles that fell within its
    noise; and without drop_border_clutter the clutter cases fail.)"""
    for digit in (2, 3):
        _, clean = read(encoded(page_photo((300, 400), 250, 25, digit=digit, noise=0), "PNG"))
        _, x = read(encoded(page_photo(digit=digit, **PAGES[name]), "PNG"))
        # Measured: 0.87 at the least (a small thin-pen 3), 0.93-1.0 for the others; 0.0-0.56 for
        # the clutter cases without drop_border_clutter.
        assert blurred_cosine(x, clean) > 0.85, (name, digit)


def test_a_thin_stroke_on_a_large_noisy_page_is_found():
    """The issue's example: a thin dark 1 (10x300 pixels, 190 grey levels darker) on an evenly lit
    1000x1000 page with noise of 4 grey levels was 'no digit found'; so was a thinner one on a
    smaller page."""
    for side, pen, height in [(1000, 10, 300), (600, 4, 180), (300, 2, 90)]:
        stroke = dict(height=height, pen=pen, digit=1, ink=40, paper=230, falloff=0)
        _, clean = read(encoded(page_photo((height + 100,) * 2, noise=0, **stroke), "PNG"))
        _, x = read(encoded(page_photo((side, side), noise=4, **stroke), "PNG"))
        assert cosine(x, clean) > 0.9, side  # measured: 0.95, 1.0, 1.0


def test_16_bit_scans_keep_their_range():
    page = digit_on(Image.new("L", (300, 400), 225), (75, 75, 225, 325), 18, 40, 3)
    wide = Image.fromarray(np.array(page).astype(np.uint16) * 257)  # the same shades in 16 bits
    assert wide.mode.startswith("I;16")
    _, eight = read(encoded(page, "PNG"))
    _, sixteen = read(encoded(wide, "PNG"))
    assert cosine(eight, sixteen) > 0.99


def tiff(directories, pixels=b""):
    """A little-endian TIFF built by hand: its pixels, then its image directories in a chain, each
    a list of (tag, type, value) entries holding one value (type 3: 16 bits, 4: 32 bits)."""
    header = 8
    start = header + len(pixels)
    offsets = []
    for entries in directories:
        offsets.append(start)
        start += 2 + 12 * len(entries) + 4
    out = bytearray(b"II*\0" + (offsets[0] if offsets else 0).to_bytes(4, "little") + pixels)
    for i, entries in enumerate(directories):
        out += len(entries).to_bytes(2, "little")
        for tag, kind, value in entries:  # a value fits the entry's 4 bytes, left-aligned
            out += tag.to_bytes(2, "little") + kind.to_bytes(2, "little") + (1).to_bytes(4, "little")
            out += value.to_bytes(4, "little")
        out += (offsets[i + 1] if i + 1 < len(offsets) else 0).to_bytes(4, "little")
    return bytes(out)


def grey_tiff_directory(image, pixels_at=8):
    """The entries of an uncompressed 8-bit grey TIFF directory for image, its pixels at that offset."""
    w, h = image.size
    return [(256, 3, w), (257, 3, h), (258, 3, 8), (259, 3, 1), (262, 3, 1),
            (273, 4, pixels_at), (278, 3, h), (279, 4, w * h)]


def assert_one_line_user_error_or_read(source):
    """read_digit on source gives a 28x28 result as MNIST has it or a one-line UserError, nothing else."""
    try:
        small, x, note = ph.read_digit(source)
    except UserError as e:
        assert str(e) and "\n" not in str(e), repr(str(e))
        return
    assert small.size == (28, 28) and small.mode == "L" and torch.equal(x, transforms.ToTensor()(small))
    assert note in ("", "the first of several frames was read")
    assert x.max() > 0 and ink_box_and_centre(x[0])[0] <= 20  # ink, in at most MNIST's 20x20 box


def test_odd_images_are_read_or_refused_in_one_line():
    """Tiny images, a float image with a NaN pixel, a drawing 12 times wider than tall and a TIFF
    whose second directory has no dimensions each raised something other than a UserError."""
    for size in [(1, 1), (2, 1), (1, 2), (2, 2), (3, 1), (1, 5)]:
        for values in ([0, 255] * 5, [255, 0] * 5):
            image = Image.new("L", size)
            image.putdata(values[:size[0] * size[1]])
            with pytest.raises(ph.NoDigit):  # a pixel or two of each shade: no stroke to tell from the paper
                ph.read_digit(encoded(image, "PNG").getvalue())
    page = np.array(digit_on(Image.new("L", (200, 260), 225), (50, 50, 150, 210), 12, 40, 3), dtype=np.float32) / 255
    page[0, 0] = np.nan
    _, x, _ = ph.read_digit(encoded(Image.fromarray(page, mode="F"), "TIFF").getvalue())
    typical = np.nan_to_num(page, nan=np.nanmedian(page))  # the pixel with no value reads as the paper
    _, expected, _ = ph.read_digit(encoded(Image.fromarray(typical, mode="F"), "TIFF").getvalue())
    assert torch.equal(x, expected)
    wide = Image.new("RGB", (600, 50), "white")  # a drawing's flat paper, the digit small on it
    digit_on(wide, (290, 5, 310, 45), 4, "black", 2)
    _, x, _ = ph.read_digit(encoded(wide, "PNG").getvalue())
    assert ink_box_and_centre(x[0])[0] == 20
    page = digit_on(Image.new("L", (40, 30), 255), (10, 5, 30, 25), 3, 0, 2)
    second = [e for e in grey_tiff_directory(page) if e[0] not in (256, 257)]  # no width, no height
    assert_one_line_user_error_or_read(tiff([grey_tiff_directory(page), second], page.tobytes()))


def mutated(data, rng):
    """data with a few bytes changed, a run of them cut out or its end cut off, as a damaged
    download or disk leaves a file."""
    data = bytearray(data)
    for _ in range(rng.choice([1, 1, 2, 4, 8])):
        at, kind = rng.randrange(len(data)), rng.random()
        if kind < 0.6:
            data[at] = rng.randrange(256)
        elif kind < 0.75:  # a length or an offset made extreme
            data[at:at + 4] = rng.choice([b"\xff\xff\xff\xff", b"\0\0\0\0", b"\x7f\xff\xff\xff", b"\x80\0\0\0"])
        elif kind < 0.9:
            del data[at:at + rng.randrange(1, 16)]
        else:
            del data[max(at, 1):]
    return bytes(data)


def test_damaged_files_are_read_or_refused_in_one_line(capfd, caplog):
    """A few hundred damaged PNG, JPEG, TIFF, GIF, BMP and WebP files (seeded): each is read or
    refused with a one-line UserError, never another exception, and nothing else reaches the
    user: no warning or log line from Pillow, nothing libtiff prints to stderr itself. (Before:
    TypeError and RuntimeError among them; Pillow's warnings and log lines, and libtiff's.)"""
    page = digit_on(Image.new("RGB", (40, 30), "white"), (12, 3, 28, 27), 3, "black", 2)
    files = [encoded(page, "PNG"), encoded(page, "JPEG"), encoded(page.convert("L"), "TIFF"),
             encoded(page, "GIF"), encoded(page, "BMP"), encoded(page, "WEBP"),
             encoded(page.convert("P"), "PNG"), encoded(page.convert("L"), "BMP")]
    for compression in ("tiff_deflate", "tiff_lzw", "jpeg", "packbits"):
        files.append(encoded(page.convert("RGB" if compression == "jpeg" else "L"), "TIFF", compression=compression))
    files.append(encoded(page.convert("1"), "TIFF", compression="group4"))
    files = [f.getvalue() for f in files]
    grey = page.convert("L")
    many_samples = sorted(grey_tiff_directory(grey) + [(277, 3, 157)])  # 157 samples a pixel: Pillow logs it
    rng = random.Random(0)
    with warnings.catch_warnings(record=True) as shown:  # what the filters in force let through
        assert_one_line_user_error_or_read(tiff([many_samples], grey.tobytes()))
        for i in range(400):
            assert_one_line_user_error_or_read(mutated(files[i % len(files)], rng))
    assert not shown, shown[0].message
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.records[0].getMessage()
    assert capfd.readouterr().err == ""


def png_header(width, height, colour=0, before=b"", after=b""):
    """A PNG that declares width x height 8-bit pixels (colour type 0: grey, 6: RGBA) and holds
    almost none of them, with raw chunks before and after them."""
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, colour, 0, 0, 0))
            + before + chunk(b"IDAT", zlib.compress(b"\0" * 100)) + after + chunk(b"IEND", b""))


def test_a_large_image_is_refused_in_our_words_before_decoding(monkeypatch):
    """Over max_pixels is TooLarge with our message, read from the header, whatever Pillow's own
    guard is set to for the process (before, importing photo switched that guard off for all)."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # someone else's setting: not ours to use
    with pytest.raises(ph.TooLarge) as refused:
        ph.read_digit(png_header(14000, 14000))
    assert str(refused.value) == "14000x14000 pixels is more than this reads (180 megapixels); scale it down first"
    with pytest.raises(ph.TooLarge, match="6000x6000 pixels is more than this reads \\(20 megapixels\\)"):
        ph.read_digit(png_header(6000, 6000), 20_000_000)
    with pytest.raises(UserError, match="cannot read this image") as refused:  # within every limit: decoded, cut short
        ph.read_digit(png_header(6000, 6000))
    assert "bomb" not in str(refused.value) and not isinstance(refused.value, ph.TooLarge)
    ph.read_digit(encoded(digit_on(Image.new("L", (300, 400), 225), (75, 75, 225, 325), 18, 40, 3), "PNG").getvalue())
    gif = bytearray(resized_gif(8, 8))  # its first image reaching far past its 8x8 screen: Pillow's guard speaks
    at = gif.index(b",", 13) + 5
    gif[at:at + 4] = struct.pack("<HH", 14000, 14000)
    with pytest.raises(ph.TooLarge, match="^more pixels than this reads \\(180 megapixels\\); scale it down first$"):
        ph.read_digit(bytes(gif))


def rle_bmp(side, rle4=False):
    """An RLE8 (or RLE4) BMP of side x side: one pixel, then end-of-line, on every row. A few bytes a
    row, and Pillow's decoder, written in Python, fills each row to its end a pixel at a time."""
    pixels = bytes([1, 1, 0, 0]) * side + b"\0\1"
    palette = b"\xff\xff\xff\0" + b"\0" * 4 * ((16 if rle4 else 256) - 1)
    offset = 14 + 40 + len(palette)
    info = struct.pack("<IiiHHIIiiII", 40, side, side, 1, 4 if rle4 else 8, 2 if rle4 else 1, len(pixels), 0, 0, 0, 0)
    return b"BM" + struct.pack("<IHHI", offset + len(pixels), 0, 0, offset) + info + palette + pixels


def resized_gif(width, height):
    """A small GIF whose screen and image declare width x height."""
    data = bytearray(encoded(Image.new("L", (8, 8), 255), "GIF").getvalue())
    image = data.index(b",", 13)
    data[6:10] = data[image + 5: image + 9] = struct.pack("<HH", width, height)
    return bytes(data)


def progressive_jpeg(width, height, scans=1):
    """A small JPEG whose frame declares width x height, baseline or progressive (of its own scans,
    then its last one repeated until it has `scans`)."""
    data = encoded(Image.new("L", (16, 16), 200), "JPEG", progressive=scans > 1).getvalue()
    frame = max(data.find(b"\xff\xc0"), data.find(b"\xff\xc2"))
    data = data[:frame + 5] + struct.pack(">HH", height, width) + data[frame + 9:]
    last = data.rindex(b"\xff\xda")
    return data[:-2] + data[last:-2] * max(0, scans - data.count(b"\xff\xda")) + b"\xff\xd9"


def no_decoding(monkeypatch):
    """Make any decoding of pixels fail the test: Pillow's decoders (C, libtiff, or written in Python)
    come from Image._getdecoder; WebP's from its own load."""
    def decoding(*args, **kwargs):
        raise AssertionError("pixels were decoded")
    monkeypatch.setattr(Image, "_getdecoder", decoding)
    monkeypatch.setattr(WebPImagePlugin.WebPImageFile, "load", decoding)


def vp8l_webp(width, height):
    """A lossless WebP that declares width x height and holds 16x16 pixels."""
    data = bytearray(encoded(Image.new("RGB", (16, 16), "white"), "WEBP", lossless=True).getvalue())
    assert data[12:16] == b"VP8L"  # its 14-bit width - 1 and height - 1 follow the signature byte
    data[21:25] = ((width - 1) | (height - 1) << 14 | (data[24] >> 4) << 28).to_bytes(4, "little")
    return bytes(data)


TOO_COSTLY = {  # name: (a file declaring more than the budget allows, the limit the message gives)
    "RLE8 BMP": (lambda: rle_bmp(7000),
                 "7000x7000 pixels is more than this reads (1.7 megapixels for this RLE-compressed BMP)"),
    "RLE4 BMP": (lambda: rle_bmp(2000, rle4=True), "(1.7 megapixels for this RLE-compressed BMP)"),
    "grey PNG": (lambda: png_header(9000, 9000), "(66.7 megapixels for this grey PNG)"),
    "RGBA PNG": (lambda: png_header(5000, 5000, 6), "(16.7 megapixels for this RGBA PNG)"),
    "GIF": (lambda: resized_gif(6000, 6000), "(33.3 megapixels for this palette GIF)"),
    "TIFF": (lambda: tiff([grey_tiff_directory(Image.new("L", (9000, 9000)))]),
             "(66.6 megapixels for this grey TIFF)"),  # less what its tags cost
    "WebP": (lambda: vp8l_webp(5000, 5000), "(16.7 megapixels for this RGB WEBP)"),
    "progressive JPEG": (lambda: progressive_jpeg(12000, 12000, scans=8), "(97.7 megapixels for this JPEG of 8 scans)"),
}


@pytest.mark.parametrize("name", TOO_COSTLY)
def test_what_costs_too_much_to_decode_is_refused_before_decoding(monkeypatch, name):
    """The cost of reading an image is known from its header: its pixels, its mode and format (an
    RLE BMP is decoded in Python, a pixel at a time: 7000x7000 in 28 KB took 3-8 s), a JPEG's
    scans (each decoded over all its pixels, whatever the draft). Over the budget, it is refused
    before anything is decoded; the budget is what benchmarks/photo_worst.py keeps within about a
    second."""
    make, message = TOO_COSTLY[name]
    data = make()
    no_decoding(monkeypatch)
    with pytest.raises(ph.TooLarge) as refused:
        ph.read_digit(data)
    assert message in str(refused.value) and str(refused.value).endswith("; scale it down first"), str(refused.value)


def test_what_costs_within_the_budget_is_decoded():
    """Just under the budget, the same kinds are decoded (and found cut short, or read)."""
    for content in (rle_bmp(1200), png_header(8000, 8000), png_header(4000, 4000, 6), resized_gif(5000, 5000),
                    vp8l_webp(4000, 4000), progressive_jpeg(12000, 12000), progressive_jpeg(2000, 2000, scans=150)):
        try:
            ph.read_digit(content)
        except UserError as e:
            assert not isinstance(e, ph.TooLarge), str(e)


def many_pieces(fmt, n):
    """A small image of fmt cut into about n of the pieces Pillow walks one at a time in Python."""
    if fmt == "PNG":  # empty chunks of a kind nobody knows, after the pixels (before them, alike)
        return png_header(64, 64, after=chunk(b"abCd", b"") * n)
    if fmt == "JPEG":  # empty APP5 markers, then fill bytes, before the frame
        jpeg = encoded(Image.new("L", (16, 16), 200), "JPEG").getvalue()
        return jpeg[:2] + b"\xff\xe5\x00\x02" * (n // 2) + b"\xff" * (n // 2) + jpeg[2:]
    if fmt == "GIF":  # a comment in one-byte blocks before the image
        gif = encoded(Image.new("L", (16, 16), 200), "GIF").getvalue()
        at = gif.index(b",", 13)
        return gif[:at] + b"\x21\xfe" + b"\x01A" * n + b"\0" + gif[at:]
    side = 16 * math.isqrt(n)  # TIFF: 16x16 tiles, all of them the same bytes
    tiles = (side // 16) ** 2
    directory = [(256, 3, side), (257, 3, side), (258, 3, 8), (259, 3, 1), (262, 3, 1), (322, 3, 16), (323, 3, 16)]
    data = tiff([directory + [(324, 4, 0), (325, 4, 0)]], b"\xff" * 256)
    at = data.index(struct.pack("<HHI", 324, 4, 1))  # the offsets and byte counts: `tiles` of each
    offsets = len(data)
    data = (data[:at] + struct.pack("<HHII", 324, 4, tiles, offsets)
            + struct.pack("<HHII", 325, 4, tiles, offsets + 4 * tiles) + data[at + 24:])
    return data + struct.pack(f"<{tiles}I", *[8] * tiles) + struct.pack(f"<{tiles}I", *[256] * tiles)


@pytest.mark.parametrize("fmt, n, what", [("PNG", 100_000, "chunks"), ("JPEG", 250_000, "markers and stray bytes"),
                                          ("GIF", 900_000, "blocks"), ("TIFF", 40_000, "tags, strips and tiles")])
def test_a_file_cut_into_too_many_pieces_is_refused_before_pillow_parses_it(monkeypatch, fmt, n, what):
    """Pillow parses these formats in Python, a few microseconds a piece: a hostile file packs
    hundreds of thousands into a few MB (300,000 empty PNG chunks, 900,000 empty JPEG markers or
    fill bytes, a GIF comment of 1.9 million one-byte blocks, 470,000 TIFF tiles: 3-12 s each
    here). They are counted first, and a file with far more than an image needs is refused; one
    with a few hundred reads as ever."""
    factory, accept = Image.OPEN[fmt]
    monkeypatch.setitem(Image.OPEN, fmt, (lambda *args: pytest.fail("Pillow parsed it"), accept))
    data = many_pieces(fmt, n)
    assert len(data) < 4 * 2**20
    with pytest.raises(UserError, match=f"this {fmt} is cut into more than [0-9,]+ {what}") as refused:
        ph.read_digit(data)
    assert str(refused.value).endswith("far more than an image needs: save it again with an image program")
    monkeypatch.setitem(Image.OPEN, fmt, (factory, accept))
    assert_one_line_user_error_or_read(many_pieces(fmt, 400))


def test_animated_images_say_the_first_frame_is_read():
    frames = [digit_on(Image.new("L", (200, 260), 225), (50, 50, 150, 210), 12, 40, 3), Image.new("L", (200, 260), 0)]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:])
    small, x, note = ph.read_digit(buffer.getvalue())
    assert note == "the first of several frames was read" and x.max() > 0.9  # not counted: see below
    assert ph.read_digit(encoded(frames[0], "GIF").getvalue())[2] == ""
    buffer = io.BytesIO()  # a blank first frame: the message says which had no digit (before: 'no digit found')
    frames[1].save(buffer, "GIF", save_all=True, append_images=frames[:1])
    with pytest.raises(ph.NoDigit) as refused:
        ph.read_digit(buffer.getvalue())
    assert str(refused.value) == ("no digit found: the first frame, the only one read of several, is blank "
                                  "or has too little contrast")


def test_a_tiff_of_many_directories_is_read_without_walking_them(monkeypatch):
    """A 1 MB TIFF of 10,000 image directories: counting its frames read every directory (20,002
    loads, 2.1 s here; 30,000 directories took 11 s). Now only the first frame's are read."""
    page = digit_on(Image.new("L", (60, 80), 255), (15, 10, 45, 70), 5, 0, 2)
    many = tiff([grey_tiff_directory(page)] * 10_000, page.tobytes())
    loads = []
    load = TiffImagePlugin.ImageFileDirectory_v2.load
    monkeypatch.setattr(TiffImagePlugin.ImageFileDirectory_v2, "load",
                        lambda tags, fp: loads.append(1) or load(tags, fp))
    _, x, note = ph.read_digit(many)
    assert 0 < len(loads) <= 5, len(loads)  # measured: 3
    assert note == "the first of several frames was read"
    assert torch.equal(x, ph.read_digit(tiff([grey_tiff_directory(page)], page.tobytes()))[1])


def test_only_the_formats_a_photo_comes_in_are_opened():
    """PNG, JPEG, GIF, BMP, WebP and TIFF; any other format Pillow knows is refused in one line
    before it is parsed (these were read before)."""
    page = digit_on(Image.new("RGB", (60, 80), "white"), (15, 10, 45, 70), 5, "black", 2)
    _, expected, _ = ph.read_digit(encoded(page, "PNG").getvalue())
    assert ink_box_and_centre(expected[0])[0] == 20
    for fmt in ("JPEG", "GIF", "BMP", "WEBP", "TIFF"):
        _, x, _ = ph.read_digit(encoded(page, fmt).getvalue())
        assert cosine(x, expected) > (0.98 if fmt in ("JPEG", "WEBP") else 0.999), fmt  # measured: 0.99 lossy, else 1.0
    for fmt in ("DDS", "ICO", "PCX", "TGA", "PPM", "SGI", "QOI"):
        with pytest.raises(UserError) as refused:
            ph.read_digit(encoded(page, fmt).getvalue())
        assert str(refused.value) == "not an image that PIL can read (PNG, JPEG, ...)", fmt


def test_a_large_palette_image_reads_as_a_small_one():
    """A palette (P) image is reduced by its colours, not its palette indices, its transparency
    kept: at 2000 px both were blank ('no digit found') while the same at 280 px read a 2. So is
    a 1-bit one, by its shades rather than one pixel of each box."""
    for transparent in (False, True):
        pages = []
        for side in (280, 2000):
            page = Image.new("P", (side, side), 0)
            paper = (0, 0, 0) if transparent else (235, 232, 220)  # transparent black, as apps save it
            page.putpalette([*paper, 30, 30, 60] + [0, 0, 0] * 254)
            digit_on(page, (0.3 * side, 0.2 * side, 0.7 * side, 0.8 * side), round(side / 25), 1, 2)
            pages.append(encoded(page, "PNG", **({"transparency": 0} if transparent else {})))
        _, small, _ = ph.read_digit(pages[0].getvalue())
        _, large, _ = ph.read_digit(pages[1].getvalue())
        assert cosine(small, large) > 0.9, transparent  # measured: 0.997 both (NoDigit before)
    pages = []  # a 1-bit scan, as a fax-style TIFF: one pixel in 4 was kept (0.55 before)
    for side, pen in [(280, 4), (4000, 3)]:
        page = digit_on(Image.new("1", (side, side), 1), (0.3 * side, 0.2 * side, 0.7 * side, 0.8 * side), pen, 0, 2)
        pages.append(ph.read_digit(encoded(page, "TIFF", compression="group4").getvalue())[1])
    assert cosine(*pages) > 0.9  # measured: 0.97


def test_a_fifo_is_refused_without_hanging(tmp_path):
    fifo = tmp_path / "digit.png"
    os.mkfifo(fifo)
    done = []
    # A daemon thread: were the read to hang, the test fails and pytest can still exit.
    reader = threading.Thread(target=lambda: done.append(pytest.raises(UserError, ph.read_digit, str(fifo))),
                              daemon=True)
    reader.start()
    reader.join(timeout=10)
    if reader.is_alive():  # stuck opening the FIFO: a writer that closes at once lets it go
        try:
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:  # it was not waiting for one
            pass
        reader.join(timeout=10)
    assert done and "not a regular file" in str(done[0].value), "hung, or read the FIFO"


@pytest.mark.slow  # a process of its own, and large images
def test_large_images_are_read_or_refused_in_bounded_memory(tmp_path, trained):
    out, _ = trained
    huge_png(tmp_path / "huge.png")  # 13300x13300 RGBA: 700 MB of pixels in 726 KB, refused before decoding
    huge_png(tmp_path / "largest.png", side=4000)  # 64 MB of RGBA: the most this reads of it, in strips
    model, seven = out / "model.pt", ROOT + "/docs/example_seven.png"
    (baseline, small), (refused, huge), (peak, largest) = peak_memory(
        "evaluate.py", [model, "--image", seven], [model, "--image", tmp_path / "huge.png"],
        [model, "--image", tmp_path / "largest.png"])
    assert "example_seven.png: " in small and huge.endswith("exit 1") and f"{tmp_path / 'largest.png'}: " in largest
    # Measured, above the small image's run: 0 MB for the huge one (before: 640 MB, once 4.2 GB and a
    # MemoryError), 67 MB for the largest, about its decoded 64 MB.
    assert refused - baseline < 16 and peak - baseline < 256, (baseline, refused, peak)


def test_the_quick_filters_match_torchs_own():
    """max_filter, median3 and pooled are quicker ways to what torch computes directly; they must
    give exactly the same numbers, ties and odd shapes included."""
    g = torch.Generator().manual_seed(0)
    for shape in [(1, 1), (1, 6), (7, 3), (30, 41), (256, 256)]:
        for x in (torch.rand(shape, generator=g), (4 * torch.rand(shape, generator=g)).round()):
            for size in (1, 3, 5, 9, 33, 51):
                padded = torch.nn.functional.pad(x[None, None], (size // 2,) * 4, value=-float("inf"))
                assert torch.equal(ph.max_filter(x, size), torch.nn.functional.max_pool2d(padded, size, 1)[0, 0])
                assert torch.equal(ph.max_filter(x > 2, size), ph.max_filter((x > 2).float(), size) > 0)
            edged = torch.nn.functional.pad(x[None, None], (1, 1, 1, 1), mode="replicate")[0, 0]
            medians = edged.unfold(0, 3, 1).unfold(1, 3, 1).reshape(*shape, 9).median(-1).values
            assert torch.equal(ph.median3(x), medians)
            small = ph.fit(shape[::-1], min(17, max(shape)))[::-1]
            assert torch.equal(ph.pooled(x, small), torch.nn.functional.adaptive_max_pool2d(x[None, None], small)[0, 0])


def serpentine(side, turns, width=3):
    """A bool mask of a line winding back and forth `turns` times, touching the left edge once."""
    mask = torch.zeros(side, side, dtype=torch.bool)
    for turn in range(turns):
        y = 2 + 2 * width * turn
        mask[y: y + width, 2: side - 2] = True
        x = side - 2 - width if turn % 2 == 0 else 2
        mask[y: y + 3 * width, x: x + width] = True
    mask[2: 2 + width, :2] = True
    return mask


def reached_by_flood_fill(mask):
    """reached_from_edge the plain way: a flood fill from the edge, a pixel at a time."""
    h, w = mask.shape
    inside, reached = mask.tolist(), [[False] * w for _ in range(h)]
    todo = [(y, x) for y in range(h) for x in range(w) if y in (0, h - 1) or x in (0, w - 1)]
    while todo:
        y, x = todo.pop()
        if 0 <= y < h and 0 <= x < w and inside[y][x] and not reached[y][x]:
            reached[y][x] = True
            todo += [(y + dy, x + dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
    return torch.tensor(reached)


def test_the_edge_cleanup_takes_a_few_steps_however_long_the_stroke():
    """reached_from_edge grew the edge's part a pixel a step: a 474-byte serpentine drawing touching
    the edge once took 1.5 s to read here. Now the number of tensor operations barely grows with
    the stroke's length, and the result is a flood fill's."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        operations = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            Count.operations += 1
            return func(*args, **(kwargs or {}))

    operations = {}
    for turns in (4, 40):
        mask = serpentine(256, turns)
        Count.operations = 0
        with Count():
            reached = ph.reached_from_edge(mask)
        operations[turns] = Count.operations
        assert torch.equal(reached, mask)  # all of it is reached, through its one touch of the edge
    # Measured: 136 and 148 operations (before: 16,000 and 160,000, a pass of a 3x3 max filter a pixel)
    assert operations[40] < 2 * operations[4], operations
    g = torch.Generator().manual_seed(0)
    for shape in [(1, 1), (1, 7), (5, 1), (2, 2), (9, 13), (31, 24), (40, 40)]:
        for density in (0.3, 0.5, 0.7, 1.0):
            mask = torch.rand(shape, generator=g) < density
            assert torch.equal(ph.reached_from_edge(mask), reached_by_flood_fill(mask)), (shape, density)
    x = torch.zeros(100, 100)
    x[20:80, 45:55] = x[0:3, 0:3] = 1.0  # a stroke, and clutter in the corner
    cleaned = ph.drop_border_clutter(x)
    assert cleaned[:5, :5].max() == 0 and torch.equal(cleaned[20:80, 45:55], x[20:80, 45:55])


def test_a_solid_block_is_found_in_a_square_twice_as_wide_and_never_in_a_band():
    for side in (1, 4, 10, 25):
        for width in range(max(1, side - 2), 2 * side + 2):
            for top in range(0, 2 * side):
                square = torch.zeros(300, 300, dtype=torch.bool)
                square[top: top + width, top + 3: top + 3 + width] = True
                band = torch.zeros(300, 300, dtype=torch.bool)
                band[:, top: top + width] = True
                if width >= 2 * side - 1:
                    assert ph.solid_block(square, side)
                if width < side:
                    assert not ph.solid_block(band, side) and not ph.solid_block(band.T, side)


def gray(image):
    return image_files.open_gray(encoded(image, "PNG").getvalue())[0]


def test_a_computer_drawing_takes_the_quick_way_and_the_photo_way_agrees():
    """The page's canvas and drawings made with PIL skip the photo cleanup; run through it anyway,
    they come out the same. A desk around the paper (even a noiseless one) or a filled blob send
    an image the photo way (as noise does: the quick way is only tried without it)."""
    canvas = Image.new("RGBA", (256, 256), "white")  # as the page sends it
    ImageDraw.Draw(canvas).line([(82, 64), (183, 64), (119, 210)], fill="black", width=16, joint="curve")
    for image in [canvas] + [drawn(d) for d in (0, 1, 3, 4, 7)]:
        x = gray(image)
        size = ph.fit(x.shape[::-1], min(ph.SMALL_SIDE, max(x.shape)))[::-1]
        quick, thorough = ph.drawn_strokes(x, size), ph.photographed_strokes(x, size, 0.0)
        assert quick is not None
        assert cosine(quick, thorough) > 0.99 and (quick - thorough).abs().mean() < 0.01
    sheet = digit_on(Image.new("L", (300, 400), 225), (75, 75, 225, 325), 18, 40, 3)
    desk = Image.new("L", (500, 550), 30)
    desk.paste(sheet, (100, 75))
    blob = Image.new("L", (300, 300), 255)
    ImageDraw.Draw(blob).ellipse([100, 100, 200, 200], fill=0)
    for image in (desk, blob):
        x = gray(image)
        assert ph.drawn_strokes(x, x.shape) is None


def with_exif_orientation(image, fmt, orientation_after_pixels=False):
    """image stored turned a quarter to the left, as a phone's sensor saw it, with EXIF orientation 6
    (turn 90 degrees clockwise to show); a PNG's eXIf chunk before or after its pixels."""
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encoded(image.transpose(Image.Transpose.ROTATE_90), fmt, exif=exif.tobytes()).getvalue()
    if orientation_after_pixels:
        at = data.index(b"eXIf") - 4
        length = int.from_bytes(data[at:at + 4], "big") + 12
        exif_chunk, data = data[at:at + length], data[:at] + data[at + length:]
        end = data.index(b"IEND") - 4
        data = data[:end] + exif_chunk + data[end:]
    return data


@pytest.mark.parametrize("side", [300, 1100, 3000])
@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "PNG after the pixels", "TIFF", "WEBP"])
def test_a_phone_photo_is_turned_upright_in_any_format_and_size(fmt, side):
    """Phones store pixels as the sensor saw them and an EXIF tag for the rotation; large images
    are reduced before reading, and the tag must still be obeyed (a PNG of 1100-4000 px ignored it)."""
    page = digit_on(Image.new("L", (side * 3 // 4, side), 225), (side * 0.2, side * 0.2, side * 0.55, side * 0.8),
                    side // 25, 40, 2)
    _, upright, _ = ph.read_digit(encoded(page, fmt.split()[0]).getvalue())
    _, turned, _ = ph.read_digit(with_exif_orientation(page, fmt.split()[0], fmt.endswith("after the pixels")))
    assert cosine(upright, turned) > 0.97, (fmt, side)  # measured: 0.99 at the least (JPEG, its blocks turned)


def process_state():
    """What reading an image could change for the whole process: warnings filters and display,
    Pillow's size guard, the PIL logger, libtiff's message handlers (read by setting and putting back)."""
    logger = logging.getLogger("PIL")
    libtiff = ctypes.CDLL(Image.core.__file__)  # linked by Pillow's C module
    setters = libtiff.TIFFSetWarningHandler, libtiff.TIFFSetErrorHandler
    handlers = []
    for setter in setters:
        setter.restype, setter.argtypes = ctypes.c_void_p, [ctypes.c_void_p]
        handlers.append(setter(None))
        setter(handlers[-1])
    pillow_loggers = {name: (one.level, one.disabled, list(one.handlers), one.propagate)
                      for name, one in logging.root.manager.loggerDict.items() if isinstance(one, logging.Logger)
                      and name.split(".")[0] == "PIL"}
    return (list(warnings.filters), warnings.showwarning, Image.MAX_IMAGE_PIXELS, logger.level,
            list(logger.handlers), logger.disabled, pillow_loggers, handlers)


def test_reading_in_many_threads_leaves_the_process_as_it_was():
    """draw.py reads images in several threads at once; Pillow's warnings, logging and libtiff are
    quieted around the reads and put back after the last (600 reads at once left a
    warnings filter behind for good with catch_warnings alone, in 3 runs of 3)."""
    page = digit_on(Image.new("L", (40, 30), 255), (10, 5, 30, 25), 3, 0, 2)
    warns = tiff([grey_tiff_directory(page) + [(296, 3, 2)]], page.tobytes())  # ResolutionUnit: fine
    files = [encoded(page, "PNG").getvalue(), encoded(page, "TIFF", compression="tiff_deflate").getvalue(), warns,
             mutated(encoded(page, "JPEG").getvalue(), random.Random(1))]
    Image.init()  # Pillow's formats, registered at the first read, stay registered (their loggers too)
    before = process_state()
    start = threading.Barrier(8)

    def reads():
        start.wait(timeout=30)
        for _ in range(25):
            for content in files:
                assert_one_line_user_error_or_read(content)

    threads = [threading.Thread(target=reads, daemon=True) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)  # measured: 3 s in all; a daemon thread: were one to hang, the test fails
    assert not any(thread.is_alive() for thread in threads)
    assert process_state() == before


def test_a_slow_read_in_one_thread_does_not_hold_up_a_read_in_another():
    """draw.py reads a drawing while a photo that takes most of a second is being read: the two
    share the quieted settings (one reader at a time, as before, made the drawing wait for the photo),
    which are put back when the last one ends, whichever it is."""
    page = digit_on(Image.new("L", (40, 30), 255), (10, 5, 30, 25), 3, 0, 2)
    drawing = encoded(page, "PNG").getvalue()
    Image.init()  # Pillow's formats, registered at the first read, stay registered (their loggers too)
    before = process_state()
    inside, leave = threading.Event(), threading.Event()

    def slow_reader():  # stands for a photo being decoded: inside quiet() until told to leave
        with image_files.quiet():
            inside.set()
            assert leave.wait(60)

    slow = threading.Thread(target=slow_reader, daemon=True)
    slow.start()
    try:
        assert inside.wait(30)
        done = []
        reader = threading.Thread(target=lambda: done.append(ph.read_digit(drawing)), daemon=True)
        reader.start()
        reader.join(timeout=30)
        assert done, "the drawing waited for the other reader"
        assert process_state() != before  # still quiet: the slow reader has not left
    finally:
        leave.set()
        slow.join(timeout=30)
    assert process_state() == before


def test_importing_photo_changes_nothing_outside_it(monkeypatch):
    """Before, importing photo.py switched Pillow's size guard off, silenced the PIL logger and
    libtiff's messages for the whole process (that reading is image_files.py's). image_files is
    reloaded first, so that photo, reloaded after it, holds the same TooLarge as it."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 89_478_485)  # Pillow's own, whatever an earlier import did
    logger = logging.getLogger("PIL")
    monkeypatch.setattr(logger, "level", logging.NOTSET)
    before = process_state()
    importlib.reload(image_files)
    importlib.reload(ph)
    assert process_state() == before
