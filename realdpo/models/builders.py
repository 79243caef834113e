"""Random-weight diffusers pipelines built from the true configurations in `realdpo.models.configs`.

`build_pipeline(name, num_layers=1, ...)` builds a checkpoint's pipeline with its true transformer width, heads,
patch sizes and positional embeddings, its true VAE and scheduler, and only the depth (and, for CogVideoX's
learned/sin-cos tables, the latent sample size) changed; the text and image encoders are one-layer stand-ins of the
true output width. `device="meta"` builds the transformer(s) and VAE without memory, at any depth, to check shapes.

Weights are random: every parameter is drawn from one pooled normal sequence at a random offset (a one-layer
5120-wide Wan transformer is 0.6 B parameters; pooled drawing makes it 20x cheaper than `normal_`), scaled by
1/sqrt(fan-in); buffers keep the values the model's constructor computes (rotary tables, sin-cos positions).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from realdpo.models.configs import ModelConfig, get_config

_POOL = 1_000_003  # prime, so rows of any width see different windows of the pool


@torch.no_grad()
def random_weights_(module: torch.nn.Module, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """Give every parameter of `module` (meta or not) fresh random values on the CPU; buffers are left as they are."""
    g = torch.Generator().manual_seed(seed)
    pool = torch.randn(_POOL, generator=g)
    pool = torch.cat([pool, pool])
    for mod in module.modules():
        for name, p in list(mod._parameters.items()):
            if p is None:
                continue
            value = torch.empty(p.shape, dtype=dtype)
            flat = value.view(-1)
            if p.dim() >= 2:
                scale, shift = 1.0 / math.sqrt(p[0].numel()), 0.0
            elif name in ("weight", "gamma") or name.endswith("scale"):
                scale, shift = 0.1, 1.0  # norm gains near one
            else:
                scale, shift = 0.02, 0.0
            offset = int(torch.randint(0, _POOL, (1,), generator=g))
            for start in range(0, flat.numel(), _POOL):  # one pass over the new tensor
                part = flat[start:start + _POOL]
                torch.mul(pool[offset:offset + part.numel()], scale, out=part)
            if shift:
                flat.add_(shift)
            mod._parameters[name] = torch.nn.Parameter(value, requires_grad=p.requires_grad)
    return module


def _empty(cls, config: dict[str, Any], device: str):
    """The model with parameters on the meta device; buffers real (CPU) unless `device` is "meta"."""
    from accelerate import init_empty_weights

    if device == "meta":
        with torch.device("meta"):
            return cls(**config)
    with init_empty_weights(include_buffers=False):
        return cls(**config)


def build_transformer(cfg: ModelConfig | str, *, num_layers: int | None = None, device: str = "cpu", seed: int = 0,
                      dtype: torch.dtype = torch.float32, **overrides):
    import diffusers

    cfg = get_config(cfg) if isinstance(cfg, str) else cfg
    config = {**cfg.transformer, **({"num_layers": num_layers} if num_layers else {}), **overrides}
    model = _empty(getattr(diffusers, cfg.transformer_class), config, device)
    return model if device == "meta" else random_weights_(model, seed, dtype)


def build_vae(cfg: ModelConfig | str, *, device: str = "cpu", seed: int = 0, **overrides):
    import diffusers

    cfg = get_config(cfg) if isinstance(cfg, str) else cfg
    model = _empty(getattr(diffusers, cfg.vae_class), {**cfg.vae, **overrides}, device)
    return model if device == "meta" else random_weights_(model, seed + 1)


def _text_encoder(cfg: ModelConfig):
    from transformers import T5Config, T5EncoderModel, UMT5Config, UMT5EncoderModel

    from realdpo.models.tiny import BYT5_VOCAB

    kw = dict(vocab_size=BYT5_VOCAB, d_model=cfg.text_dim, d_kv=8, d_ff=32, num_layers=1, num_heads=2,
              relative_attention_num_buckets=8, dropout_rate=0.0, feed_forward_proj="gated-gelu",
              decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    torch.manual_seed(0)
    if cfg.family == "cogvideox":
        return T5EncoderModel(T5Config(**kw))
    return UMT5EncoderModel(UMT5Config(**kw))


def _image_encoder(width: int):
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(0)
    # one layer of ViT-H/14's width; 56 px images (17 tokens, the real one takes 224 px: 257) keep it cheap
    encoder = CLIPVisionModel(CLIPVisionConfig(hidden_size=width, intermediate_size=64, projection_dim=64,
                                               num_hidden_layers=1, num_attention_heads=16, image_size=56,
                                               patch_size=14))
    processor = CLIPImageProcessor(size={"shortest_edge": 56}, crop_size={"height": 56, "width": 56})
    return encoder, processor


# HunyuanVideo 1.5's target_size is the pixel size its image-to-video pipeline buckets the first frame to
INPUT_SIZE_FIELDS = {"sample_frames", "sample_height", "sample_width", "max_text_seq_length", "target_size"}


def build_pipeline(cfg: ModelConfig | str, *, task: str | None = None, num_layers: int | None = 1,
                   device: str = "cpu", seed: int = 0, dtype: torch.dtype = torch.float32,
                   transformer_overrides: dict[str, Any] | None = None, vae: torch.nn.Module | None = None):
    """The checkpoint's diffusers pipeline with random weights. `task` picks the pipeline class for a model that
    does both (Wan2.2-TI2V-5B: "i2v" gives WanImageToVideoPipeline). `transformer_overrides` may change only input
    sizes: CogVideoX's latent sample size (which sizes its sin-cos or learned position table) and text length,
    HunyuanVideo 1.5's target_size;
    anything else is refused. `vae` reuses an already built VAE of this configuration."""
    import diffusers
    from transformers import ByT5Tokenizer

    cfg = get_config(cfg) if isinstance(cfg, str) else cfg
    overrides = dict(transformer_overrides or {})
    if set(overrides) - INPUT_SIZE_FIELDS:
        raise ValueError(f"only input sizes may change, got {sorted(overrides)}")
    task = task or cfg.task
    if cfg.family == "ltx2":
        from realdpo.models.configs import LTX2_AUDIO_VAE, LTX2_CONNECTORS
        from realdpo.models.tiny import build_ltx2_pipeline

        if task != cfg.task:
            raise ValueError(f"{cfg.name} is a {cfg.task} model")
        # the connectors at their true width with the transformer's depth cut (at most 2, their true depth), over a
        # 2-layer Gemma 3 stand-in of the true width (so they take 3 stacked hidden states, not 49)
        from diffusers.pipelines.ltx2 import LTX2TextConnectors

        depth = min(num_layers or 2, 2)
        connectors = _empty(LTX2TextConnectors, {**LTX2_CONNECTORS, "video_connector_num_layers": depth,
                                                 "audio_connector_num_layers": depth, "text_proj_in_factor": 3}, device)
        audio_vae = _empty(diffusers.AutoencoderKLLTX2Audio, LTX2_AUDIO_VAE, device)
        if device != "meta":
            random_weights_(connectors, seed + 2, dtype)
            random_weights_(audio_vae, seed + 3)
        return build_ltx2_pipeline(
            task, build_transformer(cfg, num_layers=num_layers, device=device, seed=seed, dtype=dtype, **overrides),
            vae if vae is not None else build_vae(cfg, device=device, seed=seed),
            getattr(diffusers, cfg.scheduler_class)(**cfg.scheduler), cfg.text_dim, connectors, audio_vae)
    if cfg.family == "hunyuanvideo15":
        from realdpo.models.tiny import build_hunyuan15_pipeline

        if task != cfg.task:
            raise ValueError(f"{cfg.name} is a {cfg.task} model")
        # SigLIP stand-in at 56 px in patches of 14: 16 tokens (the real one takes 384 px: 729)
        return build_hunyuan15_pipeline(
            task, build_transformer(cfg, num_layers=num_layers, device=device, seed=seed, dtype=dtype, **overrides),
            vae if vae is not None else build_vae(cfg, device=device, seed=seed),
            getattr(diffusers, cfg.scheduler_class)(**cfg.scheduler), cfg.guidance, cfg.text_dim, cfg.text_dim_2,
            cfg.image_encoder_dim or 1152, image_size=56, patch_size=14)
    pipe_name = cfg.pipeline
    if cfg.pipeline_config.get("expand_timesteps") and task == "i2v":
        pipe_name = "WanImageToVideoPipeline"
    elif task != cfg.task:
        raise ValueError(f"{cfg.name} is a {cfg.task} model")
    parts: dict[str, Any] = dict(
        tokenizer=ByT5Tokenizer(), text_encoder=_text_encoder(cfg),
        vae=vae if vae is not None else build_vae(cfg, device=device, seed=seed),
        transformer=build_transformer(cfg, num_layers=num_layers, device=device, seed=seed, dtype=dtype, **overrides),
        scheduler=getattr(diffusers, cfg.scheduler_class)(**cfg.scheduler))
    if cfg.two_experts:
        parts["transformer_2"] = build_transformer(cfg, num_layers=num_layers, device=device, seed=seed + 7,
                                                   dtype=dtype, **overrides)
    if pipe_name == "WanImageToVideoPipeline" and cfg.image_encoder_dim:
        parts["image_encoder"], parts["image_processor"] = _image_encoder(cfg.image_encoder_dim)
    return getattr(diffusers, pipe_name)(**parts, **cfg.pipeline_config)


__all__ = ["build_pipeline", "build_transformer", "build_vae", "random_weights_"]
