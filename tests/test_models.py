"""The models (``e4e_lab/models/``): the tiny model and its tokenizer, ``auto``'s
fallbacks, typed errors for unavailable models and unsafe checkpoints, the DIFT
featurizer, SAM-HQ, and the dtype rule."""

import logging
import pickle
import time

import pytest
import torch

from e4e_lab.errors import ModelUnavailableError
from e4e_lab.method.images import load_image
from e4e_lab.models import BANNERS, TINY_WARNING, load_pipeline, tiny_model_path
from e4e_lab.models.dift import dift_features
from e4e_lab.models.loading import default_dtype

from conftest import SMALL, assert_names, dead_pid, perturb_weights


def test_tokenizer_is_real_clip_bpe(models):
    assert models.pipe.tokenizer("a photo of a bird").input_ids == [
        49406, 320, 1125, 539, 320, 3329, 49407]
    assert models.pipe.tokenizer.model_max_length == 77


def test_tiny_model_shape_and_loading_path(models):
    folder = tiny_model_path()
    assert (folder / "model_index.json").exists()  # saved with save_pretrained
    unet = models.unet
    assert [type(b).__name__ for b in unet.down_blocks] == ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"]
    assert [type(b).__name__ for b in unet.up_blocks] == ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3
    size_mb = sum(p.numel() * p.element_size() for p in models.pipe.components["unet"].parameters()) / 2**20
    assert size_mb < 40
    assert models.is_tiny and models.kind == "tiny" and models.banner == TINY_WARNING
    assert models.dtype == torch.float32 and models.device.type == "cpu"
    assert type(models.scheduler).__name__ == "DDIMScheduler"


def test_auto_falls_back_to_the_toy_model_then_the_tiny_one_fast_when_offline(
        caplog, monkeypatch, tmp_path):
    """Without SD 1.5 weights, ``auto`` loads the shipped toy model, or the tiny random one
    when no toy weights are there; each says so."""
    from e4e_lab.models import loading

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t = time.perf_counter()
    with caplog.at_level(logging.WARNING):
        m = load_pipeline("auto", device="cpu")
    assert m.is_toy and m.kind == "toy" and time.perf_counter() - t < 60
    assert any(BANNERS["toy"] in r.getMessage() for r in caplog.records)
    caplog.clear()
    monkeypatch.setattr(loading, "TOY_WEIGHTS", tmp_path / "no-toy-weights")
    t = time.perf_counter()
    with caplog.at_level(logging.WARNING):
        m = load_pipeline("auto", device="cpu")
    assert m.is_tiny and time.perf_counter() - t < 60
    assert any(TINY_WARNING in r.getMessage() for r in caplog.records)


def test_half_precision_on_cuda_full_on_cpu():
    """docs/method.md, published-code defect 8 (fp32 everywhere)."""
    assert default_dtype(torch.device("cuda")) == torch.float16
    assert default_dtype(torch.device("cpu")) == torch.float32


def test_missing_model_folder(tmp_path):
    with pytest.raises(ModelUnavailableError) as e:
        load_pipeline(str(tmp_path / "nowhere"), device="cpu")
    assert_names(e, "nowhere", "does not exist", "--model tiny")
    with pytest.raises(ModelUnavailableError, match="no model given"):
        load_pipeline("", device="cpu")


def test_model_folder_without_model_index(tmp_path):
    (tmp_path / "sd").mkdir()
    (tmp_path / "sd" / "unet").mkdir()
    with pytest.raises(ModelUnavailableError) as e:
        load_pipeline(str(tmp_path / "sd"), device="cpu")
    assert_names(e, "sd", "model_index.json", "--model tiny")
    (tmp_path / "sd" / "model_index.json").write_text("{broken")
    with pytest.raises(ModelUnavailableError) as e:
        load_pipeline(str(tmp_path / "sd"), device="cpu")
    assert_names(e, "sd", "save_pretrained", "--model tiny")


