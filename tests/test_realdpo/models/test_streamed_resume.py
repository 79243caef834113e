"""The newest families through the streamed chunk path with checkpointing, resume and `sample --prompts`, on tiny
saved pipelines (CogVideoX and Wan run the same path in tests/test_realdpo/training/)."""

from __future__ import annotations

import pytest
import torch
from tiny_models import tiny_model

from cli.main import run

pytestmark = pytest.mark.usefixtures("one_torch_thread", "fresh_accelerate")


@pytest.mark.slow
@pytest.mark.parametrize("family", ["hunyuanvideo15", "ltx2"])
def test_streamed_chunks_with_checkpoints_resume_exactly_and_sample_prompts(family, shards, tmp_path):
    """The chunked path (one row at a time, gradient checkpointing) saving a checkpoint each step: a run resumed
    from step 1 ends with the LoRA of a run that went straight to step 2; `sample --prompts` writes one video per
    line."""
    from safetensors.torch import load_file

    model = tiny_model(family, "t2v")
    common = ["--shards", *shards, "--model", str(model), "--cache-dir", str(tmp_path / "cache"), "--negatives", "2",
              "--neg-steps", "2", "--lora-rank", "2", "--lr", "1e-2", "--checkpoint-every", "1", "--chunk-size", "1",
              "--gradient-checkpointing", "--batch-size", "2"]
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert run(["train", *common, "--out", str(straight), "--steps", "2"]) == 0
    assert run(["train", *common, "--out", str(split), "--steps", "1"]) == 0
    assert (split / "checkpoints" / "step-1").is_dir()
    assert run(["train", *common, "--out", str(split), "--steps", "2", "--resume"]) == 0
    a = load_file(str(straight / "lora" / "pytorch_lora_weights.safetensors"))
    b = load_file(str(split / "lora" / "pytorch_lora_weights.safetensors"))
    assert a.keys() == b.keys() and any(v.abs().sum() > 0 for k, v in a.items() if "lora_B" in k)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a yellow square\na red square\n")
    out = tmp_path / "gen"
    assert run(["sample", "--prompts", str(prompts), "--model", str(model), "--lora", str(straight / "lora"),
                "--steps", "2", "--out", str(out)]) == 0
    assert len(list(out.glob("*.mp4"))) == 2
