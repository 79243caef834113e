"""Predicted peak accelerator memory of LoRA-DPO on real models, from what can be measured on a CPU (issue 11).

1. Resident weights of each component (transformer, text encoder, VAE) at its true config and the dtype a run loads
   it in: built on the meta device, every parameter and buffer counted (`realdpo.memory.resident_bytes`).
2. One transformer block's activations at true width: one block's forward and backward for one row, measured on
   real CPU tensors (fp32, a few dozen video tokens) with the allocator's events (`peak_allocated`), and the same
   block counted on meta tensors by the tracker of step 3 (`TensorTracker`), to show the two agree; then the
   tracker's count at the true token count in bf16.
3. The training step itself, at the true size in bf16: realdpo's step (`realdpo.method.step`, as the trainer runs
   it) and the official loop (bench/dpo_step.py's re-implementation) run on meta tensors, every tensor allocation
   and free tracked. Attention counts what flash attention keeps (q, k, v, output, log-sum-exp; dq, dk, dv in
   the backward), as on a GPU. The prediction is the step's peak of live tensors plus the AdamW state of the LoRA
   (8 bytes per trained weight) plus, for the official loop, its resident text encoder and VAE; it is a
   `torch.cuda.max_memory_allocated` figure: the CUDA context (~0.5-1 GiB) and allocator fragmentation come on top.
   A check first runs bench/dpo_step.py's `medium` size both ways, simulated and measured on the CPU.
4. Each memory option on a real CPU step (bench/dpo_step.py's `medium` size): peak memory and step time against the
   plain run, side by side in this process.

Configurations: realdpo = LoRA rank 16, K = 3, --chunk-size 1 (streamed), gradient checkpointing, bf16, text
encoder and VAE off the accelerator during steps; "+ fp8 base" adds --fp8-base. Official = the same LoRA policy
with a separate frozen bf16 copy of the transformer as reference, 4 passes and one backward per negative, gradient
checkpointing, text encoder and VAE resident (as its training script keeps them).

    python bench/memory.py                         # everything (~50 min on 2 shared CPU cores)
    python bench/memory.py --skip-cpu              # only the predictions (steps 1 and 3)
    python bench/memory.py --skip-cpu --skip-options --models LTX-2   # one row of step 3
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import dpo_step  # noqa: E402  (bench/dpo_step.py: the official loop, LoRA, batches)

from realdpo.memory import TensorTracker, peak_allocated, resident_bytes  # noqa: E402
from realdpo.models.configs import get_config  # noqa: E402

GiB = 2**30

# The text encoders' true configurations (transformers' T5/UMT5 XXL); the transformers' and VAEs' come from the
# package (realdpo.models.configs, the configs the tests build).
T5_XXL = dict(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
              relative_attention_num_buckets=32, relative_attention_max_distance=128, feed_forward_proj="gated-gelu",
              dropout_rate=0.0, is_encoder_decoder=False, use_cache=False)
UMT5_XXL = dict(T5_XXL, vocab_size=256384)
# Not checked against the released folders (no hub access): the published config.json values of Qwen2.5-VL-7B's text
# model, HunyuanVideo 1.5's ByT5 glyph encoder (byt5-small), SigLIP so400m at 384 px and Gemma 3 12B
QWEN25_VL_7B_TEXT = dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                         num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=128000,
                         rope_parameters=dict(rope_type="default", rope_theta=1e6, mrope_section=[16, 24, 24]))
BYT5_GLYPH = dict(vocab_size=384, d_model=1472, d_kv=64, d_ff=3584, num_layers=12, num_heads=6,
                  feed_forward_proj="gated-gelu", is_encoder_decoder=False, use_cache=False)
SIGLIP_SO400M_384 = dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16,
                         image_size=384, patch_size=14)
GEMMA3_12B = dict(text_config=dict(vocab_size=262208, hidden_size=3840, intermediate_size=15360,
                                   num_hidden_layers=48, num_attention_heads=16, num_key_value_heads=8, head_dim=256),
                  vision_config=dict(SIGLIP_SO400M_384, image_size=896), mm_tokens_per_image=256)
_COG5_I2V, _TI2V, _WAN14, _A14B_I2V = (get_config(n) for n in ("CogVideoX-5b-I2V", "Wan2.2-TI2V-5B", "Wan2.1-T2V-14B",
                                                                "Wan2.2-I2V-A14B"))
COGVIDEOX_5B_I2V, COGVIDEOX_VAE = _COG5_I2V.transformer, _COG5_I2V.vae
WAN22_TI2V_5B, WAN22_VAE = _TI2V.transformer, _TI2V.vae
WAN_14B, WAN21_VAE = _WAN14.transformer, _WAN14.vae
WAN22_I2V_A14B_EXPERT = _A14B_I2V.transformer

# name -> family, task, (frames, height, width), transformer config, text encoder, VAE (class, config, dtype),
# latent (channels, temporal and spatial compression), text tokens, goal (GB)
MODELS = {
    "CogVideoX-5B-I2V": dict(family="cogvideox", task="i2v", size=(49, 480, 720), transformer=COGVIDEOX_5B_I2V,
                             text_encoder=("T5EncoderModel", T5_XXL), vae=("AutoencoderKLCogVideoX", COGVIDEOX_VAE,
                                                                           torch.bfloat16),
                             latent=(16, 4, 8), text=226, goal=24),
    "Wan2.2-TI2V-5B": dict(family="wan", task="t2v", expand_timesteps=True, size=(121, 704, 1280), transformer=WAN22_TI2V_5B,
                           text_encoder=("UMT5EncoderModel", UMT5_XXL), vae=("AutoencoderKLWan", WAN22_VAE,
                                                                             torch.float32),
                           latent=(48, 4, 16), text=512, goal=None),
    "Wan2.1-T2V-14B": dict(family="wan", task="t2v", size=(81, 480, 832), transformer=WAN_14B,
                           text_encoder=("UMT5EncoderModel", UMT5_XXL), vae=("AutoencoderKLWan", WAN21_VAE,
                                                                             torch.float32),
                           latent=(16, 4, 8), text=512, goal=80),
    "Wan2.2-I2V-A14B, one expert": dict(family="wan", task="i2v", size=(81, 480, 832), transformer=WAN22_I2V_A14B_EXPERT,
                                        text_encoder=("UMT5EncoderModel", UMT5_XXL),
                                        vae=("AutoencoderKLWan", WAN21_VAE, torch.float32),
                                        latent=(16, 4, 8), text=512, goal=80),
}
for _name, _task in (("HunyuanVideo-1.5-480p_t2v", "t2v"), ("HunyuanVideo-1.5-480p_i2v", "i2v")):
    _c = get_config(_name)
    # Qwen2.5-VL-7B's text model and ByT5 (and SigLIP for image-to-video), resident in the official loop;
    # 1000 + 256 text tokens and 729 image tokens join the video tokens in every block
    MODELS[_name] = dict(family="hunyuanvideo15", config=_name, task=_task, size=_c.size, transformer=_c.transformer,
                         text_encoder=[("Qwen2_5_VLTextModel", QWEN25_VL_7B_TEXT), ("T5EncoderModel", BYT5_GLYPH)]
                         + ([("SiglipVisionModel", SIGLIP_SO400M_384)] if _task == "i2v" else []),
                         vae=("AutoencoderKLHunyuanVideo15", _c.vae, torch.float32), latent=(32, 4, 16), patch=1,
                         text=_c.max_sequence_length, joint_text=_c.max_sequence_length + _c.max_sequence_length_2 + 729,
                         goal=None)
for _name, _task in (("LTX-2", "t2v"), ("LTX-2_i2v", "i2v")):
    _c = get_config(_name)
    # Gemma 3 12B (with its vision tower, as Gemma3ForConditionalGeneration loads it) and the text connectors; the
    # audio stream's 126 tokens run beside the video's (the VAE: the video one; the audio VAE is never loaded here)
    MODELS[_name] = dict(family="ltx2", config=_name, task=_task, size=_c.size, transformer=_c.transformer,
                         text_encoder=[("Gemma3ForConditionalGeneration", GEMMA3_12B), ("LTX2TextConnectors", None)],
                         vae=("AutoencoderKLLTX2Video", _c.vae, torch.float32), latent=(128, 8, 32), patch=1,
                         text=_c.max_sequence_length, goal=None)


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype):
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


class _FlashMemory(torch.autograd.Function):
    """Attention with flash attention's memory (meta tensors only: shapes, no values)."""

    @staticmethod
    def forward(ctx, q, k, v):
        out = torch.empty_like(q)
        lse = q.new_empty(q.shape[:-1], dtype=torch.float32)
        ctx.save_for_backward(q, k, v, out, lse)
        return out

    @staticmethod
    def backward(ctx, grad):
        q, k, v, _, _ = ctx.saved_tensors
        return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


