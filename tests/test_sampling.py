"""`realdpo sample`: mp4 out, LoRA in (diffusers format), image-to-video, and clear errors."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from tiny_models import tiny_model

from cli.main import run
from realaction.errors import UserError
from realaction.video_io import encode_mp4, video_info
from realdpo.configs.sample import SampleConfig
from realdpo.generation.sampling import sample


def _cfg(model, out, **kw):
    return SampleConfig(prompt="a person waves both arms", model=model, steps=3, out=out, **kw)


@pytest.fixture(scope="module")
def lora_dir(tiny_cogvideox_t2v, tmp_path_factory):
    """A LoRA built with peft on the tiny transformer and saved with the pipeline's save_lora_weights, as the
    trainer saves OUT/lora."""
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    from realdpo.models import load_spec

    spec = load_spec(tiny_cogvideox_t2v)
    spec.transformer.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=spec.lora_target_modules,
                                            init_lora_weights=False))  # random B: the adapter changes outputs
    out = tmp_path_factory.mktemp("run") / "lora"
    type(spec.pipeline()).save_lora_weights(out, transformer_lora_layers=get_peft_model_state_dict(spec.transformer))
    return out


def test_sample_writes_requested_frames_and_lora_changes_it(tiny_cogvideox_t2v, lora_dir, tmp_path, monkeypatch):
    import realdpo.generation.sampling

    written = []  # the frames handed to the encoder (x264 itself may differ run to run in the last bits)

    def encode(frames, fps, path):
        written.append(frames)
        return encode_mp4(frames, fps=fps, path=path)

    monkeypatch.setattr(realdpo.generation.sampling, "encode_mp4", encode)
    base = sample(_cfg(tiny_cogvideox_t2v, tmp_path / "out" / "base.mp4", frames=17, fps=10.0))
    n, fps, w, h = video_info(base)
    assert (n, w, h) == (17, 64, 64) and fps == pytest.approx(10.0)
    sample(_cfg(tiny_cogvideox_t2v, tmp_path / "again.mp4", frames=17, fps=10.0))
    sample(_cfg(tiny_cogvideox_t2v, tmp_path / "lora.mp4", frames=17, fps=10.0, lora=lora_dir))
    base_frames, again, tuned = (w.astype(float) for w in written)
    assert base_frames.shape == (17, 64, 64, 3)
    assert np.abs(base_frames - again).max() == 0  # seeded
    assert np.abs(base_frames - tuned).mean() > 1.0  # the LoRA was loaded and changes the video


def test_sample_wan_and_i2v(tiny_wan_t2v, tiny_cogvideox_i2v, tmp_path):
    from PIL import Image

    assert video_info(sample(_cfg(tiny_wan_t2v, tmp_path / "wan.mp4")))[0] == 9
    Image.new("RGB", (80, 60), (200, 40, 40)).save(tmp_path / "first.png")
    out = sample(_cfg(tiny_cogvideox_i2v, tmp_path / "i2v.mp4", image=tmp_path / "first.png"))
    assert video_info(out)[0] == 9
    out = sample(_cfg(tiny_model("wan", "i2v"), tmp_path / "wan-i2v.mp4", image=tmp_path / "first.png", frames=5))
    assert video_info(out)[0] == 5


def test_sample_errors(tiny_cogvideox_t2v, tiny_cogvideox_i2v, tmp_path):
    (tmp_path / "img.png").write_bytes(b"")
    with pytest.raises(UserError, match="--image is for image-to-video"):
        sample(_cfg(tiny_cogvideox_t2v, tmp_path / "x.mp4", image=tmp_path / "img.png"))
    with pytest.raises(UserError, match="give its first frame with --image"):
        sample(_cfg(tiny_cogvideox_i2v, tmp_path / "x.mp4"))
    broken = tmp_path / "broken"
    shutil.copytree(tiny_cogvideox_t2v, broken)
    shutil.rmtree(broken / "text_encoder")
    with pytest.raises(UserError, match="missing components: text_encoder"):
        sample(_cfg(broken, tmp_path / "x.mp4"))
    (tmp_path / "emptylora").mkdir()
    with pytest.raises(UserError, match="no LoRA weights"):
        sample(_cfg(tiny_cogvideox_t2v, tmp_path / "x.mp4", lora=tmp_path / "emptylora"))


def test_sample_command(tiny_cogvideox_t2v, tmp_path, capsys):
    out = tmp_path / "cli.mp4"
    assert run(["sample", "--model", str(tiny_cogvideox_t2v), "--out", str(out)]) == 2
    assert "--prompt is required" in capsys.readouterr().err
    assert run(["sample", "--prompt", "a jump", "--model", str(tiny_cogvideox_t2v), "--steps", "2",
                "--out", str(out)]) == 0
    assert video_info(out)[0] == 9
