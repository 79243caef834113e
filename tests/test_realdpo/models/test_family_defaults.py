"""Issue 7's silent errors that live in the model specs and the options: each test fails on the code before the fix.

1 frame rate per family; 2 CogVideoX's learned positional table at other frame counts; 5 each loss's timestep
range; 6 Wan's negative prompt, guidance and fp32 VAE, and the first-frame latent drawn as the pipeline draws it.
"""

from __future__ import annotations

import json

import pytest
import torch
from tiny_models import tiny_model

from realbase.errors import UserError
from realdpo.configs.train import TrainConfig
from realdpo.models import load_spec
from realdpo.models.common import image_generator
from realdpo.models.wan import WAN_NEGATIVE_PROMPT

pytestmark = pytest.mark.usefixtures("one_torch_thread", "fresh_accelerate")


# ---- 1. frame rate ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family, task, variant, fps", [
    ("cogvideox", "t2v", None, 8.0), ("cogvideox", "i2v", "1.5", 16.0), ("wan", "t2v", None, 16.0),
    ("wan", "t2v", "2.2-ti2v", 24.0), ("wan", "t2v", "2.2-a14b", 16.0)])
def test_each_family_has_its_frame_rate(family, task, variant, fps):
    assert load_spec(tiny_model(family, task, variant)).default_fps() == fps


def test_train_and_sample_use_the_models_frame_rate(shards, tmp_path):
    """Wan generates at 16 fps: its real clips are resampled to 16 fps (not 8: twice the motion per frame of the
    negatives), train_config.json and the cache record it, and `sample` writes 16 fps."""
    from realbase.video import video_info
    from realdpo.configs.sample import SampleConfig
    from realdpo.generation.sampling import sample
    from realdpo.training.trainer import train

    model = tiny_model("wan", "t2v")
    cache = tmp_path / "cache"
    train(TrainConfig(shards=shards, out=tmp_path / "run", model=model, cache_dir=cache, steps=1, negatives=1,
                      neg_steps=1, lora_rank=2, checkpoint_every=0))
    saved = json.loads((tmp_path / "run" / "train_config.json").read_text())
    assert saved["fps"] is None and saved["resolved"]["fps"] == 16.0
    assert [p.name for p in cache.glob("*/*")] == ["9x64x64@16fps"]
    out = sample(SampleConfig(prompt="a square", model=model, steps=1, out=tmp_path / "v.mp4"))
    assert video_info(out.read_bytes())[1] == pytest.approx(16.0)


# ---- 2. learned positional embeddings -----------------------------------------------------------------------------
def test_learned_positional_embeddings_refuse_other_frame_counts():
    """CogVideoX-5b-I2V's learned table covers 49 frames; at any other count diffusers swaps it for sin-cos
    positions without a word. check_size used to pass 17 frames; now it refuses, naming the size it runs at."""
    from diffusers.models.embeddings import CogVideoXPatchEmbed

    from realdpo.models import CogVideoXSpec
    from realdpo.models.builders import build_pipeline
    from realdpo.models.configs import get_config

    spec = CogVideoXSpec.from_pipeline(build_pipeline("CogVideoX-5b-I2V", num_layers=1, device="meta"))
    spec.check_size(49, 480, 720)
    for frames in (17, 81):
        with pytest.raises(UserError, match="learned positional embeddings: it runs at 49 frames, 480x720"):
            spec.check_size(frames, 480, 720)
    # why: the silent swap, on the true embedding width with a small table (9 frames, 4x4 latents)
    cfg = get_config("CogVideoX-5b-I2V").transformer
    embed = CogVideoXPatchEmbed(patch_size=2, in_channels=cfg["in_channels"], embed_dim=3072,
                                text_embed_dim=cfg["text_embed_dim"], sample_width=4, sample_height=4, sample_frames=9,
                                use_learned_positional_embeddings=True, use_positional_embeddings=False)
    embed.pos_embedding.zero_()  # a "learned" table: all zeros
    text = torch.zeros(1, cfg["max_text_seq_length"], cfg["text_embed_dim"])
    for latent_frames, uses_table in ((3, True), (5, False)):  # 9 frames: the table; 17 frames: sin-cos instead
        x = torch.zeros(1, latent_frames, cfg["in_channels"], 4, 4)
        with torch.no_grad():
            out = embed(text, x)[:, cfg["max_text_seq_length"]:]
            plain = embed.proj(x.flatten(0, 1)).flatten(2).transpose(1, 2).reshape(1, -1, 3072)
        assert torch.allclose(out, plain) == uses_table


