"""Model loading: the tiny model, the 'auto' fallback, DIFT and SAM-HQ."""

import logging
import time

import pytest
import torch

from e4e_lab.errors import ModelUnavailableError
from e4e_lab.method.images import load_image
from e4e_lab.models import TINY_WARNING, load_pipeline, tiny_model_path
from e4e_lab.models.dift import dift_features

from conftest import SMALL


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


def test_auto_falls_back_to_tiny_fast_when_offline(caplog, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t = time.perf_counter()
    with caplog.at_level(logging.WARNING):
        m = load_pipeline("auto", device="cpu")
    assert m.is_tiny and time.perf_counter() - t < 60
    assert any(TINY_WARNING in r.getMessage() for r in caplog.records)


def test_unavailable_models_raise_typed_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelUnavailableError, match="does not exist"):
        load_pipeline(str(tmp_path / "nowhere"), device="cpu")
    with pytest.raises(ModelUnavailableError, match="model_index.json"):
        load_pipeline(str(tmp_path), device="cpu")
    with pytest.raises(ModelUnavailableError, match="--model tiny"):
        load_pipeline("someone/not-a-cached-model", device="cpu")


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


def test_sam_hq_random_box_to_mask(images):
    pytest.importorskip("segment_anything_hq")
    from e4e_lab.models.sam import SamMasker

    sam = SamMasker.random("vit_tiny")
    img = load_image(images[0], SMALL)
    mask = sam.mask(img, (8, 8, 40, 40))
    assert mask.shape == (SMALL, SMALL) and set(mask.unique().tolist()) <= {0.0, 1.0}
    mask2 = sam.mask(img, (8, 8, 40, 40), points=[(20, 20)], labels=[0])
    assert mask2.shape == mask.shape


def test_missing_sam_checkpoint(tmp_path):
    from e4e_lab.models.sam import SamMasker

    with pytest.raises(ModelUnavailableError, match="sam_hq_vit_l.pth"):
        SamMasker.load(tmp_path / "sam_hq_vit_l.pth")


def test_a_build_without_weights_is_refused_and_not_cached(tmp_path):
    """What a rank != 0 save_pretrained leaves (configs, no weights) never becomes the cache."""
    from e4e_lab.errors import ModelUnavailableError
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
