"""Training sees what sampling sees: negatives for Wan2.2-TI2V-5B image-to-video, re-encoded losers, each family's
beta, gradient sync under nested no_sync, and cache entries told apart by dtype and fp8 storage. Each test fails on
the code before its fix. (Transformer-input parity with the pipelines: test_parity.py.)"""

from __future__ import annotations

import contextlib
import json

import pytest
import torch
from tiny_models import synthetic_clip, tiny_model, write_tiny_shard

from realdpo.configs.negatives import NegativesConfig
from realdpo.configs.train import TrainConfig
from realdpo.data.cache import LatentCache
from realdpo.data.clips import iter_shard_samples
from realdpo.generation.negatives import precompute, reencode
from realdpo.generation.recipes import NegativePlan
from realdpo.models import load_spec

pytestmark = pytest.mark.usefixtures("one_torch_thread", "fresh_accelerate")


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> list[str]:
    root = tmp_path_factory.mktemp("shards")
    clips = [(f"synth-{i:04d}", f"a yellow square moving right, take {i}", synthetic_clip(frames=24, seed=i))
             for i in range(2)]
    return [str(write_tiny_shard(root / "realaction-000000.tar", clips))]


def _negatives(shards, cache, **kw) -> NegativesConfig:
    base = dict(shards=shards, cache_dir=cache, negatives=2, neg_steps=2, frames=9, height=64, width=64)
    return NegativesConfig(**{**base, **kw})


def test_ti2v_image_to_video_negatives_come_from_the_cache(shards, tmp_path):
    """Wan2.2-TI2V-5B --task i2v: negatives are made from the cached first-frame latents with no image at hand. Every
    clip used to fail (the pipeline was handed no image), so training found no usable clips."""
    model = tiny_model("wan", "t2v", "2.2-ti2v")
    summary = precompute(_negatives(shards, tmp_path / "c", model=model, task="i2v",
                                    negatives_from="generated:1,noised-real:1"))
    assert not summary.failed and summary.n_generated == 4  # 2 clips x (1 generated + 1 noised-real)
    spec = load_spec(model, task="i2v")
    cache = LatentCache(tmp_path / "c", spec.fingerprint(), 9, 64, 64, 24.0)
    ref = list(iter_shard_samples(shards))[0].ref
    real = cache.get_real(ref)
    for recipe, _ in NegativePlan.from_options(_negatives(shards, None, negatives_from="generated:1,noised-real:1"),
                                               spec).parts:
        (path,) = (cache.dir / "neg" / recipe.tag).glob(f"{ref.name}-s*.safetensors")
        negative = cache.get_negatives(ref, recipe.tag, [int(path.stem.rsplit("-s", 1)[1])])
        assert negative.shape == real["latents"].shape and torch.isfinite(negative).all()


def test_reencoded_negatives_go_through_the_winners_path_and_are_cached_apart(shards, tmp_path):
    model = tiny_model("cogvideox", "t2v")
    cache_dir = tmp_path / "c"
    for mode in ("raw", "reencode"):
        precompute(_negatives(shards, cache_dir, model=model, negatives=1, neg_latents=mode))
    spec = load_spec(model)
    plans = {mode: NegativePlan.from_options(_negatives(shards, None, negatives=1, neg_latents=mode), spec)
             for mode in ("raw", "reencode")}
    (raw_recipe, _), (re_recipe, _) = plans["raw"].parts[0], plans["reencode"].parts[0]
    assert raw_recipe.tag != re_recipe.tag and "latents" not in raw_recipe.settings()
    cache = LatentCache(cache_dir, spec.fingerprint(), 9, 64, 64, 8.0)
    ref = list(iter_shard_samples(shards))[0].ref
    (path,) = (cache.dir / "neg" / raw_recipe.tag).glob(f"{ref.name}-s*.safetensors")
    seed = int(path.stem.rsplit("-s", 1)[1])
    raw, again = cache.get_negatives(ref, raw_recipe.tag, [seed]), cache.get_negatives(ref, re_recipe.tag, [seed])
    torch.testing.assert_close(again, reencode(spec, raw))  # the same sample, decoded to 8 bits and encoded
    assert not torch.allclose(again, raw, atol=1e-3)
    with pytest.raises(Exception, match="neg-latents"):
        _negatives(shards, None, neg_latents="mp4").validate_negative_options()


