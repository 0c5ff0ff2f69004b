"""Stage 4a-4d: the attention processors that rearrange features before self-attention.

Installed with diffusers' ``set_attn_processor`` on the decoder self-attention layers
of the two finest resolutions only (:mod:`e4e_lab.method.layers`; for SD 1.5 at 512 px:
32x32 and 64x64, three layers each). Every other layer keeps diffusers'
``AttnProcessor2_0``.

At an active step, a layer sees the normalised hidden states of the whole batch
(:class:`~e4e_lab.method.layers.BatchLayout`). For the injected output row it

- matches output positions to appearance positions (cosine nearest neighbour inside
  the masks, or a precomputed DIFT field resized to this grid:
  :class:`~e4e_lab.method.regions.InjectionState`), then
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
steps a :class:`~e4e_lab.method.recording.Recorder` asked for, and in ``cross-image``
mode for the output row at every injected step that is not a refresh (its contrast acts
on the weights: SDPA's result for that row is computed, then replaced). Recording is a
hook: the math never depends on it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import AttnProcessor2_0

from .correspondence import CorrespondenceField
from .layers import BatchLayout, injected_layers
from .regions import InjectionState

# Queries per chunk when attention weights are built explicitly (bounds memory).
_EXPLICIT_CHUNK = 1024


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    b, n, d = x.shape
    return x.view(b, n, heads, d // heads).transpose(1, 2)


def _stack(x: torch.Tensor, rows: slice) -> torch.Tensor:
    """(len(rows) * N, C): the positions of several batch rows, one after the other."""
    return x[rows].reshape(-1, x.shape[-1])


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


@dataclass
class _Call:
    """One injected layer call: the batch rows, the grid, and whether it is a refresh.

    It holds no step number: the step is read from the state only when a recorder asks,
    so the UNet's compiled graph (``Models.compile_unet``) does not depend on it."""

    name: str
    grid: tuple[int, int]
    layout: BatchLayout
    refresh: bool

    @property
    def out(self) -> int:
        return self.layout.output


class InjectionProcessor:
    """Decoder self-attention that injects the appearance (stage 4) for one layer.

    The shared skeleton: outside the injection steps (and for any call it does not
    handle) it is diffusers' ``AttnProcessor2_0``; otherwise :meth:`project` makes Q, K
    and V with the mode's rearrangement, :meth:`attend` attends, and the output
    projection follows. Subclasses implement one mode family each; recording is a hook
    (:class:`Recorder`) that never changes the result.
    """

    kind = "match"  # what the recorder's call list says of a non-refresh call

    def __init__(self, name: str, state: InjectionState):
        self.name = name
        self.state = state
        self.plain = AttnProcessor2_0()

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None,
                 temb=None, *args, **kwargs):
        st = self.state
        if (encoder_hidden_states is not None or hidden_states.ndim != 3
                or attn.spatial_norm is not None or attn.group_norm is not None
                or not st.active):
            return self.plain(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        call = _Call(self.name, st.grid(hidden_states.shape[1]), st.layout, st.refresh)
        st.note("injection", self.name, "refresh" if call.refresh else self.kind)
        query, key, value = self.project(attn, hidden_states, call)
        q, k, v = (_heads(x, attn.heads) for x in (query, key, value))
        if attn.norm_q is not None:
            q = attn.norm_q(q)
        if attn.norm_k is not None:
            k = attn.norm_k(k)
        mask = None
        if attention_mask is not None:
            mask = attn.prepare_attention_mask(attention_mask, q.shape[2], q.shape[0])
            mask = mask.view(q.shape[0], attn.heads, -1, mask.shape[-1])
        result = self.attend(q, k, v, mask, call)
        self._record_attention(q, k, v, call)
        b, _, n, d = result.shape
        hidden = result.transpose(1, 2).reshape(b, n, attn.heads * d).to(query.dtype)
        hidden = attn.to_out[1](attn.to_out[0](hidden))
        if attn.residual_connection:
            hidden = hidden + hidden_states
        return hidden / attn.rescale_output_factor

    def project(self, attn, hidden_states: torch.Tensor, call: _Call):
        """(query, key, value) of the whole batch, each (B, N, inner)."""
        return attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)

    def attend(self, q, k, v, mask, call: _Call) -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)

    def match(self, hidden_states: torch.Tensor, call: _Call) -> CorrespondenceField:
        """The output rows' correspondence into the appearance rows at this layer."""
        lay = call.layout
        return self.state.match(self.name, hidden_states[lay.output],
                                hidden_states[lay.appearance_rows], call.grid)

    def _record_attention(self, q, k, v, call: _Call) -> None:
        """Explicit attention weights of every row, only where a recorder asks."""
        if self.name not in self.state.attention_now:
            return
        probs = {row: explicit_attention(q[r], k[r], v[r], self._contrast(call, r),
                                         keep_probs=True)[1]
                 for row, r in call.layout.names().items()}
        self.state.note("attention", self.name, probs, call.grid)

    def _contrast(self, call: _Call, row: int) -> float | None:
        return None


