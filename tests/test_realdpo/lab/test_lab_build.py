"""`realdpo lab build` at toy sizes: the pipeline it saves loads through load_spec, the same seed gives the same
weights, and a build killed mid-stage resumes to exactly those weights."""

from __future__ import annotations

import json

import pytest
from safetensors.torch import load_file

import realdpo.lab.build as build_mod
from realdpo.configs.lab import LabBuildConfig
from realdpo.models import load_spec

TOY = dict(vae_steps=2, vae_batch=2, vae_crop=16, decoder_steps=2, clips=8, steps=4, batch=2, refine_steps=2,
           refine_clips=4, threads=1)


def _weights(folder):
    return {p.parent.name: load_file(p) for p in folder.glob("*/*.safetensors")}


def _same(a, b):
    return a.keys() == b.keys() and all(a[k].keys() == b[k].keys() and all((a[k][n] == b[k][n]).all() for n in a[k])
                                        for k in a)


@pytest.mark.slow
def test_toy_build_is_reproducible_and_resumes(tmp_path, monkeypatch):
    monkeypatch.setattr(build_mod, "SCALE_CLIPS", 8)
    monkeypatch.setattr(build_mod, "CHECK_CLIPS", 2)
    whole = build_mod.build(LabBuildConfig(out=tmp_path / "whole", **TOY))
    spec = load_spec(whole)
    assert (spec.family, spec.task, spec.default_size()) == ("cogvideox", "i2v", (9, 32, 32))
    assert not (tmp_path / ".whole.build").exists()
    info = json.loads((whole / "build_info.json").read_text())
    stages = {"vae", "data", "transformer", "refine_data", "refine"}
    assert set(info["seconds"]) == set(info["cpu_seconds"]) == set(info["threads"]) == stages
    assert set(info["threads"].values()) == {1} and info["vae_recon_clips"] == 2

    monkeypatch.setattr(build_mod, "CHECKPOINT_EVERY", 2)
    calls = {"n": 0}
    real_tokenize = build_mod.tokenize

    def dies_at_step_3(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real_tokenize(*args, **kwargs)

    monkeypatch.setattr(build_mod, "tokenize", dies_at_step_3)
    with pytest.raises(KeyboardInterrupt):
        build_mod.build(LabBuildConfig(out=tmp_path / "killed", **TOY))
    assert (tmp_path / ".killed.build" / "checkpoints" / "step-2" / "optimizer.pt").is_file()
    monkeypatch.setattr(build_mod, "tokenize", real_tokenize)
    killed = build_mod.build(LabBuildConfig(out=tmp_path / "killed", **TOY))
    assert _same(_weights(whole), _weights(killed))
    with pytest.raises(Exception, match="other options"):
        (tmp_path / ".other.build").mkdir()
        (tmp_path / ".other.build" / "info.json").write_text('{"config": {"seed": "5"}}')
        build_mod.build(LabBuildConfig(out=tmp_path / "other", **TOY))


@pytest.mark.slow
def test_decoder_stage_trains_the_decoder_and_leaves_the_latents_alone():
    import torch
    from diffusers import AutoencoderKLCogVideoX

    from realdpo.lab.model import VAE_CONFIG

    torch.manual_seed(0)
    vae = AutoencoderKLCogVideoX(**VAE_CONFIG).eval()
    before = {k: v.clone() for k, v in vae.state_dict().items()}
    result = build_mod.finetune_decoder(LabBuildConfig(**{**TOY, "decoder_steps": 3}), vae)
    after = vae.state_dict()
    assert result["decoder_noisy_mse_last50"] > 0
    assert all((after[k] == v).all() for k, v in before.items() if k.startswith("encoder."))
    assert any((after[k] != v).any() for k, v in before.items() if k.startswith("decoder."))
    assert all(p.requires_grad for p in vae.parameters()) and not vae.training
