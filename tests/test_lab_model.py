"""The committed lab model: a real diffusers CogVideoX image-to-video pipeline, loaded like any checkpoint, whose
samples hold balls the lab's tracker finds where the first frame put them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from realdpo.lab.evaluate import generate_videos, heldout_prompts
from realdpo.lab.model import MODEL_DIR, SAMPLE_GUIDANCE, lab_model_path
from realdpo.lab.sets import set_clip
from realdpo.lab.tracker import find_blobs
from realdpo.models import load_spec


@pytest.fixture(scope="module")
def spec():
    return load_spec(lab_model_path())


def test_lab_model_is_a_small_cogvideox_i2v_checkpoint(spec):
    from diffusers import AutoencoderKLCogVideoX, CogVideoXDDIMScheduler, CogVideoXTransformer3DModel
    from transformers import ByT5Tokenizer, T5EncoderModel

    assert (spec.family, spec.task, spec.default_size()) == ("cogvideox", "i2v", (17, 64, 64))
    assert isinstance(spec.transformer, CogVideoXTransformer3DModel) and isinstance(spec.vae, AutoencoderKLCogVideoX)
    assert isinstance(spec.text_encoder, T5EncoderModel) and isinstance(spec.tokenizer, ByT5Tokenizer)
    assert isinstance(spec.scheduler, CogVideoXDDIMScheduler)
    weights = list(MODEL_DIR.rglob("*.safetensors"))
    assert len(weights) == 3 and sum(p.stat().st_size for p in weights) < 20 * 2 ** 20
    assert not list(MODEL_DIR.rglob("*.bin")) and not list(MODEL_DIR.rglob("*.pt"))


def test_vae_reconstruction_keeps_balls_within_a_pixel(spec):
    clips = [set_clip("heldout", i) for i in range(4)]
    video = torch.from_numpy(np.stack([c.frames for c in clips])).permute(0, 1, 4, 2, 3).float() / 127.5 - 1
    recon = spec.decode_latents(spec.encode_videos(video))
    frames = ((recon + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 1, 3, 4, 2).numpy()
    errors = []
    for clip, rec in zip(clips, frames):
        for f in range(0, 17, 4):
            for b in find_blobs(rec[f]):
                errors.append(np.linalg.norm(clip.centers[f] - [b.x, b.y], axis=1).min())
    assert len(errors) >= 20 and np.median(errors) < 1.0


def test_samples_hold_the_first_frames_balls(spec):
    prompts = heldout_prompts(4)
    videos = generate_videos(spec, prompts, steps=10, guidance=SAMPLE_GUIDANCE)
    assert videos.shape == (4, 17, 64, 64, 3)
    found = 0
    for i, video in enumerate(videos):
        truth = set_clip("heldout", i)
        first = find_blobs(video[0])
        assert sorted(b.color for b in first) == sorted(truth.colors[0])
        for b in first:
            j = truth.colors[0].index(b.color)
            assert np.hypot(b.x - truth.centers[0, j, 0], b.y - truth.centers[0, j, 1]) < 2.0
        found += sum(len(find_blobs(f)) > 0 for f in video)
    assert found >= 0.9 * 4 * 17  # balls stay visible in (nearly) every generated frame


@pytest.mark.slow
def test_lab_check_samples_the_committed_model_and_prints_its_rates(capsys):
    import re

    from cli.main import run

    assert run(["lab", "check", "--prompts", "2", "--batch-size", "2", "--seed", "3"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    m = re.fullmatch(r"lab: render_pass=(\d+\.\d) physical=(\d+\.\d) prompts=2", lines[-1])
    assert m, lines[-1]
    render, physical = float(m.group(1)), float(m.group(2))
    assert render in (0.0, 50.0, 100.0) and physical <= render  # 2 videos; physical implies render pass
    assert any(line.startswith("failed checks") for line in lines)
