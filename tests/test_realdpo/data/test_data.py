"""The training stream: shuffled epochs, split by process and by loader worker, exact restart at any batch."""

from __future__ import annotations

import time

import pytest
import torch

from realdpo.data.cache import ClipRef, LatentCache
from realdpo.data.losers import LoserPlan, LoserSet
from realdpo.data.stream import KeyStream, PairStream, collate, pair_loader, process_share, usable

pytestmark = pytest.mark.usefixtures("one_torch_thread")


LATENT = (3, 8, 8, 8)
SET = LoserSet("r1-generated-test", "generated", 3)


def losers(k: int = 3, round: int = 1) -> LoserPlan:
    return LoserPlan((LoserSet(SET.tag, SET.source, k),), seed=0, round=round)


def put_negatives(cache, ref, latents):
    for seed, lat in zip(losers(len(latents)).seeds(ref.key, SET), latents):
        cache.put_negative(ref, SET.tag, seed, lat)


@pytest.fixture(scope="module")
def filled_cache(tmp_path_factory):
    """A cache with 10 clips: real latents + prompt embeddings, and 3 negatives each (round 1)."""
    cache = LatentCache(tmp_path_factory.mktemp("cache"), "fp", 9, 64, 64, 8.0)
    keys = [ClipRef(f"src{i % 3}-{i:04d}", f"{i:04x}") for i in range(10)]
    for i, key in enumerate(keys):
        cache.put_real(key, {"latents": torch.full((1, *LATENT), float(i)), "prompt_embeds": torch.full((1, 5, 4), float(i))})
        put_negatives(cache, key, torch.full((3, *LATENT), -float(i)) - torch.arange(3.0).view(3, 1, 1, 1, 1))
    return cache, keys


def test_key_stream_epochs_are_shuffled_permutations():
    keys = [f"k{i}" for i in range(7)]
    s = KeyStream(keys, batch_size=3, seed=0, rank=0)
    flat = [k for j in range(7) for k in s.batch(j)]  # 21 samples = 3 epochs
    epochs = [flat[0:7], flat[7:14], flat[14:21]]
    assert all(sorted(e) == sorted(keys) for e in epochs)
    assert epochs[0] != epochs[1] and epochs[0] != keys
    assert s.batch(4) == KeyStream(keys, 3, 0, 0).batch(4)  # a pure function of (seed, rank, j)
    assert s.batch(0) != KeyStream(keys, 3, 1, 0).batch(0) or s.batch(1) != KeyStream(keys, 3, 1, 0).batch(1)
    assert s.epoch_of(2) == 0 and s.epoch_of(3) == 1


def test_process_share_splits_samples_not_shards():
    keys = [ClipRef(f"k{i}", "0") for i in range(11)]  # one shard's worth: a shard-level split would starve a process
    shares = [process_share(keys, r, 3) for r in range(3)]
    assert sorted(k.key for k in sum(shares, [])) == sorted(k.key for k in keys)
    assert all(shares) and not set(shares[0]) & set(shares[1])
    assert shares[1] == keys[1::3]  # the clips whose real entries process 1 of 3 encodes in ensure_cached
    assert process_share(keys[:2] + [ClipRef("k0", "1")], 0, 1) == keys[:2]  # a key seen before is dropped


def test_collate_stacks_winners_losers_and_cond(filled_cache):
    cache, keys = filled_cache
    batch = PairStream(cache, keys, losers=losers(2), batch_size=4, seed=0, rank=0)._load((0, keys[:4]))
    assert batch.winners.shape == (4, *LATENT) and batch.losers.shape == (4, 2, *LATENT)
    assert batch.cond["prompt_embeds"].shape == (4, 5, 4) and batch.keys == [k.key for k in keys[:4]]
    assert batch.winners[2].eq(2).all() and batch.losers[2, 1].eq(-3).all()
    assert set(collate([(k.key, *losers().load(cache, k)) for k in keys[:2]]).cond) == {"prompt_embeds"}


def _take(loader, n):
    it = iter(loader)
    return [next(it) for _ in range(n)]


def test_workers_and_restart_give_the_same_sequence(filled_cache):
    cache, keys = filled_cache
    mk = lambda start=0: PairStream(cache, keys, losers=losers(), batch_size=2, seed=5, rank=1, start=start)  # noqa: E731
    ref = _take(pair_loader(mk(), 0), 8)
    two = _take(pair_loader(mk(), 2), 8)
    assert [b.keys for b in two] == [b.keys for b in ref]
    assert all(torch.equal(a.losers, b.losers) for a, b in zip(ref, two))
    resumed = _take(pair_loader(mk(start=5), 2), 3)
    assert [b.keys for b in resumed] == [b.keys for b in ref[5:8]]
    # ranks see different orders of their own shares
    other = _take(pair_loader(PairStream(cache, keys, losers=losers(), batch_size=2, seed=5, rank=0), 0), 5)
    assert [b.keys for b in other] != [b.keys for b in ref[:5]]


