"""Near-duplicate clips: perceptual hashes of a few frames per clip, matched against every clip already kept.

Hash: the classic DCT pHash of a frame's luma (32x32 area-averaged, the 8x8 lowest frequencies against their
median: 64 bits), on `HASH_FRAMES` evenly spaced analysis frames of each clip that passed every other filter.
Measured on bikes (50 frames): a copy rescaled to half size at crf 35 moves a frame's hash by at most 4 bits,
a brightness/contrast change by 4, a 6% crop by up to 12 (mean 6); frames of different scenes or videos
differ by 18 bits or more (median 30).

A clip duplicates a kept clip when **each** of its hashed frames is within `max_distance` bits of **some** hashed
frame of that clip (so a copy that starts a frame or two off still matches, and one similar frame is not enough),
**and** the same holds for its motion hashes, where both clips have them.

Motion hashes: a fixed camera's background is in every frame, so pieces of one recording (a street camera's
footage split into files) match each other frame for frame although different people move through them. The
motion hash is the pHash of the same frames' moving content: the absolute luma difference from the clip's
per-pixel median (its still background). A re-encoded copy moves the same way and matches; another piece of the
same recording does not (bench/dedup.py measures both). A clip with almost no moving content (mean difference
below `STILL_LEVEL`) has no motion hashes, and is matched by its frames alone.
Clips of the same scene of the same source never duplicate each other: a long scene split into consecutive clips
is not repeated footage.

Where it runs: in the process that commits results (the driver), when a source's result arrives and before its
clips are written, whatever the engine or number of workers: one index sees every kept clip of this run. The
index is persisted through the manifest: every kept clip's row carries its hashes (`phash`), and a resumed run
rebuilds the index from the rows of finished sources, which the commit protocol keeps consistent with the
shards. With parallel workers, which of two duplicates is kept depends on which source finishes first.
Cost per clip: one vectorised pass over the first frame's hash against every kept clip's, then a full check of
the few candidates it leaves (`bench/curate_engines.py` measures it against 100k kept clips).
"""

from __future__ import annotations

import numpy as np

from realbase.video import evenly_spaced

HASH_FRAMES = 4
NO_MATCH = 64  # the distance match() gives when no kept clip matches
BLUR = 4.0  # sigma of the blur on the moving content, in analysis pixels: a copy that starts a frame or two off still matches
STILL_LEVEL = 1.0  # mean luma difference (0-255) from the background under which a clip has no moving content


def phash(gray: np.ndarray) -> int:
    """64-bit DCT perceptual hash of one uint8 luma frame [H, W]."""
    import cv2

    small = cv2.resize(np.ascontiguousarray(gray), (32, 32), interpolation=cv2.INTER_AREA).astype(np.float32)
    low = cv2.dct(small)[:8, :8].ravel()
    bits = low > np.median(low)
    return int(np.packbits(bits).view(">u8")[0])


def clip_hashes(rgb: np.ndarray, n: int = HASH_FRAMES) -> list[str]:
    """Hex pHashes of up to `n` evenly spaced frames of a clip's uint8 RGB frames [T, H, W, 3]."""
    from realbase.video import to_gray

    frames = np.asarray(rgb)
    if frames.ndim != 4 or len(frames) == 0:
        return []
    return [f"{phash(g):016x}" for g in to_gray(evenly_spaced(frames, n))]


def motion_hashes(rgb: np.ndarray, n: int = HASH_FRAMES) -> list[str]:
    """Hex pHashes of the moving content of the frames `clip_hashes` hashes: each frame's absolute luma
    difference from the per-pixel median of all of the clip's frames [T, H, W, 3]. Empty for a clip with fewer
    than 3 frames or no moving content."""
    from realbase.video import to_gray

    frames = np.asarray(rgb)
    if frames.ndim != 4 or len(frames) < 3:
        return []
    gray = to_gray(frames).astype(np.int16)
    background = np.median(gray, axis=0).astype(np.int16)
    moving = np.abs(evenly_spaced(gray, n) - background)
    if float(moving.mean()) < STILL_LEVEL:
        return []
    import cv2

    scale = 255.0 / max(1.0, float(moving.max()))  # pHash compares coefficients with their median: scale-free
    return [f"{phash(cv2.GaussianBlur((m * scale).astype(np.uint8), (0, 0), BLUR)):016x}" for m in moving]


