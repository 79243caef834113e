"""Caption sources for curated clips: sidecar files or a CSV, CLIP zero-shot over an action list, a local VLM.

`build_captioner(cfg)` returns an object whose `caption(req)` gives a `Caption` or None (no caption:
the pipeline rejects the clip with reason `no-caption`). Build it once per worker process: the
clip and vlm captioners load their model in the constructor.

Sidecar lookup for a video `DIR/name.mp4`, first match wins:
1. `--captions-csv`: rows `path,caption` (header required; `path` relative to `--src`, or absolute
   under it). An optional `clip` column gives a caption for one clip index; a row without it
   covers every clip of the video.                                        -> source "csv"
2. `DIR/name.mp4.txt`, then `DIR/name.txt`: UTF-8 text, the caption of every clip. -> "sidecar-txt"
3. `DIR/name.mp4.json`, then `DIR/name.json`, one of:                       -> "sidecar-json"
   - a string, or an object with "caption" or "text": the caption of every clip;
   - a list (index = clip index), or an object with "captions" holding a list or a
     {"<clip index>": caption} mapping: per-clip captions; a clip missing there falls back to
     the object's "caption"/"text" when present.
Blank captions count as missing. An unreadable sidecar (bad UTF-8 or JSON, nested too deeply) gives no caption
(one warning; the clip rows name the error), not a failed source. A JSON caption that is not text, and CSV rows
that are malformed, repeat an earlier row or name no video under --src, are reported with a warning each (at
most `WARN_LIMIT` of each kind, then a count).

Every caption, whatever its source, loses control characters, escape sequences and bidi controls
(`realbase.text.clean_caption`).

Size limits: every caption, whatever its source, is capped at `MAX_CAPTION_BYTES` (4 KiB) of UTF-8, cut at the
last word boundary before the cap, with a warning. A `.txt` sidecar is read only as far as the cap needs; a
`.json` sidecar larger than `MAX_JSON_SIDECAR_BYTES` (16 MiB) is not read at all (warning; the clips get no
caption from it).
"""

from __future__ import annotations

import csv
import json
import logging
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from realaction.options import CAPTIONERS, CaptionOptions
from realbase.errors import UserError, one_line
from realbase.fields import one_of
from realbase.folders import folder_code
from realbase.text import MAX_CAPTION_BYTES, CappedWarnings, cap_caption, clean_caption, printable

if TYPE_CHECKING:
    from realbase.clip_model import ClipModel

log = logging.getLogger(__name__)

MAX_JSON_SIDECAR_BYTES = 16 << 20
_TXT_READ_BYTES = 4 * MAX_CAPTION_BYTES  # whitespace is collapsed after reading, so read a little more than the cap
WARN_LIMIT = 10  # warnings of one kind (per CSV, per worker for sidecars) before they are only counted
_SIDECAR_WARNINGS = CappedWarnings(log, WARN_LIMIT)
_quiet_csv = False  # worker processes: the driver has already reported the CSV's problems


def quiet_csv_warnings() -> None:
    """Called in worker processes: the driver reads --captions-csv first and reports its rows' problems once."""
    global _quiet_csv
    _quiet_csv = True


def flush_warnings() -> None:
    """Say how many sidecar warnings were held back (called when a run ends)."""
    _SIDECAR_WARNINGS.flush()


@dataclass
class CaptionRequest:
    source: Path  # the source video
    src_root: Path  # --src
    clip_index: int
    start_s: float
    end_s: float
    frames: np.ndarray = field(repr=False)  # a few uint8 RGB frames [T, H, W, 3] of the clip


@dataclass
class Caption:
    text: str
    source: str  # "csv", "sidecar-txt", "sidecar-json", "clip" or "vlm"
    error: str | None = None  # why a sidecar that is there gave no caption (the text is then empty)


class Captioner(Protocol):
    def caption(self, req: CaptionRequest) -> Caption | None: ...


def _warn_cut(origin: object, n: int = 1) -> None:
    what = "a caption" if n == 1 else f"{n} captions"
    _SIDECAR_WARNINGS.warn("captions cut to the cap", f"{what} from {origin} longer than {MAX_CAPTION_BYTES} bytes: "
                           "cut to the cap")


