"""The shard reader every command uses (train, negatives, eval): one bad sample is skipped with one warning line
and counted, never stops a pass; only a pass with nothing usable left is refused."""

from __future__ import annotations

import logging

import pytest
from tiny_models import curated_members, synthetic_clip, write_raw_shard, write_tiny_shard

from realbase.errors import UserError
from realdpo.data.clips import MAX_CAPTION_BYTES, ShardReport, cap_caption, expand_shards, iter_shard_samples
from realdpo.data.stream import ShardSamples


@pytest.fixture(scope="module")
def mp4() -> bytes:
    return synthetic_clip(frames=12, seed=4)


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_each_bad_sample_is_skipped_with_one_warning_and_counted(tmp_path, mp4, caplog):
    good = write_tiny_shard(tmp_path / "a.tar", [("good-0000", "a person waves", mp4),
                                                  ("dup-0000", "first copy", mp4)])
    huge = "a person runs " * 400_000  # 5.6 MB
    bad = write_raw_shard(tmp_path / "b.tar", [
        *curated_members("badjson-0000", "ok", mp4, meta=b"{not json"),
        *curated_members("deep-0000", "ok", mp4, meta=b"[" * 100_000 + b"]" * 100_000),  # RecursionError
        *curated_members("list-0000", "ok", mp4, meta=b"[1, 2]"),
        *curated_members("latin1-0000", "caf\xe9".encode("latin-1"), mp4),
        *curated_members("blank-0000", "  \n", mp4),
        *curated_members("nojson-0000", "ok", mp4, meta=None),
        ("nomp4-0000.txt", b"a caption without a clip"),
        *curated_members("dup-0000", "second copy", mp4),
        *curated_members("huge-0000", huge, mp4),
        *curated_members("fine-0000", "a person jumps", mp4),
    ])
    report = ShardReport()
    with caplog.at_level(logging.WARNING, logger="realdpo.data.clips"):
        samples = list(iter_shard_samples([good, bad], report=report))
    assert [s.key for s in samples] == ["good-0000", "dup-0000", "huge-0000", "fine-0000"]
    assert samples[1].caption == "first copy"  # the second copy of a key is dropped, not the first
    assert len(samples[2].caption.encode()) <= MAX_CAPTION_BYTES and huge.startswith(samples[2].caption)
    assert dict(report.skipped) == {"json member not valid JSON": 2, "json member not an object": 1,
                                    "caption not UTF-8": 1, "blank caption": 1, "no json member": 1,
                                    "no mp4 member": 1, "duplicate key": 1}
    assert report.kept == 4 and report.cut_captions == 1
    lines = _warnings(caplog)
    assert all("\n" not in line for line in lines)
    per_sample = [line for line in lines if line.startswith("skipping sample")]
    assert len(per_sample) == 8
    assert any("dup-0000" in line and str(good) in line for line in per_sample)  # names where the first copy is
    assert any("caption of huge-0000" in line for line in lines)
    assert lines[-1].startswith("shards read: 4 usable sample(s); skipped 8")


def test_blank_captions_are_kept_only_when_asked(tmp_path, mp4, caplog):
    shard = write_raw_shard(tmp_path / "s.tar", [*curated_members("blank-0000", "", mp4),
                                                 *curated_members("notxt-0000", "x", mp4)[:1] +
                                                 curated_members("notxt-0000", "x", mp4)[2:]])
    with pytest.raises(UserError, match=r"no usable samples in 1 shard\(s\).*2 blank caption"):
        list(iter_shard_samples([shard]))
    caplog.clear()
    report = ShardReport()
    with caplog.at_level(logging.WARNING, logger="realdpo.data.clips"):
        samples = list(iter_shard_samples([shard], allow_blank_captions=True, report=report))
    assert [(s.key, s.caption) for s in samples] == [("blank-0000", ""), ("notxt-0000", "")]
    assert report.blank_captions == 2 and not report.skipped
    assert _warnings(caplog) == ["shards read: 2 usable sample(s); 2 with a blank caption "
                                 "(kept: --allow-blank-captions)"]


def test_a_corrupt_shard_beside_good_ones_is_skipped_and_counted(tmp_path, mp4, caplog):
    good = write_tiny_shard(tmp_path / "good.tar", [("v-0000", "a person waves", mp4)])
    (tmp_path / "junk.tar").write_bytes(b"junk" * 100)
    whole = write_tiny_shard(tmp_path / "whole.tar", [("w-0000", "one", mp4), ("w-0001", "two", mp4)])
    (tmp_path / "cut.tar").write_bytes(whole.read_bytes()[:len(whole.read_bytes()) * 2 // 3])  # truncated mid-sample
    report = ShardReport()
    with caplog.at_level(logging.WARNING, logger="realdpo.data.clips"):
        keys = [s.key for s in iter_shard_samples([tmp_path / "junk.tar", tmp_path / "cut.tar", good],
                                                  report=report)]
    assert keys[-1] == "v-0000" and "w-0001" not in keys
    assert report.skipped["unreadable or truncated shard"] == 2
    assert any(str(tmp_path / "junk.tar") in line for line in _warnings(caplog))
    with pytest.raises(UserError, match="no usable samples"):
        list(iter_shard_samples([tmp_path / "junk.tar"]))


def test_a_glob_matching_nothing_beside_one_that_matches_is_warned_about(tmp_path, mp4, caplog):
    write_tiny_shard(tmp_path / "s" / "realaction-000000.tar", [("v-0000", "x", mp4)])
    with caplog.at_level(logging.WARNING, logger="realdpo.data.clips"):
        urls = expand_shards([str(tmp_path / "s" / "*.tar"), str(tmp_path / "typo" / "*.tar")])
    assert len(urls) == 1
    assert _warnings(caplog) == [f"--shards {tmp_path / 'typo' / '*.tar'} matches no file "
                                 "(reading the 1 shard(s) the other patterns match)"]
    with pytest.raises(UserError, match="no shard files match"):
        expand_shards([str(tmp_path / "typo" / "*.tar")])


def test_shard_samples_warns_on_its_first_pass_only(tmp_path, mp4, caplog):
    shard = write_raw_shard(tmp_path / "s.tar", [*curated_members("v-0000", "x", mp4),
                                                 *curated_members("bad-0000", "x", mp4, meta=b"{")])
    samples = ShardSamples([str(shard)])
    with caplog.at_level(logging.WARNING, logger="realdpo.data.clips"):
        assert [s.key for s in samples] == ["v-0000"]
        first = len(_warnings(caplog))
        assert [s.key for s in samples] == ["v-0000"]
    assert first == 2 and len(_warnings(caplog)) == first  # the skip and the summary, once
    assert samples.report.skipped["json member not valid JSON"] == 1
    quiet = ShardSamples([str(shard)], warn=False)  # another process of a multi-process run
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="realdpo.data.clips"):
        assert [s.key for s in quiet] == ["v-0000"]
    assert _warnings(caplog) == [] and quiet.report.skipped["json member not valid JSON"] == 1


def test_caption_cap_cuts_at_a_word_boundary_and_keeps_utf8_whole():
    assert cap_caption("short") == "short"
    words = "é" * 3000  # 6000 bytes, no space: cut inside the run, never inside a character
    cut = cap_caption(words)
    assert len(cut.encode()) <= MAX_CAPTION_BYTES and set(cut) == {"é"}
    spaced = cap_caption("word " * 1000)
    assert len(spaced.encode()) <= MAX_CAPTION_BYTES and spaced.endswith("word")
