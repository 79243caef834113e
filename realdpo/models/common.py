"""What every diffusers-backed spec shares: checking and loading a local pipeline folder, fingerprinting it,
building the pipeline from the loaded components, and prompt encoding through the pipeline's own code."""

from __future__ import annotations

import contextlib
import hashlib
import json
from pathlib import Path
from typing import Callable, ClassVar, Sequence

import torch

from realaction.errors import UserError
from realdpo.models.base import Cond, ModelSpec

REQUIRED_COMPONENTS = ("tokenizer", "text_encoder", "vae", "transformer", "scheduler")
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")
_FULL_HASH_LIMIT = 64 << 20  # files above this are fingerprinted by size + first/last 4 MiB (a 10 GB checkpoint in ms)


def read_model_index(path: Path) -> dict:
    index = Path(path) / "model_index.json"
    if not index.is_file():
        raise UserError(f"not a diffusers pipeline folder (no model_index.json): {path}")
    try:
        return json.loads(index.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise UserError(f"unreadable model_index.json in {path}: {e}") from None


def missing_components(path: Path, required: Sequence[str] = REQUIRED_COMPONENTS) -> list[str]:
    """Components model_index.json names (or `required` needs) whose folder is absent or incomplete."""
    path = Path(path)
    index = read_model_index(path)
    missing = []
    for name in required:
        entry = index.get(name)
        folder = path / name
        if not isinstance(entry, list) or entry[0] is None or not folder.is_dir():
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
    max_sequence_length: int

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
            return read_model_index(path).get("_class_name")
        except UserError:
            return None

    @classmethod
    def matches(cls, path: Path) -> bool:
        return cls.pipeline_class_name(path) in cls.known_pipelines()

    @classmethod
    def known_pipelines(cls) -> dict[str, str | None]:
        """Pipeline class name -> task this spec runs it as (None: recognised but unsupported)."""
        return {v: k for k, v in cls.pipeline_classes.items()}

    @classmethod
    def from_pretrained(cls, path: Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                        task: str | None = None):
        import diffusers

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
        pipe_cls = getattr(diffusers, cls.pipeline_classes[task])
        dtypes = {"default": dtype, **{component: torch.float32 for component in cls.fp32_components}}
        with quiet_progress():
            pipe = pipe_cls.from_pretrained(path, dtype=dtypes, local_files_only=True)
        pipe.to(device)
        return cls(path, task, pipe, torch.device(device), dtype)

    def fingerprint(self) -> str:
        """Over the folder's components; a model that runs several tasks (Wan2.2-TI2V-5B) adds the task, since its
        cached conditioning and negatives differ per task."""
        if self._fingerprint is None:
            fp = folder_fingerprint(self.path, self.model_components(self.path, self.task))
            if len(self.tasks(self.path)) > 1:
                fp = hashlib.sha256(f"{fp}:{self.task}".encode()).hexdigest()[:16]
            self._fingerprint = fp
        return self._fingerprint

    def pipeline_modules(self, transformer: torch.nn.Module) -> dict[str, torch.nn.Module]:
        """The pipeline components a (policy) transformer fills."""
        return {"transformer": transformer}

    def pipeline(self, transformer: torch.nn.Module | None = None):
        """A fresh pipeline over the loaded components (its own scheduler copy, so sampling never touches the
        training scheduler's state)."""
        import diffusers

        pipe_cls = getattr(diffusers, self.pipeline_classes[self.task])
        scheduler = type(self.scheduler).from_config(self.scheduler.config)
        modules = self.pipeline_modules(transformer if transformer is not None else self.transformer)
        return pipe_cls(**{**self.components, "scheduler": scheduler, **modules}, **self.pipeline_options)

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

    def _check_batch(self, prompts: Sequence[str], seeds: Sequence[int], images) -> None:
        if len(seeds) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
        if self.task == "i2v" and (images is None or len(images) != len(prompts)):
            raise UserError("an image-to-video model needs one first frame per prompt")
        if self.task == "t2v" and images is not None:
            raise UserError("this is a text-to-video model; it takes no first frame")

    def pipeline_image_inputs(self, images: torch.Tensor | None) -> dict:
        """Extra pipeline arguments carrying the first frames (image-to-video specs override)."""
        return {}

    def generate_latents(self, prompts: Sequence[str], cond: Cond, *, num_frames: int, height: int, width: int,
                         steps: int, guidance: float, seeds: Sequence[int],
                         transformer: torch.nn.Module | None = None, images: torch.Tensor | None = None,
                         negative_prompt: str = "", callback: Callable[[int, int], None] | None = None) -> torch.Tensor:
        """See ModelSpec.generate_latents; `callback(step, steps)` runs after each sampler step."""
        self._check_batch(prompts, seeds, images)
        self.check_size(num_frames, height, width)
        pipe = self.pipeline(transformer)
        pipe.set_progress_bar_config(disable=True)
        kwargs = {"prompt_embeds": cond["prompt_embeds"].to(self.device, self.dtype)} if "prompt_embeds" in cond \
            else {"prompt": list(prompts)}
        if callback is not None:
            def on_step_end(_pipe, i, _t, _kw):
                callback(i + 1, steps)
                return {}
            kwargs["callback_on_step_end"] = on_step_end
        latents = pipe(**kwargs, **self.pipeline_image_inputs(images), negative_prompt=negative_prompt or None,
                       num_frames=num_frames, height=height, width=width, num_inference_steps=steps,
                       guidance_scale=guidance, generator=self.generators(seeds), output_type="latent",
                       max_sequence_length=self.max_sequence_length, return_dict=False)[0]
        return latents.float()
