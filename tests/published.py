"""The published Eye-for-an-eye computation, written out plainly for equivalence tests.

This is not the library: it restates, step by step and as directly as possible, what the
published code computes (arXiv 2406.07008; the behaviour described in docs/method.md),
so that tests can run it beside ``e4e_lab`` on the same weights and inversions and
compare every matched position and the final latents. It is deliberately simple and
slow-ish (explicit attention, masks resized at every call) and shares no code with the
library beyond the UNet, the scheduler's alphas and the inversion it is given.

The departures that the project documents are applied here too, each marked
``departure``, so that what remains is the published computation itself:

- the appearance and structure branches follow their stored inversion trajectories
  (published: they are denoised with the generation's guidance and drift);
- the structure refresh is applied to the injected (conditional output) row
  (published: under guidance, to the unconditional output row);
- a target cell whose cosine similarity with every reference object cell is negative
  matches the best object cell (published: the first background cell, whose masked
  feature is a zero vector of similarity 0); :func:`match` reports such cells.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

# batch rows of the published loop: [out, app, struct] unconditional, then conditional
OUT, APP, STRUCT = 3, 4, 5


# ------------------------------------------------------------------- FreeU --

def freeu_step(h: torch.Tensor, b: float, s: float) -> torch.Tensor:
    """Scale the first half of the channels by ``b``, then the centred 2x2 lowest
    frequencies of the 2-D spectrum by ``s`` (real part of the inverse)."""
    h = h.clone().float()
    h[:, : h.shape[1] // 2] *= b
    spec = torch.fft.fftshift(torch.fft.fftn(h, dim=(-2, -1)), dim=(-2, -1))
    _, _, rows, cols = spec.shape
    gain = torch.ones(spec.shape)
    gain[..., rows // 2 - 1:rows // 2 + 1, cols // 2 - 1:cols // 2 + 1] = s
    spec = torch.fft.ifftshift(spec * gain, dim=(-2, -1))
    return torch.fft.ifftn(spec, dim=(-2, -1)).real


def add_freeu_hooks(unet) -> list:
    """The published FreeU at the decoder-block inputs: 1280-channel inputs (SD 1.5's
    up-blocks 0-2) get (1.2, 0.9), the 640-channel one (the last) gets (1.4, 0.2)."""
    n = len(unet.up_blocks)

    def hook_for(b, s):
        def hook(_module, args, kwargs):
            kwargs = dict(kwargs)
            kwargs["hidden_states"] = freeu_step(kwargs["hidden_states"], b, s)
            return args, kwargs
        return hook

    return [blk.register_forward_pre_hook(hook_for(*((1.4, 0.2) if i == n - 1 else (1.2, 0.9))),
                                          with_kwargs=True)
            for i, blk in enumerate(unet.up_blocks)]


# ------------------------------------------------------------------- masks --

def resize_mask(mask: torch.Tensor, side: int) -> torch.Tensor:
    """(H, W) 0/1 mask to (side, side) as the published code does (bilinear, defaults)."""
    return F.interpolate(mask.float().view(1, 1, *mask.shape), size=(side, side),
                         mode="bilinear").view(side, side)


def adain(content: torch.Tensor, style: torch.Tensor, content_mask: torch.Tensor,
          style_mask: torch.Tensor) -> torch.Tensor:
    """Masked AdaIN of (C, h, w) latents: statistics on cells equal to 1, soft blending."""
    c = content.shape[0]

    def stats(x, m):
        cells = x.reshape(c, -1)[:, m.reshape(-1) == 1]
        return cells.mean(1).view(c, 1, 1), (cells.var(1) + 1e-5).sqrt().view(c, 1, 1)

    s_mean, s_std = stats(style, style_mask)
    c_mean, c_std = stats(content, content_mask)
    styled = (content - c_mean) / c_std * s_std + s_mean
    return content * (1 - content_mask) + styled * content_mask


# ---------------------------------------------------------------- matching --

def match(out_feats: torch.Tensor, app_feats: torch.Tensor, out_mask: torch.Tensor,
          app_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(best appearance position per output position or -1, count of cells where the
    published rule would have picked a background cell). Features are (N, C)."""
    q = out_feats * out_mask.reshape(-1, 1)
    r = app_feats * app_mask.reshape(-1, 1)
    cos = F.normalize(q, dim=1) @ F.normalize(r, dim=1).T
    published = cos.argmax(dim=1)
    inside = (app_mask.reshape(-1) > 0)
    ours = cos.masked_fill(~inside[None, :], float("-inf")).argmax(dim=1)  # departure
    active = (q != 0).any(dim=1)
    differs = int((active & (published != ours)).sum())
    return torch.where(active, ours, torch.full_like(ours, -1)), differs


# --------------------------------------------------------------- attention --

@dataclass
class Context:
    """What the published processors read: the step counter, masks, and what they saw."""

    out_mask: torch.Tensor
    app_mask: torch.Tensor
    feat_range: tuple[int, int] = (10, 70)
    counter: int = 0
    step: int = 0
    active: bool = False
    matches: dict = field(default_factory=dict)
    background_picks: int = 0


