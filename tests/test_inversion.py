"""Edit-friendly DDPM inversion: exact round trip, batching, schedule and cache keys."""

import torch

from e4e_lab.io.cache import TensorCache
from e4e_lab.method import schedule
from e4e_lab.method.config import InversionConfig
from e4e_lab.method.images import load_image
from e4e_lab.method.inversion import invert, invert_uncached, reconstruct

from conftest import SMALL


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


def test_round_trip_is_exact(models, images):
    cfg = InversionConfig(num_steps=20, domain="bird")
    img = load_image(images[0], SMALL)
    (inv,) = invert(models, [img], cfg)
    assert inv.xts.shape == (21, 4, 8, 8) and inv.zs.shape == (20, 4, 8, 8)
    assert not (inv.zs[-1] == 0).all()  # the last noise map is kept (exactness)
    x0 = reconstruct(models, inv)
    assert torch.allclose(x0.cpu(), inv.x0, atol=1e-4, rtol=0), (x0.cpu() - inv.x0).abs().max()
    # from an intermediate step too (the transfer starts after skipped steps)
    assert torch.allclose(reconstruct(models, inv, start=6).cpu(), inv.x0, atol=1e-4, rtol=0)


def test_batched_images_equal_single(models, images):
    cfg = InversionConfig(num_steps=10)
    a, b = (load_image(im, SMALL, name=f"im{i}") for i, im in enumerate(images))
    both = invert_uncached(models, [a, b], cfg, batch_size=8)
    single = invert_uncached(models, [b], cfg, batch_size=64)
    assert torch.allclose(both[1][0], single[0][0], atol=1e-4)
    assert torch.allclose(both[1][1], single[0][1], atol=1e-3)


def test_cache_reuses_and_keys_on_content(models, images, tmp_path):
    cache = TensorCache(tmp_path, "inversions")
    cfg = InversionConfig(num_steps=10)
    a = load_image(images[0], SMALL, name="same_name.png")
    b = load_image(images[1], SMALL, name="same_name.png")  # same name, other pixels
    (ia,) = invert(models, [a], cfg, cache=cache)
    (ia2,) = invert(models, [a], cfg, cache=cache)
    assert not ia.from_cache and ia2.from_cache and torch.equal(ia.xts, ia2.xts)
    (ib,) = invert(models, [b], cfg, cache=cache)
    assert not ib.from_cache and ib.key != ia.key  # reference defect 6: no stale latents
    for change in (dict(seed=1), dict(cfg_scale=2.0), dict(domain="cat"), dict(freeu=False)):
        (other,) = invert(models, [a], InversionConfig(num_steps=10, **change), cache=cache)
        assert not other.from_cache and other.key != ia.key
    assert len(list(cache.folder.glob("*.safetensors"))) == 6
