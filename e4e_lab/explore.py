"""Method-side computations behind the interactive viewers (no UI code here).

The widgets in ``widgets/`` draw what this module computes:

- :class:`FeatureLookup`: unit-normalised target and reference features kept once, so
  that a click on a target pixel costs one matrix-vector product (its similarity
  heatmap over the reference) and never recomputes features;
- :class:`FeatureRecorder`: a :class:`~e4e_lab.attention.RunRecorder` that also keeps
  the normalised hidden states that enter the injected self-attention layers, for
  chosen layers and steps, so that a recorded match can be explained by its heatmap;
- attention rows of a query pixel from recorded attention probabilities;
- object masks from a box and clicks, and masks at the injected-layer resolutions;
- pixel <-> grid-cell conversions, warped / unused reference views, and summaries of
  how matches change over steps or how run configs differ.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import torch
import torch.nn.functional as F

from .attention import BatchLayout, RunRecorder, injected_layers, layer_level
from .config import TransferConfig
from .correspondence import CorrespondenceField, nearest_neighbors, normalize_rows
from .images import Box, LoadedImage, adain_masks, box_mask, full_mask, mask_at, matching_mask

Grid = tuple[int, int]  # (rows, cols)


# ------------------------------------------------------------ grids, cells --

def pixel_to_cell(x: float, y: float, image_size: tuple[int, int], grid: Grid) -> int:
    """Flat row-major index of the ``grid`` cell holding model pixel (x, y).

    ``image_size`` is (width, height); pixels outside the image are clamped to it.
    """
    w, h = image_size
    rows, cols = grid
    r = min(max(int(y * rows / h), 0), rows - 1)
    c = min(max(int(x * cols / w), 0), cols - 1)
    return r * cols + c


def cell_center(index: int, grid: Grid, image_size: tuple[int, int]) -> tuple[float, float]:
    """Model-pixel (x, y) centre of a flat grid cell."""
    w, h = image_size
    rows, cols = grid
    r, c = divmod(int(index), cols)
    return (c + 0.5) * w / cols, (r + 0.5) * h / rows


def cell_rect(index: int, grid: Grid, image_size: tuple[int, int]
              ) -> tuple[float, float, float, float]:
    """Model-pixel box [x0, y0, x1, y1] covered by a flat grid cell."""
    w, h = image_size
    rows, cols = grid
    r, c = divmod(int(index), cols)
    return c * w / cols, r * h / rows, (c + 1) * w / cols, (r + 1) * h / rows


def latent_grid(models, image_size: tuple[int, int]) -> Grid:
    """(rows, cols) of the latent of an image of ``image_size`` = (width, height)."""
    f = models.vae_scale_factor
    return image_size[1] // f, image_size[0] // f


@dataclass(frozen=True)
class LayerGrid:
    """One resolution seen by matching: its grid and the injected layers working on it."""

    grid: Grid
    layers: tuple[str, ...]

    @property
    def label(self) -> str:
        return f"{self.grid[0]}x{self.grid[1]}"


def injected_grids(models, image_size: tuple[int, int]) -> list[LayerGrid]:
    """The grids of the injected decoder self-attention layers, finest first."""
    lh, lw = latent_grid(models, image_size)
    groups: dict[Grid, list[str]] = {}
    for name in injected_layers(models.unet):
        f = layer_level(name, models.unet)
        groups.setdefault((lh // f, lw // f), []).append(name)
    return [LayerGrid(g, tuple(names))
            for g, names in sorted(groups.items(), key=lambda kv: -kv[0][0] * kv[0][1])]


def layer_masks(models, mask: torch.Tensor, mode: str = "reference"
                ) -> list[tuple[str, Grid, torch.Tensor]]:
    """What matching and AdaIN see of an (H, W) mask with ``mask_resize`` = ``mode``:
    ``(label, grid, mask)`` at the latent resolution (masked AdaIN's blending weights;
    its statistics use the cells equal to 1) and at each injected-layer resolution
    (the cells that take part in matching)."""
    size = (mask.shape[1], mask.shape[0])
    lat = latent_grid(models, size)
    out = [(f"latent {lat[0]}x{lat[1]} (AdaIN)", lat, adain_masks(mask, lat, mode)[1])]
    for lg in injected_grids(models, size):
        n = len(lg.layers)
        out.append((f"{lg.label} ({n} layer{'s' if n != 1 else ''}, matching)", lg.grid,
                    matching_mask(mask, lg.grid, mode)))
    return out


def short_layer_name(name: str) -> str:
    """``up_blocks.3.attentions.1.transformer_blocks.0.attn1.processor`` -> ``up3.attn1``."""
    parts = name.split(".")
    try:
        return f"up{parts[1]}.attn{parts[3]}"
    except IndexError:
        return name


# ------------------------------------------------------------------- masks --

MASK_SOURCES = ("sam", "box", "full")


def object_mask(image: LoadedImage, box: Box | None, source: str = "sam", masker=None,
                points: Sequence[tuple[float, float]] = (),
                labels: Sequence[int] = ()) -> torch.Tensor:
    """(H, W) 0/1 mask of an image: SAM-HQ from the box and clicks, the box, or all.

    ``labels`` are 1 for object clicks and 0 for background clicks.
    """
    if source not in MASK_SOURCES:
        raise ValueError(f"mask source must be one of {', '.join(MASK_SOURCES)}, got {source!r}")
    if source == "full" or (source == "box" and box is None):
        return full_mask(image.size)
    if source == "box":
        return box_mask(box, image.size)
    if masker is None:
        raise ValueError("SAM-HQ is not loaded: pass a masker (Lab.sam()) or use source='box'")
    if box is None and not points:
        return full_mask(image.size)
    return masker.mask(image, box, list(points) or None, list(labels) or None)


# ---------------------------------------------------------- feature lookup --

@dataclass
class FeatureLookup:
    """Target and reference features, unit-normalised once, for instant lookups.

    ``target`` is (N, C) over ``target_grid`` and ``ref`` (M, C) over ``ref_grid``
    (row-major). ``target_valid`` / ``ref_valid`` are (N,) / (M,) bool: inside the masks
    and non-zero. A click costs one (M, C) x (C,) product.
    """

    target: torch.Tensor
    ref: torch.Tensor
    target_grid: Grid
    ref_grid: Grid
    target_valid: torch.Tensor
    ref_valid: torch.Tensor
    source: str = "features"
    _field: dict = field(default_factory=dict, repr=False)

    @classmethod
    def from_rows(cls, target: torch.Tensor, ref: torch.Tensor, target_grid: Grid,
                  ref_grid: Grid, target_mask: torch.Tensor | None = None,
                  ref_mask: torch.Tensor | None = None, source: str = "features"
                  ) -> "FeatureLookup":
        """From (N, C) / (M, C) rows; masks are (H, W) at any resolution (or None)."""
        t, t_ok = normalize_rows(target.detach().cpu())
        r, r_ok = normalize_rows(ref.detach().cpu())
        if target_mask is not None:
            t_ok &= mask_at(target_mask.cpu(), target_grid).flatten() > 0
        if ref_mask is not None:
            r_ok &= mask_at(ref_mask.cpu(), ref_grid).flatten() > 0
        return cls(t.contiguous(), r.contiguous(), tuple(target_grid), tuple(ref_grid),
                   t_ok, r_ok, source)

    @classmethod
    def from_features(cls, target: torch.Tensor, ref: torch.Tensor,
                      target_mask: torch.Tensor | None = None,
                      ref_mask: torch.Tensor | None = None, source: str = "features"
                      ) -> "FeatureLookup":
        """From (C, h, w) and (C, h', w') feature maps."""
        c = target.shape[0]
        return cls.from_rows(target.reshape(c, -1).T, ref.reshape(ref.shape[0], -1).T,
                             tuple(target.shape[1:]), tuple(ref.shape[1:]),
                             target_mask, ref_mask, source)

    @classmethod
    def from_dift(cls, models, target: LoadedImage, ref: LoadedImage,
                  target_mask: torch.Tensor | None = None,
                  ref_mask: torch.Tensor | None = None, timestep: int = 261, block: int = 1,
                  ensemble: int = 8, prompt: str = "", seed: int = 0,
                  blocking: bool = True) -> "FeatureLookup":
        """DIFT features of both images (the only expensive step of the explorer).

        With ``blocking=False`` a transfer running in another thread makes this raise
        :class:`~e4e_lab.errors.ModelBusy` at once instead of waiting for the UNet.
        """
        from .models.dift import dift_features

        with models.in_use(blocking, "compute features"):
            ft = dift_features(models, target, timestep, block, ensemble, prompt, seed)
            fr = dift_features(models, ref, timestep, block, ensemble, prompt, seed)
        return cls.from_features(ft.features, fr.features, target_mask, ref_mask,
                                 source=f"DIFT block {block}, t={timestep}, ensemble {ensemble}")

    @property
    def channels(self) -> int:
        return int(self.target.shape[1])

    def heatmap(self, cell: int) -> torch.Tensor:
        """(h_r, w_r) cosine similarity of target cell ``cell`` to every reference cell."""
        sim = self.target[cell:cell + 1] @ self.ref.T
        return sim[0].reshape(self.ref_grid)

    def best_match(self, cell: int, restrict: bool = True,
                   heat: torch.Tensor | None = None) -> tuple[int, float]:
        """(reference cell, cosine) of highest similarity; with ``restrict`` only reference
        cells inside the reference mask compete (as in the transfer). (-1, 0.0) if none."""
        sim = (self.heatmap(cell) if heat is None else heat).flatten()
        if restrict:
            sim = sim.masked_fill(~self.ref_valid, float("-inf"))
        best, arg = sim.max(dim=0)
        if not torch.isfinite(best):
            return -1, 0.0
        return int(arg), float(best)

    def match_field(self, restrict: bool = True) -> CorrespondenceField:
        """Every target cell's best match (masked like the transfer), computed once."""
        if restrict not in self._field:
            tm = self.target_valid if restrict else None
            rm = self.ref_valid if restrict else None
            index, score = nearest_neighbors(self.target, self.ref, tm, rm)
            self._field[restrict] = CorrespondenceField(index, score, self.target_grid,
                                                        self.ref_grid)
        return self._field[restrict]


