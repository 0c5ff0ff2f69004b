"""The published Eye-for-an-eye code's way of doing things, re-implemented for benchmarks.

Nothing here is used by the library. These functions reproduce the *costs* of the
reference implementation (as described in ``docs/method.md``) so that the benchmarks
can print "ours / reference" ratios measured in one run, on one machine:

- :func:`loop_match`: matching by a Python loop over every output position (one host
  sync per position, the whole reference map normalised again for each one);
- :class:`ReferenceStyleProcessor`: explicit attention weights for every layer
  (diffusers' classic ``AttnProcessor`` path: ``baddbmm`` + ``softmax``), with the
  injection done through :func:`loop_match` and masks resized at every layer call;
- :func:`reference_inversion`: inversion one image at a time, one UNet call per
  timestep (uncond + cond), no cache;
- :func:`reference_denoise`: a 6-latent batch per step (output / appearance /
  structure x uncond / cond) where all three branches take their guided noise
  prediction (so appearance and structure drift, as in the reference).

Everything is written from the description of the method, in our own words; the
schedule, the DDPM step, the text embeddings, AdaIN and FreeU come from ``e4e_lab``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import AttnProcessor

from e4e_lab.method import schedule
from e4e_lab.method.adain import masked_adain
from e4e_lab.method.config import TransferConfig
from e4e_lab.method.inversion import InversionResult, invert_uncached, text_embeddings
from e4e_lab.method.latents import decode
from e4e_lab.method.layers import injected_layers
from e4e_lab.method.masks import mask_at
from e4e_lab.models.freeu import freeu
from e4e_lab.models.loading import Models


# ---------------------------------------------------------------- matching --

def loop_match(target: torch.Tensor, ref: torch.Tensor, target_mask: torch.Tensor | None = None,
               ref_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pixel matching as the published code does it (deliberately slow).

    ``target`` and ``ref`` are (C, h, w) feature maps, masks (h, w) 0/1 maps. Both maps
    are multiplied by their masks; then for every output position whose masked vector
    is non-zero (a host sync per position), that vector and the *whole* masked
    reference map are normalised, the cosine similarities computed, the best reference
    position taken by ``argmax`` and its feature copied into the output. Reference
    positions outside the mask are zero vectors (cosine 0), not excluded.

    Returns ``(rearranged, index)``: the (C, h, w) output (unmatched positions keep
    their own features) and the (h*w,) matched reference position, -1 where unmatched.
    """
    c, h, w = target.shape
    query = target if target_mask is None else target * target_mask.to(target)
    cand = ref if ref_mask is None else ref * ref_mask.to(ref)
    cand_flat = cand.reshape(c, -1)
    out = target.clone()
    index = torch.full((h * w,), -1, dtype=torch.long, device=target.device)
    for y in range(h):
        for x in range(w):
            vec = query[:, y, x]
            if not bool(vec.abs().sum() > 0):  # host sync, as in the reference
                continue
            q = F.normalize(vec, dim=0)
            r = F.normalize(cand_flat, dim=0)
            best = torch.argmax(q @ r)
            out[:, y, x] = cand_flat[:, best]
            index[y * w + x] = best
    return out, index


# --------------------------------------------------------------- attention --

@dataclass
class ReferenceState:
    """What the reference-style processors share: config, masks, current step.

    Batch layout of a step: ``[output, appearance, structure]`` unconditional, then the
    same three conditional; the conditional output row is the injected one.
    """

    config: TransferConfig
    latent_hw: tuple[int, int]
    target_mask: torch.Tensor  # (H, W) 0/1 at image resolution
    ref_mask: torch.Tensor
    step: int = -1
    active: bool = False  # False during inversion: plain (explicit) attention only
    output_row: int = 3
    appearance_row: int = 4
    structure_row: int = 5

    def grid(self, tokens: int) -> tuple[int, int]:
        h, w = self.latent_hw
        f = round((h * w / tokens) ** 0.5)
        return h // f, w // f


def _explicit_attention(attn, query, key, value, residual):
    """Attention through materialised weights (diffusers' classic ``AttnProcessor`` math)."""
    q, k, v = (attn.head_to_batch_dim(x) for x in (query, key, value))
    probs = attn.get_attention_scores(q, k, None)  # (batch * heads, N, N), materialised
    hidden = attn.batch_to_head_dim(torch.bmm(probs, v))
    hidden = attn.to_out[1](attn.to_out[0](hidden))
    if attn.residual_connection:
        hidden = hidden + residual
    return hidden / attn.rescale_output_factor


