"""Wan 2.1 and 2.2 (text-to-video, image-to-video, TI2V): flow matching with the scheduler's shifted sigmas.

Latents are [B, C, F, h, w] normalised per channel, (z - latents_mean) / latents_std, as WanPipeline's
`output_type="latent"` returns them. Everything follows the diffusers pipelines (0.42):

- Wan 2.1 image-to-video (and Wan 2.2 I2V-A14B) conditions on a mask + the VAE latents of [first frame, zeros...]
  concatenated on channels (and Wan 2.1 on CLIP image tokens), exactly as WanImageToVideoPipeline builds them.
- Wan2.2-TI2V-5B (`expand_timesteps`) gives the transformer one timestep per token: for image-to-video the first
  latent frame is the clean first-frame latent with timestep 0, the other frames the noisy latents with t. The first
  frame is conditioning, not generated, so its error is not counted. The same folder runs text-to-video (WanPipeline)
  and image-to-video (WanImageToVideoPipeline, `--task i2v`).
- Wan 2.2 A14B's two experts are one `ExpertPair`: samples with t >= boundary_ratio * T go to `transformer` (high
  noise), the others to `transformer_2`, as the pipelines switch them.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from realbase.errors import UserError
from realbase.fields import one_of
from realdpo.models.base import Cond
from realdpo.models.common import FlowMatchingSpec, add_pixel_noise, image_generator, read_model_index
from realdpo.models.experts import NAMES, ExpertPair

WAN_DEFAULT_SIZE = (81, 480, 832)
TI2V_DEFAULT_SIZE = (121, 704, 1280)
# the negative prompt of the diffusers Wan pipelines' examples (the English of the official Wan sampler's)
WAN_NEGATIVE_PROMPT = (
    "Bright tones, overexposed, static, blurred details, subtitles, style, works, paintings, images, static, overall "
    "gray, worst quality, low quality, JPEG compression residue, ugly, incomplete, extra fingers, poorly drawn hands, "
    "poorly drawn faces, deformed, disfigured, misshapen limbs, fused fingers, still picture, messy background, three "
    "legs, many people in the background, walking backwards")
EXPERT_CHOICES = ("low", "high", "both")


class WanSpec(FlowMatchingSpec):
    family = "wan"
    display_name = "Wan"
    example_frames = "9, 81"
    pipeline_classes = {"t2v": "WanPipeline", "i2v": "WanImageToVideoPipeline"}
    multistep_scheduler = "UniPCMultistepScheduler"  # what Wan ships: already multistep
    fp32_components = ("vae", "image_encoder")  # as the diffusers Wan examples load them
    max_sequence_length = 512  # WanPipeline's default; prompt embeddings are zero-padded to it
    batch_guidance = True  # its pipelines run guidance as two transformer calls; realdpo.models.guidance batches them

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
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
        self.expand_timesteps = bool(self.pipeline_options.get("expand_timesteps"))
        self.boundary_ratio = self.pipeline_options.get("boundary_ratio")
        self._draw_ranges: list[tuple[float, float]] | None = None
        if self.components.get("transformer_2") is not None:
            if self.boundary_ratio is None:
                raise UserError(f"{self.path} has a transformer_2 but no boundary_ratio in model_index.json")
            self.transformer = ExpertPair(self.transformer, self.components["transformer_2"],
                                          self.boundary_ratio * self.num_train_timesteps)
        if self.task == "i2v" and not self.expand_timesteps and self.transformer.config.image_dim is not None \
                and self.components.get("image_encoder") is None:
            raise UserError(f"model folder {self.path} is missing components: image_encoder, image_processor")
        extra = self.path / "realdpo.json"
        default = TI2V_DEFAULT_SIZE if self.expand_timesteps else WAN_DEFAULT_SIZE
        self._default_size = tuple(json.loads(extra.read_text())["default_size"]) if extra.is_file() else default
        self.vae.enable_slicing()

    @classmethod
    def known_pipelines(cls) -> dict[str, str | None]:
        return {"WanPipeline": "t2v", "WanImageToVideoPipeline": "i2v"}

    @classmethod
    def tasks(cls, path: Path) -> tuple[str, ...]:
        tasks = super().tasks(path)
        if tasks and read_model_index(path).get("expand_timesteps"):  # Wan2.2-TI2V-5B: both, in one model
            return tasks + tuple(t for t in ("t2v", "i2v") if t not in tasks)
        return tasks

    # ---- defaults ------------------------------------------------------------------------------------------------
    def default_fps(self) -> float:
        return 24.0 if self.expand_timesteps else 16.0

    def default_negative_prompt(self) -> str:
        return WAN_NEGATIVE_PROMPT

    def default_guidance(self) -> float:
        return 5.0

    def patch_size(self) -> int:
        return int(self.transformer.config.patch_size[1])

    # ---- the two experts of Wan 2.2 A14B --------------------------------------------------------------------------
    @property
    def expert_names(self) -> tuple[str, ...]:
        return ("high", "low") if isinstance(self.transformer, ExpertPair) else ()

    @property
    def trained_experts(self) -> tuple[str, ...]:
        if not isinstance(self.transformer, ExpertPair):
            return ()
        return tuple(NAMES[e] for e in self.transformer.trained)

    def boundary_sigma(self) -> float:
        """The unshifted sigma whose shifted timestep is the experts' boundary."""
        b = float(self.boundary_ratio)
        return b / (self.shift - (self.shift - 1) * b)

    def set_experts(self, train: str | None = None, ranges: dict[str, tuple[float, float]] | None = None,
                    default: str = "low", t_range: tuple[float, float] = (0.0, 1.0)) -> None:
        """Which experts train and the sigma range each draws its training timesteps from (default `t_range`),
        clipped to the expert's own timesteps: "low" below boundary_ratio, "high" from it. A training sample's
        sigma is uniform over the union of the trained experts' ranges."""
        if not isinstance(self.transformer, ExpertPair):
            return super().set_experts(train, ranges, default)
        train = train or default
        one_of(train, EXPERT_CHOICES, "--train-experts")
        experts = ("high", "low") if train == "both" else (train,)
        ranges = ranges or {}
        if set(ranges) - set(experts):
            raise UserError(f"a timestep range is given for an expert that does not train ({', '.join(sorted(ranges))};"
                            f" training: {', '.join(experts)})")
        ub = self.boundary_sigma()
        domain = {"low": (0.0, ub), "high": (ub, 1.0)}
        draws = []
        for e in experts:
            lo, hi = ranges.get(e, t_range)
            lo, hi = max(lo, domain[e][0]), min(hi, domain[e][1])
            if lo >= hi:
                raise UserError(f"the {e}-noise expert's timesteps (sigma {'below' if e == 'low' else 'from'} "
                                f"{ub:.3g}, boundary_ratio {self.boundary_ratio}) do not meet its range "
                                f"{ranges.get(e, t_range)}")
            draws.append((lo, hi))
        self.transformer.trained = experts
        self._draw_ranges = draws

    def trained_modules(self, transformer: torch.nn.Module) -> dict[str, torch.nn.Module]:
        if isinstance(transformer, ExpertPair):
            return {NAMES[e]: m for e, m in transformer.experts(trained_only=True).items()}
        return super().trained_modules(transformer)

    def pipeline_modules(self, transformer: torch.nn.Module) -> dict[str, torch.nn.Module]:
        if isinstance(transformer, ExpertPair):
            return {"transformer": transformer.high, "transformer_2": transformer.low}
        return super().pipeline_modules(transformer)

    # ---- latents ----------------------------------------------------------------------------------------------------
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

    @torch.no_grad()
    def encode_first_frames(self, images: torch.Tensor, num_frames: int) -> Cond:
        """Through the image-to-video pipeline's own prepare_latents (the posterior mode, as it draws it) and
        encode_image: {"image_condition": [B, 4 + C, F_lat, h, w] (mask + latents), "image_embeds": [B, N, D] (CLIP,
        Wan 2.1)}; for TI2V-5B {"image_condition": [B, C, 1, h, w]} (the first frame's latents). {} for text-to-video."""
        if self.task != "i2v":
            return {}
        pipe = self.pipeline()
        height, width = images.shape[-2:]
        conds, embeds = [], []
        for image, pil in zip(images, self._pil(images)):
            pixels = pipe.video_processor.preprocess(pil, height=height, width=width).to(self.device, torch.float32)
            if self.image_noise:
                pixels = add_pixel_noise(pixels, image_generator(image))
            out = pipe.prepare_latents(pixels, 1, self.vae.config.z_dim, height, width, num_frames, torch.float32,
                                       self.device, None, None)
            conds.append(out[1].float())  # (latents, condition[, first_frame_mask])
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
        """sigma uniform in [t_min, t_max] (two-expert models after `set_experts`: over the trained experts' ranges),
        shifted as the scheduler shifts its inference sigmas, returned as the model's timestep s*T (float;
        per_sample_error recovers s = t/T)."""
        ranges = self._draw_ranges or [(t_min, t_max)]
        widths = torch.tensor([hi - lo for lo, hi in ranges])
        v = torch.rand(n, generator=generator) * widths.sum()  # uniform over the union of the ranges
        u = torch.empty(n)
        start = 0.0
        for (lo, _), w in zip(ranges, widths.tolist()):
            inside = (v >= start) & (v < start + w)
            u[inside] = lo + (v[inside] - start)
            start += w
        u[v >= start] = ranges[-1][1]  # rounding at the very top
        return self.shift_sigma(u) * self.num_train_timesteps

    def first_frame_mask(self, x: torch.Tensor) -> torch.Tensor:
        """TI2V: 1 where the latent is generated, 0 on the first frame for image-to-video (as the pipeline's mask)."""
        mask = x.new_ones(1, 1, *x.shape[2:])
        if self.task == "i2v":
            mask[:, :, 0] = 0
        return mask

    def per_sample_error(self, transformer: torch.nn.Module, latents: torch.Tensor, noise: torch.Tensor,
                         timesteps: torch.Tensor, cond: Cond) -> torch.Tensor:
        """E = mean((u_hat - (eps - x0))^2) with x_t = (1 - s) x0 + s eps, s = t/T (float32 [B]); for TI2V
        image-to-video over the generated frames (all but the first)."""
        device = latents.device
        x0, eps = latents.float(), noise.float()
        t = timesteps.to(device).float()
        s = (t / self.num_train_timesteps).view(-1, 1, 1, 1, 1)
        x_t = (1 - s) * x0 + s * eps
        dt = self.model_dtype(transformer)
        model_t = t
        if self.expand_timesteps:  # one timestep per token, as WanPipeline / WanImageToVideoPipeline pass them
            mask = self.first_frame_mask(x_t)
            if self.task == "i2v":
                x_t = (1 - mask) * cond["image_condition"].to(x_t) + mask * x_t
            _, p_h, p_w = self.transformer.config.patch_size
            model_t = mask[0, 0][:, ::p_h, ::p_w].flatten()[None] * t[:, None]
            model_in = x_t
        elif self.task == "i2v":
            model_in = torch.cat([x_t, cond["image_condition"].to(x_t)], dim=1)
        else:
            model_in = x_t
        image_embeds = cond.get("image_embeds")
        u_hat = transformer(
            hidden_states=model_in.to(dt),
            timestep=model_t,
            encoder_hidden_states=cond["prompt_embeds"].to(device, dt),
            encoder_hidden_states_image=image_embeds.to(device, dt) if image_embeds is not None else None,
            return_dict=False,
        )[0].float()
        err = (u_hat - (eps - x0)).pow(2)
        if self.expand_timesteps and self.task == "i2v":
            err = err[:, :, 1:]
        return err.mean(dim=(1, 2, 3, 4))

    def has_first_frame_cond(self, cond: Cond) -> bool:
        return "image_condition" in cond

    def pipeline_image_inputs(self, pipe, images: torch.Tensor | None, cond: Cond, height: int, width: int) -> dict:
        if self.task != "i2v":
            return {}
        if self.has_first_frame_cond(cond):
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
    [first frame, zeros...] (TI2V-5B: the first frame) and running CLIP on the image on every call; the noise is
    drawn as the pipeline draws it, and TI2V's first-frame mask is the pipeline's."""
    from diffusers.utils.torch_utils import randn_tensor

    def prepare_latents(image, batch_size, num_channels_latents=16, height=480, width=832, num_frames=81, dtype=None,
                        device=None, generator=None, latents=None, last_image=None):
        shape = (batch_size, num_channels_latents, (num_frames - 1) // pipe.vae_scale_factor_temporal + 1,
                 height // pipe.vae_scale_factor_spatial, width // pipe.vae_scale_factor_spatial)
        latents = randn_tensor(shape, generator=generator, device=device, dtype=dtype) if latents is None \
            else latents.to(device=device, dtype=dtype)
        cond = condition.to(device=device, dtype=dtype).expand(batch_size, *condition.shape[1:])
        if pipe.config.get("expand_timesteps", False):
            mask = torch.ones(1, 1, *shape[2:], dtype=dtype, device=device)
            mask[:, :, 0] = 0
            return latents, cond, mask
        return latents, cond

    pipe.prepare_latents = prepare_latents
    if image_embeds is not None:
        pipe.encode_image = lambda image, device=None: image_embeds.to(device or image_embeds.device)