# -------------------------------------------------- recording hidden states --

@dataclass
class FeatureRecorder(RunRecorder):
    """A :class:`RunRecorder` that also keeps the features matching used.

    At each match of a wanted (layer, step) it stores the normalised hidden states that
    enter self-attention for the output (queries) and appearance (candidates) rows, as
    (N, C) CPU tensors in ``features[(layer, step)]``. They are taken by a forward
    pre-hook on each injected ``attn1`` module, installed by :meth:`attached`; the
    transfer's math is untouched. ``feature_steps`` empty means every matched step
    (mind the memory at 512 px: about 10 MB per 64x64 layer and step in float32).
    """

    feature_layers: tuple[str, ...] = ("*",)
    feature_steps: tuple[int, ...] = ()
    features: dict[tuple[str, int], tuple[torch.Tensor, torch.Tensor]] = field(
        default_factory=dict)
    _pending: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)

    def wants_features(self, layer: str, step: int) -> bool:
        return ((layer in self.feature_layers or "*" in self.feature_layers)
                and (not self.feature_steps or step in self.feature_steps))

    def on_matches(self, layer: str, step: int, fld: CorrespondenceField) -> None:
        super().on_matches(layer, step, fld)
        hidden = self._pending.pop(layer, None)
        if hidden is None or not self.wants_features(layer, step):
            return
        if hidden.shape[0] not in (3, 4):
            return
        lay = BatchLayout.for_guidance(hidden.shape[0] == 4)
        self.features[(layer, step)] = (hidden[lay.output].detach().cpu().clone(),
                                        hidden[lay.appearance].detach().cpu().clone())

    @contextlib.contextmanager
    def attached(self, unet):
        """Install the pre-hooks on the injected layers' attention modules for a run."""
        modules = dict(unet.named_modules())
        handles = []

        def hook_for(layer):
            def hook(_module, args, kwargs):
                hidden = args[0] if args else kwargs.get("hidden_states")
                if hidden is not None:
                    self._pending[layer] = hidden

            return hook

        for layer in injected_layers(unet):
            module = modules.get(layer.removesuffix(".processor"))
            if module is not None and (layer in self.feature_layers or "*" in self.feature_layers):
                handles.append(module.register_forward_pre_hook(hook_for(layer), with_kwargs=True))
        try:
            yield self
        finally:
            for h in handles:
                h.remove()
            self._pending.clear()

    def lookup(self, layer: str, step: int, target_mask: torch.Tensor | None = None,
               ref_mask: torch.Tensor | None = None) -> FeatureLookup | None:
        """The recorded features at (layer, step) as a lookup, or None if not recorded."""
        if (layer, step) not in self.features:
            return None
        grid = self.grids[layer]
        target, ref = self.features[(layer, step)]
        return FeatureLookup.from_rows(target, ref, grid, grid, target_mask, ref_mask,
                                       source=f"{short_layer_name(layer)}, step {step}")


