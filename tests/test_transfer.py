"""The denoising loop (``e4e_lab/method/transfer.py``): invariants, injection
bookkeeping, guidance paths, AdaIN steps, events and cancel, masks checked before the
first step, NaN reported with its step, multi-object runs."""

import threading

import numpy as np
import pytest
import torch

from e4e_lab import TransferConfig
from e4e_lab.errors import MaskError, NumericalError, TransferCancelled
from e4e_lab.method.inversion import InversionResult
from e4e_lab.method.latents import decode
from e4e_lab.method.layers import injected_layers
from e4e_lab.method.recording import RunRecorder
from e4e_lab.method.transfer import run_transfer

from conftest import SMALL, assert_names


@pytest.fixture()
def pair(lab, build_pair):
    return build_pair(lab)


def test_none_mode_reproduces_structure(lab, pair, fast_config):
    """injection none, no AdaIN, guidance = inversion CFG: the output is the structure."""
    cfg = fast_config.replace(injection="none", adain=False, guidance=fast_config.inversion_cfg)
    res = lab.transfer(pair, cfg)
    assert (res.image - res.structure_recon).abs().max() <= 1 / 255


def test_branches_reconstruct_their_images(lab, pair, fast_config):
    """Appearance and structure follow their inversions exactly (reference defect 5)."""
    res = lab.transfer(pair, fast_config)
    app_inv, struct_inv = lab.invert([pair.appearance, pair.structure], fast_config)
    assert torch.equal(res.latents[1], app_inv.x0) and torch.equal(res.latents[2], struct_inv.x0)
    assert torch.allclose(res.appearance_recon, decode(lab.models, app_inv.x0[None])[0], atol=1e-5)


def test_injection_touches_only_chosen_layers_and_steps(lab, pair, fast_config):
    rec = RunRecorder()
    cfg = fast_config.replace(injection="v")
    lab.transfer(pair, cfg, recorder=rec)
    layers = injected_layers(lab.models.unet)
    steps = [i for i in range(cfg.denoising_steps) if cfg.injects_at(i)]
    expected = {(l, i) for l in layers for i in steps}
    assert {(l, i) for l, i, _ in rec.calls} == expected
    assert len(rec.calls) == len(expected)  # once per layer and step
    refresh = {i for _, i, kind in rec.calls if kind == "refresh"}
    assert refresh == {i for i in steps if cfg.refreshes_at(i)} and refresh


def test_processors_restored_after_run(lab, pair, fast_config):
    before = {k: type(v) for k, v in lab.models.unet.attn_processors.items()}
    lab.transfer(pair, fast_config)
    after = {k: type(v) for k, v in lab.models.unet.attn_processors.items()}
    assert before == after


@pytest.mark.parametrize("mode", ["feature", "v", "kv", "cross-image"])
@pytest.mark.parametrize("guidance", [2.5, 1.0, 0.5])
def test_every_mode_runs_with_and_without_guidance(lab, pair, fast_config, mode, guidance):
    """Reference defects 1 and 2: guidance <= 1 and V injection crashed there."""
    res = lab.transfer(pair, fast_config.replace(injection=mode, guidance=guidance))
    assert torch.isfinite(res.image).all()
    assert res.image.shape == (3, SMALL, SMALL)


def test_modes_change_the_result(lab, pair, fast_config):
    base = lab.transfer(pair, fast_config.replace(injection="none", adain=False)).image
    for mode in ("feature", "v", "kv", "cross-image"):
        img = lab.transfer(pair, fast_config.replace(injection=mode, adain=False)).image
        assert (img - base).abs().max() > 1e-3, mode


def test_default_config_without_sam_masks(lab, pair):
    """Reference defect 3: the default config (masked AdaIN, no SAM) crashed at step 49."""
    res = lab.transfer(pair, TransferConfig(domain="bird"))
    assert torch.isfinite(res.image).all()


