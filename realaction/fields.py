"""Typed config fields and config files: what every command's config dataclass is built from.

Each command has one config dataclass (TRL style): every field carries its default and its help text in
`metadata["help"]`, so the CLI (`cli/`), `--config FILE` and the library read the same definition. This lives in
`realaction`, the bottom layer, because both halves' configs use it.
"""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path
from typing import Any

from realaction.errors import UserError


def field(default: Any = dataclasses.MISSING, *, help: str, flag: str | None = None,
          default_factory: Any = dataclasses.MISSING) -> Any:
    """A config field with its help text; `flag` names the option when it differs from the field's name.

    A list field's option takes one or more values (`--shards a.tar b.tar`, so a shell-expanded glob works)
    and may also be repeated.
    """
    meta = {"help": help, "flag": flag}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def option_name(f: dataclasses.Field) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def read_config_file(path: Path, config_cls: type) -> dict[str, Any]:
    """Read a YAML or TOML file of option values; keys may use dashes or underscores."""
    if not path.is_file():
        raise UserError(f"config file not found: {path}")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() == ".toml":
            data = tomllib.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text) or {}
    except Exception as e:  # parse errors of either format
        raise UserError(f"cannot parse config file {path}: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise UserError(f"config file {path} must hold a mapping of option names to values")
    known = {f.name for f in dataclasses.fields(config_cls)}
    out = {}
    for key, value in data.items():
        name = str(key).lstrip("-").replace("-", "_")
        if name not in known:
            raise UserError(f"unknown option in config file {path}: {key}")
        out[name] = value
    return out
