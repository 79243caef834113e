"""Wan 2.1 (text-to-video and image-to-video): flow matching with the scheduler's shifted sigmas.

Latents are [B, C, F, h, w] normalised per channel, (z - latents_mean) / latents_std, as WanPipeline's
`output_type="latent"` returns them. Image-to-video conditions on a mask + the VAE latents of [first frame, zeros...]
concatenated on channels, and on CLIP image embeddings, exactly as WanImageToVideoPipeline builds them.
"""

from __future__ import annotations

import json

import torch

from realaction.errors import UserError
from realdpo.models.base import Cond
from realdpo.models.common import REQUIRED_COMPONENTS, DiffusersSpec
from realdpo.models.frames import to_uint8

WAN_DEFAULT_SIZE = (81, 480, 832)


class WanSpec(DiffusersSpec):
    family = "wan"
    prediction_type = "flow_matching"
    pipeline_classes = {"t2v": "WanPipeline", "i2v": "WanImageToVideoPipeline"}
    multistep_scheduler = "UniPCMultistepScheduler"  # what Wan ships: already multistep
    max_sequence_length = 512  # WanPipeline's default; prompt embeddings are zero-padded to it

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.components.get("transformer_2") is not None:
            raise UserError(f"{self.path} is a two-transformer Wan 2.2 model; realdpo supports Wan 2.1")
        vcfg = self.vae.config
        self.scale_spatial = int(getattr(vcfg, "scale_factor_spatial", 8))
        self.scale_temporal = int(getattr(vcfg, "scale_factor_temporal", 4))
        self.latents_mean = torch.tensor(vcfg.latents_mean, dtype=torch.float32).view(1, vcfg.z_dim, 1, 1, 1)
        self.latents_std = torch.tensor(vcfg.latents_std, dtype=torch.float32).view(1, vcfg.z_dim, 1, 1, 1)
        scfg = self.scheduler.config
        self.num_train_timesteps = int(scfg.num_train_timesteps)
        self.shift = float(scfg.get("flow_shift") or scfg.get("shift") or 1.0)
        if scfg.get("prediction_type", "flow_prediction") not in ("flow_prediction", "epsilon") \
                and not scfg.get("use_flow_sigmas", True):
            raise UserError("Wan scheduler is not a flow-matching scheduler")
        extra = self.path / "realdpo.json"
        self._default_size = tuple(json.loads(extra.read_text())["default_size"]) if extra.is_file() else WAN_DEFAULT_SIZE
        self.vae.enable_slicing()

    @classmethod
    def known_pipelines(cls) -> dict[str, str | None]:
        return {"WanPipeline": "t2v", "WanImageToVideoPipeline": "i2v"}

    @classmethod
    def required_components(cls, task: str) -> tuple[str, ...]:
        return REQUIRED_COMPONENTS + (("image_encoder", "image_processor") if task == "i2v" else ())

    def default_size(self) -> tuple[int, int, int]:
        return self._default_size

    def check_size(self, frames: int, height: int, width: int) -> None:
        if frames < 1 or (frames - 1) % self.scale_temporal:
            raise UserError(f"Wan needs frames = {self.scale_temporal}k+1 (e.g. 9, 81), got {frames}")
        mult = self.scale_spatial * self.transformer.config.patch_size[1]
        if height % mult or width % mult:
            raise UserError(f"Wan needs height and width divisible by {mult}, got {height}x{width}")

    def _norm(self, z: torch.Tensor) -> torch.Tensor:
        return (z.float() - self.latents_mean.to(z.device)) / self.latents_std.to(z.device)

    @torch.no_grad()
    def encode_videos(self, videos: torch.Tensor) -> torch.Tensor:
        x = videos.to(self.device, self.vae.dtype).permute(0, 2, 1, 3, 4)  # [B, 3, F, H, W]
        return self._norm(self.vae.encode(x).latent_dist.mode())

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        z = latents.float().to(self.device) * self.latents_std.to(self.device) + self.latents_mean.to(self.device)
        video = self.vae.decode(z.to(self.vae.dtype)).sample  # [B, 3, F, H, W]
        return video.permute(0, 2, 1, 3, 4).float().clamp(-1, 1)

    @staticmethod
    def _pil(images: torch.Tensor) -> list:
        from PIL import Image

        return [Image.fromarray(a) for a in to_uint8(images)]

    @torch.no_grad()
    def encode_first_frames(self, images: torch.Tensor, num_frames: int) -> Cond:
        """{"image_condition": [B, 4 + C, F_lat, h, w], "image_embeds": [B, N, D]} through the i2v pipeline's own
        prepare_latents / encode_image; {} for text-to-video."""
        if self.task != "i2v":
            return {}
        pipe = self.pipeline()
        height, width = images.shape[-2:]
        conds, embeds = [], []
        for pil in self._pil(images):
            pixels = pipe.video_processor.preprocess(pil, height=height, width=width).to(self.device, torch.float32)
            _, condition = pipe.prepare_latents(pixels, 1, self.vae.config.z_dim, height, width, num_frames,
                                                torch.float32, self.device, None, None)
            conds.append(condition.float())
            if self.transformer.config.image_dim is not None:
                embeds.append(pipe.encode_image(pil, self.device).float())
        cond = {"image_condition": torch.cat(conds)}
        if embeds:
            cond["image_embeds"] = torch.cat(embeds)
        return cond

    def shift_sigma(self, sigma: torch.Tensor) -> torch.Tensor:
        """The scheduler's time shift: s = shift*sigma / (1 + (shift-1)*sigma)."""
        return self.shift * sigma / (1 + (self.shift - 1) * sigma)

    def sample_timesteps(self, n: int, t_min: float, t_max: float, generator: torch.Generator | None = None) -> torch.Tensor:
        """sigma uniform in [t_min, t_max], shifted as the scheduler shifts its inference sigmas, returned as the
        model's timestep s*T (float; per_sample_error recovers s = t/T)."""
        u = t_min + (t_max - t_min) * torch.rand(n, generator=generator)
        return self.shift_sigma(u) * self.num_train_timesteps

    def per_sample_error(self, transformer: torch.nn.Module, latents: torch.Tensor, noise: torch.Tensor,
                         timesteps: torch.Tensor, cond: Cond) -> torch.Tensor:
        """E = mean((u_hat - (eps - x0))^2) with x_t = (1 - s) x0 + s eps, s = t/T (float32 [B])."""
        device = latents.device
        x0, eps = latents.float(), noise.float()
        t = timesteps.to(device).float()
        s = (t / self.num_train_timesteps).view(-1, 1, 1, 1, 1)
        x_t = (1 - s) * x0 + s * eps
        dt = self.model_dtype(transformer)
        model_in = torch.cat([x_t, cond["image_condition"].to(x_t)], dim=1) if self.task == "i2v" else x_t
        image_embeds = cond.get("image_embeds")
        u_hat = transformer(
            hidden_states=model_in.to(dt),
            timestep=t,
            encoder_hidden_states=cond["prompt_embeds"].to(device, dt),
            encoder_hidden_states_image=image_embeds.to(device, dt) if image_embeds is not None else None,
            return_dict=False,
        )[0].float()
        return (u_hat - (eps - x0)).pow(2).mean(dim=(1, 2, 3, 4))

    def has_first_frame_cond(self, cond: Cond) -> bool:
        return "image_condition" in cond

    def pipeline_image_inputs(self, pipe, images: torch.Tensor | None, cond: Cond, height: int, width: int) -> dict:
        if self.task != "i2v":
            return {}
        if self.has_first_frame_cond(cond) and not pipe.config.get("expand_timesteps", False):
            _use_cached_image_condition(pipe, cond["image_condition"], cond.get("image_embeds"))
            if images is None:  # the pipeline still wants an image to check and resize; the cached cond replaces it
                images = torch.zeros(1, 3, height, width)
        return {"image": self._pil(images)[0]}

    def generate_latents(self, prompts, cond, *, seeds, images=None, **kwargs) -> torch.Tensor:
        if self.task != "i2v" or len(prompts) <= 1:
            return super().generate_latents(prompts, cond, seeds=seeds, images=images, **kwargs)
        # WanImageToVideoPipeline takes one image per call (it repeats the image conditioning over the batch)
        self._check_batch(prompts, seeds, images, cond)
        init = kwargs.pop("init_latents", None)
        return torch.cat([super(WanSpec, self).generate_latents(
            [p], {k: v[i:i + 1] for k, v in cond.items()}, seeds=[seeds[i]],
            images=images[i:i + 1] if images is not None else None,
            init_latents=init[i:i + 1] if init is not None else None, **kwargs)
            for i, p in enumerate(prompts)])


