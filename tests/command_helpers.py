"""The commands a family test runs on a tiny saved pipeline: a 2-step `realdpo train`, and a `realdpo sample`."""

from __future__ import annotations

from pathlib import Path

from cli.main import run


def train_two_steps(model: Path, shards: list[str], tmp_path: Path) -> Path:
    """A 2-step LoRA RealDPO run (one negative per clip); returns its `lora` folder."""
    out = tmp_path / "run"
    assert run(["train", "--shards", *shards, "--model", str(model), "--out", str(out), "--cache-dir",
                str(tmp_path / "cache"), "--steps", "2", "--negatives", "1", "--neg-steps", "2", "--lora-rank", "2",
                "--lr", "1e-2", "--checkpoint-every", "0"]) == 0
    lora = out / "lora"
    assert (lora / "pytorch_lora_weights.safetensors").is_file()
    return lora


def sample_video(model: Path, lora: Path, task: str, tmp_path: Path) -> Path:
    """`realdpo sample` of one prompt (image-to-video: from a flat yellow first frame) with the LoRA; the video."""
    video = tmp_path / "v.mp4"
    argv = ["sample", "--prompt", "a yellow square", "--model", str(model), "--lora", str(lora), "--steps", "2",
            "--out", str(video)]
    if task == "i2v":
        from PIL import Image

        image = tmp_path / "first.png"
        Image.new("RGB", (64, 64), (200, 180, 40)).save(image)
        argv += ["--image", str(image)]
    assert run(argv) == 0
    assert video.stat().st_size > 0
    return video
