"""Where injection happens: the decoder self-attention layers it replaces, and the rows
of the UNet batch during denoising.

The injected layers are the decoder self-attention layers of the two finest
resolutions (for SD 1.5 at 512 px: 32x32 and 64x64, three layers each).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_ATTN1 = re.compile(r"^up_blocks\.(\d+)\.attentions\.\d+\.transformer_blocks\.\d+\.attn1\.processor$")


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
