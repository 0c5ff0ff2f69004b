"""Parameter sweeps: one pair, a grid of transfer settings, one contact sheet.

A sweep varies one or two fields of a base :class:`~e4e_lab.method.config.TransferConfig`
over lists of values. None of the sweepable fields (:data:`SWEEP_FIELDS`) changes the
inversion, so the pair is inverted once and every cell of the grid only denoises::

    axes = [("guidance", [1.0, 2.5]), ("injection", ["feature", "v"])]
    result = run_sweep(lab, pair, base, axes)         # 4 transfers, same seed
    contact_sheet(result).save("sweep.png")           # rows: guidance, columns: injection

The first axis runs down the rows, the second across the columns; cells are run row by
row. A ``threading.Event`` given as ``cancel`` ends the sweep between two denoising
steps, keeping the cells finished so far.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping

from PIL import Image, ImageDraw, ImageFont

from ..errors import ConfigError, TransferCancelled
from ..method.config import INJECTION_MODES, TransferConfig
from ..method.images import to_uint8


@dataclass(frozen=True)
class SweepField:
    """A sweepable setting: how its values are read and how one is applied to a config."""

    label: str
    kind: type  # float, int or str
    apply: Callable[[TransferConfig, object], TransferConfig]
    choices: tuple[str, ...] = ()


#: The settings a sweep can vary, by name. None of them changes the inversion.
SWEEP_FIELDS: dict[str, SweepField] = {
    "guidance": SweepField("guidance", float, lambda c, v: c.replace(guidance=v)),
    "feat_start": SweepField("feature range start", int,
                             lambda c, v: c.replace(feat_range=(v, c.feat_range[1]))),
    "feat_end": SweepField("feature range end", int,
                           lambda c, v: c.replace(feat_range=(c.feat_range[0], v))),
    "adain_start": SweepField("AdaIN range start", int,
                              lambda c, v: c.replace(adain_range=(v, c.adain_range[1]))),
    "injection": SweepField("injection mode", str, lambda c, v: c.replace(injection=v),
                            INJECTION_MODES),
    "skip_steps": SweepField("skipped steps", int, lambda c, v: c.replace(skip_steps=v)),
}
#: Most values on one axis, and most axes.
MAX_VALUES = 8
MAX_AXES = 2


@dataclass(frozen=True)
class SweepAxis:
    """One swept field and its values, in order."""

    field: str
    values: tuple

    def labels(self) -> list[str]:
        return [format_value(v) for v in self.values]


def format_value(value) -> str:
    """A swept value as the contact sheet writes it (``2.5``, ``10``, ``v``)."""
    return f"{value:g}" if isinstance(value, float) else str(value)


def parse_values(name: str, text: str) -> tuple:
    """The values of field ``name`` from comma-separated text (``"1, 2.5, 4"``)."""
    spec = _field(name)
    items = [t.strip() for t in str(text).split(",") if t.strip()]
    out = []
    for item in items:
        try:
            value = spec.kind(float(item)) if spec.kind is float else spec.kind(item)
        except ValueError:
            raise ConfigError(name, item, f"a {spec.kind.__name__} for the {spec.label} "
                              "(values separated by commas)") from None
        out.append(value)
    return _check_values(name, tuple(out))


def _field(name: str) -> SweepField:
    if name not in SWEEP_FIELDS:
        raise ConfigError("sweep field", name, f"one of {', '.join(SWEEP_FIELDS)}")
    return SWEEP_FIELDS[name]


def _check_values(name: str, values: tuple) -> tuple:
    spec = _field(name)
    if not 1 <= len(values) <= MAX_VALUES:
        raise ConfigError(name, list(values), f"1 to {MAX_VALUES} values to sweep")
    if len(set(values)) != len(values):
        raise ConfigError(name, list(values), "each value once")
    for v in values:
        wrong = (isinstance(v, bool) or not isinstance(v, (int, float) if spec.kind is float
                                                       else spec.kind))
        if wrong or (spec.choices and v not in spec.choices):
            allowed = f"one of {', '.join(spec.choices)}" if spec.choices else \
                f"{spec.kind.__name__} values"
            raise ConfigError(name, v, allowed)
    return tuple(float(v) for v in values) if spec.kind is float else values


def parse_axes(axes) -> tuple[SweepAxis, ...]:
    """Axes from ``SweepAxis`` es, ``(field, values)`` pairs or a ``{field: values}``
    mapping; values may be a list or comma-separated text."""
    items = axes.items() if isinstance(axes, Mapping) else axes
    out = []
    for item in items:
        name, values = (item.field, item.values) if isinstance(item, SweepAxis) else item
        _field(name)
        values = parse_values(name, values) if isinstance(values, str) else \
            _check_values(name, tuple(values))
        out.append(SweepAxis(name, values))
    if not 1 <= len(out) <= MAX_AXES:
        raise ConfigError("axes", [a.field for a in out], f"1 to {MAX_AXES} swept fields")
    if len({a.field for a in out}) != len(out):
        raise ConfigError("axes", [a.field for a in out], "each field on one axis only")
    return tuple(out)


def sweep_cells(axes) -> list[tuple]:
    """The value tuples of the grid, row by row (first axis slowest)."""
    axes = parse_axes(axes)
    cells = [()]
    for axis in axes:
        cells = [c + (v,) for c in cells for v in axis.values]
    return cells


def sweep_configs(base: TransferConfig, axes) -> list[TransferConfig]:
    """The config of every cell of the grid, row by row; a value the config refuses
    raises its :class:`~e4e_lab.errors.ConfigError` before anything runs."""
    axes = parse_axes(axes)
    configs = []
    for values in sweep_cells(axes):
        config = base
        for axis, value in zip(axes, values):
            config = SWEEP_FIELDS[axis.field].apply(config, value)
        if config.inversion != base.inversion:  # the sweep promises one inversion
            raise ConfigError("axes", [a.field for a in axes], "fields that keep the inversion")
        configs.append(config)
    return configs


@dataclass
class SweepCell:
    values: tuple
    config: TransferConfig
    result: object  # TransferResult
    reused: bool = False  # taken from an earlier run with the same settings, not run again

    @property
    def image(self):
        return self.result.image


@dataclass
class SweepResult:
    """The finished cells of a sweep (all of them unless it was stopped)."""

    base: TransferConfig
    axes: tuple[SweepAxis, ...]
    cells: list[SweepCell] = field(default_factory=list)

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, columns) of the full grid; one axis is one row."""
        sizes = [len(a.values) for a in self.axes]
        return (sizes[0], sizes[1]) if len(sizes) == 2 else (1, sizes[0])

    @property
    def total(self) -> int:
        return self.shape[0] * self.shape[1]

    @property
    def complete(self) -> bool:
        return len(self.cells) == self.total

    @property
    def images(self) -> list:
        return [c.image for c in self.cells]

    @property
    def values(self) -> list[tuple]:
        return [c.values for c in self.cells]

    def label(self, n: int) -> str:
        """``guidance=1, injection=v``: what cell ``n`` varies."""
        return ", ".join(f"{a.field}={format_value(v)}"
                         for a, v in zip(self.axes, self.cells[n].values))


