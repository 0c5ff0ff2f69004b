"""The input formats (``e4e_lab/io/formats.py``): boxes, the boxes and pairs JSON files
(read as data, rescaled through their "_size", written back), the pairs folder of
``e4e-lab evaluate``, and the one spelling of the mask modes. Every bad box or file is a
BoxError naming it."""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from e4e_lab.errors import BoxError, ConfigError
from e4e_lab.io.formats import (MaskMode, ObjectSpec, lookup_box, parse_box, read_boxes,
                                read_pairs, read_pairs_folder, write_boxes, write_pairs)

from conftest import SMALL, assert_names
from strategies import SETTINGS, json_values


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
        parse_box(box, (SMALL, SMALL), "appearance box")
    assert_names(e, "appearance box", why)


def test_boxes_reaching_past_the_image_are_clipped_as_documented():
    assert parse_box([-10, 5.5, 70, 63.2], (SMALL, SMALL)) == (0, 5, 64, 64)
    assert parse_box(np.array([1, 2, 3, 4]), (SMALL, SMALL)) == (1, 2, 3, 4)
    assert parse_box(torch.tensor([1.0, 2.0, 3.0, 4.0]), (SMALL, SMALL)) == (1, 2, 3, 4)
    with pytest.raises(BoxError, match="reaches outside"):
        parse_box([-10, 5, 70, 60], (SMALL, SMALL), clip=False)


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
    assert_names(e, "boxes.json", why)


def test_boxes_json_that_is_not_text_or_missing_is_refused(tmp_path):
    (tmp_path / "boxes.json").write_bytes(b"\xff\xfe{\x00")
    with pytest.raises(BoxError, match="not UTF-8"):
        read_boxes(tmp_path / "boxes.json")
    with pytest.raises(BoxError, match="does not exist"):
        read_boxes(tmp_path / "nowhere.json")
    with pytest.raises(BoxError, match="is a folder"):
        read_boxes(tmp_path)  # a folder


def test_boxes_json_is_parsed_as_data_never_evaluated(tmp_path):
    marker = tmp_path / "evaluated"
    payload = f"__import__('pathlib').Path({str(marker)!r}).touch()"
    (tmp_path / "boxes.json").write_text(json.dumps({"cat.png": payload}))
    boxes = read_boxes(tmp_path / "boxes.json")
    with pytest.raises(BoxError):
        parse_box(lookup_box(boxes, "cat.png"), (SMALL, SMALL))
    assert not marker.exists()


@pytest.mark.parametrize("size", [0, -512, "512", True, [512], [512, 512, 3], [512, 0],
                                  float("nan"), float("inf"), None, {"w": 1}])
def test_bad_declared_box_resolution_is_refused(size):
    boxes = {"_size": size, "cat.png": [0, 0, 10, 10]}
    if size is None:  # "_size": null means "not declared"
        assert read_boxes(boxes, (SMALL, SMALL)) == {"cat.png": [0, 0, 10, 10]}
        return
    with pytest.raises(BoxError, match="_size"):
        read_boxes(boxes, (SMALL, SMALL))


def test_declared_box_resolution_scales_boxes():
    boxes = read_boxes({"_size": 512, "cat.png": [64, 128, 256, 512]}, (SMALL, SMALL))
    assert parse_box(boxes["cat.png"], (SMALL, SMALL)) == (8, 16, 32, 64)
    boxes = read_boxes({"_size": [256, 128], "a": [0, 0, 256, 128], "b": "junk"}, (64, 32))
    assert boxes["a"] == [0, 0, 64, 32] and boxes["b"] == "junk"  # junk left for parse_box
    with pytest.raises(BoxError):
        read_boxes([[0, 0, 1, 1]], (SMALL, SMALL))