def _train(shards, cache, out, model, **kw):
    from realdpo.training.trainer import train

    base = dict(shards=shards, out=out, model=model, cache_dir=cache, steps=1, negatives=1, neg_steps=2, lr=1e-3,
                lora_rank=4, checkpoint_every=0, seed=0)
    return train(TrainConfig(**{**base, **kw}))


@pytest.mark.slow
def test_each_family_has_its_beta_and_train_config_records_it(shards, tmp_path):
    assert load_spec(tiny_model("cogvideox", "t2v")).default_beta() == 5000.0
    assert load_spec(tiny_model("wan", "t2v")).default_beta() == 500.0
    _train(shards, tmp_path / "c", tmp_path / "run", tiny_model("wan", "t2v"))
    recorded = json.loads((tmp_path / "run" / "train_config.json").read_text())
    assert recorded["beta"] is None and recorded["resolved"]["beta"] == 500.0
    _train(shards, tmp_path / "c", tmp_path / "run2", tiny_model("wan", "t2v"), beta=123.0)
    assert json.loads((tmp_path / "run2" / "train_config.json").read_text())["resolved"]["beta"] == 123.0


@pytest.mark.slow
def test_accumulating_micro_batches_never_sync_under_nested_no_sync(shards, tmp_path, monkeypatch):
    """FSDP2's no_sync turns gradient sync back on when it exits, even inside another no_sync. The chunks of a
    micro-batch that accumulates must therefore not open their own: its last chunk used to reduce-scatter."""
    from accelerate import Accelerator

    state = {"sync": True}
    synced: list[bool] = []

    @contextlib.contextmanager
    def no_sync(self, model=None):
        state["sync"] = False
        try:
            yield
        finally:
            state["sync"] = True  # as FSDP2's set_requires_gradient_sync(True) does on exit

    backward = Accelerator.backward

    def recording_backward(self, loss, **kw):
        synced.append(state["sync"])
        return backward(self, loss, **kw)

    monkeypatch.setattr(Accelerator, "no_sync", no_sync)
    monkeypatch.setattr(Accelerator, "backward", recording_backward)
    _train(shards, tmp_path / "c", tmp_path / "run", tiny_model("cogvideox", "t2v"), negatives=2, grad_accum=2,
           chunk_size=1)
    # 3 rows (winner + 2 losers) per micro-batch, one backward each: only the very last one syncs
    assert synced == [False] * 5 + [True]


def test_cache_entries_are_told_apart_by_dtype_and_fp8_storage(tmp_path):
    model = tiny_model("cogvideox", "t2v")
    fp32, bf16 = load_spec(model), load_spec(model, dtype=torch.bfloat16)
    assert fp32.fingerprint() != bf16.fingerprint()
    assert load_spec(model).fingerprint() == fp32.fingerprint()  # stable
    from realdpo.training.trainer import Trainer

    tags = {}
    for fp8 in (False, True):
        trainer = Trainer(TrainConfig(shards=["unused"], out=tmp_path / "run", model=model, fp8_base=fp8))
        tags[fp8] = {recipe.tag for recipe, _ in trainer.negative_plan(fp32, 1).parts}
    assert tags[False].isdisjoint(tags[True])


def test_a_run_with_other_neg_options_says_which_differ(shards, tmp_path, caplog):
    """`realdpo negatives` and `realdpo train` given different --neg-* options: the cache was silently unused."""
    import logging

    model, cache = tiny_model("cogvideox", "t2v"), tmp_path / "c"
    precompute(_negatives(shards, cache, model=model, negatives=1, neg_steps=2))
    for _ in range(2):  # the second time the run's own negatives are there: nothing to say
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            precompute(_negatives(shards, cache, model=model, negatives=1, neg_steps=3, neg_latents="reencode"))
        lines = [r.getMessage() for r in caplog.records if "no cached generated negatives" in r.getMessage()]
        if _ == 0:
            assert len(lines) == 1 and "--neg-steps 2 (this run: 3)" in lines[0], lines
            assert '--neg-latents "raw" (this run: "reencode")' in lines[0]
        else:
            assert not lines
