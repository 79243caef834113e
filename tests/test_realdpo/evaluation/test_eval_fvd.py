"""FVD plumbing with a tiny scripted stand-in for i3d_torchscript.pt, loaded through torch.jit.load."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny_i3d import save_tiny_i3d

from realbase.errors import UserError
from realdpo.evaluation.frechet import frechet_from_features
from realdpo.evaluation.fvd import i3d_features, load_i3d, to_i3d_input


@pytest.fixture(scope="module")
def i3d_path(tmp_path_factory):
    return save_tiny_i3d(tmp_path_factory.mktemp("i3d") / "i3d_torchscript.pt")


def _clips(n, seed, brightness):
    rng = np.random.default_rng(seed)
    return [np.clip(rng.normal(brightness, 30, size=(16, 224, 224, 3)), 0, 255).astype(np.uint8) for _ in range(n)]


def test_input_is_bcthw_in_minus_one_to_one():
    clip = np.zeros((16, 224, 224, 3), np.uint8)
    clip[..., 0] = 255
    x = to_i3d_input(clip[None])
    assert x.shape == (1, 3, 16, 224, 224) and x.dtype == torch.float32
    assert x[:, 0].min() == 1.0 and x[:, 1].max() == -1.0


def test_features_come_from_the_scripted_detector_with_the_common_fvd_call(i3d_path):
    detector = load_i3d(i3d_path, trust=True)  # the tiny stand-in is no known detector
    assert isinstance(detector, torch.jit.ScriptModule)
    clips = _clips(3, 0, 128)
    feats = i3d_features(detector, clips, batch_size=2)
    assert feats.shape == (3, 24)
    # same as calling the module directly the way the common FVD code does (features before the softmax)
    direct = detector(to_i3d_input(np.stack(clips)), rescale=False, resize=False, return_features=True)
    np.testing.assert_allclose(feats, direct.detach().double().numpy(), rtol=1e-5, atol=1e-6)


def test_fvd_is_small_for_the_same_distribution_and_larger_for_a_different_one(i3d_path):
    detector = load_i3d(i3d_path, trust=True)  # the tiny stand-in is no known detector
    a = i3d_features(detector, _clips(6, 1, 100))
    b = i3d_features(detector, _clips(6, 2, 100))
    c = i3d_features(detector, _clips(6, 3, 200))
    assert frechet_from_features(a, a) == pytest.approx(0.0, abs=1e-6)
    assert frechet_from_features(a, c) > 5 * frechet_from_features(a, b)


def test_a_file_that_is_not_torchscript_is_a_user_error(tmp_path):
    bad = tmp_path / "i3d.pt"
    torch.save({"w": torch.zeros(2)}, bad)
    with pytest.raises(UserError, match="not a TorchScript file"):
        load_i3d(bad, trust=True)


def test_only_a_known_detector_file_loads_without_trust_i3d(i3d_path, tmp_path, monkeypatch):
    import subprocess

    import realdpo.evaluation.fvd as fvd

    with pytest.raises(UserError, match=r"not a known FVD detector file \(sha256:[0-9a-f]{64}\).*--trust-i3d"):
        load_i3d(i3d_path)
    sha256, blob = fvd.file_digests(i3d_path)
    git = subprocess.run(["git", "hash-object", str(i3d_path)], capture_output=True, text=True, check=True)
    assert blob == "git:" + git.stdout.strip()  # the same id git gives, which is how KNOWN_I3D's entry was read
    monkeypatch.setattr(fvd, "KNOWN_I3D", {blob: "the tiny stand-in"})
    assert isinstance(load_i3d(i3d_path), torch.jit.ScriptModule)
    monkeypatch.setattr(fvd, "KNOWN_I3D", {sha256: "the tiny stand-in"})
    assert isinstance(load_i3d(i3d_path), torch.jit.ScriptModule)


def test_real_clips_come_from_curated_shards_files_and_folders(tmp_path):
    from tiny_models import synthetic_clip, write_tiny_shard

    from realdpo.evaluation.videos import decode_small, expand_real

    write_tiny_shard(tmp_path / "shards" / "realaction-000000.tar",
                     [(f"src-{i:04d}", "a square", synthetic_clip(frames=16, seed=i)) for i in range(2)])
    (tmp_path / "loose").mkdir()
    (tmp_path / "loose" / "0.mp4").write_bytes(synthetic_clip(frames=16, seed=9))
    clips = expand_real([str(tmp_path / "shards" / "*.tar"), str(tmp_path / "loose")])
    assert [c.name for c in clips] == ["realaction-000000.tar:src-0000.mp4", "realaction-000000.tar:src-0001.mp4",
                                       "loose/0.mp4"]
    frames, fps, _ = decode_small(clips[0].data, 256)
    assert frames.shape[0] == 16 and fps == 8.0
    with pytest.raises(UserError, match="nothing found"):
        expand_real([str(tmp_path / "none" / "*.tar")])
