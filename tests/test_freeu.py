"""FreeU as published (forward pre-hooks on the up-blocks) and diffusers' variant."""

import pytest
import torch

from e4e_lab.errors import ConfigError
from e4e_lab.method.config import FreeUConfig, InversionConfig, TransferConfig
from e4e_lab.models.freeu import freeu, reference_factors

from published import freeu_step


def _unet_inputs(models, size=8):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, size, size, generator=g)
    emb = torch.randn(2, 77, models.unet.config.cross_attention_dim, generator=g)
    return x, torch.tensor(500), emb


def _record_block_inputs(unet, store, key):
    def make(i):
        def hook(_module, args, kwargs):
            store.setdefault(key, {})[i] = kwargs.get("hidden_states", args[0] if args else None)
        return hook
    return [b.register_forward_pre_hook(make(i), with_kwargs=True)
            for i, b in enumerate(unet.up_blocks)]


@torch.no_grad()
def test_hook_applies_the_published_formula_at_every_up_block(models):
    unet, cfg = models.unet, FreeUConfig()
    x, t, emb = _unet_inputs(models)
    seen: dict = {}
    before = _record_block_inputs(unet, seen, "pre")  # runs before the FreeU hooks
    try:
        with freeu(unet, "reference"):
            after = _record_block_inputs(unet, seen, "post")  # runs after them
            try:
                unet(x, t, encoder_hidden_states=emb)
            finally:
                for handle in after:
                    handle.remove()
    finally:
        for handle in before:
            handle.remove()
    n = len(unet.up_blocks)
    assert n == 4
    for i in range(n):
        b, s = (cfg.b2, cfg.s2) if i == n - 1 else (cfg.b1, cfg.s1)
        expected = freeu_step(seen["pre"][i], b, s)  # the published code's step
        assert torch.allclose(seen["post"][i], expected, atol=1e-5), i


@torch.no_grad()
def test_published_rule_by_channel_count_on_sd15():
    """The published code scales 1280-channel decoder inputs with (b1, s1) and the
    640-channel one with (b2, s2); our rule by position gives the same on SD 1.5."""
    from diffusers import UNet2DConditionModel

    from e4e_lab.models.random_sd import SD15_UNET

    with torch.device("meta"):
        unet = UNet2DConditionModel(**SD15_UNET)
        channels: dict = {}
        hooks = _record_block_inputs(unet, channels, "in")
        unet(torch.zeros(1, 4, 64, 64), torch.tensor(1), encoder_hidden_states=torch.zeros(1, 77, 768))
    for h in hooks:
        h.remove()
    cfg = FreeUConfig()
    by_channels = [{1280: (cfg.b1, cfg.s1), 640: (cfg.b2, cfg.s2)}[channels["in"][i].shape[1]]
                   for i in range(4)]
    assert by_channels == reference_factors(unet, cfg)
    assert [channels["in"][i].shape[1] for i in range(4)] == [1280, 1280, 1280, 640]


@torch.no_grad()
def test_modes_change_the_output_and_the_unet_is_restored_exactly(models):
    unet = models.unet
    x, t, emb = _unet_inputs(models)
    plain = unet(x, t, encoder_hidden_states=emb).sample
    outputs = {}
    for mode in ("reference", "diffusers", "off"):
        with freeu(unet, mode):
            outputs[mode] = unet(x, t, encoder_hidden_states=emb).sample
            if mode == "diffusers":
                assert unet.up_blocks[0].b1 == FreeUConfig().b1
        assert all(not b._forward_pre_hooks for b in unet.up_blocks), mode
        assert all(getattr(b, "b1", None) is None for b in unet.up_blocks), mode
        assert torch.equal(unet(x, t, encoder_hidden_states=emb).sample, plain), mode
    assert torch.equal(outputs["off"], plain)
    assert not torch.allclose(outputs["reference"], plain, atol=1e-4)
    assert not torch.allclose(outputs["reference"], outputs["diffusers"], atol=1e-4)


def test_hooks_are_removed_when_the_block_fails(models):
    with pytest.raises(RuntimeError, match="boom"):
        with freeu(models.unet, "reference"):
            raise RuntimeError("boom")
    assert all(not b._forward_pre_hooks for b in models.unet.up_blocks)


def test_config_modes():
    assert TransferConfig().freeu == "reference" == InversionConfig().freeu
    assert TransferConfig(freeu=False).freeu == "off"  # older config files said true/false
    assert TransferConfig(freeu=True).freeu == "reference"
    assert TransferConfig(freeu="diffusers").inversion.freeu == "diffusers"
    with pytest.raises(ConfigError, match="reference, diffusers, off"):
        TransferConfig(freeu="yes")
    with pytest.raises(ValueError, match="unknown"):
        with freeu(None, "sometimes"):
            pass
