"""Motion-breaking edits of a real clip for `--negatives-from edited-real` (as DF-DPO builds losers): the loser keeps
the clip's look frame by frame and gets its motion wrong. No sampling; the edited frames go through the VAE.

Every edit is a re-indexing of the clip's own frames, drawn from a seeded RNG:
- reverse: played backwards;
- shuffle: 3-4 segments in a random non-identity order (jumps between them);
- stutter: every 2nd or 3rd frame dropped and the previous one held (a choppy, lower frame rate);
- freeze: a quarter to a half of the clip held on one frame, then a jump to where the motion would be;
- speed: twice as fast (then held on the last frame), or half as fast.
For image-to-video models the first frame stays in place, so the loser still starts from the conditioning frame.
"""

from __future__ import annotations

import random

import torch

from realdpo.configs.common import EDITS


def edit_indices(n: int, kind: str, rng: random.Random) -> list[int]:
    """Frame indices (into range(n)) of one `kind` of edit of an n-frame clip."""
    if n < 2:
        return list(range(n))
    if kind == "reverse":
        return list(range(n - 1, -1, -1))
    if kind == "shuffle":
        segments = min(n, rng.choice((3, 4)))
        bounds = [round(i * n / segments) for i in range(segments + 1)]
        order = list(range(segments))
        while order == sorted(order):
            rng.shuffle(order)
        return [i for s in order for i in range(bounds[s], bounds[s + 1])]
    if kind == "stutter":
        step = rng.choice((2, 3))
        return [i - i % step for i in range(n)]
    if kind == "freeze":
        length = max(1, round(n * rng.uniform(0.25, 0.5)))
        start = rng.randrange(0, n - length + 1)
        return [start if start <= i < start + length else i for i in range(n)]
    if kind == "speed":
        if rng.random() < 0.5:
            return [min(2 * i, n - 1) for i in range(n)]
        return [i // 2 for i in range(n)]
    raise ValueError(f"unknown edit {kind!r}; choose from {', '.join(EDITS)}")


def edit_video(video: torch.Tensor, seed: int, edits: tuple[str, ...] | list[str] = EDITS,
               keep_first: bool = False) -> tuple[torch.Tensor, str]:
    """One edited copy of `video` [F, ...] and the edit's name; the edit and its parameters come from `seed`."""
    rng = random.Random(seed)
    kind = rng.choice(list(edits))
    n = video.shape[0]
    if keep_first:
        idx = [0] + [1 + i for i in edit_indices(n - 1, kind, rng)]
    else:
        idx = edit_indices(n, kind, rng)
    return video[idx], kind
