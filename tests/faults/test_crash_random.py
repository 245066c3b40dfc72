"""kill -9 of rdsft -a, rdsma and rdssnd at random moments in a four-level tree (issue 7, point 1)."""

from __future__ import annotations

from pathlib import Path

from faults.conftest import trials
from faults.runners import crash


def test_random_kills_lose_nothing_and_double_nothing(tmp_path: Path) -> None:
    n = trials(4, 100)
    row = crash(tmp_path, n, seed=7)
    assert row.failed == [], row
    assert (row.trials, row.lost, row.doubled) == (n, 0, 0) and row.ok, row