def test_hub_id_offline_with_empty_hf_home_fails_quickly(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    t0 = time.perf_counter()
    with pytest.raises(ModelUnavailableError) as e:
        load_pipeline("stable-diffusion-v1-5/stable-diffusion-v1-5", device="cpu")
    assert time.perf_counter() - t0 < 20
    assert_names(e, "stable-diffusion-v1-5/stable-diffusion-v1-5",
                  "hf download", "--model tiny")


def test_missing_sam_checkpoint(tmp_path, monkeypatch):
    from e4e_lab.models.sam import SamMasker

    monkeypatch.delenv("E4E_SAM_CHECKPOINT", raising=False)
    monkeypatch.setenv("E4E_LAB_CACHE", str(tmp_path / "cache"))
    with pytest.raises(ModelUnavailableError) as e:
        SamMasker.load(tmp_path / "sam_hq_vit_l.pth")
    assert_names(e, "sam_hq_vit_l.pth", "--sam-checkpoint", "--mask box")
    with pytest.raises(ModelUnavailableError, match="E4E_SAM_CHECKPOINT"):
        SamMasker.load(None)


class _Exploit:
    """Unpickling this creates a marker file (stands for arbitrary code execution)."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump", "state-dict-wrapper"])
def test_malicious_sam_checkpoint_is_not_executed(tmp_path, writer):
    from e4e_lab.models.sam import SamMasker

    marker = tmp_path / "PWNED"
    ckpt = tmp_path / "sam_hq_vit_l.pth"
    payload = _Exploit(str(marker))
    if writer == "torch.save":
        torch.save(payload, ckpt)
    elif writer == "pickle.dump":
        with open(ckpt, "wb") as fh:
            pickle.dump(payload, fh)
    else:
        torch.save({"model": {"weight": torch.zeros(1)}, "extra": payload}, ckpt)
    assert not marker.exists()
    with pytest.raises(ModelUnavailableError) as e:
        SamMasker.load(ckpt)
    assert not marker.exists(), "the checkpoint's pickle was executed"
    assert_names(e, "sam_hq_vit_l.pth")


def test_sam_checkpoint_holding_no_weights_is_refused(tmp_path):
    from e4e_lab.models.sam import SamMasker

    torch.save(torch.zeros(3), tmp_path / "tensor.pth")
    with pytest.raises(ModelUnavailableError, match="state dict"):
        SamMasker.load(tmp_path / "tensor.pth")
    torch.save({"model": {"weight": "nope"}}, tmp_path / "str.pth")
    with pytest.raises(ModelUnavailableError):
        SamMasker.load(tmp_path / "str.pth")


def test_dift_stops_after_the_requested_block(models, images):
    ran = []
    hooks = [b.register_forward_hook(lambda m, i, o, k=k: ran.append(k))
             for k, b in enumerate(models.unet.up_blocks)]
    try:
        img = load_image(images[0], SMALL)
        feats = dift_features(models, img, block=1, ensemble=3)
    finally:
        for h in hooks:
            h.remove()
    assert ran == [0, 1] * 1 and feats.ensemble == 3  # one batch of 3 draws
    assert feats.features.shape == (96, 4, 4)  # up-block 1 of the tiny UNet, 1/16 of 64 px
    assert torch.isfinite(feats.features).all()
    with pytest.raises(ValueError, match="out of range"):
        dift_features(models, img, block=9)


def test_every_dift_user_gets_the_same_features_from_one_function(lab, build_pair, fast_config,
                                                                 monkeypatch):
    """Lab.dift_field (the transfer's), the part finder and the explorer's lookup all go
    through ``pair_dift_features`` with the config's settings, holding the model lock."""
    from e4e_lab.analysis.lookup import FeatureLookup
    from e4e_lab.analysis.parts import pair_features
    from e4e_lab.models import dift

    pair = build_pair(lab, boxes=True)
    cfg = fast_config.replace(dift_ensemble=2)
    calls, real = [], dift.pair_dift_features

    def spy(models, target, reference, settings, *args, **kwargs):
        calls.append((settings, models.lock._is_owned()))
        return real(models, target, reference, settings, *args, **kwargs)

    monkeypatch.setattr(dift, "pair_dift_features", spy)
    field = lab.dift_field(pair, cfg)
    parts = pair_features(lab, pair, cfg, ensemble=2)
    s = dift.DiftSettings.from_config(cfg)
    lookup = FeatureLookup.from_dift(lab.models, pair.structure, pair.appearance,
                                     pair.structure_mask, pair.appearance_mask, s.timestep,
                                     s.block, s.ensemble, s.prompt, s.seed)
    assert [c[0] for c in calls] == [s] * 3
    assert torch.equal(field.index, parts.field.index)
    assert lookup.settings == {"timestep": s.timestep, "block": s.block, "ensemble": 2,
                               "prompt": s.prompt, "seed": s.seed}
    assert torch.equal(lookup.match_field().index, field.index)


def test_sam_hq_random_box_to_mask(images):
    pytest.importorskip("segment_anything_hq")
    from e4e_lab.models.sam import SamMasker

    sam = SamMasker.random("vit_tiny")
    img = load_image(images[0], SMALL)
    mask = sam.mask(img, (8, 8, 40, 40))
    assert mask.shape == (SMALL, SMALL) and set(mask.unique().tolist()) <= {0.0, 1.0}
    mask2 = sam.mask(img, (8, 8, 40, 40), points=[(20, 20)], labels=[0])
    assert mask2.shape == mask.shape


def test_a_build_without_weights_is_refused_and_not_cached(tmp_path):
    """What a rank != 0 save_pretrained leaves (configs, no weights) never becomes the cache."""
    from e4e_lab.models.tiny import build_once

    def weightless(folder):
        for part in ("unet", "text_encoder"):
            (folder / part).mkdir()
            (folder / part / "config.json").write_text("{}")
        (folder / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"")
        (folder / "E4E_TINY_MODEL.txt").write_text("tiny")

    target = tmp_path / "models" / "tiny-x"
    with pytest.raises(ModelUnavailableError, match="no weights for text_encoder"):
        build_once(target, weightless)
    assert not target.exists() and not [p for p in target.parent.iterdir()
                                        if p.is_dir()]  # no staging folder left either


# ---------------------------------------------------------------------------------
# Issue 15: the model fingerprint (the inversion cache's key) covers the weights of
# every component, not the folder's path; damaged or interrupted tiny builds.


def test_fingerprint_follows_the_weights_not_the_folder(tmp_path):
    import shutil

    first = tmp_path / "first"
    shutil.copytree(tiny_model_path(), first)
    base = load_pipeline(str(first), device="cpu").fingerprint
    moved = tmp_path / "moved"
    first.rename(moved)
    assert load_pipeline(str(moved), device="cpu").fingerprint == base  # moving keeps it
    seen = {base}
    for component, file in (("unet", "diffusion_pytorch_model.safetensors"),
                            ("vae", "diffusion_pytorch_model.safetensors"),
                            ("text_encoder", "model.safetensors")):
        perturb_weights(moved, component, file)
        fingerprint = load_pipeline(str(moved), device="cpu").fingerprint
        assert fingerprint not in seen, component
        seen.add(fingerprint)
    sched = moved / "scheduler" / "scheduler_config.json"
    sched.write_text(sched.read_text().replace('"beta_end": 0.012', '"beta_end": 0.013'))
    assert load_pipeline(str(moved), device="cpu").fingerprint not in seen


def test_weight_files_are_hashed_once_per_folder_while_size_and_mtime_hold(tmp_path):
    """The digest is kept in the cache keyed by each file's size and mtime: proven by
    changing a file's bytes behind the memo's back (same size, mtime restored)."""
    import os

    from e4e_lab.models.fingerprint import files_digest

    (tmp_path / "w.safetensors").write_bytes(b"A" * 100)
    (tmp_path / "config.json").write_text("{}")  # not a weight file
    digest = files_digest(tmp_path)
    st = (tmp_path / "w.safetensors").stat()
    (tmp_path / "w.safetensors").write_bytes(b"B" * 100)
    os.utime(tmp_path / "w.safetensors", ns=(st.st_atime_ns, st.st_mtime_ns))
    assert files_digest(tmp_path) == digest  # memo reused: not re-read
    (tmp_path / "w.safetensors").write_bytes(b"B" * 100)  # a new mtime: recomputed
    assert files_digest(tmp_path) != digest


def test_in_memory_weights_are_digested_from_the_state_dict(models):
    import copy

    from e4e_lab.models.fingerprint import model_fingerprint

    class Pipe:  # the same components, but no folder behind the UNet
        pass

    pipe = Pipe()
    for name in ("vae", "text_encoder", "tokenizer", "scheduler"):
        setattr(pipe, name, getattr(models.pipe, name))
    pipe.unet = copy.deepcopy(models.unet)
    pipe.unet.register_to_config(_name_or_path="")
    base = model_fingerprint(pipe)
    assert base == model_fingerprint(pipe)
    with torch.no_grad():
        next(pipe.unet.parameters()).add_(0.01)
    assert model_fingerprint(pipe) != base


def test_a_cached_tiny_model_with_truncated_weights_is_rebuilt(tmp_path, caplog):
    from e4e_lab.models.tiny import _verify_tiny

    folder = tiny_model_path(tmp_path)
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    size = weights.stat().st_size
    with open(weights, "r+b") as fh:
        fh.truncate(size // 3)
    with caplog.at_level(logging.WARNING, logger="e4e_lab.models.tiny"):
        assert tiny_model_path(tmp_path) == folder
    assert any("damaged" in r.getMessage() and "rebuilding" in r.getMessage()
               for r in caplog.records), caplog.text
    assert weights.stat().st_size == size and _verify_tiny(folder) == []
    m = load_pipeline("tiny", device="cpu", cache_dir=tmp_path)
    assert m.fingerprint == load_pipeline("tiny", device="cpu").fingerprint


def test_staging_folders_of_killed_builds_are_removed(tmp_path):
    import os
    import time

    from e4e_lab.io.cache import temp_name
    from e4e_lab.models.tiny import build_once


    def build(folder):
        (folder / "E4E_TINY_MODEL.txt").write_text("tiny")

    target = tmp_path / "models" / "tiny-x"
    target.parent.mkdir(parents=True)
    dead = target.parent / temp_name(".tiny-x").replace(f"-{os.getpid()}-", f"-{dead_pid()}-")
    old_style = target.parent / ".tiny-x-8cj3k2"  # what tempfile.mkdtemp used to name them
    live = target.parent / temp_name(".tiny-x")
    for folder in (dead, old_style, live):
        folder.mkdir()
        (folder / "unet").mkdir()
    hour_ago = time.time() - 4000
    os.utime(old_style, (hour_ago, hour_ago))
    build_once(target, build)  # builds: under the lock, every leftover is dead
    assert not dead.exists() and not old_style.exists() and not live.exists()
    for folder in (dead, old_style, live):
        folder.mkdir()
    os.utime(old_style, (hour_ago, hour_ago))
    build_once(target, build)  # already built: only the stale ones go
    assert not dead.exists() and not old_style.exists() and live.exists()


def test_a_cache_root_that_is_a_file_builds_the_tiny_model_elsewhere(tmp_path, caplog,
                                                                     monkeypatch):
    root = tmp_path / "cache-file"
    root.write_text("not a folder")
    monkeypatch.setenv("E4E_LAB_CACHE", str(root))
    with caplog.at_level(logging.WARNING):
        m = load_pipeline("tiny", device="cpu")
        again = load_pipeline("tiny", device="cpu")
    assert m.is_tiny and again.fingerprint == m.fingerprint
    assert len([r for r in caplog.records if "cannot be used" in r.getMessage()]) == 1
    assert root.read_text() == "not a folder"
