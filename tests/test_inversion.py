"""Edit-friendly DDPM inversion (``e4e_lab/method/inversion.py``): exact round trip,
batching, cache keys, and recomputation of a corrupt cache entry."""

import logging

import pytest
import torch

from e4e_lab.io.cache import TensorCache
from e4e_lab.method.config import InversionConfig
from e4e_lab.method.images import load_image
from e4e_lab.method.inversion import cache_spec, invert, invert_uncached, reconstruct

from conftest import SMALL, perturb_weights


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


# ---------------------------------------------------------------------------------
# Issue 15: an image's inversion is bit-identical whether it is inverted alone, with a
# partner, or after a partner came from the cache; keys follow the model's weights.


@pytest.fixture(scope="module")
def three(images):
    """cat, horse and coffee_cup: the test images and a third one."""
    third = images[0].flip(-1) * 0.5 + images[1] * 0.5
    return [load_image(im, SMALL, name=n) for im, n in
            zip((images[0], images[1], third), ("cat.png", "horse.png", "coffee_cup.png"))]


def _same(a, b) -> bool:
    return torch.equal(a.xts, b.xts) and torch.equal(a.zs, b.zs) and \
        torch.equal(a.timesteps, b.timesteps)


@pytest.mark.parametrize("batch_size", [None, 8])
def test_an_image_inverted_alone_equals_it_inverted_in_a_batch(models, three, batch_size):
    cfg = InversionConfig(num_steps=10)
    cat, horse, cup = three
    both = invert_uncached(models, [cat, horse], cfg, batch_size=batch_size)
    for image, batched in ((cat, both[0]), (horse, both[1])):
        (alone,) = invert_uncached(models, [image], cfg, batch_size=batch_size)
        assert all(torch.equal(x, y) for x, y in zip(alone, batched))
    (other,) = invert_uncached(models, [cup, horse], cfg, batch_size=batch_size)[1:]
    assert all(torch.equal(x, y) for x, y in zip(other, both[1]))


def test_what_the_cache_holds_never_changes_a_result(models, three, tmp_path):
    """cat->coffee_cup then cat->horse equals cat->horse on a clean cache."""
    cfg = InversionConfig(num_steps=10)
    cat, horse, cup = three
    clean = invert(models, [cat, horse], cfg, cache=TensorCache(tmp_path / "clean", "inv"))
    warm = TensorCache(tmp_path / "warm", "inv")
    invert(models, [cat, cup], cfg, cache=warm)
    again = invert(models, [cat, horse], cfg, cache=warm)
    assert again[0].from_cache and not again[1].from_cache
    assert _same(again[0], clean[0]) and _same(again[1], clean[1])