def test_box_lookup_by_file_name_not_by_digits():
    """The reference keyed boxes by the first number in the file name and crashed on
    names without digits; ours looks up by name, base name or stem."""
    boxes = {"cat.png": [1, 2, 3, 4], "horse": [5, 6, 7, 8], "photos/dog.jpg": [9, 9, 19, 19],
             "bird_02": [2, 2, 8, 8]}
    assert lookup_box(boxes, "cat.png") == [1, 2, 3, 4]
    assert lookup_box(boxes, "/data/set/cat.png") == [1, 2, 3, 4]
    assert lookup_box(boxes, "horse.jpg") == [5, 6, 7, 8]
    assert lookup_box(boxes, "bird_02.jpg") == [2, 2, 8, 8]  # digits in the name: by stem
    assert lookup_box(boxes, "dog.png") == [9, 9, 19, 19]
    assert lookup_box(boxes, "zebra.png") is None
    assert lookup_box(boxes, "") is None
    assert lookup_box({}, "cat.png") is None


def test_mask_mode_has_one_spelling():
    assert [m.value for m in MaskMode] == ["auto", "sam", "box", "none"]
    assert MaskMode.parse("box") is MaskMode.BOX and MaskMode.BOX == "box"
    assert json.dumps({"mask": MaskMode.NONE}) == '{"mask": "none"}'  # config.json
    with pytest.raises(ConfigError, match="one of auto, sam, box, none"):
        MaskMode.parse("full")
    assert MaskMode.AUTO.resolve(has_box=True, sam_available=True) is MaskMode.SAM
    assert MaskMode.AUTO.resolve(has_box=True, sam_available=False) is MaskMode.BOX
    assert MaskMode.AUTO.resolve(has_box=False, sam_available=True) is MaskMode.BOX
    assert MaskMode.NONE.resolve(has_box=True, sam_available=True) is MaskMode.NONE


def test_write_boxes_merges_into_a_file_at_its_resolution(tmp_path):
    path = tmp_path / "boxes.json"
    assert write_boxes(path, {"cat.png": [1.4, 2, 30, 40.6]}, (64, 64)) == {
        "cat.png": [1, 2, 30, 41]}
    assert json.loads(path.read_text()) == {"_size": 64, "cat.png": [1, 2, 30, 41]}
    path.write_text(json.dumps({"_size": [256, 128], "dog.png": [1, 2, 3, 4],
                                "cat.png": [0, 0, 9, 9]}))
    written = write_boxes(path, {"cat.png": [8, 8, 16, 16]}, 64)  # ours at 64 px
    assert written == {"dog.png": [1, 2, 3, 4], "cat.png": [32, 16, 64, 32]}
    assert json.loads(path.read_text())["_size"] == [256, 128]  # the file's resolution
    assert read_boxes(path, (64, 64))["cat.png"] == [8, 8, 16, 16]  # read back at ours
    write_boxes(path, {"cat.png": [0, 0, 4, 4]}, (32, 16), merge=False)
    assert json.loads(path.read_text()) == {"_size": [32, 16], "cat.png": [0, 0, 4, 4]}
    path.write_text('{"_size": "big"}')
    with pytest.raises(BoxError, match="_size"):
        write_boxes(path, {"cat.png": [0, 0, 4, 4]}, 64)


def test_pairs_json_round_trips_with_paths_relative_to_the_file(tmp_path):
    (tmp_path / "refs").mkdir()
    (tmp_path / "refs" / "cat.png").write_bytes(b"")
    specs = [ObjectSpec(str(tmp_path / "refs" / "cat.png"), [0, 0, 32, 64], None),
             ObjectSpec("not-a-file.png", None, [1, 2, 3, 4])]
    path = write_pairs(tmp_path / "out" / "pairs.json", specs, (64, 32))
    doc = json.loads(path.read_text())
    assert doc == {"_size": [64, 32], "objects": [
        {"appearance": "../refs/cat.png", "target_box": [0, 0, 32, 64]},
        {"appearance": "not-a-file.png", "appearance_box": [1, 2, 3, 4]}]}
    back = read_pairs(path)
    assert [Path(s.appearance).resolve() for s in back[:1]] == [tmp_path / "refs" / "cat.png"]
    assert back[0].boxes_size == (64, 32) and back[0].target_box == [0, 0, 32, 64]
    assert back[0].boxes_at((128, 64)) == ([0.0, 0.0, 64.0, 128.0], None)
    # a dict or a list of objects reads the same way, paths relative to ``folder``
    assert read_pairs({"objects": [{"appearance": "a.png"}]}, folder="x")[0].appearance \
        == str(Path("x") / "a.png")
    assert read_pairs([specs[1]])[0] == specs[1]
    with pytest.raises(BoxError, match=r"objects\[0\] must be an object"):
        read_pairs([{"target_box": [0, 0, 1, 1]}])
    path.write_text(json.dumps({"objects": [{"appearance": 3}]}))
    with pytest.raises(BoxError, match=r"objects\[0\]\.appearance must be a path"):
        read_pairs(path)
    path.write_text(json.dumps({"_size": -1, "objects": [{"appearance": "a.png"}]}))
    with pytest.raises(BoxError, match='pairs.json\' "_size"'):
        read_pairs(path)


