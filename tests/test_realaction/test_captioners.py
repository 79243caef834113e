"""Captioners: sidecar files and CSV, CLIP zero-shot with a tiny local open_clip model, a tiny local VLM."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from realaction.captions.captioners import Caption, CaptionRequest, SidecarCaptioner, build_captioner, load_actions
from realaction.config import CurateConfig
from realaction.decoding.footage import make_synthetic
from realbase.clip_model import ClipModel
from realbase.errors import UserError

sys.path.insert(0, str(Path(__file__).parents[1]))  # the tiny-model helpers in tests/
from tiny_clip import TINY_CLIP_CONFIG, write_tiny_clip  # noqa: E402
from tiny_vlm import write_tiny_qwen2_vl  # noqa: E402


def request(source: Path, src: Path, clip_index: int = 0, frames: np.ndarray | None = None) -> CaptionRequest:
    if frames is None:
        frames = np.zeros((2, 32, 32, 3), np.uint8)
    return CaptionRequest(source=source, src_root=src, clip_index=clip_index, start_s=0.0, end_s=2.0, frames=frames)


@pytest.fixture
def src(tmp_path: Path) -> Path:
    root = tmp_path / "src"
    (root / "sub").mkdir(parents=True)
    for name in ("a.mp4", "b.mp4", "c.mov", "sub/d.mp4", "e.mp4", "f.mp4", "g.mp4"):
        (root / name).write_bytes(b"")
    return root


# ---------------------------------------------------------------- sidecar


def test_sidecar_txt_beside_video_both_namings(src):
    (src / "a.mp4.txt").write_text("  A man waves\n at the camera. \n", encoding="utf-8")
    (src / "c.txt").write_text("\ufeffA woman dances.", encoding="utf-8")
    cap = SidecarCaptioner()
    assert cap.caption(request(src / "a.mp4", src)) == Caption("A man waves at the camera.", "sidecar-txt")
    assert cap.caption(request(src / "c.mov", src, clip_index=3)) == Caption("A woman dances.", "sidecar-txt")
    assert cap.caption(request(src / "b.mp4", src)) is None


def test_sidecar_json_whole_video_and_per_clip(src):
    (src / "a.json").write_text(json.dumps({"caption": "A person cooks."}))
    (src / "b.mp4.json").write_text(json.dumps({"text": "fallback", "captions": ["first clip", "", "third clip"]}))
    (src / "c.json").write_text(json.dumps({"captions": {"1": "clip one"}}))
    (src / "e.json").write_text(json.dumps(["only clip zero"]))
    (src / "f.json").write_text("{not json")
    (src / "g.json").write_text(json.dumps("A plain string."))
    cap = SidecarCaptioner()
    assert cap.caption(request(src / "a.mp4", src, 5)) == Caption("A person cooks.", "sidecar-json")
    assert [cap.caption(request(src / "b.mp4", src, i)).text for i in range(4)] == ["first clip", "fallback", "third clip", "fallback"]
    assert cap.caption(request(src / "c.mov", src, 1)).text == "clip one"
    assert cap.caption(request(src / "c.mov", src, 0)) is None
    assert cap.caption(request(src / "e.mp4", src, 0)).text == "only clip zero"
    assert cap.caption(request(src / "e.mp4", src, 1)) is None
    unreadable = cap.caption(request(src / "f.mp4", src))  # no caption, no crash: the error for the clip's row
    assert unreadable.text == "" and unreadable.error.startswith("unreadable caption sidecar f.json: Expecting")
    assert cap.caption(request(src / "g.mp4", src)).text == "A plain string."


def test_txt_wins_over_json(src):
    (src / "a.txt").write_text("from txt")
    (src / "a.json").write_text(json.dumps({"caption": "from json"}))
    assert SidecarCaptioner().caption(request(src / "a.mp4", src)) == Caption("from txt", "sidecar-txt")


def test_csv_paths_relative_to_src_and_per_clip_rows(src, tmp_path):
    table = tmp_path / "captions.csv"
    table.write_text(
        'path,caption,clip\na.mp4,"A man, smiling.",\nsub/d.mp4,whole video,\nsub/d.mp4,clip two,2\n./b.mp4,b caption,\n'
        f'{src / "c.mov"},absolute path,\n',
        encoding="utf-8",
    )
    (src / "a.txt").write_text("ignored: the CSV comes first")
    cfg = CurateConfig(src=src, captioner="sidecar", captions_csv=table)
    cap = build_captioner(cfg)
    assert cap.caption(request(src / "a.mp4", src)) == Caption("A man, smiling.", "csv")
    assert cap.caption(request(src / "sub" / "d.mp4", src, 0)).text == "whole video"
    assert cap.caption(request(src / "sub" / "d.mp4", src, 2)).text == "clip two"
    assert cap.caption(request(src / "b.mp4", src)).text == "b caption"
    assert cap.caption(request(src / "c.mov", src)).text == "absolute path"
    assert cap.caption(request(src / "e.mp4", src)) is None


def test_csv_without_header_is_a_user_error(tmp_path):
    table = tmp_path / "bad.csv"
    table.write_text("a.mp4,caption\n")
    with pytest.raises(UserError, match="path,caption"):
        SidecarCaptioner(table)


def _words(n_bytes: int, word: str = "wave ") -> str:
    return (word * (n_bytes // len(word) + 1))[:n_bytes]


def test_huge_txt_sidecar_is_capped_without_reading_it_whole(src, caplog):
    import tracemalloc

    from realaction.captions.captioners import MAX_CAPTION_BYTES

    (src / "a.txt").write_text(_words(40 << 20), encoding="utf-8")  # 40 MiB of caption
    tracemalloc.start()
    got = SidecarCaptioner().caption(request(src / "a.mp4", src))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert got.source == "sidecar-txt" and MAX_CAPTION_BYTES - 5 <= len(got.text.encode()) <= MAX_CAPTION_BYTES
    assert got.text.startswith("wave wave") and got.text.endswith("wave")  # cut between words
    assert peak < 1 << 20, f"read {peak >> 20} MiB for a caption of 4 KiB"
    assert any("cut to the cap" in r.getMessage() for r in caplog.records)


def test_long_json_and_csv_captions_are_capped_and_a_huge_json_sidecar_is_not_read(src, tmp_path, caplog):
    from realaction.captions.captioners import MAX_CAPTION_BYTES, MAX_JSON_SIDECAR_BYTES

    multibyte = _words(3 * MAX_CAPTION_BYTES, "é ü ")  # 2-byte characters: the cut must not split one
    (src / "b.json").write_text(json.dumps({"captions": [multibyte, "short"]}), encoding="utf-8")
    (src / "e.json").write_text(json.dumps({"caption": _words(MAX_JSON_SIDECAR_BYTES + 10)}))
    cap = SidecarCaptioner()
    first = cap.caption(request(src / "b.mp4", src, 0)).text
    assert len(first.encode()) <= MAX_CAPTION_BYTES and multibyte.startswith(first) and not first.endswith(" ")
    assert cap.caption(request(src / "b.mp4", src, 1)).text == "short"
    assert cap.caption(request(src / "e.mp4", src)) is None
    assert any("not read" in r.getMessage() for r in caplog.records)
    table = tmp_path / "captions.csv"
    table.write_text(f"path,caption\na.mp4,{_words(10_000)}\n", encoding="utf-8")
    got = build_captioner(CurateConfig(src=src, captions_csv=table)).caption(request(src / "a.mp4", src))
    assert got.source == "csv" and len(got.text.encode()) <= MAX_CAPTION_BYTES


def test_every_captioner_is_capped(src):
    from realaction.captions.captioners import MAX_CAPTION_BYTES, CappedCaptioner

    class Chatty:
        def caption(self, req):
            return Caption(_words(100_000), "vlm")

    got = CappedCaptioner(Chatty()).caption(request(src / "a.mp4", src))
    assert got.source == "vlm" and len(got.text.encode()) <= MAX_CAPTION_BYTES


def test_real_clip_with_its_authors_caption(shared_data, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("4873105.mp4", "4873105.txt"):
        shutil.copy(shared_data / "real" / name, src / name)
    cap = build_captioner(CurateConfig(src=src))
    got = cap.caption(request(src / "4873105.mp4", src))
    assert got.source == "sidecar-txt" and got.text.startswith("The video features a person") and "pizza" in got.text


def test_builtin_action_vocabulary():
    actions = load_actions()
    assert 90 <= len(actions) <= 120 and "eating pizza" in actions and not any(a.startswith("#") for a in actions)


# ---------------------------------------------------------------- CLIP (tiny random open_clip model, loaded from disk)


def real_frames(path: Path, n: int = 4, side: int = 256) -> np.ndarray:
    from realbase.video import decode_frames, video_info

    total, _, w, h = video_info(path)
    s = side / max(w, h)
    return decode_frames(path, np.linspace(0, total - 1, n).round().astype(int), size=(round(w * s) // 2 * 2, round(h * s) // 2 * 2))


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory) -> tuple[Path, Path]:
    return write_tiny_clip(tmp_path_factory.mktemp("clip"))


@pytest.fixture(scope="module")
def clip_model(tiny_clip) -> ClipModel:
    ckpt, arch = tiny_clip
    return ClipModel.load(str(arch), ckpt)


@pytest.fixture(scope="module")
def carphone_frames(carphone_path) -> np.ndarray:
    return real_frames(carphone_path)


def test_clip_loads_the_saved_weights(tiny_clip, clip_model, tmp_path):
    from safetensors.torch import load_file

    ckpt, arch = tiny_clip
    saved = load_file(str(ckpt))
    loaded = clip_model.model.state_dict()
    assert saved.keys() == loaded.keys() and all(torch_equal(saved[k], loaded[k]) for k in saved)
    # the same weights through torch.save + weights-only loading, and a differently seeded model differs
    ckpt_pt, arch_pt = write_tiny_clip(tmp_path, name="tiny-clip-pt", fmt="pt")
    other_ckpt, other_arch = write_tiny_clip(tmp_path, name="tiny-clip-other", seed=1)
    texts = ["a person eating", "a dog"]
    assert torch_equal(ClipModel.load(str(arch_pt), ckpt_pt).text_embeddings(texts), clip_model.text_embeddings(texts))
    assert not torch_equal(ClipModel.load(str(other_arch), other_ckpt).text_embeddings(texts), clip_model.text_embeddings(texts))


def torch_equal(a, b) -> bool:
    return a.shape == b.shape and bool(torch.allclose(a, b, atol=1e-6))


def test_clip_embeddings_scores_and_zero_shot(clip_model, carphone_frames):
    img = clip_model.image_embeddings(carphone_frames)
    txt = clip_model.text_embeddings(["a man talking on a phone", "a car", "a tree"])
    assert img.shape == (len(carphone_frames), TINY_CLIP_CONFIG["embed_dim"]) and txt.shape == (3, TINY_CLIP_CONFIG["embed_dim"])
    assert np.allclose(img.norm(dim=-1).numpy(), 1, atol=1e-5) and np.allclose(txt.norm(dim=-1).numpy(), 1, atol=1e-5)
    assert torch_equal(clip_model.image_embeddings(carphone_frames[1:3]), img[1:3])  # not the cached result
    score = clip_model.person_score(carphone_frames)
    assert 0.0 <= score <= 1.0 and score == clip_model.person_score(carphone_frames)
    label, prob = clip_model.zero_shot(carphone_frames, ["talking", "swimming", "cooking"], template="a photo of a person {}.")
    assert label in ("talking", "swimming", "cooking") and 0 < prob <= 1
    assert clip_model.zero_shot(carphone_frames[:1], ["only"]) == ("only", pytest.approx(1.0))


def test_clip_folder_checkpoint_with_open_clip_config(tiny_clip, tmp_path, carphone_frames, clip_model):
    ckpt, _ = tiny_clip
    folder = tmp_path / "hub-style"
    folder.mkdir()
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_CLIP_CONFIG, "preprocess_cfg": {}}))
    shutil.copy(ckpt, folder / "open_clip_model.safetensors")
    model = ClipModel.load("ignored", folder)
    assert torch_equal(model.image_embeddings(carphone_frames), clip_model.image_embeddings(carphone_frames))


class _Payload:
    """Unpickling this runs `_touch(marker)`: what a malicious checkpoint would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (_touch, (str(self.marker),))


