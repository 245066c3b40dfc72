"""The home's SQLite databases: one opener, and the state database's schema.

Both databases of a home open here, each described by a ``Schema``: its name
in messages, its version (``PRAGMA user_version``) and the statements that
bring it from one version to the next, run in one transaction on open.

The state database (``GROUP/rds.db``, ``STATE`` below) holds the temporary
job storehouse (``jobs``, written only by rds.jobs), the results waiting to go
up or kept as seen (``results``, written only by rds.results), what lower
systems reported about the hosts below them (``routes``, ``lowers``), what is
believed about who is who (``keys``, ``key_changes``, ``statements``,
``believed``, written only by rds.trust), the managing server's job control as
believed here (``controls``, ``withdrawn``, written only by rds.control) and, on
the managing server, the jobs created there (``orders``), earlier attempts
(``history``) and ID groups (``id_groups``).  Journaling (WAL)
and full synchronous commits stay on: a commit that returned survives
``kill -9`` and power loss.  The distribution situation file has its schema
in rds.delivery.

A ``Database`` also carries its listeners: a module that changes a job's
state announces it with ``db.announce(event)`` (rds.events), and the
listeners hear it after the commit that made it true; a rollback drops it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rds.errors import SettingsError, SystemError_


@dataclasses.dataclass(frozen=True)
class Schema:
    what: str  # names the file in messages: "state database"
    version: int
    migrations: dict[int, list[str]]  # version -> statements that bring the schema from version-1 to it
    synchronous: str = "FULL"


STATE = Schema("state database", 4, {
    1: [
        """CREATE TABLE jobs (
            job_no    INTEGER NOT NULL,
            dest      TEXT NOT NULL,
            type      TEXT NOT NULL,
            package   TEXT NOT NULL,
            created   TEXT NOT NULL,
            received  REAL NOT NULL,
            -- WAIT: held here; HANDED: taken by a lower system; INSTALLING; DONE; INVALID
            state     TEXT NOT NULL,
            handed_to TEXT,
            attempts  INTEGER NOT NULL DEFAULT 0,
            record    TEXT NOT NULL,
            PRIMARY KEY (job_no, dest))""",
        "CREATE INDEX jobs_state ON jobs (state, dest)",
        """CREATE TABLE results (
            job_no   INTEGER NOT NULL,
            dest     TEXT NOT NULL,
            status   TEXT NOT NULL,
            message  TEXT NOT NULL,
            finished TEXT NOT NULL,
            sent     REAL,            -- NULL until the upper system acknowledged it
            PRIMARY KEY (job_no, dest))""",
        "CREATE INDEX results_unsent ON results (sent) WHERE sent IS NULL",
        """CREATE TABLE routes (
            host TEXT PRIMARY KEY,
            via  TEXT NOT NULL,       -- the lower system that leads to host
            seen REAL NOT NULL)""",
        """CREATE TABLE orders (
            job_no  INTEGER PRIMARY KEY AUTOINCREMENT,
            type    TEXT NOT NULL,
            package TEXT NOT NULL,
            created TEXT NOT NULL)""",
    ],
    2: [
        """CREATE TABLE lowers (
            name TEXT PRIMARY KEY,    -- a lower system that checked in directly
            wake TEXT,                -- where to send it a startup request (a home path), if it said
            seen REAL NOT NULL)""",
    ],
    3: [  # issue 12: what is believed (rds.trust)
        """CREATE TABLE keys (
            host     TEXT PRIMARY KEY,  -- a host's Ed25519 public key, pinned when first seen
            key      TEXT NOT NULL,
            since    REAL NOT NULL,
            enrolled INTEGER NOT NULL DEFAULT 0)  -- 1: given by an administrator (rdslink)""",
        """CREATE TABLE key_changes (
            host TEXT PRIMARY KEY,      -- a known host that offered another key: refused until accepted
            key  TEXT NOT NULL,
            via  TEXT NOT NULL,         -- the lower system (or upper) that brought it
            seen REAL NOT NULL)""",
        """CREATE TABLE statements (
            host  TEXT PRIMARY KEY,     -- the latest route statement signed by host
            upper TEXT NOT NULL,
            n     INTEGER NOT NULL,
            key   TEXT NOT NULL,
            sig   TEXT NOT NULL,
            sent  TEXT)                 -- the upper system it went to (a relay sends each one once)""",
        "CREATE INDEX statements_unsent ON statements (host) WHERE sent IS NULL",
        """CREATE TABLE believed (
            name  TEXT PRIMARY KEY,     -- 'signer': the managing server's name (its key is in keys)
            value TEXT NOT NULL)""",
        "ALTER TABLE results ADD COLUMN signer TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE results ADD COLUMN sig TEXT NOT NULL DEFAULT ''",
    ],
    4: [  # issue 15: operator control (rds.control, rds.manager, rds.groups, rds.hosts)
        "ALTER TABLE jobs ADD COLUMN try INTEGER NOT NULL DEFAULT 1",  # the attempt (dcmrtry)
        "ALTER TABLE jobs ADD COLUMN wave INTEGER NOT NULL DEFAULT 0",  # managing server: its wave
        "ALTER TABLE results ADD COLUMN try INTEGER NOT NULL DEFAULT 1",
        "ALTER TABLE orders ADD COLUMN plan TEXT NOT NULL DEFAULT '{}'",  # waves, limit, group, not before
        "ALTER TABLE orders ADD COLUMN released INTEGER NOT NULL DEFAULT 1",  # waves released so far
        "ALTER TABLE orders ADD COLUMN released_at REAL",
        "ALTER TABLE orders ADD COLUMN fail_base INTEGER NOT NULL DEFAULT 0",  # failures forgiven by a resume
        "ALTER TABLE orders ADD COLUMN late_said INTEGER NOT NULL DEFAULT 0",
        """CREATE TABLE controls (
            job_no    INTEGER PRIMARY KEY,  -- the managing server's latest signed control of a job
            n         INTEGER NOT NULL,
            suspended TEXT,                 -- why, while suspended
            record    TEXT NOT NULL)""",
        """CREATE TABLE withdrawn (
            job_no INTEGER NOT NULL,        -- destinations withdrawn by the managing server
            dest   TEXT NOT NULL,
            status TEXT NOT NULL,           -- DELETE or ID-INVALID
            PRIMARY KEY (job_no, dest))""",
        """CREATE TABLE history (
            job_no   INTEGER NOT NULL,      -- earlier attempts' outcomes (dcmrtry)
            dest     TEXT NOT NULL,
            try      INTEGER NOT NULL,
            status   TEXT NOT NULL,
            message  TEXT NOT NULL,
            finished TEXT NOT NULL,
            PRIMARY KEY (job_no, dest, try))""",
        """CREATE TABLE id_groups (
            name TEXT NOT NULL,             -- ID groups (rdsiddefine)
            host TEXT NOT NULL,
            PRIMARY KEY (name, host))""",
        "CREATE INDEX id_groups_host ON id_groups (host)",
        "ALTER TABLE routes ADD COLUMN version TEXT",  # as the host's check-in says (bounded)
        "ALTER TABLE routes ADD COLUMN checkin REAL",  # its own last check-in, as reported
        "ALTER TABLE routes ADD COLUMN told REAL",  # the last check-in of it told the upper system
        "CREATE INDEX jobs_dest ON jobs (dest, state)",
    ],
})

Listener = Callable[["Database", list[Any]], None]  # hears the events of one commit at once


class Database(sqlite3.Connection):
    """An open database of a home, with the listeners that hear what changed in it."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.listeners: list[Listener] = []
        self._heard: list[Any] = []  # announced inside the transaction under way

    def listen(self, listener: Listener) -> None:
        self.listeners.append(listener)

    def announce(self, event: Any) -> None:
        """Tell the listeners of ``event`` once it is committed (now, outside a transaction)."""
        if not self.listeners:
            return
        if self.in_transaction:
            self._heard.append(event)
        else:
            self._tell([event])

    def _ended(self, committed: bool) -> None:
        heard, self._heard = self._heard, []
        if committed:
            self._tell(heard)

    def _tell(self, events: list[Any]) -> None:
        if events:
            for listener in self.listeners:
                listener(self, events)  # listeners keep their own failures (rds.delivery logs them)


