"""What generate_latents offers negatives beyond plain sampling: SDEdit from a noised latent, the multistep solver,
and image-to-video pipelines that take the cached first-frame conditioning instead of encoding the frame again."""

from __future__ import annotations

import pytest
import torch
from tiny_models import tiny_model

from realdpo.models import load_spec

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def specs(tiny_cogvideox_t2v, tiny_cogvideox_i2v, tiny_wan_t2v):
    return {"cogvideox-t2v": load_spec(tiny_cogvideox_t2v), "cogvideox-i2v": load_spec(tiny_cogvideox_i2v),
            "wan-t2v": load_spec(tiny_wan_t2v), "cogvideox15-i2v": load_spec(tiny_model("cogvideox", "i2v", "1.5")),
            "wan-i2v": load_spec(tiny_model("wan", "i2v"))}


def _first_frames(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(1, 3, 32, 32, generator=g) * 2 - 1


def _recording(monkeypatch, module):
    calls = []
    forward = module.forward

    def record(*a, **kw):
        calls.append({k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in kw.items()})
        return forward(*a, **kw)

    monkeypatch.setattr(module, "forward", record)
    return calls


@pytest.mark.parametrize("name", ["cogvideox-t2v", "wan-t2v", "cogvideox15-i2v"])
def test_sdedit_starts_from_the_noised_latent_and_runs_the_last_steps(specs, name, monkeypatch):
    spec = specs[name]
    cond = spec.encode_prompts(["a person jumps"])
    if spec.task == "i2v":
        cond.update(spec.encode_first_frames(_first_frames(), 9))
    shape = spec.encode_videos(torch.zeros(1, 9, 3, 32, 32)).shape
    x0 = torch.randn(shape, generator=torch.Generator().manual_seed(4))
    calls = _recording(monkeypatch, spec.transformer)
    out = spec.generate_latents(["a person jumps"], cond, num_frames=9, height=32, width=32, steps=10, guidance=3.0,
                                seeds=[11], init_latents=x0, strength=0.3)
    assert out.shape == shape
    full = spec.sampling_scheduler()
    full.set_timesteps(10)
    passes = 1 if spec.family == "cogvideox" else 2  # CogVideoX batches guidance; Wan runs cond and uncond apart
    assert len(calls) == 3 * passes  # 0.3 of 10 steps
    first = calls[0]
    assert float(first["timestep"].flatten()[0]) == float(full.timesteps[7])
    # the noise drawn from the sample's seed (over 1.5's padded frames too), added at that timestep by the forward
    # process, written out here
    pad = spec.padding_frames(shape[1]) if spec.family == "cogvideox" else 0
    eps = torch.randn((shape[1] + pad, *shape[2:]), generator=torch.Generator().manual_seed(11))[pad:]
    if spec.family == "cogvideox":
        a = full.alphas_cumprod[int(full.timesteps[7])]
        start = a.sqrt() * x0[0] + (1 - a).sqrt() * eps
        got = first["hidden_states"][0][pad:, : shape[2]]  # i2v: the first-frame latents follow on the channels
    else:
        sigma = full.sigmas[7]
        start = (1 - sigma) * x0[0] + sigma * eps
        got = first["hidden_states"][0]
    torch.testing.assert_close(got.float(), start.float(), atol=1e-5, rtol=1e-5)


def test_multistep_sampler(specs):
    spec = specs["cogvideox-t2v"]
    assert type(spec.sampling_scheduler("multistep")).__name__ == "CogVideoXDPMScheduler"
    assert type(specs["wan-t2v"].sampling_scheduler("multistep")).__name__ == "UniPCMultistepScheduler"
    cond = spec.encode_prompts(["a person jumps"])
    kw = dict(num_frames=9, height=32, width=32, steps=4, guidance=3.0, seeds=[2])
    a = spec.generate_latents(["a person jumps"], cond, **kw)
    b = spec.generate_latents(["a person jumps"], cond, sampler="multistep", **kw)
    assert torch.isfinite(b).all() and not torch.allclose(a, b)
    assert torch.equal(b, spec.generate_latents(["a person jumps"], cond, sampler="multistep", **kw))  # seeded


@pytest.mark.parametrize("name", ["cogvideox-i2v", "cogvideox15-i2v", "wan-i2v"])
def test_cached_first_frame_replaces_the_pipelines_encoding(specs, name, monkeypatch):
    """The pipeline's prepare_latents given the cached conditioning returns what it computes from the image itself
    (drawing the posterior sample the cache holds: CogVideoX's is seeded by the frame), without running the VAE or
    CLIP."""
    import diffusers.pipelines.cogvideo.pipeline_cogvideox_image2video as cog_i2v

    from realdpo.models.common import image_generator

    spec = specs[name]
    image = _first_frames(1)
    cond = spec.encode_first_frames(image, 9)
    original = spec.pipeline()
    monkeypatch.setattr(cog_i2v, "retrieve_latents", lambda out, generator=None, sample_mode="sample":
                        out.latent_dist.sample(image_generator(image[0])))
    # what each spec hands its pipeline as the image (Wan: a PIL image, as its pipeline and the cache take it)
    shown = spec._pil(image)[0] if spec.family == "wan" else ((image + 1) / 2).clamp(0, 1)
    pixels = original.video_processor.preprocess(shown, height=32, width=32)
    if spec.family == "cogvideox":
        args = (pixels, 1, spec.transformer.config.in_channels // 2, 9 + 4 * spec.padding_frames(3), 32, 32,
                torch.float32, spec.device)
    else:
        args = (pixels, 1, spec.vae.config.z_dim, 32, 32, 9, torch.float32, spec.device)
    want = original.prepare_latents(*args, [torch.Generator().manual_seed(5)], None)

    ours = spec.pipeline()
    extra = spec.pipeline_image_inputs(ours, None, cond, 32, 32)
    assert "image" in extra  # a placeholder the pipeline checks and resizes; the cache replaces it
    vae_calls = _recording(monkeypatch, spec.vae.encoder)
    got = ours.prepare_latents(*args, [torch.Generator().manual_seed(5)], None)
    assert vae_calls == []
    for w, g in zip(want, got):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-5)
    if spec.family == "wan":
        torch.testing.assert_close(ours.encode_image(None, spec.device), cond["image_embeds"])