def _touch(path: str) -> None:
    Path(path).touch()


def test_clip_checkpoint_errors_are_one_line_user_errors(tiny_clip, tmp_path):
    ckpt, arch = tiny_clip
    evil, marker = tmp_path / "evil.pt", tmp_path / "executed"
    torch.save({"state_dict": {}, "payload": _Payload(marker)}, evil)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a checkpoint")
    wider = tmp_path / "wider.json"
    wider.write_text(json.dumps({**TINY_CLIP_CONFIG, "embed_dim": 64}))
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{}")
    cases = [
        (str(arch), tmp_path / "missing.pt", "not found"),
        (str(arch), evil, "not a readable weights file"),
        (str(arch), garbage, "not a readable weights file"),
        (str(wider), ckpt, "does not fit"),
        (str(bad_json), ckpt, "not an open_clip model config"),
        ("ViT-Nonexistent", ckpt, "unknown --clip-arch"),
    ]
    for arch_, ckpt_, message in cases:
        with pytest.raises(UserError, match=message) as err:
            ClipModel.load(arch_, ckpt_)
        assert "\n" not in str(err.value)
    assert not marker.exists()


def test_clip_captioner_names_an_action_from_the_vocabulary(tiny_clip, clip_model, carphone_path, carphone_frames, tmp_path):
    ckpt, arch = tiny_clip
    video, frames = carphone_path, carphone_frames
    cfg = CurateConfig(src=tmp_path, captioner="clip", clip_checkpoint=ckpt, clip_arch=str(arch))
    got = build_captioner(cfg).caption(request(video, video.parent, frames=frames))
    assert got.source == "clip" and got.text.startswith("A person is ") and got.text.endswith(".")
    assert got.text[len("A person is ") : -1] in load_actions()
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("# mine\neating pizza\n\nreading a book\n")
    cfg = CurateConfig(src=tmp_path, captioner="clip", clip_checkpoint=ckpt, clip_arch=str(arch), action_vocab=vocab)
    got = build_captioner(cfg, clip=clip_model).caption(request(video, video.parent, frames=frames))
    assert got.text in ("A person is eating pizza.", "A person is reading a book.")