class Transaction:
    """``with Transaction(db):`` runs the block in one immediate transaction; what was announced
    in it is heard after the commit."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> sqlite3.Connection:
        self.db.execute("BEGIN IMMEDIATE")
        return self.db

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.db.execute("COMMIT" if exc_type is None else "ROLLBACK")
        if isinstance(self.db, Database):
            self.db._ended(exc_type is None)


def joined(db: sqlite3.Connection) -> Any:
    """The transaction under way (its caller commits it), else a new ``Transaction``: steps that may commit
    alone or as one commit with others (an idle check-in's writes at the upper system, rds.service)."""
    return contextlib.nullcontext(db) if db.in_transaction else Transaction(db)


def announce(db: sqlite3.Connection, event: Any) -> None:
    """Tell the listeners of ``db`` of ``event`` once the transaction under way commits."""
    if isinstance(db, Database):
        db.announce(event)


def open_db(path: Path, schema: Schema, timeout: float = 60, threads: bool = False) -> Database:
    """Open the database at ``path``, creating or upgrading its schema; every failure names the file."""
    what = schema.what
    try:
        db = sqlite3.connect(path, timeout=timeout, isolation_level=None, check_same_thread=not threads,
                             factory=Database)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={schema.synchronous}")
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version > schema.version:
            db.close()
            raise SettingsError(f"{path}: {what} version {version} is newer than this rds ({schema.version})")
        if version < schema.version:
            with Transaction(db):
                version = db.execute("PRAGMA user_version").fetchone()[0]  # another process may have done it
                for v in range(version + 1, schema.version + 1):
                    for stmt in schema.migrations[v]:
                        db.execute(stmt)
                db.execute(f"PRAGMA user_version={schema.version}")
    except sqlite3.DatabaseError as e:
        if _full(path):  # SQLite says "disk I/O error" when it cannot even lay out its WAL index
            raise SystemError_(f"{path}: cannot open the {what}: disk full") from None
        raise SettingsError(f"{path}: cannot open the {what}: {e}") from None
    except UnicodeDecodeError:  # sqlite's own message quotes the damaged schema, which is not UTF-8
        raise SettingsError(f"{path}: cannot open the {what}: its schema is damaged") from None
    except OSError as e:
        raise SettingsError(f"{path}: cannot open the {what}: {e.strerror or e}") from None
    return db


def connect(path: Path) -> Database:
    """Open a home's state database (rows as ``sqlite3.Row``)."""
    db = open_db(path, STATE)
    db.row_factory = sqlite3.Row
    return db


def _full(path: Path) -> bool:
    try:
        st = os.statvfs(path.parent)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < 64 << 10
