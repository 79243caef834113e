"""The mp4 encoder is reproducible: the same frames give the same bytes, also in a process that runs torch."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from tiny_models import tiny_model

from realbase.video import encode_mp4


@pytest.mark.slow
def test_the_same_generated_frames_encode_to_the_same_bytes_between_torch_calls():
    # A tiny model's decoded video, encoded again after each decode: x264's AVX-512 kernels gave 4 different
    # bitstreams in 8 encodes of these frames (x264_options caps them at AVX2). Random noise did not show it.
    import torch

    from realdpo.models import load_spec
    from realdpo.models.frames import to_uint8

    spec = load_spec(tiny_model("cogvideox", "t2v"))
    frames, height, width = spec.resolve_size(None, None, None)
    cond = spec.encode_prompts(["a square moving"])
    latents = spec.generate_latents(["a square moving"], cond, num_frames=frames, height=height, width=width,
                                    steps=2, guidance=1.0, seeds=[0], images=None, negative_cond=None)
    video = np.ascontiguousarray(to_uint8(spec.decode_latents(latents)[0]))
    digests = set()
    for _ in range(8):
        with torch.no_grad():
            spec.decode_latents(latents)
        digests.add(hashlib.sha256(encode_mp4(video, fps=8.0)).hexdigest())
    assert len(digests) == 1