class _CapCounter:
    """Caps captions read from one file and warns once for all that were cut, and once for all values that
    should have been a caption but are not text (a number, a list, an object)."""

    def __init__(self, origin: object):
        self.origin, self.cut, self.not_text = origin, 0, []

    def __call__(self, text: Any) -> Any:
        if text is not None and not isinstance(text, str):
            self.not_text.append(type(text).__name__)
        text = _clean(text)
        if text is None:
            return None
        capped = cap_caption(text)
        self.cut += capped is not text
        return capped

    def warn(self) -> None:
        if self.cut:
            _warn_cut(self.origin, self.cut)
        if self.not_text:
            kinds = ", ".join(sorted(set(self.not_text)))
            _SIDECAR_WARNINGS.warn("captions that are not text",
                                   f"caption sidecar {self.origin}: {len(self.not_text)} caption(s) not text ({kinds}): ignored")


class CappedCaptioner:
    """Any captioner, with its captions capped at MAX_CAPTION_BYTES (its other attributes are the inner one's)."""

    def __init__(self, inner: Captioner):
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def caption(self, req: CaptionRequest) -> Caption | None:
        got = self.inner.caption(req)
        if got is None:
            return None
        clean = clean_caption(got.text) or ""
        text = cap_caption(clean)
        if text is not clean:
            _warn_cut(f"{got.source} for {req.source} clip {req.clip_index}")
        return Caption(text, got.source, got.error)


def build_captioner(cfg: CaptionOptions, clip: ClipModel | None = None) -> Captioner:
    """The captioner `cfg` asks for, its captions capped at MAX_CAPTION_BYTES."""
    return CappedCaptioner(_build(cfg, clip))


def _build(cfg: CaptionOptions, clip: ClipModel | None) -> Captioner:
    one_of(cfg.captioner, CAPTIONERS, "--captioner")
    if cfg.captioner == "sidecar":
        return SidecarCaptioner(cfg.captions_csv, cfg.src)
    if cfg.captioner == "clip":
        if clip is None:
            if cfg.clip_checkpoint is None:
                raise UserError("--captioner clip needs --clip-checkpoint PATH (a local open_clip checkpoint)")
            from realbase.clip_model import ClipModel

            clip = ClipModel.load(cfg.clip_arch, cfg.clip_checkpoint)
        return ClipCaptioner(clip, load_actions(cfg.action_vocab))
    if cfg.vlm_model is None:  # vlm
        raise UserError("--captioner vlm needs --vlm-model DIR (a local vision-language model folder)")
    return VlmCaptioner(cfg.vlm_model, cfg.vlm_prompt, cfg.vlm_max_tokens)


# ---------------------------------------------------------------- sidecar


def _clean(text: Any) -> str | None:
    return clean_caption(text)


class SidecarCaptioner:
    def __init__(self, captions_csv: Path | None = None, src_root: Path | None = None):
        # (relative posix path) -> {clip index or None: caption}
        self._csv: dict[str, dict[int | None, str]] = (_read_csv(Path(captions_csv), src_root, warn=not _quiet_csv)
                                                       if captions_csv else {})
        self._cache: dict[Path, tuple[str, Any] | None] = {}  # the parsed sidecar of the last sources seen

    def caption(self, req: CaptionRequest) -> Caption | None:
        if self._csv:
            source = Path(req.source)
            rows = self._csv.get(_relative(source, req.src_root)) or self._csv.get(source.resolve().as_posix()) or {}
            text = rows.get(req.clip_index) or rows.get(None)
            if text:
                return Caption(text, "csv")
        sidecar = self._sidecar(Path(req.source))
        if sidecar is None:
            return None
        kind, value = sidecar
        if kind == "error":
            kind, why = value
            return Caption("", kind, why)
        text = value if kind == "sidecar-txt" else _json_caption(value, req.clip_index)
        return Caption(text, kind) if text else None

    def _sidecar(self, source: Path) -> tuple[str, Any] | None:
        if source not in self._cache:
            if len(self._cache) > 8:
                self._cache.clear()
            self._cache[source] = _read_sidecar(source)
        return self._cache[source]


