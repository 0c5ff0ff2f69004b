"""Stages 3-5: initialisation, denoising with rearranged features, decoding.

Batch per step (docs/method.md, stage 4): with guidance ``g > 1``
``[output-plain, output-injected, appearance, structure]``, else
``[output, appearance, structure]``. The appearance and structure rows follow their
stored inversion trajectories exactly; their UNet passes exist only to provide
features to the injected layers. The output takes

    eps = eps_plain + g * (eps_injected - eps_plain)      (g > 1)
    eps = eps_injected                                    (g <= 1: one pass only)

where the plain pass is unconditional and un-injected (text and "swap" guidance in
one). The DDPM step reuses the structure's noise maps; masked AdaIN follows on the
AdaIN steps. Per-step events go to an optional callback and a ``threading.Event``
cancels the run between steps; the UNet's processors are restored whatever happens.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from ..errors import (ConfigError, DeviceOutOfMemoryError, MaskError, NumericalError,
                      TransferCancelled)
from ..models.freeu import freeu
from ..models.loading import RANDOM_KINDS, Models
from . import schedule
from .adain import masked_adain
from .attention import injection
from .config import TransferConfig
from .correspondence import CorrespondenceField
from .inversion import InversionResult, text_embeddings
from .latents import decode
from .layers import BatchLayout, injected_layers, layer_level
from .masks import adain_masks
from .recording import RunRecorder
from .regions import InjectionState, RegionPair


@dataclass
class StepEvent:
    """Sent to the callback after every denoising step."""

    step: int  # denoising step index i, from 0
    total: int  # number of denoising steps
    timestep: int  # the scheduler timestep t of this step
    latent: torch.Tensor  # (4, h, w) output latent after the step (device tensor)
    pred_x0: torch.Tensor  # (4, h, w) predicted clean output latent at this step
    guidance: float
    injected: bool
    adain: bool
    elapsed: float  # seconds since the loop began


@dataclass
class TransferResult:
    """Images in [0, 1] as (3, H, W) float32 CPU tensors, latents, config and metadata."""

    image: torch.Tensor
    appearance_recon: torch.Tensor
    structure_recon: torch.Tensor
    latents: torch.Tensor  # (2 + R, 4, h, w): output, appearance(s), structure
    config: TransferConfig
    model_id: str
    model_kind: str  # "real", "toy", "tiny" or "random" (e4e_lab.models.BANNERS)
    layers: list[str]
    recorder: RunRecorder | None
    timings: dict[str, float] = field(default_factory=dict)
    appearance_recons: list[torch.Tensor] = field(default_factory=list)  # all references

    @property
    def is_tiny(self) -> bool:
        """Whether the weights were random (images not meaningful)."""
        return self.model_kind in RANDOM_KINDS

    def strip(self, *inputs: torch.Tensor) -> torch.Tensor:
        """(3, H, (len(inputs) + 1) W): the (3, H, W) inputs side by side, then the result;
        usually ``strip(structure, appearance)``: structure | appearance | result."""
        return torch.cat([x.float().cpu() for x in inputs] + [self.image], dim=2)


def _check_masks(masks: dict[tuple[str, tuple[int, int]], list]) -> None:
    """Refuse a mask that covers fewer than 2 cells of a grid where it is used.

    ``masks[(use, grid)]`` lists per pair the (target, reference) 0/1 masks that
    ``use`` ("matching" or "AdaIN") works with on ``grid``: matching needs candidates,
    AdaIN an unbiased variance (2 cells). Checked once, before the loop.
    """
    for (use, g), per_pair in masks.items():
        for n, pair_masks in enumerate(per_pair):
            suffix = f" of pair {n}" if len(per_pair) > 1 else ""
            for name, m in zip(("structure (target) mask", "appearance (reference) mask"),
                               pair_masks):
                if int(m.sum()) < 2:
                    raise MaskError(
                        f"the {name}{suffix} covers fewer than 2 cells of the {g[0]}x{g[1]} grid "
                        f"used by {use}: draw a larger box, refine the SAM mask, "
                        "or use --mask box / --mask none")


def _adain_masks(pairs: list[RegionPair], latent_hw: tuple[int, int], mode: str,
                 device) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]]:
    """Per pair: (target statistics mask, reference statistics mask, target blending
    weights, reference index) on the latent grid (:func:`e4e_lab.method.masks.adain_masks`)."""
    out = []
    for p in pairs:
        t_stats, t_blend = adain_masks(p.target_mask, latent_hw, mode)
        r_stats, _ = adain_masks(p.ref_mask, latent_hw, mode)
        out.append((t_stats.to(device), r_stats.to(device), t_blend.to(device), p.reference))
    return out


def run_transfer(models: Models, appearance: InversionResult, structure: InversionResult,
                 appearance_mask: torch.Tensor, structure_mask: torch.Tensor,
                 config: TransferConfig,
                 callback: Callable[[StepEvent], None] | None = None,
                 cancel=None, dift_field: CorrespondenceField | None = None,
                 recorder: RunRecorder | None = None) -> TransferResult:
    """Denoise from the structure's inversion with appearance features injected.

    Args:
        appearance, structure: inversions made with ``config.inversion``.
        appearance_mask, structure_mask: (H, W) 0/1 masks at image resolution.
        callback: called with a :class:`StepEvent` after each step.
        cancel: anything with ``is_set()`` (``threading.Event``); checked between steps.
        dift_field: target -> reference field used when ``config.correspondence == "dift"``.
        recorder: receives injection calls, matches and attention maps; by default a
            :class:`RunRecorder` built from the config.
    Raises:
        TransferCancelled, MaskError, NumericalError, DeviceOutOfMemoryError.
    """
    return run_multi_transfer(models, [appearance], structure,
                              [RegionPair(structure_mask.float(), appearance_mask.float(), 0)],
                              config, callback=callback, cancel=cancel, dift_field=dift_field,
                              recorder=recorder)


@torch.no_grad()
def run_multi_transfer(models: Models, appearances: list[InversionResult],
                       structure: InversionResult, pairs: list[RegionPair],
                       config: TransferConfig,
                       callback: Callable[[StepEvent], None] | None = None,
                       cancel=None, dift_field: CorrespondenceField | None = None,
                       recorder: RunRecorder | None = None) -> TransferResult:
    """The transfer with one or more (target region, reference region) pairs.

    Each target region takes features only from its paired region of its reference
    image (``pair.reference`` indexes ``appearances``), and gets its own masked AdaIN;
    positions outside every target region keep their own features. With one pair this
    is the single-object method (:func:`run_transfer`).
    """
    _check_inputs(appearances, structure, pairs, config, dift_field)
    t_start = time.perf_counter()
    run = _prepare(models, appearances, structure, pairs, config, dift_field, recorder)
    timings = {"setup_s": time.perf_counter() - t_start}
    x_out = _denoise(run, callback, cancel, timings)
    return _decode(run, x_out, timings)


def _check_inputs(appearances, structure, pairs, config, dift_field) -> None:
    for inv, role in [(a, "appearance") for a in appearances] + [(structure, "structure")]:
        if inv.config != config.inversion:
            raise ValueError(f"the {role} inversion was made with {inv.config}, but the config "
                             f"asks for {config.inversion}: invert again with this config")
    if any(not 0 <= p.reference < len(appearances) for p in pairs):
        raise ValueError(f"a region pair names a reference image outside 0..{len(appearances) - 1}")
    if len(appearances) > 1 and config.injection.mode == "cross-image":
        raise ConfigError("injection", config.injection.mode,
                          "cross-image attention takes one reference image; use feature, v or "
                          "kv for several")
    if config.correspondence == "dift" and (dift_field is None or len(pairs) > 1):
        raise ValueError("config.correspondence is 'dift': give one region pair and a "
                         "dift_field (e4e_lab.models.dift.dift_field)")


@dataclass
class _Run:
    """What the denoising loop reads, prepared once (stage 3 and the masks of 4b/4f)."""

    models: Models
    config: TransferConfig
    state: InjectionState
    layers: list[str]
    adain_masks: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]]
    timesteps: torch.Tensor  # CPU, for events and messages
    timesteps_dev: torch.Tensor  # on the device, indexed in the loop without a host copy
    coef: schedule.StepCoefficients
    emb: dict[bool, torch.Tensor]  # text embeddings of the batch, with / without guidance
    app_x: torch.Tensor  # (R, T+1, 4, h, w) stored appearance trajectories
    struct_x: torch.Tensor  # (T+1, 4, h, w) stored structure trajectory
    struct_z: torch.Tensor  # (T, 4, h, w) its noise maps, which the output reuses

    @property
    def references(self) -> int:
        return self.app_x.shape[0]


def _prepare(models, appearances, structure, pairs, config, dift_field, recorder) -> _Run:
    """Stage 3: the injected layers, masks on every grid (checked once), the schedule's
    coefficients, the text embeddings and the stored trajectories on the device."""
    device, unet = models.device, models.unet
    latent_hw = tuple(structure.xts.shape[-2:])
    layers = injected_layers(unet)
    grids = sorted({(latent_hw[0] // layer_level(n, unet), latent_hw[1] // layer_level(n, unet))
                    for n in layers})
    recorder = recorder if recorder is not None else RunRecorder.from_config(config)
    state = InjectionState(config, latent_hw, pairs, device, dift_field=dift_field,
                           recorder=recorder)
    lat_masks = _adain_masks(pairs, latent_hw, config.mask_resize, device)
    checks = {("matching", g): state.masks(g) for g in grids}
    if config.adain.enabled:
        checks[("AdaIN", latent_hw)] = [(tm, rm) for tm, rm, _, _ in lat_masks]
    _check_masks(checks)
    state.precompute(grids)
    n_ref = len(appearances)
    cond, uncond = text_embeddings(models, config.inversion.prompt)
    return _Run(
        models=models, config=config, state=state, layers=layers, adain_masks=lat_masks,
        timesteps=structure.timesteps, timesteps_dev=structure.timesteps.to(device),
        coef=schedule.coefficients(models.scheduler, structure.timesteps, device=device),
        emb={True: torch.cat([uncond, cond] + [cond] * (n_ref + 1)),
             False: torch.cat([cond] * (n_ref + 2))},
        app_x=torch.stack([a.xts for a in appearances]).to(device),
        struct_x=structure.xts.to(device), struct_z=structure.zs.to(device))


def _denoise(run: _Run, callback, cancel, timings: dict) -> torch.Tensor:
    """Stage 4: the denoising steps from the structure's latent at the skip; returns the
    output latent (1, 4, h, w). NaN/Inf is flagged on the device and checked once."""
    config, unet = run.config, run.models.unet
    k0, total = config.skip_steps, config.denoising_steps
    x_out = run.struct_x[k0:k0 + 1].clone()  # the output starts as the structure
    nonfinite = torch.zeros(total, dtype=torch.bool, device=run.models.device)
    loop_start = time.perf_counter()
    try:
        with freeu(unet, config.freeu), injection(unet, run.state, run.layers):
            for i in range(total):
                if cancel is not None and cancel.is_set():
                    raise TransferCancelled(i, total)
                x_out, pred_x0, g, do_adain = _step(run, x_out, i)
                nonfinite[i] = ~torch.isfinite(x_out).all()
                if callback is not None:
                    callback(StepEvent(i, total, int(run.timesteps[k0 + i]), x_out[0],
                                       pred_x0[0], g, config.injects_at(i), do_adain,
                                       time.perf_counter() - loop_start))
    except torch.cuda.OutOfMemoryError:
        raise DeviceOutOfMemoryError(
            "the GPU ran out of memory during denoising: reduce --size, turn off attention "
            "recording, or close other GPU programs") from None
    if nonfinite.any():
        first = int(nonfinite.nonzero()[0])
        raise NumericalError(f"NaN or Inf appeared in the output latent at denoising step "
                             f"{first} (t={int(run.timesteps[k0 + first])}); try fp32 "
                             "(--dtype float32) or a lower guidance")
    timings["denoise_s"] = time.perf_counter() - loop_start
    timings["ms_per_step"] = 1000 * timings["denoise_s"] / max(total, 1)
    return x_out


def _step(run: _Run, x_out: torch.Tensor, i: int):
    """One denoising step ``i``: (new output latent, predicted x0, guidance, AdaIN?)."""
    config, models = run.config, run.models
    k = config.skip_steps + i
    g = config.guidance_at(i)
    guided = g > 1
    layout = BatchLayout.for_guidance(guided, run.references)
    run.state.begin_step(i, layout)
    # 4e: [plain output, injected output] (or the injected one alone) + the branches at
    # their stored x_t, whose passes only provide features to the injected layers
    rows = [x_out] * (2 if guided else 1) + [run.app_x[:, k], run.struct_x[k:k + 1]]
    latents = torch.cat(rows).to(models.dtype)
    pred = models.unet(latents, run.timesteps_dev[k],
                       encoder_hidden_states=run.emb[guided]).sample.float()
    run.state.end_step()
    out = pred[layout.output:layout.output + 1]
    if guided:
        plain = pred[layout.plain:layout.plain + 1]
        out = plain + g * (out - plain)
    # 4g: the DDPM step with the structure's noise map
    c, pred_type = run.coef[k], models.scheduler.config.prediction_type
    pred_x0 = schedule.predicted_x0(out, x_out, c, pred_type)
    x_out = schedule.ddpm_step(out, x_out, run.struct_z[k:k + 1], c, pred_type)
    # 4f: masked AdaIN towards each pair's reference at the same noise level
    do_adain = config.adain_at(i)
    if do_adain:
        for tm, rm, blend, r in run.adain_masks:
            x_out = masked_adain(x_out[0], run.app_x[r, k + 1], tm, rm,
                                 masks_checked=True, blend=blend)[None]
    return x_out, pred_x0, g, do_adain


def _decode(run: _Run, x_out: torch.Tensor, timings: dict) -> TransferResult:
    """Stage 5: the VAE decodes the output and both branches' reconstructions."""
    models = run.models
    t_dec = time.perf_counter()
    finals = torch.cat([x_out, run.app_x[:, -1], run.struct_x[-1:]])
    try:
        images = decode(models, finals).cpu()
    except torch.cuda.OutOfMemoryError:
        raise DeviceOutOfMemoryError(
            "the GPU ran out of memory decoding the result with the VAE: reduce --size, "
            "or close other GPU programs") from None
    timings["decode_s"] = time.perf_counter() - t_dec
    return TransferResult(image=images[0], appearance_recon=images[1],
                          structure_recon=images[-1], latents=finals.cpu(), config=run.config,
                          model_id=models.model_id, model_kind=models.kind, layers=run.layers,
                          recorder=run.state.recorder, timings=timings,
                          appearance_recons=list(images[1:-1]))
