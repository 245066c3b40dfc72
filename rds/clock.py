"""Times as rds shows and stores them: local time, to the second."""

from __future__ import annotations

import time


def now_text(now: float | None = None) -> str:
    """``now`` (default: this moment) as ``YYYY-MM-DDTHH:MM:SS`` in local time."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(time.time() if now is None else now))