@pytest.mark.parametrize("content", [b"\xff\xfe not utf-8", b'[{"appearance": 3, "structure": "s.png"}]',
                                     b'[{"appearance": "a.png"}]', b"[]"])
def test_bad_pairs_json_is_a_box_error(tmp_path, content):
    (tmp_path / "pairs.json").write_bytes(content)
    with pytest.raises(BoxError, match="pairs"):
        read_pairs_folder(tmp_path)


_coord = st.one_of(
    st.integers(-100, 2100),
    st.floats(-100, 2100),
    st.integers(),  # including integers too large for a float
    st.floats(allow_nan=True, allow_infinity=True),
    st.builds(np.float32, st.floats(width=32)),
    st.builds(np.int64, st.integers(-2 ** 63, 2 ** 63 - 1)),
    st.none(), st.booleans(), st.text(max_size=3), st.lists(st.integers(), max_size=2),
)


_box = st.one_of(
    st.lists(st.floats(-100, 2100), min_size=4, max_size=4),  # mostly plausible boxes
    st.lists(_coord, min_size=0, max_size=6),
    st.tuples(_coord, _coord, _coord, _coord),
    st.text(max_size=12), st.binary(max_size=8), st.none(), st.integers(), st.floats(),
    st.dictionaries(st.text(max_size=3), _coord, max_size=4),
    hnp.arrays(np.float64, st.integers(0, 6)),
)


_size = st.tuples(st.integers(1, 2048), st.integers(1, 2048))


@SETTINGS
@given(box=_box, size=_size, clip=st.booleans())
def test_parse_box_returns_a_box_inside_the_image_or_raises_box_error(box, size, clip):
    try:
        out = parse_box(box, size, "box", clip=clip)
    except BoxError as exc:
        assert str(exc).startswith("box ")
        return
    w, h = size
    assert isinstance(out, tuple) and len(out) == 4 and all(type(v) is int for v in out)
    x0, y0, x1, y1 = out
    assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h


_json_coord = st.one_of(st.integers(-100, 2100), st.floats(-100, 2100), st.integers(),
                        st.floats(allow_nan=True, allow_infinity=True), st.none(),
                        st.booleans(), st.text(max_size=3))


_boxes_doc = st.one_of(
    json_values,
    st.dictionaries(st.sampled_from(["_size", "cat.png", "horse", "a/b.jpg", "_other"]),
                    st.one_of(json_values, st.lists(_json_coord, min_size=4, max_size=4),
                              st.lists(st.integers(-10, 600), min_size=4, max_size=4)),
                    max_size=5),
)


@SETTINGS
@given(doc=_boxes_doc, size=_size, name=st.sampled_from(["cat.png", "x/horse.jpg", "dog", ""]))
def test_any_boxes_json_gives_boxes_or_box_errors(doc, size, name):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "boxes.json"
        path.write_text(json.dumps(doc))
        try:
            boxes = read_boxes(path, size)
        except BoxError:
            return
    assert isinstance(boxes, dict)
    box = lookup_box(boxes, name)
    if box is not None:
        try:
            parse_box(box, size, "box")
        except BoxError:
            pass


