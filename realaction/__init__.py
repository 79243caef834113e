"""realaction: curate raw videos into RealAction WebDataset shards of real human-action clips."""

__version__ = "0.1.0"
