"""Bad input, faults and unsafe files (issue 4): clear typed errors, nothing lost,
nothing executed.

Every file these tests feed the library is made here, in ``tmp_path``: truncated,
CMYK, 16-bit, palette-with-alpha and EXIF-rotated images, a text file named .png, a
PNG whose header declares 100000 x 100000 pixels, corrupt cache entries, a "SAM
checkpoint" that is a malicious pickle, and so on.

Determinism. On the CPU the same inputs, seed and config give bit-identical outputs
(``test_same_inputs_give_bit_identical_outputs``): the inversion noise is drawn from a
seeded CPU generator and every CPU kernel used here is deterministic. On a GPU the
results agree only to a tolerance unless you opt in to determinism, because

- some CUDA kernels are nondeterministic (atomic adds in backward passes, scatter and
  index ops, some convolution algorithms chosen by cuDNN's benchmark autotuner), and
  cuBLAS may pick a different reduction split from one call to the next;
- fp16 (our CUDA default) rounds differently from fp32, and different GPUs, driver or
  library versions choose different kernels;
- ``scaled_dot_product_attention`` picks a backend (flash, memory-efficient, math) by
  GPU, dtype and shape, and these sum in different orders.

For repeatable GPU runs call ``torch.use_deterministic_algorithms(True)``, set
``CUBLAS_WORKSPACE_CONFIG=:4096:8`` (or ``:16:8``) before CUDA starts, turn off
``torch.backends.cudnn.benchmark``, pin the SDPA backend (``torch.nn.attention.sdpa_kernel``)
and use fp32 (``--dtype float32``). Runs are then repeatable on one machine and software
stack, not across GPU models. The seeded CPU generator keeps the inversion noise itself
identical on every device.
"""

from __future__ import annotations

import ast
import json
import logging
import multiprocessing as mp
import pickle
import struct
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from e4e_lab.errors import (BoxError, ConfigError, DeviceOutOfMemoryError, ImageError,
                            MaskError, ModelUnavailableError, NumericalError,
                            TransferCancelled)
from e4e_lab.io.formats import lookup_box, parse_box, read_boxes
from e4e_lab.method.config import TransferConfig
from e4e_lab.method.images import check_image_file, load_image
from e4e_lab.method.masks import as_mask, mask_at

ROOT = Path(__file__).resolve().parents[1]
SIZE = 64

# A very short schedule at 64 px (this CPU is shared): 4 denoising steps with injection
# (a structure refresh at step 0) and masked AdaIN on the last two.
FAULT_CFG = dict(num_steps=6, skip_steps=2, feat_range=(0, 4), adain_range=(2, 6),
                 refresh_until=2, domain="bird")
BOXES = ([8, 8, 56, 56], [4, 12, 60, 52])  # appearance, structure (64-px pixels)


# ================================================================ helpers ===

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


def _assert_names(exc_info, *parts):
    msg = str(exc_info.value)
    for part in parts:
        assert str(part) in msg, f"{part!r} not in message: {msg}"


# ================================================================ images ====

