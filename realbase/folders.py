"""Model folders are data, never code: the check both halves run before transformers or diffusers load one."""

from __future__ import annotations

import json
from pathlib import Path

MAX_CONFIG_BYTES = 64 << 20  # larger JSON files are weights indexes or vocabularies, not configs


def folder_code(folder: Path) -> tuple[str, str] | None:
    """(file name, what it maps to) when a JSON config in `folder` maps transformers' classes to Python code shipped
    in the folder (`auto_map`, which transformers asks about in a terminal instead of refusing); else None."""
    for path in sorted(Path(folder).glob("*.json")):
        try:
            if path.stat().st_size > MAX_CONFIG_BYTES:
                continue
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError, RecursionError):
            continue  # the loader reports a broken file
        auto_map = data.get("auto_map") if isinstance(data, dict) else None
        if auto_map:
            target = next(iter(auto_map.values())) if isinstance(auto_map, dict) else auto_map
            return path.name, str(target)
    return None
