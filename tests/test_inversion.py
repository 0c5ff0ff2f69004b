"""Edit-friendly DDPM inversion (``e4e_lab/method/inversion.py``): exact round trip,
batching, cache keys, and recomputation of a corrupt cache entry."""

import logging

import pytest
import torch

from e4e_lab.io.cache import TensorCache
from e4e_lab.method.config import InversionConfig
from e4e_lab.method.images import load_image
from e4e_lab.method.inversion import cache_spec, invert, invert_uncached, reconstruct

from conftest import SMALL


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


@pytest.mark.parametrize("kind", ["flipped-data", "other-spec"])
def test_inversion_recomputes_a_corrupt_entry(models, tmp_path, images, caplog, kind):
    cache = TensorCache(tmp_path, "inversions")
    cfg = InversionConfig(num_steps=6, domain="bird")
    img = load_image(images[0], SMALL)
    first = invert(models, [img], cfg, cache=cache)[0]
    if kind == "flipped-data":  # one byte of the tensors flipped
        path = cache.path(first.key)
        data = bytearray(path.read_bytes())
        data[-7] ^= 0x10
        path.write_bytes(bytes(data))
    else:  # the file under this key records other inputs (e.g. a stale entry)
        spec = dict(cache_spec(models, img, cfg), cfg=99.0)
        cache.put(first.key, spec, {"xts": first.xts + 1, "zs": first.zs,
                                    "timesteps": first.timesteps})
    with caplog.at_level(logging.WARNING, logger="e4e_lab.io.cache"):
        again = invert(models, [img], cfg, cache=cache)[0]
    assert not again.from_cache
    assert any("discarded" in r.getMessage() for r in caplog.records)
    assert torch.equal(again.xts, first.xts) and torch.equal(again.zs, first.zs)
    third = invert(models, [img], cfg, cache=cache)[0]  # the rewritten entry is valid
    assert third.from_cache and torch.equal(third.xts, first.xts)
    assert sorted(p.suffix for p in cache.folder.iterdir() if p.suffix != ".lock") \
        == [".safetensors"]
