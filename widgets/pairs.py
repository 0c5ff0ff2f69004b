"""Paired boxes for multi-object transfer: each target box takes its colours from one box
on one reference image.

Two :class:`~widgets.boxes.BoxDrawer` s do the drawing: the structure (target) image and
the selected pair's reference image. The selected pair's boxes are the active ones; the
other pairs' boxes are shown thinner, in their own colours, and a click inside one selects
that pair. Each pair has one hue: strong on the target, pale on the reference.

``objects()`` is the list ``Lab.pair(structure, objects=...)`` takes; ``save`` / ``load``
read and write the ``--pairs`` JSON of the CLI (``example/multi_pairs.json``)::

    drawer = MultiBoxDrawer(lab, structure, [cat, cup], pairs="example/multi_pairs.json")
    drawer.select(1); drawer.target.set_box([30, 2, 62, 60])
    multi = drawer.pair(mask="box")                 # a MultiPair for lab.transfer
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import ipywidgets as W

from e4e_lab.errors import BoxError
from e4e_lab.io.formats import (Box, ObjectSpec, pairs_document, parse_box, read_pairs,
                                 write_pairs)
from e4e_lab.method.images import LoadedImage

from . import render
from .boxes import BoxDrawer, ExtraBox, file_row, refuse_missing_folder
from .common import LabWidget, status_html
from .pair_legend import legend_html
from .pair_notes import unsaved_text


@dataclass
class ObjectPair:
    """One (target box, reference image, reference box) pair; a missing box means the
    whole image. ``color`` is the pair's palette index (kept when other pairs go)."""

    reference: int  # index into MultiBoxDrawer.references
    color: int
    target_box: Box | None = None
    appearance_box: Box | None = None


