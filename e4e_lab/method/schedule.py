"""The DDPM (eta = 1) step shared by inversion and denoising.

Both stages use the same function so that denoising with the noise maps solved by
the inversion lands exactly on the stored trajectory. The schedule itself (betas,
``alphas_cumprod``, the spaced timesteps, the previous-timestep rule) comes from the
diffusers scheduler; this module only evaluates the step for many timesteps at once,
which ``scheduler.step`` (one scalar timestep per call) cannot.

For a step from ``t`` to ``p`` with model noise prediction ``eps``::

    x0_hat = (x_t - sqrt(1 - a_t) eps) / sqrt(a_t)
    sigma  = eta * sqrt((1 - a_p) / (1 - a_t) * (1 - a_t / a_p))
    x_p    = sqrt(a_p) x0_hat + sqrt(1 - a_p - sigma^2) eps + sigma z

which is DDIM's update with ``eta`` (= DDPM for eta = 1), as in ``DDIMScheduler.step``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class StepCoefficients:
    """Per-timestep coefficients, each a float32 tensor broadcastable to (T, 1, 1, 1)."""

    timesteps: torch.Tensor
    alpha_t: torch.Tensor  # cumulative alpha at t
    alpha_prev: torch.Tensor  # cumulative alpha at the previous (less noisy) timestep
    sigma: torch.Tensor  # eta * std of the DDPM posterior

    def __getitem__(self, k) -> "StepCoefficients":
        return StepCoefficients(self.timesteps[k], self.alpha_t[k], self.alpha_prev[k],
                                self.sigma[k])


def timesteps_for(scheduler, num_steps: int, device=None) -> torch.Tensor:
    """The scheduler's spaced timesteps, most noisy first (SD 1.5, 100 steps: 991 ... 1)."""
    scheduler.set_timesteps(num_steps, device=device)
    return scheduler.timesteps.clone()


def coefficients(scheduler, timesteps: torch.Tensor, eta: float = 1.0,
                 device=None) -> StepCoefficients:
    acp = scheduler.alphas_cumprod.to(torch.float64)
    final = torch.as_tensor(scheduler.final_alpha_cumprod, dtype=torch.float64)
    stride = scheduler.config.num_train_timesteps // len(timesteps)
    t = timesteps.long().cpu()
    prev = t - stride
    a_t = acp[t]
    a_p = torch.where(prev >= 0, acp[prev.clamp_min(0)], final)
    var = (1 - a_p) / (1 - a_t) * (1 - a_t / a_p)
    sigma = eta * var.clamp_min(0).sqrt()
    shape = (-1, 1, 1, 1)
    f = lambda x: x.to(device=device, dtype=torch.float32).reshape(shape)  # noqa: E731
    return StepCoefficients(timesteps.to(device), f(a_t), f(a_p), f(sigma))


def split_prediction(model_output: torch.Tensor, x_t: torch.Tensor, alpha_t: torch.Tensor,
                     prediction_type: str = "epsilon") -> tuple[torch.Tensor, torch.Tensor]:
    """(eps, x0_hat) from the UNet output, for epsilon or v prediction."""
    out = model_output.float()
    if prediction_type == "epsilon":
        eps = out
        x0 = (x_t - (1 - alpha_t).sqrt() * eps) / alpha_t.sqrt()
    elif prediction_type == "v_prediction":
        x0 = alpha_t.sqrt() * x_t - (1 - alpha_t).sqrt() * out
        eps = alpha_t.sqrt() * out + (1 - alpha_t).sqrt() * x_t
    else:
        raise NotImplementedError(f"prediction_type '{prediction_type}' is not supported; "
                                  "use an epsilon- or v-prediction model")
    return eps, x0


def posterior_mean(eps: torch.Tensor, x0: torch.Tensor, c: StepCoefficients) -> torch.Tensor:
    """The deterministic part of the step (everything but ``sigma * z``)."""
    direction = (1 - c.alpha_prev - c.sigma ** 2).clamp_min(0).sqrt()
    return c.alpha_prev.sqrt() * x0 + direction * eps


def ddpm_step(model_output: torch.Tensor, x_t: torch.Tensor, z: torch.Tensor,
              c: StepCoefficients, prediction_type: str = "epsilon") -> torch.Tensor:
    """One step (vectorised over the batch) with given noise maps ``z``."""
    eps, x0 = split_prediction(model_output, x_t, c.alpha_t, prediction_type)
    return posterior_mean(eps, x0, c) + c.sigma * z.float()


def solve_noise(model_output: torch.Tensor, x_t: torch.Tensor, x_prev: torch.Tensor,
                c: StepCoefficients, prediction_type: str = "epsilon"
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """The noise maps ``z`` that make :func:`ddpm_step` land on ``x_prev`` (and the landing).

    Where ``sigma`` is 0 the step is deterministic and ``z`` is 0. The second value is
    the recomputed ``x_prev`` (equal to the input up to rounding); storing it keeps the
    trajectory consistent with the step formula to the last bit.
    """
    eps, x0 = split_prediction(model_output, x_t, c.alpha_t, prediction_type)
    mean = posterior_mean(eps, x0, c)
    safe = torch.where(c.sigma > 0, c.sigma, torch.ones_like(c.sigma))
    z = torch.where(c.sigma > 0, (x_prev.float() - mean) / safe, torch.zeros_like(mean))
    return z, mean + c.sigma * z


def predicted_x0(model_output: torch.Tensor, x_t: torch.Tensor, c: StepCoefficients,
                 prediction_type: str = "epsilon") -> torch.Tensor:
    return split_prediction(model_output, x_t, c.alpha_t, prediction_type)[1]
