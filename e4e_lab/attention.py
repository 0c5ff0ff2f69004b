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
steps a :class:`Recorder` asked for, and for the output row of the cross-image
baseline (its contrast acts on the weights). Recording is a hook: the math never
depends on it.
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
from .images import matching_mask

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
    """Rows of the UNet batch: [plain output?, injected output, appearance(s)..., structure].

    There is one appearance row per reference image (several for multi-object runs).
    """

    output: int
    appearances: tuple[int, ...]
    structure: int
    plain: int | None = None

    @classmethod
    def for_guidance(cls, guided: bool, references: int = 1) -> "BatchLayout":
        first = 2 if guided else 1
        apps = tuple(range(first, first + references))
        return cls(first - 1, apps, first + references, plain=0 if guided else None)

    @property
    def appearance(self) -> int:
        """The first (for single-pair runs, the only) appearance row."""
        return self.appearances[0]

    @property
    def appearance_rows(self) -> slice:
        """The appearance rows as a slice: they are consecutive, and indexing with a
        slice (unlike a list, which becomes an index tensor copied to the device) never
        waits for the GPU."""
        return slice(self.appearances[0], self.appearances[-1] + 1)

    @property
    def size(self) -> int:
        return self.structure + 1

    def names(self) -> dict[str, int]:
        rows = {"output": self.output}
        for j, r in enumerate(self.appearances):
            rows["appearance" if j == 0 else f"appearance{j}"] = r
        rows["structure"] = self.structure
        if self.plain is not None:
            rows["plain"] = self.plain
        return rows


@dataclass
class RegionPair:
    """A target region that takes its features only from one reference region.

    ``target_mask`` and ``ref_mask`` are (H, W) 0/1 masks at image resolution;
    ``reference`` is the index of the reference image (its appearance row).
    """

    target_mask: torch.Tensor
    ref_mask: torch.Tensor
    reference: int = 0


class InjectionState:
    """What the processors share during one run: config, step, region pairs, recorder.

    Masks are resized once per grid and kept; nothing here is global.
    """

    def __init__(self, config: TransferConfig, latent_shape: tuple[int, int],
                 pairs: list[RegionPair], device,
                 dift_field: CorrespondenceField | None = None,
                 recorder: Recorder | None = None):
        if not pairs:
            raise ValueError("at least one (target, reference) region pair is needed")
        self.config = config
        self.latent_shape = latent_shape
        self.pairs = pairs
        self.device = device
        self.dift_field = dift_field
        self.recorder = recorder
        self.step: int = -1
        self.layout = BatchLayout.for_guidance(True, self.references)
        self._masks: dict[tuple[int, int], list[tuple[torch.Tensor, torch.Tensor]]] = {}
        self._fields: dict[tuple[int, int], CorrespondenceField] = {}

    @property
    def references(self) -> int:
        return max(p.reference for p in self.pairs) + 1

    def begin_step(self, step: int, layout: BatchLayout) -> None:
        self.step, self.layout = step, layout

    def grid(self, tokens: int) -> tuple[int, int]:
        h, w = self.latent_shape
        f = math.isqrt(h * w // tokens)
        return h // f, w // f

    def masks(self, grid: tuple[int, int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per pair, the flattened 0/1 (target, reference) matching masks on ``grid``
        (resized by ``config.mask_resize``)."""
        if grid not in self._masks:
            mode = self.config.mask_resize
            self._masks[grid] = [
                (matching_mask(p.target_mask, grid, mode).flatten().to(self.device),
                 matching_mask(p.ref_mask, grid, mode).flatten().to(self.device))
                for p in self.pairs]
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

    def match(self, layer: str, target: torch.Tensor, refs: torch.Tensor,
              grid: tuple[int, int]) -> CorrespondenceField:
        """Correspondence for this layer and step.

        ``target`` is (N, C), ``refs`` is (R, N, C) for R reference images. The field's
        indices point into the R x N reference positions (``index // N`` is the image).
        Each pair matches its target region only inside its reference region; where
        target regions overlap, the later pair wins.
        """
        if self.config.correspondence == "dift" and self.dift_field is not None:
            fld = self.dift(grid)
        else:
            n = refs.shape[1]
            index = torch.full((target.shape[0],), -1, dtype=torch.long, device=target.device)
            score = torch.zeros(target.shape[0], device=target.device)
            for pair, (tm, rm) in zip(self.pairs, self.masks(grid)):
                idx, sc = nearest_neighbors(target, refs[pair.reference], tm, rm)
                hit = idx >= 0
                index = torch.where(hit, idx + pair.reference * n, index)
                score = torch.where(hit, sc, score)
            fld = CorrespondenceField(index, score, grid, grid)
        if self.recorder is not None:
            self.recorder.on_matches(layer, self.step, fld)
        return fld


# --------------------------------------------------------------- processor --

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
    """One injected layer call: the batch rows, the grid, and whether it is a refresh."""

    name: str
    step: int
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
                or not st.config.injects_at(st.step)):
            return self.plain(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        call = _Call(self.name, st.step, st.grid(hidden_states.shape[1]), st.layout,
                     st.config.refreshes_at(st.step))
        if st.recorder is not None:
            st.recorder.on_injection(self.name, call.step,
                                     "refresh" if call.refresh else self.kind)
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
        rec = self.state.recorder
        if rec is None or not rec.wants_attention(self.name, call.step):
            return
        probs = {row: explicit_attention(q[r], k[r], v[r], self._contrast(call, r),
                                         keep_probs=True)[1]
                 for row, r in call.layout.names().items()}
        rec.on_attention(self.name, call.step, probs, call.grid)

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
    """The processor of ``state.config.injection`` for one layer (``none``: a feature
    processor that is never active, since ``injects_at`` is always false)."""
    mode = state.config.injection
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
        procs = dict(self._saved)
        for name in self.layers:
            procs[name] = make_processor(name, self.state)
        self.unet.set_attn_processor(procs)
        return self.layers

    def __exit__(self, *exc):
        self.unet.set_attn_processor(self._saved)
        return False
