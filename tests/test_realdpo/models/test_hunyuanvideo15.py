"""HunyuanVideo 1.5 through the commands, on tiny saved pipelines (`save_tiny_pipeline("hunyuanvideo15", task)`):
`realdpo train` for two steps through --model, its LoRA loaded by the diffusers pipeline with `load_lora_weights`,
`realdpo sample` writing a video, and the family's defaults read from the folder."""

from __future__ import annotations

import pytest
import torch
from command_helpers import sample_video, train_two_steps
from tiny_models import tiny_model

from cli.main import run
from realbase.errors import UserError
from realdpo.models import HunyuanVideo15Spec, load_spec

pytestmark = pytest.mark.usefixtures("one_torch_thread", "fresh_accelerate")


@pytest.mark.parametrize("task", ["t2v", "i2v"])
def test_the_spec_owns_the_family_defaults(task):
    spec = load_spec(tiny_model("hunyuanvideo15", task))
    assert isinstance(spec, HunyuanVideo15Spec) and spec.task == task
    run_defaults = spec.run_defaults()
    assert run_defaults.fps == 24.0 and run_defaults.negative_prompt == "" and run_defaults.beta == 500.0
    assert run_defaults.guidance == spec.pipeline().guider.guidance_scale == 6.0  # the folder's guider
    assert spec.shift == 5.0 and spec.vae.dtype == torch.float32
    with pytest.raises(UserError, match="4k\\+1"):
        spec.check_size(10, 64, 64)
    with pytest.raises(UserError, match="divisible by 16"):
        spec.check_size(9, 40, 64)
    cond = spec.encode_prompts(['a sign that reads "OPEN"', "a cat"])
    assert cond["prompt_embeds"].shape[:2] == (2, 1000) and cond["prompt_embeds_2"].shape[:2] == (2, 256)
    assert cond["prompt_embeds_mask_2"][0].sum() > 0 and cond["prompt_embeds_mask_2"][1].sum() == 0  # quoted text


def test_a_folder_without_its_guider_is_refused(tmp_path):
    import shutil

    folder = tmp_path / "m"
    shutil.copytree(tiny_model("hunyuanvideo15", "t2v"), folder)
    shutil.rmtree(folder / "guider")
    assert run(["sample", "--prompt", "a", "--model", str(folder), "--out", str(tmp_path / "v.mp4")]) == 2
    with pytest.raises(UserError, match="missing components: guider"):
        load_spec(folder)
    with pytest.raises(UserError, match="--task i2v: .* is a t2v model"):  # not its i2v components' absence
        load_spec(tiny_model("hunyuanvideo15", "t2v"), task="i2v")


def _output(spec, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 8, 3, 4, 4, generator=g)
    cond = spec.encode_prompts(["a square"])
    with torch.no_grad():
        return spec.per_sample_error(spec.transformer, x, torch.randn(x.shape, generator=g),
                                     torch.tensor([500.0]), {**cond, **_first_frame(spec, x)})


def _first_frame(spec, x):
    if spec.task != "i2v":
        return {}
    n = int(spec.transformer.config.image_embed_dim)
    return {"image_latents": x[:, :, :1], "image_embeds": torch.ones(1, 16, n)}


@pytest.mark.slow
@pytest.mark.parametrize("task", ["t2v", "i2v"])
def test_train_two_steps_lora_loads_into_the_pipeline_and_sample_writes_a_video(task, shards, tmp_path):
    model = tiny_model("hunyuanvideo15", task)
    lora = train_two_steps(model, shards, tmp_path)

    spec = load_spec(model)
    before = _output(spec)
    spec.pipeline().load_lora_weights(str(lora))  # diffusers' HunyuanVideo LoRA loader on the family's pipeline
    trained = _output(spec)
    assert not torch.allclose(trained, before)
    # the plain diffusers pipeline (0.42.1 gives it no load_lora_weights): its transformer loads the same file
    import diffusers

    plain = load_spec(model)
    pipe = getattr(diffusers, plain.pipeline_classes[task]).from_pretrained(model)
    pipe.transformer.load_lora_adapter(str(lora), prefix="transformer", weight_name="pytorch_lora_weights.safetensors")
    plain.transformer = pipe.transformer
    torch.testing.assert_close(_output(plain), trained)

    sample_video(model, lora, task, tmp_path)
