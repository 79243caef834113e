"""The near-duplicate filter on fixed-camera footage: pieces of one recording are not duplicates of each other,
re-encoded copies are (bench/dedup.py measures the rates on more footage)."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest

from realaction.config import CurateConfig
from realaction.decoding.footage import make_fixed_camera_pieces
from realaction.pipeline import curate
from realbase.files import read_jsonl


def _ffmpeg(src, dst, *args):
    import imageio_ffmpeg

    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error", "-i", str(src), *args, str(dst)],
                   check=True)


@pytest.mark.slow
def test_pieces_of_one_fixed_camera_are_kept_and_a_reencoded_copy_is_not(tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    pieces = make_fixed_camera_pieces(src, n=4, seconds=2.0, fps=12.0, size=(320, 136))
    _ffmpeg(pieces[1], src / "zcopy.mp4", "-vf", "eq=brightness=0.05:contrast=1.1", "-c:v", "libx264", "-crf", "35")
    for p in [*pieces, src / "zcopy.mp4"]:
        p.with_suffix(".txt").write_text("People walk past a fixed street camera.")
    curate(CurateConfig(src=src, out=out, max_side=128, max_text_area=1.0, person_detector="none", min_motion=0.5))
    rows = {r["source"]: r for r in read_jsonl(out / "manifest.jsonl")}
    assert all(rows[p.name]["kept"] for p in pieces), {k: r["reason"] for k, r in rows.items()}
    copy = rows["zcopy.mp4"]
    assert copy["reason"] == "duplicate" and copy["duplicate_of"] == rows[pieces[1].name]["key"]
    assert all(len(rows[p.name]["mhash"]) == 4 for p in pieces)


def test_motion_hashes_tell_pieces_of_one_camera_apart(tmp_path):
    from realaction.filters.dedup import DuplicateIndex, clip_hashes, motion_hashes
    from realbase.video import decode_frames

    pieces = make_fixed_camera_pieces(tmp_path, n=3, seconds=2.0, fps=12.0, size=(256, 108))
    rgb = [decode_frames(p)[::3] for p in pieces]  # the analysis grid: 4 frames a second
    index = DuplicateIndex(12)
    for k, frames in enumerate(rgb):
        assert index.match(f"p{k}", 0, clip_hashes(frames), motion_hashes(frames))[0] is None
        index.add(f"p{k}", f"p{k}", 0, clip_hashes(frames), motion_hashes(frames))
    # The same frames a little brighter and noisier, as a re-encode leaves them: a duplicate of its piece.
    noisy = np.clip(rgb[2].astype(np.int16) + 6 + np.random.default_rng(0).integers(-3, 4, rgb[2].shape), 0, 255)
    noisy = noisy.astype(np.uint8)
    assert index.match("copy", 0, clip_hashes(noisy), motion_hashes(noisy))[0] == "p2"
    # A still clip has no moving content: it is matched by its frames alone.
    still = np.repeat(rgb[0][:1], 8, axis=0)
    assert motion_hashes(still) == []
