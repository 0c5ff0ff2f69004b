"""Models: the Stable Diffusion pipeline (real, toy or tiny), FreeU, SAM-HQ and the DIFT
featurizer."""

from .freeu import freeu
from .loading import BANNERS, DEFAULT_MODEL, TINY_WARNING, Models, load_pipeline
from .tiny import tiny_model_path

__all__ = ["BANNERS", "DEFAULT_MODEL", "TINY_WARNING", "Models", "freeu", "load_pipeline",
           "tiny_model_path"]
