"""summary.json (counts by reason, score histograms) and the dataset card written beside the shards."""

from __future__ import annotations

import json
from collections import Counter
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from string import Template

import numpy as np

from realaction import __version__
from realbase.files import read_jsonl, write_atomic

# Package data (pyproject's package-data), so an installed wheel writes the same card as a checkout.
CARD_TEMPLATE = resources.files("realaction") / "assets" / "data_card.md"


def _ranked(counts: Counter) -> dict:
    """Most frequent first, ties by name: the same order whichever order sources finished in."""
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], str(kv[0]))))


def _seconds(row: dict) -> float:
    """Seconds of source footage a manifest row covers."""
    return max(0.0, float(row.get("end_s", 0.0)) - float(row.get("start_s", 0.0)))


def build_summary(out: Path) -> dict:
    out = Path(out)
    sources = read_jsonl(out / "sources.jsonl")
    manifest = read_jsonl(out / "manifest.jsonl")
    kept = [r for r in manifest if r.get("kept")]
    by_reason = Counter(r.get("reason") for r in manifest if not r.get("kept"))
    seconds_by_reason = Counter()
    for r in manifest:
        if not r.get("kept"):
            seconds_by_reason[r.get("reason")] += _seconds(r)
    any_reason = Counter(x for r in manifest for x in r.get("reasons", []))
    errors = Counter(r.get("reason") for r in sources if r.get("status") == "error")
    histograms = {}
    keys = sorted({k for r in manifest for k in r.get("scores", {})})
    for key in keys:
        vals, kept_vals = _finite_scores(manifest, key), _finite_scores(kept, key)
        if len(vals) == 0:  # only non-finite values (null in the manifest): nothing to describe
            continue
        lo, hi = float(vals.min()), float(vals.max())
        top = hi
        if hi <= lo:
            hi = lo + 1.0  # one value: a bin of width 1 holds it, but the maximum stays the true one
        counts, edges = np.histogram(vals, bins=10, range=(lo, hi))
        kept_counts, _ = np.histogram(kept_vals, bins=10, range=(lo, hi))
        histograms[key] = {"edges": [round(float(e), 4) for e in edges], "counts": counts.tolist(),
                           "kept_counts": kept_counts.tolist(), "mean": round(float(vals.mean()), 4),
                           "min": round(lo, 4), "max": round(top, 4)}
    configs: dict[str, dict] = {}
    for r in sources:
        if r.get("status") == "done":
            c = configs.setdefault(str(r.get("config_hash")), {"sources": 0, "kept": 0})
            c["sources"] += 1
            c["kept"] += int(r.get("kept") or 0)
    shards = sorted({name for r in sources for name in r.get("shards", [])})
    return {
        "sources": {"total": len(sources), "done": sum(r.get("status") == "done" for r in sources),
                    "error": sum(r.get("status") == "error" for r in sources),
                    "skipped": sum(r.get("status") == "skipped" for r in sources)},
        "source_errors": _ranked(errors),
        "source_skipped": {r.get("source"): r.get("reason") for r in sources if r.get("status") == "skipped"},
        "candidates": len(manifest),
        "kept": len(kept),
        "rejected": len(manifest) - len(kept),
        "kept_seconds": round(sum(_seconds(r) for r in kept), 3),
        "rejected_seconds": round(sum(seconds_by_reason.values()), 3),
        "rejected_by_reason": _ranked(by_reason),
        "rejected_seconds_by_reason": {k: round(seconds_by_reason[k], 3) for k in _ranked(by_reason)},
        "rejected_by_any_reason": _ranked(any_reason),
        "caption_sources": _ranked(Counter(r.get("caption_source") for r in kept)),
        "score_histograms": histograms,
        "shards": shards,
        "configs": dict(sorted(configs.items())),  # config hash -> sources done and clips kept with it
    }


def _finite_scores(rows: list[dict], key: str) -> np.ndarray:
    vals = np.array([v for r in rows if isinstance(v := r.get("scores", {}).get(key), (int, float))], np.float64)
    return vals[np.isfinite(vals)]


