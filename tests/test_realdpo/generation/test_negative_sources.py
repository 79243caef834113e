"""--negatives-from: generated (the paper's), noised-real (SDEdit), edited-real (motion-breaking edits), and mixes."""

from __future__ import annotations

import random

import pytest
import torch
from tiny_models import negative_plan, synthetic_clip, write_tiny_shard

from realbase.errors import UserError
from realdpo.configs.common import EDITS, parse_negatives_from
from realdpo.data.cache import LatentCache
from realdpo.data.clips import decode_clip, iter_shard_samples
from realdpo.generation.edits import edit_indices, edit_video
from realdpo.generation.negatives import ensure_cached
from realdpo.models import load_spec

SIZE = dict(frames=9, height=64, width=64, fps=8.0)
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_parse_negatives_from():
    assert parse_negatives_from("generated", 3) == [("generated", 3)]
    assert parse_negatives_from("generated:2,edited-real:1", 3) == [("generated", 2), ("edited-real", 1)]
    assert parse_negatives_from("noised-real, edited-real:1", 4) == [("noised-real", 3), ("edited-real", 1)]
    for bad, match in (("generated:2,edited-real:2", "give --negatives 4"), ("sdedit", "unknown"),
                       ("generated,edited-real", "only one source"), ("generated:0", "at least 1"),
                       ("generated:x", "whole number"), ("generated:1,generated:2", "twice"),
                       ("edited-real:3,generated", "leaving none"), ("", "empty")):
        with pytest.raises(UserError, match=match):
            parse_negatives_from(bad, 3)


def test_edits_break_the_motion_and_keep_the_frames():
    rng = random.Random(0)
    n = 17
    assert edit_indices(n, "reverse", rng) == list(range(n))[::-1]
    for kind in EDITS:
        for seed in range(20):
            idx = edit_indices(n, kind, random.Random(seed))
            assert len(idx) == n and set(idx) <= set(range(n)) and idx != list(range(n)), (kind, seed)
    shuffled = edit_indices(n, "shuffle", random.Random(3))
    assert sorted(shuffled) == list(range(n))  # segments reordered: every frame once
    video = torch.arange(9.0).view(9, 1, 1, 1).expand(9, 3, 2, 2)
    out, kind = edit_video(video, seed=7, edits=("reverse",), keep_first=True)
    assert kind == "reverse" and out[:, 0, 0, 0].tolist() == [0, 8, 7, 6, 5, 4, 3, 2, 1]  # i2v: frame 0 stays
    assert torch.equal(edit_video(video, 5)[0], edit_video(video, 5)[0])  # the seed picks edit and parameters


@pytest.fixture()
def clips(tmp_path):
    shard = write_tiny_shard(tmp_path / "s.tar", [("a-0000", "a person waves", synthetic_clip(seed=1)),
                                                  ("b-0000", "a person jumps", synthetic_clip(seed=2))])
    return list(iter_shard_samples([shard]))


@pytest.fixture()
def spec(tiny_cogvideox_t2v, monkeypatch):
    spec = load_spec(tiny_cogvideox_t2v)
    spec.calls = []
    orig = spec.generate_latents

    def gen(prompts, cond, **kw):
        spec.calls.append(kw)
        return orig(prompts, cond, **kw)

    monkeypatch.setattr(spec, "generate_latents", gen)
    return spec


def test_edited_real_needs_no_sampling(tmp_path, clips, spec):
    cache = LatentCache(tmp_path / "c", spec.fingerprint(), 9, 64, 64, 8.0)
    plan = negative_plan(negatives=2, negatives_from="edited-real", neg_edits=["reverse"])
    s = ensure_cached(spec, clips, cache, plan, **SIZE, progress=False)
    assert s.n_generated == 4 and spec.calls == []
    _, losers = plan.losers.load(cache, clips[0].ref)
    video = decode_clip(clips[0].mp4, 9, 64, 64, 8.0)
    torch.testing.assert_close(losers[:1], spec.encode_videos(video.flip(0)[None]))
    assert s.n_generated == 4 and ensure_cached(spec, clips, cache, plan, **SIZE, progress=False).n_reused == 4


def test_noised_real_denoises_the_real_latent(tmp_path, clips, spec):
    cache = LatentCache(tmp_path / "c", spec.fingerprint(), 9, 64, 64, 8.0)
    plan = negative_plan(negatives=1, negatives_from="noised-real", neg_strength=0.4, neg_steps=5)
    assert ensure_cached(spec, clips, cache, plan, **SIZE, progress=False, batch_size=2).n_generated == 2
    (call,) = spec.calls
    assert call["strength"] == 0.4 and call["steps"] == 5
    real = torch.cat([cache.get_real(c.ref)["latents"] for c in clips])
    assert torch.equal(call["init_latents"], real)  # the real clips' cached latents, noised by the spec
    # another strength is another set of negatives
    assert negative_plan(negatives=1, negatives_from="noised-real", neg_strength=0.6, neg_steps=5).parts[0][0].tag \
        != plan.parts[0][0].tag


def test_a_mix_reads_each_source_under_its_own_key(tmp_path, clips, spec):
    cache = LatentCache(tmp_path / "c", spec.fingerprint(), 9, 64, 64, 8.0)
    gen_only = negative_plan(negatives=1, neg_steps=2)
    ensure_cached(spec, clips, cache, gen_only, **SIZE, progress=False)
    mix = negative_plan(negatives=3, neg_steps=2, negatives_from="generated:1,edited-real:2")
    s = ensure_cached(spec, clips, cache, mix, **SIZE, progress=False)
    assert s.generated == {mix.parts[1][0].tag: 4} and s.reused == {gen_only.parts[0][0].tag: 2}
    _, losers = mix.losers.load(cache, clips[1].ref)
    _, generated = gen_only.losers.load(cache, clips[1].ref)
    assert losers.shape[0] == 3 and torch.equal(losers[:1], generated)  # in the mix's order
