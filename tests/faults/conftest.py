"""Trial counts for the fault tests: small by default, ``RDS_FAULT_TRIALS`` scales them.

``RDS_FAULT_TRIALS=full`` runs the counts of bench/faults (100 kills, 20 cuts
of 256 MiB...); a number multiplies the small defaults.
"""

from __future__ import annotations

import os

import pytest


def trials(small: int, full: int) -> int:
    spec = os.environ.get("RDS_FAULT_TRIALS", "")
    if spec == "full":
        return full
    if spec:
        try:
            return max(1, int(float(spec) * small))
        except ValueError:
            raise pytest.UsageError(f"RDS_FAULT_TRIALS={spec!r}: give 'full' or a factor") from None
    return small


def running_as_root() -> bool:
    return os.geteuid() == 0
