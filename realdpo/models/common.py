"""What every diffusers-backed spec shares: checking and loading a local pipeline folder, fingerprinting it,
building the pipeline from the loaded components, and prompt encoding through the pipeline's own code."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
from pathlib import Path
from typing import Callable, ClassVar, Sequence

import torch

from realbase.errors import UserError, one_line
from realbase.folders import folder_code
from realdpo.models.base import Cond, ModelSpec
from realdpo.models.guidance import batched_guidance

REQUIRED_COMPONENTS = ("tokenizer", "text_encoder", "vae", "transformer", "scheduler")
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")
_FULL_HASH_LIMIT = 64 << 20  # files above this are fingerprinted by size + first/last 4 MiB (a 10 GB checkpoint in ms)


def read_model_index(path: Path) -> dict:
    index = Path(path) / "model_index.json"
    if not index.is_file():
        raise UserError(f"not a diffusers pipeline folder (no model_index.json): {path}")
    try:
        data = json.loads(index.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"unreadable model_index.json in {path}: {e}") from None
    if not isinstance(data, dict):
        raise UserError(f"model_index.json in {path} holds a {type(data).__name__}, not an object of components")
    return data


def missing_components(path: Path, required: Sequence[str] = REQUIRED_COMPONENTS) -> list[str]:
    """Components model_index.json names (or `required` needs) whose folder is absent or incomplete."""
    path = Path(path)
    index = read_model_index(path)
    missing = []
    for name in required:
        entry = index.get(name)
        folder = path / name
        if not isinstance(entry, list) or len(entry) != 2 or entry[0] is None or not folder.is_dir():
            missing.append(name)
        elif name == "scheduler":
            if not (folder / "scheduler_config.json").is_file():
                missing.append(name)
        elif name in ("tokenizer", "image_processor"):
            if not any(folder.iterdir()):
                missing.append(name)
        elif not (folder / "config.json").is_file() or not any(
                p.name.endswith(_WEIGHT_SUFFIXES) or p.name.endswith(".index.json") for p in folder.iterdir()):
            missing.append(name)
    return missing


def refuse_custom_code(path: Path) -> None:
    """UserError when loading the folder would run code shipped in it: a component whose class comes from a .py file
    in its folder (diffusers refuses it too), or a config mapping classes to such code (transformers' `auto_map`,
    which transformers asks about in a terminal instead of refusing)."""
    for name, entry in read_model_index(path).items():
        folder = Path(path) / name
        if name.startswith("_") or not folder.is_dir():
            continue
        if isinstance(entry, list) and entry and isinstance(entry[0], str) and (folder / f"{entry[0]}.py").is_file():
            raise UserError(f"model folder {path}: component {name} is code in the folder ({name}/{entry[0]}.py); "
                            "realdpo does not run a model folder's own code")
        found = folder_code(folder)
        if found:
            raise UserError(f"model folder {path}: {name}/{found[0]} maps classes to code in the folder "
                            "(auto_map); realdpo does not run a model folder's own code")


def _file_digest(p: Path, h) -> None:
    size = p.stat().st_size
    h.update(f"{p.name}:{size}".encode())
    with open(p, "rb") as f:
        if size <= _FULL_HASH_LIMIT:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        else:
            h.update(f.read(4 << 20))
            f.seek(size - (4 << 20))
            h.update(f.read(4 << 20))


def folder_fingerprint(path: Path, components: Sequence[str] = REQUIRED_COMPONENTS) -> str:
    """16 hex chars over the components' configs and weights (contents, not paths or mtimes)."""
    path = Path(path)
    h = hashlib.sha256()
    for name in components:
        folder = path / name
        for p in sorted(folder.rglob("*")) if folder.is_dir() else []:
            if p.is_file():
                h.update(str(p.relative_to(path)).encode())
                _file_digest(p, h)
    return h.hexdigest()[:16]


def image_generator(image: torch.Tensor) -> torch.Generator:
    """A CPU generator seeded by an image's content: the randomness drawn for a first frame (a posterior sample,
    pixel noise) is the same every time that frame is encoded, and differs between frames."""
    data = image.detach().float().cpu().contiguous().numpy().tobytes()
    return torch.Generator("cpu").manual_seed(int.from_bytes(hashlib.sha256(data).digest()[:8], "little") >> 1)