@pytest.mark.parametrize("kill", ["before-rename", "truncated-entry"])
def test_a_rerun_after_a_kill_during_a_cache_write_equals_a_clean_run(models, three, tmp_path,
                                                                      kill):
    """A SIGKILL during the second entry's write leaves a partial temporary file (before
    the rename) or, on a file system without atomic renames, a truncated entry."""
    cfg = InversionConfig(num_steps=10)
    cat, horse, _ = three
    clean = invert(models, [cat, horse], cfg, cache=TensorCache(tmp_path / "clean", "inv"))
    killed = TensorCache(tmp_path / "killed", "inv")
    invert(models, [cat, horse], cfg, cache=killed)
    entry = killed.path(clean[1].key)
    data = entry.read_bytes()
    if kill == "before-rename":
        import os

        from e4e_lab.io.cache import temp_name

        entry.unlink()
        dead = temp_name(f".{entry.name}").replace(f"-{os.getpid()}-", "-999999999-")
        (entry.parent / f"{dead}.tmp").write_bytes(data[: len(data) // 2])
    else:
        entry.write_bytes(data[: len(data) // 2])
    rerun = TensorCache(tmp_path / "killed", "inv")  # the next start
    again = invert(models, [cat, horse], cfg, cache=rerun)
    assert again[0].from_cache and not again[1].from_cache
    assert _same(again[0], clean[0]) and _same(again[1], clean[1])
    assert sorted(p.suffix for p in rerun.folder.iterdir() if p.suffix != ".lock") \
        == [".safetensors", ".safetensors"]  # the leftover is gone


def test_changed_unet_weights_do_not_reuse_old_inversions(three, tmp_path):
    """A local model folder whose UNet weights changed (same config): its old entries
    are not reused, and the result equals a clean-cache run; a moved folder keeps them."""
    import shutil

    from e4e_lab.models import load_pipeline, tiny_model_path


    cfg = InversionConfig(num_steps=6)
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_path(), folder)
    cache = TensorCache(tmp_path / "cache", "inv")
    (before,) = invert(load_pipeline(str(folder), device="cpu"), three[:1], cfg, cache=cache)
    folder.rename(tmp_path / "moved")
    (moved,) = invert(load_pipeline(str(tmp_path / "moved"), device="cpu"), three[:1], cfg,
                      cache=cache)
    assert moved.from_cache and _same(moved, before)
    perturb_weights(tmp_path / "moved", "unet", "diffusion_pytorch_model.safetensors")
    changed = load_pipeline(str(tmp_path / "moved"), device="cpu")
    (after,) = invert(changed, three[:1], cfg, cache=cache)
    (clean,) = invert(changed, three[:1], cfg, cache=TensorCache(tmp_path / "clean", "inv"))
    assert not after.from_cache and after.key != before.key
    assert _same(after, clean) and not torch.equal(after.zs, before.zs)


def test_each_inversion_is_cached_as_soon_as_it_is_done(models, three, tmp_path, monkeypatch):
    """A run killed while the second image is inverted keeps the first one's entry."""
    from e4e_lab.method import inversion

    cfg = InversionConfig(num_steps=6)
    real, calls = inversion._invert_one, []

    def dies_on_the_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # stands for the kill
        return real(*args, **kwargs)

    monkeypatch.setattr(inversion, "_invert_one", dies_on_the_second)
    cache = TensorCache(tmp_path, "inv")
    with pytest.raises(KeyboardInterrupt):
        invert(models, three[:2], cfg, cache=cache)
    monkeypatch.setattr(inversion, "_invert_one", real)
    again = invert(models, three[:2], cfg, cache=cache)
    assert again[0].from_cache and not again[1].from_cache


def _count_specs(monkeypatch) -> list:
    """Counts the calls of ``cache_spec`` (what a cache key is computed from)."""
    from e4e_lab.method import inversion

    real, calls = inversion.cache_spec, []

    def counted(models, image, *args, **kwargs):
        calls.append(image.name)
        return real(models, image, *args, **kwargs)

    monkeypatch.setattr(inversion, "cache_spec", counted)
    return calls


def test_lab_computes_each_inversion_key_once_per_call(lab, images, fast_config, monkeypatch):
    """Lab.invert's keys serve the memory and the disk cache: one spec per image per call
    (it used to compute them, and ``invert`` again), and a memory hit inverts nothing."""
    from e4e_lab import session
    from e4e_lab.method import inversion

    a, b = (lab.load_image(im, SMALL, name=f"im{n}.png") for n, im in enumerate(images))
    calls = _count_specs(monkeypatch)
    first = lab.invert([a, b], fast_config)
    assert calls == ["im0.png", "im1.png"]
    real, inverted = inversion.invert, []
    monkeypatch.setattr(session, "invert", lambda *a, **k: inverted.append(1) or real(*a, **k))
    calls.clear()
    again = lab.invert([b, a], fast_config)
    assert calls == ["im1.png", "im0.png"] and not inverted  # the memory cache answered
    assert again[0] is first[1] and again[1] is first[0]


def test_inversion_keys_are_the_cache_spec_digests(models, lab, images, fast_config):
    """The keys are what they were before they were computed in one place: the digest of
    ``cache_spec`` at the chunk ``unet_chunk`` picks, so existing disk caches still hit."""
    from e4e_lab.io.cache import key_of
    from e4e_lab.method.inversion import inversion_keys, unet_chunk

    img = lab.load_image(images[0], SMALL, name="a.png")
    cfg = fast_config.inversion
    (k,) = inversion_keys(models, [img], cfg)
    assert k.key == key_of(cache_spec(models, img, cfg)) and k.spec == cache_spec(models, img, cfg)
    assert k.chunk == unet_chunk(models, img) == k.spec["unet_chunk"]
    (small,) = inversion_keys(models, [img], cfg, batch_size=8)
    assert small.chunk == 4 and small.key != k.key
    (inv,) = lab.invert([img], fast_config)
    assert inv.key == k.key


def test_invert_refuses_keys_that_do_not_match_the_images(models, images):
    from e4e_lab.errors import ConfigError
    from e4e_lab.method.inversion import inversion_keys

    cfg = InversionConfig(num_steps=6)
    a, b = (load_image(im, SMALL) for im in images)
    with pytest.raises(ConfigError, match="inversion_keys"):
        invert(models, [a, b], cfg, keys=inversion_keys(models, [a], cfg))