@contextlib.contextmanager
def flash_attention_memory():
    import torch.nn.functional as F

    sdpa = F.scaled_dot_product_attention

    def meta_sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
        if query.device.type != "meta":
            return sdpa(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale,
                        enable_gqa=enable_gqa)
        return _FlashMemory.apply(query, key, value)

    F.scaled_dot_product_attention = meta_sdpa
    try:
        yield
    finally:
        F.scaled_dot_product_attention = sdpa


class known_masks:  # noqa: N801  (a context manager, named as one)
    """Meta tensors whose elements are all one known value (masks made with ones or zeros) keep it through the ops
    masks go through, so boolean indexing by them gets its true shape and `if mask.all()` its true branch; every
    other op runs as it is. HunyuanVideo 1.5's transformer reorders its text and image tokens by their masks (a
    permutation: the token count is unchanged) and tests whether its image tokens are all zero, data-dependent steps
    the meta device cannot take alone. Inside a TensorTracker, whatever is made here is counted there."""

    KEEP = {"_to_copy", "clone", "contiguous", "cat", "stack", "repeat", "expand_copy", "index_select",
            "unsqueeze_copy", "view_copy", "_unsafe_view"}

    def __enter__(self):
        import weakref

        from torch.utils._python_dispatch import TorchDispatchMode

        values: dict[int, object] = {}
        aten = torch.ops.aten

        def key(t):
            return t.untyped_storage()._cdata

        def get(t):
            if isinstance(t, torch.Tensor) and t.device.type == "meta":
                return values.get(key(t), (None, None))[1]
            return None

        def put(t, v):
            storage = t.untyped_storage()
            k = storage._cdata
            values[k] = (weakref.ref(storage, lambda _, k=k: values.pop(k, None)), v)

        def tensors(args):
            for a in args:
                if isinstance(a, torch.Tensor):
                    yield a
                elif isinstance(a, (list, tuple)):
                    yield from (x for x in a if isinstance(x, torch.Tensor))

        def bool_index(indices):
            idx = [i for i in indices if i is not None]
            if len(idx) == 1 and idx[0].dtype == torch.bool and get(idx[0]) is not None and indices[0] is idx[0]:
                return idx[0]
            return None

        class _Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                kwargs = kwargs or {}
                name = func.overloadpacket.__name__
                if func in (aten._local_scalar_dense.default, aten.is_nonzero.default) and get(args[0]) is not None:
                    return get(args[0])
                if func is aten.index.Tensor and bool_index(args[1]) is not None:
                    x, mask = args[0], bool_index(args[1])
                    rows = mask.numel() if get(mask) else 0
                    return x.new_empty((rows, *x.shape[mask.dim():]))
                if name in ("index_put", "index_put_", "_index_put_impl_") and bool_index(args[1]) is not None:
                    return args[0] if name != "index_put" else args[0].clone()  # the gradient of x[mask]
                out = func(*args, **kwargs)
                if func._schema.is_mutable:  # written in place: no longer known
                    for t in tensors(args):
                        values.pop(key(t), None) if t.device.type == "meta" else None
                    return out
                if not isinstance(out, torch.Tensor) or out.device.type != "meta":
                    return out
                v = None
                if name in ("ones", "ones_like", "new_ones"):
                    v = 1
                elif name in ("zeros", "zeros_like", "new_zeros"):
                    v = 0
                elif name in ("full", "full_like", "new_full"):
                    v = args[-1] if name != "new_full" else args[2]
                    v = v if isinstance(v, (int, float, bool)) else None
                elif name in ("bitwise_not", "logical_not") and get(args[0]) is not None:
                    v = not get(args[0])
                elif name in ("eq", "ne") and get(args[0]) is not None and isinstance(args[1], (int, float)):
                    v = (get(args[0]) == args[1]) == (name == "eq")
                elif name in ("all", "any") and get(args[0]) is not None:
                    v = bool(get(args[0]))
                elif name in self_keep:
                    known = [get(t) for t in tensors(args)]
                    if known and all(k is not None for k in known) and len(set(known)) == 1:
                        v = known[0]
                if v is not None:
                    put(out, bool(v) if out.dtype == torch.bool else v)
                return out

        self_keep = self.KEEP
        self._mode = _Mode()
        self._mode.__enter__()
        return self

    def __exit__(self, *exc):
        self._mode.__exit__(*exc)


