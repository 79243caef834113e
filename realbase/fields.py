"""Typed config fields and config files: what every command's config dataclass is built from.

Each command has one config dataclass (TRL style): every field carries its default and its help text in
`metadata["help"]`, so the CLI (`cli/`), `--config FILE` and the library read the same definition. This lives in
`realbase`, below both halves, because both halves' configs use it.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
import typing
from pathlib import Path
from typing import Any, Sequence

from realbase.errors import UserError, one_line


def field(default: Any = dataclasses.MISSING, *, help: str, flag: str | None = None,
          default_factory: Any = dataclasses.MISSING, required: bool = False, at_most: float | None = None,
          choices: Sequence[str] | None = None) -> Any:
    """A config field with its help text; `flag` names the option when it differs from the field's name;
    `required` marks the option so in `--help` (the config's `validate` says what is missing, in one line);
    `at_most` is a number option's largest value (`check_numbers`); `choices` the values a text option takes
    (`check_choices`; None stays allowed for an optional one).

    A list field's option takes one or more values (`--shards a.tar b.tar`, so a shell-expanded glob works)
    and may also be repeated.
    """
    meta = {"help": help, "flag": flag, "required": required, "at_most": at_most,
            "choices": tuple(choices) if choices is not None else None}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def option_name(f: dataclasses.Field) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def one_of(value: Any, choices: Sequence[str], what: str, error: type[Exception] = UserError) -> None:
    """Fail in one line ("unknown --detector 'x'; choose one of a, b") unless `value` is one of `choices`."""
    if value not in choices:
        raise error(f"unknown {what} {value!r}; choose one of {', '.join(choices)}")


def check_choices(cfg: Any) -> None:
    """Fail in one line on a text option whose value is not one of its field's `choices`."""
    for f in dataclasses.fields(cfg):
        choices, value = f.metadata.get("choices"), getattr(cfg, f.name)
        if choices and value is not None:
            one_of(value, choices, option_name(f))


def check_fields(cfg: Any) -> None:
    """Everything a field says of its own values: numbers (`check_numbers`) and choices (`check_choices`)."""
    check_numbers(cfg)
    check_choices(cfg)


INT_LIMIT = 2**63 - 1  # what torch and numpy can hold; a larger count or size is a typo


def check_numbers(cfg: Any) -> None:
    """Fail in one line on a number option (int or float, optional or a list) that is not finite, is negative (no
    option takes a negative number) or exceeds its field's `at_most`. Runs before any work, for every command;
    finer ranges (a probability, "at least 1") are each config's `validate`."""
    hints = typing.get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        annotation = hints[f.name]
        kinds = {a for a in (annotation, *typing.get_args(annotation)) if a in (int, float)}
        if not kinds:
            continue
        value = getattr(cfg, f.name)
        limit = f.metadata.get("at_most")
        limit = limit if limit is not None else (INT_LIMIT if kinds == {int} else math.inf)
        for v in value if isinstance(value, (list, tuple)) else [value]:
            if v is None or isinstance(v, bool) or not isinstance(v, (int, float)):
                continue
            if not math.isfinite(v):
                raise UserError(f"{option_name(f)} must be a finite number, got {v}")
            if v < 0:
                raise UserError(f"{option_name(f)} must not be negative, got {_number(v)}")
            if v > limit:
                raise UserError(f"{option_name(f)} must be at most {_number(limit)}, got {_number(v)}")


def _number(v: float) -> str:
    return str(v) if isinstance(v, int) else f"{v:g}"


CONFIG_MAX_BYTES = 1 << 20
CONFIG_SUFFIXES = {".toml": "TOML", ".yaml": "YAML", ".yml": "YAML"}


def _expected(annotation: Any) -> str:
    """How an option's type reads in an error message."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) is list:
        plural = {str: "strings", int: "integers", float: "numbers", Path: "paths (strings)"}
        return f"a list of {plural.get(args[0], _expected(args[0]))}" if args else "a list"
    if args:  # Optional[X]
        return _expected(args[0])
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string",
            Path: "a path (a string)"}.get(annotation, getattr(annotation, "__name__", str(annotation)))


def _conform(value: Any, annotation: Any) -> tuple[bool, Any]:
    """(whether `value` fits the option's type, the value to use). A number written as a string ("1e-4", which
    YAML 1.1 reads as a string) is taken as the number."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is list:
        if not isinstance(value, list):
            return False, value
        items = [_conform(v, args[0]) if args else (True, v) for v in value]
        return all(ok for ok, _ in items), [v for _, v in items]
    if type(None) in args:  # Optional[X]
        inner = [a for a in args if a is not type(None)]
        return (True, None) if value is None else _conform(value, inner[0])
    if annotation is bool:
        return isinstance(value, bool), value
    if annotation in (int, float):
        if isinstance(value, str):
            try:
                value = annotation(value.strip())
            except ValueError:
                return False, value
        number = (int, float) if annotation is float else int
        return isinstance(value, number) and not isinstance(value, bool), value
    if annotation in (str, Path):
        return isinstance(value, str), value
    return True, value  # other types: click converts and reports


def _shown(value: Any) -> str:
    kind = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list",
            dict: "a table"}.get(type(value), type(value).__name__)
    text = repr(value)
    return f"{kind} ({text[:60] + '...' if len(text) > 60 else text})"


