"""Static matplotlib figures for the notebooks (each stamped with the offline-model banner).

Every function takes the session (for the banner and the model) and library results,
and returns a ``matplotlib.figure.Figure``; the notebooks only call them.
"""

from __future__ import annotations

from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.patches import Rectangle

from e4e_lab.analysis.attention_maps import attention_entropy, attention_map, key_layout
from e4e_lab.analysis.grids import cell_center, layer_masks, pixel_to_cell, short_layer_name
from e4e_lab.analysis.recording import match_changes as layer_match_changes
from e4e_lab.analysis.recording import recorded_layers
from e4e_lab.analysis.warps import warped_reference
from e4e_lab.method.latents import decode

from . import render
from .common import banner_colour, banner_text


def _stamp(fig, lab, title: str | None = None):
    text = banner_text(lab) and f"\u26a0 {banner_text(lab)}"
    lines = [t for t in (title, text) if t]
    if text:
        fig.suptitle("\n".join(lines), color="white", backgroundcolor=banner_colour(lab),
                     fontsize=9, fontweight="bold")
    elif title:
        fig.suptitle(title)
    return fig


def _axes(n: int, ncols: int | None = None, size: float = 2.4, rows: int | None = None):
    ncols = ncols or n
    rows = rows or int(np.ceil(n / ncols))
    fig, axes = plt.subplots(rows, ncols, figsize=(size * ncols, size * rows + 0.8),
                             squeeze=False, layout="constrained")
    for ax in axes.flat:
        ax.axis("off")
    return fig, axes


def show_images(images: Sequence, titles: Sequence[str] | None = None, lab=None,
                title: str | None = None, ncols: int | None = None, size: float = 2.4):
    """Images ((3, H, W) tensors, LoadedImages or arrays) in a row or grid."""
    fig, axes = _axes(len(images), ncols, size)
    for i, (ax, im) in enumerate(zip(axes.flat, images)):
        ax.imshow(render.to_uint8(im), interpolation="nearest")
        if titles:
            ax.set_title(titles[i], fontsize=8)
    return _stamp(fig, lab, title)


def result_strip(result, pair, lab=None, title: str | None = None):
    """structure | appearance | result | the two reconstructions."""
    return show_images([pair.structure, pair.appearance, result.image, result.structure_recon,
                        result.appearance_recon],
                       ["structure (target)", "appearance (reference)",
                        f"result ({result.config.injection.mode})", "structure recon",
                        "appearance recon"], lab, title)


def boxes_and_masks(pair, lab=None):
    """Both images with their boxes and masks."""
    fig, axes = _axes(4)
    for col, (img, box, mask, name) in enumerate((
            (pair.appearance, pair.appearance_box, pair.appearance_mask, "appearance"),
            (pair.structure, pair.structure_box, pair.structure_mask, "structure"))):
        arr = img.to_uint8()
        axes[0, 2 * col].imshow(arr)
        axes[0, 2 * col].set_title(f"{name}: box {list(box) if box else 'none'}", fontsize=8)
        if box:
            x0, y0, x1, y1 = box
            axes[0, 2 * col].add_patch(Rectangle(
                (x0, y0), x1 - x0, y1 - y0, fill=False, color="gold", lw=2))
        axes[0, 2 * col + 1].imshow(render.composite(arr, render.mask_rgba(mask, opacity=0.55)))
        axes[0, 2 * col + 1].set_title(f"{name} mask", fontsize=8)
    return _stamp(fig, lab)


def masks_at_resolutions(lab, pair):
    """Each mask at the latent grid (AdaIN) and at each injected-layer grid (matching)."""
    rows = []
    for img, mask in ((pair.appearance, pair.appearance_mask),
                      (pair.structure, pair.structure_mask)):
        rows.append((img, [(f"{img.size[1]}x{img.size[0]} image", mask)]
                     + [(label, m) for label, _, m in layer_masks(lab.models, mask)]))
    ncols = len(rows[0][1])
    fig, axes = _axes(ncols * 2, ncols, size=2.2)
    for r, (img, items) in enumerate(rows):
        base = img.to_uint8()
        for c, (label, m) in enumerate(items):
            axes[r, c].imshow(render.composite(base, render.mask_rgba(m, opacity=0.55)),
                              interpolation="nearest")
            axes[r, c].set_title(f"{label}", fontsize=7)
    return _stamp(fig, lab, "masks at the resolutions the method uses")


