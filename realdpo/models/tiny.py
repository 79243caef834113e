"""Tiny random-weight diffusers pipelines built from configs in code: the built-in default model and the tests' models.

They are saved with `save_pretrained` and loaded back through `load_spec`, the same path a real checkpoint takes.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from realaction.errors import UserError

BUILTIN_NAME = "tiny-cogvideox-t2v"
BUILTIN_VERSION = "1"

TEXT_DIM = 32
BYT5_VOCAB = 384  # ByT5Tokenizer(): 3 special + 256 bytes + 125 extra ids

# CogVideoX: 8 latent channels, 8x spatial / 4x temporal VAE, rotary positions (as CogVideoX-5B), 128 text tokens.
COGVIDEOX_TRANSFORMER = dict(
    num_attention_heads=4, attention_head_dim=16, in_channels=8, out_channels=8, time_embed_dim=32,
    text_embed_dim=TEXT_DIM, num_layers=2, sample_width=8, sample_height=8, sample_frames=9, patch_size=2,
    temporal_compression_ratio=4, max_text_seq_length=128, use_rotary_positional_embeddings=True,
)
COGVIDEOX_VAE = dict(
    in_channels=3, out_channels=3, down_block_types=("CogVideoXDownBlock3D",) * 4, up_block_types=("CogVideoXUpBlock3D",) * 4,
    block_out_channels=(8, 8, 16, 16), latent_channels=8, layers_per_block=1, norm_num_groups=4,
    temporal_compression_ratio=4, sample_height=64, sample_width=64, scaling_factor=0.7,
)
COGVIDEOX_SCHEDULER = dict(  # CogVideoX-2b's scheduler config
    beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False, num_train_timesteps=1000,
    prediction_type="v_prediction", rescale_betas_zero_snr=True, set_alpha_to_one=True, snr_shift_scale=3.0,
    steps_offset=0, timestep_spacing="trailing",
)

# Wan 2.1: 4 latent channels with a non-trivial latents_mean/std, so the normalisation is exercised.
WAN_TRANSFORMER = dict(
    patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=4, text_dim=TEXT_DIM,
    freq_dim=32, ffn_dim=32, num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads", rope_max_seq_len=32,
)
WAN_VAE = dict(
    base_dim=8, z_dim=4, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True],
    latents_mean=[0.1, -0.2, 0.3, 0.0], latents_std=[1.5, 0.8, 1.2, 2.0],
)
WAN_SCHEDULER = dict(  # Wan2.1-T2V-1.3B-Diffusers' scheduler config
    prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0, num_train_timesteps=1000,
    solver_order=2, solver_type="bh2", timestep_spacing="linspace", final_sigmas_type="zero",
)

CLIP_VISION = dict(hidden_size=16, intermediate_size=32, projection_dim=16, num_hidden_layers=2, num_attention_heads=2,
                   image_size=32, patch_size=8)

T5_CONFIG = dict(vocab_size=BYT5_VOCAB, d_model=TEXT_DIM, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                 relative_attention_num_buckets=8, dropout_rate=0.0, feed_forward_proj="gated-gelu",
                 decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)


# Wan 2.2 TI2V-5B's layout: 2x2 pixel patches into a residual VAE with 16x spatial compression, more channels
WAN22_VAE = dict(
    base_dim=8, decoder_base_dim=8, z_dim=8, dim_mult=[1, 1, 1, 1], num_res_blocks=1, is_residual=True,
    in_channels=12, out_channels=12, patch_size=2, scale_factor_spatial=16, temperal_downsample=[False, True, True],
    latents_mean=[0.1, -0.1, 0.2, 0.0, -0.2, 0.05, 0.0, 0.1], latents_std=[0.5, 1.0, 0.8, 1.2, 0.6, 0.9, 1.1, 0.7],
)
WAN_VARIANTS = (None, "2.2-ti2v", "2.2-a14b")


def build_tiny_pipeline(family: str, task: str = "t2v", seed: int = 0, variant: str | None = None):
    """A tiny random-weight diffusers pipeline (deterministic for a given seed). variant="1.5": CogVideoX 1.5's
    layout (temporal patches, ofs embedding for i2v, inverted image-latent scaling). Wan variant "2.2-ti2v": TI2V-5B's
    (its VAE layout and per-token timesteps; the folder is a WanPipeline that also runs image-to-video);
    "2.2-a14b": A14B's two experts split at boundary_ratio (T2V 0.875, I2V 0.9; no CLIP image encoder)."""
    from transformers import ByT5Tokenizer

    if family not in ("cogvideox", "wan") or task not in ("t2v", "i2v"):
        raise UserError(f"no tiny model for family={family!r} task={task!r}")
    torch.manual_seed(seed)
    tokenizer = ByT5Tokenizer()
    if family == "cogvideox":
        from diffusers import (
            AutoencoderKLCogVideoX,
            CogVideoXDDIMScheduler,
            CogVideoXImageToVideoPipeline,
            CogVideoXPipeline,
            CogVideoXTransformer3DModel,
        )
        from transformers import T5Config, T5EncoderModel

        cfg, vae_cfg = dict(COGVIDEOX_TRANSFORMER), dict(COGVIDEOX_VAE)
        if task == "i2v":
            cfg["in_channels"] = 2 * cfg["in_channels"]
        if variant == "1.5":
            cfg.update(patch_size_t=2, ofs_embed_dim=cfg["time_embed_dim"] if task == "i2v" else None)
            vae_cfg.update(invert_scale_latents=True)
        elif variant is not None:
            raise UserError(f"unknown tiny CogVideoX variant {variant!r}")
        transformer = CogVideoXTransformer3DModel(**cfg)
        vae = AutoencoderKLCogVideoX(**vae_cfg)
        text_encoder = T5EncoderModel(T5Config(**T5_CONFIG))
        scheduler = CogVideoXDDIMScheduler(**COGVIDEOX_SCHEDULER)
        cls = CogVideoXImageToVideoPipeline if task == "i2v" else CogVideoXPipeline
        return cls(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer, scheduler=scheduler)
    from diffusers import (
        AutoencoderKLWan,
        UniPCMultistepScheduler,
        WanImageToVideoPipeline,
        WanPipeline,
        WanTransformer3DModel,
    )
    from transformers import UMT5Config, UMT5EncoderModel

    if variant not in WAN_VARIANTS:
        raise UserError(f"unknown tiny Wan variant {variant!r}")
    cfg, vae_cfg = dict(WAN_TRANSFORMER), dict(WAN22_VAE if variant == "2.2-ti2v" else WAN_VAE)
    z = vae_cfg["z_dim"]
    options: dict = {}
    if variant == "2.2-ti2v":  # the first frame's latents replace the first noisy frame: no extra channels
        cfg.update(in_channels=z, out_channels=z)
        options["expand_timesteps"] = True
    elif task == "i2v":  # noise + (mask, first-frame latents) on channels; Wan 2.1: CLIP image tokens (added k/v)
        cfg.update(in_channels=2 * z + 4)
        if variant is None:
            inner = cfg["num_attention_heads"] * cfg["attention_head_dim"]
            cfg.update(image_dim=CLIP_VISION["hidden_size"], added_kv_proj_dim=inner)
    transformer = WanTransformer3DModel(**cfg)
    vae = AutoencoderKLWan(**vae_cfg)
    text_encoder = UMT5EncoderModel(UMT5Config(**T5_CONFIG))
    scheduler = UniPCMultistepScheduler(**WAN_SCHEDULER)
    parts = dict(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer, scheduler=scheduler)
    if variant == "2.2-a14b":
        parts["transformer_2"] = WanTransformer3DModel(**cfg)
        options["boundary_ratio"] = 0.9 if task == "i2v" else 0.875
    if task == "t2v" or variant == "2.2-ti2v":
        return WanPipeline(**parts, **options)
    if variant == "2.2-a14b":
        return WanImageToVideoPipeline(**parts, **options)
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    size = CLIP_VISION["image_size"]
    return WanImageToVideoPipeline(**parts, image_encoder=CLIPVisionModel(CLIPVisionConfig(**CLIP_VISION)),
                                   image_processor=CLIPImageProcessor(size={"shortest_edge": size},
                                                                      crop_size={"height": size, "width": size}))