def _relative(source: Path, root: Path) -> str:
    source, root = Path(source), Path(root)
    try:
        return source.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return source.as_posix()


def _read_csv(path: Path, src_root: Path | None = None, warn: bool = True) -> dict[str, dict[int | None, str]]:
    """Captions by relative path and clip index. Rows that are malformed (too few or too many fields, no path, no
    caption), repeat an earlier row's path and clip (the later row wins), or name no video under `src_root` are
    reported with one warning each (capped), not dropped in silence."""
    if not path.is_file():
        raise UserError(f"--captions-csv not found: {printable(path)}")
    out: dict[str, dict[int | None, str]] = {}
    cap = _CapCounter(path)
    warnings = CappedWarnings(log if warn else None, WARN_LIMIT)
    first_line: dict[tuple[str, int | None], int] = {}
    where = printable(path)
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            fields = set(reader.fieldnames or ())
            if not {"path", "caption"} <= fields:
                raise UserError(f"--captions-csv {where} needs a header with columns path,caption "
                                f"(found {printable(sorted(fields))})")
            for n, row in enumerate(reader, start=2):
                if None in row or any(v is None for v in row.values()):
                    warnings.warn("malformed caption rows", f"--captions-csv {where} line {n}: "
                                  f"{'more' if None in row else 'fewer'} fields than the header: row skipped")
                    continue
                text = cap(row.get("caption"))
                name = (row.get("path") or "").strip()
                if not name or not text:
                    warnings.warn("malformed caption rows", f"--captions-csv {where} line {n}: "
                                  f"{'no path' if not name else 'empty caption'}: row skipped")
                    continue
                clip = (row.get("clip") or "").strip()
                if clip and not clip.isdigit():
                    raise UserError(f"--captions-csv {where} line {n}: clip must be a clip index, got {printable(clip)!r}")
                key = Path(name)
                key = key.resolve().as_posix() if key.is_absolute() else key.as_posix()
                index = int(clip) if clip else None
                if (key, index) in first_line:
                    warnings.warn("duplicate caption rows", f"--captions-csv {where} line {n}: {name}"
                                  f"{f' clip {index}' if index is not None else ''} already has a caption on line "
                                  f"{first_line[key, index]}: this later one is used")
                first_line.setdefault((key, index), n)
                if src_root is not None and not _names_a_video(key, Path(src_root)):
                    warnings.warn("caption rows for unknown videos", f"--captions-csv {where} line {n}: {name} is not "
                                  "a file under --src: row unused")
                out.setdefault(key, {})[index] = text
    except (UnicodeDecodeError, csv.Error) as e:
        raise UserError(f"--captions-csv {where} is not a readable UTF-8 CSV: {printable(e)}") from None
    if warn:
        cap.warn()
    warnings.flush()
    return out


def _names_a_video(key: str, root: Path) -> bool:
    path = Path(key)
    if path.is_absolute():
        try:
            path.relative_to(root.resolve())
        except ValueError:
            return False
    else:
        path = root / path
    try:
        return path.is_file()
    except OSError:
        return False


def _read_sidecar(source: Path) -> tuple[str, Any] | None:
    error = None
    for kind, suffix in (("sidecar-txt", ".txt"), ("sidecar-json", ".json")):
        for candidate in (source.with_name(source.name + suffix), source.with_suffix(suffix)):
            if candidate == source or not candidate.is_file():
                continue
            try:
                value = _read_txt(candidate) if kind == "sidecar-txt" else _read_json(candidate)
            except RecursionError:  # json nests one Python call per level: a few KB of [[[[ exhaust the stack
                why = f"unreadable caption sidecar {candidate.name}: nested too deeply"
            except (OSError, ValueError) as e:  # ValueError: bad UTF-8 or JSON
                why = f"unreadable caption sidecar {candidate.name}: {one_line(e, 200)}"
            else:
                why = None
            if why is not None:
                _SIDECAR_WARNINGS.warn("unreadable caption sidecars", f"{why} ({candidate})")
                error = error or ("error", (kind, printable(why)))
                continue
            if value is None:
                continue
            return kind, value
    return error


