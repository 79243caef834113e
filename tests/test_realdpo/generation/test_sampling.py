"""`realdpo sample`: mp4 out, LoRA in (diffusers format), image-to-video, and clear errors."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from tiny_models import tiny_model

from cli.main import run
from realbase.errors import UserError
from realbase.video import encode_mp4, video_info
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


@pytest.mark.slow
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


@pytest.mark.slow
def test_sample_prompts_writes_the_eval_folder(tiny_cogvideox_t2v, lora_dir, tmp_path, monkeypatch):
    import json

    import realdpo.generation.sampling

    written = {}

    def encode(frames, fps, path):
        written.setdefault(len(written), frames)
        return encode_mp4(frames, fps=fps, path=path)

    monkeypatch.setattr(realdpo.generation.sampling, "encode_mp4", encode)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a person waves both arms\na person jumps\n\n")
    out = tmp_path / "gen" / "base"
    cfg = SampleConfig(prompts=prompts, model=tiny_cogvideox_t2v, steps=3, out=out, seeds_per_prompt=2, seed=10,
                       batch_size=3)
    assert sample(cfg) == out
    assert sorted(p.name for p in out.glob("*.mp4")) == ["0.mp4", "1.mp4", "2.mp4", "3.mp4"]
    assert (out / "prompts.txt").read_text().splitlines() == ["a person waves both arms"] * 2 + ["a person jumps"] * 2
    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert [(r["video"], r["line"], r["seed"]) for r in rows] == [("0.mp4", 0, 10), ("1.mp4", 0, 11), ("2.mp4", 1, 10),
                                                                  ("3.mp4", 1, 11)]
    assert video_info(out / "3.mp4")[0] == 9
    batch = [written[i].astype(float) for i in range(4)]

    # video p*N+s is what one `--prompt P --seed S+s` gives: the same seeds for the base model and a LoRA
    written.clear()
    sample(_cfg(tiny_cogvideox_t2v, tmp_path / "one.mp4", seed=11))
    assert np.abs(written[0].astype(float) - batch[1]).mean() < 0.5
    assert np.abs(batch[0] - batch[1]).mean() > 1.0  # another seed, another video

    # a rerun skips what is there; a missing video is made again
    written.clear()
    (out / "2.mp4").unlink()
    sample(SampleConfig(**{**cfg.__dict__, "out": out}))
    assert len(written) == 1 and (out / "2.mp4").is_file()
    tuned = tmp_path / "gen" / "dpo"
    sample(SampleConfig(**{**cfg.__dict__, "out": tuned, "lora": lora_dir}))
    assert (tuned / "prompts.txt").read_text() == (out / "prompts.txt").read_text()

    from cli.main import run

    assert run(["sample", "--prompts", str(prompts), "--model", str(tiny_cogvideox_t2v), "--out", "x.mp4"]) == 2
    prompts.write_text("one\n\nthree\n")
    assert run(["sample", "--prompts", str(prompts), "--model", str(tiny_cogvideox_t2v), "--out", str(out)]) == 2


def test_sample_prompts_image_to_video(tiny_cogvideox_i2v, tmp_path):
    from PIL import Image

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red square\na blue square\n")
    frames = tmp_path / "frames"
    frames.mkdir()
    Image.new("RGB", (80, 60), (200, 40, 40)).save(frames / "0.png")
    with pytest.raises(UserError, match="no first frame for prompt line 1"):
        sample(SampleConfig(prompts=prompts, images=frames, model=tiny_cogvideox_i2v, steps=2, out=tmp_path / "o"))
    Image.new("RGB", (80, 60), (40, 40, 200)).save(frames / "1.jpg")
    out = sample(SampleConfig(prompts=prompts, images=frames, model=tiny_cogvideox_i2v, steps=2, out=tmp_path / "o",
                              batch_size=2))
    assert sorted(p.name for p in out.glob("*.mp4")) == ["0.mp4", "1.mp4"]
    with pytest.raises(UserError, match="image-to-video model"):
        sample(SampleConfig(prompts=prompts, model=tiny_cogvideox_i2v, steps=2, out=tmp_path / "p"))


@pytest.mark.slow
def test_sample_prompts_never_relabels_videos_made_with_other_settings(tiny_cogvideox_t2v, lora_dir, tmp_path,
                                                                        monkeypatch):
    import json

    import realdpo.generation.sampling

    made = []

    def encode(frames, fps, path):
        made.append(frames)
        return encode_mp4(frames, fps=fps, path=path)

    monkeypatch.setattr(realdpo.generation.sampling, "encode_mp4", encode)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a person waves both arms\na person jumps\n")
    out = tmp_path / "videos"
    base = SampleConfig(prompts=prompts, model=tiny_cogvideox_t2v, steps=2, out=out, batch_size=2)
    sample(base)
    record, first = (out / "samples.jsonl").read_text(), (out / "0.mp4").read_bytes()
    assert json.loads(record.splitlines()[0])["lora_sha256"] is None

    def refused(match, **changes):
        with pytest.raises(UserError, match=match):
            sample(SampleConfig(**{**base.__dict__, **changes}))
        assert (out / "samples.jsonl").read_text() == record and (out / "0.mp4").read_bytes() == first

    refused(r"2 video\(s\) made with other settings \(0.mp4 was made with another lora, lora_sha256\)", lora=lora_dir)
    refused("made with another steps", steps=3)
    refused("made with another seed", seed=5)
    other = tmp_path / "other.txt"
    other.write_text("a person waves both arms\n")
    refused("1.mp4 is not one of the 1 videos this run makes", prompts=other)
    other.write_text("a person sits\na person jumps\n")
    refused("0.mp4 was made with another prompt", prompts=other)

    # the same settings reuse every video; --overwrite makes them again with the LoRA and records it
    made.clear()
    sample(SampleConfig(**base.__dict__))
    assert made == []
    sample(SampleConfig(**{**base.__dict__, "lora": lora_dir, "overwrite": True}))
    assert len(made) == 2 and (out / "0.mp4").read_bytes() != first
    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert {r["lora_sha256"] for r in rows} == {realdpo.generation.sampling.content_hash(lora_dir)}

    # the same LoRA path with other weights is another LoRA
    changed = tmp_path / "lora2"
    shutil.copytree(lora_dir, changed)
    tuned = SampleConfig(**{**base.__dict__, "lora": changed})
    sample(SampleConfig(**{**tuned.__dict__, "overwrite": True}))
    weights = next(changed.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes())  # unchanged bytes: still the same LoRA
    made.clear()
    sample(tuned)
    assert made == []
    from safetensors.torch import load_file, save_file

    tensors = load_file(weights)
    save_file({k: v * 2 for k, v in tensors.items()}, weights)
    with pytest.raises(UserError, match="made with another lora_sha256"):
        sample(tuned)

    # videos with no record at all (a folder from elsewhere) are not taken as this run's
    (out / "samples.jsonl").unlink()
    with pytest.raises(UserError, match="samples.jsonl has no record of 0.mp4"):
        sample(tuned)


def test_a_lora_that_matches_no_layer_is_refused_and_a_partial_one_warned(tiny_cogvideox_t2v, lora_dir, tmp_path,
                                                                          capsys):
    """Through diffusers' own load_lora_weights: keys under another prefix load as nothing there (with only a
    logged warning), keys of some missing layers load the rest."""
    from safetensors.torch import load_file, save_file

    from realdpo.generation.sampling import load_lora
    from realdpo.models import load_spec

    weights = load_file(next(lora_dir.glob("*.safetensors")))
    (tmp_path / "other").mkdir()
    save_file({k.replace("transformer.", "unet.", 1): v for k, v in weights.items()},
              tmp_path / "other" / "pytorch_lora_weights.safetensors")
    blocks = sorted({k.split(".")[2] for k in weights})  # transformer.transformer_blocks.<i>.
    assert len(blocks) == 2
    (tmp_path / "part").mkdir()
    save_file({k.replace("transformer_blocks.1.", "missing_blocks.1.") if k.split(".")[2] == blocks[1] else k: v
               for k, v in weights.items()}, tmp_path / "part" / "pytorch_lora_weights.safetensors")

    assert run(["sample", "--prompt", "a wave", "--model", str(tiny_cogvideox_t2v), "--steps", "1",
                "--lora", str(tmp_path / "other"), "--out", str(tmp_path / "x.mp4")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "matches no layer of the cogvideox transformer" in err[0], err
    assert not (tmp_path / "x.mp4").exists()

    spec = load_spec(tiny_cogvideox_t2v)
    load_lora(spec, tmp_path / "part")
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"warning: LoRA {tmp_path / 'part'}: only 4 of its 8 layers match the cogvideox transformer; "
                   "the others are ignored"]
    spec = load_spec(tiny_cogvideox_t2v)
    load_lora(spec, lora_dir)
    assert capsys.readouterr().err == ""
