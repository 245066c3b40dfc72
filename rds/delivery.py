"""The distribution situation file: where each package stands for each destination.

A home records it only while its distribution status server facility
(``rdsdlvse``) runs; ``rdsdlv`` shows and deletes entries, ``rdsdlvclr``
starts the file afresh.  It is a SQLite file of its own, at
``OutPutFileOfDeliveryStatus`` (default ``GROUP/delivery.db`` in the home),
with its own schema version (``PRAGMA user_version``, SCHEMA below).

One entry per destination + packager type + package ID (JP1's rule): a
re-delivery of the package -- another cabinet, version or generation, a later
job -- overwrites the older entry.  For the same job a status replaces the
entry's, except that COMPLETE and ERROR are final and KEEPING only begins an
entry; a status of an older job never replaces a newer job's.  At most
``OrderOfDeliveryStatus`` entries are kept: the ones changed longest ago go
first (``seq`` orders the changes).

Nothing calls this module to record: it listens.  The modules that change a
job announce what happened (rds.events) on the state database, and
``Listener``, attached to every database a home opens for work
(rds.session), turns what it hears into statuses after each commit:

=================  ===========================================================
event              status
=================  ===========================================================
Received           KEEPING
Kept               KEEP, or KEEP_ERROR for the jobs whose package is missing
Started            CLT_START, CLT_START_ERROR, or CLT_WAIT when none was sent
Handed             INS_WAIT
Reading, Installing  GEN_START
Ended              COMPLETE, ERROR, SETUP_ERROR; CLT_START_ERROR for EXEC-ERROR
                   and LINE-DOWN
=================  ===========================================================

When the statuses are recorded (see rdsdlv(1)):

=================  ===========================================================
KEEPING (10)       the job was received and stored; its package is not here yet
KEEP (20)          the job's package is in the package storehouse
KEEP_ERROR (2f)    fetching or storing the package failed (the pass retries)
CLT_START (30)     a startup request to the lower system toward the destination
                   succeeded
CLT_START_ERROR    it failed, or a lower system reported EXEC-ERROR/LINE-DOWN
(3f)
CLT_WAIT (90)      no startup request was sent (``.cltwup_off``, or no startup
                   address): the job waits for the lower system's poll
INS_WAIT (40)      the lower system toward the destination took the job (ack)
GEN_START (50)     the install began: this host's own, or the destination
                   itself (a host directly below) began reading the package
COMPLETE (60), ERROR (70), SETUP_ERROR (80)
                   the result, of this host's install or reported from below
=================  ===========================================================

Recording is best effort: a failure is logged and never fails the work that
was announced.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from rds import codes, daemon, events, jobs
from rds.database import Schema, open_db
from rds.errors import AlreadyRunning, InputError, NotRunning, SettingsError
from rds.events import AJob
from rds.home import Home
from rds.log import logger
from rds.packages import check_field

FACILITY = "rdsdlvse"
DEFAULT_NAME = "delivery.db"  # in the home's GROUP/
CODES = codes.DELIVERY_STATUS_CODES
CHECK_EVERY = 1.0  # seconds a recorder trusts what it saw of the facility
TRIM_EVERY = 256  # changes between two trims by a recorder
MESSAGE_MAX = 2000

# NORMAL, not FULL as in rds.db: a power loss may lose the last status changes (never the
# file's consistency).  They describe what rds.db holds durably and the next event rewrites them;
# a change then costs tens of microseconds instead of an fsync.
SCHEMA = Schema("distribution situation file", 1, {
    1: [
        """CREATE TABLE entries (
            dest       TEXT NOT NULL,
            packager   TEXT NOT NULL,
            package    TEXT NOT NULL,
            cabinet    TEXT NOT NULL,
            version    TEXT NOT NULL,
            generation TEXT NOT NULL,
            job_no     INTEGER NOT NULL,
            job_type   TEXT NOT NULL,
            status     TEXT NOT NULL,
            code       TEXT NOT NULL,
            updated    REAL NOT NULL,
            message    TEXT NOT NULL,
            seq        INTEGER NOT NULL UNIQUE,  -- order of the changes: the lowest goes first
            PRIMARY KEY (dest, packager, package)
        ) WITHOUT ROWID""",  # kept in display order: rdsdlv reads it front to back
    ],
}, synchronous="NORMAL")
SCHEMA_VERSION = SCHEMA.version

COLUMNS = ("dest", "packager", "cabinet", "package", "version", "generation", "job_no", "job_type",
           "status", "code", "updated", "message")

# The upsert carries the overwrite rule (module docstring).
_PUT = f"""INSERT INTO entries ({', '.join(COLUMNS)}, seq)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, (SELECT COALESCE(MAX(seq), 0) + 1 FROM entries))
    ON CONFLICT (dest, packager, package) DO UPDATE SET
        cabinet=excluded.cabinet, version=excluded.version, generation=excluded.generation,
        job_no=excluded.job_no, job_type=excluded.job_type, status=excluded.status, code=excluded.code,
        updated=excluded.updated, message=excluded.message, seq=excluded.seq
    WHERE excluded.job_no > entries.job_no
       OR (excluded.job_no = entries.job_no AND entries.status NOT IN ('COMPLETE', 'ERROR')
           AND excluded.status <> 'KEEPING')"""


def path_of(home: Home) -> Path:
    return home.settings.delivery_status_file or home.group / DEFAULT_NAME


def running(home: Home) -> int | None:
    """The pid of the home's distribution status server facility, if it runs."""
    return daemon.running_pid(home, FACILITY)


