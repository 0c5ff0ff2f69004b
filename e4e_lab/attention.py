"""Stage 4a-4d: the attention processor that rearranges features before self-attention.

Installed with diffusers' ``set_attn_processor`` on the decoder self-attention layers
of the two finest resolutions only (for SD 1.5 at 512 px: 32x32 and 64x64, three
layers each). Every other layer keeps diffusers' ``AttnProcessor2_0``.

At an active step, a layer sees the normalised hidden states of the whole batch
(see :class:`BatchLayout`). For the injected output row it

- matches output positions to appearance positions (cosine nearest neighbour inside
  the masks, or a precomputed DIFT field resized to this grid), then
- ``feature``: replaces the output's attention input by the matched appearance
  features (Q, K and V all come from the rearranged features);
- ``v``: keeps Q and K, replaces V by the appearance V at the matched positions;
- ``kv``: as ``v`` and K too;
- ``cross-image``: Q from the output, K and V from the appearance branch unmatched,
  with the attention contrast of Cross-Image Attention (arXiv 2311.03335);
- on a structure-refresh step, takes the structure branch's features (or K/V)
  instead of matched appearance ones.

Background positions (outside the target mask) keep their own features. Attention is
computed with SDPA; explicit attention weights are built only for the layers and
steps a :class:`Recorder` asked for. Recording is a hook: the math never depends on it.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Protocol

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import AttnProcessor2_0

from .config import TransferConfig
from .correspondence import CorrespondenceField, nearest_neighbors
from .images import mask_at

_ATTN1 = re.compile(r"^up_blocks\.(\d+)\.attentions\.\d+\.transformer_blocks\.\d+\.attn1\.processor$")
# Queries per chunk when attention weights are built explicitly (bounds memory).
_EXPLICIT_CHUNK = 1024


# ------------------------------------------------------------------ layers --

def decoder_self_attention_layers(unet) -> dict[int, list[str]]:
    """Decoder self-attention processor names grouped by up-block index."""
    groups: dict[int, list[str]] = {}
    for name in unet.attn_processors:
        m = _ATTN1.match(name)
        if m:
            groups.setdefault(int(m.group(1)), []).append(name)
    return groups


def injected_layers(unet, levels: int = 2) -> list[str]:
    """Decoder self-attention layers at the ``levels`` finest resolutions.

    Up-block ``i`` of ``n`` works at 1 / 2**(n - 1 - i) of the latent size, so the
    finest resolutions are the highest up-block indices that contain attention.
    """
    groups = decoder_self_attention_layers(unet)
    chosen = sorted(groups)[-levels:]
    return [name for i in chosen for name in groups[i]]


def layer_level(name: str, unet) -> int:
    """Downsampling factor of a decoder layer's grid relative to the latent."""
    block = int(name.split(".")[1])
    return 2 ** (len(unet.config.block_out_channels) - 1 - block)


# --------------------------------------------------------------- recording --

class Recorder(Protocol):
    """Hooks called by the processor; all optional to implement meaningfully."""

    def wants_attention(self, layer: str, step: int) -> bool: ...

    def on_injection(self, layer: str, step: int, kind: str) -> None: ...

    def on_matches(self, layer: str, step: int, field: CorrespondenceField) -> None: ...

    def on_attention(self, layer: str, step: int, probs: dict[str, torch.Tensor],
                     grid: tuple[int, int]) -> None: ...


@dataclass
class RunRecorder:
    """Keeps what a run was asked to record: calls, matches and attention maps.

    ``calls`` lists every (layer, step, kind) where the processor changed something
    (kind is ``match``, ``refresh`` or ``cross``). ``matches[(layer, step)]`` holds
    correspondence fields (on the CPU) when ``record_matches``; ``attention`` holds
    float16 CPU attention weights per branch for the requested layers and steps.
    """

    record_matches: bool = False
    attention_layers: tuple[str, ...] = ()
    attention_steps: tuple[int, ...] = ()
    calls: list[tuple[str, int, str]] = field(default_factory=list)
    matches: dict[tuple[str, int], CorrespondenceField] = field(default_factory=dict)
    attention: dict[tuple[str, int], dict[str, torch.Tensor]] = field(default_factory=dict)
    grids: dict[str, tuple[int, int]] = field(default_factory=dict)

    @classmethod
    def from_config(cls, config: TransferConfig) -> "RunRecorder":
        return cls(config.record_matches, tuple(config.record_attention_layers),
                   tuple(config.record_attention_steps))

    def wants_attention(self, layer: str, step: int) -> bool:
        return ((layer in self.attention_layers or "*" in self.attention_layers)
                and (not self.attention_steps or step in self.attention_steps))

    def on_injection(self, layer: str, step: int, kind: str) -> None:
        self.calls.append((layer, step, kind))

    def on_matches(self, layer: str, step: int, field: CorrespondenceField) -> None:
        self.grids[layer] = field.target_shape
        if self.record_matches:
            self.matches[(layer, step)] = CorrespondenceField(
                field.index.cpu(), field.score.cpu(), field.target_shape, field.ref_shape)

    def on_attention(self, layer: str, step: int, probs: dict[str, torch.Tensor],
                     grid: tuple[int, int]) -> None:
        self.grids[layer] = grid
        self.attention[(layer, step)] = {k: v.half().cpu() for k, v in probs.items()}