class MultiBoxDrawer(LabWidget):
    """Draw (target box, reference box) pairs over a structure image and its references."""

    def __init__(self, lab, structure: LoadedImage, references: list[LoadedImage],
                 pairs=None, path: str | Path = "multi_pairs.json", display_size: int = 256):
        self.lab = lab
        self.structure = structure
        self.references: list[LoadedImage] = []
        self.pairs: list[ObjectPair] = []
        self.selected: int | None = None
        self._next_color = 0
        self._saved: tuple[Path, dict] | None = None  # (file, document) of the last save
        self.ref_choice = W.Dropdown(description="reference", layout=W.Layout(width="340px"))
        self.ref_choice.observe(self._on_ref_choice, names="value")
        if not references:
            raise BoxError("MultiBoxDrawer needs at least one reference image: pass "
                           "references=[lab.load_image(path, size), ...]")
        for ref in references:
            self.add_reference(ref)

        self.target = BoxDrawer(structure, title=f"structure (target): {structure.name}",
                                display_size=display_size)
        self.reference = BoxDrawer(self.references[0], title="reference (appearance)",
                                   display_size=display_size)
        # the drawers' boxes follow the selected pair; a change that is not the pair's
        # box yet is the user's edit (_on_box)
        self.target.observe(lambda c: self._on_box("target_box", c.new), names="box")
        self.reference.observe(lambda c: self._on_box("appearance_box", c.new), names="box")
        for d in (self.target, self.reference):
            d.on_pick(self.select)
        self.target.source.lab = self.reference.source.lab = lab
        self.target.source.on_image = self.replace_structure
        self.reference.source.on_image = self.replace_reference

        self.pair_buttons = W.HBox()
        self.add_button = W.Button(description="Add pair", icon="plus")
        self.remove_button = W.Button(description="Remove pair", icon="trash")
        self.add_button.on_click(lambda _: self.add_pair())
        self.remove_button.on_click(lambda _: self.remove_pair())
        self.legend = W.HTML()
        files = file_row(self, path, "pairs JSON")
        self.widget = self._frame(
            W.HBox([self.pair_buttons, self.add_button, self.remove_button]), self.ref_choice,
            W.HBox([self.target.widget, self.reference.widget]), self.legend, files,
            self.status, title="Object pairs (multi-object transfer)")
        if pairs is not None:
            self.load(pairs)
        else:
            self.add_pair()

    # ------------------------------------------------------------ references --
    def add_reference(self, image: LoadedImage) -> int:
        """Add a reference image (same size as the structure); returns its index."""
        if image.size != self.structure.size:
            raise BoxError(f"reference '{image.name}' is {image.size[0]}x{image.size[1]} but the "
                           f"structure is {self.structure.size[0]}x{self.structure.size[1]}: "
                           "load every image at the same size")
        self.references.append(image)
        self._refresh_ref_options()
        return len(self.references) - 1

    def replace_structure(self, image: LoadedImage) -> None:
        """Another structure image (same size); every target box is cleared."""
        for pair in self.pairs:  # first: the drawer's cleared box is then no edit
            pair.target_box = None
        self.target.replace_image(image)
        self.structure = image
        self._refresh()

    def replace_reference(self, image: LoadedImage) -> None:
        """Another image in place of the selected pair's reference, for every pair that
        uses it; their reference boxes are cleared."""
        ref = self.pairs[self.selected].reference if self.selected is not None else 0
        self.references[ref] = image
        for pair in (p for p in self.pairs if p.reference == ref):
            pair.appearance_box = None
        self._refresh_ref_options()
        self.reference.replace_image(image)
        self._refresh()

    def _refresh_ref_options(self) -> None:
        """New options for the reference choice, showing the selected pair's reference.
        Without a selection ipywidgets keeps none when the options change (with one it
        would jump to the first option, which _on_ref_choice would take for the user's
        choice); then the choice moves from None to the pair's own reference, no edit."""
        self.ref_choice.index = None
        self.ref_choice.options = [(f"{n + 1}: {r.name}", n)
                                   for n, r in enumerate(self.references)]
        self.ref_choice.value = self.pairs[self.selected].reference \
            if self.selected is not None else 0

    # ----------------------------------------------------------------- pairs --
    def add_pair(self, target_box=None, appearance_box=None, reference: int | None = None
                 ) -> int:
        """Add a pair (boxes in model pixels, reference by index; default: the selected
        pair's reference) and select it; returns its index."""
        if reference is None:
            reference = self.pairs[self.selected].reference if self.selected is not None else 0
        self._check_reference(reference)
        size = self.structure.size
        pair = ObjectPair(reference, self._next_color,
                          None if target_box is None else parse_box(target_box, size, "target box"),
                          None if appearance_box is None else
                          parse_box(appearance_box, size, "reference box"))
        self._next_color += 1
        self.pairs.append(pair)
        self.select(len(self.pairs) - 1)
        return len(self.pairs) - 1

    def remove_pair(self, index: int | None = None) -> None:
        """Remove a pair (default: the selected one) and select its neighbour."""
        index = self.selected if index is None else index
        if index is None or not 0 <= index < len(self.pairs):
            self.status.value = status_html("no pair to remove", "warn")
            return
        del self.pairs[index]
        self.select(min(index, len(self.pairs) - 1) if self.pairs else None)

    def select(self, index: int | None) -> None:
        """Make a pair the one being edited (None: none; drawing then adds a pair)."""
        if index is not None and not 0 <= index < len(self.pairs):
            raise IndexError(f"pair {index} does not exist: there are {len(self.pairs)} pairs")
        self.selected = index  # first: the drawers then show the pair's own boxes (no edit)
        pair = None if index is None else self.pairs[index]
        self.target.set_box(pair and pair.target_box)
        if pair is not None:
            self.ref_choice.value = pair.reference
            self.reference.set_image(self.references[pair.reference])
        self.reference.set_box(pair and pair.appearance_box)
        self._refresh()

    def set_reference(self, reference: int, index: int | None = None) -> None:
        """Make a pair (default: the selected one) take its colours from another reference
        image; its reference box is kept (all images share one size)."""
        self._check_reference(reference)
        index = self.selected if index is None else index
        if index is None:
            return
        self.pairs[index].reference = reference
        if index == self.selected:
            self.select(index)
        else:
            self._refresh()

    def colors(self, index: int) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
        """(target, reference) colours of pair ``index``."""
        return render.pair_colors(self.pairs[index].color)

    def _check_reference(self, reference: int) -> None:
        if not 0 <= reference < len(self.references):
            n = len(self.references)
            raise BoxError(f"reference {reference} does not exist: there are {n} reference "
                           f"images (0..{n - 1})")

    # ----------------------------------------------------------------- events --
    def _on_box(self, field: str, box) -> None:
        """A drawer's box changed. Selecting a pair or replacing an image shows boxes the
        pairs already hold; any other change is the user's edit of the selected pair (or,
        with none selected, a new pair)."""
        if self.selected is None:
            if box is not None:
                self.add_pair(**{field: box})
            return
        pair = self.pairs[self.selected]
        if getattr(pair, field) != box:
            setattr(pair, field, box)
            self._refresh()

    def _on_ref_choice(self, change) -> None:
        """The reference choice changed: the user's choice when it is not the selected
        pair's reference already (None: the options are being replaced)."""
        if (change["new"] is not None and self.selected is not None
                and change["new"] != self.pairs[self.selected].reference):
            self.set_reference(change["new"])

    # ----------------------------------------------------------------- drawing --
    def _refresh(self) -> None:
        """Colours, inactive boxes, pair buttons and legend after any change."""
        sel = self.selected
        t_extras, r_extras = [], []
        for n, p in enumerate(self.pairs):
            if n == sel:
                continue
            tc, rc = self.colors(n)
            if p.target_box is not None:
                t_extras.append(ExtraBox(p.target_box, tc, str(n + 1), n))
            if p.appearance_box is not None and sel is not None and \
                    p.reference == self.pairs[sel].reference:
                r_extras.append(ExtraBox(p.appearance_box, rc, str(n + 1), n))
        tc, rc = self.colors(sel) if sel is not None else (render.hue_color(0, 0, 0.6),) * 2
        self.target.set_extras(t_extras, color=tc)
        self.reference.set_extras(r_extras, color=rc)
        self.pair_buttons.children = [self._pair_button(n) for n in range(len(self.pairs))]
        self.remove_button.disabled = sel is None
        self.ref_choice.disabled = sel is None
        self.legend.value = legend_html(self)
        if self._saved is not None:
            unsaved = unsaved_text(self._saved, self.to_json(self._saved[0].parent))
            self.status.value = status_html(unsaved, "warn") if unsaved else status_html(
                f"saved {len(self._saved[1]['objects'])} pair(s) to {self._saved[0]}", "ok")

    def _pair_button(self, n: int) -> W.Button:
        b = W.Button(description=f"pair {n + 1}", icon="check" if n == self.selected else "",
                     layout=W.Layout(width="90px"),
                     tooltip=f"edit pair {n + 1} (or click its box on an image)")
        b.style.button_color = render.css(self.colors(n)[0])
        b.style.text_color = render.ink(self.colors(n)[0])
        b.style.font_weight = "bold" if n == self.selected else "normal"
        b.on_click(lambda _, n=n: self.select(n))
        return b

    # ------------------------------------------------------------------ output --
    def objects(self) -> list[ObjectSpec]:
        """The pairs as ``Lab.pair(structure, objects=...)`` takes them (a missing box
        stays None: the library then uses the whole image)."""
        return [ObjectSpec(self.references[p.reference],
                           None if p.target_box is None else list(p.target_box),
                           None if p.appearance_box is None else list(p.appearance_box))
                for p in self.pairs]

    def pair(self, mask: str = "auto", **kwargs):
        """``lab.pair`` of the structure with the drawn pairs as its objects (the result
        records the mask mode really used), as ``PairBoxDrawer.pair`` for one object."""
        return self.lab.pair(self.structure, objects=self.objects(), mask=mask, **kwargs)

    multi_pair = pair  # the same call (kept for code written before)

    def to_json(self, folder: str | Path = ".") -> dict:
        """The ``--pairs`` JSON document; appearance paths relative to ``folder`` (the
        CLI reads them relative to the JSON file)."""
        return pairs_document(self.objects(), self.structure.size, folder)

    def save(self, path: str | Path | None = None) -> Path:
        """Write the pairs JSON that ``e4e-lab transfer --pairs`` reads."""
        p = Path(path if path is not None else self.path.value).expanduser()
        refuse_missing_folder(self, p)
        try:
            write_pairs(p, self.objects(), self.structure.size)
            saved = read_pairs(p)  # count what the file holds, not what the drawer holds
        except (OSError, BoxError) as exc:
            self.status.value = status_html(f"could not save '{p}': {exc}", "error")
            raise
        self.path.value = str(p)
        self._saved = (p, self.to_json(p.parent))
        self.status.value = status_html(f"saved {len(saved)} pair(s) to {p}", "ok")
        return p

    def load(self, source: str | Path | dict | list | None = None, folder: str | Path = "."
             ) -> list[ObjectSpec]:
        """Read pairs from a ``--pairs`` JSON path (default: the path field), a dict, or
        an objects list like :meth:`objects` (appearance paths relative to ``folder``).
        Boxes drawn at another resolution (``_size``) are rescaled; appearance images
        that are not yet references are loaded (at the structure's size) when ``lab`` is
        set. Replaces the pairs (left as they were on an error)."""
        if source is None:
            source = self.path.value
        try:
            pairs = [self._parse_object(n, spec) for n, spec in
                     enumerate(read_pairs(source, folder=folder))]
        except BoxError as exc:
            self.status.value = status_html(str(exc), "error")
            raise
        self.pairs, self._next_color = [], 0
        for target_box, ref, ref_box in pairs:
            self.add_pair(target_box, ref_box, ref)
        self.select(0)
        where = "the given pairs" if isinstance(source, (dict, list)) else str(source)
        self.status.value = status_html(f"loaded {len(pairs)} pair(s) from {where}", "ok")
        return self.objects()

    # ------------------------------------------------------------------ parsing --
    def _parse_object(self, n: int, spec: ObjectSpec) -> tuple[Box | None, int, Box | None]:
        name = f"objects[{n}]"
        if not isinstance(spec.appearance, (str, LoadedImage)):
            raise BoxError(f"{name} must be an object with \"appearance\": PATH, got {spec!r}")
        ref = self._find_reference(spec.appearance, name)
        size = self.structure.size
        target, appearance = (None if box is None else parse_box(box, size, f"{name}.{field}")
                              for box, field in zip(spec.boxes_at(size),
                                                    ("target_box", "appearance_box")))
        return target, ref, appearance

    def _find_reference(self, appearance, name: str) -> int:
        """Index of a reference: the same image, the same file, or the same file name;
        else the file is loaded (needs ``lab``)."""
        if isinstance(appearance, LoadedImage):
            known = [n for n, r in enumerate(self.references) if r is appearance]
            return known[0] if known else self.add_reference(appearance)
        path = Path(appearance)
        for n, r in enumerate(self.references):
            if r.source and Path(r.source).resolve() == path.resolve():
                return n
        for n, r in enumerate(self.references):
            if r.name == path.name:
                return n
        if self.lab is None or not path.is_file():
            names = ", ".join(r.name for r in self.references)
            raise BoxError(f"{name}.appearance '{appearance}' is none of the reference images "
                           f"({names}) and no such file exists: pass it in references or fix "
                           "the path")
        return self.add_reference(self.lab.load_image(path, self.structure.size[0],
                                                      fit=self.structure.fit))