# ---- models on the meta device (or real, small) ----------------------------------------------------------------
TRANSFORMERS = {"cogvideox": "CogVideoXTransformer3DModel", "wan": "WanTransformer3DModel",
                "hunyuanvideo15": "HunyuanVideo15Transformer3DModel", "ltx2": "LTX2VideoTransformer3DModel"}


def text_encoder(cls_name: str, cfg: dict | None) -> torch.nn.Module:
    """One text (or image) encoder of the official loop, built in the current device and dtype."""
    import transformers

    if cls_name == "LTX2TextConnectors":
        from diffusers.pipelines.ltx2 import LTX2TextConnectors

        from realdpo.models.configs import LTX2_CONNECTORS

        return LTX2TextConnectors(**LTX2_CONNECTORS)
    config_cls = {"T5EncoderModel": transformers.T5Config, "UMT5EncoderModel": transformers.UMT5Config,
                  "Qwen2_5_VLTextModel": transformers.Qwen2_5_VLTextConfig,
                  "SiglipVisionModel": transformers.SiglipVisionConfig,
                  "Gemma3ForConditionalGeneration": transformers.Gemma3Config}[cls_name]
    return getattr(transformers, cls_name)(config_cls(**cfg))


def build_transformer(m: dict, device, dtype, num_layers: int | None = None) -> torch.nn.Module:
    import diffusers

    cfg = dict(m["transformer"])
    if num_layers is not None:
        cfg["num_layers"] = num_layers
    cls = getattr(diffusers, TRANSFORMERS[m["family"]])
    with torch.device(device), default_dtype(dtype):
        tr = cls(**cfg)
    keep = getattr(cls, "_keep_in_fp32_modules", None) or ()
    for n, p in tr.named_parameters():  # what from_pretrained(torch_dtype=bf16) keeps in fp32 (diffusers' rule)
        if any(m in n.split(".") for m in keep):
            p.data = p.data.float()
    return tr.requires_grad_(False)