def test_usable_clips_and_missing_entries(filled_cache):
    cache, keys = filled_cache
    assert usable(cache, keys + [ClipRef("absent", "0"), ClipRef(keys[0].key, "other")], losers()) == keys
    assert usable(cache, keys, losers(4)) == [] and usable(cache, keys, losers(1, round=2)) == []
    from realbase.errors import UserError

    with pytest.raises(UserError):
        PairStream(cache, [], losers=losers(), batch_size=2, seed=0, rank=0)


def test_stream_from_real_footage(shared_data, tmp_path):
    """A real clip through the shard reader, ensure_cached and the stream: the winner is the clip's latents."""
    from tiny_models import negative_plan, tiny_model, write_tiny_shard

    from realdpo.data.clips import decode_clip, iter_shard_samples
    from realdpo.generation.negatives import ensure_cached
    from realdpo.models import load_spec

    mp4 = (shared_data / "real" / "4873105.mp4").read_bytes()
    caption = (shared_data / "real" / "4873105.txt").read_text().strip()
    shard = write_tiny_shard(tmp_path / "real.tar", [("pexels-4873105-0000", caption, mp4)])
    spec = load_spec(tiny_model("cogvideox", "t2v"))
    cache = LatentCache(tmp_path / "cache", spec.fingerprint(), 9, 64, 64, 8.0)
    samples = list(iter_shard_samples([str(shard)]))
    plan = negative_plan(negatives=2, neg_steps=2)
    ensure_cached(spec, samples, cache, plan, frames=9, height=64, width=64, fps=8.0, progress=False)
    keys = usable(cache, process_share([s.ref for s in samples], 0, 1), plan.losers)
    batch = next(iter(pair_loader(PairStream(cache, keys, losers=plan.losers, batch_size=1, seed=0, rank=0))))
    expect = spec.encode_videos(decode_clip(mp4, 9, 64, 64, 8.0)[None])
    torch.testing.assert_close(batch.winners, expect)
    assert batch.losers.shape == (1, 2, *expect.shape[1:])
    assert not torch.allclose(batch.losers[0, 0], batch.losers[0, 1])  # different seeds per negative


def test_loader_outpaces_the_training_step(filled_cache, tmp_path, record_property):
    """Measures (no timed assertion) batches/s of the loader vs the DPO step of the tiny model at the demo's size."""
    from tiny_models import tiny_model

    from realdpo.method.reference import DisabledAdapterReference
    from realdpo.method.step import ErrorModel, build_inputs, draw_noise, preference_step
    from realdpo.models import load_spec

    spec = load_spec(tiny_model("cogvideox", "t2v"))
    from peft import LoraConfig

    spec.transformer.add_adapter(LoraConfig(r=16, lora_alpha=16, target_modules=spec.lora_target_modules))
    shape = spec.encode_videos(torch.zeros(1, 9, 3, 64, 64)).shape[1:]
    cache = LatentCache(tmp_path / "c", "fp", 9, 64, 64, 8.0)
    keys = [ClipRef(f"k{i}", "0") for i in range(16)]
    cond = spec.encode_prompts(["a person walking"])
    for key in keys:
        cache.put_real(key, {"latents": torch.randn(1, *shape), **cond})
        put_negatives(cache, key, torch.randn(3, *shape))
    it = iter(pair_loader(PairStream(cache, keys, losers=losers(), batch_size=1, seed=0, rank=0), 0))
    next(it)
    t0 = time.perf_counter()
    batches = [next(it) for _ in range(20)]
    t_load = (time.perf_counter() - t0) / 20
    policy, ref = ErrorModel(spec, spec.transformer), DisabledAdapterReference(spec.transformer)
    t0 = 0.0
    for i, b in enumerate(batches[:5]):  # the first step warms up (rotary tables, allocator)
        if i == 1:
            t0 = time.perf_counter()
        noise, t = draw_noise(spec, b.winners, 0.0, 0.5, torch.Generator().manual_seed(0))
        preference_step(policy, ref, spec, build_inputs(b.winners, b.losers, b.cond, noise, t), kind="dpo", beta=5000.0)
    t_step = (time.perf_counter() - t0) / 4
    record_property("loader_vs_step", t_step / t_load)
    print(f"\nloader {t_load * 1e3:.2f} ms/batch, DPO step {t_step * 1e3:.1f} ms/batch: loader {t_step / t_load:.0f}x faster")
