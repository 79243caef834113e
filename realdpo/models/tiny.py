"""Tiny random-weight diffusers pipelines built from configs in code: the built-in default model and the tests' models.

They are saved with `save_pretrained` and loaded back through `load_spec`, the same path a real checkpoint takes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from realbase.errors import UserError
from realbase.files import atomic_dir

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

# HunyuanVideo 1.5: 8 latent channels in a 16x spatial / 4x temporal VAE; [noisy, condition, mask] on channels
HUNYUAN15_TRANSFORMER = dict(
    in_channels=2 * 8 + 1, out_channels=8, num_attention_heads=2, attention_head_dim=16, num_layers=1,
    num_refiner_layers=1, mlp_ratio=2.0, patch_size=1, patch_size_t=1, text_embed_dim=TEXT_DIM,
    text_embed_2_dim=TEXT_DIM, image_embed_dim=16, rope_axes_dim=(4, 6, 6), target_size=64,
)
HUNYUAN15_VAE = dict(latent_channels=8, block_out_channels=(8, 8, 16, 16, 16), layers_per_block=1,
                     spatial_compression_ratio=16, temporal_compression_ratio=4, scaling_factor=0.9)
HUNYUAN15_SCHEDULER = dict(num_train_timesteps=1000, shift=5.0)  # 480p's flow shift
HUNYUAN15_GUIDANCE = 6.0
# Qwen2.5-VL's chat template with the system message cut to its first 92 characters: with the byte-level tiny
# tokenizer the prompt then starts at token 108, where the pipeline crops (prompt_template_encode_start_idx), as
# with the real tokenizer and the full system message
QWEN_SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
QWEN_TINY_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['role'] == 'system' %}{{ message['content'][:92] }}{% else %}{{ message['content'] }}{% endif %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def tiny_qwen2_tokenizer(special_tokens: tuple[str, ...] = QWEN_SPECIAL_TOKENS,
                         chat_template: str | None = QWEN_TINY_CHAT_TEMPLATE):
    """A byte-level Qwen2 tokenizer over the 256 byte symbols (no merges) with `special_tokens` (the first is the
    padding token), built offline; `chat_template` None leaves it without one."""
    from tokenizers import pre_tokenizers
    from transformers import Qwen2Tokenizer

    vocab = {symbol: i for i, symbol in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    for token in special_tokens:
        vocab[token] = len(vocab)
    tok = Qwen2Tokenizer(vocab=vocab, merges=[], eos_token="<|im_end|>", pad_token=special_tokens[0])
    tok.add_special_tokens({"additional_special_tokens": list(special_tokens[1:])})
    if chat_template is not None:
        tok.chat_template = chat_template
    return tok


def hunyuan15_text_parts(text_dim: int, text_dim_2: int) -> dict:
    """HunyuanVideo 1.5's two tokenizers and text encoders as random stand-ins of the given output widths: a
    two-layer Qwen2.5-VL text model (the pipeline reads its third-to-last hidden state) and a one-layer ByT5."""
    from transformers import ByT5Tokenizer, Qwen2_5_VLTextConfig, Qwen2_5_VLTextModel, T5Config, T5EncoderModel

    tokenizer = tiny_qwen2_tokenizer()
    head_dim = 128 if text_dim % 128 == 0 else 16  # Qwen2.5-VL-7B's 128 (28 heads of 3584) where the width allows
    quarter = head_dim // 16  # mrope's (time, height, width) sections of head_dim / 2: 7B's [16, 24, 24] at 128
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIAL_TOKENS}
    qwen = Qwen2_5_VLTextConfig(
        vocab_size=len(tokenizer), hidden_size=text_dim, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=text_dim // head_dim, num_key_value_heads=1, max_position_embeddings=2048,
        rope_parameters=dict(rope_type="default", rope_theta=10000.0,
                             mrope_section=[2 * quarter, 3 * quarter, 3 * quarter]),
        bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"])
    torch.manual_seed(0)
    text_encoder = Qwen2_5_VLTextModel(qwen)
    byt5 = T5EncoderModel(T5Config(**{**T5_CONFIG, "d_model": text_dim_2, "num_layers": 1, "num_heads": 2}))
    return dict(tokenizer=tokenizer, text_encoder=text_encoder, tokenizer_2=ByT5Tokenizer(), text_encoder_2=byt5)


def siglip_parts(width: int, image_size: int = 32, patch_size: int = 8) -> dict:
    """A one-layer SigLIP vision tower of the given width and its processor (the image-to-video image encoder)."""
    from transformers import SiglipImageProcessor, SiglipVisionConfig, SiglipVisionModel

    torch.manual_seed(0)
    encoder = SiglipVisionModel(SiglipVisionConfig(hidden_size=width, intermediate_size=64, num_hidden_layers=1,
                                                   num_attention_heads=2, image_size=image_size,
                                                   patch_size=patch_size))
    return dict(image_encoder=encoder,
                feature_extractor=SiglipImageProcessor(size={"height": image_size, "width": image_size}))


def build_hunyuan15_pipeline(task: str, transformer, vae, scheduler, guidance: float, text_dim: int,
                             text_dim_2: int, image_dim: int, image_size: int = 32, patch_size: int = 8):
    """A HunyuanVideo 1.5 pipeline of `task` around the given transformer, VAE and scheduler, with stand-in text
    (and image) encoders of the given widths and a ClassifierFreeGuidance guider."""
    import diffusers

    parts = dict(transformer=transformer, vae=vae, scheduler=scheduler,
                 guider=diffusers.ClassifierFreeGuidance(guidance_scale=guidance),
                 **hunyuan15_text_parts(text_dim, text_dim_2))
    if task == "i2v":
        return diffusers.HunyuanVideo15ImageToVideoPipeline(**parts, **siglip_parts(image_dim, image_size, patch_size))
    return diffusers.HunyuanVideo15Pipeline(**parts)


# LTX-2: the true VAE layout (32x spatial, 8x temporal) at 8 latent channels; a 2-layer Gemma 3 stand-in, so the
# connectors take its 3 stacked hidden states; the audio branch at 2 channels x 2 latent mel bins
LTX2_TRANSFORMER = dict(
    in_channels=8, out_channels=8, num_attention_heads=2, attention_head_dim=8, cross_attention_dim=16,
    audio_in_channels=4, audio_out_channels=4, audio_num_attention_heads=2, audio_attention_head_dim=4,
    audio_cross_attention_dim=8, num_layers=1, caption_channels=TEXT_DIM, rope_type="split",
)
LTX2_VAE = dict(
    latent_channels=8, block_out_channels=(8, 16, 32, 64), decoder_block_out_channels=(8, 16, 32),
    layers_per_block=(1, 1, 1, 1, 1), decoder_layers_per_block=(1, 1, 1, 1), spatial_compression_ratio=32,
    temporal_compression_ratio=8,
)
LTX2_AUDIO_VAE_TINY = dict(base_channels=4, ch_mult=(1,), num_res_blocks=1, resolution=32, latent_channels=2,
                           mel_bins=8)
LTX2_CONNECTORS_TINY = dict(
    video_connector_num_attention_heads=4, video_connector_attention_head_dim=8, video_connector_num_layers=1,
    video_connector_num_learnable_registers=None, audio_connector_num_attention_heads=4,
    audio_connector_attention_head_dim=8, audio_connector_num_layers=1, audio_connector_num_learnable_registers=None,
    connector_rope_base_seq_len=32, rope_type="split",
)
LTX2_SCHEDULER = dict(num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=True, base_shift=0.95, max_shift=2.05,
                      base_image_seq_len=1024, max_image_seq_len=4096, shift_terminal=0.1)


def tiny_gemma_tokenizer():
    """A Gemma tokenizer over the 256 byte-fallback symbols and lower-case letters (no merges), built offline."""
    from transformers import GemmaTokenizer

    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<start_of_image>", "<end_of_image>",
                "<image_soft_token>"]
    vocab = {t: i for i, t in enumerate(specials)}
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    for ch in "\u2581abcdefghijklmnopqrstuvwxyz":
        vocab.setdefault(ch, len(vocab))
    return GemmaTokenizer(vocab=vocab, merges=[])


def ltx2_parts(text_dim: int, connectors, audio_vae, text_layers: int = 2) -> dict:
    """LTX-2's text and audio components around a transformer: a `text_layers`-layer Gemma 3 stand-in of width
    `text_dim` (its tiny SigLIP tower included, as Gemma3ForConditionalGeneration has one), the connectors (taking
    the stand-in's text_layers + 1 stacked hidden states), the audio VAE and a small vocoder. `connectors` and
    `audio_vae` are configs or already built modules."""
    from diffusers import AutoencoderKLLTX2Audio
    from diffusers.pipelines.ltx2 import LTX2TextConnectors
    from diffusers.pipelines.ltx2.vocoder import LTX2Vocoder
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration

    tokenizer = tiny_gemma_tokenizer()
    heads = max(1, text_dim // 128) if text_dim % 128 == 0 else 2
    cfg = Gemma3Config(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=text_dim, intermediate_size=64,
                         num_hidden_layers=text_layers, num_attention_heads=heads, num_key_value_heads=1,
                         head_dim=text_dim // heads, max_position_embeddings=2048, sliding_window=64),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                           image_size=28, patch_size=14),
        mm_tokens_per_image=4, boi_token_index=5, eoi_token_index=6, image_token_index=7)
    torch.manual_seed(0)
    text_encoder = Gemma3ForConditionalGeneration(cfg)
    torch.manual_seed(0)
    conn = connectors if isinstance(connectors, torch.nn.Module) else LTX2TextConnectors(
        **{**connectors, "caption_channels": text_dim, "text_proj_in_factor": text_layers + 1})
    torch.manual_seed(0)
    avae = audio_vae if isinstance(audio_vae, torch.nn.Module) else AutoencoderKLLTX2Audio(**audio_vae)
    torch.manual_seed(0)
    vocoder = LTX2Vocoder(in_channels=avae.config.output_channels * avae.config.mel_bins, hidden_channels=32,
                          out_channels=2, upsample_kernel_sizes=[4, 4], upsample_factors=[2, 2],
                          resnet_kernel_sizes=[3], resnet_dilations=[[1, 3, 5]], output_sampling_rate=16000)
    return dict(tokenizer=tokenizer, text_encoder=text_encoder, connectors=conn, audio_vae=avae, vocoder=vocoder)


def build_ltx2_pipeline(task: str, transformer, vae, scheduler, text_dim: int, connectors: dict, audio_vae: dict):
    """An LTX-2 pipeline of `task` around the given transformer, VAE and scheduler with stand-in text and audio
    components (`ltx2_parts`)."""
    import diffusers

    cls = diffusers.LTX2ImageToVideoPipeline if task == "i2v" else diffusers.LTX2Pipeline
    return cls(transformer=transformer, vae=vae, scheduler=scheduler, **ltx2_parts(text_dim, connectors, audio_vae))


def build_tiny_pipeline(family: str, task: str = "t2v", seed: int = 0, variant: str | None = None):
    """A tiny random-weight diffusers pipeline (deterministic for a given seed). variant="1.5": CogVideoX 1.5's
    layout (temporal patches, ofs embedding for i2v, inverted image-latent scaling). Wan variant "2.2-ti2v": TI2V-5B's
    (its VAE layout and per-token timesteps; the folder is a WanPipeline that also runs image-to-video);
    "2.2-a14b": A14B's two experts split at boundary_ratio (T2V 0.875, I2V 0.9; no CLIP image encoder)."""
    from transformers import ByT5Tokenizer

    if family not in ("cogvideox", "wan", "hunyuanvideo15", "ltx2") or task not in ("t2v", "i2v"):
        raise UserError(f"no tiny model for family={family!r} task={task!r}")
    torch.manual_seed(seed)
    if family == "ltx2":
        if variant is not None:
            raise UserError(f"unknown tiny LTX-2 variant {variant!r}")
        import diffusers

        transformer = diffusers.LTX2VideoTransformer3DModel(**LTX2_TRANSFORMER)
        vae = diffusers.AutoencoderKLLTX2Video(**LTX2_VAE)
        return build_ltx2_pipeline(task, transformer, vae, diffusers.FlowMatchEulerDiscreteScheduler(**LTX2_SCHEDULER),
                                   TEXT_DIM, LTX2_CONNECTORS_TINY, LTX2_AUDIO_VAE_TINY)
    if family == "hunyuanvideo15":
        if variant is not None:
            raise UserError(f"unknown tiny HunyuanVideo 1.5 variant {variant!r}")
        import diffusers

        transformer = diffusers.HunyuanVideo15Transformer3DModel(**HUNYUAN15_TRANSFORMER, task_type=task)
        vae = diffusers.AutoencoderKLHunyuanVideo15(**HUNYUAN15_VAE)
        return build_hunyuan15_pipeline(task, transformer, vae,
                                        diffusers.FlowMatchEulerDiscreteScheduler(**HUNYUAN15_SCHEDULER),
                                        HUNYUAN15_GUIDANCE, TEXT_DIM, TEXT_DIM, HUNYUAN15_TRANSFORMER["image_embed_dim"])
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
    if family in ("wan", "hunyuanvideo15", "ltx2"):  # no frame count in their configs: what this toy model runs at
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
    with atomic_dir(target, if_absent=True) as tmp:  # another process may build it at the same time
        save_tiny_pipeline("cogvideox", "t2v", tmp)
    return target