def transfer_with_features(lab, pair, config: TransferConfig,
                           feature_steps: Iterable[int] = (),
                           feature_layers: Iterable[str] = ("*",), **kwargs):
    """``lab.transfer`` recording matches at every step and features at ``feature_steps``
    (every matched step if empty). ``result.recorder`` is the :class:`FeatureRecorder`."""
    rec = FeatureRecorder(record_matches=True,
                          attention_layers=tuple(config.record_attention_layers),
                          attention_steps=tuple(config.record_attention_steps),
                          feature_layers=tuple(feature_layers),
                          feature_steps=tuple(feature_steps))
    # hold the model before hooking it: another thread's UNet pass must not be recorded
    with lab.models.in_use(), rec.attached(lab.models.unet):
        return lab.transfer(pair, config, recorder=rec, **kwargs)


def recorded_layers(recorder) -> list[str]:
    """Layers with recorded matches, in recording order."""
    return list(dict.fromkeys(layer for layer, _ in recorder.matches))


def recorded_steps(recorder, layer: str) -> list[int]:
    return sorted(step for lay, step in recorder.matches if lay == layer)


def match_changes(recorder, layer: str) -> list[tuple[int, float]]:
    """(step, fraction of target cells whose match differs from the previous recorded
    step), over the cells matched at both steps: how settled the correspondence is."""
    steps = recorded_steps(recorder, layer)
    out = []
    for prev, step in zip(steps, steps[1:]):
        a, b = recorder.matches[(layer, prev)].index, recorder.matches[(layer, step)].index
        both = (a >= 0) & (b >= 0)
        n = int(both.sum())
        out.append((step, float((a[both] != b[both]).sum()) / n if n else 0.0))
    return out


