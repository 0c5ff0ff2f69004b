"""The method walkthrough's figures (notebook 06), one function per stage picture.

Each takes the data of :mod:`e4e_lab.analysis.lesson` (or :mod:`~e4e_lab.analysis.unet_map`)
and the session (for the offline-model banner and, where images are decoded, the VAE),
and returns a ``matplotlib.figure.Figure`` stamped like :mod:`widgets.figures`' figures.
"""

from __future__ import annotations

from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.patches import FancyArrowPatch, Patch, Rectangle

from e4e_lab.method.latents import decode

from . import render
from .figures import _stamp

FONT = 9  # axis labels, titles, legends
COLORS = {"match": "#d95f02", "refresh": "#1b9e77", "adain": "#7570b3", "plain": "#bbbbbb",
          "injected": "#d95f02"}


def _image(ax, image, title: str) -> None:
    ax.imshow(render.to_uint8(image), interpolation="nearest")
    ax.set_title(title, fontsize=FONT)
    ax.axis("off")


def _shade(ax, steps: Sequence[int], color: str, label: str | None = None) -> None:
    """Light bands over the given denoising steps."""
    for n, i in enumerate(steps):
        ax.axvspan(i - 0.5, i + 0.5, color=color, alpha=0.15, lw=0,
                   label=label if n == 0 else None)


def _legend_below(ax, ncol: int = 4) -> None:
    ax.legend(fontsize=FONT, loc="upper center", bbox_to_anchor=(0.5, -0.28), ncol=ncol,
              frameon=False)


# ------------------------------------------------------------------ stage 0 --
def unet_diagram(umap, lab=None):
    """The UNet's blocks as a U (down, middle, up), each at its grid, with the injected
    self-attention layers marked; the VAE and the text encoder at its sides."""
    blocks = umap.blocks
    downs = [b for b in blocks if b.side == "down"]
    fig, ax = plt.subplots(figsize=(13, 5.0), layout="constrained")
    depth = {b.name: k for k, b in enumerate(downs)}
    pos = {}
    for k, b in enumerate(blocks):
        level = depth.get(b.name, len(downs) - 1 if b.side == "mid" else
                          len(downs) - 1 - int(b.name.split(".")[1]))
        pos[b.name] = (k * 1.5, -level * 1.3 - (0.6 if b.side == "mid" else 0))
    for b in blocks:
        x, y = pos[b.name]
        color = COLORS["match"] if b.injected else "#cfe2f3" if b.self_attention else "#eeeeee"
        ax.add_patch(Rectangle((x - 0.65, y - 0.55), 1.3, 1.1, facecolor=color,
                               edgecolor="black", lw=1))
        lines = [b.name.replace("_blocks.", " ").replace("_block", ""),
                 f"{b.grid[0]}x{b.grid[1]}, {b.channels} ch",
                 f"{len(b.self_attention)} self-attn" if b.self_attention else "no attention"]
        if b.injected:
            lines.append(f"{len(b.injected)} injected")
        ax.text(x, y, "\n".join(lines), ha="center", va="center", fontsize=FONT - 1)
    names = [b.name for b in blocks]
    for a, b in zip(names, names[1:]):
        ax.add_patch(FancyArrowPatch(pos[a], pos[b], arrowstyle="-|>", mutation_scale=10,
                                     shrinkA=28, shrinkB=28, color="black"))
    for k, d in enumerate(downs):  # skip connections: down block k feeds up block n-1-k
        up = f"up_blocks.{len(downs) - 1 - k}"
        if up in pos:
            (x0, y0), (x1, y1) = pos[d.name], pos[up]
            ax.annotate("", (x1 - 0.67, y1 + 0.3), (x0 + 0.67, y0 + 0.3),
                        arrowprops=dict(arrowstyle="->", ls="--", color="grey"))
    _unet_ends(ax, umap, pos, names)
    xs = [p[0] for p in pos.values()]
    ax.set_xlim(min(xs) - 3.0, max(xs) + 3.0)
    ax.set_ylim(min(p[1] for p in pos.values()) - 0.8, 1.3)
    ax.axis("off")
    ax.legend(handles=[Patch(facecolor=COLORS["match"], edgecolor="black",
                             label="block with injected self-attention layers"),
                       Patch(facecolor="#cfe2f3", edgecolor="black",
                             label="self- and cross-attention (text), not injected"),
                       Patch(facecolor="#eeeeee", edgecolor="black", label="convolutions only"),
                       Patch(facecolor="white", edgecolor="grey", ls="--",
                             label="skip connection")],
              fontsize=FONT, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=4,
              frameon=False)
    w, h = umap.image_size
    return _stamp(fig, lab, f"the UNet at {w}x{h} px: latent {umap.latent_grid[0]}x"
                  f"{umap.latent_grid[1]}x{umap.latent_channels}, "
                  f"{len(umap.injected)} injected layers")


