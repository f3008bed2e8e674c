"""Display names that reach a callee's screen: the WebSocket `caller_name`, a SIP From
display name, and through either the VoIP push. One rule for all of them, so that no path
shows a NUL, a line break or a name that reads backwards."""

from __future__ import annotations

import re
import unicodedata

# Characters, after cleaning; CallKit shows about this much on a lock screen.
MAX_DISPLAY_NAME = 64
# What a client may send; longer is refused before any cleaning (docs/protocol.md).
MAX_RAW_DISPLAY_NAME = 256

# Embeddings and overrides (U+202A-U+202E) and isolates (U+2066-U+2069): they reorder
# whatever follows them, so "alice\u202egnp.exe" would read "alice" + "exe.png".
_BIDI_CONTROLS = frozenset(chr(c) for c in (*range(0x202A, 0x202F), *range(0x2066, 0x206A)))
# Line and tab characters separate words: they become one space, not nothing.
_SPACES = frozenset("\t\n\v\f\r\x85\u2028\u2029")
_RUNS_OF_SPACE = re.compile(r"\s+")


def _kept(char: str) -> bool:
    # Cc: C0 and C1 controls, NUL and DEL included. Cs: a lone surrogate is not text.
    return char not in _BIDI_CONTROLS and unicodedata.category(char) not in ("Cc", "Cs")


def _meaningful(char: str) -> bool:
    # A letter, digit, punctuation or symbol: something a person can read.
    return unicodedata.category(char)[0] in "LNPS"


def display_name(raw: str | None, fallback: str) -> str:
    """`raw` without control characters and bidi controls, whitespace collapsed, cut to
    MAX_DISPLAY_NAME characters; `fallback` (the caller's user id) when nothing readable
    is left."""
    if not raw:
        return fallback
    spaced = "".join(" " if c in _SPACES else c for c in raw)
    text = _RUNS_OF_SPACE.sub(" ", "".join(c for c in spaced if _kept(c))).strip()
    text = text[:MAX_DISPLAY_NAME].rstrip()
    return text if any(_meaningful(c) for c in text) else fallback
