"""The committed lab model: a real diffusers CogVideoX image-to-video pipeline, loaded like any checkpoint, whose
samples hold balls the lab's tracker finds where the first frame put them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from realdpo.lab.evaluate import generate_videos, heldout_prompts
from realdpo.lab.model import MODEL_DIR, SAMPLE_GUIDANCE, SAMPLE_STEPS, lab_model_path
from realdpo.lab.sets import set_clip
from realdpo.lab.tracker import find_blobs, score_video
from realdpo.models import load_spec


@pytest.fixture(scope="module")
def spec():
    return load_spec(lab_model_path())


def test_lab_model_is_a_small_cogvideox_i2v_checkpoint(spec):
    from diffusers import AutoencoderKLCogVideoX, CogVideoXDDIMScheduler, CogVideoXTransformer3DModel
    from transformers import ByT5Tokenizer, T5EncoderModel

    assert (spec.family, spec.task, spec.default_size()) == ("cogvideox", "i2v", (9, 32, 32))
    assert isinstance(spec.transformer, CogVideoXTransformer3DModel) and isinstance(spec.vae, AutoencoderKLCogVideoX)
    assert isinstance(spec.text_encoder, T5EncoderModel) and isinstance(spec.tokenizer, ByT5Tokenizer)
    assert isinstance(spec.scheduler, CogVideoXDDIMScheduler)
    weights = list(MODEL_DIR.rglob("*.safetensors"))
    assert len(weights) == 3 and sum(p.stat().st_size for p in weights) < 20 * 2 ** 20
    assert not list(MODEL_DIR.rglob("*.bin")) and not list(MODEL_DIR.rglob("*.pt"))


@pytest.mark.slow
def test_vae_reconstruction_keeps_balls_within_a_pixel(spec):
    clips = [set_clip("heldout", i) for i in range(4)]
    video = torch.from_numpy(np.stack([c.frames for c in clips])).permute(0, 1, 4, 2, 3).float() / 127.5 - 1
    recon = spec.decode_latents(spec.encode_videos(video))
    frames = ((recon + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 1, 3, 4, 2).numpy()
    errors = []
    for clip, rec in zip(clips, frames):
        for f in range(0, 9, 2):
            for b in find_blobs(rec[f]):
                errors.append(np.linalg.norm(clip.centers[f] - [b.x, b.y], axis=1).min())
    assert len(errors) == 20 and np.median(errors) < 0.5  # one ball per frame, found in each


@pytest.mark.slow
def test_samples_hold_the_first_frames_ball_and_pass_the_render_checks(spec):
    prompts = heldout_prompts(6)
    videos = generate_videos(spec, prompts, steps=SAMPLE_STEPS, guidance=SAMPLE_GUIDANCE)
    assert videos.shape == (6, 9, 32, 32, 3)
    for i, video in enumerate(videos):
        truth = set_clip("heldout", i)
        first = find_blobs(video[0])
        assert [b.color for b in first] == truth.colors[0]
        assert np.hypot(first[0].x - truth.centers[0, 0, 0], first[0].y - truth.centers[0, 0, 1]) < 1.0
    assert sum(score_video(v).render_pass for v in videos) >= 5  # the base renders ~97 % of held-out prompts


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