def _use_cached_image_condition(pipe, condition: torch.Tensor, image_embeds: torch.Tensor | None) -> None:
    """Make this Wan image-to-video pipeline instance take the first-frame conditioning from the cache (as
    encode_first_frames stores it, through this same pipeline's prepare_latents) instead of VAE-encoding a video of
    [first frame, zeros...] and running CLIP on the image on every call; the noise is drawn as the pipeline draws it."""
    from diffusers.utils.torch_utils import randn_tensor

    def prepare_latents(image, batch_size, num_channels_latents=16, height=480, width=832, num_frames=81, dtype=None,
                        device=None, generator=None, latents=None, last_image=None):
        shape = (batch_size, num_channels_latents, (num_frames - 1) // pipe.vae_scale_factor_temporal + 1,
                 height // pipe.vae_scale_factor_spatial, width // pipe.vae_scale_factor_spatial)
        latents = randn_tensor(shape, generator=generator, device=device, dtype=dtype) if latents is None \
            else latents.to(device=device, dtype=dtype)
        return latents, condition.to(device=device, dtype=dtype).expand(batch_size, *condition.shape[1:])

    pipe.prepare_latents = prepare_latents
    if image_embeds is not None:
        pipe.encode_image = lambda image, device=None: image_embeds.to(device or image_embeds.device)
