"""Wan 2.2 on tiny models with its layouts: TI2V-5B (one model for text- and image-to-video, per-token timesteps,
first frame as clean conditioning) and A14B (two experts split at boundary_ratio, one LoRA per trained expert)."""

from __future__ import annotations

import json

import pytest
import torch
from tiny_models import tiny_model

from realbase.errors import UserError
from realdpo.models import load_spec
from realdpo.models.experts import ExpertPair

pytestmark = pytest.mark.usefixtures("one_torch_thread", "fresh_accelerate")


# ---- TI2V-5B -----------------------------------------------------------------------------------------------------
def test_ti2v_is_one_model_for_both_tasks():
    path = tiny_model("wan", "t2v", "2.2-ti2v")
    t2v, i2v = load_spec(path), load_spec(path, task="i2v")
    assert (t2v.task, i2v.task) == ("t2v", "i2v") and t2v.expand_timesteps and i2v.expand_timesteps
    assert type(i2v.pipeline()).__name__ == "WanImageToVideoPipeline"
    assert t2v.fingerprint() != i2v.fingerprint()  # their cached conditioning and negatives differ
    assert t2v.default_fps() == 24.0
    with pytest.raises(UserError, match="--task i2v"):
        load_spec(tiny_model("wan", "t2v"), task="i2v")


def _record_inputs(module: torch.nn.Module, seen: dict):
    def hook(_module, args, kwargs):
        seen.clear()
        seen.update({k: v.detach().clone() for k, v in kwargs.items() if isinstance(v, torch.Tensor)})
    return module.register_forward_pre_hook(hook, with_kwargs=True)


