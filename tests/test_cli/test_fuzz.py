"""The project's fuzz test: bad inputs across both halves, built here, each given to the real command line in a
subprocess. Every one must end with its expected exit code and no traceback: a bad sample or a damaged checkpoint
is skipped with a warning (exit 0), a bad option, config file or model folder is one line (exit 2)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from tiny_models import curated_members, synthetic_clip, tiny_model, write_raw_shard, write_tiny_shard

pytestmark = pytest.mark.slow  # every case is the real command in a subprocess

ROOT = Path(__file__).resolve().parents[2]


def _cli(*args: str, env_root: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "REALDPO_HOME": str(env_root / "home"), "REALDPO_CACHE": str(env_root / "latents"), "COLUMNS": "200"}
    proc = subprocess.run([sys.executable, "-m", "cli.main", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=600)
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr[-3000:]
    return proc


def _error_line(proc: subprocess.CompletedProcess) -> str:
    """The one line a failed command printed (other lines are library noise on stderr, e.g. torch's)."""
    lines = [line for line in proc.stderr.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1, proc.stderr[-2000:]
    return lines[0]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    """Two good shards, a shard of bad samples, a file that is no tar (all matched by one glob), a shard with no
    usable sample, a tiny model and two broken copies of it."""
    root = tmp_path_factory.mktemp("fuzz")
    clip = synthetic_clip(frames=20, seed=7)
    good = [write_tiny_shard(root / "shards" / f"realaction-00000{i}.tar",
                             [(f"good{i}-0000", f"a yellow square moving right, take {i}", synthetic_clip(frames=20, seed=i))])
            for i in range(2)]
    write_raw_shard(root / "shards" / "realaction-000002.tar", [
        *curated_members("truncated-0000", "a person", clip[:len(clip) // 2], jpg=b"x"),  # truncated mp4
        *curated_members("notvideo-0000", "a person", b"this is a text file, not an mp4\n" * 20, jpg=b"x"),  # non-video
        *curated_members("empty-0000", "a person", b"", jpg=b"x"),  # empty file
        *curated_members("badjson-0000", "a person", clip, meta=b'{"fps": 8,'),  # bad json member
        *curated_members("latin1-0000", "un caf\xe9".encode("latin-1"), clip),  # invalid UTF-8 caption
        *curated_members("blank-0000", "   ", clip),  # blank caption
        *curated_members("good0-0000", "the same key as in shard 0", clip),  # duplicate key
        *curated_members("huge-0000", "a person waves " * 300_000, clip),  # 4.5 MB caption
    ])
    (root / "shards" / "realaction-000003.tar").write_bytes(b"junk" * 1000)  # not a tar
    nothing_usable = write_raw_shard(root / "unusable" / "realaction-000000.tar", [
        *curated_members("badjson-0000", "a person", clip, meta=b"{"), *curated_members("blank-0000", "", clip)])
    model = tiny_model("cogvideox", "t2v")
    broken = root / "broken-model"
    shutil.copytree(model, broken)
    weights = broken / "vae" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:4096])
    not_object = root / "not-object-model"
    shutil.copytree(model, not_object)
    (not_object / "model_index.json").write_text('["CogVideoXPipeline"]')
    return {"root": root, "shards": root / "shards", "good": good[0], "unusable": nothing_usable, "model": model,
            "broken": broken, "not_object": not_object, "cache": root / "cache"}


def _train_args(world, out, *extra):
    return ["train", "--shards", str(world["shards"] / "*.tar"), str(world["root"] / "typo" / "*.tar"),
            "--out", out, "--model", world["model"], "--cache-dir", world["cache"], "--negatives", "1",
            "--neg-steps", "1", "--lora-rank", "4", "--checkpoint-every", "1", "--keep-checkpoints", "0", *extra]


def test_training_survives_bad_samples_and_a_damaged_checkpoint(world):
    out = world["root"] / "run"
    proc = _cli(*_train_args(world, out, "--steps", "2"), env_root=world["root"])
    err = proc.stderr
    assert proc.returncode == 0, err[-3000:]
    for key in ("badjson-0000", "latin1-0000", "blank-0000", "good0-0000"):
        assert f"skipping sample {key}" in err
    assert "caption of huge-0000" in err and "matches no file" in err, err[-3000:]
    assert "skipping the rest of " + str(world["shards"] / "realaction-000003.tar") in err
    assert "shards read: 6 usable sample(s); skipped 5" in err  # the undecodable clips are the negatives' to skip
    assert "skipping truncated-0000" in err and "skipping notvideo-0000" in err and "skipping empty-0000" in err
    assert [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    assert f"outputs in {out}: lora/ (for sample --lora)" in err

    damaged = out / "checkpoints" / "step-2" / "trainable.safetensors"
    damaged.write_bytes(b"\x00" * 64)
    proc = _cli(*_train_args(world, out, "--steps", "3", "--resume"), env_root=world["root"])
    assert proc.returncode == 0 and "step-2 is unreadable" in proc.stderr
    assert "resuming from" in proc.stdout and "step-1 (step 1)" in proc.stdout

    proc = _cli(*_train_args(world, out, "--steps", "1", "--resume"), env_root=world["root"])
    assert proc.returncode == 2 and "already complete: 3 steps done" in _error_line(proc)

    (out / "train_config.json").unlink()
    proc = _cli(*_train_args(world, out, "--steps", "4", "--resume", "--lora-rank", "8"), env_root=world["root"])
    assert proc.returncode == 2 and "lora_rank" in _error_line(proc)


@pytest.mark.parametrize("case", ["model_index not an object", "damaged model weights", "config suffix",
                                  "config value type", "not an integer", "rank zero", "no usable sample",
                                  "untrusted i3d"])
def test_bad_inputs_fail_in_one_line(world, case, tmp_path):
    root = world["root"]
    if case == "model_index not an object":
        args, expect = _train_args(world, tmp_path / "o", "--model", world["not_object"]), "not an object"
    elif case == "damaged model weights":
        args, expect = _train_args(world, tmp_path / "o", "--model", world["broken"]), "cannot load the model"
    elif case == "config suffix":
        (tmp_path / "c.json").write_text('{"steps": 3}')
        args, expect = ["train", "--config", tmp_path / "c.json"], "unknown format .json"
    elif case == "config value type":
        (tmp_path / "c.toml").write_text('shards = "data/*.tar"\n')
        args, expect = ["train", "--config", tmp_path / "c.toml"], "option 'shards' (--shards) must be a list"
    elif case == "not an integer":
        args, expect = ["train", "--shards", world["good"], "--steps", "abc"], "'--steps'"
    elif case == "rank zero":
        args, expect = ["train", "--shards", world["good"], "--lora-rank", "0"], "--lora-rank must be at least 1"
    elif case == "no usable sample":
        args = ["negatives", "--shards", world["unusable"], "--model", world["model"], "--cache-dir", world["cache"],
                "--negatives", "1", "--neg-steps", "1"]
        expect = "no usable samples in 1 shard(s)"
    else:
        from tiny_i3d import save_tiny_i3d

        from realbase.video import encode_mp4

        videos = tmp_path / "videos"
        videos.mkdir()
        encode_mp4(synthetic_clip_frames(), fps=8.0, path=videos / "0.mp4")
        args = ["eval", "--videos", f"a={videos}", "--i3d", save_tiny_i3d(tmp_path / "i3d.pt"), "--real", videos,
                "--out", tmp_path / "report", "--workers", "1"]
        expect = "not a known FVD detector file"
    proc = _cli(*args, env_root=root)
    assert proc.returncode == 2
    if case == "not an integer":  # click's usage error: its own three lines
        assert "Invalid value for '--steps'" in proc.stderr
    else:
        assert expect in _error_line(proc)


def synthetic_clip_frames():
    import numpy as np

    frames = np.zeros((9, 32, 32, 3), np.uint8)
    frames[:, 8:16, :, 0] = 200
    return frames


def test_curation_skips_broken_files(world, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    clip = synthetic_clip(frames=40, height=96, width=128, seed=1)
    (src / "good.mp4").write_bytes(clip)
    (src / "truncated.mp4").write_bytes(clip[:len(clip) // 2])
    (src / "notes.mp4").write_text("not a video\n")
    (src / "empty.mp4").write_bytes(b"")
    proc = _cli("curate", "--src", src, "--out", tmp_path / "out", "--workers", "1", env_root=world["root"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = {r["source"]: r for r in map(json.loads, (tmp_path / "out" / "sources.jsonl").read_text().splitlines())}
    assert rows["good.mp4"]["status"] == "done"
    assert {rows[n]["status"] for n in ("truncated.mp4", "notes.mp4", "empty.mp4")} == {"error"}
    assert f"outputs in {tmp_path / 'out'}: shards/" in proc.stderr


def test_ctrl_c_exits_130_with_one_line(world, tmp_path):
    """SIGINT in the middle of a real `sample --prompts` run: exit 130 (what `&&` chains stop on), one line, no
    traceback; the run had written its first video, so it was in the sampling loop."""
    import signal
    import time

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("".join(f"prompt {i}\n" for i in range(50)))
    out = tmp_path / "videos"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "REALDPO_HOME": str(tmp_path / "home")}
    # A job started in the background by a non-interactive shell (`cmd &`, nohup) inherits SIGINT ignored, and so
    # would this child: Python then leaves it ignored, as a user's `nohup realdpo ... &` wants. The child gets the
    # disposition a terminal's foreground job has.
    proc = subprocess.Popen([sys.executable, "-m", "cli.main", "sample", "--prompts", str(prompts), "--out", str(out),
                             "--model", str(world["model"]), "--steps", "1000"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 300
    # Interrupt once the first video is written: in the sampling loop itself, past loading the model.
    while not any(out.glob("*.mp4")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()[1][-2000:]
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-2000:]
    assert "Traceback" not in stdout + stderr
    lines = [line for line in stderr.splitlines() if "Interrupted" in line]
    assert len(lines) == 1 and lines[0].startswith("Interrupted (Ctrl-C)"), stderr[-2000:]
    assert len(list(out.glob("*.mp4"))) < 50  # it was stopped, not finished


# Exit codes the CLI documents (docs/cli.md): 0 done, 2 a one-line refusal, 130 interrupted.
HOSTILE = {
    # 323 bytes standing for 9^9 strings: its error message's repr of them hung for minutes
    "yaml billion laughs": lambda d: ["train", "--config", _write(d / "bomb.yaml", "shards:\n  - &a [x,x,x,x,x,x,x,x,x]\n" + "".join(
        f"  - &{chr(98 + i)} [{','.join([f'*{chr(97 + i)}'] * 9)}]\n" for i in range(8)))],
    "yaml nested 50000 deep": lambda d: ["train", "--config", _write(d / "deep.yaml", "steps: " + "[" * 50_000 + "]" * 50_000)],
    "toml nested 50000 deep": lambda d: ["train", "--config", _write(d / "deep.toml", "steps = " + "[" * 50_000 + "]" * 50_000)],
    "config of 2 MiB": lambda d: ["curate", "--config", _write(d / "big.toml", "# x\n" * (1 << 19))],
    "config is a folder": lambda d: ["sample", "--config", str(d)],
    "lr nan": lambda d: ["train", "--shards", "x.tar", "--lr", "nan"],
    "beta inf": lambda d: ["train", "--shards", "x.tar", "--beta", "inf"],
    "beta negative": lambda d: ["train", "--shards", "x.tar", "--beta", "-5000"],
    "guidance nan": lambda d: ["sample", "--prompt", "a", "--guidance", "nan"],
    "fps inf": lambda d: ["curate", "--src", str(d), "--fps", "inf"],
    "max-side negative": lambda d: ["curate", "--src", str(d), "--max-side", "-1"],
    "seed 2^64": lambda d: ["sample", "--prompt", "a", "--seed", str(2**64)],
    "sample-fps nan": lambda d: ["eval", "--videos", f"a={d}", "--sample-fps", "nan"],
    "neg-strength inf": lambda d: ["negatives", "--shards", "x.tar", "--neg-strength", "inf"],
    "eval --out is a file": lambda d: ["eval", "--videos", f"a={d}", "--out", _write(d / "report", "x")],
    "prompts not UTF-8": lambda d: ["sample", "--prompts", _write(d / "p.txt", b"\xff\xfe\x00bad\n"), "--out", str(d / "o"),
                                    "--steps", "1"],
    "escape sequences in a path": lambda d: ["curate", "--src", str(d / "\x1b]0;title\x07\x1b[2J\u202eevil")],
}


def _write(path: Path, data) -> str:
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return str(path)


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_cli_input_is_one_line_exit_2_in_bounded_time(case, world, tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]), "COLUMNS": "80",
           "REALDPO_HOME": str(tmp_path / "home")}
    args = HOSTILE[case](tmp_path)
    proc = subprocess.run([sys.executable, "-m", "cli.main", *args], capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=120)  # a hang fails here
    out = proc.stdout + proc.stderr
    assert "Traceback" not in out and "\x1b" not in out and "\u202e" not in out, out[-2000:]
    assert proc.returncode == 2, out[-2000:]
    assert [line for line in proc.stderr.splitlines() if line.strip()] == [_error_line(proc)], proc.stderr[-2000:]


def test_sample_steps_beyond_the_schedule_and_a_locked_out(world, tmp_path):
    from cli.guard import out_lock

    prompts = _write(tmp_path / "p.txt", "a person waves\n")
    proc = _cli("sample", "--prompts", prompts, "--out", tmp_path / "o", "--model", world["model"], "--steps", "5000",
                env_root=tmp_path)
    assert proc.returncode == 2 and "--steps 5000 is more than the model's 1000 training timesteps" in _error_line(proc)
    with out_lock(tmp_path / "o", "sample"):
        proc = _cli("sample", "--prompts", prompts, "--out", tmp_path / "o", "--model", world["model"], env_root=tmp_path)
    assert proc.returncode == 2 and "is in use by another realdpo run" in _error_line(proc)


def test_torch_commands_keep_library_noise_and_long_captions_off_the_terminal(world, tmp_path):
    caption = "a person waves both arms " * 60 + "and finally ZEBRACROSSING"
    proc = _cli("sample", "--prompt", caption, "--model", world["model"], "--steps", "1", "--out", tmp_path / "x.mp4",
                env_root=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "kernels" not in proc.stderr and "ZEBRACROSSING" not in proc.stderr, proc.stderr[-2000:]
    assert sum("was cut to that limit" in line for line in proc.stderr.splitlines()) == 1
