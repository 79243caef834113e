"""Clip decoding, shard reading, and the negatives cache filled by ensure_cached / `realdpo negatives`."""

from __future__ import annotations

import pytest
import torch
from tiny_models import negative_plan, synthetic_clip, tiny_model, write_tiny_shard

from realbase.errors import UserError
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
from realdpo.data.losers import negative_seed
from realdpo.generation.negatives import ensure_cached
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
    (tmp_path / "junk.tar").write_bytes(b"junk" * 100)  # a corrupt shard is skipped (test_shard_reader.py)
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


def _losers(cache, sample, plan):
    pair = plan.losers.load(cache, sample.ref)
    return None if pair is None else pair[1]


def test_ensure_cached_generates_once(tmp_path, tiny_cogvideox_t2v, counted):
    spec = load_spec(tiny_cogvideox_t2v)
    calls = counted(spec)
    samples = _samples(tmp_path)
    a, b = samples[0], samples[1]
    cache = LatentCache(tmp_path / "cache", spec.fingerprint(), 9, 64, 64, 8.0)
    kw = dict(**SIZE, progress=False, batch_size=3)
    opts = dict(neg_steps=2, neg_guidance=4.0, seed=5)
    plan2 = negative_plan(negatives=2, **opts)
    s = ensure_cached(spec, samples, cache, plan2, **kw)
    assert s.n_generated == 4 and s.n_reused == 0
    assert [len(c) for c in calls] == [2, 2]  # a unit: negative i of up to batch_size clips, one pipeline call
    assert set(s.skipped) == {"short-0000", "corrupt-0000"} and not s.failed
    real = cache.get_real(a.ref)
    assert set(real) == {"latents", "prompt_embeds"} and real["latents"].shape == (1, 3, 8, 8, 8)
    neg = _losers(cache, a, plan2)
    assert neg.shape == (2, 3, 8, 8, 8) and not torch.equal(neg[0], neg[1])
    assert cache.get_real(samples[2].ref) is None and cache.get_real(samples[3].ref) is None
    assert plan2.losers.seeds("b-0000", plan2.losers.sets[0]) == [negative_seed(5, "b-0000", i, 1) for i in range(2)]

    calls.clear()
    s = ensure_cached(spec, samples, cache, plan2, **kw)
    assert s.n_generated == 0 and s.n_reused == 4 and calls == []  # everything cached
    plan3 = negative_plan(negatives=3, **opts)
    assert plan3.losers.sets[0].tag == plan2.losers.sets[0].tag  # K is not part of a negative's name
    assert ensure_cached(spec, samples, cache, plan3, **kw).n_generated == 2 and [len(c) for c in calls] == [2]
    assert torch.equal(_losers(cache, a, plan3)[:2], neg)  # raising K only adds the new ones

    # the same seed gives the same negative however it is batched
    other = LatentCache(tmp_path / "cache2", spec.fingerprint(), 9, 64, 64, 8.0)
    ensure_cached(spec, samples[:1], other, negative_plan(negatives=1, **opts), **{**kw, "batch_size": 1})
    assert torch.allclose(_losers(other, a, negative_plan(negatives=1, **opts)), neg[:1], atol=1e-5)

    # a later round with a given transformer goes to its own entries
    r2 = negative_plan(negatives=1, round=2, weights="lora:test", **opts)
    assert ensure_cached(spec, samples, cache, r2, transformer=spec.transformer, **kw).n_generated == 2
    assert _losers(cache, b, r2) is not None


def test_cache_entries_follow_the_clip_and_the_settings(tmp_path, tiny_cogvideox_t2v):
    """Before the fix the cache was keyed by sample key, model, size, fps and round only: each second call below
    reported 0 generated and trained on the first call's latents, prompt embeddings and negatives."""
    spec = load_spec(tiny_cogvideox_t2v)
    cache = LatentCache(tmp_path, spec.fingerprint(), 9, 64, 64, 8.0)
    kw = dict(**SIZE, progress=False)
    base = dict(negatives=1, neg_steps=2, neg_guidance=4.0)
    first = ClipSample("v-0000", "a person waves", synthetic_clip(seed=1))
    assert ensure_cached(spec, [first], cache, negative_plan(**base), **kw).n_generated == 1
    # another dataset with the same file names, or a re-curation that changed the clip and its caption
    second = ClipSample("v-0000", "a person jumps", synthetic_clip(seed=2))
    assert ensure_cached(spec, [second], cache, negative_plan(**base), **kw).n_generated == 1
    entry = cache.get_real(second.ref)
    torch.testing.assert_close(entry["prompt_embeds"], spec.encode_prompts(["a person jumps"])["prompt_embeds"])
    torch.testing.assert_close(entry["latents"], spec.encode_videos(decode_clip(second.mp4, 9, 64, 64, 8.0)[None]))
    recaptioned = ClipSample("v-0000", "a person waves twice", first.mp4)
    assert ensure_cached(spec, [recaptioned], cache, negative_plan(**base), **kw).n_generated == 1
    bounds = ClipSample("v-0000", first.caption, first.mp4, meta={"start_frame": 3, "end_frame": 27})
    assert ensure_cached(spec, [bounds], cache, negative_plan(**base), **kw).n_generated == 1
    # the generation settings name the negatives
    for change in (dict(neg_steps=3), dict(neg_guidance=6.0), dict(neg_prompt="blurry, static"),
                   dict(neg_sampler="multistep"), dict(seed=1)):
        assert ensure_cached(spec, [first], cache, negative_plan(**{**base, **change}), **kw).n_generated == 1, change
    assert ensure_cached(spec, [first], cache, negative_plan(**base), **kw).n_generated == 0  # unchanged: reused
    # edited-real negatives never sample: the sampler settings do not name them
    edited = negative_plan(**{**base, "negatives_from": "edited-real"})
    assert edited.parts[0][0].tag == negative_plan(**{**base, "neg_steps": 7, "negatives_from": "edited-real"}).parts[0][0].tag