def inversion_trajectory(lab, inversion, count: int = 6, vae: bool = True):
    """Decoded x_t at evenly spaced steps of an inversion (noisy -> clean)."""
    ks = np.linspace(0, inversion.num_steps, count).round().astype(int)
    lat = inversion.xts[ks]
    images = decode(lab.models, lat) if vae else [_fast(x) for x in lat]
    titles = [f"t={int(inversion.timesteps[k])}" if k < inversion.num_steps else "x0"
              for k in ks]
    return show_images(list(images), titles, lab, f"inversion trajectory of {inversion.name}")


def _fast(latent):
    from e4e_lab.method.latents import fast_preview

    return fast_preview(latent)


def dift_heatmaps(lookup, pair, points: Sequence[tuple[float, float]], lab=None):
    """For each target point: the point, its heatmap over the reference, the best match."""
    fig, axes = _axes(2 * len(points), 2, size=2.4, rows=len(points))
    t_arr, r_arr = pair.structure.to_uint8(), pair.appearance.to_uint8()
    for i, (x, y) in enumerate(points):
        cell = pixel_to_cell(x, y, pair.structure.size, lookup.target_grid)
        heat = lookup.heatmap(cell)
        best, score = lookup.best_match(cell)
        axes[i, 0].imshow(t_arr)
        axes[i, 0].plot([x], [y], "o", color=render.css(render.TARGET_COLOR), mec="white")
        axes[i, 0].set_title(f"target ({x:.0f}, {y:.0f})", fontsize=8)
        valid = lookup.ref_valid.reshape(lookup.ref_grid)
        axes[i, 1].imshow(render.composite(r_arr, render.heat_rgba(heat, 0.65, valid)),
                          interpolation="nearest")
        if best >= 0:
            bx, by = cell_center(best, lookup.ref_grid, pair.appearance.size)
            axes[i, 1].plot([bx], [by], "x", color=render.css(render.MATCH_COLOR), ms=10, mew=3)
        axes[i, 1].set_title(f"best match cosine {score:.2f}", fontsize=8)
    return _stamp(fig, lab, lookup.source)


def matches_over_steps(recorder, pair, lab=None, layers: Sequence[str] | None = None,
                       steps: Sequence[int] | None = None, max_steps: int = 5):
    """Warped reference per (layer, step): how the correspondence settles."""
    layers = list(layers or recorded_layers(recorder))
    all_steps = sorted({s for _, s in recorder.matches})
    if steps is None:
        idx = np.linspace(0, len(all_steps) - 1, min(max_steps, len(all_steps))).round()
        steps = [all_steps[int(i)] for i in dict.fromkeys(idx)]
    fig, axes = _axes(len(layers) * len(steps), len(steps), size=1.8, rows=len(layers))
    for r, layer in enumerate(layers):
        for c, step in enumerate(steps):
            fld = recorder.matches.get((layer, step))
            if fld is None:
                continue
            axes[r, c].imshow(render.to_uint8(warped_reference(fld, pair)),
                              interpolation="nearest")
            g = fld.target_shape
            axes[r, c].set_title(f"{short_layer_name(layer)} {g[0]}x{g[1]}, step {step}",
                                 fontsize=7)
    return _stamp(fig, lab, "warped reference through the recorded matches")


def match_changes(recorder, lab=None):
    """Per layer: fraction of matches that change from one recorded step to the next."""
    fig, ax = plt.subplots(figsize=(6, 3.4), layout="constrained")
    for layer in recorded_layers(recorder):
        ch = layer_match_changes(recorder, layer)
        if ch:
            g = recorder.grids.get(layer, ("?", "?"))
            ax.plot([s for s, _ in ch], [f for _, f in ch], marker=".",
                    label=f"{short_layer_name(layer)} ({g[0]}x{g[1]})")
    ax.set_xlabel("denoising step i")
    ax.set_ylabel("matches changed")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7)
    return _stamp(fig, lab)


