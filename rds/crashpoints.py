"""Named points where tests make a command die as ``kill -9`` would.

``RDS_CRASH_AT=name[,name...]`` kills the process with SIGKILL when it
reaches one of the named points (``name@N`` on the N-th time it reaches it).
Unset, ``reach`` costs one dictionary look-up.
"""

from __future__ import annotations

import os
import signal

_counts: dict[str, int] = {}


def reach(name: str) -> None:
    spec = os.environ.get("RDS_CRASH_AT")
    if not spec:
        return
    _counts[name] = _counts.get(name, 0) + 1
    for item in spec.split(","):
        point, _, nth = item.partition("@")
        if point == name and (not nth or int(nth) == _counts[name]):
            os.kill(os.getpid(), signal.SIGKILL)