# ------------------------------------------------------------------- state --

@dataclass
class BatchLayout:
    """Rows of the UNet batch: [plain output?, injected output, appearance, structure]."""

    output: int
    appearance: int
    structure: int
    plain: int | None = None

    @classmethod
    def for_guidance(cls, guided: bool) -> "BatchLayout":
        return cls(1, 2, 3, plain=0) if guided else cls(0, 1, 2)

    @property
    def size(self) -> int:
        return 4 if self.plain is not None else 3

    def names(self) -> dict[str, int]:
        rows = {"output": self.output, "appearance": self.appearance, "structure": self.structure}
        if self.plain is not None:
            rows["plain"] = self.plain
        return rows


class InjectionState:
    """What the processors share during one run: config, step, masks, recorder.

    Masks are resized once per grid and kept; nothing here is global.
    """

    def __init__(self, config: TransferConfig, latent_shape: tuple[int, int],
                 target_mask: torch.Tensor, ref_mask: torch.Tensor, device,
                 dift_field: CorrespondenceField | None = None,
                 recorder: Recorder | None = None):
        self.config = config
        self.latent_shape = latent_shape
        self.target_mask, self.ref_mask = target_mask, ref_mask
        self.device = device
        self.dift_field = dift_field
        self.recorder = recorder
        self.step: int = -1
        self.layout = BatchLayout.for_guidance(True)
        self.enabled = True
        self._masks: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}
        self._fields: dict[tuple[int, int], CorrespondenceField] = {}

    def begin_step(self, step: int, layout: BatchLayout) -> None:
        self.step, self.layout = step, layout

    def grid(self, tokens: int) -> tuple[int, int]:
        h, w = self.latent_shape
        f = math.isqrt(h * w // tokens)
        return h // f, w // f

    def masks(self, grid: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        if grid not in self._masks:
            self._masks[grid] = (mask_at(self.target_mask, grid).flatten().to(self.device),
                                 mask_at(self.ref_mask, grid).flatten().to(self.device))
        return self._masks[grid]

    def precompute(self, grids) -> None:
        for g in grids:
            self.masks(g)
            if self.dift_field is not None:
                self.dift(g)

    def dift(self, grid: tuple[int, int]) -> CorrespondenceField:
        if grid not in self._fields:
            f = self.dift_field.resize(grid, grid)
            self._fields[grid] = CorrespondenceField(f.index.to(self.device),
                                                     f.score.to(self.device), grid, grid)
        return self._fields[grid]

    def match(self, layer: str, target: torch.Tensor, ref: torch.Tensor,
              grid: tuple[int, int]) -> CorrespondenceField:
        """Correspondence for this layer and step (computed, or the DIFT field)."""
        if self.config.correspondence == "dift" and self.dift_field is not None:
            fld = self.dift(grid)
        else:
            tm, rm = self.masks(grid)
            index, score = nearest_neighbors(target, ref, tm, rm)
            fld = CorrespondenceField(index, score, grid, grid)
        if self.recorder is not None:
            self.recorder.on_matches(layer, self.step, fld)
        return fld


# --------------------------------------------------------------- processor --

def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    b, n, d = x.shape
    return x.view(b, n, heads, d // heads).transpose(1, 2)


def _gather_rows(own: torch.Tensor, source: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """own[k] <- source[index[k]] where index[k] >= 0 (rows are positions)."""
    picked = source.index_select(0, index.clamp_min(0))
    return torch.where((index >= 0)[:, None], picked, own)


def explicit_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                       contrast: float | None = None, keep_probs: bool = False):
    """softmax(QK^T / sqrt(d)) V for (heads, N, d) inputs, chunked over queries.

    With ``contrast`` the probabilities of each query row are pushed away from their
    mean by that factor and clipped to [0, 1] (Cross-Image Attention's contrast).
    Returns (output, probabilities or None).
    """
    scale = 1.0 / math.sqrt(q.shape[-1])
    outs, probs = [], []
    for start in range(0, q.shape[1], _EXPLICIT_CHUNK):
        p = torch.softmax((q[:, start:start + _EXPLICIT_CHUNK].float() @ k.float().transpose(-1, -2))
                          * scale, dim=-1)
        if contrast is not None:
            mean = p.mean(dim=-1, keepdim=True)
            p = ((p - mean) * contrast + mean).clamp(0.0, 1.0)
        outs.append((p @ v.float()).to(v.dtype))
        if keep_probs:
            probs.append(p)
    return torch.cat(outs, dim=1), (torch.cat(probs, dim=1) if keep_probs else None)


class E4EAttnProcessor:
    """Self-attention with feature / V / KV / cross-image injection for one layer."""

    def __init__(self, name: str, state: InjectionState):
        self.name = name
        self.state = state
        self.plain = AttnProcessor2_0()

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None,
                 temb=None, *args, **kwargs):
        st, cfg = self.state, self.state.config
        step = st.step
        if (not st.enabled or encoder_hidden_states is not None or hidden_states.ndim != 3
                or attn.spatial_norm is not None or attn.group_norm is not None
                or not cfg.injects_at(step)):
            return self.plain(attn, hidden_states, encoder_hidden_states, attention_mask, temb)

        residual = hidden_states
        lay = st.layout
        out, app, struct = lay.output, lay.appearance, lay.structure
        grid = st.grid(hidden_states.shape[1])
        refresh = cfg.refreshes_at(step)
        mode = cfg.injection
        if st.recorder is not None:
            st.recorder.on_injection(self.name, step,
                                     "refresh" if refresh else ("cross" if mode == "cross-image"
                                                                else "match"))
        fld = None
        if not refresh and mode in ("feature", "v", "kv"):
            fld = st.match(self.name, hidden_states[out], hidden_states[app], grid)

        if mode == "feature":
            hidden_states = hidden_states.clone()
            hidden_states[out] = (hidden_states[struct] if refresh else
                                  _gather_rows(hidden_states[out], hidden_states[app], fld.index))

        query = attn.to_q(hidden_states)
        key = attn.to_k(hidden_states)
        value = attn.to_v(hidden_states)
        if mode in ("v", "kv", "cross-image"):
            src = struct if refresh else app
            swap_k = mode in ("kv", "cross-image")
            if refresh or mode == "cross-image":
                value[out] = value[src]
                if swap_k:
                    key[out] = key[src]
            else:
                value[out] = _gather_rows(value[out], value[app], fld.index)
                if swap_k:
                    key[out] = _gather_rows(key[out], key[app], fld.index)

        heads = attn.heads
        q, k, v = _heads(query, heads), _heads(key, heads), _heads(value, heads)
        if attn.norm_q is not None:
            q = attn.norm_q(q)
        if attn.norm_k is not None:
            k = attn.norm_k(k)
        mask = None
        if attention_mask is not None:
            mask = attn.prepare_attention_mask(attention_mask, q.shape[2], q.shape[0])
            mask = mask.view(q.shape[0], heads, -1, mask.shape[-1])
        result = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)

        contrast = cfg.cross_image_contrast if mode == "cross-image" and not refresh else None
        recording = st.recorder is not None and st.recorder.wants_attention(self.name, step)
        if contrast is not None or recording:
            rows = lay.names() if recording else {"output": out}
            probs = {}
            for row_name, r in rows.items():
                c = contrast if r == out else None
                res, p = explicit_attention(q[r], k[r], v[r], c, keep_probs=recording)
                if r == out and contrast is not None:
                    result[r] = res
                if recording:
                    probs[row_name] = p
            if recording:
                st.recorder.on_attention(self.name, step, probs, grid)

        b, _, n, d = result.shape
        hidden = result.transpose(1, 2).reshape(b, n, heads * d).to(query.dtype)
        hidden = attn.to_out[1](attn.to_out[0](hidden))
        if attn.residual_connection:
            hidden = hidden + residual
        return hidden / attn.rescale_output_factor


class injection:
    """Context manager installing :class:`E4EAttnProcessor` on the injected layers.

    The UNet's previous processors are restored on exit, whatever happened inside, so
    a cancelled or failed run leaves the pipeline as it found it.
    """

    def __init__(self, unet, state: InjectionState, layers: list[str] | None = None):
        self.unet, self.state = unet, state
        self.layers = layers if layers is not None else injected_layers(unet)
        self._saved = None

    def __enter__(self) -> list[str]:
        self._saved = dict(self.unet.attn_processors)
        procs = dict(self._saved)
        for name in self.layers:
            procs[name] = E4EAttnProcessor(name, self.state)
        self.unet.set_attn_processor(procs)
        return self.layers

    def __exit__(self, *exc):
        self.unet.set_attn_processor(self._saved)
        return False
