"""ID groups at the managing server (rdsiddefine): named sets of hosts that a job can be for.

A job for a group (``dcmjexe -g GROUP``) is kept at the managing server with its group
(``orders.plan``) and reaches the members as they are: a host that joins later gets it
then (signed for it then), and a host that leaves stops receiving it: its destination is
withdrawn as ID-INVALID (rds.control) unless it already began or ended.  A host that joins
again gets it as a new attempt.  Only this module writes ``id_groups``.
"""

from __future__ import annotations

import functools
import re
import sqlite3
import time

from rds import codes, control, manager
from rds.database import Transaction
from rds.errors import InputError
from rds.home import Home
from rds.settings import valid_hostname

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,31}")  # JP1: 1-32 characters when made at the manager


def check_name(name: str) -> str:
    if not NAME.fullmatch(name) or name.startswith("networkID_"):
        raise InputError(f"bad ID group name {name!r} (1-32 letters, digits, '_', '.', '-'; networkID_ is reserved)")
    return name


def _group_jobs(db: sqlite3.Connection, name: str) -> list[int]:
    return [r[0] for r in db.execute("SELECT job_no, plan FROM orders WHERE plan != '{}'")
            if manager.Plan.from_text(r[1]).group == name]


def members(db: sqlite3.Connection, name: str | None = None) -> dict[str, list[str]]:
    rows = db.execute("SELECT name, host FROM id_groups" + ("" if name is None else " WHERE name=?")
                      + " ORDER BY name, host", () if name is None else (name,))
    out: dict[str, list[str]] = {}
    for g, h in rows:
        out.setdefault(g, []).append(h)
    return out


def join(db: sqlite3.Connection, home: Home, name: str, hosts: list[str]) -> tuple[int, int]:
    """Add ``hosts`` to the group; returns (members added, jobs made for them)."""
    manager.require_managing_server(home)
    check_name(name)
    for h in hosts:
        if not valid_hostname(h) or h == home.host:
            raise InputError(f"bad member {h!r} (a host name, not this managing server)")
    now = time.time()
    made = 0
    with Transaction(db):
        new = [h for h in dict.fromkeys(hosts)
               if db.execute("INSERT OR IGNORE INTO id_groups (name, host) VALUES (?, ?)", (name, h)).rowcount]
        for job_no in _group_jobs(db, name) if new else []:
            tries: dict[str, int] = dict(db.execute(f"SELECT dest, try FROM jobs WHERE job_no=? AND dest IN"
                                                    f" ({','.join('?' * len(new))})", (job_no, *new)))
            left = {d for (_, d), st in control.withdrawn(db, job_no).items() if st == codes.ID_INVALID}
            back = [h for h in new if h in tries and h in left]  # joins again: a new attempt
            if back:
                control.issue(db, home.identity, job_no, restore=back)
            again = [h for h in new if h not in tries or h in left]
            made += manager.remake(home, db, job_no, again, functools.partial(_next_try, tries), now,
                                     manager.waves(db, job_no))
    return len(new), made


def leave(db: sqlite3.Connection, home: Home, name: str, hosts: list[str] | None = None) -> tuple[int, int]:
    """Remove ``hosts`` (all: the group goes) from the group; their group jobs not yet begun end
    ID-INVALID.  Returns (members removed, destinations withdrawn)."""
    manager.require_managing_server(home)
    gone = members(db, name).get(name, [])
    if not gone:
        raise InputError(f"no ID group {name}")
    if hosts is not None:
        unknown = set(hosts) - set(gone)
        if unknown:
            raise InputError(f"{', '.join(sorted(unknown))} not in ID group {name}")
        gone = list(dict.fromkeys(hosts))
    with Transaction(db):
        db.executemany("DELETE FROM id_groups WHERE name=? AND host=?", [(name, h) for h in gone])
    withdrawn = 0
    for job_no in _group_jobs(db, name):
        held = [h for h in gone if _has(db, job_no, h)]
        if held:
            w = manager.withdraw(db, home, job_no, held, codes.ID_INVALID,
                                 f"left ID group {name} before the job was handed out")
            withdrawn += w.withdrawn + w.sent_down
    return len(gone), withdrawn


def _has(db: sqlite3.Connection, job_no: int, dest: str) -> bool:
    return db.execute("SELECT 1 FROM jobs WHERE job_no=? AND dest=?", (job_no, dest)).fetchone() is not None


def _next_try(tries: dict[str, int], dest: str) -> int:
    return tries.get(dest, 0) + 1
