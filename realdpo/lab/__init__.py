"""The motion lab: a physics world small enough for a CPU, a metric that knows its physics, and a built-in
CogVideoX image-to-video model trained in it (docs/lab.md).

- `realdpo.lab.world`: the renderer (exact elastic-wall / gravity physics, deterministic per seed) and the unreal kinds;
- `realdpo.lab.sets`: the web mix, the real set and the held-out prompts; writing them as mp4 + caption files, and
  curating the real set with `realdpo curate`;
- `realdpo.lab.tracker`: the tracker and the physical-motion checks (`score_video`);
- `realdpo.lab.model`: the lab pipeline's configs and the committed weights (`lab_model_path`);
- `realdpo.lab.build`: `realdpo lab build`, which retrains those weights from a seed;
- `realdpo.lab.evaluate`: sampling a model on the held-out prompts and scoring the videos; `realdpo lab check`.

The lab is a consumer of the library: nothing in realdpo's core (models, method, generation, training, evaluation)
imports it; `realdpo eval --lab` receives the tracker as a plug-in scorer from the command line layer.
"""
