"""LatentCache: safetensors entries named by what they were made from (model, size, fps, clip content, recipe)."""

from __future__ import annotations

import torch

from realdpo.data.cache import ClipRef, LatentCache, default_cache_root
from realdpo.data.clips import ClipSample
from realdpo.data.losers import LoserPlan, LoserSet, negative_seed

A = ClipRef("clip-0001", "00aa")


def _cache(root, fp="abc123", frames=9, h=64, w=64, fps=8.0):
    return LatentCache(root, fp, frames, h, w, fps)


def test_real_round_trip(tmp_path):
    c = _cache(tmp_path)
    assert c.get_real(A) is None
    full = torch.randn(2, 226, 32)
    entry = {"latents": torch.randn(1, 3, 8, 8, 8), "prompt_embeds": full[:1], "image_latents": torch.randn(1, 1, 8, 8, 8).bfloat16()}
    c.put_real(A, entry)
    got = c.get_real(A)
    assert set(got) == set(entry)
    for k in entry:
        assert got[k].dtype == entry[k].dtype and torch.equal(got[k], entry[k])
    assert c.has_real(A)
    assert c.get_real(ClipRef(A.key, "00bb")) is None  # the same key made of something else is another entry
    assert not list(c.dir.rglob("*.tmp"))


def test_one_file_per_negative(tmp_path):
    c = _cache(tmp_path)
    assert c.get_negatives(A, "r1-generated-x", [11]) is None
    a = torch.randn(2, 3, 8, 8, 8)
    c.put_negative(A, "r1-generated-x", 11, a[0])
    c.put_negative(A, "r1-generated-x", 12, a[1:2])
    assert torch.equal(c.get_negatives(A, "r1-generated-x", [12, 11]), a[[1, 0]])  # in the order asked
    assert c.get_negatives(A, "r1-generated-x", [11, 13]) is None  # any missing: None
    assert c.get_negatives(A, "r1-generated-y", [11]) is None  # another recipe is another folder
    assert sorted(p.name for p in c.negatives_dir("r1-generated-x").iterdir()) == \
        [f"{A.name}-s11.safetensors", f"{A.name}-s12.safetensors"]
    c.write_recipe("r1-generated-x", {"steps": 50})
    assert (c.negatives_dir("r1-generated-x") / "recipe.json").is_file()


def test_loser_plan_reads_sets_in_order(tmp_path):
    c = _cache(tmp_path)
    plan = LoserPlan((LoserSet("gen", "generated", 2), LoserSet("edit", "edited-real", 1)), seed=3)
    assert plan.k == 3 and not plan.complete(c, A)
    c.put_real(A, {"latents": torch.zeros(1, 2)})
    for part, value in ((plan.sets[0], 1.0), (plan.sets[1], 2.0)):
        for i, s in enumerate(plan.seeds(A.key, part)):
            c.put_negative(A, part.tag, s, torch.full((1, 2), value + i / 4))
    assert plan.complete(c, A)
    real, losers = plan.load(c, A)
    assert losers[:, 0].tolist() == [1.0, 1.25, 2.0] and real["latents"].shape == (1, 2)
    # the paper's generated negatives keep their seeds; other sources draw their own
    assert plan.seeds(A.key, plan.sets[0]) == [negative_seed(3, A.key, i, 1) for i in range(2)]
    assert plan.seeds(A.key, plan.sets[1])[0] != plan.seeds(A.key, plan.sets[0])[0]


def test_old_temporaries_are_swept(tmp_path):
    import os

    c = _cache(tmp_path)
    c.put_real(A, {"latents": torch.zeros(1, 1)})
    old, new = c.real_path(A).with_name(".x.safetensors.ab.tmp"), c.real_path(A).with_name(".y.safetensors.cd.tmp")
    old.write_bytes(b"torn")
    new.write_bytes(b"being written")
    os.utime(old, (0, 0))
    assert c.sweep_temporaries() == 1 and not old.exists() and new.exists() and c.has_real(A)


def test_prompts(tmp_path):
    c = _cache(tmp_path)
    assert c.get_prompt("") is None
    c.put_prompt("", {"prompt_embeds": torch.ones(1, 4, 2)})
    assert torch.equal(c.get_prompt("")["prompt_embeds"], torch.ones(1, 4, 2)) and c.get_prompt("blurry") is None


def test_keys_are_separated_by_model_size_fps(tmp_path):
    base = _cache(tmp_path)
    base.put_real(A, {"latents": torch.ones(1, 2)})
    for other in (_cache(tmp_path, fp="zzz"), _cache(tmp_path, frames=13), _cache(tmp_path, h=32),
                  _cache(tmp_path, fps=12.5)):
        assert other.get_real(A) is None
    assert _cache(tmp_path).get_real(A) is not None


def test_content_id_follows_what_the_clip_is_made_of():
    meta = {"source_sha256": "ab" * 32, "start_frame": 0, "end_frame": 48, "curator": {"config_hash": "c0ffee"}}
    base = ClipSample("v-0000", "a person waves", b"mp4 bytes", meta=meta)
    same = ClipSample("v-0000", "a person waves", b"mp4 bytes", meta=dict(meta), jpg=b"unused")
    assert base.content_id == same.content_id and base.ref == same.ref
    changed = [ClipSample("v-0001", base.caption, base.mp4, meta=meta),
               ClipSample(base.key, "a person jumps", base.mp4, meta=meta),
               ClipSample(base.key, base.caption, b"mp4 byteS", meta=meta),
               ClipSample(base.key, base.caption, base.mp4, meta={**meta, "source_sha256": "cd" * 32}),
               ClipSample(base.key, base.caption, base.mp4, meta={**meta, "end_frame": 47}),
               ClipSample(base.key, base.caption, base.mp4, meta={**meta, "start_frame": 1}),
               ClipSample(base.key, base.caption, base.mp4, meta={**meta, "curator": {"config_hash": "beef"}})]
    ids = {s.content_id for s in changed}
    assert len(ids) == len(changed) and base.content_id not in ids


def test_odd_keys_and_corrupt_files(tmp_path):
    c = _cache(tmp_path)
    c.put_real(ClipRef("a/b c", "1"), {"latents": torch.zeros(1, 1)})
    c.put_real(ClipRef("a_b_c", "1"), {"latents": torch.ones(1, 1)})
    assert c.get_real(ClipRef("a/b c", "1"))["latents"].item() == 0
    assert c.get_real(ClipRef("a_b_c", "1"))["latents"].item() == 1
    bad = ClipRef("bad", "1")
    c.real_path(bad).write_bytes(b"not safetensors")
    assert c.get_real(bad) is None


def test_default_root(monkeypatch, tmp_path):
    monkeypatch.setenv("REALDPO_CACHE", str(tmp_path / "cc"))
    assert default_cache_root() == tmp_path / "cc"
    assert _cache(None).root == tmp_path / "cc"
