"""CogVideoX (1.0 and 1.5; text-to-video and image-to-video): v-prediction on a DDPM schedule.

Latents are [B, F, C, h, w] scaled by the VAE's scaling_factor, as CogVideoXPipeline's `output_type="latent"`
returns them. Image-to-video concatenates the first frame's latents (a posterior sample, zero-padded over frames)
on the channel dimension, as CogVideoXImageToVideoPipeline does.

CogVideoX 1.5 (`patch_size_t`) sees one latent frame more than the video has when the count is odd: its pipelines
pad the frame count before drawing latents, denoise the extra frame first in line and drop it before decoding, and
the image-to-video pipeline's first-frame latents sit on that extra frame only. Training gives the transformer the
same layout; the extra frame is the clean first frame noised with noise of its own (the official trainer's choice;
the pipeline starts it from pure noise), so `noise_shape` has that frame too, and its error is not counted.
"""

from __future__ import annotations

import torch

from realbase.errors import UserError
from realdpo.models.base import Cond
from realdpo.models.common import DiffusersSpec, add_pixel_noise, image_generator


class CogVideoXSpec(DiffusersSpec):
    family = "cogvideox"
    prediction_type = "v_prediction"
    pipeline_classes = {"t2v": "CogVideoXPipeline", "i2v": "CogVideoXImageToVideoPipeline"}
    multistep_scheduler = "CogVideoXDPMScheduler"  # CogVideoX-5B's own sampler (DPM-Solver++ 2M, SDE form)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        cfg = self.transformer.config
        self.max_sequence_length = int(cfg.max_text_seq_length)
        self.scale_spatial = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.scale_temporal = int(self.vae.config.temporal_compression_ratio)
        self.scaling_factor = float(self.vae.config.scaling_factor)
        self.num_train_timesteps = int(self.scheduler.config.num_train_timesteps)
        self.alphas_cumprod = self.scheduler.alphas_cumprod.to(torch.float32)
        self._rotary_cache: dict = {}
        if self.scheduler.config.prediction_type != "v_prediction":
            raise UserError(f"CogVideoX scheduler predicts {self.scheduler.config.prediction_type!r}; realdpo expects v_prediction")
        if max(self.vae.config.sample_height, self.vae.config.sample_width) > 256:
            self.vae.enable_tiling()  # real checkpoints: encode/decode 480p clips without holding all activations
        self.vae.enable_slicing()

    @classmethod
    def known_pipelines(cls) -> dict[str, str | None]:
        return {"CogVideoXPipeline": "t2v", "CogVideoXVideoToVideoPipeline": "t2v",
                "CogVideoXImageToVideoPipeline": "i2v"}

    def default_fps(self) -> float:
        return 16.0 if self.transformer.config.patch_size_t else 8.0  # CogVideoX 1.5 / 1.0

    def default_size(self) -> tuple[int, int, int]:
        cfg = self.transformer.config
        if cfg.patch_size_t and max(cfg.sample_height, cfg.sample_width) * self.scale_spatial > 1360:
            # CogVideoX 1.5's config holds its rotary grid limits (300x300 latents), not a size: use its documented one
            return int(cfg.sample_frames), 768, 1360
        return int(cfg.sample_frames), int(cfg.sample_height) * self.scale_spatial, int(cfg.sample_width) * self.scale_spatial

    def latent_frames(self, frames: int) -> int:
        return (frames - 1) // self.scale_temporal + 1

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, ...]:
        return (self.latent_frames(frames), int(self.vae.config.latent_channels), height // self.scale_spatial,
                width // self.scale_spatial)

    def check_size(self, frames: int, height: int, width: int) -> None:
        # The VAE decodes latent frames two at a time after an odd first group, so it needs an odd latent count:
        # frames = 8k+1 (49 for CogVideoX, 81 for 1.5; 1.5's transformer padding is handled in padding_frames()).
        step = 2 * self.scale_temporal
        if frames < 1 or (frames - 1) % step:
            raise UserError(f"CogVideoX needs frames = {step}k+1 (e.g. 9, 17, 49), got {frames}")
        mult = self.scale_spatial * self.transformer.config.patch_size
        if height % mult or width % mult:
            raise UserError(f"CogVideoX needs height and width divisible by {mult}, got {height}x{width}")
        f0, h0, w0 = self.default_size()
        if self.transformer.config.use_learned_positional_embeddings and (frames, height, width) != (f0, h0, w0):
            # at any other frame count diffusers silently replaces the learned table with sin-cos positions
            raise UserError(f"this CogVideoX model has learned positional embeddings: it runs at {f0} frames, "
                            f"{h0}x{w0} only, got {frames} frames, {height}x{width}")

    def padding_frames(self, latent_frames: int) -> int:
        """Latent frames CogVideoX 1.5 (patch_size_t) puts first so the transformer sees a multiple of patch_size_t,
        as its pipelines do (they generate the extra frames and drop them before decoding)."""
        p_t = self.transformer.config.patch_size_t
        return (p_t - latent_frames % p_t) % p_t if p_t else 0

    def noise_shape(self, latent_shape: tuple[int, ...]) -> tuple[int, ...]:
        """[B, pad + F, C, h, w]: 1.5's padding frames are noised with noise of their own."""
        b, f, *rest = latent_shape
        return (b, self.padding_frames(f) + f, *rest)

    @torch.no_grad()
    def encode_videos(self, videos: torch.Tensor) -> torch.Tensor:
        x = videos.to(self.device, self.vae.dtype).permute(0, 2, 1, 3, 4)  # [B, 3, F, H, W]
        z = self.vae.encode(x).latent_dist.mode()
        return (z * self.scaling_factor).permute(0, 2, 1, 3, 4).float()

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        z = latents.to(self.device, self.vae.dtype).permute(0, 2, 1, 3, 4) / self.scaling_factor
        video = self.vae.decode(z).sample
        return video.permute(0, 2, 1, 3, 4).float().clamp(-1, 1)

    @torch.no_grad()
    def encode_first_frames(self, images: torch.Tensor, num_frames: int) -> Cond:
        """{"image_latents": [B, 1, C, h, w]}: a posterior sample of each first frame's latents, scaled as
        CogVideoXImageToVideoPipeline.prepare_latents draws and scales them (with `image_noise`, after the official
        trainer's pixel noise); {} for t2v. Padding over the latent frames happens in per_sample_error, so the cache
        stores one frame."""
        if self.task != "i2v":
            return {}
        latents = []
        for image in images:
            g = image_generator(image)
            x = image[None].float()
            if self.image_noise:
                x = add_pixel_noise(x, g)
            dist = self.vae.encode(x.to(self.device, self.vae.dtype).unsqueeze(2)).latent_dist  # in: [1, 3, 1, H, W]
            latents.append(dist.sample(g))  # drawn on the CPU generator, as randn_tensor does for any device
        z = torch.cat(latents).permute(0, 2, 1, 3, 4)
        z = z / self.scaling_factor if self.vae.config.invert_scale_latents else z * self.scaling_factor
        return {"image_latents": z.float()}

    def sample_timesteps(self, n: int, t_min: float, t_max: float, generator: torch.Generator | None = None) -> torch.Tensor:
        """Integer DDPM timesteps uniform in [round(t_min*T), round(t_max*T)) (at least one value)."""
        lo = int(round(t_min * self.num_train_timesteps))
        hi = max(lo + 1, min(self.num_train_timesteps, int(round(t_max * self.num_train_timesteps))))
        return torch.randint(lo, hi, (n,), generator=generator, dtype=torch.long)

    def _rotary(self, lat_frames: int, lat_h: int, lat_w: int, device: torch.device):
        if not self.transformer.config.use_rotary_positional_embeddings:
            return None
        key = (lat_frames, lat_h, lat_w, str(device))
        if key not in self._rotary_cache:
            pipe = self.pipeline()  # the pipeline's own helper, so training and generation use identical positions
            self._rotary_cache[key] = pipe._prepare_rotary_positional_embeddings(
                lat_h * self.scale_spatial, lat_w * self.scale_spatial, lat_frames, device)
        return self._rotary_cache[key]

    def model_input(self, x_t: torch.Tensor, cond: Cond) -> torch.Tensor:
        """Transformer input from the noisy latents as the transformer sees them (1.5: padding frames included):
        for image-to-video the first-frame latents on the first frame and zeros on the others, on the channels, as
        CogVideoXImageToVideoPipeline.prepare_latents lays them out for the frame count it is given."""
        if self.task != "i2v":
            return x_t
        img = cond["image_latents"].to(x_t)
        zeros = img.new_zeros(img.shape[0], x_t.shape[1] - img.shape[1], *img.shape[2:])
        return torch.cat([x_t, torch.cat([img, zeros], dim=1)], dim=2)

    def per_sample_error(self, transformer: torch.nn.Module, latents: torch.Tensor, noise: torch.Tensor,
                         timesteps: torch.Tensor, cond: Cond) -> torch.Tensor:
        """E = mean((x0_hat - x0)^2) / (1 - a_t) with x0_hat = sqrt(a_t) x_t - sqrt(1 - a_t) v (float32 [B]).
        `noise` has `noise_shape(latents.shape)`; 1.5's padding frames are the clean first frame noised with the
        first frames of `noise`, and their error is not counted."""
        device = latents.device
        x0, eps = latents.float(), noise.float()
        pad = self.padding_frames(x0.shape[1])
        if eps.shape[1] != x0.shape[1] + pad:
            raise ValueError(f"noise of {eps.shape[1]} frames for {x0.shape[1]} latent frames; draw it with "
                             f"noise_shape() ({x0.shape[1] + pad} frames)")
        t = timesteps.to(device).long()
        a = self.alphas_cumprod.to(device)[t].view(-1, 1, 1, 1, 1)
        x_in = torch.cat([x0[:, :1].expand(-1, pad, -1, -1, -1), x0], dim=1) if pad else x0
        x_t = a.sqrt() * x_in + (1 - a).sqrt() * eps
        dt = self.model_dtype(transformer)
        cfg = self.transformer.config
        ofs = x_t.new_full((1,), 2.0, dtype=dt) if getattr(cfg, "ofs_embed_dim", None) else None
        model_in = self.model_input(x_t, cond)
        v = transformer(
            hidden_states=model_in.to(dt),
            encoder_hidden_states=cond["prompt_embeds"].to(device, dt),
            timestep=t,
            ofs=ofs,
            image_rotary_emb=self._rotary(model_in.shape[1], x_t.shape[3], x_t.shape[4], device),
            return_dict=False,
        )[0].float()[:, pad:]
        x0_hat = a.sqrt() * x_t[:, pad:] - (1 - a).sqrt() * v
        return (x0_hat - x0).pow(2).mean(dim=(1, 2, 3, 4)) / (1 - a).flatten()

    def generate_latents(self, prompts, cond, *, num_frames, height, width, **kwargs) -> torch.Tensor:
        latents = super().generate_latents(prompts, cond, num_frames=num_frames, height=height, width=width, **kwargs)
        return latents[:, latents.shape[1] - self.latent_frames(num_frames):]  # drop 1.5's padding frames

    def pipeline_latents(self, latents: torch.Tensor) -> torch.Tensor:
        pad = self.padding_frames(latents.shape[1])  # 1.5: the pipeline denoises padding frames first
        return torch.cat([latents[:, :1].expand(-1, pad, -1, -1, -1), latents], dim=1) if pad else latents

    def has_first_frame_cond(self, cond: Cond) -> bool:
        return "image_latents" in cond

    def pipeline_image_inputs(self, pipe, images: torch.Tensor | None, cond: Cond, height: int, width: int) -> dict:
        if self.task != "i2v":
            return {}
        if self.has_first_frame_cond(cond):
            _use_cached_image_latents(pipe, cond["image_latents"])
            if images is None:  # the pipeline still wants an image to check and resize; the cached latents replace it
                images = torch.zeros(len(cond["image_latents"]), 3, height, width)
        return {"image": (images.float() * 0.5 + 0.5).clamp(0, 1).to(self.device)}  # the pipeline wants [0, 1]


def _use_cached_image_latents(pipe, image_latents: torch.Tensor) -> None:
    """Make this CogVideoX image-to-video pipeline instance take the first-frame latents from the cache (as
    encode_first_frames stores them: [B, 1, C, h, w], scaled) instead of VAE-encoding its image on every call. The
    rest is the pipeline's prepare_latents: zero padding over the latent frames, 1.5's first-frame duplicate, noise."""
    from diffusers.utils.torch_utils import randn_tensor

    def prepare_latents(image, batch_size=1, num_channels_latents=16, num_frames=13, height=60, width=90, dtype=None,
                        device=None, generator=None, latents=None):
        num_frames = (num_frames - 1) // pipe.vae_scale_factor_temporal + 1
        shape = (batch_size, num_frames, num_channels_latents, height // pipe.vae_scale_factor_spatial,
                 width // pipe.vae_scale_factor_spatial)
        p_t = pipe.transformer.config.patch_size_t
        if p_t is not None:
            shape = shape[:1] + (shape[1] + shape[1] % p_t,) + shape[2:]
        first = image_latents.to(device=device, dtype=dtype)
        padded = torch.cat([first, first.new_zeros(batch_size, num_frames - 1, *first.shape[2:])], dim=1)
        if p_t is not None:
            padded = torch.cat([padded[:, : padded.size(1) % p_t], padded], dim=1)
        latents = randn_tensor(shape, generator=generator, device=device, dtype=dtype) if latents is None \
            else latents.to(device)
        return latents * pipe.scheduler.init_noise_sigma, padded

    pipe.prepare_latents = prepare_latents
