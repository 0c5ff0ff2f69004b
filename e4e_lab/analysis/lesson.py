"""The data behind the method walkthrough's pictures (notebook 06), from ONE transfer.

:func:`capture_transfer` runs the transfer once, recording its matches (for the
warped-reference figure) and keeping, for every denoising step, what the step callback
sends (:class:`~e4e_lab.method.transfer.StepEvent`: the latent after the step, the
predicted x0) and what the UNet predicted for the output rows (a forward hook that only
copies the UNet's output: the transfer's math is untouched). Everything else is computed
from that capture with the functions the method itself uses (:mod:`e4e_lab.method.schedule`),
without another UNet pass:

- :class:`StepPlan`: which steps inject matched features, refresh, run AdaIN, at which
  guidance scale, read from the config and its ``schedule``;
- :func:`guidance_split`: the plain (unconditional, un-injected) and injected
  (conditional) predictions of one step, and what other scales would have predicted;
- :func:`ddpm_pieces`: the DDPM step of one step as its three terms;
- :func:`refresh_effect`: how far the output's predicted x0 is from the structure's,
  step by step (a structure refresh pulls it back);
- the sanity checks, each a :class:`~e4e_lab.analysis.lesson_checks.Verdict`, are in
  :mod:`e4e_lab.analysis.lesson_checks`; the UNet's layout in :mod:`e4e_lab.analysis.unet_map`.

Plain dataclasses of CPU tensors; no plotting (``widgets.lesson_figures`` draws them).
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from ..method import schedule
from ..method.config import TransferConfig
from ..method.latents import decode
from ..method.layers import BatchLayout
from ..method.masks import adain_masks
from ..method.recording import RunRecorder
from ..method.transfer import StepEvent, TransferResult


@dataclass
class StepPlan:
    """What each denoising step ``i`` does, per the config (its ``schedule`` included:
    the published one lags the injection tests one step and widens AdaIN's range)."""

    schedule: str
    timesteps: torch.Tensor  # (n,) scheduler timestep of each denoising step
    counter: torch.Tensor  # (n,) the step number the range tests compare against
    match: torch.Tensor  # (n,) bool: injects matched appearance features
    refresh: torch.Tensor  # (n,) bool: injects the structure's own features instead
    adain: torch.Tensor  # (n,) bool: masked AdaIN follows the DDPM step
    guidance: torch.Tensor  # (n,) float: guidance scale

    @classmethod
    def from_config(cls, config: TransferConfig, timesteps: torch.Tensor) -> "StepPlan":
        """``timesteps``: all ``config.num_steps`` of the inversion, most noisy first."""
        idx = range(config.denoising_steps)
        flags = lambda f: torch.tensor([bool(f(i)) for i in idx])  # noqa: E731
        refresh = flags(config.refreshes_at)
        return cls(config.schedule, timesteps[config.skip_steps:].long().cpu(),
                   torch.tensor([config.counter(i) for i in idx]),
                   flags(config.injects_at) & ~refresh, refresh, flags(config.adain_at),
                   torch.tensor([float(config.guidance_at(i)) for i in idx]))

    @property
    def total(self) -> int:
        return len(self.timesteps)

    def steps(self, kind: str) -> list[int]:
        """The steps of one kind: ``match``, ``refresh``, ``adain`` or ``guided`` (g > 1)."""
        flags = self.guidance > 1 if kind == "guided" else getattr(self, kind)
        return [int(i) for i in flags.nonzero().flatten()]

    def kind(self, i: int) -> str:
        """A short label of step ``i``: ``match``, ``refresh`` or ``no injection``, then
        `` + AdaIN`` where AdaIN runs."""
        base = "match" if self.match[i] else "refresh" if self.refresh[i] else "no injection"
        return base + (" + AdaIN" if self.adain[i] else "")


@dataclass
class CapturedTransfer:
    """One transfer, step by step; all (n, 4, h, w) tensors are indexed by denoising step."""

    result: TransferResult
    plan: StepPlan
    prediction_type: str
    coef: schedule.StepCoefficients  # of the denoising steps, CPU
    x_start: torch.Tensor  # (4, h, w) output latent before step 0 (the structure's x_t)
    latents: torch.Tensor  # output latent after each step (after AdaIN where it ran)
    pred_x0: torch.Tensor  # predicted x0 of each step (the StepEvent's)
    injected_out: torch.Tensor  # UNet output of the injected, conditional output row
    plain_out: torch.Tensor  # of the plain (unconditional, un-injected) row; = injected_out
    #                          where the step ran unguided (g <= 1: no plain row)
    structure_out: torch.Tensor  # UNet output of the structure row
    structure_x: torch.Tensor  # the structure's stored x_t at each step
    noise: torch.Tensor  # the structure's noise maps, which the output's steps reuse
    guidance: torch.Tensor  # (n,) the scale each step used (StepEvent.guidance)
    event_injected: torch.Tensor  # (n,) bool, as the StepEvents said
    event_adain: torch.Tensor  # (n,) bool
    target_mask: torch.Tensor  # (h, w) AdaIN statistics cells (0/1) of the first target region
    exact: bool  # run in float32/64 on a CPU: the checks' identities hold up to rounding

    @property
    def x_before(self) -> torch.Tensor:
        """The output latent each step starts from."""
        return torch.cat([self.x_start[None], self.latents[:-1]])

    def model_output(self, i: int, scale: float | None = None) -> torch.Tensor:
        """plain + g (injected - plain) at step ``i`` (its own g unless ``scale``)."""
        g = float(self.guidance[i]) if scale is None else scale
        plain = self.plain_out[i]
        return plain + g * (self.injected_out[i] - plain)


class _OutputRows:
    """A UNet forward hook keeping the last call's (plain, injected, structure) outputs;
    the step callback, which follows each step's UNet call, files them under the step."""

    def __init__(self, references: int):
        self.references = references
        self.pending: tuple[torch.Tensor, ...] | None = None
        self.by_step: dict[int, tuple[torch.Tensor, ...]] = {}

    def hook(self, _module, _args, _kwargs, output) -> None:
        sample = output.sample if hasattr(output, "sample") else output[0]
        guided = sample.shape[0] == self.references + 3
        lay = BatchLayout.for_guidance(guided, self.references)
        rows = sample.detach().float().cpu()
        plain = rows[lay.plain] if guided else rows[lay.output]
        self.pending = (plain, rows[lay.output], rows[lay.structure])

    def on_step(self, event: StepEvent) -> None:
        if self.pending is not None:
            self.by_step[event.step] = self.pending
            self.pending = None


def capture_transfer(lab, pair, config: TransferConfig,
                     callback: Callable[[StepEvent], None] | None = None,
                     **kwargs) -> CapturedTransfer:
    """``lab.transfer`` once, recording the matches of every step (``result.recorder``)
    and capturing every step; ``callback`` still receives each StepEvent. The capture
    copies each step's predictions to the CPU (on a GPU, one wait per step: a lesson's
    run, not a fast one)."""
    events: list[StepEvent] = []
    rows = _OutputRows(len(pair.references))

    def on_step(event: StepEvent) -> None:
        rows.on_step(event)
        events.append(StepEvent(event.step, event.total, event.timestep, event.latent.cpu(),
                                event.pred_x0.cpu(), event.guidance, event.injected,
                                event.adain, event.elapsed))
        if callback is not None:
            callback(event)

    with contextlib.ExitStack() as stack:
        stack.enter_context(lab.models.in_use())
        handle = lab.models.unet.register_forward_hook(rows.hook, with_kwargs=True)
        stack.callback(handle.remove)
        recorder = dataclasses.replace(RunRecorder.from_config(config), record_matches=True)
        result = lab.transfer(pair, config, callback=on_step, recorder=recorder, **kwargs)
    *_, structure = lab.invert(pair.references + [pair.structure], config)  # kept in memory
    return _assemble(lab, pair, config, result, structure, events, rows.by_step)


def _assemble(lab, pair, config, result, structure, events, by_step) -> CapturedTransfer:
    k0, n = config.skip_steps, config.denoising_steps
    stack = lambda xs: torch.stack([x.float().cpu() for x in xs])  # noqa: E731
    outs = [by_step[i] for i in range(n)]
    coef = schedule.coefficients(lab.models.scheduler, structure.timesteps)
    latent_hw = tuple(structure.xts.shape[-2:])
    target_mask, _ = adain_masks(pair.regions[0].target_mask, latent_hw, config.mask_resize)
    return CapturedTransfer(
        result=result, plan=StepPlan.from_config(config, structure.timesteps),
        prediction_type=lab.models.scheduler.config.prediction_type, coef=coef[k0:],
        x_start=structure.xts[k0].float().cpu(), latents=stack(e.latent for e in events),
        pred_x0=stack(e.pred_x0 for e in events), plain_out=stack(o[0] for o in outs),
        injected_out=stack(o[1] for o in outs), structure_out=stack(o[2] for o in outs),
        structure_x=structure.xts[k0:k0 + n].float().cpu(),
        noise=structure.zs[k0:k0 + n].float().cpu(),
        guidance=torch.tensor([float(e.guidance) for e in events]),
        event_injected=torch.tensor([bool(e.injected) for e in events]),
        event_adain=torch.tensor([bool(e.adain) for e in events]),
        target_mask=target_mask.float().cpu(), exact=is_exact(lab.models))


def is_exact(models) -> bool:
    """Whether ``models`` compute in float32/64 on a CPU, where a recomputed identity
    differs from the run only by rounding (a GPU's TF32 or half precision differ more)."""
    return models.device.type == "cpu" and models.dtype in (torch.float32, torch.float64)


# ------------------------------------------------------------------ guidance --
@dataclass
class GuidanceSplit:
    """One step's two predictions and what the scale makes of them."""

    step: int
    timestep: int
    scale: float  # the scale the transfer used at this step
    plain: torch.Tensor  # (4, h, w) UNet output: unconditional, no injection
    injected: torch.Tensor  # (4, h, w) UNet output: conditional, injected
    guided: torch.Tensor  # plain + scale * (injected - plain): what the step used
    scales: tuple[float, ...]
    pred_x0: torch.Tensor  # (len(scales), 4, h, w) predicted x0 with each scale


def guidance_split(cap: CapturedTransfer, step: int,
                   scales: Sequence[float] | None = None) -> GuidanceSplit:
    """The guidance split at ``step``; ``scales`` default to 0 (plain alone), 1 (injected
    alone), the step's own scale and twice it."""
    g = float(cap.guidance[step])
    scales = tuple(scales) if scales is not None else tuple(dict.fromkeys((0.0, 1.0, g, 2 * g)))
    outputs = torch.stack([cap.model_output(step, s) for s in scales])
    x0 = schedule.predicted_x0(outputs, cap.x_before[step], cap.coef[step], cap.prediction_type)
    return GuidanceSplit(step, int(cap.plan.timesteps[step]), g, cap.plain_out[step],
                         cap.injected_out[step], cap.model_output(step), scales, x0)


def guidance_gap(cap: CapturedTransfer) -> torch.Tensor:
    """(n,) mean |injected - plain| UNet output per step: what guidance amplifies."""
    return (cap.injected_out - cap.plain_out).abs().mean(dim=(1, 2, 3))


# ---------------------------------------------------------------- DDPM step --
@dataclass
class DdpmPieces:
    """x_{t-1} = sqrt(a_prev) x0_hat + sqrt(1 - a_prev - sigma^2) eps + sigma z."""

    step: int
    timestep: int
    x_t: torch.Tensor  # (4, h, w) the output latent the step starts from
    x0_term: torch.Tensor  # sqrt(a_prev) * predicted x0
    direction_term: torch.Tensor  # sqrt(1 - a_prev - sigma^2) * predicted noise
    noise_term: torch.Tensor  # sigma * z, z the structure's stored noise map
    after: torch.Tensor  # the latent the transfer kept (AdaIN applied where it ran)
    adain: bool

    @property
    def total(self) -> torch.Tensor:
        return self.x0_term + self.direction_term + self.noise_term


def ddpm_pieces(cap: CapturedTransfer, step: int) -> DdpmPieces:
    """The step ``step`` took, split into its three terms (``schedule.posterior_mean`` is
    linear in (eps, x0): each term is it with the other input zeroed)."""
    c, x_t = cap.coef[step], cap.x_before[step]
    eps, x0 = schedule.split_prediction(cap.model_output(step)[None], x_t[None], c.alpha_t,
                                        cap.prediction_type)
    zero = torch.zeros_like(eps)
    return DdpmPieces(step, int(cap.plan.timesteps[step]), x_t,
                      schedule.posterior_mean(zero, x0, c)[0],
                      schedule.posterior_mean(eps, zero, c)[0], c.sigma * cap.noise[step],
                      cap.latents[step], bool(cap.event_adain[step]))


def step_coefficients(cap: CapturedTransfer) -> dict[str, torch.Tensor]:
    """(n,) each: the weights of the three terms at every denoising step."""
    one, zero = torch.ones(cap.plan.total, 1, 1, 1), torch.zeros(cap.plan.total, 1, 1, 1)
    return {"sqrt(a_prev): x0 term": schedule.posterior_mean(zero, one, cap.coef).flatten(),
            "sqrt(1 - a_prev - sigma^2): direction": schedule.posterior_mean(
                one, zero, cap.coef).flatten(),
            "sigma: noise term": cap.coef.sigma.flatten()}


# ---------------------------------------------------------- structure refresh --
@dataclass
class RefreshEffect:
    """Per step, mean |x0_out - x0_structure| inside the target mask (latent units):
    the output's predicted x0 against the structure branch's own."""

    distance: torch.Tensor  # (n,)
    example: tuple[int, int, int]  # (match step, refresh step, match step) around a refresh
    example_x0: torch.Tensor  # (4, 4, h, w): structure's x0 at the refresh, then the three


def refresh_effect(cap: CapturedTransfer) -> RefreshEffect:
    """How a structure refresh changes the output's prediction (no extra UNet pass)."""
    struct_x0 = schedule.predicted_x0(cap.structure_out, cap.structure_x, cap.coef,
                                      cap.prediction_type)
    m = cap.target_mask.bool()
    distance = (cap.pred_x0 - struct_x0).abs()[:, :, m].mean(dim=(1, 2))
    match = set(cap.plan.steps("match"))
    around = [r for r in cap.plan.steps("refresh") if r - 1 in match and r + 1 in match]
    r = around[0] if around else (cap.plan.steps("refresh") or [cap.plan.total // 2])[0]
    ex = (max(r - 1, 0), r, min(r + 1, cap.plan.total - 1))
    return RefreshEffect(distance, ex, torch.stack([struct_x0[r]] + [cap.pred_x0[i] for i in ex]))


# --------------------------------------------------------------- film strip --
@dataclass
class FilmStrip:
    """Decoded predicted x0 at evenly spaced denoising steps."""

    steps: list[int]
    timesteps: list[int]
    kinds: list[str]
    images: torch.Tensor  # (F, 3, H, W) in [0, 1]


def film_strip(cap: CapturedTransfer, models, frames: int = 8) -> FilmStrip:
    n = cap.plan.total
    steps = sorted(set(torch.linspace(0, n - 1, min(frames, n)).round().long().tolist()))
    return FilmStrip(steps, [int(cap.plan.timesteps[i]) for i in steps],
                     [cap.plan.kind(i) for i in steps],
                     decode(models, cap.pred_x0[steps]).cpu())