# ---------------------------------------------------------------- VLM (tiny random Qwen2-VL saved with save_pretrained)


@pytest.fixture(scope="module")
def tiny_vlm(tmp_path_factory) -> Path:
    return write_tiny_qwen2_vl(tmp_path_factory.mktemp("vlm") / "tiny-qwen2-vl")


def test_vlm_captioner_describes_real_frames(tiny_vlm, carphone_path, carphone_frames, tmp_path):
    cfg = CurateConfig(src=tmp_path, captioner="vlm", vlm_model=tiny_vlm, vlm_max_tokens=12)
    captioner = build_captioner(cfg)
    req = request(carphone_path, carphone_path.parent, frames=carphone_frames)
    got = captioner.caption(req)
    assert got.source == "vlm" and isinstance(got.text, str) and got.text.strip()
    assert captioner.caption(req) == got  # greedy decoding
    assert captioner.use_video  # Qwen2-VL's processor takes the frames as one video


def test_vlm_captioner_frames_as_images(tiny_vlm, carphone_path, carphone_frames):
    from realaction.captions.captioners import VlmCaptioner

    captioner = VlmCaptioner(tiny_vlm, "What is the person doing?", max_tokens=6, inputs="images")
    got = captioner.caption(request(carphone_path, carphone_path.parent, frames=carphone_frames[:3]))
    assert got.source == "vlm" and got.text.strip()
    assert captioner.caption(request(carphone_path, carphone_path.parent, frames=carphone_frames[:0])) is None


