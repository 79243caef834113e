"""Text overlay score: the fraction of the frame that detected text covers (subtitles, watermarks, captions).

Detection only, with the PP-OCRv4 text *detection* model that `rapidocr-onnxruntime` ships in its wheel (no
recognition, nothing downloaded), run by onnxruntime on one thread. Each frame is resized so that its longer side
is `side` pixels (multiples of 32, as the network needs), the network's text probability map is turned into text
boxes by rapidocr's own DB post-processing (the boxes grown back to the text's full extent), and the boxes are
filled into a mask at the frame's size: a frame's score is that mask's mean, the clip's the median over its
scored frames (text in most frames counts; one frame of text-like texture does not: carphone's striped car seat
reads as 12% text in one frame of three).

Measured on analysis frames (256 px) of real footage, clean and with one overlaid line of white text 3-8% of the
frame tall (bikes 640x272, carphone 176x144, the shared pizza clip; 40 frames): at `side` 480, 0.0 on every clean
frame; with the text 0.05-0.11 on every carphone and pizza frame and 15 of 21 bikes frames (white on a bright
street is missed in the rest). At 256 the network misses text ~8 px tall; at 640 it finds "text" covering ~10%
of some clean frames. On synthetic textured discs (6 videos, 126 frames) 2 frames score 0.04, the rest 0.
Cost: ~30-100 ms per frame on one core at 480.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from realbase.errors import UserError, one_line
from realbase.video import evenly_spaced

DETECTION_MODEL = "models/ch_PP-OCRv4_det_infer.onnx"  # inside the rapidocr_onnxruntime package
# rapidocr's own defaults for this model (its config.yaml), except box_thresh: 0.6 instead of 0.5 drops the
# weak boxes it finds on upscaled clean frames.
_POST = dict(thresh=0.3, box_thresh=0.6, max_candidates=1000, unclip_ratio=1.6, use_dilation=True, score_mode="fast")


class TextAreaDetector:
    def __init__(self, side: int = 480, max_frames: int = 3):
        try:
            import onnxruntime as ort
            import rapidocr_onnxruntime
            from rapidocr_onnxruntime.ch_ppocr_det.utils import DBPostProcess
        except ImportError as e:
            raise UserError(f"the text filter needs rapidocr-onnxruntime ({one_line(e)}); "
                            "install it or pass --max-text-area 1 to turn the filter off") from None
        model = Path(rapidocr_onnxruntime.__file__).parent / DETECTION_MODEL
        if not model.is_file():
            raise UserError(f"rapidocr-onnxruntime has no text detection model at {model}; reinstall it "
                            "or pass --max-text-area 1")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = opts.inter_op_num_threads = 1  # one core per curation worker
        opts.log_severity_level = 3
        self.session = ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name
        self.post = DBPostProcess(**_POST)
        self.side = int(side)
        self.max_frames = max(1, int(max_frames))

    def area(self, frame: np.ndarray) -> float:
        """Fraction of one uint8 RGB frame [H, W, 3] covered by detected text."""
        import cv2

        h, w = frame.shape[:2]
        scale = self.side / max(h, w)
        nh, nw = (max(32, int(round(n * scale / 32)) * 32) for n in (h, w))
        x = cv2.resize(np.ascontiguousarray(frame), (nw, nh), interpolation=cv2.INTER_LINEAR).astype(np.float32)
        x = (x * (2 / 255.0) - 1.0).transpose(2, 0, 1)[None]  # mean 0.5, std 0.5 per channel, as the model was trained
        prob = self.session.run(None, {self.input: x})[0]
        boxes, _ = self.post(prob, (h, w))
        if len(boxes) == 0:
            return 0.0
        mask = np.zeros((h, w), np.uint8)
        cv2.fillPoly(mask, [np.round(b).astype(np.int32) for b in boxes], 1)
        return float(mask.mean())

    def score(self, frames: np.ndarray) -> float:
        """The median text area of up to `max_frames` evenly spaced frames [T, H, W, 3] uint8 RGB."""
        frames = np.asarray(frames)
        if frames.ndim != 4 or len(frames) == 0:
            return 0.0
        return float(np.median([self.area(f) for f in evenly_spaced(frames, self.max_frames)]))
