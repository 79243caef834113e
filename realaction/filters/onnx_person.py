"""`--person-model PATH`: a local ONNX person detector (e.g. an ultralytics YOLO export) run with onnxruntime.

The model it expects (what `yolo export model=yolov8n.pt format=onnx` or YOLO11 writes):
- **input**: one float32 tensor [1, 3, H, W], RGB, values in [0, 1]. H and W are read from the model (640 when
  they are dynamic). Each frame is letterboxed into H x W: scaled to fit with its aspect ratio kept and padded
  with grey (114/255), as ultralytics does.
- **output** (the first one): [1, 4 + C, N], or the same transposed, [1, N, 4 + C]: N candidate boxes, each
  cx, cy, w, h in input pixels followed by C class scores in [0, 1] (no objectness column, no NMS needed).
  `person_class` (default 0, COCO's "person") picks the score; a single-class person detector has C = 1.

A frame has a person when any candidate's person score is at least `confidence`; the clip's score is the
fraction of its (up to `max_frames`, evenly spaced) frames that have one, as for the HOG/Haar detectors. The
frames are the clip's analysis frames (`--analysis-side`), upscaled to the model's input when smaller.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from realaction.filters.people import person_fraction
from realbase.errors import UserError, one_line

DYNAMIC_SIDE = 640
PAD = 114


class OnnxPersonDetector:
    def __init__(self, path: Path, confidence: float = 0.4, person_class: int = 0, max_frames: int = 3):
        import onnxruntime as ort

        path = Path(path)
        if not path.is_file():
            raise UserError(f"--person-model not found: {path}")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = opts.inter_op_num_threads = 1  # one core per curation worker
        opts.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own kinds for files that are not ONNX models
            raise UserError(f"--person-model {path} is not an ONNX model onnxruntime can run: {one_line(e)}") from None
        inputs = self.session.get_inputs()
        if len(inputs) != 1 or len(inputs[0].shape) != 4:
            raise UserError(f"--person-model {path} must take one [1, 3, H, W] image input "
                            f"(found {[(i.name, i.shape) for i in inputs]})")
        self.input = inputs[0].name
        _, channels, h, w = inputs[0].shape
        if isinstance(channels, int) and channels != 3:
            raise UserError(f"--person-model {path} takes {channels} channels; it must take 3 (RGB)")
        self.height = h if isinstance(h, int) and h > 0 else DYNAMIC_SIDE
        self.width = w if isinstance(w, int) and w > 0 else DYNAMIC_SIDE
        self.confidence, self.person_class = float(confidence), int(person_class)
        self.max_frames = max(1, int(max_frames))
        try:  # check the output layout now, so a wrong model fails before any video is decoded
            self._candidates(np.zeros((self.height, self.width, 3), np.uint8))
        except UserError:
            raise
        except Exception as e:
            raise UserError(f"--person-model {path} does not run on a [1, 3, {self.height}, {self.width}] "
                            f"image: {one_line(e)}") from None

    def _letterbox(self, frame: np.ndarray) -> np.ndarray:
        import cv2

        h, w = frame.shape[:2]
        r = min(self.height / h, self.width / w)
        nh, nw = max(1, round(h * r)), max(1, round(w * r))
        canvas = np.full((self.height, self.width, 3), PAD, np.uint8)
        top, left = (self.height - nh) // 2, (self.width - nw) // 2
        canvas[top:top + nh, left:left + nw] = cv2.resize(np.ascontiguousarray(frame), (nw, nh),
                                                           interpolation=cv2.INTER_LINEAR)
        return (canvas.astype(np.float32) / 255.0).transpose(2, 0, 1)[None]

    def _candidates(self, frame: np.ndarray) -> np.ndarray:
        """[N, 4 + C] rows for one uint8 RGB frame."""
        out = np.asarray(self.session.run(None, {self.input: self._letterbox(frame)})[0])
        if out.ndim != 3 or out.shape[0] != 1:
            raise UserError(f"--person-model output has shape {list(out.shape)}; expected [1, 4 + C, N] or [1, N, 4 + C]")
        out = out[0]
        d0, d1 = out.shape
        if d0 >= 5 and (d0 <= d1 or d1 < 5):
            out = out.T  # [4 + C, N] -> [N, 4 + C]
        elif d1 < 5:
            raise UserError(f"--person-model output has shape [1, {d0}, {d1}]: no room for 4 box values and a class score")
        if out.shape[1] <= 4 + self.person_class:
            raise UserError(f"--person-model has {out.shape[1] - 4} classes; person class {self.person_class} is not one")
        return out

    def has_person(self, frame: np.ndarray) -> bool:
        scores = self._candidates(frame)[:, 4 + self.person_class]
        return bool(len(scores)) and float(scores.max()) >= self.confidence

    def score(self, frames: np.ndarray) -> float:
        """Fraction of (up to `max_frames` evenly spaced) frames [T, H, W, 3] uint8 RGB with a person."""
        return person_fraction(self.has_person, frames, self.max_frames)
