"""The home's state database (``GROUP/rds.db``): schema and its version history.

It holds the temporary job storehouse (``jobs``), the results waiting to go up
or kept as seen (``results``), what lower systems reported about the hosts
below them (``routes``) and, on the managing server, the jobs created there
(``orders``).  Journaling (WAL) and full synchronous commits stay on: a commit
that returned survives ``kill -9`` and power loss.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from rds.errors import SettingsError, SystemError_

SCHEMA_VERSION = 2

# version -> statements that bring the schema from version-1 to version
MIGRATIONS: dict[int, list[str]] = {
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
}


def connect(path: Path) -> sqlite3.Connection:
    """Open the database, creating or upgrading its schema."""
    try:
        db = sqlite3.connect(path, timeout=60, isolation_level=None)
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise SettingsError(f"{path}: schema version {version} is newer than this rds ({SCHEMA_VERSION})")
        if version < SCHEMA_VERSION:
            db.execute("BEGIN IMMEDIATE")
            version = db.execute("PRAGMA user_version").fetchone()[0]
            for v in range(version + 1, SCHEMA_VERSION + 1):
                for stmt in MIGRATIONS[v]:
                    db.execute(stmt)
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            db.execute("COMMIT")
    except sqlite3.DatabaseError as e:
        if _full(path):  # SQLite says "disk I/O error" when it cannot even lay out its WAL index
            raise SystemError_(f"{path}: cannot open the state database: disk full") from None
        raise SettingsError(f"{path}: cannot open the state database: {e}") from None
    except UnicodeDecodeError:  # sqlite's own message quotes the damaged schema, which is not UTF-8
        raise SettingsError(f"{path}: cannot open the state database: its schema is damaged") from None
    return db


def _full(path: Path) -> bool:
    try:
        st = os.statvfs(path.parent)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < 64 << 10


class Transaction:
    """``with Transaction(db):`` runs the block in one immediate transaction."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> sqlite3.Connection:
        self.db.execute("BEGIN IMMEDIATE")
        return self.db

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.db.execute("COMMIT" if exc_type is None else "ROLLBACK")