def _shares_containers(data: Any) -> bool:
    """Whether one list or dict is reached twice (a YAML alias), walking each container once."""
    seen, todo = set(), [data]
    while todo:
        node = todo.pop()
        if isinstance(node, (list, dict)):
            if id(node) in seen:
                return True
            seen.add(id(node))
            todo.extend(node.values() if isinstance(node, dict) else node)
    return False


def read_config_file(path: Path, config_cls: type) -> dict[str, Any]:
    """Read a YAML (.yaml, .yml) or TOML (.toml) file of option values; keys may use dashes or underscores.

    Every value is checked against its option's type: a mistake names the file and the option."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file not found: {path}")
    kind = CONFIG_SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise UserError(f"config file {path}: unknown format {path.suffix or '(no suffix)'}; name it .toml, .yaml "
                        "or .yml")
    if path.stat().st_size > CONFIG_MAX_BYTES:
        raise UserError(f"config file {path} is larger than {CONFIG_MAX_BYTES >> 20} MiB; a file of options is a few "
                        "lines")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read config file {path}: {one_line(e, 160)}") from None
    try:
        if kind == "TOML":
            data = tomllib.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text) or {}
            # An alias repeats a list or mapping without copying it: a few hundred bytes of nested aliases (a
            # "billion laughs") stand for billions of values that every later step would walk. Options never need
            # one. (Scanning the events instead is quadratic in the nesting depth: minutes for 50,000 brackets.)
            if _shares_containers(data):
                raise UserError(f"config file {path} uses YAML aliases (*name) of lists or mappings; write the "
                                "values out")
    except UserError:
        raise
    except Exception as e:  # parse errors of either format
        raise UserError(f"cannot parse config file {path} as {kind}: {one_line(e, first_line=True)}") from None
    if not isinstance(data, dict):
        raise UserError(f"config file {path} must hold a mapping of option names to values")
    hints = typing.get_type_hints(config_cls)
    known = {f.name: f for f in dataclasses.fields(config_cls)}
    out = {}
    for key, value in data.items():
        name = str(key).lstrip("-").replace("-", "_")
        if name not in known:
            raise UserError(f"unknown option in config file {path}: {key}")
        ok, value = _conform(value, hints[name])
        if not ok:
            raise UserError(f"config file {path}: option {key!r} ({option_name(known[name])}) must be "
                            f"{_expected(hints[name])}, got {_shown(value)}")
        out[name] = value
    return out
