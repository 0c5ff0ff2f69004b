"""The DDPM step and its timesteps (``e4e_lab/method/schedule.py``): SD 1.5's leading
spacing, and diffusers' DDIM step with eta = 1 evaluated for many timesteps at once."""

import torch

from e4e_lab.method import schedule


def test_sd15_leading_timesteps(models):
    ts = schedule.timesteps_for(models.scheduler, 100)
    assert ts[0] == 991 and ts[1] == 981 and ts[-1] == 1 and len(ts) == 100
    assert int(ts[32]) == 671  # denoising starts here with 32 skipped steps


def test_step_matches_diffusers_ddim_step(models):
    """Our vectorised step is diffusers' DDIMScheduler.step with eta=1 and given noise."""
    sch = models.scheduler
    ts = schedule.timesteps_for(sch, 100)
    coef = schedule.coefficients(sch, ts)
    g = torch.Generator().manual_seed(0)
    for k in (0, 40, 99):
        x, eps, z = (torch.randn(1, 4, 8, 8, generator=g) for _ in range(3))
        ours = schedule.ddpm_step(eps, x, z, coef[k])
        ref = sch.step(eps, ts[k], x, eta=1.0, variance_noise=z).prev_sample
        assert torch.allclose(ours, ref, atol=1e-5)
