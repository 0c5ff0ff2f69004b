"""The attention processor on a bare diffusers Attention layer: each mode's arithmetic."""

import pytest
import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from e4e_lab.method import attention as att
from e4e_lab.method.attention import make_processor
from e4e_lab.method.config import TransferConfig
from e4e_lab.method.correspondence import nearest_neighbors
from e4e_lab.method.layers import BatchLayout
from e4e_lab.method.recording import RunRecorder
from e4e_lab.method.regions import InjectionState, RegionPair

H = W = 4
C = 8


@pytest.fixture()
def layer():
    torch.manual_seed(0)
    return Attention(query_dim=C, heads=2, dim_head=C // 2).eval()


def run(layer, mode, step, guided=True, recorder=None, refresh_until=40):
    # the processor's arithmetic at step ``step`` itself (the schedule is tested elsewhere)
    cfg = TransferConfig(injection=mode, feat_range=(0, 100), refresh_until=refresh_until,
                         schedule="exact")
    state = InjectionState(cfg, (H, W), [RegionPair(torch.ones(H, W), torch.ones(H, W))], "cpu",
                           recorder=recorder)
    layout = BatchLayout.for_guidance(guided)
    name = "up_blocks.3.attentions.0.transformer_blocks.0.attn1.processor"
    state.layers = [name]  # what the `injection` manager sets
    state.begin_step(step, layout)
    g = torch.Generator().manual_seed(step)
    hs = torch.randn(layout.size, H * W, C, generator=g)
    with torch.no_grad():
        out = make_processor(name, state)(layer, hs)
        plain = AttnProcessor2_0()(layer, hs)
    state.end_step()  # the recorder gets the step's notes after the UNet call
    return hs, out, plain, layout


def sdpa(layer, q_in, kv_in=None, v_override=None, k_override=None):
    kv_in = q_in if kv_in is None else kv_in
    q, k, v = layer.to_q(q_in), layer.to_k(kv_in), layer.to_v(kv_in)
    k = k if k_override is None else k_override
    v = v if v_override is None else v_override
    split = lambda x: x.view(1, -1, 2, C // 2).transpose(1, 2)  # noqa: E731
    o = F.scaled_dot_product_attention(split(q), split(k), split(v))
    return layer.to_out[0](o.transpose(1, 2).reshape(1, -1, C))[0]


def matched(hs, lay):
    idx, _ = nearest_neighbors(hs[lay.output], hs[lay.appearance])
    return idx


@torch.no_grad()
def test_feature_mode_rearranges_the_output_row_only(layer):
    hs, out, plain, lay = run(layer, "feature", step=1)
    idx = matched(hs, lay)
    expected = sdpa(layer, hs[lay.appearance][idx][None])
    assert torch.allclose(out[lay.output], expected, atol=1e-5)
    for r in (lay.plain, lay.appearance, lay.structure):
        assert torch.allclose(out[r], plain[r], atol=1e-6)


@torch.no_grad()
@pytest.mark.parametrize("guided", [True, False])
def test_v_and_kv_modes(layer, guided):
    for mode in ("v", "kv"):
        hs, out, plain, lay = run(layer, mode, step=1, guided=guided)
        idx = matched(hs, lay)
        v_app = layer.to_v(hs[lay.appearance])[idx][None]
        k_app = layer.to_k(hs[lay.appearance])[idx][None] if mode == "kv" else None
        expected = sdpa(layer, hs[lay.output][None], v_override=v_app, k_override=k_app)
        assert torch.allclose(out[lay.output], expected, atol=1e-5), mode
        assert torch.allclose(out[lay.structure], plain[lay.structure], atol=1e-6)


@torch.no_grad()
@pytest.mark.parametrize("guided", [True, False])
def test_structure_refresh_hits_the_injected_row(layer, guided):
    """Reference defect 4: the refresh went to the wrong half under guidance."""
    hs, out, plain, lay = run(layer, "feature", step=5, guided=guided)
    expected = sdpa(layer, hs[lay.structure][None])
    assert torch.allclose(out[lay.output], expected, atol=1e-5)
    if guided:
        assert torch.allclose(out[lay.plain], plain[lay.plain], atol=1e-6)
    # past refresh_until the same step index matches appearance features instead
    hs, out, _, lay = run(layer, "feature", step=5, guided=guided, refresh_until=5)
    assert torch.allclose(out[lay.output], sdpa(layer, hs[lay.appearance][matched(hs, lay)][None]),
                          atol=1e-5)


@torch.no_grad()
def test_cross_image_mode_uses_appearance_kv_with_contrast(layer):
    hs, out, plain, lay = run(layer, "cross-image", step=1)
    q = layer.to_q(hs[lay.output]).view(-1, 2, C // 2).transpose(0, 1)
    k = layer.to_k(hs[lay.appearance]).view(-1, 2, C // 2).transpose(0, 1)
    v = layer.to_v(hs[lay.appearance]).view(-1, 2, C // 2).transpose(0, 1)
    p = torch.softmax(q @ k.transpose(-1, -2) / (C // 2) ** 0.5, dim=-1)
    mean = p.mean(-1, keepdim=True)
    p = ((p - mean) * 1.67 + mean).clamp(0, 1)
    expected = layer.to_out[0]((p @ v).transpose(0, 1).reshape(-1, C))
    assert torch.allclose(out[lay.output], expected, atol=1e-5)


@torch.no_grad()
def test_explicit_attention_only_when_recording(layer, monkeypatch):
    """Reference defect 8: full attention matrices only for layers being recorded."""
    calls = []
    real = att.explicit_attention
    monkeypatch.setattr(att, "explicit_attention", lambda *a, **k: calls.append(1) or real(*a, **k))
    for mode in ("feature", "v", "kv"):
        run(layer, mode, step=1)
    assert not calls
    rec = RunRecorder(attention_layers=("*",))
    run(layer, "v", step=1, recorder=rec)
    assert calls and len(rec.attention) == 1
    (probs,) = rec.attention.values()
    assert set(probs) == {"plain", "output", "appearance", "structure"}
    assert probs["output"].shape == (2, H * W, H * W)
    assert torch.allclose(probs["output"].float().sum(-1), torch.ones(2, H * W), atol=1e-2)
    # what the viewers state as the recording's memory: 4 branches of float16 maps
    assert rec.nbytes == 4 * 2 * (H * W) ** 2 * 2


@torch.no_grad()
def test_inactive_step_is_plain_attention(layer):
    cfg = TransferConfig(injection="feature", feat_range=(10, 20))
    state = InjectionState(cfg, (H, W), [RegionPair(torch.ones(H, W), torch.ones(H, W))], "cpu")
    state.begin_step(3, BatchLayout.for_guidance(True))
    hs = torch.randn(4, H * W, C)
    out = make_processor("x", state)(layer, hs)
    assert torch.equal(out, AttnProcessor2_0()(layer, hs))


@torch.no_grad()
def test_multi_object_pairs_take_features_only_from_their_partner(layer):
    """Two target halves, two reference images: each half matches only its partner region."""
    cfg = TransferConfig(injection="feature", feat_range=(0, 100), refresh_until=0)
    top, bottom = torch.zeros(H, W), torch.zeros(H, W)
    top[: H // 2], bottom[H // 2:] = 1, 1
    left = torch.zeros(H, W)
    left[:, : W // 2] = 1
    pairs = [RegionPair(top, left, reference=0), RegionPair(bottom, torch.ones(H, W), reference=1)]
    state = InjectionState(cfg, (H, W), pairs, "cpu", recorder=RunRecorder(record_matches=True))
    layout = BatchLayout.for_guidance(False, references=2)
    assert layout.appearances == (1, 2) and layout.structure == 3
    state.begin_step(1, layout)
    hs = torch.randn(layout.size, H * W, C, generator=torch.Generator().manual_seed(3))
    out = make_processor("L", state)(layer, hs)
    state.end_step()
    (fld,) = state.recorder.matches.values()
    n = H * W
    idx = fld.index.reshape(H, W)
    top_idx, bottom_idx = idx[: H // 2].flatten(), idx[H // 2:].flatten()
    assert (top_idx < n).all() and ((top_idx % W) < W // 2).all()  # image 0, left half only
    assert (bottom_idx >= n).all()  # image 1
    i0, _ = nearest_neighbors(hs[0], hs[1], top.flatten(), left.flatten())
    assert torch.equal(fld.index[top.flatten() == 1], i0[top.flatten() == 1])
    refs = hs[[1, 2]].reshape(-1, C)
    assert torch.allclose(out[0], sdpa(layer, refs[fld.index][None]), atol=1e-5)
