"""Events the tests wait for instead of sleeping: what a process is doing, who last held a lock, whether a
signal was delivered.  Linux /proc only (as the suite's sshd and setpriv tests)."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path


def pass_owner(home: Path, lock: str = "rdsft") -> int | None:
    """The pid of the last process that took the home's lock (its owner file stays after release)."""
    try:
        return int(json.loads((home / "run" / f"{lock}.owner").read_text())["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def gone(pid: int) -> bool:
    """The process has ended (a zombie counts: it does nothing more)."""
    try:
        os.kill(pid, 0)
        return _stat(pid)[0] == "Z"
    except (ProcessLookupError, FileNotFoundError):
        return True


def asleep_in(pid: int, *kernel_functions: str) -> bool:
    """The process sleeps in one of the named kernel functions (/proc/PID/wchan), e.g. "nanosleep"."""
    try:
        wchan = Path(f"/proc/{pid}/wchan").read_text()
    except OSError:
        return False
    return any(f in wchan for f in kernel_functions)


def delivered(pid: int, sig: signal.Signals) -> bool:
    """No ``sig`` is pending for the process any more: it was delivered (or the process is gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return True
    bit = 1 << (sig - 1)
    pending = [int(line.split()[1], 16) for line in status.splitlines() if line.startswith(("SigPnd:", "ShdPnd:"))]
    return not any(p & bit for p in pending)


def _stat(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()
