"""A short RealDPO run from the lab model: on held-out real clips (not trained on) and the lab model's own
negatives for them, the trained policy prefers the real clip (pref_accuracy > 50 %, margin > 0). Before training
the LoRA is zero, so the policy equals the reference: d_k = 0, accuracy 0 and margin 0."""

from __future__ import annotations

from pathlib import Path

import pytest

from realdpo.configs.eval import EvalConfig
from realdpo.configs.negatives import NegativesConfig
from realdpo.configs.train import TrainConfig
from realdpo.evaluation.pref_accuracy import preference_accuracy
from realdpo.generation.negatives import precompute
from realdpo.lab.model import SAMPLE_GUIDANCE, lab_model_path
from realdpo.lab.sets import curated_real_set
from realdpo.training.trainer import train

pytestmark = pytest.mark.slow  # negatives, a training run and preference accuracy on the lab model


def test_short_dpo_run_prefers_held_out_real_clips(tmp_path):
    model, cache = lab_model_path(), tmp_path / "cache"
    neg = dict(model=model, negatives=2, neg_steps=6, neg_guidance=SAMPLE_GUIDANCE, cache_dir=cache)
    shards = curated_real_set(tmp_path / "train", 8, seed=0)
    held = curated_real_set(tmp_path / "held", 4, seed=1)
    run = Path(tmp_path / "run")
    train(TrainConfig(shards=shards, out=run, steps=10, batch_size=4, lr=1e-3, seed=0, checkpoint_every=0,
                      neg_batch_size=8, **neg))
    precompute(NegativesConfig(shards=held, batch_size=8, **neg))
    pref = preference_accuracy(EvalConfig(pairs=held, lora=run / "lora", pref_timesteps=4, **neg))
    m = pref["metrics"]
    assert m["n_pairs"] == 8
    assert m["pref_accuracy"] > 50 and m["pref_margin"] > 0, m
