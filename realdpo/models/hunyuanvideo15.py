"""HunyuanVideo 1.5 (text-to-video and image-to-video): flow matching with the scheduler's shifted sigmas.

Latents are [B, C, F, h, w] scaled by the VAE's scaling_factor, as HunyuanVideo15Pipeline's `output_type="latent"`
returns them (16x spatial, 4x temporal compression, 32 channels). Everything follows the diffusers pipelines (0.42):

- Text: two encoders through the pipeline's own `encode_prompt`: Qwen2.5-VL's third-to-last hidden state under the
  pipeline's chat template (padded to `tokenizer_max_length`, 1000 tokens) and ByT5 on the prompt's quoted text
  (256 tokens; zeros when the prompt quotes nothing), each with its attention mask.
- The transformer input is [noisy latents, condition latents, mask] on channels. Text-to-video: condition and mask are
  zeros and the SigLIP image tokens are zeros (729 x 1152); image-to-video: the first frame's VAE latents (the
  posterior mode) on latent frame 0, mask 1 there, and the first frame's SigLIP tokens, as
  HunyuanVideo15ImageToVideoPipeline builds them. The first frame is conditioning, yet the pipeline denoises all
  latent frames, so the error counts every frame.
- Guidance comes from the folder's `guider` (ClassifierFreeGuidance): its guidance_scale is the family's default.
- The image-to-video pipeline picks its size from the image (the bucket of `target_size` nearest the image's aspect
  ratio); training runs at the clips' size, so generation here runs at the size asked for.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from realbase.errors import UserError
from realdpo.models.base import Cond
from realdpo.models.common import REQUIRED_COMPONENTS, FlowMatchingSpec, add_pixel_noise, image_generator

DEFAULT_FRAMES = 121  # the pipelines' num_frames default (5 s at 24 fps)
TEXT_KEYS = ("prompt_embeds", "prompt_embeds_mask", "prompt_embeds_2", "prompt_embeds_mask_2")


class HunyuanVideo15Spec(FlowMatchingSpec):
    family = "hunyuanvideo15"
    display_name = "HunyuanVideo 1.5"
    example_frames = "9, 121"
    pipeline_classes = {"t2v": "HunyuanVideo15Pipeline", "i2v": "HunyuanVideo15ImageToVideoPipeline"}
    multistep_scheduler = "UniPCMultistepScheduler"  # on the same shifted flow sigmas
    # the real clips' latents are the winners of every pair: encode them in float32 (the VAE is small beside 8.3B)
    fp32_components = ("vae",)
    max_sequence_length = 1000  # the pipeline's tokenizer_max_length (Qwen2.5-VL tokens after the template)
    max_sequence_length_2 = 256  # its tokenizer_2_max_length (ByT5 bytes of the quoted text)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.text_encoder_2 = self.components.get("text_encoder_2")
        self.guider = self.components.get("guider")
        self.image_encoder = self.components.get("image_encoder")
        vcfg = self.vae.config
        self.scale_spatial = int(vcfg.spatial_compression_ratio)
        self.scale_temporal = int(vcfg.temporal_compression_ratio)
        self.scaling_factor = float(vcfg.scaling_factor)
        scfg = self.scheduler.config
        self.num_train_timesteps = int(scfg.num_train_timesteps)
        self.shift = float(scfg.get("shift") or 1.0)
        if scfg.get("use_dynamic_shifting"):
            raise UserError(f"{self.path}: the scheduler uses dynamic shifting; HunyuanVideo 1.5 pipelines use a "
                            "fixed shift")
        if self.transformer.config.get("use_meanflow"):
            raise UserError(f"{self.path} is a meanflow (step-distilled) HunyuanVideo 1.5 model; realdpo trains the "
                            "base models")
        if self.guider is None:
            raise UserError(f"model folder {self.path} is missing components: guider")
        extra = self.path / "realdpo.json"
        if extra.is_file():
            self._default_size = tuple(json.loads(extra.read_text())["default_size"])
        else:  # the text-to-video pipeline's own default: a 16:9 bucket of the transformer's target size
            from diffusers.pipelines.hunyuan_video1_5.image_processor import HunyuanVideo15ImageProcessor

            h, w = HunyuanVideo15ImageProcessor(vae_scale_factor=self.scale_spatial).calculate_default_height_width(
                9, 16, int(self.transformer.config.target_size))
            self._default_size = (DEFAULT_FRAMES, int(h), int(w))
        if self.vae.config.block_out_channels[-1] >= 512 and hasattr(self.vae, "enable_tiling"):
            self.vae.enable_tiling()  # real checkpoints: encode/decode 480p clips without holding all activations

    @classmethod
    def known_pipelines(cls) -> dict[str, str | None]:
        return {"HunyuanVideo15Pipeline": "t2v", "HunyuanVideo15ImageToVideoPipeline": "i2v"}

    @classmethod
    def required_components(cls, task: str) -> tuple[str, ...]:
        return REQUIRED_COMPONENTS + ("text_encoder_2",) + (("image_encoder",) if task == "i2v" else ())

    @classmethod
    def from_pretrained(cls, path: Path, *args, **kwargs):
        from realdpo.models.common import read_model_index

        path = Path(path)
        index = read_model_index(path)
        tasks = cls.tasks(path)
        task = kwargs.get("task") or (tasks[0] if tasks else None)
        if task not in tasks:  # an unsupported pipeline or the wrong --task: the common loader says which
            return super().from_pretrained(path, *args, **kwargs)
        # the components missing_components cannot judge (a tokenizer folder, a guider's own config name)
        needs = {"tokenizer_2": "*", "guider": "*config.json"}
        if task == "i2v":
            needs["feature_extractor"] = "*.json"
        missing = [n for n, pattern in needs.items() if not (isinstance(index.get(n), list) and (path / n).is_dir()
                                                             and any((path / n).glob(pattern)))]
        if missing:
            raise UserError(f"model folder {path} is missing components: {', '.join(missing)}")
        return super().from_pretrained(path, *args, **kwargs)

    # ---- defaults ------------------------------------------------------------------------------------------------
    def default_fps(self) -> float:
        return 24.0

    def default_guidance(self) -> float:
        """The folder's guider's guidance_scale (ClassifierFreeGuidance), which the pipelines run with."""
        return float(self.guider.config.guidance_scale)

    def default_negative_prompt(self) -> str:
        return ""  # the pipelines' default: no negative prompt (encoded as the empty prompt)

    def patch_size(self) -> int:
        return int(self.transformer.config.patch_size)

    # ---- pipeline ------------------------------------------------------------------------------------------------
    def pipeline(self, transformer: torch.nn.Module | None = None, scheduler=None, guidance: float | None = None):
        """The family's pipeline over the loaded components (with diffusers' LoRA loader: `with_lora_loader`), with
        this spec's text lengths; `guidance` replaces the guider's guidance_scale (1 turns classifier-free guidance
        off, as in the guider)."""
        import diffusers

        if scheduler is None:
            scheduler = type(self.scheduler).from_config(self.scheduler.config)
        pipe_cls = with_lora_loader(getattr(diffusers, self.pipeline_classes[self.task]))
        pipe = pipe_cls(**{**self.components, "scheduler": scheduler,
                           **self.pipeline_modules(transformer if transformer is not None else self.transformer)})
        pipe.tokenizer_max_length = self.max_sequence_length
        pipe.tokenizer_2_max_length = self.max_sequence_length_2
        if guidance is not None:
            pipe.guider = type(self.guider).from_config({**self.guider.config, "guidance_scale": float(guidance)})
        return pipe

    def sampling_scheduler(self, sampler: str = "default", strength: float = 1.0):
        """The model's FlowMatchEulerDiscreteScheduler, or ("multistep") UniPC on the same shifted flow sigmas.
        `strength` is applied through the sigmas generate_latents passes (the pipelines always pass sigmas)."""
        import diffusers

        if sampler == "default":
            return type(self.scheduler).from_config(self.scheduler.config)
        if sampler == "multistep":
            return diffusers.UniPCMultistepScheduler(
                num_train_timesteps=self.num_train_timesteps, prediction_type="flow_prediction", use_flow_sigmas=True,
                flow_shift=self.shift, solver_order=2, final_sigmas_type="zero")
        raise UserError(f"unknown sampler {sampler!r}; choose default or multistep")

    # ---- text ------------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_prompts(self, prompts: Sequence[str]) -> Cond:
        """Both encoders through the pipeline's encode_prompt: {prompt_embeds [B, L, 3584], prompt_embeds_mask [B, L],
        prompt_embeds_2 [B, 256, 1472], prompt_embeds_mask_2 [B, 256]} (masks as the pipeline passes them: floats)."""
        pipe = self.pipeline()
        out = pipe.encode_prompt(list(prompts), device=self.device, dtype=self.dtype, batch_size=len(prompts))
        return dict(zip(TEXT_KEYS, out))

    # ---- latents ---------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_videos(self, videos: torch.Tensor) -> torch.Tensor:
        x = videos.to(self.device, self.vae.dtype).permute(0, 2, 1, 3, 4)  # [B, 3, F, H, W]
        return torch.cat([self.vae.encode(v[None]).latent_dist.mode().float() for v in x]) * self.scaling_factor

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        z = latents.float().to(self.device) / self.scaling_factor
        video = torch.cat([self.vae.decode(v[None].to(self.vae.dtype)).sample.float() for v in z])
        return video.permute(0, 2, 1, 3, 4).clamp(-1, 1)

    @torch.no_grad()
    def encode_first_frames(self, images: torch.Tensor, num_frames: int) -> Cond:
        """Through the image-to-video pipeline's own steps (resize with crop, preprocess, the VAE's posterior mode
        times scaling_factor; SigLIP's last hidden state): {"image_latents": [B, C, 1, h, w], "image_embeds":
        [B, N, D]}. {} for text-to-video."""
        if self.task != "i2v":
            return {}
        pipe = self.pipeline()
        height, width = images.shape[-2:]
        latents, embeds = [], []
        for image, pil in zip(images, self._pil(images)):
            pil = pipe.video_processor.resize(pil, height=height, width=width, resize_mode="crop")
            pixels = pipe.video_processor.preprocess(pil, height=height, width=width).to(self.device, self.vae.dtype)
            if self.image_noise:
                pixels = add_pixel_noise(pixels, image_generator(image))
            z = self.vae.encode(pixels.unsqueeze(2)).latent_dist.mode() * self.scaling_factor
            latents.append(z.float())
            embeds.append(pipe.encode_image(pil, 1, self.device, self.dtype))
        return {"image_latents": torch.cat(latents), "image_embeds": torch.cat(embeds)}

    def has_first_frame_cond(self, cond: Cond) -> bool:
        return "image_latents" in cond

    def condition_channels(self, latents: torch.Tensor, cond: Cond) -> torch.Tensor:
        """[condition latents, mask] to concatenate on channels: zeros for text-to-video; for image-to-video the
        first frame's latents on latent frame 0 and mask 1 there (the pipelines' prepare_cond_latents_and_mask)."""
        b, _, f, h, w = latents.shape
        condition = latents.new_zeros(latents.shape)
        mask = latents.new_zeros(b, 1, f, h, w)
        if self.task == "i2v":
            condition[:, :, :1] = cond["image_latents"].to(latents)
            mask[:, :, 0] = 1.0
        return torch.cat([condition, mask], dim=1)

    def image_tokens(self, cond: Cond, batch: int, device, dtype) -> torch.Tensor:
        """SigLIP tokens: the first frame's, or the pipeline's zeros for text-to-video."""
        if self.task == "i2v":
            return cond["image_embeds"].to(device, dtype)
        pipe_tokens = 729  # HunyuanVideo15Pipeline.vision_num_semantic_tokens
        return torch.zeros(batch, pipe_tokens, int(self.transformer.config.image_embed_dim), device=device, dtype=dtype)

    # ---- the error -------------------------------------------------------------------------------------------------
    def shift_sigma(self, sigma: torch.Tensor) -> torch.Tensor:
        """The scheduler's time shift: s = shift*sigma / (1 + (shift-1)*sigma)."""
        return self.shift * sigma / (1 + (self.shift - 1) * sigma)

    def sample_timesteps(self, n: int, t_min: float, t_max: float, generator: torch.Generator | None = None) -> torch.Tensor:
        """sigma uniform in [t_min, t_max), shifted as the scheduler shifts its inference sigmas, as the model's
        timestep s*T (float; per_sample_error recovers s = t/T)."""
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
        model_in = torch.cat([x_t, self.condition_channels(x_t, cond)], dim=1).to(dt)
        text = {k: cond[k].to(device, dt) for k in TEXT_KEYS}
        u_hat = transformer(
            hidden_states=model_in,
            image_embeds=self.image_tokens(cond, x0.shape[0], device, dt),
            timestep=t.to(dt),
            encoder_hidden_states=text["prompt_embeds"],
            encoder_attention_mask=text["prompt_embeds_mask"],
            encoder_hidden_states_2=text["prompt_embeds_2"],
            encoder_attention_mask_2=text["prompt_embeds_mask_2"],
            return_dict=False,
        )[0].float()
        return (u_hat - (eps - x0)).pow(2).mean(dim=(1, 2, 3, 4))

    # ---- generation ------------------------------------------------------------------------------------------------
    def generate_latents(self, prompts: Sequence[str], cond: Cond, *, num_frames: int, height: int, width: int,
                         steps: int, guidance: float, seeds: Sequence[int],
                         transformer: torch.nn.Module | None = None, images: torch.Tensor | None = None,
                         negative_prompt: str = "", negative_cond: Cond | None = None,
                         init_latents: torch.Tensor | None = None, strength: float = 1.0, sampler: str = "default",
                         callback: Callable[[int, int], None] | None = None) -> torch.Tensor:
        """See ModelSpec.generate_latents. The image-to-video pipeline takes one image per call: a batch runs one
        call per sample."""
        self._check_batch(prompts, seeds, images, cond)
        self.check_size(num_frames, height, width)
        if self.task == "i2v" and len(prompts) > 1:
            return torch.cat([self.generate_latents(
                [p], {k: v[i:i + 1] for k, v in cond.items()}, num_frames=num_frames, height=height, width=width,
                steps=steps, guidance=guidance, seeds=[seeds[i]], transformer=transformer,
                images=images[i:i + 1] if images is not None else None, negative_prompt=negative_prompt,
                negative_cond=negative_cond, init_latents=init_latents[i:i + 1] if init_latents is not None else None,
                strength=strength, sampler=sampler, callback=callback) for i, p in enumerate(prompts)])
        pipe = self.pipeline(transformer, scheduler=self.sampling_scheduler(sampler), guidance=guidance)
        pipe.set_progress_bar_config(disable=True)
        generators = self.generators(seeds)
        # the pipelines' own schedule; SDEdit keeps its last `strength` and starts from x0 noised to its first sigma
        sigmas = np.linspace(1.0, 0.0, steps + 1)[:-1]
        kwargs: dict = {}
        if init_latents is not None and strength < 1:
            keep = min(steps, max(1, round(steps * strength)))
            sigmas = sigmas[steps - keep:]
            s0 = float(self.shift_sigma(torch.tensor(float(sigmas[0]))))
            x0 = init_latents.float().cpu()
            eps = torch.stack([torch.randn(x0.shape[1:], generator=g) for g in generators])
            kwargs["latents"] = ((1 - s0) * x0 + s0 * eps).to(self.device, self.dtype)
        if all(k in cond for k in TEXT_KEYS):
            kwargs.update({k: cond[k].to(self.device, self.dtype) for k in TEXT_KEYS})
        else:
            kwargs["prompt"] = list(prompts)
        if pipe.guider._enabled and pipe.guider.num_conditions > 1:  # (guidance 1: the pipeline encodes no negative)
            if negative_cond is not None and all(k in negative_cond for k in TEXT_KEYS):
                for k in TEXT_KEYS:
                    neg = negative_cond[k].to(self.device, self.dtype)
                    kwargs[f"negative_{k}"] = neg.expand(len(prompts), *neg.shape[1:])
            else:
                kwargs["negative_prompt"] = [negative_prompt] * len(prompts) if negative_prompt else None
        if callback is not None:
            step, total = pipe.scheduler.step, len(sigmas)

            def counted_step(*args, **kw):
                out = step(*args, **kw)
                callback(pipe.scheduler.step_index or 0, total)
                return out
            pipe.scheduler.step = counted_step
        if self.task == "i2v":
            kwargs["image"] = self._first_frame_input(pipe, images, cond, height, width)
        else:
            kwargs.update(height=height, width=width)
        latents = pipe(**kwargs, num_frames=num_frames, num_inference_steps=len(sigmas), sigmas=sigmas,
                       generator=generators, output_type="latent", return_dict=False)[0]
        return latents.float()

    def _first_frame_input(self, pipe, images: torch.Tensor | None, cond: Cond, height: int, width: int):
        """The image argument of one image-to-video call, with `pipe` set to run at height x width (not the bucket
        nearest the image's aspect ratio) and, when `cond` holds the cached first-frame conditioning, to take it
        instead of encoding the frame again."""
        pipe.video_processor.calculate_default_height_width = lambda **_: (height, width)
        if self.has_first_frame_cond(cond):
            _use_cached_image_condition(pipe, cond["image_latents"], cond["image_embeds"])
            if images is None:  # the pipeline still checks and resizes an image; the cached conditioning replaces it
                images = torch.zeros(1, 3, height, width)
        return self._pil(images)[0]