def save_tiny_pipeline(family: str, task: str, out: Path, seed: int = 0, variant: str | None = None) -> Path:
    """Build a tiny pipeline and `save_pretrained` it into `out` (created). Returns `out`."""
    out = Path(out)
    pipe = build_tiny_pipeline(family, task, seed, variant)
    out.mkdir(parents=True, exist_ok=True)
    from realdpo.models.common import quiet_progress

    with quiet_progress():
        pipe.save_pretrained(out, safe_serialization=True)
    if family == "wan":  # Wan's transformer config has no sample size; tell the spec what this toy model runs at
        (out / "realdpo.json").write_text(json.dumps({"default_size": [9, 64, 64]}))
    return out


def cache_home() -> Path:
    home = os.environ.get("REALDPO_HOME")
    return Path(home).expanduser() if home else Path.home() / ".cache" / "realdpo"


def builtin_model_path() -> Path:
    """The built-in default model (tiny CogVideoX text-to-video), saved into $REALDPO_HOME/models (default
    ~/.cache/realdpo/models) on first use: built in a temporary folder, then renamed into place atomically."""
    target = cache_home() / "models" / f"{BUILTIN_NAME}-{BUILTIN_VERSION}"
    if (target / "model_index.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        save_tiny_pipeline("cogvideox", "t2v", tmp)
        try:
            os.rename(tmp, target)
        except OSError:  # another process won the race (target exists and is not empty)
            if not (target / "model_index.json").is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target