@pytest.mark.parametrize("task", ["t2v", "i2v"])
def test_ti2v_training_input_is_the_pipelines(task):
    """The transformer sees in training what it sees in WanPipeline / WanImageToVideoPipeline (expand_timesteps):
    one timestep per token, and for image-to-video the clean first-frame latent with timestep 0."""
    spec = load_spec(tiny_model("wan", "t2v", "2.2-ti2v"), task=task)
    video = torch.rand(1, 9, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    cond = {**spec.encode_prompts(["a"]), **spec.encode_first_frames(video[:, 0], 9)}
    seen: dict = {}
    hook = _record_inputs(spec.transformer, seen)
    images = video[:, 0] if task == "i2v" else None
    spec.generate_latents(["a"], cond, num_frames=9, height=64, width=64, steps=1, guidance=1.0, seeds=[0],
                          images=images)
    in_pipeline = dict(seen)
    x0 = spec.encode_videos(video)
    t = in_pipeline["timestep"].max().reshape(1)
    spec.per_sample_error(spec.transformer, x0, torch.randn_like(x0), t, cond)
    in_training = dict(seen)
    hook.remove()
    assert in_training["timestep"].shape == in_pipeline["timestep"].shape == (1, 3 * 2 * 2)  # frames x tokens
    torch.testing.assert_close(in_training["timestep"], in_pipeline["timestep"])
    if task == "i2v":
        assert (in_training["timestep"][0, :4] == 0).all() and (in_training["timestep"][0, 4:] == t).all()
        torch.testing.assert_close(in_training["hidden_states"][:, :, :1], in_pipeline["hidden_states"][:, :, :1])
        torch.testing.assert_close(in_training["hidden_states"][:, :, :1], cond["image_condition"])


def test_ti2v_i2v_error_leaves_out_the_conditioning_frame():
    spec = load_spec(tiny_model("wan", "t2v", "2.2-ti2v"), task="i2v")

    class Constant(torch.nn.Module):
        def __init__(self, first):
            super().__init__()
            self.first, self.config, self.dtype = first, spec.transformer.config, torch.float32

        def forward(self, hidden_states, **kw):
            out = torch.zeros_like(hidden_states)
            out[:, :, 0] = self.first
            return (out,)

    x0 = torch.randn(1, 8, 3, 4, 4)
    cond = {"prompt_embeds": torch.zeros(1, 4, 32), "image_condition": x0[:, :, :1]}
    noise = torch.randn_like(x0)
    a = spec.per_sample_error(Constant(0.0), x0, noise, torch.tensor([500.0]), cond)
    b = spec.per_sample_error(Constant(9.0), x0, noise, torch.tensor([500.0]), cond)
    assert a.item() != 0 and a.item() == pytest.approx(b.item())


# ---- A14B ----------------------------------------------------------------------------------------------------------
def test_each_sample_goes_to_its_timesteps_expert():
    spec = load_spec(tiny_model("wan", "t2v", "2.2-a14b"))
    pair = spec.transformer
    assert isinstance(pair, ExpertPair) and pair.boundary_timestep == 875.0 and spec.expert_names == ("high", "low")
    x = torch.randn(3, 4, 3, 8, 8)
    text = spec.encode_prompts(["a", "b", "c"])["prompt_embeds"]
    t = torch.tensor([900.0, 100.0, 875.0])  # high, low, high (the pipeline: t >= boundary is the high-noise stage)
    with torch.no_grad():
        out = pair(hidden_states=x, timestep=t, encoder_hidden_states=text)[0]
        high = pair.high(hidden_states=x, timestep=t, encoder_hidden_states=text, return_dict=False)[0]
        low = pair.low(hidden_states=x, timestep=t, encoder_hidden_states=text, return_dict=False)[0]
    torch.testing.assert_close(out[[0, 2]], high[[0, 2]])
    torch.testing.assert_close(out[1], low[1])
    assert not torch.allclose(high[1], low[1])


def test_expert_options_choose_experts_and_timesteps():
    spec = load_spec(tiny_model("wan", "t2v", "2.2-a14b"))
    ub = spec.boundary_sigma()  # flow_shift 3, boundary 0.875: sigma 0.7
    assert ub == pytest.approx(0.7)
    g = torch.Generator().manual_seed(0)
    spec.set_experts(None, t_range=(0.0, 0.5))  # DPO's range, default: only the low-noise expert trains
    assert spec.trained_experts == ("transformer_2",)
    assert (spec.sample_timesteps(500, 0.0, 0.5, g) < 875).all()
    spec.set_experts("both", t_range=(0.0, 1.0))  # SFT's range: both, each sample routed by its timestep
    t = spec.sample_timesteps(2000, 0.0, 1.0, g)
    assert spec.trained_experts == ("transformer", "transformer_2") and (t >= 875).any() and (t < 875).any()
    spec.set_experts("both", {"high": (0.9, 1.0), "low": (0.0, 0.2)}, t_range=(0.0, 0.5))
    u = t = spec.sample_timesteps(2000, 0.0, 0.5, g)
    sigma = t / 1000
    u = sigma / (3 - 2 * sigma)  # unshift
    assert ((u < 0.2 + 1e-5) | (u >= 0.9 - 1e-5)).all() and (u >= 0.9 - 1e-5).float().mean() == pytest.approx(1 / 3, abs=0.05)
    with pytest.raises(UserError, match="high-noise expert"):
        spec.set_experts("high", t_range=(0.0, 0.5))  # DPO's half never reaches sigma 0.7
    with pytest.raises(UserError, match="does not train"):
        spec.set_experts("low", {"high": (0.8, 1.0)})
    with pytest.raises(UserError, match="two-expert models"):
        load_spec(tiny_model("wan", "t2v")).set_experts("low")


def test_negatives_run_both_experts_through_the_pipeline():
    spec = load_spec(tiny_model("wan", "t2v", "2.2-a14b"))
    calls = {"high": 0, "low": 0}
    hooks = [m.register_forward_hook(lambda *_, name=name: calls.__setitem__(name, calls[name] + 1))
             for name, m in spec.transformer.experts().items()]
    spec.generate_latents(["a"], {}, num_frames=9, height=64, width=64, steps=4, guidance=5.0, seeds=[0])
    for h in hooks:
        h.remove()
    assert calls["high"] > 0 and calls["low"] > 0


def _expert_output(spec, expert: str, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 4, 3, 8, 8, generator=g)
    text = spec.encode_prompts(["a square"])["prompt_embeds"]
    with torch.no_grad():
        return getattr(spec.transformer, expert)(hidden_states=x, timestep=torch.tensor([500.0]),
                                                 encoder_hidden_states=text, return_dict=False)[0]


def test_train_saves_one_lora_per_trained_expert_that_diffusers_loads(shards, tmp_path):
    """Default DPO: only the low-noise expert trains; its LoRA is OUT/lora/transformer_2, which diffusers loads with
    load_into_transformer_2. SFT over the whole schedule trains both; `sample --lora OUT/lora` loads both."""
    from safetensors.torch import load_file

    from realdpo.configs.sample import SampleConfig
    from realdpo.configs.train import TrainConfig
    from realdpo.generation.sampling import sample
    from realdpo.training.trainer import train

    model = tiny_model("wan", "t2v", "2.2-a14b")
    common = dict(shards=shards, model=model, cache_dir=tmp_path / "cache", negatives=1, neg_steps=2, lora_rank=2,
                  checkpoint_every=0, steps=2, lr=1e-2, beta=500.0)
    dpo = tmp_path / "dpo"
    train(TrainConfig(out=dpo, **common))
    assert sorted(p.name for p in (dpo / "lora").iterdir()) == ["transformer_2"]
    assert json.loads((dpo / "train_config.json").read_text())["resolved"]["trained_experts"] == ["transformer_2"]
    spec = load_spec(model)
    before = {e: _expert_output(spec, e) for e in ("high", "low")}
    spec.pipeline().load_lora_weights(str(dpo / "lora" / "transformer_2"), load_into_transformer_2=True)
    assert torch.equal(_expert_output(spec, "high"), before["high"])
    assert not torch.allclose(_expert_output(spec, "low"), before["low"])
    from realdpo.method.reference import adapters_disabled

    with adapters_disabled(spec.transformer):  # the reference of eval's pref_accuracy: the LoRA is on one expert
        torch.testing.assert_close(_expert_output(spec, "low"), before["low"])
    trained = load_file(str(dpo / "checkpoints" / "step-2" / "trainable.safetensors"))
    assert trained and all(k.startswith("low.") for k in trained)

    sft = tmp_path / "sft"
    train(TrainConfig(out=sft, loss="sft", **common))
    assert sorted(p.name for p in (sft / "lora").iterdir()) == ["transformer", "transformer_2"]
    spec = load_spec(model)
    pipe = spec.pipeline()
    pipe.load_lora_weights(str(sft / "lora" / "transformer"))
    pipe.load_lora_weights(str(sft / "lora" / "transformer_2"), load_into_transformer_2=True)
    assert not torch.allclose(_expert_output(spec, "high"), before["high"])
    assert not torch.allclose(_expert_output(spec, "low"), before["low"])
    out = sample(SampleConfig(prompt="a square", model=model, lora=sft / "lora", steps=2, out=tmp_path / "v.mp4"))
    assert out.stat().st_size > 0
    with pytest.raises(UserError, match="one transformer"):
        sample(SampleConfig(prompt="a square", model=tiny_model("wan", "t2v"), lora=sft / "lora", steps=1,
                            out=tmp_path / "w.mp4"))


def test_full_fine_tuning_trains_and_saves_the_chosen_expert(shards, tmp_path):
    from safetensors.torch import load_file

    from realdpo.configs.train import TrainConfig
    from realdpo.training.trainer import train

    out = tmp_path / "full"
    result = train(TrainConfig(shards=shards, out=out, model=tiny_model("wan", "t2v", "2.2-a14b"),
                               cache_dir=tmp_path / "cache", negatives=1, neg_steps=2, steps=1, lora=False,
                               checkpoint_every=0))
    assert result.lora is None and sorted(p.name for p in (out / "transformer").iterdir()) == ["transformer_2"]
    assert (out / "transformer" / "transformer_2" / "config.json").is_file()
    trained = load_file(str(out / "checkpoints" / "step-1" / "trainable.safetensors"))
    assert trained and all(k.startswith("low.") for k in trained)
    first = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert first["loss"] == pytest.approx(0.6931471805599453, abs=1e-6)  # the frozen copy is the policy at step 0