# ------------------------------------------------------ correspondence views --

def warped_reference(fld: CorrespondenceField, pair, fill: str = "target",
                     patches: bool = True) -> torch.Tensor:
    """(3, H, W) reference painted into the target layout through ``fld``.

    With ``patches`` each target pixel takes the reference pixel at the same relative
    position inside the matched cell (a coarse field then shows the reference's texture);
    otherwise every pixel of a cell takes the matched cell's centre
    (:meth:`CorrespondenceField.warp`). Unmatched (background) positions show the target
    (``fill="target"``) or black.
    """
    base = pair.structure.pixels if fill == "target" else None
    if not patches:
        return fld.warp(pair.appearance.pixels, fill=base)
    ref = pair.appearance.pixels
    c, h_img, w_img = ref.shape
    ht_img, wt_img = pair.structure.pixels.shape[1:]
    (ht, wt), (hr, wr) = fld.target_shape, fld.ref_shape
    ys = (torch.arange(ht_img) + 0.5) * ht / ht_img  # position in target cells
    xs = (torch.arange(wt_img) + 0.5) * wt / wt_img
    cy, cx = ys.long().clamp_max(ht - 1), xs.long().clamp_max(wt - 1)
    index = fld.index.cpu()[cy[:, None] * wt + cx[None, :]]  # (Ht, Wt)
    ry = index.clamp_min(0) // wr + (ys - cy)[:, None]
    rx = index.clamp_min(0) % wr + (xs - cx)[None, :]
    src_y = (ry * h_img / hr).long().clamp(0, h_img - 1)
    src_x = (rx * w_img / wr).long().clamp(0, w_img - 1)
    out = ref[:, src_y, src_x]
    background = torch.zeros_like(out) if base is None else base.to(out)
    return torch.where(index[None] >= 0, out, background)


