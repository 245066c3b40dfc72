"""Showing other systems' text safely: what a lower system, a package or a script wrote.

A result message, a host name, a package field or a line of a script's
output may hold terminal control sequences (``ESC[2K`` erases a line, OSC
sets the window title): printed raw, they can hide an ERROR row or forge a
COMPLETE one.  Everything such text passes through on its way to a terminal
or a log (the tables and error lines of rds.cli, rds.log's lines) is
``shown``: control characters, and the invisible ones that reorder or hide
text (bidirectional overrides, zero-width characters), become visible escapes
(``\\x1b``, ``\\n``, ``\\u202e``).  Tables also ``cut`` long texts; the whole
text stays in ``--json`` (exact, escaped only as JSON escapes) and in the log.
"""

from __future__ import annotations

import re
import unicodedata

CELL = 120  # a table's cell shows at most this many characters
LINE = 2000  # an error line, at most

# C0 and C1 controls and DEL are escaped; of the other non-ASCII characters, only the
# invisible ones (categories Cf, Zl, Zp: bidi overrides, zero-width, line separators)
_HIDDEN = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]|[^\x00-\x7f]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(m: re.Match[str]) -> str:
    c = m.group()
    if c in _NAMED:
        return _NAMED[c]
    n = ord(c)
    if n < 0x80 or 0x80 <= n <= 0x9f:
        return f"\\x{n:02x}"
    if unicodedata.category(c) in ("Cf", "Zl", "Zp", "Cc"):
        return f"\\u{n:04x}" if n <= 0xFFFF else f"\\U{n:08x}"
    return c


def shown(text: object) -> str:
    """``text`` with its control and invisible characters escaped: safe on a terminal, one line."""
    s = text if isinstance(text, str) else str(text)
    if s.isascii() and s.isprintable():  # the usual case, at C speed
        return s
    return _HIDDEN.sub(_escape, s)


def cut(text: str, width: int = CELL) -> str:
    """``text`` shortened to ``width`` characters, ending in "..." when it was longer."""
    return text if len(text) <= width else text[:width - 3] + "..."


def cell(value: object, width: int = CELL) -> str:
    """A table cell: shown, then cut."""
    return cut(shown(value), width)
