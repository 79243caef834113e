"""Model specs on tiny random-weight pipelines saved with save_pretrained and loaded back through load_spec."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from tiny_models import tiny_model

from realbase.errors import UserError
from realdpo.models import CogVideoXSpec, WanSpec, load_spec

SIZE = (9, 64, 64)


@pytest.fixture(scope="module")
def specs(tiny_cogvideox_t2v, tiny_cogvideox_i2v, tiny_wan_t2v):
    return {"cogvideox-t2v": load_spec(tiny_cogvideox_t2v), "cogvideox-i2v": load_spec(tiny_cogvideox_i2v),
            "wan-t2v": load_spec(tiny_wan_t2v), "cogvideox15-i2v": load_spec(tiny_model("cogvideox", "i2v", "1.5")),
            "wan-i2v": load_spec(tiny_model("wan", "i2v"))}


def _video(b=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, SIZE[0], 3, SIZE[1], SIZE[2], generator=g) * 2 - 1


def test_round_trip_families(specs, tiny_cogvideox_t2v):
    assert isinstance(specs["cogvideox-t2v"], CogVideoXSpec) and specs["cogvideox-t2v"].task == "t2v"
    assert isinstance(specs["cogvideox-i2v"], CogVideoXSpec) and specs["cogvideox-i2v"].task == "i2v"
    assert isinstance(specs["wan-t2v"], WanSpec) and specs["wan-t2v"].task == "t2v"
    assert specs["cogvideox-t2v"].prediction_type == "v_prediction"
    assert specs["wan-t2v"].prediction_type == "flow_matching"
    for spec in specs.values():
        assert spec.default_size() == SIZE
        assert len(spec.fingerprint()) == 16
    fps = {s.fingerprint() for s in specs.values()}
    assert len(fps) == 5
    assert isinstance(specs["wan-i2v"], WanSpec) and specs["wan-i2v"].task == "i2v"
    assert load_spec(tiny_cogvideox_t2v).fingerprint() == specs["cogvideox-t2v"].fingerprint()


def test_missing_components_and_unknown_pipeline(tiny_wan_t2v, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_wan_t2v, broken)
    shutil.rmtree(broken / "vae")
    (broken / "transformer" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(UserError, match="missing components: vae, transformer"):
        load_spec(broken)
    index = json.loads((broken / "model_index.json").read_text())
    index["_class_name"] = "StableDiffusionPipeline"
    (broken / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(UserError, match="unsupported pipeline"):
        load_spec(broken)
    with pytest.raises(UserError, match="not found"):
        load_spec(tmp_path / "nope")
    with pytest.raises(UserError, match="model_index.json"):
        load_spec(tmp_path)


class _Touch:
    """A pickle that, when unpickled without restrictions, creates a file (standing in for any code)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_damaged_or_hostile_model_folders_fail_in_one_line_and_run_nothing(tiny_cogvideox_t2v, tmp_path):
    import pickle

    def copy(name):
        folder = tmp_path / name
        shutil.copytree(tiny_cogvideox_t2v, folder)
        return folder

    marker = tmp_path / "code-ran"
    not_object = copy("not-object")
    (not_object / "model_index.json").write_text("[1, 2]")
    with pytest.raises(UserError, match="holds a list, not an object"):
        load_spec(not_object)

    custom_pipeline = copy("custom-pipeline")  # [module, class]: diffusers would import module.py from the folder
    index = json.loads((custom_pipeline / "model_index.json").read_text())
    (custom_pipeline / "model_index.json").write_text(json.dumps({**index, "_class_name": ["evil", "EvilPipeline"]}))
    (custom_pipeline / "evil.py").write_text(f"open({str(marker)!r}, 'w')\n")
    with pytest.raises(UserError, match="unsupported pipeline"):
        load_spec(custom_pipeline)

    custom_component = copy("custom-component")  # a component class in the folder's own code
    (custom_component / "model_index.json").write_text(json.dumps({**index, "vae": ["evil_vae", "EvilVAE"]}))
    (custom_component / "vae" / "evil_vae.py").write_text(f"open({str(marker)!r}, 'w')\n")
    with pytest.raises(UserError, match=r"component vae is code in the folder \(vae/evil_vae.py\)"):
        load_spec(custom_component)

    auto_map = copy("auto-map")  # transformers would ask in a terminal whether to run it
    tok = auto_map / "tokenizer" / "tokenizer_config.json"
    tok.write_text(json.dumps({**json.loads(tok.read_text()), "auto_map": {"AutoTokenizer": ["evil.Tok", None]}}))
    with pytest.raises(UserError, match=r"tokenizer/tokenizer_config.json maps classes to code .*auto_map"):
        load_spec(auto_map)

    damaged = copy("damaged")
    weights = damaged / "vae" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(UserError, match=r"cannot load the model in .*damaged"):
        load_spec(damaged)

    pickled = copy("pickled")  # a .bin whose unpickling would run code: read with weights_only=True, refused
    (pickled / "transformer" / "diffusion_pytorch_model.safetensors").unlink()
    (pickled / "transformer" / "diffusion_pytorch_model.bin").write_bytes(pickle.dumps(_Touch(marker)))
    with pytest.raises(UserError, match="cannot load the model in"):
        load_spec(pickled)
    assert not marker.exists()


