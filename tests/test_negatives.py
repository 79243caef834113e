"""Clip decoding, shard reading, and the negatives cache filled by ensure_cached / `realdpo negatives`."""

from __future__ import annotations

import pytest
import torch
from tiny_models import synthetic_clip, tiny_model, write_tiny_shard

from realaction.errors import UserError
from realdpo.data.cache import LatentCache
from realdpo.data.clips import (
    BadClip,
    ClipSample,
    ClipTooShort,
    decode_clip,
    expand_shards,
    first_frame,
    frame_indices,
    iter_shard_samples,
    load_image,
)
from realdpo.generation.negatives import ensure_cached, negative_seed
from realdpo.models import load_spec

SIZE = dict(frames=9, height=64, width=64, fps=8.0)


# -- clips ------------------------------------------------------------------------------------------------------------
def test_decode_real_clip(shared_data):
    mp4 = shared_data / "real" / "4873105.mp4"
    video = decode_clip(mp4, 9, 48, 64, fps=4.0)
    assert video.shape == (9, 3, 48, 64) and video.dtype == torch.float32
    assert -1.0 <= video.min() < -0.5 and 0.3 < video.max() <= 1.0
    assert (video[1:] - video[:-1]).abs().mean() > 0.005  # frames differ: the person moves
    assert torch.equal(first_frame(mp4.read_bytes(), 48, 64), decode_clip(mp4, 1, 48, 64, fps=8.0)[0])
    with pytest.raises(ClipTooShort, match="need more than"):
        decode_clip(mp4, 49, 48, 64, fps=4.0)  # 6.1 s of clip, 12 s needed
    with pytest.raises(BadClip, match="cannot decode"):
        decode_clip(b"\x00not an mp4" * 50, 9, 48, 64, fps=4.0)


def test_encode_real_clip_and_caption(shared_data, tiny_cogvideox_t2v):
    spec = load_spec(tiny_cogvideox_t2v)
    caption = (shared_data / "real" / "4873105.txt").read_text().strip()
    video = decode_clip(shared_data / "real" / "4873105.mp4", 9, 64, 64, fps=8.0)
    x0 = spec.encode_videos(video[None])
    assert x0.shape == (1, 3, 8, 8, 8) and torch.isfinite(x0).all()
    assert spec.encode_prompts([caption])["prompt_embeds"].shape == (1, 128, 32)
    assert spec.decode_latents(x0).shape == (1, 9, 3, 64, 64)


def test_frame_sampling_and_crop():
    assert frame_indices(30, 30.0, 4, 10.0) == [0, 3, 6, 9]
    assert frame_indices(5, 10.0, 4, 5.0, allow_repeat=True) == [0, 2, 4, 4]
    mp4 = synthetic_clip(frames=16, height=48, width=80, fps=8.0)
    v = decode_clip(mp4, 5, 32, 32, fps=4.0)  # every other frame, 48x80 -> 32x53 -> centre 32x32
    assert v.shape == (5, 3, 32, 32)
    padded = decode_clip(mp4, 12, 32, 32, fps=4.0, allow_repeat=True)
    assert torch.equal(padded[-1], padded[-2])


def test_load_image_and_errors(tmp_path):
    from PIL import Image

    Image.new("RGB", (40, 20), (255, 0, 0)).save(tmp_path / "a.png")
    img = load_image(tmp_path / "a.png", 16, 16)
    assert img.shape == (3, 16, 16) and img[0].min() > 0.99 and img[1].max() < -0.99
    (tmp_path / "b.png").write_bytes(b"nope")
    with pytest.raises(UserError, match="cannot read image"):
        load_image(tmp_path / "b.png", 16, 16)


def test_shards_expand_and_iterate(tmp_path):
    write_tiny_shard(tmp_path / "s" / "realaction-000001.tar", [("v2-0000", "two", synthetic_clip(seed=2))])
    write_tiny_shard(tmp_path / "s" / "realaction-000000.tar", [("v1-0000", "one", synthetic_clip(seed=1)),
                                                                ("v1-0001", "uno", synthetic_clip(seed=3))])
    urls = expand_shards([str(tmp_path / "s" / "*.tar"), str(tmp_path / "s" / "realaction-000000.tar")])
    assert [u.rsplit("/", 1)[1] for u in urls] == ["realaction-000000.tar", "realaction-000001.tar"]
    samples = list(iter_shard_samples(urls))
    assert [(s.key, s.caption) for s in samples] == [("v1-0000", "one"), ("v1-0001", "uno"), ("v2-0000", "two")]
    assert samples[0].jpg[:2] == b"\xff\xd8" and samples[0].meta["num_frames"] == 24
    with pytest.raises(UserError, match="no shard files match"):
        expand_shards([str(tmp_path / "none-*.tar")])
    (tmp_path / "junk.tar").write_bytes(b"junk" * 100)  # a corrupt shard is skipped (tests/test_shard_reader.py)
    assert [s.key for s in iter_shard_samples([tmp_path / "junk.tar", urls[1]])] == ["v2-0000"]


# -- negatives --------------------------------------------------------------------------------------------------------
@pytest.fixture()
def counted(monkeypatch):
    calls = []

    def wrap(spec):
        orig = spec.generate_latents

        def gen(prompts, cond, **kw):
            calls.append(list(kw["seeds"]))
            return orig(prompts, cond, **kw)

        monkeypatch.setattr(spec, "generate_latents", gen)
        return calls

    return wrap


