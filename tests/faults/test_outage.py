"""The managing server unreachable for 10 polls while jobs and results wait (issue 7, point 4)."""

from __future__ import annotations

import re
from pathlib import Path

from faults.conftest import trials
from faults.runners import outage


def test_outage_of_ten_polls_loses_nothing(tmp_path: Path) -> None:
    """One outage on this machine (the upper home moved away), one over SSH (sshd stopped)."""
    n = trials(2, 4)
    row = outage(tmp_path, n, seed=11)
    assert row.failed == [], row
    assert (row.trials, row.lost, row.doubled) == (n, 0, 0) and row.ok, row
    local, ssh = row.notes[:2]
    for note, how, why in ((local, "local", "no such directory"), (ssh, "ssh", "connection refused")):
        m = re.fullmatch(rf"{how}: (\d+) failed polls logged, saying: (.*)", note)
        assert m is not None and int(m.group(1)) >= 10 and why in m.group(2), note
