"""The denoising loop: invariants, injection bookkeeping, guidance paths, AdaIN, events."""

import json
import threading
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

from e4e_lab.errors import MaskError, TransferCancelled
from e4e_lab.io.outputs import save_run
from e4e_lab.method.adain import masked_adain, masked_stats
from e4e_lab.method.config import TransferConfig
from e4e_lab.method.latents import decode
from e4e_lab.method.layers import injected_layers
from e4e_lab.method.recording import RunRecorder

from conftest import SMALL


@pytest.fixture()
def pair(lab, images):
    return lab.pair(images[0], images[1], size=SMALL, mask="none")


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


def test_injected_layers_are_two_finest_decoder_resolutions(models):
    layers = injected_layers(models.unet)
    # tiny model: up-blocks 2 and 3 hold the finest decoder self-attention, 3 layers each
    assert len(layers) == 6
    assert all(l.startswith(("up_blocks.2.", "up_blocks.3.")) and ".attn1." in l for l in layers)


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


def test_default_config_without_sam_masks(lab, images):
    """Reference defect 3: the default config (masked AdaIN, no SAM) crashed at step 49."""
    pair = lab.pair(images[0], images[1], size=SMALL, mask="none")
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


def test_masked_adain_statistics():
    g = torch.Generator().manual_seed(0)
    x, ref = torch.randn(4, 8, 8, generator=g), torch.randn(4, 8, 8, generator=g) * 3 + 1
    mx, mr = torch.zeros(8, 8), torch.zeros(8, 8)
    mx[2:6, 2:6], mr[:4] = 1, 1
    out = masked_adain(x, ref, mx, mr)
    mean_o, std_o = masked_stats(out, mx)
    mean_r, std_r = masked_stats(ref, mr)
    assert torch.allclose(mean_o, mean_r, atol=1e-4) and torch.allclose(std_o, std_r, atol=1e-3)
    assert torch.equal(out[:, mx == 0], x[:, mx == 0])  # outside the mask untouched
    # definition: unbiased variance + 1e-5
    sel = ref[:, mr == 1]
    assert torch.allclose(std_r, (sel.var(dim=1, unbiased=True) + 1e-5).sqrt())
    # empty masks: returned unchanged, no NaN
    assert torch.equal(masked_adain(x, ref, torch.zeros(8, 8), mr), x)
    assert torch.equal(masked_adain(x, ref, mx, torch.zeros(8, 8)), x)


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


def test_tiny_box_mask_is_refused_before_running(lab, images, fast_config):
    pair = lab.pair(images[0], images[1], size=SMALL, mask="box", appearance_box=(0, 0, 2, 2),
                    structure_box=(0, 0, 32, 32))
    with pytest.raises(MaskError, match="appearance"):
        lab.transfer(pair, fast_config)


def test_tiny_mask_of_a_multi_pair_is_named(lab, images, fast_config):
    objects = [{"appearance": images[0]}, {"appearance": images[0], "target_box": (0, 0, 2, 2)}]
    mp = lab.multi_pair(images[1], objects, mask="box", size=SMALL)
    with pytest.raises(MaskError, match=r"the structure \(target\) mask of pair 1 covers fewer "
                       r"than 2 cells of the 4x4 grid .*--mask box"):
        lab.transfer_multi(mp, fast_config)