def test_events_and_cancel(lab, pair, fast_config):
    events = []
    res = lab.transfer(pair, fast_config, callback=events.append)
    assert [e.step for e in events] == list(range(fast_config.denoising_steps))
    assert [e.timestep for e in events][:2] == [651, 601]  # 20 steps (951..1), 6 skipped
    assert events[-1].latent.shape == (4, 8, 8) and events[-1].pred_x0.shape == (4, 8, 8)
    stop = threading.Event()

    def stop_at_3(ev):
        if ev.step == 3:
            stop.set()

    with pytest.raises(TransferCancelled) as info:
        lab.transfer(pair, fast_config, callback=stop_at_3, cancel=stop)
    assert info.value.step == 4
    again = lab.transfer(pair, fast_config)  # the session is still usable
    assert torch.equal(again.image, res.image)


@pytest.mark.parametrize("schedule, expected", [("published", range(9, 14)),
                                                ("exact", range(10, 14))])
def test_adain_applied_only_in_range(lab, pair, fast_config, schedule, expected):
    """14 denoising steps; the published callback widens the AdaIN range by one step."""
    cfg = fast_config.replace(injection="none", guidance=fast_config.inversion_cfg,
                              adain_range=(10, 20), schedule=schedule)
    events = []
    lab.transfer(pair, cfg, callback=events.append)
    assert [e.step for e in events if e.adain] == list(expected) == cfg.steps()["adain"]