def test_check_size(specs):
    for spec in specs.values():
        spec.check_size(*SIZE)
        spec.check_size(17, 64, 64)
        with pytest.raises(UserError, match="k\\+1"):
            spec.check_size(8, 64, 64)
        if spec.family == "cogvideox":  # its VAE decodes an odd number of latent frames only
            with pytest.raises(UserError, match="8k\\+1"):
                spec.check_size(13, 64, 64)
        with pytest.raises(UserError, match="divisible by 16"):
            spec.check_size(9, 64, 72)


@pytest.mark.slow
def test_encode_shapes_and_cond(specs):
    video = _video()[..., :32, :32]  # latents 4x4
    for name, spec in specs.items():
        x0 = spec.encode_videos(video)
        assert x0.dtype == torch.float32
        expected = (2, 3, 8, 4, 4) if spec.family == "cogvideox" else (2, 4, 3, 4, 4)
        assert tuple(x0.shape) == expected, name
        cond = spec.encode_prompts(["a person waves", "b"])
        assert cond["prompt_embeds"].shape[0] == 2
        ff = spec.encode_first_frames(video[:, 0], SIZE[0])
        assert bool(ff) == (spec.task == "i2v")
        if "image_latents" in ff:  # CogVideoX: the first frame's latents, padded over frames in per_sample_error
            assert tuple(ff["image_latents"].shape) == (2, 1, 8, 4, 4)
        if "image_condition" in ff:  # Wan: mask (4) + latents of [first frame, zeros...], and CLIP tokens
            assert tuple(ff["image_condition"].shape) == (2, 8, 3, 4, 4) and ff["image_embeds"].shape[0] == 2
            assert torch.equal(ff["image_condition"][:, :4, 0], torch.ones(2, 4, 4, 4))
            assert ff["image_condition"][:, :4, 1:].abs().sum() == 0


def test_sample_timesteps(specs):
    g = torch.Generator().manual_seed(0)
    t = specs["cogvideox-t2v"].sample_timesteps(1000, 0.0, 0.5, g)
    assert t.dtype == torch.long and t.min() >= 0 and t.max() < 500 and t.max() > 450
    t = specs["cogvideox-t2v"].sample_timesteps(100, 0.2, 0.3, g)
    assert t.min() >= 200 and t.max() < 300
    wan = specs["wan-t2v"]
    t = wan.sample_timesteps(1000, 0.0, 0.5, g)
    top = 3.0 * 0.5 / (1 + 2.0 * 0.5) * 1000  # shift 3: sigma 0.5 -> 0.75
    assert t.is_floating_point() and t.min() >= 0 and t.max() <= top + 1e-3 and t.max() > 0.9 * top


