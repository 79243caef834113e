"""realdpo: RealDPO post-training of video diffusion transformers on real clips.

The training half builds on the curation half: it reads `realaction`'s shards and uses its video I/O, its
`UserError` and its typed config fields. Inside, subpackages are layered, each importing only those below it:

    demo                      the offline end-to-end demo
    training | evaluation     `realdpo train` (trainer phases, checkpoints, plot); `realdpo eval`
    generation | method       negatives and sampling; losses, reference model, the batched DPO step
    data                      shard samples -> clips, the latent cache, the training stream
    models                    one spec per model family; everything model-specific lives here
    configs | runtime         one typed config per command; device and process helpers

`import-linter` (pyproject.toml, run by `make test`) keeps it so.
"""

__version__ = "0.1.0"
