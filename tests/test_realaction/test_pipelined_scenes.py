"""The cut detector scored in a worker thread beside decoding (realaction.cuts.pipelined_scenes) finds PySceneDetect's
own cuts, frame for frame, and reports each within its declared latency."""

from __future__ import annotations

import av
import pytest
from curate_helpers import pyscenedetect_cuts

from realaction.cuts.pipelined_scenes import PipelinedCutDetector
from realaction.cuts.scenes import CutDetector, detect_cuts
from realbase.video import StreamClock, decode_packets


def run(path, make) -> tuple[object, list[tuple[int, list[int]]]]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        clock = StreamClock.of(stream, float(stream.guessed_rate or 25))
        cd = make(clock)
        reported = []
        for i, frame in enumerate(f for f in decode_packets(container, stream)):
            reported.append((i, cd.feed(i, frame, frame.pts)))
        reported.append((i + 1, cd.finish()))
    return cd, reported


@pytest.mark.parametrize("detector", ["adaptive", "content", "hash"])
@pytest.mark.parametrize("depth", [1, 4, 16])
def test_pipelined_cuts_are_pyscenedetects_own(bikes_path, detector, depth):
    inline, _ = run(bikes_path, lambda clock: CutDetector(detector, None, clock))
    piped, reported = run(bikes_path, lambda clock: PipelinedCutDetector(
        CutDetector(detector, None, clock, own_reformatter=True), depth))
    assert piped.cuts == inline.cuts and piped.cut_numbers == inline.cut_numbers
    assert sorted(piped.cut_numbers) == pyscenedetect_cuts(bikes_path, detector)
    if detector == "adaptive":
        assert len(piped.cuts) == 5  # bikes' five hand-marked cuts: a comparison that can fail
    assert piped.latency == inline.latency + depth
    last = len(reported) - 1
    for i, new in reported[:last]:  # every cut is reported no later than `latency` frames after it
        assert all(c <= i for c in new)
    for c in piped.cuts:
        when = next(i for i, new in reported if c in new)
        assert when == last or when - c <= piped.latency


def test_worker_errors_reach_the_caller(bikes_path):
    class Broken(CutDetector):
        def _score(self, tc, frame):
            raise ValueError("scoring failed")

    with pytest.raises(ValueError, match="scoring failed"):
        run(bikes_path, lambda clock: PipelinedCutDetector(Broken("adaptive", None, clock), 2))


def test_detect_cuts_with_the_thread_matches(bikes_path, monkeypatch):
    monkeypatch.setenv("REALACTION_DETECTOR_THREAD", "1")
    assert detect_cuts(bikes_path, "adaptive", numbers=True) == pyscenedetect_cuts(bikes_path, "adaptive")