def _unet_ends(ax, umap, pos, names) -> None:
    """The VAE encoder before the UNet, the decoder after it, and the text encoder."""
    (x0, y0), (x1, y1) = pos[names[0]], pos[names[-1]]
    w, h = umap.image_size
    lat = f"{umap.latent_grid[0]}x{umap.latent_grid[1]}x{umap.latent_channels}"
    for x, y, text in ((x0 - 2.1, y0, f"VAE encoder\n{w}x{h} image\n-> latent {lat}"),
                       (x1 + 2.1, y1, f"VAE decoder\nlatent {lat}\n-> {w}x{h} image")):
        ax.add_patch(Rectangle((x - 0.8, y - 0.55), 1.6, 1.1, facecolor="#d9ead3",
                               edgecolor="black"))
        ax.text(x, y, text, ha="center", va="center", fontsize=FONT - 1)
    ax.annotate("", (x0 - 0.67, y0), (x0 - 1.28, y0), arrowprops=dict(arrowstyle="->"))
    ax.annotate("", (x1 + 1.28, y1), (x1 + 0.67, y1), arrowprops=dict(arrowstyle="->"))
    mid = pos["mid_block"] if "mid_block" in pos else (np.mean([x0, x1]), y0)
    ax.text(mid[0], y0 + 0.85, f"text encoder: prompt -> {umap.text_tokens} tokens x "
            f"{umap.text_width}, read by every cross-attention layer", ha="center",
            fontsize=FONT, bbox=dict(facecolor="#fff2cc", edgecolor="black"))


# ------------------------------------------------------------------ stage 4 plan --
def step_plan(plan, lab=None):
    """Which denoising steps match, refresh and run AdaIN, and the guidance scale."""
    fig, (ax, axg) = plt.subplots(2, 1, figsize=(11, 3.8), sharex=True, layout="constrained",
                                  height_ratios=[2, 1])
    rows = [("matched injection", plan.steps("match"), COLORS["match"]),
            ("structure refresh", plan.steps("refresh"), COLORS["refresh"]),
            ("masked AdaIN", plan.steps("adain"), COLORS["adain"])]
    for r, (_, steps, color) in enumerate(rows):
        ax.broken_barh([(i - 0.45, 0.9) for i in steps], (r - 0.35, 0.7), color=color)
    ax.set_yticks(range(len(rows)), [name for name, _, _ in rows], fontsize=FONT)
    ax.set_ylim(len(rows) - 0.4, -0.6)
    ax.grid(axis="x", alpha=0.3)
    ts = plan.timesteps.float()
    if plan.total > 1:
        stride = float(ts[0] - ts[1])
        top = ax.secondary_xaxis("top", functions=(lambda i: float(ts[0]) - stride * i,
                                                   lambda t: (float(ts[0]) - t) / stride))
        top.set_xlabel("scheduler timestep t", fontsize=FONT)
    axg.step(range(plan.total), plan.guidance.numpy(), where="mid", color="black")
    axg.set_ylabel("guidance g", fontsize=FONT)
    axg.set_xlabel("denoising step i", fontsize=FONT)
    axg.set_ylim(0, max(float(plan.guidance.max()) * 1.2, 1.5))
    axg.set_xlim(-0.6, plan.total - 0.4)
    return _stamp(fig, lab, f"what each denoising step does ({plan.schedule} schedule)")


# ------------------------------------------------------------------ guidance --
def guidance(split, gap: torch.Tensor, plan, lab):
    """Predicted x0 at several guidance scales from one step's two predictions, and the
    gap between the two predictions over the steps."""
    images = decode(lab.models, split.pred_x0)
    n = len(split.scales)
    fig = plt.figure(figsize=(max(2.6 * n, 9), 6.2), layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[1.15, 1])
    axes = top.subplots(1, n)
    for ax, g, im in zip(np.atleast_1d(axes), split.scales, images):
        what = ("plain: unconditional, no injection" if g == 0 else
                "injected: conditional" if g == 1 else
                "used by the transfer" if g == split.scale else "extrapolated further")
        _image(ax, im, f"g = {g:g}\n{what}")
    ax = bottom.subplots()
    _shade(ax, plan.steps("match"), COLORS["match"], "matched injection")
    _shade(ax, plan.steps("refresh"), COLORS["refresh"], "structure refresh")
    ax.plot(range(len(gap)), gap.numpy(), marker=".", color="black",
            label="mean |injected - plain|")
    ax.axvline(split.step, color="grey", ls=":", label=f"step {split.step} (above)")
    ax.set_xlabel("denoising step i", fontsize=FONT)
    ax.set_ylabel("mean |injected - plain|\n(UNet output)", fontsize=FONT)
    ax.set_ylim(bottom=0)
    _legend_below(ax)
    return _stamp(fig, lab, f"guidance at step {split.step} (t={split.timestep}): "
                  "eps = plain + g (injected - plain)")


