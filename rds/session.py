"""The one way into a home for work: its lock when asked, its state database with the
distribution status listening, closed afterwards.

Commands come in through ``rds.cli.with_home``, the resident loops and the
upper system's service through ``opened`` and ``open_database``; nothing else
opens a home's state database for work, so every change of a job is heard
by the distribution status (rds.delivery).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from rds import database, delivery
from rds.database import Database
from rds.home import Home


def open_database(home: Home) -> Database:
    """The home's state database, with the distribution status listening; the caller closes it."""
    db = database.connect(home.db_path)
    db.listen(delivery.Listener(home))
    return db


@contextlib.contextmanager
def opened(home: Home, lock: str | None = None) -> Iterator[Database]:
    """Hold the home's lock ``lock`` (if named) and its open state database for the block."""
    with home.lock(lock) if lock is not None else contextlib.nullcontext():
        db = open_database(home)
        try:
            yield db
        finally:
            db.close()
