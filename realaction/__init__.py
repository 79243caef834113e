"""realaction: curate raw videos into RealAction WebDataset shards of real human-action clips.

`pipeline.curate` drives a run: it finds the sources, hands them to an engine (`engines`: our process pool or
Ray), and commits each finished source (`output`). A worker runs every source through `curator.Curator`: one
decode pass (`single_pass`, built on `decoding` and `cuts`) yields candidate clips, each judged stage by stage
(`filters`, `captions`) and encoded (`output.samples`). Each stage takes its own small options object
(`options`, views of `config.CurateConfig`)."""

__version__ = "0.1.0"
