"""Models: the Stable Diffusion pipeline (real or tiny), SAM-HQ and the DIFT featurizer."""

from .freeu import freeu
from .loading import BANNERS, DEFAULT_MODEL, TINY_WARNING, Models, load_pipeline
from .tiny import cache_root, tiny_model_path

__all__ = ["BANNERS", "DEFAULT_MODEL", "TINY_WARNING", "Models", "freeu", "load_pipeline", "cache_root",
           "tiny_model_path"]