class DuplicateIndex:
    """The hashes of every kept clip; `match` finds the kept clip a new one duplicates."""

    def __init__(self, max_distance: int):
        self.max_distance = int(max_distance)
        self._hashes = np.zeros((0, HASH_FRAMES), np.uint64)
        self._valid = np.zeros((0, HASH_FRAMES), bool)  # clips with fewer than HASH_FRAMES frames leave gaps
        self._motion = np.zeros((0, HASH_FRAMES), np.uint64)
        self._mvalid = np.zeros((0, HASH_FRAMES), bool)  # all False: no motion hashes (still, or an older row)
        self._scene = np.zeros(0, np.int64)  # a code per (source, scene)
        self._n = 0
        self._keys: list[str] = []
        self._scene_codes: dict[tuple[str, int], int] = {}

    def __len__(self) -> int:
        return self._n

    @classmethod
    def from_manifest(cls, rows, max_distance: int) -> "DuplicateIndex":
        index = cls(max_distance)
        for r in rows:
            if r.get("kept") and r.get("phash"):
                index.add(r["key"], r.get("source", ""), r.get("scene", -1), r["phash"], r.get("mhash") or [])
        return index

    def add(self, key: str, source: str, scene: int, hashes: list[str], motion: list[str] = ()) -> None:
        if self._n == len(self._hashes):  # grow by doubling
            grow = max(64, self._n)
            self._hashes = np.concatenate([self._hashes, np.zeros((grow, HASH_FRAMES), np.uint64)])
            self._valid = np.concatenate([self._valid, np.zeros((grow, HASH_FRAMES), bool)])
            self._motion = np.concatenate([self._motion, np.zeros((grow, HASH_FRAMES), np.uint64)])
            self._mvalid = np.concatenate([self._mvalid, np.zeros((grow, HASH_FRAMES), bool)])
            self._scene = np.concatenate([self._scene, np.zeros(grow, np.int64)])
        values = [int(h, 16) for h in hashes[:HASH_FRAMES]]
        self._hashes[self._n, : len(values)] = values
        self._valid[self._n, : len(values)] = True
        moving = [int(h, 16) for h in list(motion)[:HASH_FRAMES]]
        self._motion[self._n, : len(moving)] = moving
        self._mvalid[self._n, : len(moving)] = True
        self._scene[self._n] = self._code(source, scene)
        self._keys.append(key)
        self._n += 1

    def _code(self, source: str, scene: int) -> int:
        return self._scene_codes.setdefault((source, scene), len(self._scene_codes))

    @staticmethod
    def _distance(query: np.ndarray, kept: np.ndarray, valid: np.ndarray) -> np.ndarray:
        """Per candidate: the worst of the query's hashes' distances to their nearest valid hash of it."""
        bits = np.bitwise_count(query[:, None, None] ^ kept[None, :, :])  # [query, candidates, frames]
        bits = np.where(valid[None], bits, NO_MATCH + 1)
        return bits.min(axis=2).max(axis=0)

    def match(self, source: str, scene: int, hashes: list[str], motion: list[str] = ()) -> tuple[str | None, int]:
        """(key of the kept clip this one duplicates and the distance: the worst of its frames' distances to their
        nearest frame of that clip, frame and motion hashes alike), or (None, NO_MATCH)."""
        if not hashes or self._n == 0:
            return None, NO_MATCH
        query = np.array([int(h, 16) for h in hashes[:HASH_FRAMES]], np.uint64)
        kept, valid = self._hashes[: self._n], self._valid[: self._n]
        # Every query frame must match, so the first one alone picks the candidates: one pass over the index.
        first = np.where(valid, np.bitwise_count(kept ^ query[0]), NO_MATCH + 1).min(axis=1)
        candidates = np.flatnonzero(first <= self.max_distance)
        candidates = candidates[self._scene[candidates] != self._code(source, scene)]
        if len(candidates) == 0:
            return None, NO_MATCH
        distance = self._distance(query, kept[candidates], valid[candidates])  # every query frame near some frame
        moving = np.array([int(h, 16) for h in list(motion)[:HASH_FRAMES]], np.uint64)
        if len(moving):  # where both clips have moving content, it must match too
            mvalid = self._mvalid[candidates]
            has = mvalid.any(axis=1)
            if has.any():
                mdist = self._distance(moving, self._motion[candidates], mvalid)
                distance = np.where(has, np.maximum(distance, mdist), distance)
        best = int(distance.argmin())
        d = int(distance[best])
        return (self._keys[candidates[best]], d) if d <= self.max_distance else (None, NO_MATCH)

    def judge(self, result) -> int:
        """Turn the kept clips of `result` (a SourceResult) that duplicate a kept clip into `duplicate`
        rejections (naming that clip, with the distance), and add the clips still kept; returns how many were
        rejected. A kept clip gets no distance: its nearest kept clip depends on which sources finished first."""
        rejected = 0
        for clip in result.clips:
            row = clip.row
            if clip.sample is None or not row.get("phash"):
                continue
            source, scene = row.get("source", ""), row.get("scene", -1)
            dup, distance = self.match(source, scene, row["phash"], row.get("mhash") or [])
            if dup is None:
                self.add(row["key"], source, scene, row["phash"], row.get("mhash") or [])
                continue
            row["scores"]["duplicate_distance"] = distance
            row.update(kept=False, reason="duplicate", reasons=["duplicate"], duplicate_of=dup)
            for k in ("caption", "caption_source"):
                row.pop(k, None)
            clip.sample = None
            rejected += 1
        if result.row.get("status") == "done" and "kept" in result.row:
            result.row["kept"] = result.kept
        return rejected