# ------------------------------------------------------------------ DDPM step --
def ddpm_step(pieces: Sequence, coefs: dict, plan, lab=None):
    """Left: the weights of the three terms over the steps. Right: at a few steps, the
    latent the step starts from, its three terms and their sum (latent channel 0, one
    colour scale per row, so the terms' sizes compare)."""
    fig = plt.figure(figsize=(13, 1.9 * len(pieces) + 1.6), layout="constrained")
    left, right = fig.subfigures(1, 2, width_ratios=[1, 1.9])
    ax = left.subplots()
    for (name, values), color in zip(coefs.items(), ("#1b9e77", "#d95f02", "#7570b3")):
        ax.plot(range(len(values)), values.numpy(), label=name, color=color)
    for p in pieces:
        ax.axvline(p.step, color="grey", ls=":", lw=1)
    ax.set_xlabel("denoising step i", fontsize=FONT)
    ax.set_ylabel("weight of the term", fontsize=FONT)
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=FONT, loc="upper center", bbox_to_anchor=(0.5, -0.16), frameon=False)
    cols = [("x_t (start)", "x_t"), ("x0 term", "x0_term"), ("direction term", "direction_term"),
            ("noise term", "noise_term"), ("sum = x_t-1", "total")]
    axes = right.subplots(len(pieces), len(cols), squeeze=False)
    for r, p in enumerate(pieces):
        maps = [getattr(p, attr)[0].numpy() for _, attr in cols]
        vmax = max(float(np.abs(m).max()) for m in maps) or 1.0
        for c, ((name, _), m) in enumerate(zip(cols, maps)):
            im = axes[r, c].imshow(m, cmap="RdBu_r", vmin=-vmax, vmax=vmax,
                                   interpolation="nearest")
            rms = float(np.sqrt((m ** 2).mean()))
            axes[r, c].set_title(f"{name}\nrms {rms:.2f}", fontsize=FONT)
            axes[r, c].set_xticks([])
            axes[r, c].set_yticks([])
        axes[r, 0].set_ylabel(f"step {p.step}\nt={p.timestep}\n{plan.kind(p.step)}",
                              fontsize=FONT)
        right.colorbar(im, ax=axes[r, :].tolist(), shrink=0.8, label="latent channel 0")
    return _stamp(fig, lab, "the DDPM step: x_t-1 = sqrt(a_prev) x0 + sqrt(1 - a_prev - "
                  "sigma^2) eps + sigma z  (z: the structure's stored noise map)")


# ------------------------------------------------------------------ refresh --
def structure_refresh(effect, plan, lab):
    """How far the output's predicted x0 is from the structure's, step by step, and the
    predictions around one refresh step."""
    fig = plt.figure(figsize=(11, 6.4), layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[1, 1.05])
    ax = top.subplots()
    _shade(ax, plan.steps("match"), COLORS["match"], "matched injection")
    d = effect.distance.numpy()
    ax.plot(range(len(d)), d, color="black", marker=".", label="output vs structure")
    refresh = plan.steps("refresh")
    ax.plot(refresh, d[refresh], "o", color=COLORS["refresh"], ms=8,
            label="structure refresh step")
    ax.set_xlim(-0.6, len(d) - 0.4)
    ax.set_xlabel("denoising step i", fontsize=FONT)
    ax.set_ylabel("mean |x0 output - x0 structure|\ninside the target mask", fontsize=FONT)
    ax.set_ylim(bottom=0)
    _legend_below(ax)
    images = decode(lab.models, effect.example_x0)
    before, r, after = effect.example
    titles = [f"structure's x0, step {r}", f"output, step {before}\n({plan.kind(before)})",
              f"output, step {r}\n({plan.kind(r)})",
              f"output, step {after}\n({plan.kind(after)})"]
    for a, im, t in zip(bottom.subplots(1, 4), images, titles):
        _image(a, im, t)
    return _stamp(fig, lab, "structure refresh: predicted x0 of the output against the "
                  "structure's own")


# ------------------------------------------------------------------ film strip --
def film_strip(strip, lab=None, ncols: int | None = None):
    """The predicted x0 over the denoising steps, noisy start to clean end."""
    n = len(strip.steps)
    ncols = ncols or n
    rows = int(np.ceil(n / ncols))
    fig, axes = plt.subplots(rows, ncols, figsize=(2.1 * ncols, 2.4 * rows + 0.7),
                             squeeze=False, layout="constrained")
    for ax in axes.flat:
        ax.axis("off")
    for ax, i, t, kind, im in zip(axes.flat, strip.steps, strip.timesteps, strip.kinds,
                                  strip.images):
        _image(ax, im, f"step {i}, t={t}\n{kind}")
    return _stamp(fig, lab, "predicted x0 over the denoising steps")