def add_pixel_noise(image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The official CogVideoX image-to-video trainer's augmentation of the first frame: Gaussian pixel noise with
    sigma = exp(N(-3, 0.5)) (about 0.05 on [-1, 1] pixels)."""
    sigma = torch.exp(torch.normal(-3.0, 0.5, (1,), generator=generator))
    noise = torch.randn(image.shape, generator=generator)
    return image + (noise * sigma).to(image)


@contextlib.contextmanager
def quiet_progress():
    """No per-component progress bars while loading (the commands show their own)."""
    import diffusers.utils.logging as dlog
    import transformers.utils.logging as tlog

    d_on, t_on = dlog.is_progress_bar_enabled(), tlog.is_progress_bar_enabled()
    dlog.disable_progress_bar()
    tlog.disable_progress_bar()
    try:
        yield
    finally:
        if d_on:
            dlog.enable_progress_bar()
        if t_on:
            tlog.enable_progress_bar()


class DiffusersSpec(ModelSpec):
    """A spec whose components come from one diffusers pipeline class per task."""

    pipeline_classes: ClassVar[dict[str, str]]  # task -> diffusers pipeline class name
    multistep_scheduler: ClassVar[str]  # the family's multistep solver (diffusers class), for sampler="multistep"
    max_sequence_length: int
    encoders = None  # realdpo.models.placement.EncoderGroup: components kept off the accelerator until they run
    # the pipeline calls its transformer twice per guided step (cond, uncond): batch them when the negative prompt's
    # embeddings are given (realdpo.models.guidance); False also on an instance runs the pipeline's own two calls
    batch_guidance: bool = False

    def __init__(self, path: Path, task: str, pipe, device: torch.device, dtype: torch.dtype):
        self.path, self.task, self.device, self.dtype = Path(path), task, torch.device(device), dtype
        self.components = dict(pipe.components)  # everything the pipeline class takes (incl. None entries)
        # pipeline options that are not components (Wan 2.2: boundary_ratio, expand_timesteps)
        self.pipeline_options = {k: pipe.config[k] for k in ("boundary_ratio", "expand_timesteps") if k in pipe.config}
        self.tokenizer = pipe.tokenizer
        self.text_encoder = pipe.text_encoder
        self.vae = pipe.vae
        self.transformer = pipe.transformer
        self.scheduler = pipe.scheduler
        for m in self.components.values():
            if isinstance(m, torch.nn.Module):
                m.requires_grad_(False)
                m.eval()
        self._fingerprint: str | None = None

    @classmethod
    def from_pipeline(cls, pipe, task: str | None = None, path: Path | str = "<in memory>"):
        """A spec over an already built pipeline (tests and benchmarks); `path` names it (fingerprints need a folder)."""
        task = task or cls.known_pipelines()[type(pipe).__name__]
        device = next(pipe.transformer.parameters()).device
        return cls(Path(path), task, pipe, device, cls.model_dtype(pipe.transformer))

    @classmethod
    def required_components(cls, task: str) -> tuple[str, ...]:
        return REQUIRED_COMPONENTS

    @classmethod
    def model_components(cls, path: Path, task: str) -> tuple[str, ...]:
        """The components a folder must hold: the family's required ones, and every other model component its
        model_index.json names (Wan 2.2's transformer_2, an image encoder)."""
        index = read_model_index(path)
        extra = tuple(k for k in ("transformer_2", "image_encoder", "image_processor")
                      if isinstance(index.get(k), list) and index[k][0] is not None)
        return tuple(dict.fromkeys(cls.required_components(task) + extra))

    @classmethod
    def tasks(cls, path: Path) -> tuple[str, ...]:
        """The tasks the pipeline in `path` runs: its pipeline class's (none if unsupported; a model that does both
        lists both, its pipeline class's first)."""
        task = cls.known_pipelines().get(cls.pipeline_class_name(path))
        return (task,) if task else ()

    @classmethod
    def pipeline_class_name(cls, path: Path) -> str | None:
        try:
            name = read_model_index(path).get("_class_name")
        except UserError:
            return None
        return name if isinstance(name, str) else None  # a [module, class] pair names custom code: unsupported

    @classmethod
    def matches(cls, path: Path) -> bool:
        return cls.pipeline_class_name(path) in cls.known_pipelines()

    @classmethod
    def known_pipelines(cls) -> dict[str, str | None]:
        """Pipeline class name -> task this spec runs it as (None: recognised but unsupported)."""
        return {v: k for k, v in cls.pipeline_classes.items()}

    @classmethod
    def from_pretrained(cls, path: Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                        task: str | None = None, *, offload_encoders: bool = True, group_offload: bool = False):
        import diffusers

        from realdpo.models.placement import place_pipeline

        path = Path(path)
        name = cls.pipeline_class_name(path)
        tasks = cls.tasks(path)
        if not tasks:
            raise UserError(f"{name} is not supported by realdpo's {cls.family} spec (supported: "
                            f"{', '.join(n for n, t in cls.known_pipelines().items() if t)})")
        if task is not None and task not in tasks:
            raise UserError(f"--task {task}: {path} is a {'/'.join(tasks)} model")
        task = task or tasks[0]
        missing = missing_components(path, cls.model_components(path, task))
        if missing:
            raise UserError(f"model folder {path} is missing components: {', '.join(missing)}")
        refuse_custom_code(path)
        pipe_cls = getattr(diffusers, cls.pipeline_classes[task])
        dtypes = {"default": dtype, **{component: torch.float32 for component in cls.fp32_components}}
        try:
            with quiet_progress():
                pipe = pipe_cls.from_pretrained(path, dtype=dtypes, local_files_only=True, trust_remote_code=False)
        except MemoryError:
            raise
        except Exception as e:  # a damaged or hostile component file: any of the loaders' error types
            raise UserError(f"cannot load the model in {path}: {type(e).__name__}: {one_line(e, 240)}") from None
        encoders = place_pipeline(pipe, device, offload_encoders=offload_encoders, group_offload=group_offload)
        spec = cls(path, task, pipe, torch.device(device), dtype)
        spec.encoders = encoders  # the on-demand components (None: all on `device`)
        return spec

    def fingerprint(self) -> str:
        """Over the folder's components; a model that runs several tasks (Wan2.2-TI2V-5B) adds the task, a run in
        another dtype than float32 adds the dtype, and image-to-video with `image_noise` adds that, since the cached
        latents, conditioning and negatives differ with each."""
        if self._fingerprint is None:
            fp = folder_fingerprint(self.path, self.model_components(self.path, self.task))
            if len(self.tasks(self.path)) > 1:
                fp = hashlib.sha256(f"{fp}:{self.task}".encode()).hexdigest()[:16]
            if self.dtype != torch.float32:  # (float32 keeps the name caches had before dtypes were told apart)
                fp = hashlib.sha256(f"{fp}:{self.dtype}".encode()).hexdigest()[:16]
            self._fingerprint = fp
        if self.image_noise and self.task == "i2v":
            return hashlib.sha256(f"{self._fingerprint}:image-noise".encode()).hexdigest()[:16]
        return self._fingerprint

    def pipeline_modules(self, transformer: torch.nn.Module) -> dict[str, torch.nn.Module]:
        """The pipeline components a (policy) transformer fills."""
        return {"transformer": transformer}

    def pipeline(self, transformer: torch.nn.Module | None = None, scheduler=None):
        """A fresh pipeline over the loaded components, with its own scheduler (a copy of the model's unless
        `scheduler` is given), so sampling never touches the training scheduler's state."""
        import diffusers

        pipe_cls = getattr(diffusers, self.pipeline_classes[self.task])
        if scheduler is None:
            scheduler = type(self.scheduler).from_config(self.scheduler.config)
        modules = self.pipeline_modules(transformer if transformer is not None else self.transformer)
        return pipe_cls(**{**self.components, "scheduler": scheduler, **modules}, **self.pipeline_options)

    def sampling_scheduler(self, sampler: str = "default", strength: float = 1.0):
        """A fresh scheduler for sampling: the model's own ("default") or the family's multistep solver
        ("multistep"), on the model's noise schedule. strength < 1 keeps only the last `strength` of the inference
        schedule (SDEdit: sampling then starts from a clean latent noised to the first kept timestep)."""
        import diffusers

        if sampler == "default":
            cls = type(self.scheduler)
        elif sampler == "multistep":
            cls = getattr(diffusers, self.multistep_scheduler)
        else:
            raise UserError(f"unknown sampler {sampler!r}; choose default or multistep")
        if strength >= 1:
            return cls.from_config(self.scheduler.config)
        scheduler = _partial_schedule(cls).from_config(self.scheduler.config)
        scheduler.strength = float(strength)
        return scheduler

    @torch.no_grad()
    def encode_prompts(self, prompts: Sequence[str]) -> Cond:
        pipe = self.pipeline()
        embeds, _ = pipe.encode_prompt(list(prompts), do_classifier_free_guidance=False,
                                       max_sequence_length=self.max_sequence_length, device=self.device, dtype=self.dtype)
        return {"prompt_embeds": embeds}

    @property
    def lora_target_modules(self) -> list[str]:
        return ["to_q", "to_k", "to_v", "to_out.0"]

    @staticmethod
    def model_dtype(module: torch.nn.Module) -> torch.dtype:
        # diffusers' ModelMixin.dtype skips modules kept in fp32 (Wan's scale_shift_table); plain modules: 1st param
        dtype = getattr(module, "dtype", None)
        return dtype if isinstance(dtype, torch.dtype) else next(module.parameters()).dtype

    @staticmethod
    def generators(seeds: Sequence[int]) -> list[torch.Generator]:
        # CPU generators: the same seed gives the same negative on any device
        return [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]

    def _check_batch(self, prompts: Sequence[str], seeds: Sequence[int], images, cond: Cond) -> None:
        if len(seeds) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
        if self.task == "i2v" and not self.has_first_frame_cond(cond) and (images is None or len(images) != len(prompts)):
            raise UserError("an image-to-video model needs one first frame per prompt")
        if self.task == "t2v" and images is not None:
            raise UserError("this is a text-to-video model; it takes no first frame")

    def has_first_frame_cond(self, cond: Cond) -> bool:
        """Whether `cond` holds encode_first_frames' output (then the pipeline need not encode the frame again)."""
        return False

    def pipeline_image_inputs(self, pipe, images: torch.Tensor | None, cond: Cond, height: int, width: int) -> dict:
        """Extra pipeline arguments carrying the first frames (image-to-video specs override). When `cond` holds
        the cached first-frame conditioning, the spec makes `pipe` use it instead of encoding the frame again."""
        return {}

    def pipeline_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Clean latents in the shape the pipeline denoises (CogVideoX 1.5 prepends padding frames)."""
        return latents

    def _noised_latents(self, scheduler, x0: torch.Tensor, generators: list[torch.Generator],
                        steps: int) -> torch.Tensor:
        """x0 noised to the first timestep `scheduler` keeps of `steps` (one noise draw per sample's generator)."""
        scheduler.set_timesteps(steps)
        x0 = self.pipeline_latents(x0.float().cpu())
        eps = torch.stack([torch.randn(x0.shape[1:], generator=g) for g in generators])
        t0 = scheduler.timesteps[:1].expand(x0.shape[0])
        return (scheduler.add_noise(x0, eps, t0) / scheduler.init_noise_sigma).to(self.device)

    def generate_latents(self, prompts: Sequence[str], cond: Cond, *, num_frames: int, height: int, width: int,
                         steps: int, guidance: float, seeds: Sequence[int],
                         transformer: torch.nn.Module | None = None, images: torch.Tensor | None = None,
                         negative_prompt: str = "", negative_cond: Cond | None = None,
                         init_latents: torch.Tensor | None = None, strength: float = 1.0, sampler: str = "default",
                         callback: Callable[[int, int], None] | None = None) -> torch.Tensor:
        """See ModelSpec.generate_latents; `callback(step, steps)` runs after each sampler step."""
        self._check_batch(prompts, seeds, images, cond)
        self.check_size(num_frames, height, width)
        partial = init_latents is not None and strength < 1
        scheduler = self.sampling_scheduler(sampler, strength if partial else 1.0)
        pipe = self.pipeline(transformer, scheduler=scheduler)
        pipe.set_progress_bar_config(disable=True)
        generators = self.generators(seeds)
        kwargs = {"prompt_embeds": cond["prompt_embeds"].to(self.device, self.dtype)} if "prompt_embeds" in cond \
            else {"prompt": list(prompts)}
        if negative_cond is not None and "prompt_embeds" in negative_cond:
            neg = negative_cond["prompt_embeds"].to(self.device, self.dtype)
            kwargs["negative_prompt_embeds"] = neg.expand(len(prompts), *neg.shape[1:])
        else:
            kwargs["negative_prompt"] = negative_prompt or None
        if partial:  # (strength 1 is pure noise: the ordinary generation)
            kwargs["latents"] = self._noised_latents(scheduler, init_latents, generators, steps)
        if callback is not None:
            def on_step_end(_pipe, i, _t, _kw):
                callback(i + 1, len(_pipe.scheduler.timesteps))
                return {}
            kwargs["callback_on_step_end"] = on_step_end
        guided = contextlib.nullcontext()
        if self.batch_guidance and guidance > 1 and "negative_prompt_embeds" in kwargs:
            guided = batched_guidance(pipe, kwargs["negative_prompt_embeds"])
        with guided:
            latents = pipe(**kwargs, **self.pipeline_image_inputs(pipe, images, cond, height, width),
                           num_frames=num_frames, height=height, width=width, num_inference_steps=steps,
                           guidance_scale=guidance, generator=generators, output_type="latent",
                           max_sequence_length=self.max_sequence_length, return_dict=False)[0]
        return latents.float()


@functools.cache
def _partial_schedule(cls):
    """`cls` whose set_timesteps keeps only the last `strength` of the schedule, as diffusers' image-to-image and
    video-to-video pipelines do (`get_timesteps`), so that any pipeline can start from a partly noised latent."""

    class Partial(cls):
        strength = 1.0

        def set_timesteps(self, num_inference_steps, *args, **kwargs):
            super().set_timesteps(num_inference_steps, *args, **kwargs)
            keep = min(num_inference_steps, max(1, round(num_inference_steps * self.strength)))
            start = (num_inference_steps - keep) * self.order
            full = len(self.timesteps)
            self.timesteps = self.timesteps[start:]
            sigmas = getattr(self, "sigmas", None)
            if isinstance(sigmas, torch.Tensor) and len(sigmas) == full + 1:  # multistep solvers index sigmas by step
                self.sigmas = sigmas[start:]

    Partial.__name__ = Partial.__qualname__ = cls.__name__
    return Partial


class FlowMatchingSpec(DiffusersSpec):
    """What the flow-matching families (Wan, HunyuanVideo 1.5, LTX-2) share: latents [B, C, F, h, w] from a VAE that
    compresses `scale_temporal` x `scale_spatial` (set by the family), frames = scale_temporal*k + 1, height and width
    multiples of the VAE's and the transformer's patch together, and the error a mean over all elements."""

    prediction_type = "flow_matching"
    display_name: ClassVar[str]  # the family as its size errors name it
    example_frames: ClassVar[str]  # frame counts its size error gives as examples, e.g. "9, 81"
    scale_temporal: int
    scale_spatial: int
    _default_size: tuple[int, int, int]

    def default_beta(self) -> float:
        # flow-matching DPO work uses 100-500; E here is a mean over all elements like CogVideoX's v-space error,
        # whose 5000 is for a target (v) of unit scale, while u = eps - x0 has twice the variance
        return 500.0

    def default_size(self) -> tuple[int, int, int]:
        return self._default_size

    @staticmethod
    def _pil(images: torch.Tensor) -> list:
        """Frames [N, 3, H, W] in [-1, 1] as PIL images, the form these families' pipelines take an image in."""
        from PIL import Image

        from realdpo.models.frames import to_uint8

        return [Image.fromarray(a) for a in to_uint8(images)]

    def patch_size(self) -> int:
        """The transformer's spatial patch in latents (height and width must be multiples of it times the VAE's)."""
        return 1

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, ...]:
        cfg = self.vae.config
        channels = cfg.get("latent_channels") or cfg.get("z_dim")  # (Wan's VAE calls them z_dim)
        return (int(channels), (frames - 1) // self.scale_temporal + 1, height // self.scale_spatial,
                width // self.scale_spatial)

    def check_size(self, frames: int, height: int, width: int) -> None:
        if frames < 1 or (frames - 1) % self.scale_temporal:
            raise UserError(f"{self.display_name} needs frames = {self.scale_temporal}k+1 (e.g. {self.example_frames}), "
                            f"got {frames}")
        mult = self.scale_spatial * self.patch_size()
        if height % mult or width % mult:
            raise UserError(f"{self.display_name} needs height and width divisible by {mult}, got {height}x{width}")