class FeatureInjection:
    """Decoder self-attention with the published feature injection (6-row batch)."""

    def __init__(self, name: str, ctx: Context):
        self.name, self.ctx = name, ctx

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None,
                 temb=None, **kwargs):
        ctx = self.ctx
        side = int(math.isqrt(hidden_states.shape[1]))
        if ctx.active and ctx.feat_range[0] <= ctx.counter < ctx.feat_range[1]:
            hidden_states = hidden_states.clone()
            if ctx.counter % 5 == 0 and ctx.counter < 40:
                hidden_states[OUT] = hidden_states[STRUCT]  # departure: the injected row
            else:
                index, differs = match(hidden_states[OUT], hidden_states[APP],
                                       resize_mask(ctx.out_mask, side),
                                       resize_mask(ctx.app_mask, side))
                ctx.background_picks += differs
                ctx.matches[(self.name, ctx.step)] = index
                moved = index >= 0
                hidden_states[OUT][moved] = hidden_states[APP][index[moved]]
        return explicit_attention(attn, hidden_states)


def explicit_attention(attn, hidden_states):
    """softmax(Q K^T / sqrt(d)) V with materialised weights, then the output projection."""
    b, n, _ = hidden_states.shape
    q, k, v = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
    d = q.shape[-1] // attn.heads
    split = lambda x: x.view(b, n, attn.heads, d).transpose(1, 2)  # noqa: E731
    q, k, v = split(q), split(k), split(v)
    weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d), dim=-1)
    out = (weights @ v).transpose(1, 2).reshape(b, n, attn.heads * d)
    return attn.to_out[1](attn.to_out[0](out)) / attn.rescale_output_factor


def injected_layer_names(unet) -> list[str]:
    """Self-attention layers of the two finest decoder blocks (SD 1.5: 32x32 and 64x64)."""
    last = len(unet.up_blocks) - 1
    return [name for name in unet.attn_processors
            if name.startswith((f"up_blocks.{last - 1}.", f"up_blocks.{last}."))
            and ".attn1." in name]


# -------------------------------------------------------------------- loop --

def ddpm_step(scheduler, eps, x, z, t, num_steps):
    """One eta = 1 DDPM step with a given noise map (the published formula)."""
    prev = t - scheduler.config.num_train_timesteps // num_steps
    a_t = scheduler.alphas_cumprod[t]
    a_p = scheduler.alphas_cumprod[prev] if prev >= 0 else scheduler.final_alpha_cumprod
    var = (1 - a_p) / (1 - a_t) * (1 - a_t / a_p)
    x0 = (x - (1 - a_t) ** 0.5 * eps) / a_t ** 0.5
    return a_p ** 0.5 * x0 + (1 - a_p - var) ** 0.5 * eps + var ** 0.5 * z


@torch.no_grad()
def denoise(models, app_inv, struct_inv, app_mask: torch.Tensor, struct_mask: torch.Tensor,
            prompt: str, guidance: float = 2.5, skip: int = 32,
            adain_range: tuple[int, int] = (50, 100)) -> tuple[torch.Tensor, Context]:
    """The published denoising with feature injection; returns (final output latent, ctx)."""
    unet, sch = models.unet, models.scheduler
    tok = models.pipe.tokenizer
    enc = models.pipe.text_encoder

    def embed(text):
        ids = tok(text, padding="max_length", max_length=tok.model_max_length,
                  truncation=True, return_tensors="pt").input_ids
        return enc(ids)[0]

    emb = torch.cat([embed("")] * 3 + [embed(prompt)] * 3)
    ctx = Context(struct_mask, app_mask)
    saved = dict(unet.attn_processors)
    procs = dict(saved)
    for name in injected_layer_names(unet):
        procs[name] = FeatureInjection(name, ctx)
    unet.set_attn_processor(procs)
    hooks = add_freeu_hooks(unet)
    num_steps = len(struct_inv.timesteps)
    lat_side = struct_inv.xts.shape[-1]
    out_m, app_m = resize_mask(struct_mask, lat_side), resize_mask(app_mask, lat_side)
    ax, sx, sz = app_inv.xts, struct_inv.xts, struct_inv.zs
    x = torch.stack([sx[skip], ax[skip], sx[skip]])
    try:
        ctx.active = True
        for i in range(num_steps - skip):
            k, ctx.step = skip + i, i
            t = int(struct_inv.timesteps[k])
            pred = unet(torch.cat([x, x]), t, encoder_hidden_states=emb).sample
            eps = pred[:3] + guidance * (pred[3:] - pred[:3])
            out = ddpm_step(sch, eps[0], x[0], sz[k], t, num_steps)
            x = torch.stack([out, ax[k + 1], sx[k + 1]])  # departure: stored trajectories
            ctx.counter = i  # the callback sets it after the step
            if adain_range[0] - 1 <= i < adain_range[1] + 1:
                x[0] = adain(x[0], x[1], out_m, app_m)
    finally:
        ctx.active = False
        for h in hooks:
            h.remove()
        unet.set_attn_processor(saved)
    return x[0], ctx