class _Stub(torch.nn.Module):
    """A transformer stand-in whose output is a known function of its input: 0.5 * x + 0.1 * timestep/1000."""

    def __init__(self, out_channels_dim: int, out_channels: int):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))
        self.dim, self.c = out_channels_dim, out_channels
        self.seen = {}

    def forward(self, hidden_states, timestep, encoder_hidden_states, return_dict=False, **kw):
        self.seen = {"hidden_states": hidden_states, "timestep": timestep, **kw}
        x = hidden_states.narrow(self.dim, 0, self.c)
        t = timestep.float().view(-1, *([1] * (x.ndim - 1))) / 1000
        return (0.5 * x + 0.1 * t + self.w,)


def test_per_sample_error_v_prediction_by_hand(specs):
    spec = specs["cogvideox-t2v"]
    g = torch.Generator().manual_seed(1)
    x0, eps = torch.randn(3, 3, 8, 8, 8, generator=g), torch.randn(3, 3, 8, 8, 8, generator=g)
    t = torch.tensor([0, 250, 999])
    cond = {"prompt_embeds": torch.randn(3, 4, 32)}
    err = spec.per_sample_error(_Stub(2, 8), x0, eps, t, cond)
    assert err.dtype == torch.float32 and err.shape == (3,)
    x0d, epsd = x0.double(), eps.double()
    for i in range(3):
        a = float(spec.scheduler.alphas_cumprod[t[i]])
        xt = a ** 0.5 * x0d[i] + (1 - a) ** 0.5 * epsd[i]
        v = 0.5 * xt + 0.1 * t[i].item() / 1000
        x0_hat = a ** 0.5 * xt - (1 - a) ** 0.5 * v
        expected = ((x0_hat - x0d[i]) ** 2).mean() / (1 - a)
        assert err[i].item() == pytest.approx(expected.item(), rel=1e-4)


