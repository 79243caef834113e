"""The CLI shell: help, one-line errors, --config files, shell-expanded globs."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import typer

from cli.main import run
from cli.options import add_command
from realbase.errors import UserError
from realbase.fields import field


def test_help_lists_every_command(capsys):
    assert run(["--help"]) == 0
    out = capsys.readouterr().out
    for name in ("curate", "train", "negatives", "sample", "eval", "demo"):
        assert name in out


def test_console_script_prints_one_line_for_a_bad_option(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "cli.main", "curate", "--src", str(tmp_path / "missing")],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"Error: --src is not a folder: {tmp_path / 'missing'}"]


@pytest.mark.parametrize("argv, message", [
    (["curate"], "--src is required"),
    (["train"], "--shards is required"),
    (["sample"], "--prompt is required"),
    (["eval"], "--videos NAME=DIR is required"),
    (["train", "--shards", "x.tar", "--loss", "ppo"], "unknown --loss 'ppo'"),
])
def test_expected_mistakes_exit_2_with_one_line(argv, message, capsys):
    assert run(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


@dataclass
class _Cfg:
    name: str = field("a", help="A name.")
    count: int = field(1, help="A count.")
    ratio: float = field(0.5, help="A ratio.")
    flag: bool = field(False, help="A flag.")
    paths: list[str] = field(default_factory=list, help="Paths.")


_SEEN: list = []


def _record(cfg):
    _SEEN.append(cfg)


def _app():
    app = typer.Typer()
    add_command(app, "go", _Cfg, _record, "Record the config.")
    add_command(app, "other", _Cfg, _record, "A second command.")
    _SEEN.clear()
    return app


def _invoke(app, argv):
    try:
        app(args=argv, standalone_mode=False)
    except UserError as e:
        return str(e)
    return None


@pytest.mark.parametrize("suffix, text", [
    (".yaml", "name: fromfile\ncount: 7\nflag: true\npaths: [x.tar, y.tar]\n"),
    (".toml", 'name = "fromfile"\ncount = 7\nflag = true\npaths = ["x.tar", "y.tar"]\n'),
])
def test_config_file_supplies_options_and_command_line_wins(tmp_path, suffix, text):
    cfg_file = tmp_path / f"c{suffix}"
    cfg_file.write_text(text)
    app = _app()
    assert _invoke(app, ["go", "--config", str(cfg_file), "--count", "9"]) is None
    cfg = _SEEN[-1]
    assert (cfg.name, cfg.count, cfg.flag, cfg.paths, cfg.ratio) == ("fromfile", 9, True, ["x.tar", "y.tar"], 0.5)


def test_config_file_with_unknown_key_is_a_user_error(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("nmae: typo\n")
    assert "unknown option in config file" in _invoke(_app(), ["go", "--config", str(cfg_file)])
    assert _SEEN == []


def test_shell_expanded_glob_fills_the_list_option_it_follows():
    app = _app()
    assert _invoke(app, ["go", "--paths", "a.tar", "b.tar", "--count", "2", "--paths", "c.tar"]) is None
    assert _SEEN[-1].paths == ["a.tar", "b.tar", "c.tar"] and _SEEN[-1].count == 2


def test_a_stray_word_after_a_scalar_option_is_rejected():
    app = _app()
    with pytest.raises(typer.TyperException, match="unexpected extra argument"):
        _invoke(app, ["go", "--count", "2", "stray"])


@pytest.mark.parametrize("name, text, message", [
    ("c.toml", 'paths = "x.tar"\n', "option 'paths' (--paths) must be a list of strings, got a string ('x.tar')"),
    ("c.toml", "count = 2.5\n", "option 'count' (--count) must be an integer, got a number (2.5)"),
    ("c.toml", "count = true\n", "option 'count' (--count) must be an integer, got a boolean (True)"),
    ("c.yaml", "flag: maybe\n", "option 'flag' (--flag) must be true or false, got a string ('maybe')"),
    ("c.yaml", "name: no\n", "option 'name' (--name) must be a string, got a boolean (False)"),  # YAML 1.1's "no"
    ("c.yaml", "paths: [a.tar, 3]\n", "option 'paths' (--paths) must be a list of strings, got a list"),
    ("c.yaml", "ratio: {a: 1}\n", "option 'ratio' (--ratio) must be a number, got a table"),
    ("c.json", '{"count": 2}', "unknown format .json; name it .toml, .yaml or .yml"),
    ("config", "count: 2\n", "unknown format (no suffix)"),
    ("c.toml", "count = \n", "cannot parse config file"),
    ("c.yaml", "- a\n- b\n", "must hold a mapping"),
])
def test_config_file_mistakes_name_the_file_and_the_option(tmp_path, name, text, message):
    cfg_file = tmp_path / name
    cfg_file.write_text(text)
    error = _invoke(_app(), ["go", "--config", str(cfg_file)])
    assert error is not None and message in error and str(cfg_file) in error and "\n" not in error
    assert _SEEN == []


def test_config_file_numbers_written_as_strings_are_numbers(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("ratio: 1e-4\ncount: '3'\n")  # PyYAML reads 1e-4 (no dot) as a string
    assert _invoke(_app(), ["go", "--config", str(cfg_file)]) is None
    assert (_SEEN[-1].ratio, _SEEN[-1].count) == (1e-4, 3)
    (tmp_path / "bad.yaml").write_bytes(b"name: caf\xe9\n")  # not UTF-8
    assert "cannot read config file" in _invoke(_app(), ["go", "--config", str(tmp_path / "bad.yaml")])


@pytest.mark.parametrize("command, required", [("train", "--shards"), ("negatives", "--shards"), ("curate", "--src"),
                                               ("eval", "--videos")])  # sample takes --prompt or --prompts
def test_help_marks_required_options_and_shows_no_type_after_flags(command, required, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    assert run([command, "--help"]) == 0
    out = capsys.readouterr().out
    assert "<bool>" not in out
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"  {required} "))
    end = next(i for i in range(start + 1, len(lines)) if lines[i].startswith("  -"))
    assert "[required]" in " ".join(lines[start:end])
    assert run([command]) == 2  # still validate's one line, not click's usage error
    assert f"{required}" in capsys.readouterr().err


def test_a_required_option_may_come_from_the_config_file(tmp_path, capsys):
    cfg_file = tmp_path / "c.toml"
    cfg_file.write_text(f'shards = ["{tmp_path}/none-*.tar"]\n')
    assert run(["train", "--config", str(cfg_file)]) == 2
    assert "no shard files match" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["--help"], ["lab", "--help"]])
def test_group_help_shows_no_type_after_flags(argv, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    assert run(argv) == 0
    out = capsys.readouterr().out
    assert "--help" in out and "<bool>" not in out


def _number_options():
    """(command words, option) for every int or float option of the commands that do work."""
    import dataclasses
    import typing

    from realaction.config import CurateConfig
    from realbase.fields import option_name
    from realdpo.configs.eval import EvalConfig
    from realdpo.configs.negatives import NegativesConfig
    from realdpo.configs.sample import SampleConfig
    from realdpo.configs.train import TrainConfig

    for command, cls in (("curate", CurateConfig), ("train", TrainConfig), ("negatives", NegativesConfig),
                         ("sample", SampleConfig), ("eval", EvalConfig)):
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if {hints[f.name], *typing.get_args(hints[f.name])} & {int, float}:
                yield command, option_name(f), float in {hints[f.name], *typing.get_args(hints[f.name])}


@pytest.mark.parametrize("command, option, is_float", list(_number_options()))
def test_every_number_option_refuses_nan_inf_and_negative_in_one_line(command, option, is_float, capsys):
    for bad in (["nan", "inf", "-inf", "-1"] if is_float else ["-1", str(2**64)]):
        assert run([command, option, bad]) == 2, (option, bad)
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"Error: {option} must"), (option, bad, err)


@pytest.mark.parametrize("argv, message", [
    (["train", "--shards", "x.tar", "--lr", "nan"], "--lr must be a finite number, got nan"),
    (["train", "--shards", "x.tar", "--beta", "inf"], "--beta must be a finite number, got inf"),
    (["train", "--shards", "x.tar", "--lr", "50"], "--lr must be at most 1"),
    (["sample", "--prompt", "a", "--guidance", "nan"], "--guidance must be a finite number"),
    (["sample", "--prompt", "a", "--guidance", "1e6"], "--guidance must be at most 100"),
    (["sample", "--prompt", "a", "--fps", "inf"], "--fps must be a finite number"),
    (["sample", "--prompt", "a", "--seed", str(2**32)], "--seed must be at most 4294967295"),
    (["sample", "--prompt", "a", "--seed", "-3"], "--seed must not be negative"),
    (["curate", "--src", ".", "--max-side", "-640"], "--max-side must not be negative"),
    (["curate", "--src", ".", "--fps", "1e9"], "--fps must be at most 1000"),
])
def test_number_options_out_of_range(argv, message, capsys):
    assert run(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def test_a_config_file_number_is_checked_too(tmp_path, capsys):
    (tmp_path / "c.yaml").write_text("shards: [x.tar]\nbeta: .nan\n")
    assert run(["train", "--config", str(tmp_path / "c.yaml")]) == 2
    assert "--beta must be a finite number, got nan" in capsys.readouterr().err


def test_library_validate_checks_numbers_too():
    from realdpo.configs.sample import SampleConfig

    with pytest.raises(UserError, match="--seeds-per-prompt runs past the largest seed"):
        SampleConfig(prompts=Path(__file__), out=Path("o"), seed=2**32 - 1, seeds_per_prompt=2).validate()
    with pytest.raises(UserError, match="--guidance must be a finite number"):
        SampleConfig(prompt="a", guidance=float("nan")).validate()


HELP_COMMANDS = [["curate"], ["train"], ["negatives"], ["sample"], ["eval"], ["demo"], ["lab", "render"],
                 ["lab", "build"], ["lab"], []]


@pytest.mark.parametrize("words", HELP_COMMANDS, ids=lambda w: " ".join(w) or "realdpo")
def test_help_reads_well_at_80_columns_when_piped(words):
    """The real console script's help at COLUMNS=80 into a pipe: no line over 80, every option's name whole and its
    whole description there, descriptions in a column at least 40 characters wide (or below a long name)."""
    import os
    import re

    from cli.main import app

    proc = subprocess.run([sys.executable, "-m", "cli.main", *words, "--help"], capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "80"}, timeout=120)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    out = proc.stdout
    assert max(len(line) for line in out.splitlines()) <= 80
    assert "…" not in out
    squashed = "".join(out.split())
    command = typer.main.get_command(app)
    for w in words:
        command = command.commands[w]
    params = [p for p in command.params if p.name not in ("help",)]
    for p in params:
        for name in p.opts + p.secondary_opts:
            assert f" {name} " in out or f" {name}\n" in out or f"/{name} " in out, name
        assert "".join((p.help or "").split()) in squashed, p.name
    for line in out.splitlines():
        described = re.match(r"  -\S.*?\s{2,}(\S)", line)  # an option and the start of its description
        if described:
            assert described.start(1) <= 40, line
    if hasattr(command, "commands"):
        for sub in command.commands.values():
            assert "".join((sub.help or "").split()) in squashed


def test_version(capsys):
    from importlib.metadata import version

    assert run(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"realdpo {version('realdpo')}"
