"""`realdpo train`'s memory options on tiny models: real-checkpoint defaults, encoders off the device after caching,
fp8 base storage, 8-bit AdamW for full fine-tuning (with an exact resume)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from test_trainer import _cfg, _rows
from tiny_models import reset_accelerate, synthetic_clip, write_tiny_shard

from realbase.errors import UserError
from realdpo.training.trainer import Trainer, train

pytestmark = pytest.mark.usefixtures("one_torch_thread", "fresh_accelerate")


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> list[str]:
    clips = [(f"synth-{i:04d}", f"a yellow square moving right, take {i}", synthetic_clip(frames=20, seed=i))
             for i in range(3)]
    return [str(write_tiny_shard(tmp_path_factory.mktemp("shards") / "realaction-000000.tar", clips))]


def test_real_checkpoints_default_to_checkpointing_one_row_at_a_time(monkeypatch, shards, tmp_path):
    import realdpo.models.placement as placement

    o = Trainer(_cfg(shards, tmp_path / "latents", tmp_path / "tiny", steps=1)).setup().options
    assert o.gradient_checkpointing is False and o.chunk_size is None  # a tiny model: one pass, no recompute
    reset_accelerate()
    monkeypatch.setattr(placement, "REAL_MODEL_PARAMS", 1)  # every model counts as a real checkpoint
    cfg = _cfg(shards, tmp_path / "latents", tmp_path / "real", steps=1)
    t = Trainer(cfg)
    s = t.setup()
    m = t.build_model(s)
    t.restore(s, m)
    assert s.options.gradient_checkpointing is True and s.options.chunk_size == 1
    assert m.transformer.is_gradient_checkpointing
    assert cfg.gradient_checkpointing is None and cfg.chunk_size is None  # resolved in the run, not in the user's
    saved = json.loads((tmp_path / "real" / "train_config.json").read_text())
    assert saved["gradient_checkpointing"] is True and saved["chunk_size"] == 1 and saved["keep_graph"] is False
    reset_accelerate()
    o = Trainer(_cfg(shards, tmp_path / "latents", tmp_path / "mine", steps=1, gradient_checkpointing=False,
                     chunk_size=2)).setup().options
    assert o.gradient_checkpointing is False and o.chunk_size == 2  # explicit choices win


def test_encoders_leave_the_device_after_caching_and_never_come_with_a_warm_cache(monkeypatch, shards, tmp_path):
    import realdpo.models.placement as placement

    monkeypatch.setattr(placement, "is_accelerator", lambda device: True)  # the CPU stands in for the accelerator
    cache = tmp_path / "latents"
    onloads = []
    for run in ("cold", "warm"):
        t = Trainer(_cfg(shards, cache, tmp_path / run, steps=2))
        s = t.setup()
        data, m = t.build_data(s), t.build_model(s)
        progress = t.restore(s, m)
        rnd = t.open_round(s, data, m, progress, 1)  # caches real latents, prompt embeddings and negatives
        cached = s.spec.encoders.onloads()
        t.train_step(s, m, rnd, progress)
        t.train_step(s, m, rnd, progress)
        assert s.spec.encoders.onloads() == cached and s.spec.encoders.resident() == []
        onloads.append(cached)
        t.finish(s, m, progress)
        reset_accelerate()
    assert onloads[0]["text_encoder"] > 0 and onloads[0]["vae"] > 0
    assert onloads[1] == {"text_encoder": 0, "vae": 0}


def test_fp8_base_lora_training(shards, tmp_path):
    out = tmp_path / "fp8"
    result = train(_cfg(shards, tmp_path / "latents", out, steps=2, fp8_base=True, mixed_precision="bf16",
                        gradient_checkpointing=True, chunk_size=1))
    rows = _rows(out)
    assert rows[0]["loss"] == pytest.approx(0.6931, abs=1e-3) and rows[1]["reward_margin"] != 0
    lora = load_file(str(result.lora / "pytorch_lora_weights.safetensors"))
    assert lora and {v.dtype for v in lora.values()} == {torch.float32}
    with pytest.raises(UserError, match="--fp8-base"):
        train(_cfg(shards, tmp_path / "latents", tmp_path / "bad", lora=False, fp8_base=True))


@pytest.mark.slow
def test_adamw8bit_full_fine_tuning_resumes_exactly(shards, tmp_path):
    from realdpo.training.optim import state_bytes

    kw = dict(lora=False, optimizer="adamw8bit", checkpoint_every=2, lr=1e-4)
    straight, split = tmp_path / "straight", tmp_path / "split"
    t = Trainer(_cfg(shards, tmp_path / "latents", straight, steps=4, **kw))
    s = t.setup()
    m = t.build_model(s)
    t.loop(s, t.build_data(s), m)
    assert type(m.optimizer.optimizer).__name__ == "AdamW8bit"
    opt = m.optimizer.optimizer
    large = [p for p in m.trainable.values() if p.numel() >= 4096]  # bitsandbytes keeps smaller tensors' in fp32
    assert large and all(opt.state[p]["state1"].dtype == opt.state[p]["state2"].dtype == torch.uint8 for p in large)
    # AdamW holds 8 bytes per weight; in this tiny model a third of the weights sit in small tensors
    assert state_bytes(opt) < 0.4 * 8 * sum(p.numel() for p in m.trainable.values())
    reset_accelerate()
    train(_cfg(shards, tmp_path / "latents", split, steps=2, **kw))
    reset_accelerate()
    train(_cfg(shards, tmp_path / "latents", split, steps=4, resume=True, **kw))
    a = load_file(str(straight / "transformer" / "diffusion_pytorch_model.safetensors"))
    b = load_file(str(split / "transformer" / "diffusion_pytorch_model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
