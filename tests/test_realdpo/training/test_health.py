"""The training health view: per-step metrics, the warnings and when they fire, stopping on divergence, the summary."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tiny_models import lora_transformer, synthetic_clip, tiny_model, write_tiny_shard

from realdpo.configs.train import TrainConfig
from realdpo.method.losses import pair_stats, stats_means
from realdpo.training.health import HealthMonitor
from realdpo.training.trainer import train

pytestmark = pytest.mark.usefixtures("one_torch_thread", "fresh_accelerate")


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> list[str]:
    root = tmp_path_factory.mktemp("shards")
    clips = [(f"synth-{i:04d}", f"a yellow square moving right, take {i}", synthetic_clip(frames=20, seed=i)) for i in range(4)]
    write_tiny_shard(root / "realaction-000000.tar", clips)
    return [str(root / "realaction-*.tar")]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("latents")


def _cfg(shards, cache_dir, out, **kw) -> TrainConfig:
    base = dict(shards=shards, out=out, model=tiny_model("cogvideox", "t2v"), cache_dir=cache_dir, steps=6, negatives=2,
                neg_steps=2, beta=500.0, lr=1e-3, lora_rank=4, checkpoint_every=0, seed=0)
    return TrainConfig(**{**base, **kw})


def _rows(out: Path) -> list[dict]:
    # strict JSON: a bare NaN or Infinity raises
    def refuse(name):
        raise ValueError(f"not strict JSON: {name}")

    return [json.loads(line, parse_constant=refuse) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_pair_stats_buckets_ties_and_saturation():
    pw, rw = torch.tensor([1.0, 1.0, 2.0]), torch.tensor([1.0, 1.25, 1.75])
    pl, rl = torch.tensor([[1.0, 1.0], [1.5, 0.75], [2.0, 2.5]]), torch.tensor([[1.0, 1.0], [1.0, 1.0], [2.0, 2.0]])
    groups = {"a": torch.tensor([True, False, False]), "b": torch.tensor([False, True, True]),
              "empty": torch.zeros(3, dtype=torch.bool)}
    m = stats_means(pair_stats(pw, rw, pl, rl, beta=100.0, groups=groups))
    d = (pw - rw)[:, None] - (pl - rl)  # [[0, 0], [-0.75, 0], [0.25, -0.25]], exactly
    assert m["accuracy_a"] == 0.5 and m["ties"] == 3 / 6  # clip 0: both pairs tied, each counted one half
    assert m["accuracy"] == (0.5 + 0.5 + 1 + 0.5 + 0 + 1) / 6
    assert m["accuracy_b"] == 2.5 / 4
    assert m["reward_margin_b"] == pytest.approx((-50 * d[1:]).mean().item(), rel=1e-6)
    assert m["err_diff_w"] == 0 and m["err_diff_l"] == pytest.approx((pl - rl).mean().item(), rel=1e-6)
    # logits -(β/2) d = 37.5 and 12.5 have σ > 0.99: saturated; 0 and -12.5 are not
    assert m["saturated"] == 2 / 6
    assert "accuracy_empty" not in m  # a group with no pairs this step has no value, not 0


def test_the_step_syncs_the_host_once(monkeypatch):
    """preference_step with raw_stats never reads a tensor back (issue 21: ~10 .item() per chunk before)."""

    from realdpo.method.reference import DisabledAdapterReference
    from realdpo.method.step import ErrorModel, build_inputs, preference_step
    from realdpo.models import load_spec

    spec = load_spec(tiny_model("cogvideox", "t2v"))
    tr = lora_transformer(spec)
    frames, height, width = spec.default_size()
    g = torch.Generator().manual_seed(0)
    shape = spec.latent_shape(frames, height, width)
    winners, losers = torch.randn(2, *shape, generator=g), torch.randn(2, 2, *shape, generator=g)
    cond = spec.encode_prompts(["a", "b"])
    noise, t = torch.randn(2, *shape, generator=g), spec.sample_timesteps(2, 0.0, 0.5, generator=g)
    reads = []
    for name in ("item", "tolist", "__float__", "__bool__"):
        original = getattr(torch.Tensor, name)

        def counting(self, *a, _original=original, _name=name, **k):
            reads.append(_name)
            return _original(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, counting)
    for chunk in (None, 1):
        reads.clear()
        stats = preference_step(ErrorModel(spec, tr), DisabledAdapterReference(tr), spec,
                                build_inputs(winners, losers, cond, noise, t), kind="dpo", beta=500.0,
                                chunk_size=chunk, raw_stats=True, groups={"all": torch.ones(2, dtype=torch.bool)})
        assert reads == [] and all(isinstance(s, torch.Tensor) for pair in stats.values() for s in pair)
        stats_means(stats)
        assert reads == ["tolist"]


def test_identical_losers_give_accuracy_one_half_and_a_warning(shards, cache_dir, tmp_path, monkeypatch, capsys):
    """Losers equal to their winners: every pair is a tie, the loss never moves, and the run says why."""
    import realdpo.method.step as step

    real_build = step.build_inputs

    def losers_are_winners(winners, losers, cond, noise, timesteps):
        same = winners.unsqueeze(1).expand(-1, losers.shape[1], *winners.shape[1:]).clone()
        return real_build(winners, same, cond, noise, timesteps)

    monkeypatch.setattr(step, "build_inputs", losers_are_winners)
    out = tmp_path / "same"
    result = train(_cfg(shards, cache_dir, out))
    rows = _rows(out)
    assert all(r["accuracy"] == 0.5 and r["ties"] == 1.0 and r["reward_margin"] == 0 for r in rows)
    assert set(result.warnings) == {"stuck"}
    message = result.warnings["stuck"]
    assert message.startswith("step 3: preference accuracy has stayed at 0.5") and "identical" in message
    text = capsys.readouterr().out
    assert text.count("warning: step 3: preference accuracy has stayed at 0.5") == 1  # once, on one line
    assert "health" in text and f"LoRA: {out / 'lora'}" in text and "warnings (1):" in text


def test_saturation_and_likelihood_displacement_warn(shards, cache_dir, tmp_path, capsys):
    """β and lr far too large: accuracy 1 within a step, every pair saturated, and the real clips' error rises
    above the reference's."""
    out = tmp_path / "sat"
    result = train(_cfg(shards, cache_dir, out, beta=50000.0, lr=1.0, steps=8))
    rows = _rows(out)
    assert rows[-1]["accuracy"] == 1.0 and rows[-1]["saturated"] == 1.0
    assert sum(r["err_diff_w"] for r in rows[1:]) > 0
    assert set(result.warnings) == {"saturated", "displacement"}
    assert "saturated" in result.warnings["saturated"] and "displacement" in result.warnings["displacement"]
    warned = [r for r in rows if r.get("warnings")]
    assert len(warned) >= 1 and all(m.startswith(f"step {r['step']}:") for r in warned for m in r["warnings"].values())
    for key in ("accuracy_q1", "accuracy_q4", "reward_margin_q2", "err_diff_l", "grad_norm", "saturated"):
        assert any(key in r for r in rows), key
    text = capsys.readouterr().out
    assert "warning: step" in text and "saturated pairs" in text
    assert (out / "training.png").read_bytes()[:4] == b"\x89PNG"


