"""The model-spec interface: everything model-specific lives behind one small class per family.

The trainer, negatives, sampling and losses talk to a model only through `ModelSpec`; they never branch on the
family. Tensors crossing the interface:

- video: float [B, F, 3, H, W] in [-1, 1]
- latents: the family's native latent layout, batched on dim 0 and already scaled/normalised the way its
  transformer and pipeline expect (so pipeline `output_type="latent"` results and `encode_videos` agree)
- cond: dict[str, Tensor], every value batched on dim 0 (prompt embeddings, and for image-to-video the
  first-frame latents); the trainer concatenates, repeats and caches these without looking inside.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Sequence

import torch

Cond = dict[str, torch.Tensor]


@dataclass(frozen=True)
class RunDefaults:
    """A run's frame rate, guidance, negative prompt and DPO beta: the options given, else the model's defaults."""

    fps: float
    guidance: float
    negative_prompt: str
    beta: float = 5000.0


@dataclass(frozen=True)
class SpecOptions:
    """How a run uses the model it loads: given to `load_spec`, so no one patches a loaded spec and its fingerprint
    (which `image_noise` enters) is the same from the moment it loads."""

    image_noise: bool = False  # image-to-video: perturb first frames with small pixel noise before encoding them
    train_experts: str | None = None  # two-expert models: "high", "low" or "both" (None: `expert_default`)
    expert_default: str = "low"
    expert_ranges: tuple[tuple[str, float, float], ...] = ()  # (expert, sigma min, sigma max) given
    t_range: tuple[float, float] = (0.0, 1.0)  # the experts' sigma range where `expert_ranges` names none


class ModelSpec(ABC):
    family: ClassVar[str]  # "cogvideox", "wan"
    prediction_type: ClassVar[str]  # "v_prediction" or "flow_matching"
    fp32_components: ClassVar[tuple[str, ...]] = ()  # loaded and kept in float32 whatever the run's dtype

    task: str  # "t2v" or "i2v"
    path: Path
    transformer: torch.nn.Module  # for a two-expert model, one module routing each sample to its expert
    device: torch.device
    dtype: torch.dtype
    image_noise: bool = False  # image-to-video: perturb first frames with small pixel noise before encoding them

    # ---- the family's defaults a user should not have to know --------------------------------------------------
    @abstractmethod
    def default_fps(self) -> float:
        """The frame rate the model generates at; real clips are resampled to it."""

    def default_negative_prompt(self) -> str:
        """The negative prompt the family's pipelines are run with."""
        return ""

    def default_guidance(self) -> float:
        """The classifier-free guidance scale the family's pipelines are run with."""
        return 6.0

    def default_beta(self) -> float:
        """DPO's beta for this family's error E: the paper's 5000 for v-prediction."""
        return 5000.0

    def run_defaults(self, fps: float | None = None, guidance: float | None = None,
                     negative_prompt: str | None = None, beta: float | None = None) -> RunDefaults:
        """The given values, each None replaced by the model's default ("" is a negative prompt: none)."""
        return RunDefaults(fps=fps if fps is not None else self.default_fps(),
                           guidance=guidance if guidance is not None else self.default_guidance(),
                           negative_prompt=negative_prompt if negative_prompt is not None
                           else self.default_negative_prompt(),
                           beta=beta if beta is not None else self.default_beta())

    # ---- experts (Wan 2.2 A14B); one-transformer models have none ------------------------------------------------
    expert_names: ClassVar[tuple[str, ...]] = ()

    @property
    def trained_experts(self) -> tuple[str, ...]:
        """The pipeline components ("transformer", "transformer_2") whose LoRA trains; () for one-transformer models."""
        return ()

    def set_experts(self, train: str | None = None, ranges: dict[str, tuple[float, float]] | None = None,
                    default: str = "low", t_range: tuple[float, float] = (0.0, 1.0)) -> None:
        """Two-expert models: which experts train ("high", "low" or "both"; None: `default`) and the sigma range each
        one's training timesteps are drawn from (default `t_range`). A one-transformer model raises UserError when
        given either."""
        if train is not None or ranges:
            from realbase.errors import UserError

            raise UserError(f"expert options apply to two-expert models (Wan 2.2 A14B); {self.path} has one transformer")

    def use(self, options: SpecOptions) -> None:
        """Set how a run uses the model; `load_spec(..., options=)` calls it before returning the spec."""
        self.image_noise = options.image_noise
        self.set_experts(options.train_experts, {e: (lo, hi) for e, lo, hi in options.expert_ranges},
                         default=options.expert_default, t_range=options.t_range)

    def trained_modules(self, transformer: torch.nn.Module) -> dict[str, torch.nn.Module]:
        """The modules that train (and carry the LoRA adapters), keyed by pipeline component ("transformer",
        "transformer_2")."""
        return {"transformer": transformer}

    @classmethod
    @abstractmethod
    def matches(cls, path: Path) -> bool:
        """Whether the diffusers folder at `path` holds a pipeline of this family (reads model_index.json)."""

    @classmethod
    @abstractmethod
    def from_pretrained(cls, path: Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                        task: str | None = None, *, offload_encoders: bool = True,
                        group_offload: bool = False) -> "ModelSpec":
        """Load components from a local diffusers folder (raise UserError naming any missing component); `task`
        chooses for a model that runs several (default: its pipeline's).
        On an accelerator the transformer goes there and, with `offload_encoders`, the text/image encoders and the
        VAE stay in CPU memory until they run; `group_offload` keeps the transformer there too, block by block
        (`realdpo.models.placement`)."""

    @abstractmethod
    def fingerprint(self) -> str:
        """A short stable hash of the model's identity (configs and weights), used in cache keys."""

    @abstractmethod
    def default_size(self) -> tuple[int, int, int]:
        """(frames, height, width) the model was trained at."""

    @abstractmethod
    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, ...]:
        """The shape of one clip's latents (no batch dim), as encode_videos returns them."""

    @abstractmethod
    def check_size(self, frames: int, height: int, width: int) -> None:
        """Raise UserError if the model cannot run at this size (e.g. frames must be 4k+1)."""

    def resolve_size(self, frames: int | None = None, height: int | None = None,
                     width: int | None = None) -> tuple[int, int, int]:
        """A run's (frames, height, width): the given values, else the model's defaults; checked against the model."""
        f0, h0, w0 = self.default_size()
        size = (frames or f0, height or h0, width or w0)
        self.check_size(*size)
        return size

    @abstractmethod
    def encode_prompts(self, prompts: Sequence[str]) -> Cond:
        """Text conditioning for a batch of prompts."""

    @abstractmethod
    def encode_videos(self, videos: torch.Tensor) -> torch.Tensor:
        """Clean latents x0 of videos [B, F, 3, H, W] in [-1, 1] (deterministic: the posterior mode)."""

    @abstractmethod
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Videos [B, F, 3, H, W] in [-1, 1]."""

    @abstractmethod
    def encode_first_frames(self, images: torch.Tensor, num_frames: int) -> Cond:
        """Image-to-video conditioning from first frames [B, 3, H, W] in [-1, 1], drawn the way the family's pipeline
        draws it (deterministic for a given image); {} for text-to-video."""

    @abstractmethod
    def sample_timesteps(self, n: int, t_min: float, t_max: float, generator: torch.Generator | None = None) -> torch.Tensor:
        """n timesteps drawn uniformly from the fraction [t_min, t_max) of the schedule (0 = clean)."""

    def noise_shape(self, latent_shape: tuple[int, ...]) -> tuple[int, ...]:
        """The shape of the noise `per_sample_error` takes for latents of (batched) `latent_shape`: theirs, or more
        where the transformer sees frames the video lacks (CogVideoX 1.5's padding frame)."""
        return tuple(latent_shape)

    @abstractmethod
    def per_sample_error(self, transformer: torch.nn.Module, latents: torch.Tensor, noise: torch.Tensor,
                         timesteps: torch.Tensor, cond: Cond) -> torch.Tensor:
        """The per-sample error E of the method (docs/method.md), float32 [B]: noise `latents` with `noise` (of
        `noise_shape(latents.shape)`) at `timesteps`, run `transformer` (the policy, or the reference), and return
        the weighted squared error."""

    @abstractmethod
    def generate_latents(self, prompts: Sequence[str], cond: Cond, *, num_frames: int, height: int, width: int,
                         steps: int, guidance: float, seeds: Sequence[int],
                         transformer: torch.nn.Module | None = None,
                         images: torch.Tensor | None = None, negative_prompt: str = "",
                         negative_cond: Cond | None = None, init_latents: torch.Tensor | None = None,
                         strength: float = 1.0, sampler: str = "default", callback=None) -> torch.Tensor:
        """Generate one video per prompt with the family's diffusers pipeline, kept as latents
        (`output_type="latent"`), in exactly the space `encode_videos` returns.

        `cond` is `encode_prompts(prompts)` (reused instead of re-encoding; may be {}), optionally with
        `encode_first_frames`' output for image-to-video: then the pipeline uses it instead of encoding the first
        frame again, and `images` may be None; otherwise `images` [B, 3, H, W] in [-1, 1] are the first frames
        and the pipeline encodes them itself. `negative_cond` is `encode_prompts([negative prompt])` (batch 1),
        used instead of encoding `negative_prompt` on every call. `seeds[i]` seeds sample i; `transformer` replaces
        the loaded one (the current policy, for later rounds). `init_latents` [B, ...] with `strength` < 1 starts
        from those clean latents noised to the first of the last `strength` of the `steps` timesteps and runs only
        those (SDEdit). `sampler`: "default" (the model's scheduler) or "multistep" (the family's multistep
        solver). `callback(step, steps)` runs after each sampler step (progress bars)."""

    @abstractmethod
    def pipeline(self, transformer: torch.nn.Module | None = None):
        """The family's diffusers pipeline built from the loaded components (for sampling and LoRA loading)."""

    @property
    @abstractmethod
    def lora_target_modules(self) -> list[str]:
        """Transformer module names LoRA adapters attach to."""
