"""`sampled_bgr` gives the bytes of PySceneDetect's detector input (`to_bgr` at full size, then
`cv2.resize(INTER_LINEAR)`) on real footage, for every frame, where it applies; elsewhere it declines."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest

from realbase.video import sampled_bgr, to_bgr


def ffmpeg(*args: str) -> None:
    import imageio_ffmpeg

    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error", *args], check=True)


def frames(path, n: int = 40):
    import av

    with av.open(str(path)) as c:
        for i, frame in enumerate(c.decode(c.streams.video[0])):
            if i >= n:
                break
            yield frame


# name: (ffmpeg output options, PySceneDetect's size, whether the shortcut applies)
CASES = {
    "720p-bt709": (["-vf", "scale=1280:720", "-colorspace", "bt709", "-color_primaries", "bt709",
                    "-color_trc", "bt709"], (256, 144), True),
    "720p-untagged": (["-vf", "scale=1280:720"], (256, 144), True),
    "portrait": (["-vf", "scale=720:1280"], (144, 256), True),
    "factor-3": (["-vf", "scale=768:432"], (256, 144), True),
    "factor-2.5": (["-vf", "scale=640:360"], (256, 144), False),
    "uneven-rows": (["-vf", "scale=1280:544"], (256, 109), False),
    "full-range": (["-vf", "scale=1280:720,format=yuv420p", "-color_range", "pc"], (256, 144), False),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_sampled_bgr_is_the_detector_input_bit_for_bit(bikes_path, tmp_path, name):
    import cv2
    from av.video.reformatter import VideoReformatter

    from realaction.cuts.scenes import pyscenedetect_size

    options, size, applies = CASES[name]
    path = tmp_path / f"{name}.mp4"
    ffmpeg("-i", str(bikes_path), "-frames:v", "40", *options, "-c:v", "libx264", "-preset", "veryfast", str(path))
    own = VideoReformatter()
    for i, frame in enumerate(frames(path)):
        assert pyscenedetect_size(frame.width, frame.height) == size
        got = sampled_bgr(frame, *size, own if i % 2 else None)
        if not applies:
            assert got is None, name
            continue
        expected = cv2.resize(to_bgr(frame), size, interpolation=cv2.INTER_LINEAR)
        assert got is not None and got.shape == expected.shape and got.dtype == np.uint8
        assert np.array_equal(got, expected), f"{name}: frame {i} differs in {int((got != expected).sum())} values"
