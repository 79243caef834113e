"""pref_accuracy with the tiny CogVideoX model: cached negatives, a saved diffusers LoRA, fixed seeds."""

from __future__ import annotations

import json

import pytest
import torch
from tiny_models import negative_plan, synthetic_clip, tiny_model, write_tiny_shard

from cli.main import run
from realdpo.configs.eval import EvalConfig
from realdpo.evaluation.pref_accuracy import preference_accuracy


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    from realdpo.data.cache import LatentCache
    from realdpo.data.clips import iter_shard_samples
    from realdpo.generation.negatives import ensure_cached
    from realdpo.models import load_spec

    root = tmp_path_factory.mktemp("pref")
    model = tiny_model("cogvideox", "t2v")
    shard = write_tiny_shard(root / "heldout-000000.tar", [(f"clip-{i:04d}", f"a square number {i}",
                                                            synthetic_clip(frames=12, seed=i)) for i in range(2)])
    spec = load_spec(model)
    frames, height, width = spec.default_size()
    cache = LatentCache(root / "cache", spec.fingerprint(), frames, height, width, 8.0)
    ensure_cached(spec, iter_shard_samples([str(shard)]), cache, negative_plan(negatives=2, neg_steps=2),
                  frames=frames, height=height, width=width, fps=8.0, progress=False)

    def save_lora(out, zero: bool):
        torch.manual_seed(1)
        tr = load_spec(model).transformer
        tr.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=spec.lora_target_modules, init_lora_weights=zero))
        if not zero:  # a policy that differs from the reference
            with torch.no_grad():
                for n, p in tr.named_parameters():
                    if "lora" in n:
                        p.normal_(0, 0.2)
        type(spec.pipeline()).save_lora_weights(out, transformer_lora_layers=get_peft_model_state_dict(tr))
        return out

    return {"model": model, "shard": shard, "cache": root / "cache", "lora": save_lora(root / "lora", False),
            "zero_lora": save_lora(root / "zero_lora", True), "root": root}


def _cfg(setup, lora, **kw):
    cfg = EvalConfig(videos=["x=."], pairs=[str(setup["shard"])], model=setup["model"], lora=lora,
                     cache_dir=setup["cache"], negatives=2, neg_steps=2, pref_timesteps=2, **kw)
    cfg.validate()
    return cfg


@pytest.mark.slow
def test_pref_accuracy_is_deterministic_and_counts_every_pair(setup):
    a = preference_accuracy(_cfg(setup, setup["lora"]))
    b = preference_accuracy(_cfg(setup, setup["lora"]))
    assert a["metrics"] == b["metrics"]  # fixed seeds and timesteps
    m = a["metrics"]
    assert m["n_pairs"] == 4 and 0.0 <= m["pref_accuracy"] <= 100.0 and m["pref_margin"] != 0.0
    assert a["settings"]["samples_seen"] == 2 and a["settings"]["samples_not_cached"] == 0


@pytest.mark.slow
def test_an_identity_lora_prefers_nothing(setup):
    m = preference_accuracy(_cfg(setup, setup["zero_lora"]))["metrics"]
    assert m["pref_accuracy"] == 50.0 and m["pref_margin"] == 0.0  # every pair a tie, counted one half


def test_uncached_round_is_skipped_with_a_note(setup):
    res = preference_accuracy(_cfg(setup, setup["lora"], round=2, neg_lora=setup["lora"]))
    assert res["metrics"] == {} and "realdpo negatives" in res["skipped"]
    # negatives made with other settings are not these
    res = preference_accuracy(_cfg(setup, setup["lora"], neg_guidance=4.0))
    assert res["metrics"] == {} and res["settings"]["samples_not_cached"] == 2


@pytest.mark.slow
def test_cli_reports_pref_accuracy_in_the_named_row(setup, tmp_path):
    vids = tmp_path / "dpo"
    vids.mkdir()
    (vids / "0.mp4").write_bytes(synthetic_clip(frames=12, seed=5))
    out = tmp_path / "report"
    assert run(["eval", "--videos", f"dpo={vids}", "--out", str(out), "--workers", "1", "--pairs", str(setup["shard"]),
                "--model", str(setup["model"]), "--lora", str(setup["lora"]), "--cache-dir", str(setup["cache"]),
                "--negatives", "2", "--neg-steps", "2", "--pref-timesteps", "2", "--pref-name", "dpo"]) == 0
    report = json.loads((out / "report.json").read_text())
    row = report["methods"]["dpo"]
    assert {"pref_accuracy", "pref_margin", "motion_smoothness"} <= set(row) and row["n_videos"] == 1
    assert report["settings"]["pref_accuracy"]["row"] == "dpo"


def test_pairs_without_lora_is_one_line_exit_2(setup, capsys):
    assert run(["eval", "--videos", "a=.", "--pairs", str(setup["shard"])]) == 2
    assert "needs --lora" in capsys.readouterr().err
