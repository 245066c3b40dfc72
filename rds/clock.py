"""Times as rds stores and shows them: ISO 8601 to the second, always with the offset.

Stored (and sent to other systems) in UTC, ``2026-12-01T18:57:05+00:00``, so that rows written
by hosts in other time zones compare and sort as one; shown in this host's local time with its
offset (``shown``).  Texts without an offset, as older versions of rds wrote them in local
time, are shown as they are.
"""

from __future__ import annotations

import datetime
import time


def now_text(now: float | None = None) -> str:
    """``now`` (default: this moment) in UTC: ``YYYY-MM-DDTHH:MM:SS+00:00``."""
    t = time.time() if now is None else now
    return datetime.datetime.fromtimestamp(int(t), datetime.UTC).isoformat()


def local_text(t: float) -> str:
    """The epoch time ``t`` in local time with its offset: ``2026-12-01T19:57:05+01:00``."""
    return datetime.datetime.fromtimestamp(int(t)).astimezone().isoformat()


def shown(text: str | None) -> str:
    """A stored time (``now_text``) in local time with its offset; other texts unchanged."""
    if not text:
        return ""
    try:
        when = datetime.datetime.fromisoformat(text)
    except ValueError:
        return text
    if when.tzinfo is None:
        return text
    return when.astimezone().isoformat()