def connect(path: Path) -> sqlite3.Connection:
    """Open the file, creating or upgrading its schema."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SettingsError(f"{path}: cannot open the distribution situation file: {e.strerror or e}") from None
    return open_db(path, SCHEMA, timeout=30, threads=True)


@dataclasses.dataclass(frozen=True)
class Entry:
    dest: str
    packager: str
    cabinet: str
    package: str
    version: str
    generation: str
    job_no: int
    job_type: str
    status: str
    code: str
    updated: float
    message: str


def entry(job: AJob, status: str, message: str = "", now: float | None = None) -> Entry:
    p = job.package
    return Entry(job.dest, p.packager, p.cabinet, p.package, p.version, p.generation, job.job_no, job.type,
                 status, CODES[status], time.time() if now is None else now, message[:MESSAGE_MAX])


class File:
    """An open distribution situation file."""

    def __init__(self, path: Path, order: int) -> None:
        self.path = path
        self.order = order
        self.db = connect(path)
        self.changes = 0  # since the last trim
        self.lock = threading.Lock()

    def close(self) -> None:
        self.db.close()

    def put(self, entries: Iterable[Entry]) -> None:
        """Record status changes, in one commit."""
        rows = [dataclasses.astuple(e) for e in entries]
        if not rows:
            return
        with self.lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                self.db.executemany(_PUT, rows)
                self.changes += len(rows)
                if self.changes >= min(TRIM_EVERY, max(1, self.order // 16)):
                    self._trim()
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise

    def _trim(self) -> int:
        self.changes = 0
        row = self.db.execute("SELECT seq FROM entries ORDER BY seq DESC LIMIT 1 OFFSET ?", (self.order,)).fetchone()
        if row is None:
            return 0
        return self.db.execute("DELETE FROM entries WHERE seq <= ?", (row[0],)).rowcount

    def trim(self) -> int:
        """Keep only the ``order`` entries changed last; returns how many went."""
        with self.lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                n = self._trim()
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            return n

    def current(self, keys: Iterable[tuple[str, str, str]]) -> dict[tuple[str, str, str], tuple[int, str]]:
        """(dest, packager, package) -> (job_no, status) of the entries there are."""
        out = {}
        for k in set(keys):
            row = self.db.execute("SELECT job_no, status FROM entries WHERE dest=? AND packager=? AND package=?",
                                  k).fetchone()
            if row is not None:
                out[k] = (int(row[0]), str(row[1]))
        return out

    def select(self, f: Filter, columns: Sequence[str] = COLUMNS) -> list[tuple[Any, ...]]:
        """The selected entries in display order; ``columns`` may be SQL expressions."""
        where, args = f.sql()
        return self.db.execute(f"SELECT {', '.join(columns)} FROM entries{where}"
                               " ORDER BY dest, packager, package", args).fetchall()

    def delete(self, f: Filter) -> int:
        where, args = f.sql()
        with self.lock:
            return self.db.execute(f"DELETE FROM entries{where}", args).rowcount


def open_file(home: Home) -> File:
    return File(path_of(home), home.settings.delivery_status_order)


# -- filters (rdsdlv) ------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class PackageFilter:
    """``type.cabinet.pkgID[.version[.generation]]``: a shorter ID matches every version or generation."""

    packager: str
    cabinet: str
    package: str
    version: str | None = None
    generation: str | None = None

    @classmethod
    def parse(cls, text: str) -> PackageFilter:
        parts = text.split(".")
        if not 3 <= len(parts) <= 5:
            raise InputError(f"bad package ID {text!r} (expected TYPE.CABINET.PACKAGE[.VERSION[.GENERATION]])")
        try:
            names = ("packager", "cabinet", "package", "version", "generation")
            fields = [check_field(n, v) for n, v in zip(names, parts, strict=False)]
        except InputError as e:
            raise InputError(f"bad package ID {text!r}: {e}") from None
        if len(fields) == 5:
            fields[4] = f"{int(fields[4]):04d}" if fields[4].isdigit() else fields[4]
        return cls(*fields)  # type: ignore[arg-type]

    def sql(self) -> tuple[str, list[Any]]:
        names = ("packager", "cabinet", "package", "version", "generation")
        values = dataclasses.astuple(self)
        used = [(n, v) for n, v in zip(names, values, strict=True) if v is not None]
        return "(" + " AND ".join(f"{n}=?" for n, _ in used) + ")", [v for _, v in used]


@dataclasses.dataclass(frozen=True)
class Filter:
    """The entries ``rdsdlv`` selects: the filters combine with AND, the values of one with OR."""

    dests: Sequence[str] = ()
    statuses: Sequence[str] = ()
    packages: Sequence[PackageFilter] = ()
    jobs: Sequence[int] = ()

    @property
    def empty(self) -> bool:
        return not (self.dests or self.statuses or self.packages or self.jobs)

    def sql(self) -> tuple[str, list[Any]]:
        terms, args = [], []
        for column, values in (("dest", self.dests), ("status", self.statuses), ("job_no", self.jobs)):
            if values:
                terms.append(f"{column} IN ({', '.join('?' * len(values))})")
                args += list(values)
        if self.packages:
            parts = [p.sql() for p in self.packages]
            terms.append("(" + " OR ".join(s for s, _ in parts) + ")")
            args += [a for _, a_ in parts for a in a_]
        return (" WHERE " + " AND ".join(terms) if terms else ""), args


def parse_status(text: str) -> str:
    """A status name or its JP1 code, in any case."""
    word = text.upper()
    if word in CODES:
        return word
    for name, code in CODES.items():
        if code.upper() == word:
            return name
    raise InputError(f"unknown status {text!r} (one of {', '.join(CODES)}, or its code)")


# -- recording -------------------------------------------------------------

class _Recorder:
    """What a process saw of one home's facility, and the file it records into while it runs."""

    def __init__(self, home: Home) -> None:
        self.home = home
        self.file: File | None = None
        self.checked = -CHECK_EVERY

    def active(self) -> File | None:
        now = time.monotonic()
        if now - self.checked >= CHECK_EVERY:  # a look at the life lock, at most once a second
            self.checked = now
            if running(self.home) is None:
                if self.file is not None:
                    self.file.close()
                    self.file = None
            elif self.file is None:
                self.file = open_file(self.home)
        return self.file


