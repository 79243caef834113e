"""Text that came from a file (captions, file names, decoder messages) made safe to store and to print, and
warnings that repeat capped at a few of each kind.

A caption keeps ordinary Unicode text; it loses control characters, ANSI/VT escape sequences and the bidi
embedding/override/isolate characters (which can make a caption read differently from what it holds).
Anything printed to the terminal goes through `printable`, which shows control characters as escapes, so no
byte from a file can move the cursor, clear the screen or set the window title.
"""

from __future__ import annotations

import logging
import math
import re
import unicodedata
from collections import Counter

# CSI (ESC [ ... final), OSC (ESC ] ... BEL or ESC \), DCS/SOS/PM/APC strings, two-byte ESC sequences, and the
# 8-bit CSI (U+009B).
_ESCAPES = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]|\x9b[0-?]*[ -/]*[@-~]"
    r"|\x1b[\]PX^_].*?(?:\x07|\x1b\\|\x9c|$)|[\x90\x98\x9d\x9e\x9f].*?(?:\x07|\x1b\\|\x9c|$)"
    r"|\x1b[ -/]*[0-~]",
    re.DOTALL,
)
BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def _is_control(ch: str) -> bool:
    return ch in BIDI_CONTROLS or unicodedata.category(ch) == "Cc"


def clean_caption(text: object) -> str | None:
    """`text` without escape sequences, control or bidi characters, whitespace collapsed; None when it is not a
    string or nothing is left."""
    if not isinstance(text, str):
        return None
    text = _ESCAPES.sub("", text)
    # Whitespace controls (tab, newline) become spaces; the others go.
    text = "".join(" " if ch.isspace() else ("" if _is_control(ch) else ch) for ch in text)
    text = " ".join(text.split())
    return text or None


def printable(value: object, limit: int = 300) -> str:
    """`value` as text safe for a terminal: control, escape and bidi characters shown as \\xNN or \\uNNNN, cut to
    `limit` characters."""
    text = str(value)
    if any(_is_control(ch) for ch in text):
        text = "".join(ch.encode("unicode_escape").decode("ascii") if _is_control(ch) else ch for ch in text)
    return text if len(text) <= limit else text[:limit] + "..."


def finite_or_none(value):
    """Non-finite floats (NaN, +-inf) in a JSON-able value replaced by None, everywhere inside it."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(v) for v in value]
    return value


class CappedWarnings:
    """`warn(kind, message)` logs the first `limit` messages of each kind; `flush()` then says how many more of
    each kind there were, in one line each (and starts counting again)."""

    def __init__(self, log: logging.Logger | None, limit: int = 10):
        self.log, self.limit = log, int(limit)  # log None: count only, say nothing
        self.counts: Counter = Counter()

    def warn(self, kind: str, message: str) -> None:
        self.counts[kind] += 1
        if self.log is not None and self.counts[kind] <= self.limit:
            self.log.warning("%s", printable(message, 500))

    def flush(self) -> None:
        for kind, n in sorted(self.counts.items()):
            if self.log is not None and n > self.limit:
                self.log.warning("... and %d more %s", n - self.limit, kind)
        self.counts.clear()


MAX_CAPTION_BYTES = 4096  # the longest caption curation writes and training reads, in UTF-8 bytes


def cap_caption(text: str) -> str:
    """`text` cut to at most MAX_CAPTION_BYTES of UTF-8, at the last word boundary before the cap."""
    data = text.encode("utf-8")
    if len(data) <= MAX_CAPTION_BYTES:
        return text
    cut = data[:MAX_CAPTION_BYTES].decode("utf-8", "ignore")
    space = cut.rfind(" ")
    return cut[:space] if space > MAX_CAPTION_BYTES // 2 else cut
