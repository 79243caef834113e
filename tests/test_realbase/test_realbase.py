"""realbase: the shared helpers both halves use (atomic files, choices, one-line errors, model-folder code)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Optional

import pytest

from realbase.errors import UserError, one_line
from realbase.fields import check_choices, field, one_of
from realbase.files import atomic_dir, atomic_file, read_jsonl, write_atomic
from realbase.folders import folder_code


def test_write_atomic_replaces_whole_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "a.json"
    write_atomic(path, "old")
    write_atomic(path, b"new")
    assert path.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_a_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "a.bin"
    path.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_file(path) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.bin"]


def test_atomic_dir_replaces_or_keeps_the_winner(tmp_path):
    final = tmp_path / "model"
    with atomic_dir(final) as tmp:
        (tmp / "x").write_text("1")
    with atomic_dir(final) as tmp:  # replaces
        (tmp / "x").write_text("2")
    assert (final / "x").read_text() == "2"
    with atomic_dir(final, if_absent=True) as tmp:  # another process built it first: theirs stays
        (tmp / "x").write_text("3")
    assert (final / "x").read_text() == "2"
    with pytest.raises(ValueError), atomic_dir(tmp_path / "other") as tmp:
        raise ValueError
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_read_jsonl_skips_a_torn_last_line(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps({"a": 1}) + "\n" + '{"b": ')
    assert read_jsonl(path) == [{"a": 1}]


@dataclass
class _Options:
    mode: str = field("fast", choices=("fast", "slow"), help="How.")
    extra: Optional[str] = field(None, choices=("x",), flag="--extra-mode", help="Optional one.")


def test_choices_are_checked_in_one_line():
    check_choices(_Options())
    with pytest.raises(UserError, match=r"^unknown --mode 'quick'; choose one of fast, slow$"):
        check_choices(_Options(mode="quick"))
    with pytest.raises(UserError, match=r"^unknown --extra-mode 'y'; choose one of x$"):
        check_choices(_Options(extra="y"))
    with pytest.raises(ValueError, match="unknown kind 'z'"):
        one_of("z", ("a",), "kind", ValueError)


def test_one_line():
    e = ValueError("first line\n  second line")
    assert one_line(e) == "first line second line"
    assert one_line(e, first_line=True, typed=True) == "ValueError: first line"
    assert one_line(KeyError()) == "KeyError"
    assert one_line(ValueError("x" * 400), 10) == "x" * 10 + "..."


def test_folder_code_finds_auto_map(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    assert folder_code(tmp_path) is None
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"auto_map": {"AutoTokenizer": "evil.Tok"}}))
    assert folder_code(tmp_path) == ("tokenizer_config.json", "evil.Tok")