# ---- 5. each loss's timestep range -----------------------------------------------------------------------------------
def test_each_loss_has_its_timestep_range(shards, tmp_path):
    """The paper's SFT baseline (the official trainer) draws t over the whole schedule; DPO over the less-noisy half."""
    def resolved(**kw):
        cfg = TrainConfig(shards=shards, **kw)
        cfg.validate()
        return cfg.t_min, cfg.t_max

    assert resolved(loss="sft") == (0.0, 1.0)
    for loss in ("dpo", "dpo+sft", "ipo", "hinge"):
        assert resolved(loss=loss) == (0.0, 0.5)
    assert resolved(loss="sft", t_max=0.3) == (0.0, 0.3) and resolved(loss="dpo", t_min=0.1, t_max=0.9) == (0.1, 0.9)
    spec = load_spec(tiny_model("cogvideox", "t2v"))
    t = spec.sample_timesteps(2000, *resolved(loss="sft"), generator=torch.Generator().manual_seed(0))
    assert t.max() > 900 and t.min() < 100


# ---- 6. Wan's defaults, fp32 VAE, the first-frame latent ------------------------------------------------------------
def test_wan_keeps_vae_and_image_encoder_in_fp32():
    spec = load_spec(tiny_model("wan", "i2v"), dtype=torch.bfloat16)
    assert spec.vae.dtype == torch.float32 and spec.components["image_encoder"].dtype == torch.float32
    assert spec.transformer.dtype == torch.bfloat16 and spec.text_encoder.dtype == torch.bfloat16
    cog = load_spec(tiny_model("cogvideox", "t2v"), dtype=torch.bfloat16)
    assert cog.vae.dtype == torch.bfloat16  # CogVideoX's VAE runs in the model's dtype
    video = torch.rand(1, 9, 3, 64, 64) * 2 - 1
    x0 = spec.encode_videos(video)
    assert x0.dtype == torch.float32 and spec.decode_latents(x0).shape == video.shape
    first = spec.encode_first_frames(video[:, 0], 9)
    assert set(first) == {"image_condition", "image_embeds"} and all(v.dtype == torch.float32 for v in first.values())


def test_wan_negatives_use_its_negative_prompt_and_guidance(shards, tmp_path, monkeypatch):
    """The negatives are generated with the Wan pipelines' standard negative prompt and guidance 5 (was: no
    negative prompt, 6.0); CogVideoX keeps none and 6.0. Options given win."""
    import diffusers

    from realdpo.configs.negatives import NegativesConfig
    from realdpo.generation.negatives import precompute

    calls = []
    for cls in (diffusers.WanPipeline, diffusers.CogVideoXPipeline):
        original = cls.__call__

        def recording(self, *args, _original=original, **kwargs):
            calls.append((type(self).__name__, kwargs.get("negative_prompt_embeds"), kwargs.get("guidance_scale")))
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(cls, "__call__", recording)
    common = dict(shards=shards, negatives=1, neg_steps=1, batch_size=2)
    precompute(NegativesConfig(model=tiny_model("wan", "t2v"), cache_dir=tmp_path / "a", **common))
    precompute(NegativesConfig(model=tiny_model("cogvideox", "t2v"), cache_dir=tmp_path / "b", **common))
    precompute(NegativesConfig(model=tiny_model("wan", "t2v"), cache_dir=tmp_path / "c", neg_prompt="", neg_guidance=3.0,
                               **common))
    # the negative prompt reaches the pipeline encoded once (cached), as its embedding
    wan, cog = load_spec(tiny_model("wan", "t2v")), load_spec(tiny_model("cogvideox", "t2v"))
    expected = [("WanPipeline", wan, WAN_NEGATIVE_PROMPT, 5.0), ("CogVideoXPipeline", cog, "", 6.0),
                ("WanPipeline", wan, "", 3.0)]
    assert [(name, g) for name, _, g in calls] == [(name, g) for name, _, _, g in expected]
    for (_, embeds, _), (_, spec, text, _) in zip(calls, expected):
        want = spec.encode_prompts([text])["prompt_embeds"]
        torch.testing.assert_close(embeds[:1].float(), want.float())


