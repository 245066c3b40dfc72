"""A full disk under the storehouse, the install directory and the state database (issue 7, point 3).

Each case mounts a small tmpfs (root only; under CI=true as root it never skips).
"""

from __future__ import annotations

import os
import random
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from faults import runners

pytestmark = pytest.mark.skipif(os.geteuid() != 0 and os.environ.get("CI") != "true",
                                reason="mounting a small tmpfs needs root")


def check(case: Callable[[Path, random.Random, runners.Row], None], tmp_path: Path) -> runners.Row:
    row = runners.Row("disk full")
    assert case(tmp_path, random.Random(3), row), f"the disk did not fill: {row}"
    assert row.failed == [] and row.lost == 0 and row.doubled == 0 and row.jobs > 0, row
    return row


def test_storehouse_full_fails_clearly_then_resumes(tmp_path: Path) -> None:
    """Bug: a download that filled the disk ended in 'rdsft: disk full', naming no file and not
    saying that the bytes received are kept; now the .part file is named and the next run resumes."""
    row = check(runners._full_storehouse, tmp_path)
    line = row.notes[0]
    assert re.search(r"(\.part|\.chunks): disk full; the ", line) and "the next run resumes" in line, line
    assert not any("from byte 0" in n for n in row.notes), row.notes


def test_install_dir_full_is_that_jobs_error_once(tmp_path: Path) -> None:
    """Bug: an install that filled the disk reported 'C.AB.X.1.0000: : No space left on device'
    (an empty file name); now it says 'disk full'.  The job ends ERROR once; a new job completes."""
    row = check(runners._full_install_dir, tmp_path)
    assert ": : " not in row.notes[0], row.notes


def test_state_db_full_is_a_system_error(tmp_path: Path) -> None:
    """Bug: a full disk under GROUP/ gave exit 2 (a settings error) and 'disk I/O error';
    now it is exit 254 and 'disk full', and nothing is lost when space comes back."""
    row = check(runners._full_state_db, tmp_path)
    assert "exit 254" in row.notes[0], row.notes


def test_disk_full_row(tmp_path: Path) -> None:
    from faults.conftest import trials

    n = trials(3, 3)
    row = runners.disk_full(tmp_path, n, seed=5)
    assert (row.trials, row.lost, row.doubled, row.failed, row.crashed) == (n, 0, 0, [], None) and row.ok, row