@SETTINGS
@given(data=st.binary(max_size=64))
def test_any_bytes_as_a_boxes_file_give_a_dict_or_a_box_error(data):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "boxes.json"
        path.write_bytes(data)
        try:
            assert isinstance(read_boxes(path), dict)
        except BoxError:
            pass


# -------------------------------------------- hostile inputs (issue 15) --

@pytest.mark.parametrize("reader", [read_boxes, read_pairs])
def test_a_fifo_is_refused_as_a_json_file_without_reading_it(tmp_path, reader):
    from conftest import call_with_timeout

    fifo = tmp_path / "pipe.json"
    os.mkfifo(fifo)
    exc = call_with_timeout(lambda: reader(fifo), fifo)
    assert isinstance(exc, BoxError) and "pipe.json" in str(exc) and "FIFO" in str(exc)


def test_a_device_or_a_huge_json_file_is_refused_before_reading(tmp_path):
    from e4e_lab.io.files import MAX_JSON_BYTES

    with pytest.raises(BoxError, match="is a device"):
        read_boxes("/dev/zero")
    big = tmp_path / "big.json"
    with open(big, "wb") as f:
        f.truncate(MAX_JSON_BYTES + 1)  # sparse: no time spent writing it
    with pytest.raises(BoxError) as exc:
        read_pairs(big)
    assert_names(exc, "big.json", "MiB limit")


@pytest.mark.parametrize("depth", [20, 200_000])
def test_deeply_nested_json_is_refused_with_a_typed_error(tmp_path, depth):
    path = tmp_path / "deep.json"
    path.write_text('{"objects": [{"appearance": "a.png", "target_box": '
                    + "[" * depth + "]" * depth + "}]}")
    with pytest.raises(BoxError) as exc:
        read_pairs(path)
    assert_names(exc, "deep.json", "nested too deeply")


@pytest.mark.parametrize("size", [1e-300, 0.5, 0, 1e6, [64, 1e-9]])
def test_an_absurd_declared_size_is_refused(size):
    with pytest.raises(BoxError) as exc:
        read_boxes({"_size": size, "a.png": [1, 1, 5, 5]}, (64, 64))
    assert_names(exc, "\"_size\"", "[8, 65536]", repr(size))


def test_declared_sizes_at_the_bounds_are_accepted():
    assert read_boxes({"_size": 8, "a.png": [0, 0, 4, 4]}, (64, 64))["a.png"] == [0, 0, 32, 32]
    assert read_boxes({"_size": 65536, "a.png": [0, 0, 1024, 1024]}, (64, 64))["a.png"] == \
        [0, 0, 1, 1]


def test_a_boxes_document_naming_none_of_the_images_warns():
    from e4e_lab.errors import E4ELabWarning
    from e4e_lab.io.formats import warn_unmatched

    with pytest.warns(E4ELabWarning, match="names none of the images.*'cat.png'.*'other.png'"):
        warn_unmatched({"other.png": [1, 1, 5, 5]}, ["cat.png", "dog.png"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_unmatched({"cat.png": [1, 1, 5, 5]}, ["cat.png", "dog.png"])  # one matches
        warn_unmatched(None, ["cat.png"])


def test_a_pairs_folder_with_a_fifo_is_refused_not_skipped(tmp_path):
    from conftest import call_with_timeout

    os.mkfifo(tmp_path / "pairs.json")
    exc = call_with_timeout(lambda: read_pairs_folder(tmp_path), tmp_path / "pairs.json")
    assert isinstance(exc, BoxError) and "FIFO" in str(exc)
    (tmp_path / "pairs.json").unlink()
    (tmp_path / "pairs.json").write_text('[{"appearance": "a.png", "structure": "b.png"}]')
    os.mkfifo(tmp_path / "boxes.json")  # was silently ignored: not a regular file
    exc = call_with_timeout(lambda: read_pairs_folder(tmp_path), tmp_path / "boxes.json")
    assert isinstance(exc, BoxError) and "boxes.json" in str(exc) and "FIFO" in str(exc)
