"""Bring your own images: the box drawer, the multi-pair drawer and the transfer panel take
an upload or a path through the library's loader; a refused one leaves one error line and
the image in use."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("ipywidgets")
pytest.importorskip("ipycanvas")

from e4e_lab.method.images import load_image  # noqa: E402

from widgets import MultiBoxDrawer, PairBoxDrawer, TransferPanel  # noqa: E402
from widgets.boxes import BoxDrawer  # noqa: E402
from widgets.common import widget_text  # noqa: E402
from widgets.image_source import ImageSource  # noqa: E402

from conftest import SMALL  # noqa: E402
from widget_helpers import serialize_all  # noqa: E402


def png_bytes(seed: int = 1, size=(40, 30)) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def upload(source: ImageSource, data: bytes, name: str) -> None:
    """What the browser sends when a file is chosen in the upload control."""
    source.upload.set_state({"value": [{"name": name, "type": "image/png", "size": len(data),
                                        "content": memoryview(data), "last_modified": 0}]})


def error_lines(source: ImageSource) -> list[str]:
    return [ln for ln in source.status.value.splitlines() if ln.strip()]


def test_an_uploaded_png_replaces_the_drawers_image(shared_lab, pair):
    drawer = BoxDrawer(pair.structure, box=(4, 4, 30, 30), lab=shared_lab)
    seen = []
    drawer.observe(lambda change: seen.append(change.new), names="box")
    data = png_bytes()
    upload(drawer.source, data, "mine.png")
    expected = load_image(data, SMALL, name="mine.png")
    assert drawer.image.name == drawer.name == "mine.png"
    assert torch.equal(drawer.image.pixels, expected.pixels)
    assert drawer.box is None and seen == [None]  # the old box framed the old image
    assert np.array_equal(drawer.view.image, expected.to_uint8())  # the canvas redrawn
    assert "loaded mine.png (40x30, fitted to 64x64" in drawer.source.status.value
    assert drawer.source.upload.value == ()  # cleared: the same file can come again
    assert "mine.png" in drawer.coords.value
    serialize_all(drawer.widget)


@pytest.mark.parametrize("case", ["not an image", "fifo", "missing", "folder"])
def test_a_bad_upload_or_path_shows_one_error_line_and_keeps_the_image(
        shared_lab, pair, tmp_path, case):
    drawer = BoxDrawer(pair.structure, box=(4, 4, 30, 30), lab=shared_lab)
    src = drawer.source
    if case == "not an image":
        upload(src, b"%PDF-1.4 this is no picture", "notes.png")
        words = ["notes.png", "cannot be read as an image"]
    elif case == "fifo":
        os.mkfifo(tmp_path / "pipe.png")
        src.path.value = str(tmp_path / "pipe.png")
        src.load_button.click()  # returns: the FIFO is refused without being opened
        words = ["pipe.png", "FIFO"]
    elif case == "missing":
        src.load_path(tmp_path / "nowhere.png")
        words = ["nowhere.png", "does not exist"]
    else:
        src.load_path(tmp_path)
        words = ["is a folder"]
    assert drawer.image is pair.structure and drawer.box == (4, 4, 30, 30)
    lines = error_lines(src)
    assert len(lines) == 1 and "#b00020" in lines[0] and "Traceback" not in lines[0]
    for w in words:
        assert w in src.error, src.error


def test_the_pair_drawer_takes_a_path_and_builds_the_pair_from_it(shared_lab, pair, tmp_path):
    (tmp_path / "new_app.png").write_bytes(png_bytes(3))
    drawer = PairBoxDrawer.from_pair(shared_lab, pair)
    drawer.appearance.source.load_path(tmp_path / "new_app.png")
    assert drawer.appearance.name == "new_app.png" and drawer.appearance.box is None
    assert "new_app.png" in drawer.appearance.title.value
    assert drawer.structure.box == pair.structure_box  # the other image keeps its box
    made = drawer.pair(mask="box")
    assert made.appearance.name == "new_app.png" and made.appearance.source.endswith("new_app.png")
    assert made.appearance_box is None and made.appearance_mask.all()


def test_the_multi_drawer_replaces_the_selected_reference_or_the_structure(shared_lab, pair):
    multi = MultiBoxDrawer(shared_lab, pair.structure, [pair.appearance])
    multi.target.set_box([0, 0, 20, 20])
    multi.reference.set_box([5, 5, 25, 25])
    multi.add_pair(target_box=[30, 30, 60, 60], appearance_box=[1, 1, 9, 9])
    upload(multi.reference.source, png_bytes(4), "ref2.png")
    assert multi.references[0].name == "ref2.png" and multi.reference.image.name == "ref2.png"
    assert [p.appearance_box for p in multi.pairs] == [None, None]  # both used it
    assert [p.target_box for p in multi.pairs] == [(0, 0, 20, 20), (30, 30, 60, 60)]
    assert "ref2.png" in multi.legend.value and "ref2.png" in multi.ref_choice.options[0][0]
    upload(multi.target.source, png_bytes(5), "scene.png")
    assert multi.structure.name == "scene.png" and multi.target.image.name == "scene.png"
    assert [p.target_box for p in multi.pairs] == [None, None]
    assert multi.pair(mask="box").structure.name == "scene.png"
    upload(multi.target.source, b"junk", "junk.png")
    assert multi.structure.name == "scene.png" and len(error_lines(multi.target.source)) == 1


def test_the_transfer_panel_runs_on_an_uploaded_structure(shared_lab, pair, fast_config):
    panel = TransferPanel(shared_lab, pair, fast_config)
    assert panel.sources["structure"].thumb.layout.display is None  # the current image shown
    upload(panel.sources["structure"], png_bytes(6), "scene.png")
    assert panel.pair.structure.name == "scene.png" and panel.pair.structure_box is None
    assert panel.pair.structure_mask.all()
    assert panel.pair.appearance is pair.appearance
    assert panel.pair.appearance_box == pair.appearance_box
    assert torch.equal(panel.pair.appearance_mask, pair.appearance_mask)
    assert "new structure image" in panel.status.value and "scene.png" in panel.status.value
    upload(panel.sources["appearance"], b"junk", "junk.png")
    assert panel.pair.appearance is pair.appearance
    assert "cannot be read" in panel.sources["appearance"].status.value
    assert panel.run(block=True) and panel.state == "done", panel.error
    assert "scene.png" in widget_text(panel.widget)


def test_buttons_are_as_wide_as_their_text(shared_lab, pair):
    """The browser showed 'Upload (0)', 'Load', 'Clear box' and 'Compare selected' cut to
    '...' by fixed widths: they are now sized to their text and never squeezed by their
    row (tests/test_browser.py checks every screenshot for cut labels)."""
    from widgets import PartExplorer, RunGallery

    drawer = BoxDrawer(pair.structure, box=(4, 4, 30, 30), lab=shared_lab)
    gallery = RunGallery(shared_lab)
    parts = PartExplorer(shared_lab, pair, compute=False)
    buttons = [drawer.source.upload, drawer.source.load_button, drawer.clear_button,
               gallery.compare_button, gallery.export_button, gallery.delete_button,
               gallery.reload_button, parts.compute_button]
    for button in buttons:
        assert (button.layout.width, button.layout.flex) == ("max-content", "0 0 auto"), \
            button.description