def test_cogvideox_first_frame_latent_is_drawn_as_the_pipeline_draws_it():
    """CogVideoXImageToVideoPipeline conditions on a posterior *sample* of the first frame's latents (was: the
    mode); ours is that sample, drawn from a generator seeded by the frame, so it is the same every time."""
    spec = load_spec(tiny_model("cogvideox", "i2v"))
    image = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    ours = spec.encode_first_frames(image, 9)["image_latents"]
    _, pipeline_latents = spec.pipeline().prepare_latents(image, 1, 8, 9, 64, 64, torch.float32, torch.device("cpu"),
                                                          image_generator(image[0]), None)
    torch.testing.assert_close(ours[:, 0], pipeline_latents[:, 0])
    mode = spec.vae.encode(image.unsqueeze(2)).latent_dist.mode().permute(0, 2, 1, 3, 4) * spec.scaling_factor
    assert not torch.allclose(ours, mode, atol=1e-4)
    assert torch.equal(spec.encode_first_frames(image, 9)["image_latents"], ours)
    spec.image_noise = True  # the official trainer's pixel noise: another, still reproducible, latent
    noisy = spec.encode_first_frames(image, 9)["image_latents"]
    assert not torch.allclose(noisy, ours, atol=1e-4) and torch.equal(spec.encode_first_frames(image, 9)["image_latents"],
                                                                       noisy)
    # ... so its cache entries (conditioning, and the negatives generated from it) live apart from the plain ones
    plain = load_spec(tiny_model("cogvideox", "i2v")).fingerprint()
    assert spec.fingerprint() != plain
    t2v = load_spec(tiny_model("cogvideox", "t2v"))
    t2v_plain = t2v.fingerprint()
    t2v.image_noise = True  # no first frame: nothing changes
    assert t2v.fingerprint() == t2v_plain


def test_cogvideox15_i2v_padding_frame_is_conditioned_as_in_the_pipeline():
    """CogVideoX 1.5 pads an odd latent frame count by one frame. Its pipeline pads the frame count *before*
    prepare_latents (9 frames: 3 latent frames, asked for as 13 frames, 4 latent frames), so the first-frame latents
    sit on the first of the four frames only. Training used to put them on the first two ([T, T, F, F])."""
    spec = load_spec(tiny_model("cogvideox", "i2v", "1.5"))
    image = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1)) * 2 - 1
    cond = spec.encode_first_frames(image, 9)
    _, pipeline_latents = spec.pipeline().prepare_latents(image, 1, 8, 13, 64, 64, torch.float32, torch.device("cpu"),
                                                          image_generator(image[0]), None)
    x_t = torch.randn(1, 4, 8, 8, 8)  # as the transformer sees them: the padding frame first
    model_in = spec.model_input(x_t, cond)
    assert model_in.shape[1] == pipeline_latents.shape[1] == 4
    torch.testing.assert_close(model_in[:, :, 8:], pipeline_latents)
    assert [bool(f.abs().sum() > 0) for f in model_in[0, :, 8:]] == [True, False, False, False]


def test_cogvideox15_padding_frame_has_noise_of_its_own():
    """The padding frame is the clean first frame noised with noise of its own (the official trainer's choice), not
    a copy of the noisy first frame (the same noise twice, which the pipeline never shows the transformer)."""
    spec = load_spec(tiny_model("cogvideox", "t2v", "1.5"))
    x0 = torch.randn(1, 3, 8, 8, 8, generator=torch.Generator().manual_seed(2))
    assert spec.noise_shape(tuple(x0.shape)) == (1, 4, 8, 8, 8)
    noise = torch.randn(spec.noise_shape(tuple(x0.shape)), generator=torch.Generator().manual_seed(3))
    t = torch.tensor([300])
    seen = {}
    hook = spec.transformer.register_forward_pre_hook(
        lambda _m, _a, kw: seen.update(hidden=kw["hidden_states"].clone()), with_kwargs=True)
    with torch.no_grad():
        spec.per_sample_error(spec.transformer, x0, noise, t, spec.encode_prompts(["a"]))
    hook.remove()
    a = spec.alphas_cumprod[t].view(-1, 1, 1, 1, 1)
    torch.testing.assert_close(seen["hidden"][:, :1], a.sqrt() * x0[:, :1] + (1 - a).sqrt() * noise[:, :1])
    torch.testing.assert_close(seen["hidden"][:, 1:], a.sqrt() * x0 + (1 - a).sqrt() * noise[:, 1:])
    assert not torch.allclose(seen["hidden"][:, 0], seen["hidden"][:, 1])
    with pytest.raises(ValueError, match="noise_shape"):  # noise without the padding frame is refused
        spec.per_sample_error(spec.transformer, x0, noise[:, 1:], t, spec.encode_prompts(["a"]))