def test_truncated_jpeg_is_refused_naming_the_file(tmp_path):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(
        tmp_path / "photo.jpg", quality=95)
    data = (tmp_path / "photo.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError) as e:
        load_image(tmp_path / "cut.jpg", SIZE)
    _assert_names(e, "cut.jpg")
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
        load_image(path, SIZE)
    _assert_names(e, "picture.png")
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
        load_image(tmp_path / "bomb.png", SIZE)
    assert time.perf_counter() - t0 < 2
    _assert_names(e, "bomb.png")
    assert "decompression bomb" in str(e.value) or "large" in str(e.value)


def test_zero_size_header_is_refused(tmp_path):
    (tmp_path / "zero.png").write_bytes(_png(0, 5, 8, 2, b""))
    with pytest.raises(ImageError, match="zero.png"):
        load_image(tmp_path / "zero.png", SIZE)


@pytest.mark.parametrize("fit", ["stretch", "center-crop", "pad"])
def test_one_pixel_images_work_with_every_fit(tmp_path, fit):
    Image.new("RGB", (1, 1), (10, 200, 30)).save(tmp_path / "dot.png")
    px = load_image(tmp_path / "dot.png", SIZE, fit=fit).to_uint8()
    assert px.shape == (SIZE, SIZE, 3)
    assert (px == (10, 200, 30)).all(axis=2).any()  # the pixel is there, not lost
    if fit != "pad":
        assert (px == (10, 200, 30)).all()


@pytest.mark.parametrize("shape", [(2, 400), (400, 2)])  # (height, width)
@pytest.mark.parametrize("fit", ["stretch", "center-crop", "pad"])
def test_extreme_aspect_ratios_follow_the_fit_mode(tmp_path, shape, fit):
    Image.fromarray(np.full(shape + (3,), (200, 0, 0), np.uint8)).save(tmp_path / "strip.png")
    img = load_image(tmp_path / "strip.png", SIZE, fit=fit)
    px = img.to_uint8()
    assert px.shape == (SIZE, SIZE, 3) and img.original_size == (shape[1], shape[0])
    red = (px == (200, 0, 0)).all(axis=2)
    if fit in ("stretch", "center-crop"):
        assert red.all()
    else:  # one thin line of content in the middle, the rest is the white background
        assert 0 < red.sum() <= 2 * SIZE
        assert ((px == 255).all(axis=2) | red).all()
        line = red.any(axis=1) if shape[0] < shape[1] else red.any(axis=0)
        assert line.nonzero()[0].min() >= SIZE // 2 - 2


@pytest.mark.parametrize("bad", [np.zeros((0, 4, 3), np.uint8), np.zeros((4, 4, 2), np.uint8),
                                 np.zeros((4, 4), np.complex64), torch.zeros(4, 4),
                                 "", 3.5, None])
def test_bad_in_memory_images_are_refused(bad):
    with pytest.raises(ImageError):
        load_image(bad, SIZE)


def test_bad_target_sizes_are_refused():
    img = np.zeros((4, 4, 3), np.uint8)
    for size in (0, -64, (64, 0), (64,), "64", 64.0):
        with pytest.raises(ImageError):
            load_image(img, size)


# ================================================================= boxes ====

@pytest.mark.parametrize("box, why", [
    ([100, 100, 200, 200], "outside"),
    ([-50, -50, -10, -10], "outside"),
    ([40, 40, 10, 10], "inverted"),
    ([10, 10, 10, 30], "zero area"),
    ([10, 10, 30, 10], "zero area"),
    (["a", 0, 10, 10], "non-numeric"),
    ([0, 0, 10, None], "non-numeric"),
    ([0, 0, True, 10], "non-numeric"),
    ([0, 0, float("nan"), 10], "non-finite"),
    ([0, 0, float("inf"), 10], "non-finite"),
    ([0, 0, 10 ** 400, 10], "large"),
    ([0, 0, 10], "3 values"),
    ([0, 0, 10, 10, 5], "5 values"),
    ([], "0 values"),
    ("0 0 10 10", "four numbers"),
    ("[0, 0, 10, 10]", "four numbers"),
    (b"abcd", "four numbers"),
    (None, "four numbers"),
    (7, "four numbers"),
    ({"x0": 0}, "1 values"),
])
def test_bad_boxes_give_box_errors(box, why):
    with pytest.raises(BoxError) as e:
        parse_box(box, (SIZE, SIZE), "appearance box")
    _assert_names(e, "appearance box", why)


def test_boxes_reaching_past_the_image_are_clipped_as_documented():
    assert parse_box([-10, 5.5, 70, 63.2], (SIZE, SIZE)) == (0, 5, 64, 64)
    assert parse_box(np.array([1, 2, 3, 4]), (SIZE, SIZE)) == (1, 2, 3, 4)
    assert parse_box(torch.tensor([1.0, 2.0, 3.0, 4.0]), (SIZE, SIZE)) == (1, 2, 3, 4)
    with pytest.raises(BoxError, match="reaches outside"):
        parse_box([-10, 5, 70, 60], (SIZE, SIZE), clip=False)


@pytest.mark.parametrize("content, why", [
    ("{not json", "not valid JSON"),
    ("[[0, 0, 10, 10]]", "must hold an object"),
    ('"cat.png"', "must hold an object"),
    ("", "not valid JSON"),
    ("[" * 100_000, "nested too deeply"),
])
def test_bad_boxes_json_is_refused(tmp_path, content, why):
    (tmp_path / "boxes.json").write_text(content)
    with pytest.raises(BoxError) as e:
        read_boxes(tmp_path / "boxes.json")
    _assert_names(e, "boxes.json", why)


def test_boxes_json_that_is_not_text_or_missing_is_refused(tmp_path):
    (tmp_path / "boxes.json").write_bytes(b"\xff\xfe{\x00")
    with pytest.raises(BoxError, match="not UTF-8"):
        read_boxes(tmp_path / "boxes.json")
    with pytest.raises(BoxError, match="cannot be read"):
        read_boxes(tmp_path / "nowhere.json")
    with pytest.raises(BoxError, match="cannot be read"):
        read_boxes(tmp_path)  # a folder


def test_boxes_json_is_parsed_as_data_never_evaluated(tmp_path):
    marker = tmp_path / "evaluated"
    payload = f"__import__('pathlib').Path({str(marker)!r}).touch()"
    (tmp_path / "boxes.json").write_text(json.dumps({"cat.png": payload}))
    boxes = read_boxes(tmp_path / "boxes.json")
    with pytest.raises(BoxError):
        parse_box(lookup_box(boxes, "cat.png"), (SIZE, SIZE))
    assert not marker.exists()


@pytest.mark.parametrize("size", [0, -512, "512", True, [512], [512, 512, 3], [512, 0],
                                  float("nan"), float("inf"), None, {"w": 1}])
def test_bad_declared_box_resolution_is_refused(size):
    boxes = {"_size": size, "cat.png": [0, 0, 10, 10]}
    if size is None:  # "_size": null means "not declared"
        assert read_boxes(boxes, (SIZE, SIZE)) == {"cat.png": [0, 0, 10, 10]}
        return
    with pytest.raises(BoxError, match="_size"):
        read_boxes(boxes, (SIZE, SIZE))


def test_declared_box_resolution_scales_boxes():
    boxes = read_boxes({"_size": 512, "cat.png": [64, 128, 256, 512]}, (SIZE, SIZE))
    assert parse_box(boxes["cat.png"], (SIZE, SIZE)) == (8, 16, 32, 64)
    boxes = read_boxes({"_size": [256, 128], "a": [0, 0, 256, 128], "b": "junk"}, (64, 32))
    assert boxes["a"] == [0, 0, 64, 32] and boxes["b"] == "junk"  # junk left for parse_box
    with pytest.raises(BoxError):
        read_boxes([[0, 0, 1, 1]], (SIZE, SIZE))


def test_box_lookup_by_names_without_digits():
    """The reference keyed boxes by the first number in the file name and crashed on
    names without digits; ours looks up by name, base name or stem."""
    boxes = {"cat.png": [1, 2, 3, 4], "horse": [5, 6, 7, 8], "photos/dog.jpg": [9, 9, 19, 19]}
    assert lookup_box(boxes, "cat.png") == [1, 2, 3, 4]
    assert lookup_box(boxes, "/data/set/cat.png") == [1, 2, 3, 4]
    assert lookup_box(boxes, "horse.jpg") == [5, 6, 7, 8]
    assert lookup_box(boxes, "dog.png") == [9, 9, 19, 19]
    assert lookup_box(boxes, "zebra.png") is None
    assert lookup_box(boxes, "") is None
    assert lookup_box({}, "cat.png") is None


def test_pair_resolves_boxes_by_name_for_files_without_digits(lab, tmp_path, images):
    for name, px in zip(("cat.png", "horse.png"), images):
        Image.fromarray((px.permute(1, 2, 0).numpy() * 255).astype(np.uint8)).save(
            tmp_path / name)
    boxes = read_boxes_from(tmp_path, {"_size": 128, "cat.png": [16, 16, 112, 112],
                                       "horse": [0, 32, 128, 96]})
    pair = lab.pair(tmp_path / "cat.png", tmp_path / "horse.png", boxes=boxes, mask="box",
                    size=SIZE)
    assert pair.appearance_box == (8, 8, 56, 56) and pair.structure_box == (0, 16, 64, 48)
    assert pair.structure_mask.sum() == 64 * 32


def read_boxes_from(folder: Path, data: dict) -> dict:
    (folder / "boxes.json").write_text(json.dumps(data))
    return read_boxes(folder / "boxes.json")


# ================================================================= masks ====

def test_masks_wrong_size_are_resized_and_bad_ones_refused():
    m = np.zeros((16, 16), np.uint8)
    m[4:12, 4:12] = 255
    out = as_mask(m, (SIZE, SIZE))
    assert out.shape == (SIZE, SIZE) and set(out.unique().tolist()) == {0.0, 1.0}
    assert out.sum() == 32 * 32
    assert as_mask(torch.ones(1, 1, 8, 8), (8, 8)).shape == (8, 8)  # (1, 1, H, W) squeezed
    assert as_mask(np.ones((8, 8, 1), bool)).sum() == 64
    for bad, why in [(np.zeros((8, 8, 3)), "2-D"), (np.zeros((2, 8, 8)), "2-D"),
                     (np.zeros(8), "2-D"), (np.zeros((0, 8)), "2-D"),
                     (np.full((8, 8), np.nan), "NaN"), (np.full((8, 8), np.inf), "NaN"),
                     ("mask.png", "2-D"), ([[1, 0], [1]], "numbers"), (None, "2-D"),
                     (np.ones((4, 4), np.complex64), "complex")]:
        with pytest.raises(MaskError, match=why):
            as_mask(bad, (SIZE, SIZE), name="structure mask")


def test_empty_and_tiny_masks_are_caught_before_adain_and_matching(warm_lab, images):
    lab, fast_config = warm_lab, TransferConfig(**FAULT_CFG)
    with pytest.raises(MaskError, match="empty") as e:
        lab.pair(images[0], images[1], appearance_mask=np.zeros((SIZE, SIZE)), size=SIZE)
    _assert_names(e, "appearance mask", "--mask box")
    # a box so small that it covers less than two cells of the coarsest grid
    pair = lab.pair(images[0], images[1], appearance_box=[0, 0, 2, 2],
                    structure_box=[0, 0, 64, 64], mask="box", size=SIZE)
    calls = []
    with pytest.raises(MaskError, match="appearance") as e:
        lab.transfer(pair, fast_config, callback=calls.append)
    assert not calls  # refused before the first denoising step
    assert "larger box" in str(e.value)


class _EmptySam:
    """Stands in for SAM-HQ returning an empty mask (e.g. a box on plain background)."""

    def mask(self, image, box, points=None, labels=None):
        return torch.zeros(image.size[1], image.size[0])


def test_an_empty_sam_mask_is_refused_with_what_to_do(models, tmp_path, images):
    from e4e_lab.session import Lab

    lab = Lab(models=models, cache_dir=tmp_path, sam=_EmptySam())
    with pytest.raises(MaskError) as e:
        lab.pair(images[0], images[1], appearance_box=BOXES[0], structure_box=BOXES[1],
                 mask="sam", size=SIZE)
    _assert_names(e, "SAM-HQ returned an empty mask", "--mask box")


def test_mask_at_keeps_thin_objects():
    m = torch.zeros(64, 64)
    m[30, :] = 1  # one pixel high: vanishes under a plain area average
    for grid in ((8, 8), (4, 4), (1, 1), (3, 5)):
        out = mask_at(m, grid)
        assert out.sum() > 0 and set(out.unique().tolist()) <= {0.0, 1.0}


# ================================================================ config ====

CONFIG_CASES = [
    ("num_steps", 0, "[1, 1000]"), ("num_steps", 20.0, "[1, 1000]"),
    ("num_steps", True, "[1, 1000]"), ("inversion_cfg", -1.0, "[0.0, 100.0]"),
    ("inversion_cfg", float("nan"), "[0.0, 100.0]"), ("seed", -1, "[0, "),
    ("seed", "7", "[0, "), ("domain", "  ", "non-empty"), ("domain", None, "non-empty"),
    ("prompt_template", "A photo", "{domain}"),
    ("prompt_template", "A {domain} of {kind}", "only placeholder"),
    ("freeu", "yes", "reference, diffusers, off"), ("skip_steps", 100, "[0, 99]"),
    ("skip_steps", -1, "at least one"), ("guidance", -1, "[0.0, 100.0]"),
    ("guidance", float("inf"), "[0.0, 100.0]"), ("guidance", "2.5", "[0.0, 100.0]"),
    ("injection", "q", "one of feature, v, kv, cross-image, none"),
    ("injection", None, "one of"), ("correspondence", "sift", "one of match, dift"),
    ("feat_range", (70, 10), "0 <= start <= end <= 100"),
    ("feat_range", (10, 101), "0 <= start <= end <= 100"),
    ("feat_range", (10,), "0 <= start <= end"), ("feat_range", (1.5, 3), "integers"),
    ("adain_range", "50-100", "0 <= start <= end"), ("adain", 1, "true or false"),
    ("refresh_every", -5, "0 turns the structure refresh off"),
    ("refresh_until", 1001, "[0, 1000]"),
    ("cross_image_contrast", -1, "[0.0, 100.0]"),
    ("cross_image_guidance", (3.5,), "pair"), ("cross_image_guidance", (3.5, -1), "[0.0, 100.0]"),
    ("cross_image_adain_start", -1, "[0, 1000]"), ("dift_timestep", 1000, "[0, 999]"),
    ("dift_block", -1, "[0, 16]"), ("dift_ensemble", 0, "[1, 256]"),
    ("record_matches", "no", "true or false"),
    ("record_attention_layers", "up_blocks.3", "names"),
    ("record_attention_steps", 5, "step indices"),
    ("record_attention_steps", (0, 200), "integers in [0, 100]"),
]


@pytest.mark.parametrize("field, value, allowed", CONFIG_CASES,
                         ids=[f"{f}={v!r}" for f, v, _ in CONFIG_CASES])
def test_each_config_field_names_field_value_and_range(field, value, allowed):
    with pytest.raises(ConfigError) as e:
        TransferConfig(**{field: value})
    assert e.value.field == field
    _assert_names(e, f"'{field}'", repr(value if not isinstance(value, list) else tuple(value)),
                  allowed)


def test_every_config_field_is_covered_above():
    import dataclasses

    fields = {f.name for f in dataclasses.fields(TransferConfig)}
    assert fields == {f for f, _, _ in CONFIG_CASES}


def test_short_schedules_keep_the_default_thresholds():
    """refresh_until / cross_image_adain_start are thresholds, not ranges: a 10-step
    schedule (the CLI has no flag for them) must not be refused because of them."""
    cfg = TransferConfig(**FAULT_CFG | {"refresh_until": 40})
    assert cfg.refresh_until == 40 and cfg.cross_image_adain_start == 20


def test_config_json_is_data(tmp_path):
    with pytest.raises(ConfigError, match="unknown field"):
        TransferConfig.from_dict({"__class__": "os.system"})
    with pytest.raises(ConfigError):
        TransferConfig.from_dict(["num_steps", 10])
    cfg = TransferConfig(**FAULT_CFG)
    assert TransferConfig.from_dict(json.loads(cfg.to_json())) == cfg


# ================================================================ models ====

def test_missing_model_folder(tmp_path):
    from e4e_lab.models import load_pipeline

    with pytest.raises(ModelUnavailableError) as e:
        load_pipeline(str(tmp_path / "nowhere"), device="cpu")
    _assert_names(e, "nowhere", "does not exist", "--model tiny")
    with pytest.raises(ModelUnavailableError, match="no model given"):
        load_pipeline("", device="cpu")


def test_model_folder_without_model_index(tmp_path):
    from e4e_lab.models import load_pipeline

    (tmp_path / "sd").mkdir()
    (tmp_path / "sd" / "unet").mkdir()
    with pytest.raises(ModelUnavailableError) as e:
        load_pipeline(str(tmp_path / "sd"), device="cpu")
    _assert_names(e, "sd", "model_index.json", "--model tiny")
    (tmp_path / "sd" / "model_index.json").write_text("{broken")
    with pytest.raises(ModelUnavailableError) as e:
        load_pipeline(str(tmp_path / "sd"), device="cpu")
    _assert_names(e, "sd", "save_pretrained", "--model tiny")


def test_hub_id_offline_with_empty_hf_home_fails_quickly(tmp_path, monkeypatch):
    from e4e_lab.models import load_pipeline

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    t0 = time.perf_counter()
    with pytest.raises(ModelUnavailableError) as e:
        load_pipeline("stable-diffusion-v1-5/stable-diffusion-v1-5", device="cpu")
    assert time.perf_counter() - t0 < 20
    _assert_names(e, "stable-diffusion-v1-5/stable-diffusion-v1-5",
                  "hf download", "--model tiny")


def test_missing_sam_checkpoint(tmp_path, monkeypatch):
    from e4e_lab.models.sam import SamMasker

    monkeypatch.delenv("E4E_SAM_CHECKPOINT", raising=False)
    monkeypatch.setenv("E4E_LAB_CACHE", str(tmp_path / "cache"))
    with pytest.raises(ModelUnavailableError) as e:
        SamMasker.load(tmp_path / "sam_hq_vit_l.pth")
    _assert_names(e, "sam_hq_vit_l.pth", "--sam-checkpoint", "--mask box")
    with pytest.raises(ModelUnavailableError, match="E4E_SAM_CHECKPOINT"):
        SamMasker.load(None)


class _Exploit:
    """Unpickling this creates a marker file (stands for arbitrary code execution)."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump", "state-dict-wrapper"])
def test_malicious_sam_checkpoint_is_not_executed(tmp_path, writer):
    from e4e_lab.models.sam import SamMasker

    marker = tmp_path / "PWNED"
    ckpt = tmp_path / "sam_hq_vit_l.pth"
    payload = _Exploit(str(marker))
    if writer == "torch.save":
        torch.save(payload, ckpt)
    elif writer == "pickle.dump":
        with open(ckpt, "wb") as fh:
            pickle.dump(payload, fh)
    else:
        torch.save({"model": {"weight": torch.zeros(1)}, "extra": payload}, ckpt)
    assert not marker.exists()
    with pytest.raises(ModelUnavailableError) as e:
        SamMasker.load(ckpt)
    assert not marker.exists(), "the checkpoint's pickle was executed"
    _assert_names(e, "sam_hq_vit_l.pth")


def test_sam_checkpoint_holding_no_weights_is_refused(tmp_path):
    from e4e_lab.models.sam import SamMasker

    torch.save(torch.zeros(3), tmp_path / "tensor.pth")
    with pytest.raises(ModelUnavailableError, match="state dict"):
        SamMasker.load(tmp_path / "tensor.pth")
    torch.save({"model": {"weight": "nope"}}, tmp_path / "str.pth")
    with pytest.raises(ModelUnavailableError):
        SamMasker.load(tmp_path / "str.pth")


# ================================================================= files ====

def _scan_python(tree: ast.AST, where: str) -> list[str]:
    bad = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
            if any(n.split(".")[0] in ("pickle", "cPickle", "dill", "marshal", "shelve")
                   for n in names):
                bad.append(f"{where}:{node.lineno} imports a pickle-like module")
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""
        owner = f.value.id if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) else ""
        kw = {k.arg: k.value for k in node.keywords}
        if (isinstance(f, ast.Name) and name in ("eval", "exec", "__import__")) or (
                owner == "builtins" and name in ("eval", "exec")):
            bad.append(f"{where}:{node.lineno} calls {name}()")
        if owner == "torch" and name == "load":
            wo = kw.get("weights_only")
            if not (isinstance(wo, ast.Constant) and wo.value is True):
                bad.append(f"{where}:{node.lineno} torch.load without weights_only=True")
        if owner in ("pickle", "dill", "joblib") and name in ("load", "loads"):
            bad.append(f"{where}:{node.lineno} {owner}.{name}")
        if owner in ("yaml",) and name in ("load", "unsafe_load", "full_load"):
            bad.append(f"{where}:{node.lineno} yaml.{name}")
        if owner == "np" and name == "load":
            ap = kw.get("allow_pickle")
            if ap is not None and not (isinstance(ap, ast.Constant) and ap.value is False):
                bad.append(f"{where}:{node.lineno} np.load with allow_pickle")
    return bad


def test_no_unsafe_loading_anywhere_in_the_project():
    """No pickles (torch.load only with weights_only=True), no eval/exec of data."""
    bad, scanned = [], 0
    for folder in ("e4e_lab", "widgets", "benchmarks"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            scanned += 1
            bad += _scan_python(ast.parse(path.read_text(encoding="utf-8")),
                                str(path.relative_to(ROOT)))
    for nb in sorted((ROOT / "notebooks").rglob("*.ipynb")):
        cells = json.loads(nb.read_text(encoding="utf-8")).get("cells", [])
        for k, cell in enumerate(cells):
            if cell.get("cell_type") != "code":
                continue
            src = "".join(cell.get("source", []))
            src = "\n".join("" if ln.lstrip().startswith(("%", "!")) else ln
                            for ln in src.splitlines())
            try:
                tree = ast.parse(src)
            except SyntaxError:
                continue
            bad += _scan_python(tree, f"{nb.relative_to(ROOT)}[cell {k}]")
    assert scanned > 10
    assert not bad, "\n".join(bad)


def _entry(n=3):
    g = torch.Generator().manual_seed(n)
    return {"xts": torch.randn(n + 1, 4, 8, 8, generator=g),
            "zs": torch.randn(n, 4, 8, 8, generator=g), "timesteps": torch.arange(n, 0, -1)}


def _corrupt(kind: str, cache, key: str, spec: dict, tensors) -> tuple[str, dict]:
    """Damage the entry stored under ``key``; returns the (key, spec) to read back."""
    path = cache.path(key)
    data = bytearray(path.read_bytes())
    if kind == "truncated":
        path.write_bytes(bytes(data[: len(data) // 2]))
    elif kind == "flipped-data":
        data[-7] ^= 0x10
        path.write_bytes(bytes(data))
    elif kind == "flipped-header":
        data[20] ^= 0x01
        path.write_bytes(bytes(data))
    elif kind == "pickle":
        path.write_bytes(pickle.dumps(tensors))
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "other-key":  # a valid entry copied under another key's name
        other = "0" * 64
        cache.path(other).write_bytes(bytes(data))
        return other, spec
    elif kind == "other-spec":  # same key, but the request's inputs differ
        return key, dict(spec, cfg=spec["cfg"] + 1)
    return key, spec


CORRUPTIONS = ["truncated", "flipped-data", "flipped-header", "pickle", "empty", "other-key",
               "other-spec"]


@pytest.mark.parametrize("kind", CORRUPTIONS)
def test_corrupt_cache_entries_are_detected_logged_and_dropped(tmp_path, caplog, kind):
    from e4e_lab.io.cache import TensorCache, key_of

    cache = TensorCache(tmp_path, "inversions")
    spec = {"stage": "test", "cfg": 3.5}
    key = key_of(spec)
    tensors = _entry()
    cache.put(key, spec, tensors)
    got = cache.get(key, spec)
    assert got is not None and all(torch.equal(got[k], tensors[k]) for k in tensors)
    read_key, read_spec = _corrupt(kind, cache, key, spec, tensors)
    with caplog.at_level(logging.WARNING, logger="e4e_lab.io.cache"):
        assert cache.get(read_key, read_spec) is None
    assert any("discarded" in r.getMessage() and "recomputed" in r.getMessage()
               for r in caplog.records)
    assert not cache.path(read_key).exists()
    cache.put(read_key, read_spec, tensors)  # the caller's recomputation lands cleanly
    assert cache.get(read_key, read_spec) is not None


@pytest.mark.parametrize("kind", ["flipped-data", "other-spec"])
def test_inversion_recomputes_a_corrupt_entry(models, tmp_path, images, caplog, kind):
    from e4e_lab.io.cache import TensorCache
    from e4e_lab.method.config import InversionConfig
    from e4e_lab.method.inversion import cache_spec, invert

    cache = TensorCache(tmp_path, "inversions")
    cfg = InversionConfig(num_steps=6, domain="bird")
    img = load_image(images[0], SIZE)
    first = invert(models, [img], cfg, cache=cache)[0]
    if kind == "flipped-data":
        _corrupt(kind, cache, first.key, {}, None)
    else:  # the file under this key records other inputs (e.g. a stale entry)
        spec = dict(cache_spec(models, img, cfg), cfg=99.0)
        cache.put(first.key, spec, {"xts": first.xts + 1, "zs": first.zs,
                                    "timesteps": first.timesteps})
    with caplog.at_level(logging.WARNING, logger="e4e_lab.io.cache"):
        again = invert(models, [img], cfg, cache=cache)[0]
    assert not again.from_cache
    assert any("discarded" in r.getMessage() for r in caplog.records)
    assert torch.equal(again.xts, first.xts) and torch.equal(again.zs, first.zs)
    third = invert(models, [img], cfg, cache=cache)[0]  # the rewritten entry is valid
    assert third.from_cache and torch.equal(third.xts, first.xts)
    assert sorted(p.suffix for p in cache.folder.iterdir() if p.suffix != ".lock") \
        == [".safetensors"]


def _hammer(root: str, rounds: int, seed: int, conn) -> None:
    """Child process: write and read one cache entry many times."""
    from e4e_lab.io.cache import TensorCache, key_of

    cache = TensorCache(root, "shared")
    spec = {"stage": "concurrency"}
    key = key_of(spec)
    tensors = {"x": torch.arange(250_000, dtype=torch.float32), "y": torch.ones(3)}
    problems = []
    for r in range(rounds):
        cache.put(key, spec, tensors)
        got = cache.get(key, spec)
        if got is None:
            problems.append(f"round {r}: entry missing or discarded right after a write")
        elif not all(torch.equal(got[k], tensors[k]) for k in tensors):
            problems.append(f"round {r}: wrong content")
    conn.send(problems)
    conn.close()


def test_two_processes_writing_one_entry_leave_one_valid_entry(tmp_path):
    from e4e_lab.io.cache import TensorCache, key_of

    ctx = mp.get_context("spawn")
    procs, pipes = [], []
    for seed in range(2):
        parent, child = ctx.Pipe(duplex=False)
        p = ctx.Process(target=_hammer, args=(str(tmp_path), 15, seed, child))
        p.start()
        procs.append(p)
        pipes.append(parent)
    results = [pipe.recv() if pipe.poll(180) else ["no answer"] for pipe in pipes]
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    assert results == [[], []]
    files = sorted(p.name for p in (tmp_path / "shared").iterdir())
    entries = [f for f in files if f.endswith(".safetensors")]
    assert len(entries) == 1
    assert all(f.endswith((".safetensors", ".lock")) for f in files), files  # no temp files
    spec = {"stage": "concurrency"}
    got = TensorCache(tmp_path, "shared").get(key_of(spec), spec)
    assert got is not None and torch.equal(got["x"], torch.arange(250_000, dtype=torch.float32))


# =============================================================== outputs ====

def test_save_run_refuses_an_existing_run_folder(tmp_path, reference_run):
    from e4e_lab.io.outputs import OutputExistsError, check_output, save_run

    result, pair = reference_run
    out = tmp_path / "run"
    paths = save_run(out, result, pair)
    before = {name: p.read_bytes() for name, p in paths.items()}
    with pytest.raises(OutputExistsError) as e:
        save_run(out, result, pair, extra={"other": 1})
    _assert_names(e, "run", "--overwrite")
    with pytest.raises(OutputExistsError):
        check_output(out)
    assert {name: p.read_bytes() for name, p in paths.items()} == before  # nothing lost
    assert json.loads((out / "config.json").read_text()).get("other") is None
    save_run(out, result, pair, extra={"other": 1}, overwrite=True)
    assert json.loads((out / "config.json").read_text())["other"] == 1
    # a folder with unrelated files is fine; a file in the way is not
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("mine")
    save_run(tmp_path / "notes", result, pair)
    assert (tmp_path / "notes" / "readme.txt").read_text() == "mine"
    (tmp_path / "afile").write_text("x")
    with pytest.raises(OutputExistsError, match="not a folder"):
        save_run(tmp_path / "afile", result, pair)
    assert not list(out.glob(".*.tmp"))


# ============================================== cancellation and faults ====

def _pair(lab, images):
    return lab.pair(images[0], images[1], appearance_box=BOXES[0], structure_box=BOXES[1],
                    mask="box", size=SIZE)


@pytest.fixture(scope="module")
def reference_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("reference")


@pytest.fixture(scope="module")
def reference_run(models, images, reference_cache):
    """One transfer on a fresh Lab: what every later run must equal."""
    from e4e_lab.session import Lab

    lab = Lab(models=models, cache_dir=reference_cache)
    pair = _pair(lab, images)
    return lab.transfer(pair, TransferConfig(**FAULT_CFG)), pair


@pytest.fixture()
def warm_lab(models, reference_run, reference_cache):
    """A new session on the reference's disk cache (its inversions are read, not redone)."""
    from e4e_lab.session import Lab

    return Lab(models=models, cache_dir=reference_cache)


@pytest.fixture(scope="module")
def warm_reference(models, images, reference_run, reference_cache):
    """The reference run again, on a fresh session that reads the cached inversions."""
    from e4e_lab.session import Lab

    lab = Lab(models=models, cache_dir=reference_cache)
    return lab.transfer(_pair(lab, images), TransferConfig(**FAULT_CFG))


def _unet_state(unet) -> dict:
    procs = {name: type(p) for name, p in unet.attn_processors.items()}
    freeu = [(getattr(b, "b1", None), getattr(b, "s1", None)) for b in unet.up_blocks]
    return {"procs": procs, "freeu": freeu}


class _Boom(RuntimeError):
    pass


def _faulty_callback(kind: str, at: int, cancel: threading.Event):
    def callback(ev):
        if ev.step == at:
            if kind == "cancel":
                cancel.set()
            elif kind == "exception":
                raise _Boom(f"failure in the callback at step {ev.step}")
            else:
                raise KeyboardInterrupt
    return callback


@pytest.mark.parametrize("kind, expected", [("cancel", TransferCancelled),
                                            ("exception", _Boom),
                                            ("keyboard", KeyboardInterrupt)])
def test_faults_inside_a_run_leave_the_lab_usable(warm_lab, images, warm_reference, kind,
                                                  expected):
    lab = warm_lab
    unet = lab.models.unet
    before = _unet_state(unet)
    pair = _pair(lab, images)
    cfg = TransferConfig(**FAULT_CFG)
    cancel = threading.Event()
    with pytest.raises(expected) as e:
        lab.transfer(pair, cfg, callback=_faulty_callback(kind, 1, cancel), cancel=cancel)
    if kind == "cancel":
        assert e.value.step == 2 and e.value.total == cfg.denoising_steps
    assert _unet_state(unet) == before  # processors and FreeU restored
    assert not any("E4E" in t.__name__ for t in _unet_state(unet)["procs"].values())
    steps = []
    result = lab.transfer(pair, cfg, callback=lambda ev: steps.append(ev.step))
    assert steps == list(range(cfg.denoising_steps))
    assert torch.equal(result.image, warm_reference.image)
    assert torch.equal(result.latents, warm_reference.latents)
    assert _unet_state(unet) == before


def test_interrupted_inversion_leaves_the_cache_consistent(lab, images, reference_run):
    pair = _pair(lab, images)
    cfg = TransferConfig(**FAULT_CFG)

    def interrupt(done, total):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        lab.transfer(pair, cfg, inversion_progress=interrupt)
    folder = lab.disk_cache.folder
    assert not [p for p in folder.iterdir() if p.suffix != ".lock"]  # nothing half-written
    result = lab.transfer(pair, cfg)
    assert torch.equal(result.image, reference_run[0].image)
    assert len(list(folder.glob("*.safetensors"))) == 2


def test_nan_in_a_stored_inversion_is_reported_with_its_step(warm_lab, images):
    from e4e_lab.method.inversion import InversionResult
    from e4e_lab.method.transfer import run_transfer

    lab = warm_lab
    pair = _pair(lab, images)
    cfg = TransferConfig(**FAULT_CFG)
    app, struct = lab.invert([pair.appearance, pair.structure], cfg)
    k0 = cfg.skip_steps

    def poisoned(inv, *, xt=None, z=None):
        xts, zs = inv.xts.clone(), inv.zs.clone()
        if xt is not None:
            xts[xt] = float("nan")
        if z is not None:
            zs[z, 0, 2, 3] = float("inf")
        return InversionResult(inv.name, xts, zs, inv.timesteps, inv.config, inv.key)

    for bad_struct, step in ((poisoned(struct, z=k0 + 2), 2), (poisoned(struct, xt=k0), 0)):
        seen = []
        with pytest.raises(NumericalError) as e:
            run_transfer(lab.models, app, bad_struct, pair.appearance_mask, pair.structure_mask,
                         cfg, callback=seen.append)
        _assert_names(e, f"step {step} ", f"t={int(struct.timesteps[k0 + step])}")
        assert all(torch.isfinite(ev.latent).all() for ev in seen[:step])
    # the stored inversions themselves were not touched
    assert torch.isfinite(struct.zs).all() and torch.isfinite(struct.xts).all()


def _oom_after(n_ok: int, real_forward):
    calls = {"n": 0}

    def forward(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > n_ok:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_forward(*args, **kwargs)
    return forward


def test_out_of_memory_during_denoising_is_mapped_and_recoverable(warm_lab, images,
                                                                  warm_reference, monkeypatch):
    lab = warm_lab
    unet = lab.models.unet
    pair = _pair(lab, images)
    cfg = TransferConfig(**FAULT_CFG)
    lab.invert([pair.appearance, pair.structure], cfg)
    before = _unet_state(unet)
    monkeypatch.setattr(unet, "forward", _oom_after(2, unet.forward))
    with pytest.raises(DeviceOutOfMemoryError) as e:
        lab.transfer(pair, cfg)
    assert "reduce" in str(e.value)
    monkeypatch.undo()
    assert _unet_state(unet) == before
    assert torch.equal(lab.transfer(pair, cfg).image, warm_reference.image)


@pytest.mark.parametrize("stage", ["inversion", "decode"])
def test_out_of_memory_at_other_stages_is_mapped(request, images, monkeypatch, stage):
    # inversion: a session with an empty cache; decode: one that reads cached inversions
    lab = request.getfixturevalue("lab" if stage == "inversion" else "warm_lab")
    pair = _pair(lab, images)
    cfg = TransferConfig(**FAULT_CFG)
    if stage == "inversion":
        unet = lab.models.unet
        monkeypatch.setattr(unet, "forward", _oom_after(0, unet.forward))
    else:
        vae = lab.models.vae
        monkeypatch.setattr(vae, "decode", _oom_after(0, vae.decode))
    with pytest.raises(DeviceOutOfMemoryError, match="reduce"):
        lab.transfer(pair, cfg)


# =========================================================== determinism ====

def test_same_inputs_give_bit_identical_outputs(models, images, reference_run, tmp_path):
    """Two fresh sessions (own caches, inversion recomputed) agree bit for bit on the
    CPU. See this module's docstring for what differs on a GPU."""
    from e4e_lab.session import Lab

    lab = Lab(models=models, cache_dir=tmp_path / "again")
    result = lab.transfer(_pair(lab, images), TransferConfig(**FAULT_CFG))
    ref = reference_run[0]
    for name in ("image", "appearance_recon", "structure_recon", "latents"):
        assert torch.equal(getattr(result, name), getattr(ref, name)), name


def test_a_run_from_cached_inversions_equals_the_run_that_computed_them(reference_run,
                                                                        warm_reference):
    assert torch.equal(warm_reference.latents, reference_run[0].latents)
    assert torch.equal(warm_reference.image, reference_run[0].image)


# ========================================================= shared model ====

def test_a_busy_model_is_refused_at_once_or_waited_for(lab, images):
    """A transfer holds the model (Lab.transfer, Lab.invert); a non-blocking feature
    lookup in another thread gets ModelBusy at once, a blocking one waits for it."""
    from e4e_lab.analysis.lookup import FeatureLookup
    from e4e_lab.errors import ModelBusy

    pair = _pair(lab, images)
    held, release = threading.Event(), threading.Event()

    def hold():
        with lab.models.in_use():
            held.set()
            release.wait(30)

    worker = threading.Thread(target=hold)
    worker.start()
    held.wait(30)
    try:
        t0 = time.perf_counter()
        with pytest.raises(ModelBusy, match="compute features when it has finished"):
            FeatureLookup.from_dift(lab.models, pair.structure, pair.appearance, ensemble=1,
                                    blocking=False)
        assert time.perf_counter() - t0 < 1.0
        waited = []
        blocker = threading.Thread(target=lambda: waited.append(lab.dift_field(
            pair, TransferConfig(**FAULT_CFG).replace(dift_ensemble=1))))
        blocker.start()
        blocker.join(0.5)
        assert blocker.is_alive() and not waited  # Lab.dift_field waits for the model
    finally:
        release.set()
        worker.join(30)
    blocker.join(60)
    assert len(waited) == 1


def test_safe_names_never_leave_their_folder():
    from e4e_lab.io.outputs import safe_name

    for text in ("..", ".", "../up", "a/b", "", " / ", "run 1: v", ".hidden"):
        name = safe_name(text)
        assert name and name not in (".", "..") and "/" not in name and not name.startswith(".")
    assert safe_name("run 1: v") == "run-1-v" and safe_name("..") == "run"


@pytest.mark.parametrize("content", [b"\xff\xfe not utf-8", b'[{"appearance": 3, "structure": "s.png"}]',
                                     b'[{"appearance": "a.png"}]', b"[]"])
def test_bad_pairs_json_is_a_box_error(tmp_path, content):
    from e4e_lab.io.formats import read_pairs_folder

    (tmp_path / "pairs.json").write_bytes(content)
    with pytest.raises(BoxError, match="pairs"):
        read_pairs_folder(tmp_path)
