"""What rds says it did: the home's log ``log/rds.log`` and, under systemd, the journal.

- ``SystemLogOutputLevel`` (JP1's name, RDSSETFL) chooses how much: 0 nothing, 1 errors,
  2 errors and warnings, 3 (the default) information too.
- Under systemd (stderr is the journal's stream: ``JOURNAL_STREAM``), each line also goes to
  stderr with the kernel-style level prefix the journal reads (``<3>``, ``<4>``, ``<6>``), so that
  ``journalctl -u rdsma`` shows it at its priority.  ``LogFile NO`` leaves the file out.
- The file is reopened when it was moved or removed (logrotate, ``mv rds.log rds.log.1``): a
  resident writes to the new file from its next line on, no signal needed.
- Every line is one line: what other systems said in it is escaped (rds.text).
- ``prune`` removes the install scripts' logs and the residents' ``.out`` files not written for
  ``LogRetention`` days (rdsma between passes, rdsclr).
- An idle SSH session at an upper system (a check-in that handed out nothing, took no result and
  read no package) gets no line of its own: ``idle_session`` counts it in ``run/served-idle`` (one
  short append) and, at most once an hour, one line says them all: ``served N idle session(s) from
  M host(s) since HH:MM``.  A session that did something still says ``served HOST: ...``.
- rds.log itself is rotated by logrotate (``etc/rds.logrotate``, installed by the Debian package:
  weekly, 8 kept, compressed); a home installed otherwise needs the same stanza for its ``log/``.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import sys
import time
from collections.abc import Iterable
from pathlib import Path

from rds import text
from rds.errors import SettingsError
from rds.home import Home

# SystemLogOutputLevel -> the least severe level logged (0: none)
LEVELS = {0: logging.CRITICAL + 10, 1: logging.ERROR, 2: logging.WARNING, 3: logging.INFO}
IDLE_SUMMARY = 3600  # seconds: idle SSH sessions are said together at most this often
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


class Shown(logging.Formatter):
    """One line a message, with what other systems said in it escaped (rds.text): ``tail -f`` stays safe."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        record.message = text.shown(record.message)
        return super().formatMessage(record)


class JournalFormatter(Shown):
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
            handler.setFormatter(Shown(f"%(asctime)s {prog}[{os.getpid()}] %(levelname)s %(message)s"))
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


def idle_session(home: Home, lower: str, log: logging.Logger, now: float | None = None) -> None:
    """Count an idle session of ``lower`` (rds.transport.serve); say the count once IDLE_SUMMARY passed
    since the first one counted (or the clock went back), and start again.  A session that appends to
    the count as another process takes it may go uncounted: a tally, not a record."""
    now = time.time() if now is None else now
    path = home.run / "served-idle"
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, f"{int(now)} {lower}\n".encode())
        head = os.pread(fd, 24, 0).split(b" ", 1)[0]
    finally:
        os.close(fd)
    try:
        since = int(head)
    except ValueError:
        since = 0
    if since <= now < since + IDLE_SUMMARY:
        return
    taken = path.with_name(f"{path.name}.{os.getpid()}")
    try:
        os.rename(path, taken)  # one process takes the count, whichever comes first
    except FileNotFoundError:
        return
    try:
        lines = taken.read_bytes().splitlines()
    finally:
        taken.unlink()
    hosts = {line.split(b" ", 1)[-1] for line in lines}
    when = time.strftime("%H:%M" if now - since < 86400 else "%Y-%m-%d %H:%M", time.localtime(min(since, now)))
    log.info(f"served {len(lines)} idle session(s) from {len(hosts)} host(s) since {when}")
