"""The built-in lab model: a CogVideoX image-to-video pipeline (the real diffusers classes) at the lab's sizes.

Its trained weights ship in the package (`realdpo/lab/model/`, a `save_pretrained` folder of safetensors) and are
loaded like any checkpoint: `load_spec(lab_model_path())`. `realdpo lab build` retrains them from a seed.

The sizes are the project's choice for a 2-core CPU, not a CogVideoX release's: the VAE (block widths 16/32/32)
compresses 4x in space and not in time (9x32x32 RGB -> 9x8x8 latents of 4 channels; few channels keep colour from
becoming a continuous latent direction whose small errors read as hue shifts), the transformer has 4 layers of
4x32-dim heads with 2x2 patches (16 noisy numbers per token, 144 video tokens, 48 text tokens), rotary positions,
and the text encoder is a 2-layer T5 over ByT5 byte tokens (captions are at most 44 bytes).
The scheduler is CogVideoX-2b's (v-prediction, zero-terminal-SNR, trailing spacing).
"""

from __future__ import annotations

from pathlib import Path

from realbase.errors import UserError
from realdpo.lab.world import FRAMES, SIZE
from realdpo.models.tiny import COGVIDEOX_SCHEDULER

MODEL_DIR = Path(__file__).parent / "model"
LATENT_CHANNELS = 4
TEXT_DIM = 64
TEXT_TOKENS = 48

VAE_CONFIG = dict(
    in_channels=3, out_channels=3, down_block_types=("CogVideoXDownBlock3D",) * 3,
    up_block_types=("CogVideoXUpBlock3D",) * 3, block_out_channels=(16, 32, 32), latent_channels=LATENT_CHANNELS,
    layers_per_block=1, norm_num_groups=4, temporal_compression_ratio=1, sample_height=SIZE, sample_width=SIZE,
)
TRANSFORMER_CONFIG = dict(
    num_attention_heads=4, attention_head_dim=32, in_channels=2 * LATENT_CHANNELS, out_channels=LATENT_CHANNELS,
    time_embed_dim=64, text_embed_dim=TEXT_DIM, num_layers=4, sample_width=SIZE // 4, sample_height=SIZE // 4,
    sample_frames=FRAMES, patch_size=2, temporal_compression_ratio=1, max_text_seq_length=TEXT_TOKENS,
    use_rotary_positional_embeddings=True,
)
T5_CONFIG = dict(vocab_size=384, d_model=TEXT_DIM, d_kv=16, d_ff=128, num_layers=2, num_heads=4,
                 relative_attention_num_buckets=16, dropout_rate=0.0, feed_forward_proj="gated-gelu",
                 decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)

# How the experiment and the demo sample from the lab model (the pipeline's own DDIM sampler). Guidance 2 was chosen
# on a validation seed of the held-out set (bench/lab_sampler.py): without guidance most samples wobble off the law,
# and at 3 the SFT control's LoRAs gain almost nothing over the base.
SAMPLE_STEPS = 20
SAMPLE_GUIDANCE = 2.0


def lab_model_path() -> Path:
    """The committed lab model folder (a diffusers CogVideoXImageToVideoPipeline)."""
    if not (MODEL_DIR / "model_index.json").is_file():
        raise UserError(f"the lab model is missing from {MODEL_DIR}; rebuild it with `realdpo lab build`")
    return MODEL_DIR


def untrained_pipeline(seed: int = 0):
    """The lab pipeline with freshly initialised weights (what `realdpo lab build` starts from)."""
    import torch
    from diffusers import (
        AutoencoderKLCogVideoX,
        CogVideoXDDIMScheduler,
        CogVideoXImageToVideoPipeline,
        CogVideoXTransformer3DModel,
    )
    from transformers import ByT5Tokenizer, T5Config, T5EncoderModel

    torch.manual_seed(seed)
    return CogVideoXImageToVideoPipeline(
        tokenizer=ByT5Tokenizer(), text_encoder=T5EncoderModel(T5Config(**T5_CONFIG)),
        vae=AutoencoderKLCogVideoX(**VAE_CONFIG), transformer=CogVideoXTransformer3DModel(**TRANSFORMER_CONFIG),
        scheduler=CogVideoXDDIMScheduler(**COGVIDEOX_SCHEDULER))