def unused_reference(fld: CorrespondenceField, pair) -> torch.Tensor:
    """(H, W) bool at image resolution: reference pixels (inside its mask) that no target
    position takes."""
    unused = fld.unused(pair.appearance_mask).float()
    w, h = pair.appearance.size
    return F.interpolate(unused[None, None], size=(h, w), mode="nearest")[0, 0] > 0


def unused_fraction(fld: CorrespondenceField, ref_mask: torch.Tensor | None = None) -> float:
    """Fraction of the reference cells (inside ``ref_mask``) that no target cell takes."""
    unused = fld.unused(ref_mask)
    total = (mask_at(ref_mask, fld.ref_shape).sum() if ref_mask is not None
             else torch.tensor(unused.numel()))
    return float(unused.sum()) / max(1.0, float(total))


# ---------------------------------------------------------------- attention --

ATTENTION_BRANCHES = ("output", "plain", "appearance", "structure")


def attention_map(probs: torch.Tensor, query_cell: int, grid: Grid,
                  head: int | None = None) -> torch.Tensor:
    """(rows, cols) attention of one query position over the keys of a self-attention
    layer; ``probs`` is (heads, N, N); ``head=None`` averages the heads."""
    row = probs[:, query_cell].float()
    row = row.mean(0) if head is None else row[head]
    return row.reshape(grid)


def key_layout(injection: str, branch: str) -> str:
    """Which image's layout the keys of ``branch`` follow: ``"appearance"`` or
    ``"structure"`` (the output is built in the structure's layout; under the
    Cross-Image baseline the output attends to the appearance image's positions)."""
    if branch == "appearance" or (branch == "output" and injection == "cross-image"):
        return "appearance"
    return "structure"


def query_layout(branch: str) -> str:
    return "appearance" if branch == "appearance" else "structure"


def attention_entropy(weights: torch.Tensor) -> float:
    """Entropy (nats) of an attention row: low = focused, log(N) = uniform."""
    p = weights.flatten().float().clamp_min(0)
    p = p / p.sum().clamp_min(1e-12)
    return float(-(p * p.clamp_min(1e-12).log()).sum())


# ---------------------------------------------------------------- configs --

def config_diff(configs: Sequence[TransferConfig]) -> dict[str, list]:
    """Fields whose values differ between configs, with each config's value."""
    dicts = [c.to_dict() for c in configs]
    if not dicts:
        return {}
    return {k: [d[k] for d in dicts] for k in dicts[0]
            if any(d[k] != dicts[0][k] for d in dicts[1:])}


# -------------------------------------------------------------- walkthrough --

@dataclass
class AdainDemo:
    """Masked AdaIN of one latent towards another, with the statistics it matches."""

    before: torch.Tensor  # (4, h, w)
    after: torch.Tensor
    ref: torch.Tensor
    stats: dict[str, tuple[torch.Tensor, torch.Tensor]]  # name -> (mean, std) per channel


def adain_demo(x: torch.Tensor, ref: torch.Tensor, x_mask: torch.Tensor,
               ref_mask: torch.Tensor, mode: str = "reference") -> AdainDemo:
    """Apply masked AdaIN (stage 4f) to a (4, h, w) latent; masks at any resolution,
    brought to the latent grid as ``mask_resize`` = ``mode`` does in a transfer."""
    from .adain import masked_adain, masked_stats

    xm, blend = adain_masks(x_mask, tuple(x.shape[-2:]), mode)
    rm, _ = adain_masks(ref_mask, tuple(ref.shape[-2:]), mode)
    after = masked_adain(x, ref, xm, rm, blend=blend)
    stats = {"before (target mask)": masked_stats(x, xm),
             "reference (reference mask)": masked_stats(ref, rm),
             "after (target mask)": masked_stats(after, xm)}
    return AdainDemo(x, after, ref, stats)
