"""Bring your own image: an upload button and a path box, shared by the widgets that
work on images (box drawer, transfer panel, multi-pair drawer).

Both go through the library's loader (``Lab.load_image`` / ``load_image``), so a widget
accepts and refuses exactly what the command line does; uploaded bytes are decoded in
memory. A refused image leaves one error line in the status and changes nothing; an
accepted one, fitted to the widget's model size, is handed to ``on_image``::

    source = ImageSource(lab, (64, 64), on_image=drawer.replace_image, label="structure")
    source.load_path("photos/cat.png")      # what the Load button does
    source.load_bytes(data, "cat.png")      # what an upload does
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import ipywidgets as W

from e4e_lab.errors import E4ELabError
from e4e_lab.method.images import LoadedImage, load_image

from . import render
from .common import LabWidget, fit_content, image_widget, set_image, status_html


class ImageSource(LabWidget):
    """Upload / path controls that load one image at a fixed model size."""

    def __init__(self, lab, size: tuple[int, int], on_image: Callable[[LoadedImage], object],
                 label: str = "image", fit: str = "stretch", resample: str = "bicubic",
                 thumb: int = 0, current: LoadedImage | None = None):
        self.lab = lab
        self.size = tuple(size)
        self.fit, self.resample = fit, resample
        self.label = label
        self.on_image = on_image
        self.image: LoadedImage | None = current
        self.error: str | None = None
        self.upload = W.FileUpload(accept="image/*", multiple=False, description="Upload",
                                   tooltip=f"choose a new {label} image from this computer")
        self.path = W.Text(placeholder="path/to/image.png", description=label,
                           layout=W.Layout(width="340px"),
                           style={"description_width": "auto"})
        self.load_button = W.Button(description="Load", icon="folder-open",
                                    tooltip=f"load the {label} image at this path")
        fit_content(self.upload, self.load_button)  # 'Upload (1)' fits too
        self.status = W.HTML()
        self.thumb = image_widget(width=thumb) if thumb else None
        self.thumb_size = thumb
        self.upload.observe(self._on_upload, names="value")
        self.load_button.on_click(lambda _: self.load_path())
        row = W.HBox([self.upload, self.path, self.load_button])
        self.widget = W.VBox([c for c in (self.thumb, row, self.status) if c is not None])
        self.widget.add_class("e4e-imagesource")
        if current is not None:
            self._show(current)

    # --------------------------------------------------------------- loading --
    def load_path(self, path: str | Path | None = None) -> LoadedImage | None:
        """Load the image at ``path`` (default: the path box); None if refused."""
        text = str(path if path is not None else self.path.value).strip()
        if not text:
            return self._refuse(f"type the path of a {self.label} image first")
        p = Path(text).expanduser()
        return self._accept(p, p.name)

    def load_bytes(self, data, name: str = "upload") -> LoadedImage | None:
        """Load an image file's bytes (what an upload holds); None if refused."""
        return self._accept(bytes(data), Path(name).name or "upload")

    def _on_upload(self, change) -> None:
        files = change["new"]
        if not files:  # the control was cleared (below)
            return
        entry = files[0]
        try:
            self.load_bytes(entry["content"], entry.get("name") or "upload")
        finally:
            self.upload.value = ()  # the same file can be uploaded again

    def _accept(self, source, name: str) -> LoadedImage | None:
        try:
            image = self._load(source, name)
            self.on_image(image)
        except E4ELabError as exc:
            return self._refuse(str(exc))
        self.image, self.error = image, None
        self._show(image)
        w, h = image.original_size
        self.status.value = status_html(
            f"loaded {name} ({w}x{h}, fitted to {self.size[0]}x{self.size[1]} by "
            f"{image.fit})", "ok")
        return image

    def _load(self, source, name: str) -> LoadedImage:
        w, h = self.size
        if self.lab is not None and w == h:  # the session's checks (size, toy world)
            return self.lab.load_image(source, w, fit=self.fit, name=name,
                                       resample=self.resample)
        return load_image(source, self.size, fit=self.fit, name=name, resample=self.resample)

    def _refuse(self, message: str) -> None:
        """One error line; the image in use stays."""
        self.error = " ".join(message.split())  # one line, whatever the message holds
        self.status.value = status_html(self.error, "error")
        return None

    def _show(self, image: LoadedImage) -> None:
        if self.thumb is None:
            return
        arr = image.to_uint8()
        shape = render.display_shape((arr.shape[1], arr.shape[0]), self.thumb_size)
        set_image(self.thumb, render.resize_nearest(arr, *shape))
        self.thumb.layout.width = f"{self.thumb_size}px"
