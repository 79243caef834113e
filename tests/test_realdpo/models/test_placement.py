"""Where components live: encoders and VAE on demand, fp8 storage of the frozen base, group offloading.

This machine has no accelerator, so the placement tests run the on-demand hooks with the CPU standing in for the
accelerator (`is_accelerator` patched): what they show is when each component is moved in and parked, not the move.
"""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def on_demand(monkeypatch):
    import realdpo.models.placement as placement

    monkeypatch.setattr(placement, "is_accelerator", lambda device: True)


def test_encoders_move_in_only_while_they_run(on_demand, tiny_cogvideox_i2v):
    from realdpo.models import load_spec

    spec = load_spec(tiny_cogvideox_i2v)
    group = spec.encoders
    assert set(group.members) == {"text_encoder", "vae"} and group.resident() == []
    frames, height, width = spec.default_size()
    video = torch.rand(1, frames, 3, height, width) * 2 - 1
    cond = spec.encode_prompts(["a person walking"])
    assert group.resident() == ["text_encoder"]
    latents = spec.encode_videos(video)
    cond.update(spec.encode_first_frames(video[:, 0], frames))
    assert group.resident() == ["vae"] and group.onloads() == {"text_encoder": 1, "vae": 1}  # stays for both
    spec.per_sample_error(spec.transformer, latents, torch.randn_like(latents), torch.tensor([100]), cond)
    assert group.resident() == []  # a denoiser call parks them
    # generation from cached prompt embeddings needs the text encoder only for the negative prompt of guidance
    gen = dict(num_frames=frames, height=height, width=width, steps=2, seeds=[0], images=video[:, 0])
    spec.generate_latents(["a person walking"], cond, guidance=1.0, **gen)
    # i2v: the cached first-frame conditioning stands in for the VAE
    assert group.onloads() == {"text_encoder": 1, "vae": 1} and group.resident() == []
    spec.generate_latents(["a person walking"], cond, guidance=6.0, **gen)
    assert group.onloads() == {"text_encoder": 2, "vae": 1} and group.resident() == []


def test_everything_on_the_device_without_offloading(tiny_cogvideox_t2v):
    from realdpo.models import load_spec

    assert load_spec(tiny_cogvideox_t2v).encoders is None  # a CPU run: nothing to offload


def _with_lora(spec, seed=1):
    from peft import LoraConfig

    tr = spec.transformer
    tr.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=spec.lora_target_modules))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in tr.named_parameters():
            if p.requires_grad:
                p.data = torch.randn(p.shape, generator=g) * (0.02 if "lora_B" in n else 0.2)  # same for both
    return tr


def test_fp8_base_storage_trains_lora_against_the_adapters_off_reference(tiny_cogvideox_t2v):
    """fp8 storage of the frozen base: half the bytes of bf16 in its linear layers, and one DPO step (LoRA policy,
    adapters-off reference) gives exactly the loss and LoRA gradients of a bf16 model holding the fp8-rounded
    weights; the LoRA itself stays fp32."""
    from realdpo.memory import resident_bytes
    from realdpo.method.reference import DisabledAdapterReference
    from realdpo.method.step import ErrorModel, build_inputs, preference_step
    from realdpo.models import load_spec
    from realdpo.models.placement import enable_fp8_storage

    fp8 = load_spec(tiny_cogvideox_t2v, dtype=torch.bfloat16)
    rounded = load_spec(tiny_cogvideox_t2v, dtype=torch.bfloat16)
    before = resident_bytes(fp8.transformer)["cpu"]
    enable_fp8_storage(fp8.transformer, torch.bfloat16)
    stored = {n for n, p in fp8.transformer.named_parameters() if p.dtype == torch.float8_e4m3fn}
    assert any(".attn1.to_q." in n for n in stored) and not any("norm" in n for n in stored)
    saved = sum(p.numel() for n, p in fp8.transformer.named_parameters() if n in stored)
    assert resident_bytes(fp8.transformer)["cpu"] == before - saved  # 1 byte instead of 2 per stored weight
    with torch.no_grad():
        for n, p in rounded.transformer.named_parameters():
            if n in stored:
                p.copy_(p.to(torch.float8_e4m3fn).to(torch.bfloat16))

    frames, height, width = fp8.default_size()
    shape = fp8.encode_videos(torch.zeros(1, frames, 3, height, width)).shape[1:]
    g = torch.Generator().manual_seed(0)
    batch = (torch.randn(1, *shape, generator=g), torch.randn(1, 2, *shape, generator=g),
             fp8.encode_prompts(["a person"]), torch.randn(1, *shape, generator=g), torch.tensor([150]))
    results = []
    for spec in (fp8, rounded):
        tr = _with_lora(spec)
        tr.enable_gradient_checkpointing()
        tr.train()
        metrics = preference_step(ErrorModel(spec, tr), DisabledAdapterReference(tr), spec, build_inputs(*batch),
                                  kind="dpo", beta=500.0, chunk_size=1)
        grads = {n: p.grad.clone() for n, p in tr.named_parameters() if p.grad is not None}
        results.append((metrics, grads))
    assert {p.dtype for n, p in fp8.transformer.named_parameters() if "lora" in n} == {torch.float32}
    (m8, g8), (mr, gr) = results
    assert m8["err_ref_w"] == mr["err_ref_w"] and m8["loss"] == mr["loss"] and m8["reward_margin"] != 0
    assert g8.keys() == gr.keys() and len(g8) > 0
    for n in g8:
        torch.testing.assert_close(g8[n], gr[n], rtol=0, atol=0)


def test_tensor_tracker_counts_what_the_allocator_counts():
    """The tracker bench/memory.py runs meta-device steps under agrees with the allocator's own events on a real
    forward and backward (within kernel-internal temporaries, which only the allocator sees)."""
    from realdpo.memory import TensorTracker, peak_allocated

    torch.manual_seed(0)
    x = torch.randn(512, 256, requires_grad=True)
    net = torch.nn.Sequential(torch.nn.Linear(256, 1024), torch.nn.GELU(), torch.nn.Linear(1024, 256))

    def step():
        x.grad = None
        net.zero_grad(set_to_none=True)
        net(x).pow(2).mean().backward()

    measured = peak_allocated(step)
    with TensorTracker() as tracked:
        step()
    assert 0.8 * measured <= tracked.peak <= measured
    net_meta = torch.nn.Sequential(torch.nn.Linear(256, 1024, device="meta"), torch.nn.GELU(),
                                   torch.nn.Linear(1024, 256, device="meta"))
    x_meta = torch.randn(512, 256, device="meta", requires_grad=True)
    with TensorTracker() as on_meta:
        net_meta(x_meta).pow(2).mean().backward()
    assert on_meta.peak == tracked.peak and on_meta.live == tracked.live


def test_group_offloading_generates_the_same_latents(on_demand, tiny_cogvideox_t2v):
    from diffusers.hooks.group_offloading import _is_group_offload_enabled

    from realdpo.models import load_spec

    plain, offloaded = load_spec(tiny_cogvideox_t2v), load_spec(tiny_cogvideox_t2v, group_offload=True)
    assert _is_group_offload_enabled(offloaded.transformer) and not _is_group_offload_enabled(plain.transformer)
    frames, height, width = plain.default_size()
    kw = dict(num_frames=frames, height=height, width=width, steps=2, guidance=6.0, seeds=[3])
    want = plain.generate_latents(["a person"], {}, **kw)
    got = offloaded.generate_latents(["a person"], {}, **kw)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert offloaded.encoders.resident() == []  # the text encoder was parked by the transformer's first block