def write_summary(out: Path, summary: dict) -> None:
    write_atomic(Path(out) / "summary.json", json.dumps(summary, indent=2, sort_keys=True) + "\n")


def _options_section(summary: dict, config: dict, known: dict[str, dict]) -> str:
    """The options the clips were made with. A folder resumed or rerun with other options holds clips of several
    configurations: each is listed with its sources and clips, and its options as recorded in OUT/configs.json."""
    used = summary.get("configs") or {}
    if len(used) <= 1:
        return f"\n```json\n{json.dumps(config, indent=2, sort_keys=True)}\n```\n"
    lines = [f"\nThese clips were made with {len(used)} different configurations (a rerun into the same folder with "
             "other options keeps the clips already made). Each clip's `json` names its configuration "
             "(`curator.config_hash`), as does each source's row in `sources.jsonl`.\n",
             "| config hash | sources | kept clips |", "| --- | --- | --- |"]
    lines += [f"| `{h}` | {c['sources']} | {c['kept']} |" for h, c in used.items()]
    for h in used:
        options = known.get(h)
        body = (f"```json\n{json.dumps(options, indent=2, sort_keys=True)}\n```" if options is not None
                else "(options not recorded: curated by an older version)")
        lines += ["", f"### `{h}`", "", body]
    return "\n".join(lines) + "\n"


def record_config(out: Path, config_hash: str, config: dict) -> dict[str, dict]:
    """Add this run's options to OUT/configs.json (config hash -> options); returns every recorded one."""
    path = Path(out) / "configs.json"
    known: dict = {}
    if path.is_file():
        try:
            known = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError):
            known = {}
    known = known if isinstance(known, dict) else {}
    known[config_hash] = config
    write_atomic(path, json.dumps(known, indent=2, sort_keys=True) + "\n")
    return known


def write_card(out: Path, summary: dict, config: dict, known_configs: dict[str, dict] | None = None) -> Path:
    """Fill the data-card template (realaction/assets/data_card.md) and write it as OUT/DATA_CARD.md."""
    out = Path(out)
    text = CARD_TEMPLATE.read_text(encoding="utf-8")
    reasons = summary["rejected_by_reason"]
    seconds = summary.get("rejected_seconds_by_reason", {})
    table = "| reason | clips | seconds |\n| --- | --- | --- |\n" + "".join(
        f"| {k} | {v} | {seconds.get(k, 0.0)} |\n" for k, v in reasons.items()) if reasons else "(none)\n"
    errors = summary["source_errors"]
    error_table = "| reason | sources |\n| --- | --- |\n" + "".join(
        f"| {k.replace('|', '/')} | {v} |\n" for k, v in errors.items()) if errors else "(none)\n"
    scores = "| score | mean | min | max |\n| --- | --- | --- | --- |\n" + "".join(
        f"| {k} | {h['mean']} | {h.get('min', h['edges'][0])} | {h.get('max', h['edges'][-1])} |\n"
        for k, h in summary["score_histograms"].items())
    card = Template(text).safe_substitute(
        name=out.name, version=__version__, date=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        src=config.get("src"), sources_done=summary["sources"]["done"], sources_error=summary["sources"]["error"],
        sources_skipped=summary["sources"]["skipped"],
        candidates=summary["candidates"], kept=summary["kept"], kept_seconds=summary["kept_seconds"],
        rejected=summary["rejected"], rejected_seconds=summary["rejected_seconds"], rejected_table=table, error_table=error_table, score_table=scores,
        shards=len(summary["shards"]), caption_sources=", ".join(f"{k}: {v}" for k, v in summary["caption_sources"].items()) or "none",
        config=json.dumps(config, indent=2, sort_keys=True),
        options_section=_options_section(summary, config, known_configs or {}),
    )
    path = out / "DATA_CARD.md"
    write_atomic(path, card)
    return path
