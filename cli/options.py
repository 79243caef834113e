"""Build Typer commands from the library's typed config dataclasses (fields from `realbase.fields`)."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import sys
import typing
from pathlib import Path
from typing import Any, Callable

import typer
from typer.core import TyperCommand, TyperGroup

from cli.guard import disk_full, disk_full_error, out_lock, quiet_library_noise
from realbase.errors import UserError
from realbase.fields import check_fields, option_name, read_config_file


def _resolve(target: str | Callable) -> Callable:
    if callable(target):
        return target
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def _hide_flag_types(params) -> None:
    for p in params:
        if getattr(p, "is_flag", False):
            p.metavar = ""  # typer would show <bool>


class CommandGroup(TyperGroup):
    """A command group (`realdpo`, `realdpo lab`) whose help shows no type after a flag, as its commands' do."""

    def format_help(self, ctx: typer.Context, formatter) -> None:
        _hide_flag_types(self.get_params(ctx))
        markup, self.rich_markup_mode = self.rich_markup_mode, None  # click's plain layout, as the commands'
        try:
            super().format_help(ctx, formatter)
        finally:
            self.rich_markup_mode = markup

    def format_commands(self, ctx: typer.Context, formatter) -> None:
        """Each command's whole help, wrapped (click would cut it to one line ending in '...')."""
        rows = []
        for name in self.list_commands(ctx):
            cmd = self.get_command(ctx, name)
            if cmd is not None and not cmd.hidden:
                rows.append((name, " ".join((cmd.help or "").split())))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


class _MultiValueCommand(TyperCommand):
    """Rewrites `--opt a b c` to `--opt a --opt b --opt c` for list options before click parses the words.

    Its help marks the `required` fields' options as required (click does not enforce them: `validate` reports a
    missing one in one line, and a --config file may supply it) and shows no type after a flag."""

    list_options: frozenset[str] = frozenset()
    required_options: frozenset[str] = frozenset()

    def format_help(self, ctx: typer.Context, formatter) -> None:
        params = self.get_params(ctx)
        marked = [p for p in params if p.name in self.required_options]
        _hide_flag_types(params)
        for p in marked:
            p.required = True
        # click's plain layout: each option's description wraps beside it, or below a long name, at any width
        # (rich's table cuts long option names and squeezes descriptions into a narrow column at 80 columns)
        markup, self.rich_markup_mode = self.rich_markup_mode, None
        try:
            super().format_help(ctx, formatter)
        finally:
            self.rich_markup_mode = markup
            for p in marked:
                p.required = False

    def parse_args(self, ctx: typer.Context, args: list[str]) -> list[str]:
        rewritten, current = [], None
        for arg in args:
            if arg == "--":
                current = None
            elif arg.startswith("-"):
                current = arg if arg in self.list_options else None
            elif current is not None and rewritten and rewritten[-1] != current:
                rewritten.append(current)
            rewritten.append(arg)
        return super().parse_args(ctx, rewritten)


def add_command(app: typer.Typer, name: str, config_cls: type, target: str | Callable, help: str,
                out_folder: Callable[[Any], Path | None] | None = None,
                outputs: Callable[[Any], str | None] | None = None) -> None:
    """Register `name` on `app`: options from `config_cls`, and `target` ("module:function") runs the config.

    The target is imported only when the command runs, so `--help` stays fast. `out_folder(cfg)` names the folder
    the command writes, locked for the run (one run per folder); `outputs(cfg)`, the line said at the end about
    where its outputs are.
    """
    hints = typing.get_type_hints(config_cls)
    params = []
    list_options, required_options = set(), set()
    own = set(config_cls.__dict__.get("__annotations__", {}))
    ordered = sorted(dataclasses.fields(config_cls), key=lambda f: f.name not in own)  # the command's own options first
    for f in ordered:
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = ...
        names = [option_name(f)]
        annotation = hints[f.name]
        if typing.get_origin(annotation) is list:
            list_options.add(option_name(f))
        if f.metadata.get("required"):
            required_options.add(f.name)
        if annotation in (bool, typing.Optional[bool]):  # Optional: None means "decide from the model"
            flag = option_name(f)
            names = [f"{flag}/--no-{flag[2:]}"]
        params.append(inspect.Parameter(
            f.name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation,
            default=typer.Option(default, *names, help=f.metadata.get("help", ""), show_default=True),
        ))

    def load_config(ctx: typer.Context, value: Path | None) -> Path | None:
        if value is not None:
            ctx.default_map = {**(ctx.default_map or {}), **read_config_file(Path(value), config_cls)}
        return value

    params.append(inspect.Parameter(
        "config", inspect.Parameter.KEYWORD_ONLY, annotation=typing.Optional[Path],
        default=typer.Option(None, "--config", help="YAML (.yaml, .yml) or TOML (.toml) file supplying any of these options "
                             "(command-line options win).", is_eager=True, callback=load_config),
    ))
    params.insert(0, inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context))

    def command(ctx: typer.Context, **kwargs: Any) -> None:
        kwargs.pop("config", None)
        for f in dataclasses.fields(config_cls):  # typer gives tuples for list options
            if isinstance(kwargs.get(f.name), tuple):
                kwargs[f.name] = list(kwargs[f.name])
        cfg = config_cls(**kwargs)
        check_fields(cfg)  # every command: nan, inf, negative, too large or not one of the choices, before any work
        if hasattr(cfg, "validate"):
            cfg.validate()
        folder = out_folder(cfg) if out_folder is not None else None
        quiet_library_noise()
        try:
            with out_lock(folder, name):
                _resolve(target)(cfg)  # its return value is dropped: `run` reads a number from typer as an exit code
        except UserError:
            raise
        except Exception as e:
            if disk_full(e, folder if folder is not None else getattr(cfg, "out", None)):
                raise disk_full_error(name) from None
            raise
        line = outputs(cfg) if outputs is not None else None
        if line:
            print(line, file=sys.stderr)

    command.__signature__ = inspect.Signature(params)
    command.__name__ = name.replace("-", "_")
    command.__doc__ = help
    command_cls = type(f"{command.__name__}_command", (_MultiValueCommand,),
                       {"list_options": frozenset(list_options), "required_options": frozenset(required_options)})
    app.command(name, help=help, cls=command_cls)(command)

