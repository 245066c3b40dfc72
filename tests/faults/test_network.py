"""A link cut 20 times during one 256 MiB transfer over SSH (issue 7, point 2).

By default 10 cuts of a 128 MiB package (the same density of cuts);
RDS_FAULT_TRIALS=full runs bench/faults' 20 cuts of 256 MiB.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import sshd

from faults.conftest import trials
from faults.runners import network

pytestmark = pytest.mark.skipif(not sshd.have_sshd() and os.environ.get("CI") != "true",
                                reason="OpenSSH's sshd is not installed (bin/rds-test installs it)")


def test_cut_link_resumes_and_moves_at_most_1_1_times_the_package(tmp_path: Path) -> None:
    n = trials(10, 20)
    row = network(tmp_path, n, seed=13, size=(256 << 20) * n // 20)
    assert row.failed == [], row
    assert (row.trials, row.survived, row.lost, row.doubled) == (n, n, 0, 0), row