def component_bytes(m: dict) -> dict[str, int]:
    """Resident bytes of the transformer, text encoder and VAE as a bf16 run loads them (VAE: its dtype)."""
    import diffusers

    encoders = m["text_encoder"] if isinstance(m["text_encoder"], list) else [m["text_encoder"]]
    vae_cls, vae_cfg, vae_dtype = m["vae"]
    with torch.device("meta"), default_dtype(torch.bfloat16):
        encoder_bytes = sum(resident_bytes(text_encoder(*e))["meta"] for e in encoders)
    with torch.device("meta"), default_dtype(vae_dtype):
        vae = getattr(diffusers, vae_cls)(**vae_cfg)
    return {"transformer": resident_bytes(build_transformer(m, "meta", torch.bfloat16))["meta"],
            "text_encoder": encoder_bytes, "vae": resident_bytes(vae)["meta"]}


def latent_shape(m: dict) -> tuple[int, ...]:
    frames, height, width = m["size"]
    c, t, s = m["latent"]
    f, h, w = (frames - 1) // t + 1, height // s, width // s
    return (f, c, h, w) if m["family"] == "cogvideox" else (c, f, h, w)


def tokens(m: dict) -> int:
    """Tokens of one row in the transformer's joint attention: the video's, plus the text's where they join."""
    shape = latent_shape(m)
    f, h, w = (shape[0], shape[2], shape[3]) if m["family"] == "cogvideox" else shape[1:]
    p = m.get("patch", 2)
    joint = m["text"] if m["family"] == "cogvideox" else m.get("joint_text", 0)
    return f * (h // p) * (w // p) + joint


_AUX_SPECS: dict[str, object] = {}


def aux_spec(m: dict):
    """HunyuanVideo 1.5 and LTX-2: the family's spec over its true configuration built at depth 1 on the meta device
    (its scheduler, VAE and audio settings); make_spec puts the simulated transformer in. Built before a tracker
    starts, so none of it is counted."""
    from realdpo.models import HunyuanVideo15Spec, LTX2Spec
    from realdpo.models.builders import build_pipeline

    name = m["config"]
    if name not in _AUX_SPECS:
        cls = HunyuanVideo15Spec if m["family"] == "hunyuanvideo15" else LTX2Spec
        _AUX_SPECS[name] = cls.from_pipeline(build_pipeline(name, task=m["task"], num_layers=1, device="meta"),
                                             task=m["task"], path=f"<{name}>")
    return _AUX_SPECS[name]


def make_spec(m: dict, transformer, device, dtype):
    """The family's spec around a bare transformer: the real per_sample_error, no pipeline folder."""
    import functools

    from realdpo.models.cogvideox import CogVideoXSpec
    from realdpo.models.wan import WanSpec

    if m["family"] in ("hunyuanvideo15", "ltx2"):
        spec = copy.copy(aux_spec(m))
    elif m["family"] == "cogvideox":
        from diffusers import CogVideoXPipeline

        spec = CogVideoXSpec.__new__(CogVideoXSpec)
        spec.alphas_cumprod = torch.linspace(0.999, 0.001, 1000)  # values do not matter here
        spec.num_train_timesteps, spec.scale_spatial, spec._rotary_cache = 1000, 8, {}
        helper = functools.partial(CogVideoXPipeline._prepare_rotary_positional_embeddings,
                                   SimpleNamespace(vae_scale_factor_spatial=8, transformer=transformer))
        spec.pipeline = lambda: SimpleNamespace(_prepare_rotary_positional_embeddings=helper)
    else:
        spec = WanSpec.__new__(WanSpec)
        spec.num_train_timesteps, spec.shift = 1000, 5.0
        spec.expand_timesteps = bool(m.get("expand_timesteps"))  # TI2V-5B: one timestep per token
        spec.boundary_ratio, spec._draw_ranges = None, None  # one expert
    spec.transformer, spec.task, spec.device, spec.dtype = transformer, m["task"], torch.device(device), dtype
    return spec


def make_batch(m: dict, spec, device, dtype, latent=None, b: int = 1, k: int = 3):
    latent = latent or latent_shape(m)
    g = torch.Generator().manual_seed(0)

    def rand(*shape, dt=torch.float32):
        return torch.randn(*shape, generator=g).to(device, dt) if device != "meta" else \
            torch.empty(*shape, device="meta", dtype=dt)

    def ones(*shape, dt=torch.long):
        return torch.ones(*shape, device=device, dtype=dt)

    cond = {"prompt_embeds": rand(b, m["text"], 4096, dt=dtype)}
    if m["family"] == "hunyuanvideo15":  # masks of ones: the transformer reorders the tokens by them
        cond = {"prompt_embeds": rand(b, m["text"], 3584, dt=dtype), "prompt_embeds_mask": ones(b, m["text"]),
                "prompt_embeds_2": rand(b, m["joint_text"] - m["text"] - 729, 1472, dt=dtype),
                "prompt_embeds_mask_2": ones(b, m["joint_text"] - m["text"] - 729)}
        if m["task"] == "i2v":  # the first frame's latents and SigLIP tokens (not all zero: image-to-video)
            cond.update(image_latents=rand(b, latent[0], 1, *latent[2:]), image_embeds=ones(b, 729, 1152, dt=dtype))
    elif m["family"] == "ltx2":  # the connectors' outputs (3840 wide) and their mask
        cond = {"prompt_embeds": rand(b, m["text"], 3840, dt=dtype), "audio_prompt_embeds": rand(b, m["text"], 3840,
                                                                                                   dt=dtype),
                "prompt_attention_mask": ones(b, m["text"])}
        if m["task"] == "i2v":
            cond["image_latents"] = rand(b, latent[0], 1, *latent[2:])
    elif m["task"] == "i2v" and m["family"] == "cogvideox":
        cond["image_latents"] = rand(b, 1, *latent[1:])
    elif m["task"] == "i2v":
        cond["image_condition"] = rand(b, 4 + latent[0], *latent[1:])
    t = spec.sample_timesteps(b, 0.0, 0.5, generator=g).to(device)
    return rand(b, *latent), rand(b, k, *latent), rand(*spec.noise_shape((b, *latent))), t, cond  # (LTX-2: + audio)


def simulate(m: dict, side: str, *, fp8: bool = False, checkpointing: bool = True, chunk: int | None = 1,
             keep_graph: bool = False, rank: int = 16, k: int = 3) -> dict[str, int]:
    """Run one step of `side` on meta tensors at the model's true size in bf16; bytes of weights and peak."""
    from realdpo.models.placement import enable_fp8_storage

    if m["family"] in ("hunyuanvideo15", "ltx2"):
        aux_spec(m)  # its VAE and scheduler, built before the count starts
    with flash_attention_memory(), TensorTracker() as tracker, known_masks():
        tr = build_transformer(m, "meta", torch.bfloat16)
        spec = make_spec(m, tr, "meta", torch.bfloat16)
        if fp8:
            enable_fp8_storage(tr, torch.bfloat16)
        base_copy = copy.deepcopy(tr).eval() if side == "official" else None
        params = dpo_step.add_lora(spec, rank)
        if checkpointing:
            tr.enable_gradient_checkpointing()
        tr.train()
        weights = tracker.live
        data = make_batch(m, spec, "meta", torch.bfloat16, k=k)
        runner = dpo_step.Ours(spec, data, 5000.0, chunk, keep_graph) if side == "realdpo" \
            else dpo_step.Official(spec, data, 5000.0, base_copy)
        runner.step()
    lora = sum(p.numel() for p in params)
    return {"weights": weights, "peak": tracker.peak, "adam": 8 * lora, "lora": lora}


# ---- 2: one block at true width ---------------------------------------------------------------------------------
def block_activations(m: dict, device, dtype, latent) -> int:
    """Peak bytes of one transformer block's forward + backward for one row (LoRA on; its hidden states need a
    gradient, as inside the network). Real tensors: the allocator's peak; meta: the tracker's."""
    m = dict(m, transformer=dict(m["transformer"], use_learned_positional_embeddings=False)) \
        if m["family"] == "cogvideox" else m  # the learned table fixes the latent size; the block does not use it
    tr = build_transformer(m, device, dtype, num_layers=1)
    spec = make_spec(m, tr, device, dtype)
    dpo_step.add_lora(spec, 16)
    block = tr.transformer_blocks[0] if m["family"] == "cogvideox" else tr.blocks[0]
    captured = {}

    def grab(_module, args, kwargs):
        captured.update(args=args, kwargs=kwargs)
        raise StopIteration

    handle = block.register_forward_pre_hook(grab, with_kwargs=True)
    winners, _, noise, t, cond = make_batch(m, spec, device, dtype, latent=latent, k=1)
    with torch.no_grad(), flash_attention_memory(), contextlib.suppress(StopIteration):
        spec.per_sample_error(tr, winners, noise, t, cond)
    handle.remove()
    # the hidden states carry gradients (CogVideoX updates the text tokens too); temb and rotary tables do not
    grad_names = {"hidden_states", "encoder_hidden_states"} if m["family"] == "cogvideox" else {"hidden_states"}

    def prepare(x, needs_grad):
        return x.detach().requires_grad_(needs_grad) if isinstance(x, torch.Tensor) else x

    args = [prepare(x, i == 0) for i, x in enumerate(captured["args"])]
    kwargs = {n: prepare(x, n in grad_names) for n, x in captured["kwargs"].items()}

    def step():
        out = block(*args, **kwargs)
        outs = [o for o in (out if isinstance(out, tuple) else (out,)) if isinstance(o, torch.Tensor)]
        torch.autograd.backward(outs, [torch.ones_like(o) for o in outs])

    if device == "meta":
        with flash_attention_memory(), TensorTracker() as tracker:
            step()
        return tracker.peak
    return peak_allocated(step)


# ---- 4: options on a real CPU step ------------------------------------------------------------------------------
def options_on_cpu(repeat: int) -> list[tuple[str, int, int, float]]:
    """(option, resident bytes of weights + optimizer state, peak bytes of one step, median step seconds) on
    bench/dpo_step.py's medium size; the --no-lora rows include the optimizer step."""
    from realdpo.method.reference import FrozenCopyReference
    from realdpo.method.step import ErrorModel, build_inputs, preference_step
    from realdpo.models.placement import enable_fp8_storage
    from realdpo.training.optim import make_optimizer, state_bytes

    variants = {
        "plain: unchunked, no checkpointing": dict(chunk=None, ckpt=False),
        "--chunk-size 1 (streamed)": dict(chunk=1, ckpt=False),
        "--chunk-size 1 --keep-graph": dict(chunk=1, ckpt=False, keep=True),
        "--gradient-checkpointing": dict(chunk=None, ckpt=True),
        "--gradient-checkpointing --chunk-size 1": dict(chunk=1, ckpt=True),
        "--gradient-checkpointing --chunk-size 1 --fp8-base": dict(chunk=1, ckpt=True, fp8=True),
        "--no-lora (AdamW)": dict(chunk=None, ckpt=False, full="adamw"),
        "--no-lora --optimizer adamw8bit": dict(chunk=None, ckpt=False, full="adamw8bit"),
    }

    def setup(v: dict):
        """Build the variant and return (one training step, resident bytes)."""
        spec, latent, text = dpo_step.build("medium", torch.device("cpu"), torch.float32, v["ckpt"])
        winners, losers, noise, t, cond = dpo_step.batch(spec, latent, text, 1, 3, "cpu", torch.float32)
        tr = spec.transformer
        if v.get("full"):
            tr.requires_grad_(True)
            ref = FrozenCopyReference(tr)
            opt = make_optimizer(v["full"], tr.parameters(), lr=1e-5, weight_decay=0.0)
            inputs = build_inputs(winners, losers, cond, noise, t)

            def run():
                preference_step(ErrorModel(spec, tr), ref, spec, inputs, kind="dpo", beta=5000.0, chunk_size=v["chunk"])
                opt.step()
                opt.zero_grad(set_to_none=True)
            return run, lambda: resident_bytes(tr)["cpu"] + resident_bytes(ref.model)["cpu"] + state_bytes(opt)
        if v.get("fp8"):
            enable_fp8_storage(tr, torch.float32)
        params = dpo_step.add_lora(spec, 16)
        tr.train()
        runner = dpo_step.Ours(spec, (winners, losers, noise, t, cond), 5000.0, v["chunk"], v.get("keep", False))

        def run():
            runner.step()
            for p in params:
                p.grad = None
        return run, lambda: resident_bytes(tr)["cpu"]

    runs, peaks = {}, {}
    for name, v in variants.items():
        def first(name=name, v=v):
            runs[name] = setup(v)
            runs[name][0]()  # the first step, measured with the setup: it also warms up
        peaks[name] = peak_allocated(first)
    times = {name: [] for name in variants}
    for _ in range(repeat):  # all variants alternate, so machine load hits them alike
        for name, (run, _) in runs.items():
            t0 = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - t0)
    return [(name, runs[name][1](), peaks[name], statistics.median(times[name])) for name in variants]


