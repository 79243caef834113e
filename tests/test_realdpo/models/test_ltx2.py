"""LTX-2 through the commands, on tiny saved pipelines (`save_tiny_pipeline("ltx2", task)`): `realdpo train` for
two steps through --model, its LoRA loaded by the diffusers pipeline with `load_lora_weights`, `realdpo sample`
writing a video, the family's defaults, and how the audio stream runs beside the video during training."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from command_helpers import sample_video, train_two_steps
from tiny_models import tiny_model

from realbase.errors import UserError
from realdpo.models import LTX2Spec, load_spec

pytestmark = pytest.mark.usefixtures("one_torch_thread", "fresh_accelerate")


@pytest.mark.parametrize("task", ["t2v", "i2v"])
def test_the_spec_owns_the_family_defaults(task):
    spec = load_spec(tiny_model("ltx2", task))
    assert isinstance(spec, LTX2Spec) and spec.task == task
    run_defaults = spec.run_defaults()
    assert run_defaults.fps == 24.0 and run_defaults.guidance == 4.0 and run_defaults.beta == 500.0
    assert "blurry" in run_defaults.negative_prompt and spec.vae.dtype == torch.float32
    with pytest.raises(UserError, match="8k\\+1"):
        spec.check_size(10, 64, 64)
    with pytest.raises(UserError, match="divisible by 32"):
        spec.check_size(9, 48, 64)
    with pytest.raises(UserError, match="--sampler default"):
        spec.sampling_scheduler("multistep")
    cond = spec.encode_prompts(["a cat", "a dog on a long walk"])
    assert cond["prompt_embeds"].shape[:2] == cond["audio_prompt_embeds"].shape[:2] == (2, 1024)
    assert cond["prompt_attention_mask"].shape == (2, 1024)
    assert not torch.allclose(cond["prompt_embeds"][0], cond["prompt_embeds"][1])


def _inputs(spec, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 8, 2, 2, 2, generator=g)
    cond = spec.encode_prompts(["a square"])
    if spec.task == "i2v":
        cond["image_latents"] = spec.normalize(x[:, :, :1])
    return x, torch.randn(spec.noise_shape(tuple(x.shape)), generator=g), cond


def test_the_audio_stream_runs_jointly_and_only_the_video_error_counts():
    """The transformer sees audio tokens noised to the video's timestep from the noise past the video's frames, with
    isolate_modalities off; the error does not change with the audio prediction (the audio projection zeroed) but
    does with the audio noise, which the video attends to."""
    spec = load_spec(tiny_model("ltx2", "t2v"))
    x, noise, cond = _inputs(spec)
    assert noise.shape[2] > x.shape[2]  # the audio stream's noise rides after the video's latent frames
    seen = {}
    hook = spec.transformer.register_forward_pre_hook(lambda m, a, kw: seen.update(kw), with_kwargs=True)
    t = torch.tensor([600.0])
    with torch.no_grad():
        e = spec.per_sample_error(spec.transformer, x, noise, t, cond)
        hook.remove()
        audio = seen["audio_hidden_states"]
        length = spec.audio_num_frames(x.shape[2])
        assert audio.shape == (1, length, spec.transformer.config.audio_in_channels)
        expected = 0.6 * noise[:, :, x.shape[2]:].reshape(1, -1)[:, :audio[0].numel()].reshape(audio.shape)
        torch.testing.assert_close(audio, expected)
        assert seen["isolate_modalities"] is False and torch.equal(seen["timestep"], seen["sigma"])
        proj = spec.transformer.audio_proj_out
        saved = proj.weight.clone()
        proj.weight.zero_()
        torch.testing.assert_close(spec.per_sample_error(spec.transformer, x, noise, t, cond), e)
        proj.weight.copy_(saved)
        other = noise.clone()
        other[:, :, x.shape[2]:] = torch.randn(other[:, :, x.shape[2]:].shape)
        assert not torch.allclose(spec.per_sample_error(spec.transformer, x, other, t, cond), e)


def test_one_step_generation_is_finite():
    """The scheduler's terminal stretch (shift_terminal) of a one-sigma schedule is 0/0 at sigma 1: the diffusers
    pipeline's own one-step run starts from NaN timesteps. The spec drops the stretch there (before, these latents
    were NaN, as the true-width DPO step's negatives at --neg-steps 1 were), and SDEdit's one kept sigma too."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    spec = load_spec(tiny_model("ltx2", "t2v"))
    assert spec.scheduler.config.shift_terminal
    own = FlowMatchEulerDiscreteScheduler.from_config(spec.scheduler.config)
    with np.errstate(invalid="ignore"):
        own.set_timesteps(sigmas=[1.0], mu=spec.mu(2, 2, 2))
    assert torch.isnan(own.sigmas[0])  # the pipeline's scheduler, as LTX2Pipeline sets it for one step
    cond = spec.encode_prompts(["a square"])
    kw = dict(num_frames=9, height=64, width=64, steps=1, guidance=1.0, seeds=[3])
    latents = spec.generate_latents(["a square"], cond, **kw)
    assert latents.shape == (1, 8, 2, 2, 2) and torch.isfinite(latents).all()
    edited = spec.generate_latents(["a square"], cond, init_latents=latents, strength=0.5, **{**kw, "steps": 2})
    assert torch.isfinite(edited).all() and not torch.allclose(edited, latents)
    # more than one sigma keeps the model's own stretch: the last sigma is shift_terminal
    assert spec.sampling_scheduler(num_sigmas=2).config.shift_terminal == spec.scheduler.config.shift_terminal


def _output(spec, seed=0):
    x, noise, cond = _inputs(spec, seed)
    with torch.no_grad():
        return spec.per_sample_error(spec.transformer, x, noise, torch.tensor([500.0]), cond)


@pytest.mark.slow
@pytest.mark.parametrize("task", ["t2v", "i2v"])
def test_train_two_steps_lora_loads_into_the_pipeline_and_sample_writes_a_video(task, shards, tmp_path):
    model = tiny_model("ltx2", task)
    lora = train_two_steps(model, shards, tmp_path)

    spec = load_spec(model)
    before = _output(spec)
    import diffusers

    pipe = getattr(diffusers, spec.pipeline_classes[task]).from_pretrained(model)  # the plain diffusers pipeline
    pipe.load_lora_weights(str(lora))  # its own LTX2LoraLoaderMixin
    spec.transformer = pipe.transformer
    assert not torch.allclose(_output(spec), before)

    sample_video(model, lora, task, tmp_path)
