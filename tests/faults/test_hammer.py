"""Concurrency: rdsma, rdsft -a, rdsclr, rdsgroupid -d and rdsdlv hammering one home while jobs keep arriving
(tests/faults/hammer.py).  No corruption, no deadlock, every job installed exactly once and taken as COMPLETE
exactly once at the managing server (counted outside rds), while rdsclr evicts old versions.

RDS_HAMMER_SECONDS sets how long (15 s by default; bench/faults runs the full 60 s).
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

from faults.hammer import hammer

SECONDS = float(os.environ.get("RDS_HAMMER_SECONDS", 15))


def test_hammer_one_home(tmp_path: Path) -> None:
    outcome = hammer(tmp_path / "hammer", SECONDS)
    problems = outcome.problems()
    assert not problems, f"{len(problems)} problem(s):\n" + "\n".join(problems[:40])
    ran = Counter(call.args[0] for call in outcome.calls)
    for command in ("dcmjexe", "rdsft", "rdsclr", "rdsgroupid", "rdsdlv", "rdsma"):
        assert ran[command] >= 3, f"{command} ran only {ran[command]} time(s): {dict(ran)}"
    assert len(outcome.created) >= 5
    assert sorted(outcome.installs.elements()) == outcome.created  # each job's script ran once, by its own record
    assert all(outcome.outcomes.get(j) == ["COMPLETE"] for j in outcome.created), outcome.outcomes
    assert outcome.evictions > 0, "rdsclr evicted nothing: the hammer did not test eviction"