class FeatureInjection(InjectionProcessor):
    """``feature``: the output's attention input is replaced, cell by cell, by the
    matched appearance features (Q, K and V all projected from them); on a refresh step,
    by the structure's features."""

    def project(self, attn, hidden_states, call):
        lay = call.layout
        rearranged = hidden_states.clone()
        if call.refresh:
            rearranged[lay.output] = hidden_states[lay.structure]
        else:
            fld = self.match(hidden_states, call)
            rearranged[lay.output] = _gather_rows(
                hidden_states[lay.output], _stack(hidden_states, lay.appearance_rows), fld.index)
        return super().project(attn, rearranged, call)


class ValueInjection(InjectionProcessor):
    """``v``: Q and K from the output's own features, V from the matched appearance
    cells; ``kv``: K too. On a refresh step they come from the structure row."""

    def __init__(self, name: str, state: InjectionState, keys: bool = False):
        super().__init__(name, state)
        self.keys = keys

    def project(self, attn, hidden_states, call):
        query, key, value = super().project(attn, hidden_states, call)
        lay = call.layout
        swapped = (value, key) if self.keys else (value,)
        if call.refresh:
            for proj in swapped:
                proj[lay.output] = proj[lay.structure]
        else:
            fld = self.match(hidden_states, call)
            for proj in swapped:
                proj[lay.output] = _gather_rows(proj[lay.output],
                                                _stack(proj, lay.appearance_rows), fld.index)
        return query, key, value


class CrossImageAttention(InjectionProcessor):
    """``cross-image`` (Cross-Image Attention, arXiv 2311.03335): Q from the output, K and
    V from the appearance row, no rearrangement, and the attention weights of the output
    row pushed away from their mean by ``cross_image_contrast`` (so that row is attended
    with explicit weights). On a refresh step K and V come from the structure row and
    there is no contrast."""

    kind = "cross"

    def project(self, attn, hidden_states, call):
        query, key, value = super().project(attn, hidden_states, call)
        lay = call.layout
        src = lay.structure if call.refresh else lay.appearance
        value[lay.output] = value[src]
        key[lay.output] = key[src]
        return query, key, value

    def attend(self, q, k, v, mask, call):
        result = super().attend(q, k, v, mask, call)
        contrast = self._contrast(call, call.out)
        if contrast is not None:
            o = call.out
            result[o] = explicit_attention(q[o], k[o], v[o], contrast)[0]
        return result

    def _contrast(self, call, row):
        if call.refresh or row != call.out:
            return None
        return self.state.config.cross_image_contrast


def make_processor(name: str, state: InjectionState) -> InjectionProcessor:
    """The processor of ``state.config.injection.mode`` for one layer (``none``: a feature
    processor that is never active, since ``injects_at`` is always false)."""
    mode = state.config.injection.mode
    if mode in ("v", "kv"):
        return ValueInjection(name, state, keys=mode == "kv")
    if mode == "cross-image":
        return CrossImageAttention(name, state)
    return FeatureInjection(name, state)


class injection:
    """Context manager installing the mode's :class:`InjectionProcessor` on the injected
    layers.

    The UNet's previous processors are restored on exit, whatever happened inside, so
    a cancelled or failed run leaves the pipeline as it found it.
    """

    def __init__(self, unet, state: InjectionState, layers: list[str] | None = None):
        self.unet, self.state = unet, state
        self.layers = layers if layers is not None else injected_layers(unet)
        self._saved = None

    def __enter__(self) -> list[str]:
        self._saved = dict(self.unet.attn_processors)
        self.state.set_layers(self.layers)
        procs = dict(self._saved)
        for name in self.layers:
            procs[name] = make_processor(name, self.state)
        self.unet.set_attn_processor(procs)
        return self.layers

    def __exit__(self, *exc):
        self.unet.set_attn_processor(self._saved)
        return False