def test_a_healthy_run_warns_nothing(shards, cache_dir, tmp_path):
    result = train(_cfg(shards, cache_dir, tmp_path / "ok", beta=500.0, lr=1e-3, steps=6))
    assert result.warnings == {}


def test_divergence_stops_at_the_step_with_one_line(shards, cache_dir, tmp_path, capsys, monkeypatch):
    """Weights that blow up in step 1's update (as --lr 1e8 did before --lr was capped at 1) make the loss NaN at
    step 2: exit 2, one line naming the step, the step-1 checkpoint kept, no LoRA, and metrics.jsonl still strict
    JSON."""
    from cli.main import run

    adamw_step, updates = torch.optim.AdamW.step, []

    def exploding_step(self, *args, **kwargs):
        out = adamw_step(self, *args, **kwargs)
        updates.append(1)
        if len(updates) == 1:  # finite weights whose forward pass overflows
            with torch.no_grad():
                for group in self.param_groups:
                    for p in group["params"]:
                        p.add_(1.0).mul_(1e30)
        return out

    monkeypatch.setattr(torch.optim.AdamW, "step", exploding_step)
    out = tmp_path / "div"
    code = run(["train", "--shards", *shards, "--out", str(out), "--model", str(tiny_model("cogvideox", "t2v")),
                "--cache-dir", str(cache_dir), "--steps", "6", "--negatives", "2", "--neg-steps", "2",
                "--lora-rank", "4", "--checkpoint-every", "1", "--lr", "1e-3", "--beta", "5000"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("Error: step 2: training diverged (loss nan")
    assert "checkpoints/step-1" in err[0]
    rows = _rows(out)
    assert [r["step"] for r in rows] == [1, 2] and rows[-1]["loss"] is None and rows[-1]["non_finite"]
    assert "accuracy" not in rows[-1]  # a NaN pair is neither won nor lost
    assert not (out / "lora").exists()
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-1"]
    from safetensors.torch import load_file

    weights = load_file(out / "checkpoints" / "step-1" / "trainable.safetensors")
    assert all(torch.isfinite(w).all() for w in weights.values())


def test_a_non_finite_first_step_does_not_blame_the_learning_rate(shards, cache_dir, tmp_path, capsys, monkeypatch):
    """A loss that is NaN at step 1, before any update, comes from the model or its inputs: the one line says so
    instead of suggesting a lower --lr or --beta."""
    import realdpo.method.step as step_module
    from cli.main import run

    terms = step_module.objective_terms

    def nan_terms(*args, **kwargs):
        out = terms(*args, **kwargs)
        return {**out, "loss": out["loss"] * float("nan")}

    monkeypatch.setattr(step_module, "objective_terms", nan_terms)
    code = run(["train", "--shards", *shards, "--out", str(tmp_path / "nan"), "--model",
                str(tiny_model("cogvideox", "t2v")), "--cache-dir", str(cache_dir), "--steps", "2", "--negatives", "1",
                "--neg-steps", "2", "--lora-rank", "4"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("Error: step 1: training diverged ("), err  # (NaN gradients)
    assert "not --lr or --beta" in err[0] and "lower --lr" not in err[0]


def test_monitor_rules_on_constructed_rows():
    mon = HealthMonitor(steps=100)
    assert mon.window == 20
    healthy = [{"step": i, "accuracy": 0.7, "reward_margin": 0.4, "err_diff_w": -0.01, "saturated": 0.1}
               for i in range(1, 60)]
    assert all(mon.observe(r) == {} for r in healthy)
    # displacement needs the rise to stand out of the noise: alternating signs do not warn
    mon = HealthMonitor(steps=100)
    noisy = [{"step": i, "accuracy": 0.95, "reward_margin": 3.0, "err_diff_w": 0.01 * (-1) ** i, "saturated": 0.2}
             for i in range(1, 60)]
    assert all("displacement" not in mon.observe(r) for r in noisy)
    # a resumed run does not repeat a warning raised before
    mon = HealthMonitor(steps=10)
    mon.preload([{"step": 1, "warnings": {"stuck": "step 1: ..."}}])
    assert all("stuck" not in mon.observe({"step": i, "accuracy": 0.5, "reward_margin": 0.0}) for i in range(2, 9))


def test_held_out_pairs_are_never_trained_on_and_are_checked(shards, cache_dir, tmp_path):
    out = tmp_path / "val"
    train(_cfg(shards, cache_dir, out, steps=5, val_pairs=1, val_every=2, beta=5000.0, lr=1e-2))
    rows = _rows(out)
    assert [r["step"] for r in rows if "val_accuracy" in r] == [2, 4, 5]  # every 2 steps and the last
    config = json.loads((out / "train_config.json").read_text())
    assert config["val_pairs"] == 1
    trained = {k for line in (out / "logs" / "data-rank0.jsonl").read_text().splitlines()
               for keys in json.loads(line).get("keys", []) for k in keys}
    assert len(trained) == 3  # 4 clips, one held out
    for r in rows:
        if "val_accuracy" in r:
            assert 0 <= r["val_accuracy"] <= 1 and {"val_reward_margin", "val_err_diff_w", "val_err_diff_l"} <= set(r)
    # the check is deterministic: a rerun gives the same held-out figures
    reset = tmp_path / "val2"
    from tiny_models import reset_accelerate

    reset_accelerate()
    train(_cfg(shards, cache_dir, reset, steps=5, val_pairs=1, val_every=2, beta=5000.0, lr=1e-2))
    assert [r.get("val_accuracy") for r in _rows(reset)] == [r.get("val_accuracy") for r in rows]


def test_two_experts_get_their_own_figures(shards, tmp_path):
    """Wan 2.2 A14B training both experts: accuracy and margin per expert beside the timestep quarters."""
    out = tmp_path / "experts"
    train(_cfg(shards, tmp_path / "cache", out, model=tiny_model("wan", "t2v", "2.2-a14b"), train_experts="both",
               t_max=1.0, steps=4, batch_size=2, negatives=1, lora_rank=2))
    rows = _rows(out)
    for key in ("accuracy_expert_high", "accuracy_expert_low", "reward_margin_expert_high", "accuracy_q4"):
        assert any(key in r for r in rows), key
    edges = json.loads((out / "train_config.json").read_text())["resolved"]["health_bucket_edges"]
    assert len(edges) == 3 and edges == sorted(edges)