class ReferenceInjectProcessor:
    """Decoder self-attention with the reference's injection: per-pixel loop matching,
    masks resized at every call, explicit attention weights."""

    def __init__(self, name: str, state: ReferenceState):
        self.name, self.state = name, state
        self.plain = AttnProcessor()

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None,
                 temb=None, *args, **kwargs):
        st, cfg = self.state, self.state.config
        if (not st.active or encoder_hidden_states is not None or hidden_states.ndim != 3
                or not cfg.injects_at(st.step)):
            return self.plain(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        residual = hidden_states
        out, app, struct = st.output_row, st.appearance_row, st.structure_row
        refresh = cfg.refreshes_at(st.step)
        mode = cfg.injection.mode
        index = None
        if not refresh:
            h, w = st.grid(hidden_states.shape[1])
            c = hidden_states.shape[2]
            tm = mask_at(st.target_mask, (h, w)).to(hidden_states)  # resized at every call
            rm = mask_at(st.ref_mask, (h, w)).to(hidden_states)
            as_map = lambda rows: rows.T.reshape(c, h, w)  # noqa: E731
            rearranged, index = loop_match(as_map(hidden_states[out]), as_map(hidden_states[app]),
                                           tm, rm)
        if mode == "feature":
            hidden_states = hidden_states.clone()
            hidden_states[out] = (hidden_states[struct] if refresh
                                  else rearranged.reshape(hidden_states.shape[2], -1).T)
        query, key, value = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        if mode in ("v", "kv"):
            targets = (value, key) if mode == "kv" else (value,)
            for proj in targets:
                if refresh:
                    proj[out] = proj[struct]
                else:
                    picked = proj[app].index_select(0, index.clamp_min(0))
                    proj[out] = torch.where((index >= 0)[:, None], picked, proj[out])
        return _explicit_attention(attn, query, key, value, residual)


class reference_attention:
    """Install explicit-attention processors on every UNet layer (the injected decoder
    self-attention layers get :class:`ReferenceInjectProcessor`); restore on exit."""

    def __init__(self, unet, state: ReferenceState):
        self.unet, self.state = unet, state
        self._saved = None

    def __enter__(self):
        self._saved = dict(self.unet.attn_processors)
        inject = set(injected_layers(self.unet))
        self.unet.set_attn_processor({
            name: ReferenceInjectProcessor(name, self.state) if name in inject else AttnProcessor()
            for name in self._saved})
        return self

    def __exit__(self, *exc):
        self.unet.set_attn_processor(self._saved)
        return False


# ----------------------------------------------------------------- stages --

def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reference_inversion(models: Models, images, config) -> list[InversionResult]:
    """Invert images one at a time, one UNet call (uncond + cond) per timestep, no cache."""
    results = []
    for im in images:
        (xts, zs, ts), = invert_uncached(models, [im], config, batch_size=2)
        results.append(InversionResult(im.name, xts, zs, ts, config, key="reference-style"))
    return results


@torch.no_grad()
def reference_denoise(models: Models, appearance: InversionResult, structure: InversionResult,
                      state: ReferenceState) -> torch.Tensor:
    """The reference's denoising loop; returns the final (3, 4, h, w) latents.

    Each step runs the UNet on 6 latents ``[out, app, struct] x [uncond, cond]``; every
    branch takes ``eps_u + g (eps_c - eps_u)`` and its DDPM step with its own noise
    maps (the output uses the structure's); masked AdaIN pulls the output towards the
    (drifting) appearance branch.
    """
    cfg, device, unet = state.config, models.device, models.unet
    timesteps = structure.timesteps
    coef = schedule.coefficients(models.scheduler, timesteps, device=device)
    pred_type = models.scheduler.config.prediction_type
    cond, uncond = text_embeddings(models, cfg.inversion.prompt)
    emb = torch.cat([uncond] * 3 + [cond] * 3)
    k0 = cfg.skip_steps
    app_x, struct_x = appearance.xts.to(device), structure.xts.to(device)
    zs = torch.stack([structure.zs, appearance.zs, structure.zs], dim=1).to(device)
    x = torch.stack([struct_x[k0], app_x[k0], struct_x[k0]])
    lat_t = mask_at(state.target_mask, state.latent_hw).to(device)
    lat_a = mask_at(state.ref_mask, state.latent_hw).to(device)
    state.active = True
    try:
        with freeu(unet, cfg.freeu):
            for i in range(cfg.denoising_steps):
                k, state.step = k0 + i, i
                pred = unet(torch.cat([x, x]).to(models.dtype), timesteps[k].to(device),
                            encoder_hidden_states=emb).sample.float()
                e_u, e_c = pred.chunk(2)
                eps = e_u + cfg.guidance_at(i) * (e_c - e_u)
                x = schedule.ddpm_step(eps, x, zs[k], coef[k], pred_type)
                if cfg.adain_at(i):
                    x[0] = masked_adain(x[0], x[1], lat_t, lat_a)
    finally:
        state.active = False
    return x


def reference_transfer(models: Models, appearance, structure, appearance_mask: torch.Tensor,
                       structure_mask: torch.Tensor, config: TransferConfig) -> dict[str, float]:
    """Inversion + denoising + decoding the reference's way; returns seconds per stage.

    ``appearance`` / ``structure`` are :class:`e4e_lab.method.images.LoadedImage`. Keys:
    ``inversion_s``, ``denoise_s``, ``ms_per_step``, ``decode_s``, ``transfer_s``.
    """
    if config.injection.mode == "cross-image":
        raise ValueError("the reference code has no cross-image mode: pick feature, v, kv or none")
    device = models.device
    latent_hw = tuple(s // models.vae_scale_factor for s in structure.pixels.shape[-2:])
    state = ReferenceState(config, latent_hw, structure_mask.float(), appearance_mask.float())
    timings: dict[str, float] = {}
    with reference_attention(models.unet, state):
        _sync(device)
        t0 = time.perf_counter()
        app_inv, struct_inv = reference_inversion(models, [appearance, structure], config.inversion)
        _sync(device)
        t1 = time.perf_counter()
        finals = reference_denoise(models, app_inv, struct_inv, state)
        _sync(device)
        t2 = time.perf_counter()
    decode(models, finals).cpu()
    t3 = time.perf_counter()
    timings.update(inversion_s=t1 - t0, denoise_s=t2 - t1, decode_s=t3 - t2, transfer_s=t3 - t0,
                   ms_per_step=1000 * (t2 - t1) / max(config.denoising_steps, 1))
    return timings