def test_full_cache_needs_no_text_encoder(tmp_path, tiny_cogvideox_t2v, monkeypatch):
    """The negative prompt is encoded once per run and cached, like the captions."""
    spec = load_spec(tiny_cogvideox_t2v)
    samples = _samples(tmp_path)[:2]
    cache = LatentCache(tmp_path / "cache", spec.fingerprint(), 9, 64, 64, 8.0)
    encoded = []
    forward = spec.text_encoder.forward

    def counting(*a, **kw):
        encoded.append(kw.get("input_ids", a[0] if a else None).shape[0])
        return forward(*a, **kw)

    monkeypatch.setattr(spec.text_encoder, "forward", counting)
    kw = dict(**SIZE, progress=False, batch_size=1)
    ensure_cached(spec, samples, cache, negative_plan(negatives=2, neg_steps=2, neg_guidance=4.0), **kw)
    assert encoded == [1, 1, 1]  # two captions and the negative prompt, for 4 pipeline calls

    def no_text_encoder(*a, **kw):
        raise AssertionError("the text encoder ran")

    monkeypatch.setattr(spec.text_encoder, "forward", no_text_encoder)
    s = ensure_cached(spec, samples, cache, negative_plan(negatives=3, neg_steps=2, neg_guidance=4.0), **kw)
    assert s.n_generated == 2 and not s.failed


def test_a_failing_clip_does_not_stop_the_run(tmp_path, tiny_cogvideox_t2v, monkeypatch):
    spec = load_spec(tiny_cogvideox_t2v)
    samples = _samples(tmp_path)[:2]
    cache = LatentCache(tmp_path / "cache", spec.fingerprint(), 9, 64, 64, 8.0)
    orig = spec.generate_latents

    def flaky(prompts, cond, **kw):
        if "a person jumps" in prompts:
            raise RuntimeError("CUDA out of memory (simulated)")
        return orig(prompts, cond, **kw)

    monkeypatch.setattr(spec, "generate_latents", flaky)
    plan = negative_plan(negatives=1, neg_steps=2)
    s = ensure_cached(spec, samples, cache, plan, **SIZE, progress=False, batch_size=2)
    assert s.n_generated == 1 and s.failed == {"b-0000": "RuntimeError: CUDA out of memory (simulated)"}
    assert _losers(cache, samples[0], plan) is not None and _losers(cache, samples[1], plan) is None
    monkeypatch.setattr(spec, "generate_latents", orig)
    s = ensure_cached(spec, samples, cache, plan, **SIZE, progress=False, batch_size=2)
    assert s.n_generated == 1 and s.n_reused == 1 and not s.failed  # the rerun makes only the missing one


@pytest.mark.slow
@pytest.mark.parametrize("family", ["cogvideox", "wan"])
def test_ensure_cached_image_to_video(tmp_path, family, monkeypatch):
    spec = load_spec(tiny_model(family, "i2v"))
    samples = _samples(tmp_path)[:2]
    cache = LatentCache(tmp_path / "cache", spec.fingerprint(), 9, 64, 64, 8.0)
    plan = negative_plan(negatives=2, neg_steps=2, neg_guidance=4.0)
    encodes = []
    encode = spec.vae.encode
    monkeypatch.setattr(spec.vae, "encode", lambda x, *a, **k: encodes.append(tuple(x.shape)) or encode(x, *a, **k))
    assert ensure_cached(spec, samples, cache, plan, **SIZE, progress=False).n_generated == 4
    # the VAE encoded each clip and its first frame once, never again for the 4 negatives
    assert len(encodes) == 4
    real = cache.get_real(samples[0].ref)
    cond = {k: v for k, v in real.items() if k != "latents"}
    assert set(cond) == ({"prompt_embeds", "image_latents"} if family == "cogvideox"
                         else {"prompt_embeds", "image_condition", "image_embeds"})
    neg = _losers(cache, samples[0], plan)
    assert neg.shape == (2, *real["latents"].shape[1:])
    # the cached entry is all per_sample_error needs
    x = torch.cat([real["latents"], neg])
    err = spec.per_sample_error(spec.transformer, x, torch.randn_like(x), spec.sample_timesteps(3, 0, 0.5),
                                {k: v.expand(3, *v.shape[1:]) for k, v in cond.items()})
    assert err.shape == (3,) and torch.isfinite(err).all()