_recorders: dict[Path, _Recorder] = {}
_recorders_lock = threading.Lock()


def _active(home: Home) -> File | None:
    with _recorders_lock:
        rec = _recorders.get(home.path)
        if rec is None:
            rec = _recorders[home.path] = _Recorder(home)
        return rec.active()


def forget(home: Home) -> None:
    """Drop what this process saw of ``home``'s facility (after starting or stopping it here)."""
    with _recorders_lock:
        rec = _recorders.pop(home.path, None)
    if rec is not None and rec.file is not None:
        rec.file.close()


def _safely(home: Home, what: str, work: Any) -> None:
    """Run ``work(file)`` if the facility runs; a failure is logged, never raised."""
    try:
        f = _active(home)
        if f is not None:
            work(f)
    except Exception as e:  # noqa: BLE001 - a status is never worth failing a pass
        with contextlib.suppress(Exception):
            logger(home).warning(f"distribution status {what} not recorded: {e}")


def record(home: Home, these: Iterable[AJob], status: str, message: str = "") -> None:
    """Record ``status`` for these jobs, if the home's facility runs."""
    held = list(these)
    if held:
        _safely(home, status, lambda f: f.put(entry(j, status, message) for j in held))


RESULT_STATUS = {codes.COMPLETE: "COMPLETE", codes.ERROR: "ERROR", codes.SETUP_ERROR: "SETUP_ERROR",
                 codes.EXEC_ERROR: "CLT_START_ERROR", codes.LINE_DOWN: "CLT_START_ERROR"}