def test_masks_are_resized_once_per_grid(lab, images, fast_config, monkeypatch):
    """Matching masks are resized once per (mask, grid) for the whole run, not per call."""
    from e4e_lab.method import attention

    real, resized = attention.matching_mask, Counter()

    def counting(mask, shape, mode):
        resized[(id(mask), tuple(shape))] += 1
        return real(mask, shape, mode)

    monkeypatch.setattr(attention, "matching_mask", counting)
    pair = lab.pair(images[0], images[1], size=SMALL, mask="box", appearance_box=(0, 0, 48, 64),
                    structure_box=(8, 0, 64, 64))
    lab.transfer(pair, fast_config)
    # two masks on the two injected grids
    assert {s for _, s in resized} == {(8, 8), (4, 4)} and len(resized) == 4
    assert set(resized.values()) == {1}


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
    mp = lab.multi_pair(images[1], objects, mask="box", size=SMALL)
    assert len(mp.references) == 2 and [r.reference for r in mp.regions] == [0, 1]
    res = lab.transfer_multi(mp, fast_config.replace(record_matches=True))
    assert res.latents.shape[0] == 4 and len(res.appearance_recons) == 2
    for fld in res.recorder.matches.values():
        h, w = fld.target_shape
        idx = fld.index.reshape(h, w)
        n = h * w
        assert (idx[:, : w // 2] < n).all() and (idx[:, w // 2:] >= n).all()
        assert (((idx[:, w // 2:] - n) % w) < w // 2).all()  # inside the second ref's box
    # one pair covering everything equals the single-object run
    single = lab.pair(images[0], images[1], size=SMALL, mask="none")
    mp1 = lab.multi_pair(images[1], [{"appearance": images[0]}], mask="none", size=SMALL)
    a = lab.transfer(single, fast_config).image
    b = lab.transfer_multi(mp1, fast_config).image
    assert torch.equal(a, b)


def _saved(folder):
    meta = json.loads((folder / "config.json").read_text())
    return meta, np.asarray(Image.open(folder / "strip.png").convert("RGB"))


def test_save_run_reads_single_and_multi_pairs_through_their_protocol(lab, images, fast_config,
                                                                       tmp_path):
    """config.json describes each kind of pair; strip.png shows its inputs, then the result,
    under the tiny-model banner."""
    half = SMALL // 2
    pair = lab.pair(images[0], images[1], size=SMALL, mask="box", appearance_box=(0, 0, 48, 64),
                    structure_box=(8, 0, 64, 64))
    multi = lab.multi_pair(images[1], [
        {"appearance": images[0], "target_box": (0, 0, half, SMALL)},
        {"appearance": images[1], "target_box": (half, 0, SMALL, SMALL),
         "appearance_box": (0, 0, half, SMALL)}], mask="box", size=SMALL)
    save_run(tmp_path / "single", lab.transfer(pair, fast_config), pair)
    save_run(tmp_path / "multi", lab.transfer_multi(multi, fast_config), multi)

    meta, strip = _saved(tmp_path / "single")
    assert meta["tiny_model"] is True and meta["mask"] == "box" and meta["size"] == [SMALL, SMALL]
    assert meta["appearance_box"] == [0, 0, 48, 64] and meta["structure_box"] == [8, 0, 64, 64]
    assert meta["strip"] == ["structure", "appearance", "result"]
    band = strip.shape[0] - SMALL  # the red tiny-model banner on top
    assert band > 0 and tuple(strip[0, -1]) == (200, 0, 0) and strip.shape[1] == 3 * SMALL
    assert (strip[band:, :SMALL] == pair.structure.to_uint8()).all()
    assert (strip[band:, SMALL:2 * SMALL] == pair.appearance.to_uint8()).all()

    meta, strip = _saved(tmp_path / "multi")
    assert meta["tiny_model"] is True and "appearance_box" not in meta
    assert [o["target_box"] for o in meta["objects"]] == [[0, 0, half, SMALL],
                                                          [half, 0, SMALL, SMALL]]
    assert [o["appearance_box"] for o in meta["objects"]] == [None, [0, 0, half, SMALL]]
    assert meta["strip"] == ["structure", "appearance 1", "appearance 2", "result"]
    assert tuple(strip[0, -1]) == (200, 0, 0) and strip.shape[1] == 4 * SMALL
    for n, image in enumerate([multi.structure] + multi.references):
        assert (strip[band:, n * SMALL:(n + 1) * SMALL] == image.to_uint8()).all()