def _read_txt(path: Path) -> str | None:
    """The caption in a .txt sidecar, reading no more of the file than the caption cap needs."""
    with open(path, "rb") as f:
        data = f.read(_TXT_READ_BYTES + 1)
    text = data[:_TXT_READ_BYTES].decode("utf-8-sig", "ignore" if len(data) > _TXT_READ_BYTES else "strict")
    cap = _CapCounter(path)
    text = cap(text)
    if len(data) > _TXT_READ_BYTES:
        cap.cut = 1
    cap.warn()
    return text


def _read_json(path: Path) -> Any:
    """A .json sidecar with every caption in it capped; None (with a warning) when the file is too big to read."""
    size = path.stat().st_size
    if size > MAX_JSON_SIDECAR_BYTES:
        _SIDECAR_WARNINGS.warn("oversized caption sidecars", f"caption sidecar {path} is {size >> 20} MiB, over the "
                               f"{MAX_JSON_SIDECAR_BYTES >> 20} MiB limit: not read")
        return None
    value = json.loads(path.read_text(encoding="utf-8-sig"))
    cap = _CapCounter(path)  # applied where _json_caption looks, so the parsed file held in the cache is small
    if isinstance(value, str):
        value = cap(value)
    elif isinstance(value, list):
        value = [cap(v) for v in value]
    elif isinstance(value, dict):
        per_clip = value.get("captions")
        if isinstance(per_clip, list):
            per_clip = [cap(v) for v in per_clip]
        elif isinstance(per_clip, dict):
            per_clip = {k: cap(v) for k, v in per_clip.items()}
        elif per_clip is not None:
            cap(per_clip)  # counted as not text
            per_clip = None
        value = {"captions": per_clip, "caption": cap(value.get("caption")), "text": cap(value.get("text"))}
    elif value is not None:
        value = cap(value)  # a number or a boolean: counted as not text
    cap.warn()
    return value


def _json_caption(value: Any, clip_index: int) -> str | None:
    if isinstance(value, str):
        return _clean(value)
    if isinstance(value, list):
        return _clean(value[clip_index]) if 0 <= clip_index < len(value) else None
    if not isinstance(value, dict):
        return None
    per_clip = value.get("captions")
    text = None
    if isinstance(per_clip, list) and 0 <= clip_index < len(per_clip):
        text = _clean(per_clip[clip_index])
    elif isinstance(per_clip, dict):
        text = _clean(per_clip.get(str(clip_index)))
    return text or _clean(value.get("caption")) or _clean(value.get("text"))


# ---------------------------------------------------------------- clip


def load_actions(path: Path | None = None) -> list[str]:
    """Actions, one per line ('#' comments and blank lines skipped); `None` reads the built-in list."""
    if path is None:
        text = resources.files("realaction").joinpath("assets/actions.txt").read_text(encoding="utf-8")
    else:
        try:
            text = Path(path).read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as e:
            raise UserError(f"--action-vocab {path} is not a readable UTF-8 text file: {e}") from None
    actions = list(dict.fromkeys(a for a in (" ".join(line.split()) for line in text.splitlines()) if a and not a.startswith("#")))
    if len(actions) < 2:
        raise UserError(f"--action-vocab {path} needs at least two actions, one per line")
    return actions


class ClipCaptioner:
    """Zero-shot CLIP over an action list: "A person is <action>." for the action whose prompt
    "a photo of a person <action>." has the highest softmax probability averaged over up to 8 evenly
    spaced frames."""

    template = "a photo of a person {}."

    def __init__(self, clip: ClipModel, actions: list[str]):
        self.clip, self.actions = clip, actions
        self._text = clip.text_embeddings([self.template.format(a) for a in actions])  # encoded once

    def caption(self, req: CaptionRequest) -> Caption | None:
        if req.frames is None or len(req.frames) == 0:
            return None
        from realbase.clip_model import MAX_SCORED_FRAMES
        from realbase.video import evenly_spaced

        # the same frames the CLIP person score embeds, so the model's one-clip cache serves both
        probs = self.clip.label_probs(evenly_spaced(np.asarray(req.frames), MAX_SCORED_FRAMES), self._text)
        action = self.actions[int(probs.argmax())]
        return Caption(f"A person is {action}.", "clip")


# ---------------------------------------------------------------- vlm