def test_vlm_folder_errors_are_one_line_user_errors(tmp_path, tiny_clip):
    from realaction.captions.captioners import VlmCaptioner

    not_a_vlm = tmp_path / "not-a-vlm"
    not_a_vlm.mkdir()
    (not_a_vlm / "config.json").write_text(json.dumps({"model_type": "bert"}))
    for folder, message in [
        (tmp_path / "missing", "not a folder"),
        (tiny_clip[0].parent, "no config.json"),
        (not_a_vlm, "does not load as a vision-language model"),
    ]:
        with pytest.raises(UserError, match=message) as err:
            VlmCaptioner(folder, "Describe.")
        assert "\n" not in str(err.value)


def _with_custom_code(tiny_vlm: Path, folder: Path, model_type: str | None) -> Path:
    """A copy of the tiny VLM whose config maps transformers' auto classes to a Python file in the folder."""
    shutil.copytree(tiny_vlm, folder)
    marker = folder / "code-was-run"
    (folder / "evil.py").write_text(f"from pathlib import Path\nPath({str(marker)!r}).touch()\n")
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModelForImageTextToText": "evil.EvilModel"}
    if model_type:
        config["model_type"] = model_type
    (folder / "config.json").write_text(json.dumps(config))
    return marker


@pytest.mark.parametrize("model_type", [None, "evil_vl"])  # a type transformers knows, and one it does not
def test_vlm_folder_with_its_own_code_is_refused(tiny_vlm, tmp_path, model_type, capsys):
    from cli.main import run

    folder = tmp_path / "custom"
    marker = _with_custom_code(tiny_vlm, folder, model_type)
    (tmp_path / "src").mkdir()
    make_synthetic(tmp_path / "src" / "a.mp4", "moving", seconds=2.0)
    code = run(["curate", "--src", str(tmp_path / "src"), "--out", str(tmp_path / "out"), "--captioner", "vlm",
                "--vlm-model", str(folder)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "ships its own model code" in err, err
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_vlm_loaders_are_told_not_to_trust_folder_code(tiny_vlm, monkeypatch):
    """Every transformers loader that reads the folder gets trust_remote_code=False explicitly."""
    import transformers

    from realaction.captions.captioners import VlmCaptioner

    calls = []
    for cls in (transformers.AutoConfig, transformers.AutoProcessor, transformers.AutoModelForImageTextToText,
                transformers.AutoTokenizer):
        original = cls.from_pretrained.__func__

        def spy(klass, *args, _original=original, _name=cls.__name__, **kwargs):
            calls.append((_name, kwargs.get("trust_remote_code", "absent")))
            return _original(klass, *args, **kwargs)

        monkeypatch.setattr(cls, "from_pretrained", classmethod(spy))
    VlmCaptioner(tiny_vlm, "Describe.", max_tokens=2)
    names = {name for name, _ in calls}
    assert {"AutoConfig", "AutoProcessor", "AutoModelForImageTextToText"} <= names
    assert all(trust is False for _, trust in calls), calls
