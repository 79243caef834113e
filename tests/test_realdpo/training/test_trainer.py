"""`realdpo train` end to end on tiny models: outputs, LoRA loading, exact resume, options, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tiny_models import reset_accelerate, synthetic_clip, tiny_model, write_tiny_shard

from realbase.errors import UserError
from realdpo.configs.train import TrainConfig
from realdpo.training.trainer import Trainer, steps_per_round, train

pytestmark = pytest.mark.usefixtures("one_torch_thread", "fresh_accelerate")


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> list[str]:
    root = tmp_path_factory.mktemp("shards")
    clips = [(f"synth-{i:04d}", f"a yellow square moving right, take {i}", synthetic_clip(frames=20, seed=i)) for i in range(4)]
    write_tiny_shard(root / "realaction-000000.tar", clips[:3])
    write_tiny_shard(root / "realaction-000001.tar", clips[3:])
    return [str(root / "realaction-*.tar")]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("latents")  # shared: every run after the first reuses the negatives


def _cfg(shards, cache_dir, out, family="cogvideox", task="t2v", **kw) -> TrainConfig:
    base = dict(shards=shards, out=out, model=tiny_model(family, task), cache_dir=cache_dir, steps=3, negatives=2,
                neg_steps=2, beta=500.0, lr=1e-3, lora_rank=4, checkpoint_every=0, seed=0)
    return TrainConfig(**{**base, **kw})


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _transformer_output(spec, seed=0):
    frames, height, width = spec.default_size()
    g = torch.Generator().manual_seed(seed)
    shape = spec.encode_videos(torch.zeros(1, frames, 3, height, width)).shape
    x0, noise = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
    t = spec.sample_timesteps(1, 0.0, 0.5, generator=g)
    cond = {**spec.encode_prompts(["a square"]), **spec.encode_first_frames(torch.zeros(1, 3, height, width), frames)}
    with torch.no_grad():
        return spec.per_sample_error(spec.transformer, x0, noise, t, cond)


@pytest.mark.parametrize("family, task", [("cogvideox", "t2v"), ("wan", "t2v"), ("cogvideox", "i2v")])
def test_train_writes_outputs_and_a_loadable_lora(family, task, shards, cache_dir, tmp_path):
    from realdpo.models import load_spec

    out = tmp_path / "run"
    validate = family == "cogvideox"
    extra = dict(validate_every=2, validation_steps=2, grad_accum=2) if validate else {}
    result = train(_cfg(shards, cache_dir, out, family, task, steps=2, **extra))
    rows = _rows(out)
    assert [r["step"] for r in rows] == [1, 2]
    for key in ("loss", "reward_margin", "accuracy", "err_policy_w", "err_ref_w", "err_policy_l", "err_ref_l",
                "grad_norm", "lr"):
        assert all(key in r for r in rows), key
    assert rows[0]["reward_margin"] == 0 and rows[0]["loss"] == pytest.approx(0.6931, abs=1e-4)  # policy == reference
    assert result.first["step"] == 1 and result.last["step"] == 2 and result.steps == 2
    assert (out / "training.png").stat().st_size > 0
    assert (out / "samples" / "step-000002.mp4").is_file() == validate
    assert json.loads((out / "train_config.json").read_text())["beta"] == 500.0
    assert list((out / "logs").rglob("events.out.tfevents*"))
    assert (out / "checkpoints" / "step-2" / "trainable.safetensors").is_file()

    spec = load_spec(tiny_model(family, task))
    before = _transformer_output(spec)
    pipe = spec.pipeline()
    pipe.load_lora_weights(str(out / "lora"))
    after = _transformer_output(spec)
    assert not torch.allclose(before, after)
    # the loaded adapter is the trained one
    trained = load_file(str(out / "checkpoints" / "step-2" / "trainable.safetensors"))
    loaded = {n: p for n, p in spec.transformer.named_parameters() if "lora_B" in n}
    some = next(k for k in trained if "lora_B" in k)
    match = [n for n in loaded if n.replace(".default_0.", ".default.") == some]
    assert match and torch.allclose(loaded[match[0]], trained[some])


def test_resume_continues_exactly(shards, cache_dir, tmp_path):
    kw = dict(ref="ema", ema_every=2, ema_rate=0.9, checkpoint_every=2, batch_size=2)
    straight = tmp_path / "straight"
    train(_cfg(shards, cache_dir, straight, steps=6, **kw))
    split = tmp_path / "split"
    train(_cfg(shards, cache_dir, split, steps=3, **kw))
    assert (split / "checkpoints" / "step-3").is_dir()
    train(_cfg(shards, cache_dir, split, steps=6, resume=True, **kw))
    a = load_file(str(straight / "lora" / "pytorch_lora_weights.safetensors"))
    b = load_file(str(split / "lora" / "pytorch_lora_weights.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
    ra = load_file(str(straight / "checkpoints" / "step-6" / "reference.safetensors"))
    rb = load_file(str(split / "checkpoints" / "step-6" / "reference.safetensors"))
    for k in ra:
        torch.testing.assert_close(ra[k], rb[k], rtol=1e-5, atol=1e-6)
    rows_a, rows_b = _rows(straight), _rows(split)
    assert [r["step"] for r in rows_b] == list(range(1, 7))
    for x, y in zip(rows_a, rows_b):
        assert x["loss"] == pytest.approx(y["loss"], abs=1e-6)
    # a finished run is not silently overwritten; a resume must not change the method
    with pytest.raises(UserError, match="--resume"):
        train(_cfg(shards, cache_dir, split, steps=6, **kw))
    with pytest.raises(UserError, match="beta"):
        train(_cfg(shards, cache_dir, split, steps=7, resume=True, **{**kw, "beta": 100.0}))


def test_resume_after_a_kill_mid_run(shards, cache_dir, tmp_path, monkeypatch):
    """Killed after step 4 with the last checkpoint at step 3: the resumed run redoes step 4 and ends where an
    uninterrupted run ends (linear LR schedule with warm-up, so the scheduler state matters too)."""
    import realdpo.training.trainer as trainer

    kw = dict(steps=6, checkpoint_every=3, lr_scheduler="linear", warmup_steps=2, grad_accum=2)
    straight = tmp_path / "straight"
    train(_cfg(shards, cache_dir, straight, **kw))

    round_of = trainer._round_of

    def killed_at_4(step, steps, rounds):
        if step == 4:
            raise KeyboardInterrupt
        return round_of(step, steps, rounds)

    killed = tmp_path / "killed"
    monkeypatch.setattr(trainer, "_round_of", killed_at_4)
    with pytest.raises(KeyboardInterrupt):
        train(_cfg(shards, cache_dir, killed, **kw))
    monkeypatch.setattr(trainer, "_round_of", round_of)
    assert [r["step"] for r in _rows(killed)] == [1, 2, 3, 4]
    reset_accelerate()
    train(_cfg(shards, cache_dir, killed, resume=True, **kw))
    rows_a, rows_b = _rows(straight), _rows(killed)
    assert [r["step"] for r in rows_b] == list(range(1, 7))
    assert [r["lr"] for r in rows_b] == pytest.approx([r["lr"] for r in rows_a])
    a = load_file(str(straight / "lora" / "pytorch_lora_weights.safetensors"))
    b = load_file(str(killed / "lora" / "pytorch_lora_weights.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)


def test_trainer_phases_run_one_by_one(shards, cache_dir, tmp_path):
    """The phases `train` runs, called in order by hand: the same first step as `train` itself."""
    whole = tmp_path / "whole"
    train(_cfg(shards, cache_dir, whole, steps=1))
    reset_accelerate()
    t = Trainer(_cfg(shards, cache_dir, tmp_path / "phases", steps=1))
    s = t.setup()
    assert s.run.frames == 9 and not (tmp_path / "phases" / "metrics.jsonl").exists()
    data = t.build_data(s)
    m = t.build_model(s)
    assert m.trainable and all("lora" in n for n in m.trainable) and m.reference is not None
    progress = t.restore(s, m)
    rnd = t.open_round(s, data, m, progress, 1)
    assert rnd.number == 1 and len(rnd.stream.stream.keys) == 4
    row, keys = t.train_step(s, m, rnd, progress)
    assert row["step"] == 1 and progress.state == {"step": 1, "batch": 1} and keys and row["accuracy"] == 0.5
    assert row["loss"] == pytest.approx(_rows(whole)[0]["loss"])
    result = t.finish(s, m, progress)
    assert result.steps == 1 and (tmp_path / "phases" / "lora" / "pytorch_lora_weights.safetensors").is_file()


def test_a_run_leaves_the_users_config_and_the_models_fingerprint_as_they_were(shards, cache_dir, tmp_path,
                                                                                monkeypatch):
    """The defaults a run resolves (--t-min/--t-max, the memory options, the model's beta) go into its own record,
    never into the config it was given; the model loads with the run's options (first-frame noise here), so its
    fingerprint, which keys the caches, is the one it had when it loaded."""
    import dataclasses

    import realdpo.models as models

    loaded = []
    load_spec = models.load_spec

    def recording(*args, **kw):
        spec = load_spec(*args, **kw)
        loaded.append((spec, spec.fingerprint()))
        return spec

    monkeypatch.setattr(models, "load_spec", recording)
    cfg = _cfg(shards, cache_dir, tmp_path / "run", task="i2v", steps=1, first_frame_noise=True, beta=None)
    given = dataclasses.asdict(cfg)
    train(cfg)
    assert dataclasses.asdict(cfg) == given
    [(spec, at_load)] = loaded
    assert spec.fingerprint() == at_load and (cache_dir / at_load).is_dir()
    saved = json.loads((tmp_path / "run" / "train_config.json").read_text())
    assert saved["t_min"] == 0.0 and saved["t_max"] == 0.5 and saved["gradient_checkpointing"] is False
    assert saved["beta"] is None and saved["resolved"]["beta"] == 5000.0 and saved["resolved"]["task"] == "i2v"


def test_rounds_sft_chunks_and_full_fine_tuning(shards, cache_dir, tmp_path):
    assert steps_per_round(5, 2) == [3, 2]
    out = tmp_path / "rounds"
    train(_cfg(shards, cache_dir, out, steps=2, rounds=2, chunk_size=2, loss="dpo+sft"))
    rows = _rows(out)
    assert [r["round"] for r in rows] == [1, 2] and "loss_sft" in rows[0]
    assert list((out / "cache").rglob("neg/r2-generated-*/*.safetensors"))  # round 2's: this run's policy, in OUT

    sft = tmp_path / "sft"
    train(_cfg(shards, cache_dir, sft, steps=2, loss="sft"))
    assert "accuracy" not in _rows(sft)[0] and _rows(sft)[0]["loss"] > 0

    full = tmp_path / "full"
    result = train(_cfg(shards, cache_dir, full, steps=2, lora=False, ref="ema", ema_every=1,
                        gradient_checkpointing=True, chunk_size=1))
    assert result.lora is None and (full / "transformer" / "config.json").is_file()
    assert (full / "checkpoints" / "step-2" / "reference.safetensors").is_file()
    assert _rows(full)[1]["reward_margin"] != 0


def test_streamed_rows_train_the_same_lora_as_one_pass(shards, cache_dir, tmp_path):
    """`--chunk-size 1` in one process (each loser row's gradient set aside until its coefficient is known) trains
    the LoRA that one pass over all rows trains: the same losses, the same weights up to float32 rounding."""
    runs = {}
    for name, chunk in (("one-pass", None), ("streamed", 1)):
        out = tmp_path / name
        result = train(_cfg(shards, cache_dir, out, steps=2, negatives=3, chunk_size=chunk))
        runs[name] = (_rows(out), load_file(str(result.lora / "pytorch_lora_weights.safetensors")))
    (rows_a, lora_a), (rows_b, lora_b) = runs["one-pass"], runs["streamed"]
    assert [r["loss"] for r in rows_b] == pytest.approx([r["loss"] for r in rows_a], abs=1e-5)
    assert rows_a[1]["loss"] != rows_a[0]["loss"]  # the first step moved the weights
    assert lora_a.keys() == lora_b.keys() and lora_a
    for key in lora_a:
        torch.testing.assert_close(lora_b[key], lora_a[key], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("change, message", [
    (dict(shards=["/nonexistent/*.tar"]), "no shard files"),
    (dict(frames=8), "frames"),
    (dict(loss="kto"), "--loss"),
    (dict(rounds=5, steps=2), "--rounds"),
])
def test_bad_options_fail_before_any_work(change, message, shards, cache_dir, tmp_path):
    with pytest.raises(UserError, match=message):
        train(_cfg(**{"shards": shards, "cache_dir": cache_dir, "out": tmp_path / "bad", **change}))
    assert not (tmp_path / "bad" / "metrics.jsonl").exists()


def test_cli_routes_train(shards, cache_dir, tmp_path):
    from cli.main import run

    out = tmp_path / "cli"
    code = run(["train", "--shards", *shards, "--out", str(out), "--model", str(tiny_model("cogvideox", "t2v")),
                "--cache-dir", str(cache_dir), "--steps", "1", "--negatives", "2", "--neg-steps", "2",
                "--lora-rank", "4", "--checkpoint-every", "0"])
    assert code == 0 and (out / "lora" / "pytorch_lora_weights.safetensors").is_file()
    assert run(["train", "--shards", *shards, "--out", str(out), "--steps", "1"]) == 2  # exists, no --resume


@pytest.mark.slow
def test_resume_passes_over_a_corrupt_checkpoint(shards, cache_dir, tmp_path, caplog):
    """A damaged newest checkpoint: the run resumes from the one before (with a warning) and ends where an
    uninterrupted run ends; with every checkpoint damaged, --resume is refused in one line."""
    kw = dict(checkpoint_every=1, keep_checkpoints=0)
    straight = tmp_path / "straight"
    train(_cfg(shards, cache_dir, straight, steps=3, **kw))
    run = tmp_path / "run"
    train(_cfg(shards, cache_dir, run, steps=2, **kw))
    damaged = run / "checkpoints" / "step-2" / "trainable.safetensors"
    damaged.write_bytes(damaged.read_bytes()[:200])
    with caplog.at_level("WARNING", logger="realdpo.training.checkpoint"):
        result = train(_cfg(shards, cache_dir, run, steps=3, resume=True, **kw))
    assert result.steps == 3 and [r["step"] for r in _rows(run)] == [1, 2, 3]
    assert [r.getMessage().split(" is unreadable")[0] for r in caplog.records
            if r.name == "realdpo.training.checkpoint"] == [f"checkpoint {run / 'checkpoints' / 'step-2'}"]
    a = load_file(str(straight / "lora" / "pytorch_lora_weights.safetensors"))
    b = load_file(str(run / "lora" / "pytorch_lora_weights.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
    for ckpt in (run / "checkpoints").iterdir():
        (ckpt / "trainable.safetensors").write_bytes(b"not safetensors")
    reset_accelerate()
    with pytest.raises(UserError, match=r"no readable checkpoint in .*step-3: trainable.safetensors: .*step-1"):
        train(_cfg(shards, cache_dir, run, steps=4, resume=True, **kw))


def test_resume_checks_the_options_without_train_config_json(shards, cache_dir, tmp_path, capsys):
    run = tmp_path / "run"
    train(_cfg(shards, cache_dir, run, steps=2))
    own = run / "checkpoints" / "step-2" / "train_config.json"  # each checkpoint keeps the options that wrote it
    assert json.loads(own.read_text())["lora_rank"] == 4
    (run / "train_config.json").unlink()
    with pytest.raises(UserError, match="different options .*lora_rank"):
        train(_cfg(shards, cache_dir, run, steps=3, resume=True, lora_rank=8))
    # a checkpoint with no copy of the options (older runs): the tensors' shapes tell, before anything is loaded
    kept = own.read_text()
    own.unlink()
    reset_accelerate()
    with pytest.raises(UserError, match=r"\[4, \d+\] there, \[8, \d+\] here.*--lora-rank"):
        train(_cfg(shards, cache_dir, run, steps=3, resume=True, lora_rank=8))
    # ... and an unreadable train_config.json is the only record: refused in one line
    (run / "train_config.json").write_text('{"lora_rank": 4,')
    reset_accelerate()
    with pytest.raises(UserError, match=r"cannot read .*train_config.json.*delete it"):
        train(_cfg(shards, cache_dir, run, steps=3, resume=True))
    # with the checkpoint's own copy the damaged file is not needed (and is written afresh)
    own.write_text(kept)
    reset_accelerate()
    assert train(_cfg(shards, cache_dir, run, steps=3, resume=True)).steps == 3
    assert json.loads((run / "train_config.json").read_text())["steps"] == 3


def test_resume_of_a_complete_run(shards, cache_dir, tmp_path, capsys):
    run = tmp_path / "run"
    train(_cfg(shards, cache_dir, run, steps=2))
    with pytest.raises(UserError, match=r"already complete: 2 steps done, more than --steps 1"):
        train(_cfg(shards, cache_dir, run, steps=1, resume=True))
    assert json.loads((run / "train_config.json").read_text())["steps"] == 2  # a refused resume rewrites nothing
    reset_accelerate()
    capsys.readouterr()
    assert train(_cfg(shards, cache_dir, run, steps=2, resume=True)).steps == 2
    assert "already complete (2 steps)" in capsys.readouterr().out
    assert [r["step"] for r in _rows(run)] == [1, 2]


def test_blank_captions_are_trained_on_only_with_allow_blank_captions(cache_dir, tmp_path):
    shard = write_tiny_shard(tmp_path / "blank" / "realaction-000000.tar",
                             [(f"blank-{i:04d}", " ", synthetic_clip(frames=20, seed=20 + i)) for i in range(2)])
    with pytest.raises(UserError, match=r"no usable samples in 1 shard\(s\).*2 blank caption"):
        train(_cfg([str(shard)], cache_dir, tmp_path / "refused", steps=1))
    reset_accelerate()
    result = train(_cfg([str(shard)], cache_dir, tmp_path / "text-free", steps=1, allow_blank_captions=True))
    assert result.steps == 1 and _rows(tmp_path / "text-free")[0]["loss"] > 0


def test_sft_generates_no_negatives(shards, tmp_path, capsys):
    cache = tmp_path / "latents"
    train(_cfg(shards, cache, tmp_path / "run", loss="sft", steps=2))
    assert "0 generated" in capsys.readouterr().out
    assert not list(cache.rglob("neg/*")), "SFT trains on the real clips alone: nothing in neg/"
    assert len(list(cache.rglob("real/*.safetensors"))) == 4
    rows = _rows(tmp_path / "run")
    assert len(rows) == 2 and all(r["loss"] > 0 for r in rows)
