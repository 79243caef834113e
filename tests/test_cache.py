"""LatentCache: safetensors entries keyed by sample, model fingerprint, size, fps and round."""

from __future__ import annotations

import torch

from realdpo.data.cache import LatentCache, default_cache_root


def _cache(root, fp="abc123", frames=9, h=64, w=64, fps=8.0):
    return LatentCache(root, fp, frames, h, w, fps)


def test_real_round_trip(tmp_path):
    c = _cache(tmp_path)
    assert c.get_real("clip-0001") is None
    full = torch.randn(2, 226, 32)
    entry = {"latents": torch.randn(1, 3, 8, 8, 8), "prompt_embeds": full[:1], "image_latents": torch.randn(1, 1, 8, 8, 8).bfloat16()}
    c.put_real("clip-0001", entry)
    got = c.get_real("clip-0001")
    assert set(got) == set(entry)
    for k in entry:
        assert got[k].dtype == entry[k].dtype and torch.equal(got[k], entry[k])
    assert c.has_real("clip-0001")
    assert not list(c.dir.rglob("*.tmp"))


def test_negatives_accumulate_and_need_k(tmp_path):
    c = _cache(tmp_path)
    assert c.get_negatives("k", 1, 1) is None
    a = torch.randn(2, 3, 8, 8, 8)
    c.put_negatives("k", 1, a, [11, 12])
    assert c.get_negatives("k", 1, 3) is None
    assert torch.equal(c.get_negatives("k", 1, 2), a)
    b = torch.randn(2, 3, 8, 8, 8)
    c.put_negatives("k", 1, b, [12, 13])  # seed 12 is already there: only 13 is added
    assert c.negative_seeds("k", 1) == [11, 12, 13]
    got = c.get_negatives("k", 1, 3)
    assert torch.equal(got[:2], a) and torch.equal(got[2], b[1])
    assert c.get_negatives("k", 2, 1) is None  # rounds are separate


def test_keys_are_separated_by_model_size_fps(tmp_path):
    base = _cache(tmp_path)
    base.put_real("x", {"latents": torch.ones(1, 2)})
    for other in (_cache(tmp_path, fp="zzz"), _cache(tmp_path, frames=13), _cache(tmp_path, h=32),
                  _cache(tmp_path, fps=12.5)):
        assert other.get_real("x") is None
    assert _cache(tmp_path).get_real("x") is not None


def test_odd_keys_and_corrupt_files(tmp_path):
    c = _cache(tmp_path)
    c.put_real("a/b c", {"latents": torch.zeros(1, 1)})
    c.put_real("a_b_c", {"latents": torch.ones(1, 1)})
    assert c.get_real("a/b c")["latents"].item() == 0 and c.get_real("a_b_c")["latents"].item() == 1
    c.real_path("bad").write_bytes(b"not safetensors")
    assert c.get_real("bad") is None


def test_default_root(monkeypatch, tmp_path):
    monkeypatch.setenv("REALDPO_CACHE", str(tmp_path / "cc"))
    assert default_cache_root() == tmp_path / "cc"
    assert _cache(None).root == tmp_path / "cc"