def test_masks_restrict_matching(lab, images, fast_config):
    box = (0, 0, SMALL // 2, SMALL)  # left half of each image
    pair = lab.pair(images[0], images[1], size=SMALL, mask="box", appearance_box=box,
                    structure_box=box)
    cfg = fast_config.replace(record_matches=True)
    res = lab.transfer(pair, cfg)
    for (layer, step), fld in res.recorder.matches.items():
        h, w = fld.target_shape
        idx = fld.index.reshape(h, w)
        assert (idx[:, w // 2:] == -1).all()  # background keeps its own features
        assert ((idx[:, : w // 2] % w) < w // 2).all()  # matches only inside the ref box


def test_empty_and_tiny_masks_are_caught_before_adain_and_matching(warm_lab, images,
                                                                    fast_config):
    lab = warm_lab
    with pytest.raises(MaskError, match="empty") as e:
        lab.pair(images[0], images[1], appearance_mask=np.zeros((SMALL, SMALL)), size=SMALL)
    assert_names(e, "appearance mask", "--mask box")
    # a box so small that it covers less than two cells of the coarsest grid
    pair = lab.pair(images[0], images[1], appearance_box=[0, 0, 2, 2],
                    structure_box=[0, 0, 64, 64], mask="box", size=SMALL)
    calls = []
    with pytest.raises(MaskError, match="appearance") as e:
        lab.transfer(pair, fast_config, callback=calls.append)
    assert not calls  # refused before the first denoising step
    assert "larger box" in str(e.value)


def test_tiny_mask_of_a_multi_pair_is_named(lab, images, fast_config):
    objects = [{"appearance": images[0]}, {"appearance": images[0], "target_box": (0, 0, 2, 2)}]
    mp = lab.pair(images[1], objects=objects, mask="box", size=SMALL)
    with pytest.raises(MaskError, match=r"the structure \(target\) mask of pair 1 covers fewer "
                       r"than 2 cells of the 4x4 grid .*--mask box"):
        lab.transfer(mp, fast_config)


def test_dift_correspondence_source(lab, pair, fast_config):
    cfg = fast_config.replace(correspondence="dift", dift_ensemble=2, record_matches=True)
    res = lab.transfer(pair, cfg)
    fields = list(res.recorder.matches.values())
    assert fields and all(f.target_shape in ((8, 8), (4, 4)) for f in fields)
    assert torch.isfinite(res.image).all()


def test_multi_object_transfer(lab, images, fast_config):
    """Two target halves from two reference images; background keeps its features."""
    half = SMALL // 2
    objects = [
        {"appearance": images[0], "target_box": (0, 0, half, SMALL), "appearance_box": (0, 0, SMALL, SMALL)},
        {"appearance": images[1], "target_box": (half, 0, SMALL, SMALL), "appearance_box": (0, 0, half, SMALL)},
    ]
    mp = lab.pair(images[1], objects=objects, mask="box", size=SMALL)
    assert len(mp.references) == 2 and [r.reference for r in mp.regions] == [0, 1]
    res = lab.transfer(mp, fast_config.replace(record_matches=True))
    assert res.latents.shape[0] == 4 and len(res.appearance_recons) == 2
    for fld in res.recorder.matches.values():
        h, w = fld.target_shape
        idx = fld.index.reshape(h, w)
        n = h * w
        assert (idx[:, : w // 2] < n).all() and (idx[:, w // 2:] >= n).all()
        assert (((idx[:, w // 2:] - n) % w) < w // 2).all()  # inside the second ref's box
    # one pair covering everything equals the single-object run
    single = lab.pair(images[0], images[1], size=SMALL, mask="none")
    mp1 = lab.pair(images[1], objects=[{"appearance": images[0]}], mask="none", size=SMALL)
    a = lab.transfer(single, fast_config).image
    b = lab.transfer(mp1, fast_config).image  # one Lab.transfer for one object or several
    assert torch.equal(a, b)


def test_nan_in_a_stored_inversion_is_reported_with_its_step(warm_lab, build_pair, fast_config):
    lab = warm_lab
    pair = build_pair(lab, boxes=True)
    cfg = fast_config
    app, struct = lab.invert([pair.appearance, pair.structure], cfg)
    k0 = cfg.skip_steps

    def poisoned(inv, *, xt=None, z=None):
        xts, zs = inv.xts.clone(), inv.zs.clone()
        if xt is not None:
            xts[xt] = float("nan")
        if z is not None:
            zs[z, 0, 2, 3] = float("inf")
        return InversionResult(inv.name, xts, zs, inv.timesteps, inv.config, inv.key)

    for bad_struct, step in ((poisoned(struct, z=k0 + 2), 2), (poisoned(struct, xt=k0), 0)):
        seen = []
        with pytest.raises(NumericalError) as e:
            run_transfer(lab.models, app, bad_struct, pair.appearance_mask, pair.structure_mask,
                         cfg, callback=seen.append)
        assert_names(e, f"step {step} ", f"t={int(struct.timesteps[k0 + step])}")
        assert all(torch.isfinite(ev.latent).all() for ev in seen[:step])
    # the stored inversions themselves were not touched
    assert torch.isfinite(struct.zs).all() and torch.isfinite(struct.xts).all()


# ------------------------------------------------------------------ compile --

def test_compiled_unet_gives_the_same_transfer_and_compiles_once_per_kind_of_step(
        build_pair, fast_config, reference_run, tmp_path):
    """``--compile``: the processors decide per step outside the UNet, so dynamo compiles
    one graph per batch shape and kind of step (plain, match, refresh), not one per step,
    and a second run compiles nothing. The ``eager`` backend checks the capture on a CPU
    in seconds (inductor's kernels round differently and take minutes to build here)."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    from e4e_lab import Lab
    from e4e_lab.models import load_pipeline

    torch._dynamo.reset()
    counters.clear()
    models = load_pipeline("tiny", device="cpu").compile_unet(backend="eager")
    assert "+compiled-eager" in models.fingerprint
    try:
        lab = Lab(models=models, cache_dir=tmp_path / "cache")
        first = lab.transfer(build_pair(lab, boxes=True), fast_config)
        graphs = counters["stats"]["unique_graphs"]
        again = lab.transfer(build_pair(lab, boxes=True), fast_config)
        assert counters["stats"]["unique_graphs"] == graphs  # nothing recompiled
        config = torch._dynamo.config  # the limit was called cache_size_limit before 2.6
        limit = getattr(config, "recompile_limit", None) or config.cache_size_limit
        assert 0 < graphs < limit  # one graph per step would reach the limit: eager again
    finally:
        torch._dynamo.reset()
    expected, _ = reference_run
    for res in (first, again):
        assert torch.equal(res.latents, expected.latents)
        assert res.recorder.calls == expected.recorder.calls
