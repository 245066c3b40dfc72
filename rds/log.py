"""What rds says it did: the home's log ``log/rds.log`` and, under systemd, the journal.

- ``SystemLogOutputLevel`` (JP1's name, RDSSETFL) chooses how much: 0 nothing, 1 errors,
  2 errors and warnings, 3 (the default) information too.
- Under systemd (stderr is the journal's stream: ``JOURNAL_STREAM``), each line also goes to
  stderr with the kernel-style level prefix the journal reads (``<3>``, ``<4>``, ``<6>``), so that
  ``journalctl -u rdsma`` shows it at its priority.  ``LogFile NO`` leaves the file out.
- The file is reopened when it was moved or removed (logrotate, ``mv rds.log rds.log.1``): a
  resident writes to the new file from its next line on, no signal needed.
- ``prune`` removes the install scripts' logs and the residents' ``.out`` files not written for
  ``LogRetention`` days (rdsma between passes, rdsclr).
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import sys
import time
from collections.abc import Iterable
from pathlib import Path

from rds.errors import SettingsError
from rds.home import Home

# SystemLogOutputLevel -> the least severe level logged (0: none)
LEVELS = {0: logging.CRITICAL + 10, 1: logging.ERROR, 2: logging.WARNING, 3: logging.INFO}
# Python's levels -> syslog priorities, as sd-daemon(3) prefixes read them
PRIORITIES = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


def under_journal(stream: object = None) -> bool:
    """True if ``stream`` (default stderr) is the journal's: systemd's JOURNAL_STREAM names it."""
    value = os.environ.get("JOURNAL_STREAM", "")
    fileno = getattr(stream if stream is not None else sys.stderr, "fileno", None)
    if ":" not in value or fileno is None:
        return False
    try:
        st = os.fstat(fileno())
        dev, ino = (int(x) for x in value.split(":", 1))
    except (OSError, ValueError):
        return False
    return (st.st_dev, st.st_ino) == (dev, ino)


class JournalFormatter(logging.Formatter):
    """``<PRIORITY>message``: the journal takes the priority from the prefix and adds the time."""

    def format(self, record: logging.LogRecord) -> str:
        prio = PRIORITIES.get(record.levelno, 6)
        return "\n".join(f"<{prio}>{line}" for line in super().format(record).splitlines() or [""])


def logger(home: Home) -> logging.Logger:
    name = f"rds.{home.path}"
    log = logging.getLogger(name)
    if not log.handlers:
        try:
            settings = home.settings
            level, to_file = LEVELS[settings.system_log_level], settings.log_file
        except SettingsError:  # the command says so itself; its log still works
            level, to_file = logging.INFO, True
        prog = Path(sys.argv[0]).name or "rds"
        if to_file:
            handler: logging.Handler = logging.handlers.WatchedFileHandler(home.log_dir / "rds.log",
                                                                           encoding="utf-8")
            handler.setFormatter(logging.Formatter(f"%(asctime)s {prog}[{os.getpid()}] %(levelname)s %(message)s"))
            log.addHandler(handler)
        if under_journal():
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(JournalFormatter("%(message)s"))
            log.addHandler(handler)
        if not log.handlers:
            log.addHandler(logging.NullHandler())
        log.setLevel(level)
        log.propagate = False
    return log


def prune(home: Home, now: float | None = None, keep: Iterable[str] = ()) -> list[Path]:
    """Remove install logs and ``.out`` files older than LogRetention; ``keep``: residents' names whose
    ``.out`` stays (they run).  Returns what was removed."""
    retention = home.settings.log_retention
    if not retention:
        return []
    cutoff = (time.time() if now is None else now) - retention
    kept = {f"{name}.out" for name in keep}
    candidates = [*_files(home.install_logs), *(p for p in _files(home.log_dir) if p.suffix == ".out")]
    removed = []
    for path in candidates:
        try:
            if path.name in kept or path.stat().st_mtime >= cutoff:
                continue
            path.unlink()
        except FileNotFoundError:
            continue
        removed.append(path)
    return removed


def _files(directory: Path) -> list[Path]:
    try:
        return [p for p in directory.iterdir() if p.is_file() and not p.is_symlink()]
    except FileNotFoundError:
        return []