def describe_match_changes(recorder, margin: float = 0.1) -> str:
    """What :func:`match_changes` plots, in words computed from the same numbers: per
    grid, the mean fraction of matches changing per step over the first and the last
    third of the recorded steps, and whether the matches settle, re-match more later, or
    neither (the two means within ``margin``)."""
    by_grid: dict[tuple, list[tuple[int, float]]] = {}
    for layer in recorded_layers(recorder):
        by_grid.setdefault(tuple(recorder.grids.get(layer, ("?", "?"))), []).extend(
            layer_match_changes(recorder, layer))
    lines = []
    for grid, points in by_grid.items():
        if len(points) < 3:
            continue
        steps = sorted({s for s, _ in points})
        third = max(1, len(steps) // 3)
        early_steps, late_steps = set(steps[:third]), set(steps[-third:])
        early = float(np.mean([f for s, f in points if s in early_steps]))
        late = float(np.mean([f for s, f in points if s in late_steps]))
        verdict = ("they settle" if late < early - margin else
                   "they re-match more as denoising goes on" if late > early + margin else
                   "about as many change early as late")
        lines.append(f"{grid[0]}x{grid[1]} layers: {early:.0%} of matches change per step "
                     f"early (steps {min(early_steps)}-{max(early_steps)}), {late:.0%} late "
                     f"(steps {min(late_steps)}-{max(late_steps)}): {verdict}")
    return "\n".join(lines) or "too few recorded steps to say how the matches change"


def attention_comparison(results: dict, pair, layer: str, step: int,
                         query: tuple[float, float], lab=None, branch: str = "output"):
    """For each run: where the query pixel attends (mean over heads)."""
    fig, axes = _axes(len(results) + 1)
    size = pair.structure.size
    axes[0, 0].imshow(pair.structure.to_uint8())
    axes[0, 0].plot([query[0]], [query[1]], "o", color=render.css(render.TARGET_COLOR),
                    mec="white")
    axes[0, 0].set_title("query", fontsize=8)
    for i, (label, res) in enumerate(results.items(), start=1):
        probs = res.recorder.attention[(layer, step)][branch]
        grid = res.recorder.grids[layer]
        amap = attention_map(probs, pixel_to_cell(*query, size, grid), grid)
        layout = key_layout(res.config.injection.mode, branch)
        base = (pair.appearance if layout == "appearance" else pair.structure).to_uint8()
        axes[0, i].imshow(render.composite(base, render.heat_rgba(amap, 0.7, vmin=0.0)),
                          interpolation="nearest")
        axes[0, i].set_title(f"{label}: entropy {attention_entropy(amap):.2f}",
                             fontsize=8)
    return _stamp(fig, lab, f"{short_layer_name(layer)}, step {step}, {branch} branch")


def adain_before_after(lab, demo, x_mask, ref_mask):
    """Decoded latents before and after masked AdaIN, and the per-channel statistics
    (labelled axes; the legend below the bars, never over them)."""
    images = decode(lab.models, torch.stack([demo.before, demo.after, demo.ref]))
    fig, axes = plt.subplots(1, 5, figsize=(13, 3.8), layout="constrained")
    for ax, im, t in zip(axes[:3], images, ("target before AdaIN", "after AdaIN",
                                            "reference")):
        ax.imshow(render.to_uint8(im))
        ax.set_title(t, fontsize=9)
        ax.axis("off")
    ch = np.arange(demo.before.shape[0])
    for ax, which in ((axes[3], 0), (axes[4], 1)):
        for j, (name, st) in enumerate(demo.stats.items()):
            ax.bar(ch + (j - 1) * 0.27, st[which].cpu().numpy(), width=0.27, label=name)
        stat = "mean" if which == 0 else "standard deviation"
        ax.set_title(f"{stat} per channel", fontsize=9)
        ax.set_xlabel("latent channel", fontsize=9)
        ax.set_ylabel(f"{stat} inside the mask", fontsize=9)
        ax.set_xticks(ch)
        ax.tick_params(labelsize=8)
    fig.legend(*axes[3].get_legend_handles_labels(), loc="outside lower right", ncol=3,
               fontsize=9, frameon=False)
    return _stamp(fig, lab)