class VlmCaptioner:
    """A local vision-language model (AutoProcessor + AutoModelForImageTextToText, e.g. Qwen2-VL) describing a clip.

    Input: up to `max_frames` evenly spaced frames of the request, given as one video when the processor
    has a video processor (Qwen2-VL and its kind see motion natively), else as that many images
    (`inputs` forces "video" or "images"); one user turn "<video or images> <prompt>" through the
    processor's chat template. Greedy decoding of at most `max_tokens` new tokens; the whitespace-
    normalised answer is the caption (an empty one is no caption).
    """

    def __init__(
        self, folder: Path, prompt: str, max_tokens: int = 96, max_frames: int = 8,
        inputs: str = "auto", device: str | None = None,
    ):
        import torch

        if inputs not in ("auto", "video", "images"):
            raise ValueError(f"inputs must be auto, video or images, not {inputs!r}")

        folder = Path(folder)
        if not folder.is_dir():
            raise UserError(f"--vlm-model is not a folder: {folder}")
        if not (folder / "config.json").is_file():
            raise UserError(f"--vlm-model {folder} has no config.json: give a folder written by save_pretrained")
        _refuse_folder_code(folder)
        self.prompt, self.max_tokens, self.max_frames = prompt, int(max_tokens), max(1, int(max_frames))
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        try:
            from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()  # its bars would break the curation progress display
            local = {"local_files_only": True, "trust_remote_code": False}  # never the folder's own code
            config = AutoConfig.from_pretrained(folder, **local)
            self.processor = AutoProcessor.from_pretrained(folder, **local)
            self.model = AutoModelForImageTextToText.from_pretrained(
                folder, config=config, dtype="auto" if self.device != "cpu" else torch.float32, **local
            ).to(self.device).eval()
        except Exception as e:  # transformers raises many kinds for a folder that is not a VLM
            raise UserError(f"--vlm-model {folder} does not load as a vision-language model: {one_line(e)}") from None
        # Greedy: drop the checkpoint's sampling settings, which generate() would warn about.
        self.model.generation_config.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        if getattr(self.processor, "chat_template", None) is None:
            raise UserError(f"--vlm-model {folder} has no chat template: its processor cannot build a prompt")
        video_processor = getattr(self.processor, "video_processor", None)
        self.use_video = video_processor is not None if inputs == "auto" else inputs == "video"
        if self.use_video and video_processor is None:
            raise UserError(f"--vlm-model {folder} has no video processor; give the frames as images")
        if getattr(video_processor, "cap_pixels_per_frame", False) is None:
            # Qwen2-VL: cap pixels per frame as the reference implementation (qwen-vl-utils) does
            video_processor.cap_pixels_per_frame = True

    def caption(self, req: CaptionRequest) -> Caption | None:
        import torch

        frames = np.asarray(req.frames)
        if frames.ndim != 4 or len(frames) == 0:
            return None
        from realbase.video import evenly_spaced

        frames = np.ascontiguousarray(evenly_spaced(frames, self.max_frames))
        if self.use_video:
            visual, media = [{"type": "video"}], {"videos": [frames]}
        else:
            from PIL import Image

            visual, media = [{"type": "image"}] * len(frames), {"images": [Image.fromarray(f) for f in frames]}
        messages = [{"role": "user", "content": visual + [{"type": "text", "text": self.prompt}]}]
        text = self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        inputs = self.processor(text=[text], return_tensors="pt", **media).to(self.device)
        with torch.no_grad():
            out = self.model.generate(**inputs, max_new_tokens=self.max_tokens, do_sample=False)
        new = out[:, inputs["input_ids"].shape[1] :]
        answer = _clean(self.processor.batch_decode(new, skip_special_tokens=True)[0])
        return Caption(answer, "vlm") if answer else None



def _refuse_folder_code(folder: Path) -> None:
    """A folder that maps transformers' classes to its own code is refused: realaction never runs a model's code."""
    found = folder_code(folder)
    if found:
        name, target = found
        raise UserError(
            f"--vlm-model {folder} ships its own model code ({name} maps classes to {target}); realdpo never "
            "runs code from a model folder (trust_remote_code=False): use a model that transformers supports natively"
        )
