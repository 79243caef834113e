"""Helpers for the curation tests: what the shards hold, and which processes are alive (Linux /proc)."""

from __future__ import annotations

import time
from pathlib import Path


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