def run_sweep(lab, pair, base: TransferConfig, axes, cancel=None,
              callback: Callable[[int, int, tuple, object], None] | None = None,
              step_callback=None, inversion_progress=None, reuse=()) -> SweepResult:
    """Run every cell of the grid on ``pair`` (``lab.transfer``, same seed, the pair
    inverted once) and return the finished cells.

    ``reuse``: earlier results *of this pair with this lab's model* (e.g. a gallery's
    runs). A cell whose configuration equals one of theirs takes that result instead of
    running again: a transfer is deterministic given the pair, the model and the
    configuration (the seed is part of it), so the image is the one the cell would make.

    ``callback(index, total, values, cell)`` is called as each cell starts (cell None)
    and ends (the finished :class:`SweepCell`); ``step_callback`` gets every denoising step's ``StepEvent``.
    ``cancel`` (a ``threading.Event``) is checked between cells and between denoising
    steps: once set, the sweep returns the cells finished so far.
    """
    axes = parse_axes(axes)
    configs = sweep_configs(base, axes)
    cells = sweep_cells(axes)
    out = SweepResult(base, axes)
    known = {r.config: r for r in reuse}
    if any(c not in known for c in configs):
        lab.invert([pair.appearance, pair.structure], base, progress=inversion_progress)
    for n, (values, config) in enumerate(zip(cells, configs)):
        if cancel is not None and cancel.is_set():
            break
        if callback is not None:
            callback(n, len(configs), values, None)
        result = known.get(config)
        if result is None:
            try:
                result = lab.transfer(pair, config, callback=step_callback, cancel=cancel)
            except TransferCancelled:
                break
        out.cells.append(SweepCell(values, config, result, reused=config in known))
        if callback is not None:
            callback(n, len(configs), values, out.cells[-1])
    return out