def _use_cached_image_condition(pipe, image_latents: torch.Tensor, image_embeds: torch.Tensor) -> None:
    """Make this HunyuanVideo 1.5 image-to-video pipeline instance build its condition latents and mask from the
    cached first-frame latents (as its prepare_cond_latents_and_mask does from the VAE) and take the cached SigLIP
    tokens instead of running the VAE and the image encoder on every call."""

    def prepare_cond_latents_and_mask(latents, image, batch_size, height, width, dtype, device):
        batch, _, frames, latent_height, latent_width = latents.shape
        condition = image_latents.to(device=device, dtype=dtype).repeat(batch_size, 1, frames, 1, 1)
        condition[:, :, 1:] = 0
        mask = torch.zeros(batch, 1, frames, latent_height, latent_width, dtype=dtype, device=device)
        mask[:, :, 0] = 1.0
        return condition, mask

    pipe.prepare_cond_latents_and_mask = prepare_cond_latents_and_mask
    pipe.encode_image = lambda image, batch_size, device, dtype: image_embeds.to(device, dtype).repeat(batch_size, 1, 1)


@functools.cache
def with_lora_loader(pipe_cls):
    """`pipe_cls` with diffusers' LoRA loader for a pipeline whose one LoRA-loadable module is `transformer`
    (HunyuanVideoLoraLoaderMixin: save_lora_weights / load_lora_weights in the diffusers format, keys
    `transformer.*`). diffusers 0.42.1 gives the HunyuanVideo 1.5 pipelines no loader; the transformer itself loads
    the same file with `transformer.load_lora_adapter(folder, prefix="transformer")`."""
    from diffusers.loaders import HunyuanVideoLoraLoaderMixin

    if issubclass(pipe_cls, HunyuanVideoLoraLoaderMixin) or hasattr(pipe_cls, "load_lora_weights"):
        return pipe_cls
    return type(pipe_cls.__name__, (pipe_cls, HunyuanVideoLoraLoaderMixin), {"__module__": __name__})
