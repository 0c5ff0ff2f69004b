"""The walkthrough's sanity checks, each ending in a :class:`Verdict` (PASS or FAIL with
the measured number and the limit it was held to), never a bare number.

The limits depend on where the model runs (:func:`tolerance`): in float32 on a CPU the
checks are identities up to rounding (the limits of tests/test_inversion.py and
tests/test_transfer.py); on a GPU, TF32 and half precision round differently at another
batch size (about 0.04 in x0 after 20 steps in TF32, tests/test_gpu.py), so the limits
there are looser and were not measured on SD 1.5.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..method import schedule
from ..method.inversion import InversionResult, reconstruct
from ..method.transfer import TransferResult
from .lesson import CapturedTransfer, ddpm_pieces, is_exact


@dataclass(frozen=True)
class Verdict:
    """The outcome of one check: what was claimed, whether it held, and the numbers."""

    claim: str  # what must hold, e.g. "'none' reproduces the structure reconstruction"
    passed: bool
    detail: str  # e.g. "max error 3.1e-06 <= 1e-04"

    def __str__(self) -> str:
        return f"{'PASS' if self.passed else 'FAIL'}: {self.claim} ({self.detail})"

    def __bool__(self) -> bool:
        return self.passed


def within(claim: str, error: float, limit: float, what: str = "max error") -> Verdict:
    """PASS when ``error`` is finite and at most ``limit``."""
    ok = math.isfinite(error) and error <= limit
    return Verdict(claim, ok, f"{what} {error:.1e} {'<=' if ok else '>'} {limit:.0e}")


def tolerance(models, kind: str = "latent") -> float:
    """Largest error accepted for an identity computed with ``models``, on latents or on
    images in [0, 1] (one 8-bit level there)."""
    return limit_for(is_exact(models), kind)


def limit_for(exact: bool, kind: str = "latent") -> float:
    """:func:`tolerance` for a run that was (or was not) :func:`~.lesson.is_exact`."""
    if kind == "image":
        return 1 / 255 if exact else 0.05
    return 1e-4 if exact else 0.1


def max_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float().cpu() - b.float().cpu()).abs().max())


def check_reconstruction(models, inversion: InversionResult, start: int = 0,
                         limit: float | None = None) -> Verdict:
    """Denoising ``xts[start]`` with the stored noise maps gives back x0 (stage 2)."""
    limit = tolerance(models) if limit is None else limit
    x0 = reconstruct(models, inversion, start=start)
    return within(f"denoising {inversion.name} from step {start} with its stored noise maps "
                  "gives back its x0", max_error(x0, inversion.x0), limit)


def check_none_reproduces(result: TransferResult, models=None,
                          limit: float | None = None) -> Verdict:
    """A transfer with no injection, no AdaIN and the inversion's guidance lands on the
    structure's reconstruction (``result`` is that run, made with ``models``)."""
    if limit is None:
        limit = tolerance(models, "image") if models is not None else 1 / 255
    return within("'none' (no injection, no AdaIN, the inversion's guidance) reproduces the "
                  "structure reconstruction", max_error(result.image, result.structure_recon),
                  limit)


def check_plan(cap: CapturedTransfer) -> Verdict:
    """The run injected, refreshed and ran AdaIN exactly on the planned steps (the step
    events and the recorder's injection calls against :class:`StepPlan`)."""
    plan, calls = cap.plan, cap.result.recorder.calls
    done = {kind: {s for _, s, k in calls if k == kind} for kind in ("match", "refresh")}
    done["match"] |= {s for _, s, k in calls if k == "cross"}
    injected = plan.match | plan.refresh
    wrong = set((cap.event_injected != injected).nonzero().flatten().tolist())
    wrong |= set((cap.event_adain != plan.adain).nonzero().flatten().tolist())
    for kind in ("match", "refresh"):
        wrong |= done[kind] ^ set(plan.steps(kind))
    ok = not wrong
    return Verdict("the run matched, refreshed and ran AdaIN exactly on the planned steps", ok,
                   f"{len(wrong)} of {plan.total} steps differ"
                   + ("" if ok else f": {sorted(wrong)[:8]}"))


def check_guidance_split(cap: CapturedTransfer, limit: float | None = None) -> Verdict:
    """plain + g (injected - plain), as captured, gives the predicted x0 the transfer
    reported at every step."""
    limit = limit_for(cap.exact) if limit is None else limit
    g = cap.guidance.reshape(-1, 1, 1, 1)
    out = cap.plain_out + g * (cap.injected_out - cap.plain_out)
    x0 = schedule.predicted_x0(out, cap.x_before, cap.coef, cap.prediction_type)
    return within("plain + g x (injected - plain) gives the prediction the transfer used",
                  max_error(x0, cap.pred_x0), limit)


def check_ddpm_pieces(cap: CapturedTransfer, limit: float | None = None) -> Verdict:
    """x0 term + direction term + noise term is the latent the transfer kept, at every
    step without AdaIN (AdaIN changes the latent after the step)."""
    limit = limit_for(cap.exact) if limit is None else limit
    steps = [i for i in range(cap.plan.total) if not cap.event_adain[i]]
    if not steps:
        return Verdict("the DDPM step's three terms add up to the transfer's step", False,
                       "every step ran AdaIN: no step to compare")
    err = max(max_error(ddpm_pieces(cap, i).total, cap.latents[i]) for i in steps)
    return within(f"the DDPM step's three terms add up to the latent the transfer kept "
                  f"({len(steps)} steps without AdaIN)", err, limit)
