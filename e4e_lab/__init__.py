"""e4e-lab: Eye-for-an-eye appearance transfer (arXiv 2406.07008) as step-by-step stages."""

__version__ = "0.1.0"
