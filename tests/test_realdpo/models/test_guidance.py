"""Wan negatives with guidance batched (realdpo.models.guidance): the same latents as the real diffusers Wan
pipeline's own two transformer calls per step, in half the calls."""

from __future__ import annotations

import pytest
import torch
from tiny_models import tiny_model

from realdpo.models import load_spec

pytestmark = [pytest.mark.usefixtures("one_torch_thread"), pytest.mark.slow]

PROMPTS = ["a person jumps", "a dog runs"]


def _batch_sizes(module: torch.nn.Module, sizes: list[int]):
    return module.register_forward_pre_hook(lambda _m, args, kwargs: sizes.append(kwargs["hidden_states"].shape[0]),
                                            with_kwargs=True)


@pytest.mark.parametrize("variant,task,dtype", [
    (None, "t2v", torch.float32), (None, "t2v", torch.bfloat16), (None, "i2v", torch.float32),
    ("2.2-ti2v", "t2v", torch.float32), ("2.2-ti2v", "i2v", torch.bfloat16), ("2.2-a14b", "t2v", torch.float32)])
def test_batched_guidance_equals_the_pipelines_two_calls(variant, task, dtype):
    path = tiny_model("wan", "i2v" if task == "i2v" and variant is None else "t2v", variant)
    spec = load_spec(path, dtype=dtype, task=task)
    cond = spec.encode_prompts(PROMPTS)
    negative = spec.encode_prompts([spec.default_negative_prompt()])["prompt_embeds"]
    g = torch.Generator().manual_seed(0)
    images = torch.rand(len(PROMPTS), 3, 32, 32, generator=g) * 2 - 1 if task == "i2v" else None
    steps, seeds = 4, [3, 4]
    kw = dict(num_frames=9, height=32, width=32, steps=steps, guidance=5.0)
    experts = [spec.transformer] if not hasattr(spec.transformer, "high") else [spec.transformer.high,
                                                                                 spec.transformer.low]
    sizes: list[int] = []
    hooks = [_batch_sizes(m, sizes) for m in experts]
    batched = spec.generate_latents(PROMPTS, cond, seeds=seeds, images=images,
                                    negative_cond={"prompt_embeds": negative}, **kw)
    per_call = 1 if task == "i2v" else len(PROMPTS)  # the Wan I2V pipelines take one image per call
    assert sizes == [2 * per_call] * (steps * len(PROMPTS) // per_call)  # cond and uncond in one call per step

    # the real pipeline, as diffusers runs it: two transformer calls per step
    sizes.clear()
    two_call = _two_calls(spec, cond, negative, images, seeds, steps, per_call)
    for h in hooks:
        h.remove()
    assert sizes == [per_call] * (2 * steps * len(PROMPTS) // per_call)
    assert two_call.abs().max() > 0.1
    if dtype == torch.float32:
        torch.testing.assert_close(batched, two_call, rtol=1e-4, atol=1e-4)
    else:  # bf16: no further from the two-call result than bf16 itself is from the same pipeline in fp32
        exact = _two_calls(load_spec(path, task=task), cond, negative, images, seeds, steps, per_call)
        rounding = float((two_call - exact).abs().mean())
        assert float((batched - two_call).abs().mean()) <= 1.5 * rounding


def _two_calls(spec, cond, negative, images, seeds, steps, per_call):
    out = []
    for i in range(0, len(PROMPTS), per_call):
        pipe = spec.pipeline()
        pipe.set_progress_bar_config(disable=True)
        extra = {"image": spec._pil(images[i:i + per_call])[0]} if images is not None else {}
        out.append(pipe(prompt_embeds=cond["prompt_embeds"][i:i + per_call].to(spec.dtype),
                        negative_prompt_embeds=negative.expand(per_call, -1, -1).to(spec.dtype), **extra,
                        num_inference_steps=steps, guidance_scale=5.0, num_frames=9, height=32, width=32,
                        generator=spec.generators(seeds[i:i + per_call]), output_type="latent",
                        return_dict=False)[0].float())
    return torch.cat(out)


def test_without_negative_embeddings_the_pipeline_runs_its_own_two_calls(tiny_wan_t2v):
    spec = load_spec(tiny_wan_t2v)
    sizes: list[int] = []
    hook = _batch_sizes(spec.transformer, sizes)
    spec.generate_latents(PROMPTS[:1], spec.encode_prompts(PROMPTS[:1]), num_frames=9, height=32, width=32, steps=2,
                          guidance=5.0, seeds=[0], negative_prompt="static")
    hook.remove()
    assert sizes == [1, 1, 1, 1]
    # and the pipeline keeps its own transformer after a batched call
    spec.generate_latents(PROMPTS[:1], spec.encode_prompts(PROMPTS[:1]), num_frames=9, height=32, width=32, steps=1,
                          guidance=5.0, seeds=[0], negative_cond=spec.encode_prompts([""]))
    assert spec.pipeline().transformer is spec.transformer
