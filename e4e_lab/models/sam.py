"""SAM-HQ (package ``segment-anything-hq``): a bounding box (plus optional clicks) to an
object mask, with the HQ output token only, as in the published Eye-for-an-eye code.

Checkpoints are read with ``torch.load(..., weights_only=True)`` (never unpickled
objects); the package's own builders are used with ``checkpoint=None`` for that
reason. ``SamMasker.random("vit_tiny")`` builds a randomly initialised model for tests.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch

from ..errors import ModelUnavailableError
from ..io.formats import Box
from ..method.images import LoadedImage

log = logging.getLogger(__name__)

DEFAULT_CHECKPOINT = "sam_hq_vit_l.pth"
CHECKPOINT_HELP = ("download sam_hq_vit_l.pth from the SAM-HQ project (github.com/SysCV/"
                   "sam-hq, 'Model Checkpoints') and pass --sam-checkpoint PATH, or use "
                   "--mask box")


def _registry():
    try:
        from segment_anything_hq import sam_model_registry
    except ImportError as exc:
        raise ModelUnavailableError(
            f"SAM-HQ is not installed ({exc}): pip install segment-anything-hq timm") from None
    return sam_model_registry


def find_checkpoint(path: str | os.PathLike | None = None) -> Path | None:
    """An explicit path, else ``$E4E_SAM_CHECKPOINT``, else ``sam_hq_vit_l.pth`` in the cache."""
    from ..io.paths import cache_root

    candidates = [path] if path else [os.environ.get("E4E_SAM_CHECKPOINT"),
                                      cache_root() / "models" / DEFAULT_CHECKPOINT]
    for c in candidates:
        if c and Path(c).is_file():
            return Path(c)
    return None


class SamMasker:
    """Box (and click) prompts to masks with one SAM-HQ model."""

    def __init__(self, model, device: torch.device, name: str):
        from segment_anything_hq import SamPredictor

        self.model = model.to(device).eval()
        self.device = device
        self.name = name
        self.predictor = SamPredictor(self.model)
        self._image_digest: str | None = None

    @classmethod
    def load(cls, checkpoint: str | os.PathLike | None = None, model_type: str = "vit_l",
             device: str | torch.device = "cpu") -> "SamMasker":
        registry = _registry()
        if model_type not in registry:
            raise ModelUnavailableError(f"SAM-HQ model type '{model_type}' is unknown: use one "
                                        f"of {', '.join(sorted(registry))}")
        path = find_checkpoint(checkpoint)
        if path is None:
            looked = checkpoint or f"$E4E_SAM_CHECKPOINT or the cache ({DEFAULT_CHECKPOINT})"
            raise ModelUnavailableError(f"SAM-HQ checkpoint not found at {looked}: "
                                        + CHECKPOINT_HELP)
        try:  # read (and refuse) the file before building the large model
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise ModelUnavailableError(f"SAM-HQ checkpoint '{path}' cannot be read as plain "
                                        f"weights ({type(exc).__name__}): {CHECKPOINT_HELP}") from None
        if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
            state = state["model"]
        if not (isinstance(state, dict) and all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                for k, v in state.items())):
            raise ModelUnavailableError(f"'{path}' does not hold a state dict of SAM-HQ weights "
                                        f"(found a {type(state).__name__}): {CHECKPOINT_HELP}")
        model = registry[model_type](checkpoint=None)
        info = model.load_state_dict(state, strict=False)
        if len(info.missing_keys) > len(state) // 2 or not state:
            raise ModelUnavailableError(f"'{path}' does not hold {model_type} SAM-HQ weights "
                                        f"({len(info.missing_keys)} weights missing)")
        if info.missing_keys:
            log.warning("SAM-HQ checkpoint %s lacks %d weights", path, len(info.missing_keys))
        return cls(model, torch.device(device), f"{model_type}:{path.name}")

    @classmethod
    def random(cls, model_type: str = "vit_tiny", device: str | torch.device = "cpu",
               seed: int = 0) -> "SamMasker":
        """A randomly initialised SAM-HQ (tests, demos): masks are not meaningful."""
        torch.manual_seed(seed)
        return cls(_registry()[model_type](checkpoint=None), torch.device(device),
                   f"{model_type}:random")

    @torch.no_grad()
    def mask(self, image: LoadedImage, box: Box | None = None,
             points: list[tuple[float, float]] | None = None,
             labels: list[int] | None = None) -> torch.Tensor:
        """(H, W) float 0/1 mask from a box and/or clicks (label 1 = object, 0 = background)."""
        if box is None and not points:
            raise ValueError("SAM needs a box or at least one click")
        if self._image_digest != image.digest:
            self.predictor.set_image(image.to_uint8())
            self._image_digest = image.digest
        coords = np.asarray(points, dtype=np.float32) if points else None
        labs = np.asarray(labels if labels is not None else [1] * len(points), dtype=np.int64) \
            if points else None
        masks, _, _ = self.predictor.predict(
            point_coords=coords, point_labels=labs,
            box=None if box is None else np.asarray(box, dtype=np.float32),
            multimask_output=False, hq_token_only=True)
        return torch.from_numpy(masks[0].astype(np.float32))
