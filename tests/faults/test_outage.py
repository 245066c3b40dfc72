"""The managing server unreachable for 10 polls while jobs and results wait (issue 7, point 4)."""

from __future__ import annotations

from pathlib import Path

from faults.conftest import trials
from faults.runners import outage


def test_outage_of_ten_polls_loses_nothing(tmp_path: Path) -> None:
    n = trials(1, 3)
    row = outage(tmp_path, n, seed=11)
    assert row.failed == [], row
    assert (row.trials, row.survived, row.lost, row.doubled) == (n, n, 0, 0), row
    assert all("10 failed polls" in note or "failed polls" in note for note in row.notes), row.notes
