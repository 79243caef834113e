"""The model filters on real footage: text overlays, near-duplicates, an ONNX person detector built in the test."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from curate_helpers import shard_keys, shard_samples

from realaction.config import CurateConfig
from realaction.decoding.footage import make_synthetic
from realaction.pipeline import curate
from realbase.errors import UserError
from realbase.files import read_jsonl
from realbase.video import decode_frames, encode_mp4


def _with_text(frames: np.ndarray, text: str) -> np.ndarray:
    import cv2

    out = frames.copy()
    h, w = out.shape[1:3]
    for f in out:  # a subtitle line, white with a dark outline, as burnt-in subtitles are
        for colour, width in (((0, 0, 0), 4), ((255, 255, 255), 2)):
            cv2.putText(f, text, (int(w * 0.08), int(h * 0.9)), cv2.FONT_HERSHEY_SIMPLEX, h / 300, colour, width, cv2.LINE_AA)
    return out


# ---------------------------------------------------------------- text overlays


@pytest.mark.slow
def test_text_overlay_on_real_footage(tmp_path, carphone_path, bikes_path):
    src = tmp_path / "src"
    src.mkdir()
    car = decode_frames(carphone_path)
    encode_mp4(_with_text(car, "Subscribe for more!"), 30.0, path=src / "subtitled.mp4")
    shutil.copyfile(carphone_path, src / "clean.mp4")
    shutil.copyfile(bikes_path, src / "bikes.mp4")
    make_synthetic(src / "static.mp4", "static", seconds=2.5, seed=5)
    for name in ("subtitled", "clean", "bikes", "static"):
        (src / f"{name}.txt").write_text("a caption")
    out = tmp_path / "out"
    summary = curate(CurateConfig(src=src, out=out, max_side=160))
    rows = {}
    for r in read_jsonl(out / "manifest.jsonl"):
        rows.setdefault(r["source"], []).append(r)
    assert [r["reason"] for r in rows["subtitled.mp4"]] == ["text"]
    assert rows["subtitled.mp4"][0]["scores"]["text_area"] > 0.05
    assert [r["kept"] for r in rows["clean.mp4"]] == [True] and rows["clean.mp4"][0]["scores"]["text_area"] < 0.01
    bikes = [r for r in rows["bikes.mp4"] if r["reason"] != "too-short"]
    assert bikes and all(r["kept"] and r["scores"]["text_area"] < 0.01 for r in bikes)  # street footage, no overlay
    # only clips that passed the cheaper filters are looked at
    assert rows["static.mp4"][0]["reason"] == "static" and "text_area" not in rows["static.mp4"][0]["scores"]
    assert summary["rejected_by_reason"]["text"] == 1 and "text_area" in summary["score_histograms"]
    meta = [json.loads(s["json"]) for s in shard_samples(out).values()]
    assert meta and all("text_area" in m["scores"] for m in meta)


def test_text_filter_off_costs_nothing_and_records_nothing(tmp_path, carphone_path):
    src = tmp_path / "src"
    src.mkdir()
    encode_mp4(_with_text(decode_frames(carphone_path), "Subscribe for more!"), 30.0, path=src / "subtitled.mp4")
    (src / "subtitled.txt").write_text("a caption")
    curate(CurateConfig(src=src, out=tmp_path / "out", max_side=96, max_text_area=1.0))
    (row,) = read_jsonl(tmp_path / "out" / "manifest.jsonl")
    assert row["kept"] and "text_area" not in row["scores"]


# ---------------------------------------------------------------- near-duplicates


@pytest.fixture(scope="module")
def copies(tmp_path_factory, bikes_path) -> Path:
    """bikes.mp4, and a copy of it rescaled to half size and re-encoded at a lower quality."""
    import imageio_ffmpeg

    src = tmp_path_factory.mktemp("dups")
    shutil.copyfile(bikes_path, src / "bikes.mp4")
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error", "-i", str(bikes_path),
                    "-vf", "scale=320:-2", "-crf", "32", str(src / "bikes_reupload.mp4")], check=True)
    for name in ("bikes", "bikes_reupload"):
        (src / f"{name}.txt").write_text("cyclists in a street")
    return src


def _check_one_of_each_pair_kept(out: Path) -> list[dict]:
    rows = read_jsonl(out / "manifest.jsonl")
    by_key = {r["key"]: r for r in rows}
    dups = [r for r in rows if r["reason"] == "duplicate"]
    kept = [r for r in rows if r["kept"]]
    assert dups and len(kept) == len(dups)  # every kept clip of one copy duplicates one of the other
    for r in dups:
        other = by_key[r["duplicate_of"]]
        assert other["kept"] and other["source"] != r["source"] and other["scene"] == r["scene"]
        assert r["scores"]["duplicate_distance"] <= 12 and not r.get("caption")
    assert sorted(shard_keys(out)) == sorted(r["key"] for r in kept)
    return dups


def test_a_reencoded_copy_is_rejected_as_duplicate(copies, tmp_path):
    out = tmp_path / "out"
    summary = curate(CurateConfig(src=copies, out=out, max_side=160))
    dups = _check_one_of_each_pair_kept(out)
    assert {r["source"] for r in dups} == {"bikes_reupload.mp4"}  # one worker: sources in order, the first kept
    assert summary["rejected_by_reason"]["duplicate"] == len(dups) >= 3


def test_duplicates_of_clips_kept_by_an_earlier_run(copies, tmp_path):
    first = tmp_path / "first"
    first.mkdir()
    shutil.copyfile(copies / "bikes_reupload.mp4", first / "bikes_reupload.mp4")
    shutil.copyfile(copies / "bikes_reupload.txt", first / "bikes_reupload.txt")
    out = tmp_path / "out"
    curate(CurateConfig(src=first, out=out, max_side=160))
    kept_first = set(shard_keys(out))
    shutil.copyfile(copies / "bikes.mp4", first / "bikes.mp4")
    shutil.copyfile(copies / "bikes.txt", first / "bikes.txt")
    curate(CurateConfig(src=first, out=out, max_side=160))  # resumes: only bikes.mp4 is new
    dups = _check_one_of_each_pair_kept(out)
    assert {r["source"] for r in dups} == {"bikes.mp4"} and {r["duplicate_of"] for r in dups} <= kept_first


def test_duplicates_with_two_workers(copies, tmp_path):
    _check_one_of_each_pair_kept_run = curate(CurateConfig(src=copies, out=tmp_path / "out", max_side=160, workers=2))
    assert _check_one_of_each_pair_kept_run["rejected_by_reason"]["duplicate"] >= 3
    _check_one_of_each_pair_kept(tmp_path / "out")


def test_consecutive_clips_of_one_scene_are_not_duplicates(tmp_path, bikes_path):
    """A tripod shot: one real street frame that stays put, a patch swaying on it (someone talking at a podium,
    say); cut into 2 s clips."""
    from realaction.filters.dedup import DuplicateIndex

    src = tmp_path / "src"
    src.mkdir()
    street = decode_frames(bikes_path, [5])[0]
    patch = decode_frames(bikes_path, [100])[0][60:200, 250:390]  # 140x140: enough moving pixels not to be 'static'
    frames = np.repeat(street[None], 150, axis=0)
    for t, f in enumerate(frames):
        x = 250 + int(round(12 * np.sin(2 * np.pi * t / 25)))
        f[100:240, x:x + 140] = patch
    encode_mp4(frames, 25.0, path=src / "tripod.mp4")
    (src / "tripod.txt").write_text("a patch crossing a street")
    curate(CurateConfig(src=src, out=tmp_path / "out", max_seconds=2.0, min_seconds=1.0, cut_margin=0,
                        max_text_area=1.0))  # the pasted patch's sharp edges read as text
    rows = read_jsonl(tmp_path / "out" / "manifest.jsonl")
    assert [r["kept"] for r in rows] == [True, True, True]
    # the clips do look alike: only being one scene keeps the later ones
    index = DuplicateIndex(12)
    index.add(rows[0]["key"], "elsewhere.mp4", 0, rows[0]["phash"])
    for r in rows[1:]:
        assert index.match(r["source"], r["scene"], r["phash"])[0] == rows[0]["key"]


def test_duplicate_index_rule():
    """A clip matches a kept clip when each of its frames is near some frame of it; gaps never match."""
    from realaction.filters.dedup import DuplicateIndex

    def flip(h: int, n: int) -> str:
        return f"{h ^ ((1 << n) - 1):016x}"

    rng = np.random.default_rng(1)
    a = [int(x) for x in rng.integers(0, 2**63, 4)]
    index = DuplicateIndex(12)
    index.add("a", "a.mp4", 0, [f"{h:016x}" for h in a])
    index.add("short", "s.mp4", 0, [f"{int(rng.integers(0, 2**63)):016x}"] * 2)  # two frames: two empty slots
    shuffled = [flip(a[3], 5), flip(a[0], 12), flip(a[2], 0), flip(a[1], 7)]  # order and a frame or two off: same
    assert index.match("b.mp4", 0, shuffled) == ("a", 12)
    assert index.match("b.mp4", 0, shuffled[:2]) == ("a", 12)  # a short clip inside a kept one
    assert index.match("b.mp4", 0, shuffled[:3] + [flip(a[1], 13)]) == (None, 64)  # one frame too far: not a copy
    assert index.match("a.mp4", 0, shuffled) == (None, 64)  # its own scene
    assert index.match("a.mp4", 1, shuffled) == ("a", 12)  # another scene of the same source
    assert index.match("z.mp4", 0, [f"{0:016x}"] * 4) == (None, 64)  # the empty slots hold 0 but match nothing


def test_no_dedup_keeps_both_copies(copies, tmp_path):
    curate(CurateConfig(src=copies, out=tmp_path / "out", max_side=160, dedup=False))
    rows = read_jsonl(tmp_path / "out" / "manifest.jsonl")
    assert not [r for r in rows if r["reason"] == "duplicate"]
    assert {r["source"] for r in rows if r["kept"]} == {"bikes.mp4", "bikes_reupload.mp4"}


# ---------------------------------------------------------------- ONNX person detector


def write_redness_detector(path: Path, size: int = 64, transposed: bool = False) -> Path:
    """A tiny ONNX 'person detector' in the ultralytics layout: input [1, 3, size, size] RGB in 0..1, output
    [1, 5, 3] (cx, cy, w, h, person score for 3 candidates). Candidate 0's score is sigmoid(20 * (mean red - 0.5)),
    the others' 0, so a frame is a 'person' exactly when it is mostly red: a BGR input or one scaled 0..255 fails."""
    import onnx
    from onnx import TensorProto, helper

    def const(name, values, dims):
        return helper.make_node("Constant", [], [name], value=helper.make_tensor(name + "_v", TensorProto.FLOAT, dims, values))

    nodes = [
        helper.make_node("ReduceMean", ["images"], ["mean"], axes=[2, 3], keepdims=0),  # [1, 3]
        helper.make_node("Slice", ["mean", "zero", "one", "axis1"], ["red"]),  # [1, 1]
        const("half", [0.5], [1, 1]), const("gain", [20.0], [1, 1]),
        helper.make_node("Sub", ["red", "half"], ["centred"]),
        helper.make_node("Mul", ["centred", "gain"], ["logit"]),
        helper.make_node("Sigmoid", ["logit"], ["score"]),  # [1, 1]
        const("box", [size / 2, size / 2, size / 4, size / 2], [1, 4]),
        helper.make_node("Concat", ["box", "score"], ["cand0"], axis=1),  # [1, 5]
        const("others", [0.0] * 10, [2, 5]),
        helper.make_node("Concat", ["cand0", "others"], ["cands"], axis=0),  # [3, 5]
        helper.make_node("Unsqueeze", ["cands", "axis0"], ["rows"]),  # [1, 3, 5]
    ]
    if transposed:
        nodes.append(helper.make_node("Identity", ["rows"], ["output0"]))
        out_shape = [1, 3, 5]
    else:
        nodes.append(helper.make_node("Transpose", ["rows"], ["output0"], perm=[0, 2, 1]))  # [1, 5, 3]
        out_shape = [1, 5, 3]
    inits = [helper.make_tensor(n, TensorProto.INT64, [1], [v]) for n, v in
             (("zero", 0), ("one", 1), ("axis1", 1), ("axis0", 0))]
    graph = helper.make_graph(nodes, "redness", [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, size, size])],
                              [helper.make_tensor_value_info("output0", TensorProto.FLOAT, out_shape)], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _tinted(frames: np.ndarray, channel: int) -> np.ndarray:
    out = (frames.astype(np.float32) * 0.4).astype(np.uint8)
    out[..., channel] = np.clip(out[..., channel].astype(np.int16) + 150, 0, 255).astype(np.uint8)
    return out