def test_per_sample_error_equals_v_mse_with_real_transformer(specs):
    spec = specs["cogvideox-t2v"]
    g = torch.Generator().manual_seed(2)
    x0, eps = torch.randn(2, 3, 8, 8, 8, generator=g), torch.randn(2, 3, 8, 8, 8, generator=g)
    t = torch.tensor([100, 400])
    cond = spec.encode_prompts(["a", "b"])
    with torch.no_grad():
        err = spec.per_sample_error(spec.transformer, x0, eps, t, cond)
        a = spec.scheduler.alphas_cumprod[t].float().view(-1, 1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * eps
        v = spec.transformer(hidden_states=xt, encoder_hidden_states=cond["prompt_embeds"], timestep=t,
                             image_rotary_emb=spec._rotary(3, 8, 8, xt.device), return_dict=False)[0]
        v_target = a.sqrt() * eps - (1 - a).sqrt() * x0
    assert torch.allclose(err, (v - v_target).pow(2).mean(dim=(1, 2, 3, 4)), rtol=1e-4)


def test_per_sample_error_i2v_concatenates_first_frame(specs):
    spec = specs["cogvideox-i2v"]
    stub = _Stub(2, 8)
    img = torch.randn(2, 1, 8, 8, 8)
    spec.per_sample_error(stub, torch.randn(2, 3, 8, 8, 8), torch.randn(2, 3, 8, 8, 8), torch.tensor([1, 2]),
                          {"prompt_embeds": torch.randn(2, 4, 32), "image_latents": img})
    h = stub.seen["hidden_states"]
    assert h.shape == (2, 3, 16, 8, 8)
    assert torch.equal(h[:, :1, 8:], img) and h[:, 1:, 8:].abs().sum() == 0


def test_per_sample_error_flow_matching_by_hand(specs):
    spec = specs["wan-t2v"]
    g = torch.Generator().manual_seed(3)
    x0, eps = torch.randn(2, 4, 3, 8, 8, generator=g), torch.randn(2, 4, 3, 8, 8, generator=g)
    t = spec.sample_timesteps(2, 0.0, 0.5, g)
    err = spec.per_sample_error(_Stub(1, 4), x0, eps, t, {"prompt_embeds": torch.randn(2, 4, 32)})
    for i in range(2):
        s = t[i].item() / 1000
        xt = (1 - s) * x0[i].double() + s * eps[i].double()
        u_hat = 0.5 * xt + 0.1 * t[i].item() / 1000
        expected = ((u_hat - (eps[i].double() - x0[i].double())) ** 2).mean()
        assert err[i].item() == pytest.approx(expected.item(), rel=1e-4)


@pytest.mark.parametrize("name", ["cogvideox-t2v", "cogvideox-i2v", "wan-t2v", "cogvideox15-i2v", "wan-i2v"])
def test_generated_latents_live_in_the_training_latent_space(specs, name):
    spec = specs[name]
    video = _video(1)[..., :32, :32]  # 32x32 keeps the VAE passes cheap
    x0 = spec.encode_videos(video)
    images = video[:, 0] if spec.task == "i2v" else None
    lat = spec.generate_latents(["a person jumps"], spec.encode_prompts(["a person jumps"]), num_frames=9, height=32,
                                width=32, steps=2, guidance=3.0, seeds=[7], images=images)
    assert lat.shape == x0.shape and lat.dtype == torch.float32
    again = spec.generate_latents(["a person jumps"], {}, num_frames=9, height=32, width=32, steps=2, guidance=3.0,
                                  seeds=[7], images=images)
    assert torch.allclose(lat, again, atol=1e-5)  # cached embeddings == the pipeline's own prompt encoding

    # the pipeline's own decode of its latents == spec.decode_latents: same scaling on the way out ...
    pipe = spec.pipeline()
    pipe.set_progress_bar_config(disable=True)
    extra = spec.pipeline_image_inputs(pipe, images, {}, 32, 32)
    frames = pipe(prompt=["a person jumps"], **extra, num_frames=9, height=32, width=32, num_inference_steps=2,
                  guidance_scale=3.0, generator=spec.generators([7]), output_type="np",
                  max_sequence_length=spec.max_sequence_length).frames
    ours = (spec.decode_latents(lat)[0].permute(0, 2, 3, 1).numpy() + 1) / 2
    assert np.abs(np.asarray(frames)[0] - ours).max() < 1e-3
    # ... and encode_videos applies exactly its inverse: decode(encode(v)) == the raw VAE round trip
    raw = spec.vae.encode(video.permute(0, 2, 1, 3, 4)).latent_dist.mode()
    raw_video = spec.vae.decode(raw).sample.permute(0, 2, 1, 3, 4).clamp(-1, 1)
    assert torch.allclose(spec.decode_latents(x0), raw_video, atol=1e-4)


def test_generate_latents_checks_images(specs):
    spec = specs["cogvideox15-i2v"]  # 3 latent frames + 1 padding frame for patch_size_t=2; error on the 3 only
    stub = _Stub(2, 8)
    x = torch.randn(1, 3, 8, 8, 8)
    noise = torch.randn(spec.noise_shape(tuple(x.shape)))  # the padding frame has noise of its own
    err = spec.per_sample_error(stub, x, noise, torch.tensor([0]), {"prompt_embeds": torch.randn(1, 4, 32),
                                                                  "image_latents": torch.randn(1, 1, 8, 8, 8)})
    assert stub.seen["hidden_states"].shape == (1, 4, 16, 8, 8) and stub.seen["ofs"] is not None
    a = spec.alphas_cumprod[0]
    torch.testing.assert_close(stub.seen["hidden_states"][:, 0, :8], a.sqrt() * x[:, 0] + (1 - a).sqrt() * noise[:, 0])
    assert err.shape == (1,)
    with pytest.raises(UserError, match="first frame"):
        specs["cogvideox-i2v"].generate_latents(["a"], {}, num_frames=9, height=64, width=64, steps=1, guidance=1.0,
                                                seeds=[0])
    spec = specs["wan-i2v"]
    stub = _Stub(1, 4)
    cond = {"prompt_embeds": torch.randn(1, 4, 32), "image_condition": torch.randn(1, 8, 3, 8, 8),
            "image_embeds": torch.randn(1, 17, 16)}
    spec.per_sample_error(stub, torch.randn(1, 4, 3, 8, 8), torch.randn(1, 4, 3, 8, 8), torch.tensor([500.0]), cond)
    assert torch.equal(stub.seen["hidden_states"][:, 4:], cond["image_condition"])
    assert torch.equal(stub.seen["encoder_hidden_states_image"], cond["image_embeds"])
    with pytest.raises(UserError, match="text-to-video"):
        specs["wan-t2v"].generate_latents(["a"], {}, num_frames=9, height=64, width=64, steps=1, guidance=1.0,
                                          seeds=[0], images=torch.zeros(1, 3, 64, 64))


def test_builtin_model_is_saved_once_and_loaded_back(tmp_path, monkeypatch):
    from realdpo.models.tiny import builtin_model_path

    monkeypatch.setenv("REALDPO_HOME", str(tmp_path))
    spec = load_spec(None)
    path = builtin_model_path()
    assert path.parent == tmp_path / "models" and (path / "model_index.json").is_file()
    assert spec.path == path and spec.family == "cogvideox" and spec.task == "t2v"
    assert [p.name for p in (tmp_path / "models").iterdir()] == [path.name]  # no temp folder left behind
    mtime = (path / "model_index.json").stat().st_mtime_ns
    assert builtin_model_path() == path and (path / "model_index.json").stat().st_mtime_ns == mtime


def test_builtin_training_step_runs(tmp_path, monkeypatch):
    """A LoRA DPO-shaped step (policy with grad on winner + 3 losers, reference without) on the default size."""
    from peft import LoraConfig

    spec = load_spec(tiny_model("cogvideox", "t2v"))
    tr = spec.transformer
    tr.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=spec.lora_target_modules))
    x = torch.randn(4, 3, 8, 8, 8)
    noise = torch.randn(1, 3, 8, 8, 8).expand(4, -1, -1, -1, -1)
    cond = {k: v.expand(4, *v.shape[1:]) for k, v in spec.encode_prompts(["a"]).items()}
    t = spec.sample_timesteps(1, 0, 0.5).expand(4)
    e_pol = spec.per_sample_error(tr, x, noise, t, cond)
    with torch.no_grad():
        tr.disable_adapters()
        e_ref = spec.per_sample_error(tr, x, noise, t, cond)
        tr.enable_adapters()
    (e_pol - e_ref).sum().backward()
    grads = [p.grad for n, p in tr.named_parameters() if "lora" in n]
    assert grads and all(g is not None for g in grads)
    assert all(p.grad is None for n, p in tr.named_parameters() if "lora" not in n)


def test_bf16_models_run(tiny_wan_t2v):
    """Wan keeps some parameters in fp32; inputs must follow the model's compute dtype, not its first parameter."""
    spec = load_spec(tiny_wan_t2v, dtype=torch.bfloat16)
    x = torch.randn(2, 4, 3, 8, 8)
    err = spec.per_sample_error(spec.transformer, x, torch.randn_like(x), spec.sample_timesteps(2, 0, 0.5),
                                spec.encode_prompts(["a", "b"]))
    assert err.dtype == torch.float32 and torch.isfinite(err).all()
    assert spec.encode_videos(torch.zeros(1, 9, 3, 32, 32)).dtype == torch.float32