# what an event is recorded as, for the log line that says it was not
HEARD_AS = {events.Received: "KEEPING", events.Kept: "KEEP", events.Started: "startup", events.Handed: "INS_WAIT",
            events.Reading: "GEN_START", events.Installing: "GEN_START", events.Ended: "result"}


class Listener:
    """Records what it hears of a home's jobs (rds.events), while the home's facility runs.

    The events of one commit become one change of the file.  KEEP replaces
    only KEEPING or KEEP_ERROR (or nothing), so that a later status is never
    set back by a pass that finds the package still here.
    """

    def __init__(self, home: Home) -> None:
        self.home = home

    def __call__(self, db: sqlite3.Connection, heard: list[Any]) -> None:
        what = "/".join(dict.fromkeys(HEARD_AS.get(type(e), type(e).__name__) for e in heard))
        _safely(self.home, what, lambda f: f.put(self.entries(f, db, heard)))

    def entries(self, f: File, db: sqlite3.Connection, heard: list[Any]) -> list[Entry]:
        out: list[Entry] = []
        for e in heard:
            if isinstance(e, events.Received):
                out += [entry(j, "KEEPING") for j in e.jobs]
            elif isinstance(e, events.Kept):
                out += self.kept(f, e)
            elif isinstance(e, events.Started):
                status, why = (("CLT_WAIT", f"no startup request to {e.lower}: it gets the job when it polls")
                               if e.reached is None else ("CLT_START", f"startup request to {e.lower}")
                               if e.reached else
                               ("CLT_START_ERROR", f"startup request to {e.lower} failed (see the log)"))
                out += [entry(j, status, why) for j in e.jobs]
            elif isinstance(e, events.Handed):
                out += [entry(j, "INS_WAIT", f"taken by {e.lower}") for j in e.jobs]
            elif isinstance(e, events.Reading):
                out += [entry(j, "GEN_START", f"{e.lower} is reading the package") for j in e.jobs]
            elif isinstance(e, events.Installing):
                out.append(entry(e.job, "GEN_START"))
            elif isinstance(e, events.Ended):
                held = jobs.find(db, [(r.job_no, r.dest) for r in e.results])
                out += [entry(held[(r.job_no, r.dest)], RESULT_STATUS[r.status], r.message)  # a withdrawal
                        for r in e.results if (r.job_no, r.dest) in held and r.status in RESULT_STATUS]  # has none
        return out

    def kept(self, f: File, e: events.Kept) -> list[Entry]:
        out = [entry(j, "KEEP_ERROR", f"package {j.package} could not be brought here (see the log)")
               for j in e.missing]
        now = f.current((j.dest, j.package.packager, j.package.package) for j in e.ready)
        for j in e.ready:
            job_no, status = now.get((j.dest, j.package.packager, j.package.package), (j.job_no, "KEEPING"))
            if job_no != j.job_no or status in ("KEEPING", "KEEP_ERROR"):  # another job's entry starts afresh
                out.append(entry(j, "KEEP"))
        return out


# -- the facility and the file as a whole ----------------------------------

def clear(home: Home) -> Path:
    """Start the file afresh (empty, current schema); only while the facility is stopped."""
    pid = running(home)
    if pid is not None:
        raise AlreadyRunning(f"the distribution status server facility is running (pid {pid}); "
                             "stop it with rdsdlvse -p first")
    path = path_of(home)
    for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm"), Path(f"{path}-journal")):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(p)
    connect(path).close()
    return path


def require_running(home: Home) -> int:
    pid = running(home)
    if pid is None:
        raise NotRunning(f"the distribution status server facility is not running for {home.path} "
                         "(start it with rdsdlvse)")
    return pid
