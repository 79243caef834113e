"""Fixtures shared by the model-family tests."""

from __future__ import annotations

import pytest
from tiny_models import synthetic_clip, write_tiny_shard


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> list[str]:
    """One shard of two synthetic clips (20 frames), for the 2-step `realdpo train` runs."""
    root = tmp_path_factory.mktemp("shards")
    clips = [(f"synth-{i:04d}", f"a yellow square moving right, take {i}", synthetic_clip(frames=20, seed=i))
             for i in range(2)]
    return [str(write_tiny_shard(root / "realaction-000000.tar", clips))]