def _samples(tmp_path):
    shard = write_tiny_shard(tmp_path / "shards" / "realaction-000000.tar", [
        ("a-0000", "a person waves", synthetic_clip(seed=1)),
        ("b-0000", "a person jumps", synthetic_clip(seed=2)),
        ("short-0000", "too short", synthetic_clip(frames=4, seed=3)),
    ])
    samples = list(iter_shard_samples([shard]))
    samples.append(ClipSample("corrupt-0000", "broken", b"\x00not an mp4" * 50))
    return samples


def test_ensure_cached_generates_once(tmp_path, tiny_cogvideox_t2v, counted):
    spec = load_spec(tiny_cogvideox_t2v)
    calls = counted(spec)
    samples = _samples(tmp_path)
    cache = LatentCache(tmp_path / "cache", spec.fingerprint(), 9, 64, 64, 8.0)
    kw = dict(**SIZE, steps=2, guidance=4.0, seed=5, progress=False, batch_size=3)
    assert ensure_cached(spec, samples, cache, k=2, **kw) == 4
    assert [len(c) for c in calls] == [3, 1]
    real = cache.get_real("a-0000")
    assert set(real) == {"latents", "prompt_embeds"} and real["latents"].shape == (1, 3, 8, 8, 8)
    neg = cache.get_negatives("a-0000", 1, 2)
    assert neg.shape == (2, 3, 8, 8, 8) and not torch.equal(neg[0], neg[1])
    assert cache.get_real("short-0000") is None and cache.get_real("corrupt-0000") is None
    assert cache.negative_seeds("b-0000", 1) == [negative_seed(5, "b-0000", i, 1) for i in range(2)]

    calls.clear()
    assert ensure_cached(spec, samples, cache, k=2, **kw) == 0 and calls == []  # everything cached
    assert ensure_cached(spec, samples, cache, k=3, **kw) == 2 and [len(c) for c in calls] == [2]  # only the third
    assert torch.equal(cache.get_negatives("a-0000", 1, 3)[:2], neg)

    # the same seed gives the same negative however it is batched
    other = LatentCache(tmp_path / "cache2", spec.fingerprint(), 9, 64, 64, 8.0)
    ensure_cached(spec, samples[:1], other, k=1, **{**kw, "batch_size": 1})
    assert torch.allclose(other.get_negatives("a-0000", 1, 1), neg[:1], atol=1e-5)

    # a later round with a given transformer goes to its own entries
    assert ensure_cached(spec, samples, cache, k=1, round=2, transformer=spec.transformer, **kw) == 2
    assert cache.get_negatives("a-0000", 2, 1) is not None


@pytest.mark.parametrize("family", ["cogvideox", "wan"])
def test_ensure_cached_image_to_video(tmp_path, family):
    spec = load_spec(tiny_model(family, "i2v"))
    samples = _samples(tmp_path)[:2]
    cache = LatentCache(tmp_path / "cache", spec.fingerprint(), 9, 64, 64, 8.0)
    assert ensure_cached(spec, samples, cache, k=2, **SIZE, steps=2, guidance=4.0, seed=0, progress=False) == 4
    real = cache.get_real("a-0000")
    cond = {k: v for k, v in real.items() if k != "latents"}
    assert set(cond) == ({"prompt_embeds", "image_latents"} if family == "cogvideox"
                         else {"prompt_embeds", "image_condition", "image_embeds"})
    neg = cache.get_negatives("a-0000", 1, 2)
    assert neg.shape == (2, *real["latents"].shape[1:])
    # the cached entry is all per_sample_error needs
    x = torch.cat([real["latents"], neg])
    err = spec.per_sample_error(spec.transformer, x, torch.randn_like(x), spec.sample_timesteps(3, 0, 0.5),
                                {k: v.expand(3, *v.shape[1:]) for k, v in cond.items()})
    assert err.shape == (3,) and torch.isfinite(err).all()


def test_negatives_command(tmp_path, tiny_cogvideox_t2v):
    from cli.main import run

    _samples(tmp_path)
    args = ["negatives", "--shards", str(tmp_path / "shards" / "*.tar"), "--model", str(tiny_cogvideox_t2v),
            "--out", str(tmp_path / "cache"), "--negatives", "1", "--neg-steps", "2", "--frames", "9",
            "--height", "64", "--width", "64", "--batch-size", "2"]
    assert run(args) == 0
    spec = load_spec(tiny_cogvideox_t2v)
    cache = LatentCache(tmp_path / "cache", spec.fingerprint(), 9, 64, 64, 8.0)
    assert cache.get_negatives("a-0000", 1, 1) is not None and cache.get_negatives("b-0000", 1, 1) is not None
    assert run(args[:-2] + ["--frames", "8"]) == 2  # 8 is not 8k+1: one clear line, exit 2

    # round 2 from a trained LoRA (diffusers format, as `realdpo train` writes OUT/lora)
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    spec.transformer.add_adapter(LoraConfig(r=2, lora_alpha=2, target_modules=spec.lora_target_modules,
                                            init_lora_weights=False))
    type(spec.pipeline()).save_lora_weights(tmp_path / "lora", get_peft_model_state_dict(spec.transformer))
    assert run(args + ["--round", "2", "--lora", str(tmp_path / "lora")]) == 0
    assert cache.get_negatives("a-0000", 2, 1) is not None and cache.get_negatives("b-0000", 2, 1) is not None
    assert run(args + ["--round", "2", "--lora", str(tmp_path / "nolora")]) == 2
    assert run(["negatives", "--shards", str(tmp_path / "nothing*.tar")]) == 2
