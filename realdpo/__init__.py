"""realdpo: RealDPO post-training of video diffusion transformers on real clips."""

__version__ = "0.1.0"
