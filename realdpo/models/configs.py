"""The true configurations of the checkpoints realdpo supports, as their public diffusers folders give them.

Each `ModelConfig` holds what sets a checkpoint's shapes and schedule: the transformer's and VAE's `config.json`, the
scheduler's, the pipeline's own config (Wan 2.2's `boundary_ratio` / `expand_timesteps`), the text encoder's width
and sequence length, the CLIP image encoder's width where the transformer takes CLIP tokens, and the documented
training size and frame rate. Tests build them at their true width and head layout with fewer layers and smaller
latents (`realdpo.models.builders`); benchmarks build them on the meta device at full depth.

Sources: the diffusers conversion scripts (`scripts/convert_cogvideox_to_diffusers.py`,
`scripts/convert_wan_to_diffusers.py`), the model classes' defaults in diffusers 0.42.1, and the model cards.
HunyuanVideo 1.5's 480p transformer config is the one copied in several public repositories' tests; LTX-2's are the
LTX-2.0 settings of diffusers' conversion script.
Fields that could not be checked against a downloaded `config.json` here are listed in `UNVERIFIED`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# ---- CogVideoX -------------------------------------------------------------------------------------------------
_COG_TRANSFORMER = dict(
    activation_fn="gelu-approximate", attention_bias=True, attention_head_dim=64, dropout=0.0, flip_sin_to_cos=True,
    freq_shift=0, in_channels=16, max_text_seq_length=226, norm_elementwise_affine=True, norm_eps=1e-5,
    num_attention_heads=30, num_layers=30, out_channels=16, patch_size=2, sample_frames=49, sample_height=60,
    sample_width=90, spatial_interpolation_scale=1.875, temporal_compression_ratio=4, temporal_interpolation_scale=1.0,
    text_embed_dim=4096, time_embed_dim=512, timestep_activation_fn="silu", use_learned_positional_embeddings=False,
    use_rotary_positional_embeddings=False,
)
_COG_5B = {**_COG_TRANSFORMER, "num_attention_heads": 48, "num_layers": 42, "use_rotary_positional_embeddings": True}
_COG_15 = {**_COG_5B, "patch_bias": False, "patch_size_t": 2, "sample_frames": 81, "sample_height": 300,
           "sample_width": 300}
_COG_VAE = dict(
    act_fn="silu", block_out_channels=[128, 256, 256, 512], down_block_types=["CogVideoXDownBlock3D"] * 4,
    force_upcast=True, in_channels=3, latent_channels=16, layers_per_block=3, norm_eps=1e-6, norm_num_groups=32,
    out_channels=3, sample_height=480, sample_width=720, scaling_factor=1.15258426, temporal_compression_ratio=4,
    up_block_types=["CogVideoXUpBlock3D"] * 4, use_post_quant_conv=False, use_quant_conv=False,
)
_COG_SCHEDULER = dict(
    beta_end=0.012, beta_schedule="scaled_linear", beta_start=0.00085, clip_sample=False, clip_sample_range=1.0,
    num_train_timesteps=1000, prediction_type="v_prediction", rescale_betas_zero_snr=True, sample_max_value=1.0,
    set_alpha_to_one=True, snr_shift_scale=3.0, steps_offset=0, timestep_spacing="trailing",
)

# ---- Wan ---------------------------------------------------------------------------------------------------------
_WAN_TRANSFORMER = dict(
    added_kv_proj_dim=None, attention_head_dim=128, cross_attn_norm=True, eps=1e-6, ffn_dim=8960, freq_dim=256,
    image_dim=None, in_channels=16, num_attention_heads=12, num_layers=30, out_channels=16, patch_size=[1, 2, 2],
    qk_norm="rms_norm_across_heads", rope_max_seq_len=1024, text_dim=4096,
)
_WAN_14B = {**_WAN_TRANSFORMER, "ffn_dim": 13824, "num_attention_heads": 40, "num_layers": 40}
_WAN21_VAE = dict(  # AutoencoderKLWan's defaults are Wan 2.1's VAE
    attn_scales=[], base_dim=96, dim_mult=[1, 2, 4, 4], dropout=0.0, num_res_blocks=2,
    temperal_downsample=[False, True, True], z_dim=16,
    latents_mean=[-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508, 0.4134, -0.0715, 0.5517,
                  -0.3632, -0.1922, -0.9497, 0.2503, -0.2921],
    latents_std=[2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743, 3.2687, 2.1526, 2.8652, 1.5579,
                 1.6382, 1.1253, 2.8251, 1.9160],
)
_WAN22_VAE = dict(  # the 4x16x16 VAE of Wan2.2-TI2V-5B: 2x2 pixel patches in, residual blocks, 48 channels
    attn_scales=[], base_dim=160, decoder_base_dim=256, dim_mult=[1, 2, 4, 4], dropout=0.0, in_channels=12,
    is_residual=True, num_res_blocks=2, out_channels=12, patch_size=2, scale_factor_spatial=16,
    scale_factor_temporal=4, temperal_downsample=[False, True, True], z_dim=48,
    latents_mean=[-0.2289, -0.0052, -0.1323, -0.2339, -0.2799, 0.0174, 0.1838, 0.1557, -0.1382, 0.0542, 0.2813,
                  0.0891, 0.1570, -0.0098, 0.0375, -0.1825, -0.2246, -0.1207, -0.0698, 0.5109, 0.2665, -0.2108,
                  -0.2158, 0.2502, -0.2055, -0.0322, 0.1109, 0.1567, -0.0729, 0.0899, -0.2799, -0.1230, -0.0313,
                  -0.1649, 0.0117, 0.0723, -0.2839, -0.2083, -0.0520, 0.3748, 0.0152, 0.1957, 0.1433, -0.2944,
                  0.3573, -0.0548, -0.1681, -0.0667],
    latents_std=[0.4765, 1.0364, 0.4514, 1.1677, 0.5313, 0.4990, 0.4818, 0.5013, 0.8158, 1.0344, 0.5894, 1.0901,
                 0.6885, 0.6165, 0.8454, 0.4978, 0.5759, 0.3523, 0.7135, 0.6804, 0.5833, 1.4146, 0.8986, 0.5659,
                 0.7069, 0.5338, 0.4889, 0.4917, 0.4069, 0.4999, 0.6866, 0.4093, 0.5709, 0.6065, 0.6415, 0.4944,
                 0.5726, 1.2042, 0.5458, 1.6887, 0.3971, 1.0600, 0.3943, 0.5537, 0.5444, 0.4089, 0.7468, 0.7744],
)


def _wan_scheduler(flow_shift: float) -> dict[str, Any]:
    return dict(num_train_timesteps=1000, prediction_type="flow_prediction", use_flow_sigmas=True,
                flow_shift=flow_shift)


# ---- HunyuanVideo 1.5 -------------------------------------------------------------------------------------------
_HY15_TRANSFORMER = dict(  # 8.3B: 54 dual-stream blocks of 2048 (16 heads of 128)
    in_channels=65, out_channels=32, num_attention_heads=16, attention_head_dim=128, num_layers=54,
    num_refiner_layers=2, mlp_ratio=4.0, patch_size=1, patch_size_t=1, qk_norm="rms_norm", text_embed_dim=3584,
    text_embed_2_dim=1472, image_embed_dim=1152, rope_theta=256.0, rope_axes_dim=[16, 56, 56], target_size=640,
    task_type="t2v", use_meanflow=False,
)
_HY15_VAE = dict(  # AutoencoderKLHunyuanVideo15's defaults: 16x spatial, 4x temporal, 32 channels
    in_channels=3, out_channels=3, latent_channels=32, block_out_channels=[128, 256, 512, 1024, 1024],
    layers_per_block=2, spatial_compression_ratio=16, temporal_compression_ratio=4, downsample_match_channel=True,
    upsample_match_channel=True, scaling_factor=1.03682,
)

# ---- LTX-2 (19B audio-video) --------------------------------------------------------------------------------------
_LTX2_TRANSFORMER = dict(  # LTX-2.0: 48 blocks; video 32 heads of 128 (4096), audio 32 heads of 64 (2048)
    in_channels=128, out_channels=128, patch_size=1, patch_size_t=1, num_attention_heads=32, attention_head_dim=128,
    cross_attention_dim=4096, vae_scale_factors=[8, 32, 32], pos_embed_max_pos=20, base_height=2048, base_width=2048,
    audio_in_channels=128, audio_out_channels=128, audio_patch_size=1, audio_patch_size_t=1,
    audio_num_attention_heads=32, audio_attention_head_dim=64, audio_cross_attention_dim=2048, audio_scale_factor=4,
    audio_pos_embed_max_pos=20, audio_sampling_rate=16000, audio_hop_length=160, num_layers=48,
    activation_fn="gelu-approximate", qk_norm="rms_norm_across_heads", norm_elementwise_affine=False, norm_eps=1e-6,
    caption_channels=3840, attention_bias=True, attention_out_bias=True, rope_theta=10000.0,
    rope_double_precision=True, causal_offset=1, timestep_scale_multiplier=1000,
    cross_attn_timestep_scale_multiplier=1000, rope_type="split",
)
_LTX2_VAE = dict(  # 32x spatial, 8x temporal, 128 channels
    in_channels=3, out_channels=3, latent_channels=128, block_out_channels=[256, 512, 1024, 2048],
    down_block_types=["LTX2VideoDownBlock3D"] * 4, decoder_block_out_channels=[256, 512, 1024],
    layers_per_block=[4, 6, 6, 2, 2], decoder_layers_per_block=[5, 5, 5, 5],
    spatio_temporal_scaling=[True, True, True, True], decoder_spatio_temporal_scaling=[True, True, True],
    decoder_inject_noise=[False, False, False, False],
    downsample_type=["spatial", "temporal", "spatiotemporal", "spatiotemporal"], upsample_residual=[True, True, True],
    upsample_factor=[2, 2, 2], timestep_conditioning=False, patch_size=4, patch_size_t=1, resnet_norm_eps=1e-6,
    scaling_factor=1.0, encoder_causal=True, decoder_causal=False, encoder_spatial_padding_mode="zeros",
    decoder_spatial_padding_mode="reflect", spatial_compression_ratio=32, temporal_compression_ratio=8,
)
LTX2_AUDIO_VAE = dict(  # mel spectrograms (64 bins, 16 kHz, hop 160) to 8 x 16 latents, 4x in time
    base_channels=128, output_channels=2, ch_mult=[1, 2, 4], num_res_blocks=2, attn_resolutions=None, in_channels=2,
    resolution=256, latent_channels=8, norm_type="pixel", causality_axis="height", dropout=0.0,
    mid_block_add_attention=False, sample_rate=16000, mel_hop_length=160, is_causal=True, mel_bins=64, double_z=True,
)
LTX2_CONNECTORS = dict(  # two 2-layer connectors (video, audio) over Gemma 3 12B's 49 stacked hidden states
    caption_channels=3840, text_proj_in_factor=49, video_connector_num_attention_heads=30,
    video_connector_attention_head_dim=128, video_connector_num_layers=2,
    video_connector_num_learnable_registers=128, audio_connector_num_attention_heads=30,
    audio_connector_attention_head_dim=128, audio_connector_num_layers=2,
    audio_connector_num_learnable_registers=128, connector_rope_base_seq_len=4096, rope_theta=10000.0,
    rope_double_precision=True, causal_temporal_positioning=False, rope_type="split",
)
_LTX2_SCHEDULER = dict(  # LTX-Video's: shift by the video token count (0.95 at 1024 tokens, 2.05 at 4096)
    num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=True, base_shift=0.95, max_shift=2.05,
    base_image_seq_len=1024, max_image_seq_len=4096, shift_terminal=0.1, time_shift_type="exponential",
)


@dataclass(frozen=True)
class ModelConfig:
    name: str
    family: str  # "cogvideox", "wan", "hunyuanvideo15" or "ltx2"
    pipeline: str  # the diffusers pipeline class of the checkpoint (model_index.json's _class_name)
    task: str  # "t2v" or "i2v" (TI2V-5B does both; its folder is a WanPipeline)
    transformer: dict[str, Any]
    vae: dict[str, Any]
    scheduler_class: str
    scheduler: dict[str, Any]
    size: tuple[int, int, int]  # (frames, height, width) it was trained at
    fps: float
    text_dim: int = 4096
    max_sequence_length: int = 226
    two_experts: bool = False  # Wan 2.2 A14B: `transformer_2` has the same config as `transformer`
    pipeline_config: dict[str, Any] = field(default_factory=dict)  # boundary_ratio, expand_timesteps
    image_encoder_dim: int | None = None  # Wan 2.1 I2V: CLIP ViT-H/14 hidden size (the transformer's image_dim)
    text_dim_2: int | None = None  # HunyuanVideo 1.5: the second text encoder's width (ByT5)
    max_sequence_length_2: int | None = None  # and its token count
    guidance: float | None = None  # HunyuanVideo 1.5: its guider's guidance_scale; LTX-2: its default guidance

    @property
    def vae_class(self) -> str:
        return {"cogvideox": "AutoencoderKLCogVideoX", "wan": "AutoencoderKLWan",
                "hunyuanvideo15": "AutoencoderKLHunyuanVideo15", "ltx2": "AutoencoderKLLTX2Video"}[self.family]

    @property
    def transformer_class(self) -> str:
        return {"cogvideox": "CogVideoXTransformer3DModel", "wan": "WanTransformer3DModel",
                "hunyuanvideo15": "HunyuanVideo15Transformer3DModel",
                "ltx2": "LTX2VideoTransformer3DModel"}[self.family]


def _cog(name, pipeline, task, transformer, vae, scheduler, size, fps) -> ModelConfig:
    return ModelConfig(name, "cogvideox", pipeline, task, transformer, vae, "CogVideoXDDIMScheduler", scheduler, size,
                       fps)


def _wan(name, pipeline, task, transformer, vae, flow_shift, size, fps, **kw) -> ModelConfig:
    return ModelConfig(name, "wan", pipeline, task, transformer, vae, "UniPCMultistepScheduler",
                       _wan_scheduler(flow_shift), size, fps, max_sequence_length=512, **kw)


def _hy15(name, pipeline, task, transformer, flow_shift, size) -> ModelConfig:
    return ModelConfig(name, "hunyuanvideo15", pipeline, task, transformer, _HY15_VAE, "FlowMatchEulerDiscreteScheduler",
                       dict(num_train_timesteps=1000, shift=flow_shift), size, 24.0, text_dim=3584,
                       max_sequence_length=1000, image_encoder_dim=1152 if task == "i2v" else None, text_dim_2=1472,
                       max_sequence_length_2=256, guidance=6.0)


def _ltx2(name, pipeline, task) -> ModelConfig:
    # Gemma 3 12B: 3840 wide, 1024 tokens; 121 frames at 512x768, 24 fps (the pipelines' defaults)
    return ModelConfig(name, "ltx2", pipeline, task, _LTX2_TRANSFORMER, _LTX2_VAE, "FlowMatchEulerDiscreteScheduler",
                       _LTX2_SCHEDULER, (121, 512, 768), 24.0, text_dim=3840, max_sequence_length=1024, guidance=4.0)


_COG5_SCHED = {**_COG_SCHEDULER, "snr_shift_scale": 1.0}
_COG5_VAE = {**_COG_VAE, "scaling_factor": 0.7}
_COG15_VAE = {**_COG5_VAE, "invert_scale_latents": True, "sample_height": 768, "sample_width": 1360}
_WAN480 = (81, 480, 832)

CONFIGS: dict[str, ModelConfig] = {c.name: c for c in (
    _cog("CogVideoX-2b", "CogVideoXPipeline", "t2v", _COG_TRANSFORMER, _COG_VAE, _COG_SCHEDULER, (49, 480, 720), 8.0),
    _cog("CogVideoX-5b", "CogVideoXPipeline", "t2v", _COG_5B, _COG5_VAE, _COG5_SCHED, (49, 480, 720), 8.0),
    _cog("CogVideoX-5b-I2V", "CogVideoXImageToVideoPipeline", "i2v",
         {**_COG_5B, "in_channels": 32, "use_learned_positional_embeddings": True}, _COG5_VAE, _COG5_SCHED,
         (49, 480, 720), 8.0),
    _cog("CogVideoX1.5-5B", "CogVideoXPipeline", "t2v", _COG_15, _COG15_VAE, _COG5_SCHED, (81, 768, 1360), 16.0),
    _cog("CogVideoX1.5-5B-I2V", "CogVideoXImageToVideoPipeline", "i2v",
         {**_COG_15, "in_channels": 32, "ofs_embed_dim": 512}, _COG15_VAE, _COG5_SCHED, (81, 768, 1360), 16.0),
    _wan("Wan2.1-T2V-1.3B", "WanPipeline", "t2v", _WAN_TRANSFORMER, _WAN21_VAE, 3.0, _WAN480, 16.0),
    _wan("Wan2.1-T2V-14B", "WanPipeline", "t2v", _WAN_14B, _WAN21_VAE, 3.0, _WAN480, 16.0),
    _wan("Wan2.1-I2V-14B-480P", "WanImageToVideoPipeline", "i2v",
         {**_WAN_14B, "in_channels": 36, "image_dim": 1280, "added_kv_proj_dim": 5120}, _WAN21_VAE, 3.0, _WAN480,
         16.0, image_encoder_dim=1280),
    _wan("Wan2.2-TI2V-5B", "WanPipeline", "t2v",
         {**_WAN_TRANSFORMER, "ffn_dim": 14336, "in_channels": 48, "num_attention_heads": 24, "out_channels": 48},
         _WAN22_VAE, 5.0, (121, 704, 1280), 24.0, pipeline_config={"expand_timesteps": True}),
    _wan("Wan2.2-T2V-A14B", "WanPipeline", "t2v", _WAN_14B, _WAN21_VAE, 3.0, _WAN480, 16.0, two_experts=True,
         pipeline_config={"boundary_ratio": 0.875}),
    _wan("Wan2.2-I2V-A14B", "WanImageToVideoPipeline", "i2v", {**_WAN_14B, "in_channels": 36}, _WAN21_VAE, 3.0,
         _WAN480, 16.0, two_experts=True, pipeline_config={"boundary_ratio": 0.9}),
    _hy15("HunyuanVideo-1.5-480p_t2v", "HunyuanVideo15Pipeline", "t2v", _HY15_TRANSFORMER, 5.0, (121, 480, 848)),
    _hy15("HunyuanVideo-1.5-480p_i2v", "HunyuanVideo15ImageToVideoPipeline", "i2v",
          {**_HY15_TRANSFORMER, "task_type": "i2v"}, 5.0, (121, 480, 848)),
    _ltx2("LTX-2", "LTX2Pipeline", "t2v"),
    _ltx2("LTX-2_i2v", "LTX2ImageToVideoPipeline", "i2v"),
)}

# What could not be checked here against the checkpoints' own config.json files (no hub access):
UNVERIFIED = {
    "CogVideoX1.5-5B*": "VAE sample_height/sample_width 768/1360 (they only enable tiling here)",
    "CogVideoX-5b*, CogVideoX1.5*": "scheduler class CogVideoXDDIMScheduler (the model cards sample with "
                                   "CogVideoXDPMScheduler; training reads only alphas_cumprod, the same for both)",
    "Wan2.1-T2V-14B, Wan2.2-*-A14B": "flow_shift 3.0 (from the conversion script; the official Wan 2.2 sampler "
                                     "uses 12.0 for T2V-A14B and 5.0 for I2V-A14B)",
    "Wan2.1-I2V-14B-480P": "image encoder: only its hidden size 1280 (CLIP ViT-H/14) is used here",
    "HunyuanVideo-1.5-480p_*": "transformer config from third-party copies of the diffusers config.json (they agree); "
                               "VAE config = AutoencoderKLHunyuanVideo15's defaults; scheduler shift 5.0 and guider "
                               "guidance_scale 6.0 from the official 480p sampler settings, not from the folders; "
                               "image encoder: only SigLIP's width 1152 and 729 tokens are used here",
    "LTX-2*": "transformer, connector, VAE and audio VAE configs from the diffusers conversion script's LTX-2.0 "
              "settings (scripts/convert_ltx2_to_diffusers.py), not from the released folder; scheduler config = "
              "LTX-Video's (dynamic shift 0.95-2.05 over 1024-4096 tokens, shift_terminal 0.1); guidance 4.0 from "
              "public LTX-2 examples; Gemma 3 12B only as its width 3840, 49 hidden states and 1024 tokens; the "
              "image-to-video folder is the same checkpoint under LTX2ImageToVideoPipeline",
}


def get_config(name: str) -> ModelConfig:
    try:
        return CONFIGS[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(CONFIGS)}") from None