def gib(x: float) -> str:
    return f"{x / GiB:.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--skip-cpu", action="store_true", help="Skip the CPU measurements (steps 2 and 4 and the check).")
    ap.add_argument("--skip-options", action="store_true",
                    help="Skip step 3's table of step options (5 more simulations of the first model).")
    ap.add_argument("--repeat", type=int, default=3, help="Timed steps per option in step 4.")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads.")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    models = {n: MODELS[n] for n in args.models}

    print("## 1. Resident weights (GiB; transformer bf16 with its fp32 modules, text encoder bf16, VAE as loaded)")
    weights = {}
    for name, m in models.items():
        weights[name] = component_bytes(m)
        w = weights[name]
        print(f"{name:30s} transformer {gib(w['transformer']):>5}  text encoder {gib(w['text_encoder']):>5}  "
              f"VAE {gib(w['vae']):>4}", flush=True)

    if not args.skip_cpu:
        print("\n## check: bench/dpo_step.py's medium size, one step simulated on meta vs measured on the CPU (MiB)")
        for side in ("realdpo", "official"):
            a = SimpleNamespace(size="medium", gradient_checkpointing=True, rank=16, batch=1, k=3, beta=5000.0,
                                chunk_size=1, keep_graph=False)

            def real(side=side, a=a):
                runner, _ = dpo_step.make(side, a, torch.device("cpu"), torch.float32)
                runner.step()
            measured = peak_allocated(real)
            with flash_attention_memory(), TensorTracker() as tracker:
                runner, _ = dpo_step.make(side, a, torch.device("meta"), torch.float32)
                runner.step()
            print(f"{side:9s} measured {measured / 2**20:7.1f}  simulated {tracker.peak / 2**20:7.1f}  "
                  f"ratio {tracker.peak / measured:.3f}", flush=True)

        print("\n## 2. One block's forward + backward, one row (LoRA on): allocator on real CPU tensors vs tracker")
        for name, m in models.items():
            small = (2, m["latent"][0], 8, 16) if m["family"] == "cogvideox" else (m["latent"][0], 2, 8, 16)
            real = block_activations(m, "cpu", torch.float32, small)
            meta = block_activations(m, "meta", torch.float32, small)
            full = block_activations(m, "meta", torch.bfloat16, None)
            print(f"{name:30s} fp32, 64 video tokens: measured {real / 2**20:6.1f} MiB, tracked {meta / 2**20:6.1f} "
                  f"MiB | bf16, {tokens(m)} tokens: {gib(full)} GiB", flush=True)

    print("\n## 3. Predicted peak accelerator memory of one LoRA-DPO step (GiB; K=3, rank 16, bf16, checkpointing)")
    header = ("| model | size | tokens/row | official loop | realdpo | realdpo + fp8 base | goal |\n"
              "| --- | --- | --- | --- | --- | --- | --- |")
    lines = [header]
    for name, m in models.items():
        w = weights[name]
        off = simulate(m, "official")
        ours = simulate(m, "realdpo")
        fp8 = simulate(m, "realdpo", fp8=True)
        total_off = off["peak"] + off["adam"] + w["text_encoder"] + w["vae"]
        total_ours, total_fp8 = ours["peak"] + ours["adam"], fp8["peak"] + fp8["adam"]
        f, h, wd = m["size"]
        goal = f"< {m['goal']} GB" if m["goal"] else ""
        lines.append(f"| {name} | {f}x{h}x{wd} | {tokens(m):,} | {gib(total_off)} | {gib(total_ours)} | "
                     f"{gib(total_fp8)} | {goal} |")
        print(lines[-1], flush=True)  # (the row as soon as it is known; the table follows at the end)
        print(f"{name}: official = step {gib(off['peak'])} (weights {gib(off['weights'])}) + text encoder "
              f"{gib(w['text_encoder'])} + VAE {gib(w['vae'])} + LoRA AdamW {gib(off['adam'])}; realdpo = step "
              f"{gib(ours['peak'])} (weights {gib(ours['weights'])}); + fp8 base: step {gib(fp8['peak'])} (weights "
              f"{gib(fp8['weights'])})", flush=True)
    first = next(iter(models))
    m = models[first]
    combos = [("unchunked, no checkpointing", dict(chunk=None, checkpointing=False)),
              ("unchunked, checkpointing", dict(chunk=None)),
              ("--chunk-size 1 --keep-graph, checkpointing", dict(keep_graph=True)),
              ("--chunk-size 1 (streamed), no checkpointing", dict(checkpointing=False)),
              ("--chunk-size 1 (streamed), checkpointing", dict())]
    combo_lines = [f"| {first}, realdpo step | predicted peak (GiB) |", "| --- | --- |"]
    for label, kw in combos if not args.skip_options else ():
        r = simulate(m, "realdpo", **kw)
        combo_lines.append(f"| {label} | {gib(r['peak'] + r['adam'])} |")
    print()
    print("\n".join(lines))
    if not args.skip_options:
        print()
        print("\n".join(combo_lines), flush=True)

    if not args.skip_cpu:
        print("\n## 4. Options on a real CPU step (bench/dpo_step.py medium: width 512, 8 layers, 192 tokens/row, fp32)")
        rows = options_on_cpu(args.repeat)
        base = rows[0]
        full = next(r for r in rows if r[0] == "--no-lora (AdamW)")
        print("| option | resident weights + state (MiB) | step peak (MiB) | step time (s) | time vs plain |")
        print("| --- | --- | --- | --- | --- |")
        for name, resident, peak, sec in rows:
            ref = full if name.startswith("--no-lora") else base
            print(f"| {name} | {resident / 2**20:.0f} | {peak / 2**20:.0f} | {sec:.3f} | {sec / ref[3]:.2f}x |")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
