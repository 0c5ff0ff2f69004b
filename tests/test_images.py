"""Stage 1, images (``e4e_lab/method/images.py``): any image file or array loaded as
RGB (EXIF orientation, alpha, 16-bit, CMYK, palettes), refused clearly when it is not
usable, and fitted to the model size as published (bicubic stretch) or on request.

Every file fed to the library is made here, in ``tmp_path``: truncated, CMYK, 16-bit,
palette-with-alpha and EXIF-rotated images, a text file named .png, a PNG whose header
declares 100000 x 100000 pixels, and so on.
"""

from __future__ import annotations

import os
import struct
import time
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from e4e_lab.errors import ImageError
from e4e_lab.method.images import check_image_file, load_image

from conftest import SMALL, assert_names


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def _png(width: int, height: int, bit_depth: int, colour_type: int, raw: bytes) -> bytes:
    """A PNG file from raw scanlines (each prefixed by its filter byte)."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr)
            + _png_chunk(b"IDAT", zlib.compress(raw)) + _png_chunk(b"IEND", b""))


def _two_colour(width=32, height=16, left=(220, 20, 20), right=(20, 40, 220)) -> np.ndarray:
    a = np.zeros((height, width, 3), np.uint8)
    a[:, : width // 2] = left
    a[:, width // 2:] = right
    return a


@pytest.fixture(scope="module")
def photo():
    g = np.random.default_rng(0)
    return Image.fromarray(g.integers(0, 256, (37, 53, 3), dtype=np.uint8))


def test_stretch_is_bicubic_by_default_and_lanczos_on_request(photo):
    bicubic = load_image(photo, 32)
    assert bicubic.resample == "bicubic"
    assert np.array_equal(bicubic.to_uint8(), np.asarray(photo.resize((32, 32))))  # PIL default
    lanczos = load_image(photo, 32, resample="lanczos")
    assert np.array_equal(lanczos.to_uint8(),
                          np.asarray(photo.resize((32, 32), Image.Resampling.LANCZOS)))
    assert bicubic.digest != lanczos.digest  # a different inversion cache entry
    with pytest.raises(ImageError, match="bicubic, lanczos"):
        load_image(photo, 32, resample="nearest")


def test_truncated_jpeg_is_refused_naming_the_file(tmp_path):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(
        tmp_path / "photo.jpg", quality=95)
    data = (tmp_path / "photo.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError) as e:
        load_image(tmp_path / "cut.jpg", SMALL)
    assert_names(e, "cut.jpg")
    assert "truncated" in str(e.value) or "damaged" in str(e.value)


def test_cmyk_jpeg_is_converted_to_the_right_colours(tmp_path):
    rgb = _two_colour()
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "paper.jpg", quality=95)
    assert Image.open(tmp_path / "paper.jpg").mode == "CMYK"
    out = load_image(tmp_path / "paper.jpg", (32, 16)).to_uint8().astype(int)
    assert np.abs(out[8, 4] - rgb[8, 4]).max() <= 12
    assert np.abs(out[8, 28] - rgb[8, 28]).max() <= 12


def test_16bit_grey_png_scales_instead_of_clipping(tmp_path):
    ramp = np.tile(np.linspace(0, 65535, 64).round().astype(np.uint16), (8, 1))
    Image.fromarray(ramp).save(tmp_path / "scan16.png")
    assert Image.open(tmp_path / "scan16.png").mode.startswith("I;16")
    px = load_image(tmp_path / "scan16.png", (64, 8)).pixels[0, 4]  # one row, red channel
    expected = torch.from_numpy(ramp[4] / 65535.0).float()
    assert torch.allclose(px, expected, atol=1.5 / 255)
    # neither clipped white (a /255 reading) nor black (a >>8 of small values)
    assert 0.45 < float(px[32]) < 0.55 and float(px[0]) == 0 and float(px[-1]) == 1


def test_16bit_rgb_png_made_from_bytes_scales_correctly(tmp_path):
    w, h = 4, 2
    row = b"\x00" + b"".join(struct.pack(">HHH", 65535 * x // 3, 0, 30000) for x in range(w))
    (tmp_path / "rgb16.png").write_bytes(_png(w, h, 16, 2, row * h))
    px = load_image(tmp_path / "rgb16.png", (w, h)).to_uint8()
    assert px[0, :, 0].tolist() == [0, 85, 170, 255]
    assert abs(int(px[0, 0, 2]) - round(30000 / 65535 * 255)) <= 1
    assert (px[:, :, 1] == 0).all()


def test_rgba_palette_png_is_composited_on_the_stated_background(tmp_path):
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[:, :4] = (255, 0, 0, 0)  # transparent
    rgba[:, 4:6] = (0, 0, 255, 255)  # opaque blue
    rgba[:, 6:] = (0, 255, 0, 128)  # half-transparent green
    Image.fromarray(rgba, "RGBA").quantize(4).save(tmp_path / "sticker.png")
    img = Image.open(tmp_path / "sticker.png")
    assert img.mode == "P" and "transparency" in img.info
    white = load_image(tmp_path / "sticker.png", 8).to_uint8().astype(int)
    assert white[0, 0].tolist() == [255, 255, 255]  # documented default: white
    assert white[0, 4].tolist() == [0, 0, 255]
    assert np.abs(white[0, 7] - [127, 255, 127]).max() <= 2
    black = load_image(tmp_path / "sticker.png", 8, background=(0, 0, 0)).to_uint8().astype(int)
    assert black[0, 0].tolist() == [0, 0, 0]
    assert np.abs(black[0, 7] - [0, 128, 0]).max() <= 2


def test_rgb_png_with_a_transparent_colour_key_is_composited(tmp_path):
    a = _two_colour(8, 4, left=(255, 0, 0), right=(0, 0, 255))
    Image.fromarray(a).save(tmp_path / "key.png", transparency=(255, 0, 0))
    px = load_image(tmp_path / "key.png", (8, 4)).to_uint8()
    assert px[0, 0].tolist() == [255, 255, 255] and px[0, 7].tolist() == [0, 0, 255]


def test_exif_rotated_jpeg_is_shown_upright(tmp_path):
    # stored 32 wide x 16 high, red left / blue right; orientation 6 = rotate 90 deg CW
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(_two_colour()).save(tmp_path / "phone.jpg", exif=exif, quality=95)
    img = load_image(tmp_path / "phone.jpg", 32)
    assert img.original_size == (16, 32)  # upright: width and height swapped
    px = img.to_uint8().astype(int)
    # after the rotation the red half is on top and the blue half at the bottom
    assert px[4, 16, 0] > 150 and px[4, 16, 2] < 100
    assert px[28, 16, 2] > 150 and px[28, 16, 0] < 100
    # "pad" shows the swap too: a tall image gets side bands of background
    padded = load_image(tmp_path / "phone.jpg", 32, fit="pad").to_uint8()
    assert (padded[:, :4] == 255).all() and (padded[:, -4:] == 255).all()
    assert not (padded[:4, 12:20] == 255).all()


@pytest.mark.parametrize("kind", ["text", "empty", "folder", "missing"])
def test_non_images_are_refused_naming_the_file(tmp_path, kind):
    path = tmp_path / "picture.png"
    if kind == "text":
        path.write_text("this is not a PNG\n")
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "folder":
        path.mkdir()
    with pytest.raises(ImageError) as e:
        load_image(path, SMALL)
    assert_names(e, "picture.png")
    with pytest.raises(ImageError, match="picture.png"):
        check_image_file(path)  # the cheap check a command line runs before loading models
    assert {"text": "cannot be read as an image", "empty": "0 bytes", "folder": "folder",
            "missing": "does not exist"}[kind] in str(e.value)


@pytest.mark.parametrize("dims", [(100_000, 100_000), (9_000, 9_000), (1, 70_000_000)])
def test_bomb_sized_header_is_refused_before_decoding(tmp_path, dims):
    # only the header is real: the IDAT holds nothing, so decoding would fail anyway
    (tmp_path / "bomb.png").write_bytes(_png(*dims, 8, 2, b""))
    t0 = time.perf_counter()
    with pytest.raises(ImageError) as e:
        load_image(tmp_path / "bomb.png", SMALL)
    assert time.perf_counter() - t0 < 2
    assert_names(e, "bomb.png")
    assert "decompression bomb" in str(e.value) or "large" in str(e.value)


def test_zero_size_header_is_refused(tmp_path):
    (tmp_path / "zero.png").write_bytes(_png(0, 5, 8, 2, b""))
    with pytest.raises(ImageError, match="zero.png"):
        load_image(tmp_path / "zero.png", SMALL)


@pytest.mark.parametrize("fit", ["stretch", "center-crop", "pad"])
def test_one_pixel_images_work_with_every_fit(tmp_path, fit):
    Image.new("RGB", (1, 1), (10, 200, 30)).save(tmp_path / "dot.png")
    px = load_image(tmp_path / "dot.png", SMALL, fit=fit).to_uint8()
    assert px.shape == (SMALL, SMALL, 3)
    assert (px == (10, 200, 30)).all(axis=2).any()  # the pixel is there, not lost
    if fit != "pad":
        assert (px == (10, 200, 30)).all()


@pytest.mark.parametrize("shape", [(2, 400), (400, 2)])  # (height, width)
@pytest.mark.parametrize("fit", ["stretch", "center-crop", "pad"])
def test_extreme_aspect_ratios_follow_the_fit_mode(tmp_path, shape, fit):
    Image.fromarray(np.full(shape + (3,), (200, 0, 0), np.uint8)).save(tmp_path / "strip.png")
    img = load_image(tmp_path / "strip.png", SMALL, fit=fit)
    px = img.to_uint8()
    assert px.shape == (SMALL, SMALL, 3) and img.original_size == (shape[1], shape[0])
    red = (px == (200, 0, 0)).all(axis=2)
    if fit in ("stretch", "center-crop"):
        assert red.all()
    else:  # one thin line of content in the middle, the rest is the white background
        assert 0 < red.sum() <= 2 * SMALL
        assert ((px == 255).all(axis=2) | red).all()
        line = red.any(axis=1) if shape[0] < shape[1] else red.any(axis=0)
        assert line.nonzero()[0].min() >= SMALL // 2 - 2


@pytest.mark.parametrize("bad", [np.zeros((0, 4, 3), np.uint8), np.zeros((4, 4, 2), np.uint8),
                                 np.zeros((4, 4), np.complex64), torch.zeros(4, 4),
                                 "", 3.5, None])
def test_bad_in_memory_images_are_refused(bad):
    with pytest.raises(ImageError):
        load_image(bad, SMALL)


def test_bad_target_sizes_are_refused():
    img = np.zeros((4, 4, 3), np.uint8)
    for size in (0, -64, (64, 0), (64,), "64", 64.0):
        with pytest.raises(ImageError):
            load_image(img, size)


# -------------------------------------------- hostile inputs (issue 15) --

def test_a_fifo_or_a_device_is_refused_as_an_image_without_reading_it(tmp_path):
    from conftest import call_with_timeout

    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    for fn in (lambda: load_image(fifo, SMALL), lambda: check_image_file(fifo)):
        exc = call_with_timeout(fn, fifo)
        assert isinstance(exc, ImageError) and "pipe.png" in str(exc) and "FIFO" in str(exc)
    with pytest.raises(ImageError, match="is a device"):
        load_image("/dev/zero", SMALL)


def test_uint8_tensors_are_converted_explicitly(images):
    as_bytes = (images[0] * 255).round().to(torch.uint8)
    from_bytes = load_image(as_bytes, SMALL).pixels
    from_floats = load_image(as_bytes.float() / 255, SMALL).pixels
    assert torch.equal(from_bytes, from_floats)
    assert 0.2 < float(from_bytes.mean()) < 0.8  # not the near-white of a 0..255 float


@pytest.mark.parametrize("bad, words", [
    (torch.rand(3, 0, 64), ["empty", "(3, 0, 64)"]),
    (torch.rand(3, 16, 16) * 255, ["outside [0, 1]", "divide by 255"]),
    (torch.full((3, 16, 16), float("nan")), ["NaN"]),
    (torch.rand(3, 16, 16).index_fill_(1, torch.tensor([3]), float("inf")), ["Inf"]),
    (torch.rand(3, 16, 16) - 0.5, ["outside [0, 1]"]),
    (torch.rand(4, 16, 16), ["(3, H, W)", "(4, 16, 16)"]),
    (torch.randint(0, 2, (3, 16, 16)), ["torch.int64", "uint8"]),
    (np.full((16, 16, 3), np.nan, np.float32), ["NaN"]),
    (np.random.default_rng(0).uniform(0, 255, (16, 16, 3)), ["outside [0, 1]"]),
])
def test_image_tensors_and_arrays_outside_the_stated_ranges_are_refused(bad, words):
    with pytest.raises(ImageError) as exc:
        load_image(bad, SMALL, name="photo")
    assert_names(exc, "photo", *words)


def test_float_pixels_may_overshoot_by_rounding_only():
    img = torch.rand(3, 16, 16)
    img[0, 0, 0], img[1, 0, 0] = 1.0005, -0.0005  # resampling ringing: clamped
    assert load_image(img, SMALL).pixels.max() <= 1


def test_a_target_size_over_the_limit_is_refused_before_allocating():
    from e4e_lab.method.config import MAX_SIZE

    t0 = time.perf_counter()
    with pytest.raises(ImageError, match=str(MAX_SIZE)):
        load_image(np.zeros((4, 4, 3), np.uint8), 99968)
    assert time.perf_counter() - t0 < 1


def test_encoded_bytes_in_memory_load_like_the_file(tmp_path, photo):
    """An upload's bytes (bytes, memoryview or BytesIO) decode to the same pixels as the
    file they came from; bad bytes are refused with the file checks' messages."""
    import io

    path = tmp_path / "photo.png"
    photo.save(path)
    data = path.read_bytes()
    from_file = load_image(path, SMALL)
    for given in (data, memoryview(data), bytearray(data), io.BytesIO(data)):
        loaded = load_image(given, SMALL, name="up.png")
        assert loaded.name == "up.png" and loaded.source is None
        assert loaded.digest == from_file.digest and loaded.original_size == (53, 37)
    for bad, words in ((b"", ["empty"]), (b"not an image at all", ["cannot be read"]),
                       (data[: len(data) // 2], ["damaged or truncated"])):
        with pytest.raises(ImageError) as exc:
            load_image(bad, SMALL, name="up.png")
        assert_names(exc, "up.png", *words)
        assert "BytesIO" not in str(exc.value)  # no object address from Pillow's text