def test_negatives_command(tmp_path, tiny_cogvideox_t2v, capsys):
    from cli.main import run

    samples = _samples(tmp_path)
    args = ["negatives", "--shards", str(tmp_path / "shards" / "*.tar"), "--model", str(tiny_cogvideox_t2v),
            "--out", str(tmp_path / "cache"), "--negatives", "1", "--neg-steps", "2", "--frames", "9",
            "--height", "64", "--width", "64", "--batch-size", "2"]
    assert run(args) == 0
    assert "2 negatives generated, 0 reused, 1 clips skipped" in capsys.readouterr().err
    spec = load_spec(tiny_cogvideox_t2v)
    cache = LatentCache(tmp_path / "cache", spec.fingerprint(), 9, 64, 64, 8.0)
    plan = negative_plan(negatives=1, neg_steps=2)
    assert _losers(cache, samples[0], plan) is not None and _losers(cache, samples[1], plan) is not None
    assert run(args[:-2] + ["--frames", "8"]) == 2  # 8 is not 8k+1: one clear line, exit 2
    assert run(args + ["--negatives-from", "generated:2"]) == 2  # 2 asked for, --negatives 1
    assert "give --negatives 2" in capsys.readouterr().err

    # round 2 from a trained LoRA (diffusers format, as `realdpo train` writes OUT/lora)
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    from realdpo.generation.recipes import lora_weights_id

    spec.transformer.add_adapter(LoraConfig(r=2, lora_alpha=2, target_modules=spec.lora_target_modules,
                                            init_lora_weights=False))
    type(spec.pipeline()).save_lora_weights(tmp_path / "lora", get_peft_model_state_dict(spec.transformer))
    assert run(args + ["--round", "2", "--lora", str(tmp_path / "lora")]) == 0
    r2 = negative_plan(negatives=1, neg_steps=2, round=2, weights=lora_weights_id(tmp_path / "lora"))
    assert _losers(cache, samples[0], r2) is not None and _losers(cache, samples[1], r2) is not None
    assert run(args + ["--round", "2", "--lora", str(tmp_path / "nolora")]) == 2
    assert run(["negatives", "--shards", str(tmp_path / "nothing*.tar")]) == 2


@pytest.mark.slow
def test_non_finite_negatives_stop_the_run(tmp_path, tiny_cogvideox_t2v, capsys):
    """A model that generates NaN (a saved tiny pipeline with one NaN weight in its output projection): `realdpo
    negatives` stops with one line and caches none of them, `realdpo sample` writes no video (before, the NaN
    latents were cached as negatives, and sample wrote a video of them)."""
    import shutil

    from safetensors.torch import load_file, save_file

    from cli.main import run

    model = tmp_path / "nan-model"
    shutil.copytree(tiny_cogvideox_t2v, model)
    weights_file = model / "transformer" / "diffusion_pytorch_model.safetensors"
    weights = load_file(weights_file)
    weights["proj_out.weight"][0, 0] = float("nan")
    save_file(weights, weights_file, metadata={"format": "pt"})
    samples = _samples(tmp_path)
    args = ["negatives", "--shards", str(tmp_path / "shards" / "*.tar"), "--model", str(model),
            "--out", str(tmp_path / "cache"), "--negatives", "1", "--neg-steps", "2", "--frames", "9",
            "--height", "64", "--width", "64"]
    capsys.readouterr()
    assert run(args) == 2
    err = capsys.readouterr().err
    assert [line for line in err.splitlines() if "non-finite" in line] == [
        f"Error: {model}: the generated negatives of a-0000 came out non-finite (NaN or inf) with 2 steps "
        "at guidance 6; none of them was cached"] and "Traceback" not in err
    spec = load_spec(model)
    cache = LatentCache(tmp_path / "cache", spec.fingerprint(), 9, 64, 64, 8.0)
    assert cache.get_real(samples[0].ref) is not None  # the real clips' entries stay
    assert _losers(cache, samples[0], negative_plan(negatives=1, neg_steps=2)) is None
    # `realdpo sample` on it: one line, no video
    out = tmp_path / "nan.mp4"
    assert run(["sample", "--prompt", "a jump", "--model", str(model), "--steps", "2", "--out", str(out)]) == 2
    assert "the generated latents are non-finite (NaN or inf); no video was written" in capsys.readouterr().err
    assert not out.exists()
