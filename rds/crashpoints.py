"""A test hook: named points where the test suite makes a command die as ``kill -9`` would.

``RDS_CRASH_AT=name[,name...]`` kills the process with SIGKILL when it
reaches one of the named points (``name@N`` on the N-th time it reaches it).
It is for tests only (rds(7)): ``check`` refuses a malformed value or an
unknown point with one line and exit 2 before a command starts, and the
children that rds starts detached (startup requests, residents, install
scripts) never inherit it, so a stray variable in an operator's shell cannot
kill the passes it wakes.  A test that wants a detached child to die sets
``RDS_CRASH_AT_CHILDREN``: children get its value as their ``RDS_CRASH_AT``.
Unset, ``reach`` costs one dictionary look-up.
"""

from __future__ import annotations

import os
import signal

from rds.errors import SettingsError

VARIABLE, FOR_CHILDREN = "RDS_CRASH_AT", "RDS_CRASH_AT_CHILDREN"

# Every point that rds reaches (``reach`` is called with one of these names).
POINTS = frozenset({"checked-in", "stored", "acked", "fetched", "downloading", "installing", "extracted",
                    "script-started", "installed", "reported", "cleanup-settled"})

_counts: dict[str, int] = {}


def parse(spec: str, variable: str = VARIABLE) -> list[tuple[str, int | None]]:
    """The points of ``spec`` with their counts (None: every time); a SettingsError if malformed."""
    out: list[tuple[str, int | None]] = []
    for item in spec.split(","):
        point, at, nth = item.strip().partition("@")
        if point not in POINTS:
            raise SettingsError(f"{variable}={spec!r}: {point!r} is not a crash point (a test hook: "
                                f"unset it; points: {', '.join(sorted(POINTS))})")
        if at and not (nth.isascii() and nth.isdigit() and int(nth) > 0):
            raise SettingsError(f"{variable}={spec!r}: {item.strip()!r}: after '@' give a count from 1 "
                                f"(a test hook: unset it)")
        out.append((point, int(nth) if at else None))
    return out


def check() -> None:
    """Refuse a malformed ``RDS_CRASH_AT`` or ``RDS_CRASH_AT_CHILDREN`` (commands call this first)."""
    for variable in (VARIABLE, FOR_CHILDREN):
        if spec := os.environ.get(variable):
            parse(spec, variable)


def reach(name: str) -> None:
    spec = os.environ.get(VARIABLE)
    if not spec:
        return
    _counts[name] = _counts.get(name, 0) + 1
    for point, nth in parse(spec):
        if point == name and (nth is None or nth == _counts[name]):
            os.kill(os.getpid(), signal.SIGKILL)


def child_env(**extra: str) -> dict[str, str]:
    """The environment for a child that rds starts: without the hook, unless a test asked for it."""
    env = {k: v for k, v in os.environ.items() if k not in (VARIABLE, FOR_CHILDREN)}
    if spec := os.environ.get(FOR_CHILDREN):
        env[VARIABLE] = spec
    return {**env, **extra}