def steps_to_run(configs, reuse=()) -> int:
    """Denoising steps a sweep of ``configs`` will run, given the results it can reuse."""
    known = {r.config for r in reuse}
    return sum(c.denoising_steps for c in configs if c not in known)


# ------------------------------------------------------------- contact sheet --
@dataclass(frozen=True)
class SheetLayout:
    """Where a contact sheet puts its cells and its labels (pixels)."""

    size: tuple[int, int]  # (width, height)
    cell: int
    origin: tuple[int, int]  # top-left of the first cell
    gap: int
    title: str
    row_labels: list[str]
    column_labels: list[str]

    def cell_box(self, row: int, col: int) -> tuple[int, int, int, int]:
        x = self.origin[0] + col * (self.cell + self.gap)
        y = self.origin[1] + row * (self.cell + self.gap)
        return x, y, x + self.cell, y + self.cell


def sheet_layout(result: SweepResult, cell: int = 128, gap: int = 4) -> SheetLayout:
    """The contact sheet's geometry: a title line naming the axes, the second axis's
    values over the columns and the first axis's down the left (one axis: over the
    columns)."""
    rows, cols = result.shape
    if len(result.axes) == 2:
        row_labels, col_labels = result.axes[0].labels(), result.axes[1].labels()
        names = f"rows: {result.axes[0].field}, columns: {result.axes[1].field}"
    else:
        row_labels, col_labels = [""], result.axes[0].labels()
        names = f"columns: {result.axes[0].field}"
    done = f"{len(result.cells)} of {result.total} cells" + ("" if result.complete
                                                             else ", stopped")
    title = f"sweep ({names}; {done})"
    font = _font()
    left = gap + (round(max(font.getlength(t) for t in row_labels)) + 8
                  if any(row_labels) else 0)
    top = 2 * _LINE + gap
    width = max(left + cols * (cell + gap), round(font.getlength(title)) + 2 * gap)
    height = top + rows * (cell + gap)
    return SheetLayout((width, height), cell, (left, top), gap, title, row_labels, col_labels)


_LINE = 16  # pixels per text line
_INK, _PAPER, _EMPTY = (20, 20, 20), (255, 255, 255), (220, 220, 220)


def _font():
    try:
        return ImageFont.load_default(size=12)
    except (TypeError, OSError):  # Pillow without FreeType: the bitmap font
        return ImageFont.load_default()


def contact_sheet(result: SweepResult, cell: int = 128, gap: int = 4) -> Image.Image:
    """An RGB image of the grid: each finished cell's result at ``cell`` px, the values
    on the axes, cells not run (a stopped sweep) in grey marked 'not run'."""
    lay = sheet_layout(result, cell, gap)
    sheet = Image.new("RGB", lay.size, _PAPER)
    draw, font = ImageDraw.Draw(sheet), _font()
    draw.text((gap, 2), lay.title, fill=_INK, font=font)
    cols = len(lay.column_labels)
    for c, text in enumerate(lay.column_labels):
        x0, y0, _, _ = lay.cell_box(0, c)
        draw.text((x0 + 2, y0 - _LINE), text, fill=_INK, font=font)
    for r, text in enumerate(lay.row_labels):
        x0, y0, _, _ = lay.cell_box(r, 0)
        draw.text((gap, y0 + cell // 2 - 6), text, fill=_INK, font=font)
    for n in range(result.total):
        box = lay.cell_box(*divmod(n, cols))
        if n < len(result.cells):
            tile = Image.fromarray(to_uint8(result.cells[n].image))
            sheet.paste(tile.resize((cell, cell), Image.Resampling.BICUBIC), box[:2])
        else:
            draw.rectangle((box[0], box[1], box[2] - 1, box[3] - 1), fill=_EMPTY)
            draw.text((box[0] + 4, box[1] + 4), "not run", fill=_INK, font=font)
    return sheet
