"""The shipped toy model: its sums, its kind, and every stage on it."""

import pytest
import torch

from e4e_lab.models import BANNERS, load_pipeline
from e4e_lab.models.loading import TOY_WEIGHTS
from e4e_lab.toy.model import verify_manifest


def test_shipped_weights_match_their_manifest():
    assert verify_manifest(TOY_WEIGHTS) == []


@pytest.fixture(scope="module")
def toy(_offline_env):
    return load_pipeline("toy", device="cpu")


def test_toy_model_is_sd15_shaped_and_says_what_it_is(toy):
    assert toy.kind == "toy" and toy.is_toy and not toy.is_tiny
    assert toy.banner == BANNERS["toy"]
    assert toy.default_size == 128  # a factor-4 VAE: latent 32x32
    unet = toy.unet
    assert [type(b).__name__ for b in unet.up_blocks] == ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3
    assert type(toy.scheduler).__name__ == "DDIMScheduler"


def test_a_transfer_on_a_toy_pair_runs_every_stage(toy, tmp_path):
    from pathlib import Path

    from e4e_lab.method.config import TransferConfig
    from e4e_lab.method.masks import load_mask
    from e4e_lab.session import Lab

    ex = Path(__file__).resolve().parents[1] / "example" / "toy"
    lab = Lab(models=toy, cache_dir=tmp_path)
    pair = lab.pair(ex / "fish_appearance.png", ex / "fish_structure.png",
                    appearance_mask=load_mask(ex / "fish_appearance_mask.png"),
                    structure_mask=load_mask(ex / "fish_structure_mask.png"))
    cfg = TransferConfig(domain="fish", num_steps=20, skip_steps=6, feat_range=(2, 14),
                         adain_range=(10, 20), refresh_until=8)
    res = lab.transfer(pair, cfg)
    # the branches follow their inversions: their reconstructions are the VAE's images
    app_inv, _ = lab.invert([pair.appearance, pair.structure], cfg)
    assert torch.allclose(res.latents[1], app_inv.x0, atol=1e-5)
    assert res.model_kind == "toy" and torch.isfinite(res.image).all()