@pytest.mark.parametrize("transposed", [False, True])
def test_onnx_person_detector_input_and_output_format(tmp_path, carphone_path, transposed):
    from realaction.filters.onnx_person import OnnxPersonDetector

    model = write_redness_detector(tmp_path / "m.onnx", transposed=transposed)
    frames = decode_frames(carphone_path, [0, 30, 60, 90])
    det = OnnxPersonDetector(model, confidence=0.5)
    assert (det.height, det.width) == (64, 64)
    assert det.score(_tinted(frames, 0)) == 1.0  # red: RGB order, values in 0..1
    assert det.score(_tinted(frames, 2)) == 0.0  # blue
    mixed = np.concatenate([_tinted(frames[:2], 0), _tinted(frames[2:], 2)])
    assert det.score(mixed) == pytest.approx(1 / 3)  # 3 evenly spaced frames (0, 2, 3): red, blue, blue


def test_curate_with_person_model(tmp_path, carphone_path):
    src = tmp_path / "src"
    src.mkdir()
    car = decode_frames(carphone_path)
    encode_mp4(_tinted(car, 0), 30.0, path=src / "red.mp4")
    encode_mp4(_tinted(car, 2), 30.0, path=src / "blue.mp4")
    for name in ("red", "blue"):
        (src / f"{name}.txt").write_text("a man on the phone")
    model = write_redness_detector(tmp_path / "m.onnx")
    opts = dict(max_side=96, person_model=model, person_confidence=0.5, max_text_area=1.0)  # the tint fools the text detector
    curate(CurateConfig(src=src, out=tmp_path / "out", min_person=0.5, **opts))
    rows = {r["source"]: r for r in read_jsonl(tmp_path / "out" / "manifest.jsonl")}
    assert rows["red.mp4"]["kept"] and rows["red.mp4"]["scores"]["person"] == 1.0
    assert rows["blue.mp4"]["reason"] == "no-person" and rows["blue.mp4"]["scores"]["person"] == 0.0
    # without --min-person the score is still recorded, and nothing is rejected for it
    curate(CurateConfig(src=src, out=tmp_path / "out2", **opts))
    rows = {r["source"]: r for r in read_jsonl(tmp_path / "out2" / "manifest.jsonl")}
    assert rows["blue.mp4"]["kept"] and rows["blue.mp4"]["scores"]["person"] == 0.0


def test_bad_person_models_fail_in_one_line(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    from realaction.filters.onnx_person import OnnxPersonDetector

    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a model")
    flat = tmp_path / "flat.onnx"  # output [1, 2]: no boxes, no scores
    graph = helper.make_graph([helper.make_node("ReduceMean", ["images"], ["out"], axes=[1, 2], keepdims=0)], "flat",
                              [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 8])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(flat))
    narrow = tmp_path / "narrow.onnx"  # output [1, 3, 4]: four values per candidate, no class score
    graph = helper.make_graph([helper.make_node("ReduceMean", ["images"], ["out"], axes=[3], keepdims=0)], "narrow",
                              [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 4, 4])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 3, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(narrow))
    for path, words in ((tmp_path / "missing.onnx", "not found"), (garbage, "not an ONNX model"),
                        (flat, r"expected \[1, 4 \+ C, N\]"), (narrow, "no room for 4 box values")):
        with pytest.raises(UserError, match=words) as err:
            OnnxPersonDetector(path)
        assert "\n" not in str(err.value)
