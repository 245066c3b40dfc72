"""The hosts a system knows (dcmhosts at the managing server) and forgetting one (dcmhosts -d, rdssys -u).

Each check-in reports, for the asker and every host below it, the rds version it runs and
when it last checked in with its own upper system (``hosts``); an upper system keeps them
for the hosts whose route it proved (rds.trust), bounded (``observe``), and passes them up.
They are what a host (or the relays above it) says: shown as reported, never acted on.
The full path of a host comes from the signed route statements (each host's upper system).
"""

from __future__ import annotations

import dataclasses
import math
import re
import sqlite3
import time
from collections.abc import Iterable
from typing import Any

from rds import __version__, jobs, trust
from rds.clock import local_text
from rds.database import Transaction, joined
from rds.errors import InputError, ProtocolError
from rds.identity import fingerprint

VERSION = re.compile(r"[0-9A-Za-z][0-9A-Za-z.+~-]{0,31}")
MAX_HOSTS = 1_000_000
DAY = 86400.0
# hosts below told per check-in at most: the rest at the next ones, so that the first check-in of a
# relay with 100,000 hosts below stays within the bounds of a request (rds.wire.MAX_REQUEST_VALUES)
PER_CHECKIN = 10_000


def reported(db: sqlite3.Connection, own_host: str, now: float | None = None) -> dict[str, list[Any]]:
    """What this host's check-in says of itself and of the hosts below it whose check-in the upper
    system has not been told yet (``told``; at most PER_CHECKIN of them): [version, last check-in]."""
    now = time.time() if now is None else now
    out: dict[str, list[Any]] = {}
    rows = db.execute("SELECT r.host, r.version, max(coalesce(r.checkin, 0), coalesce(l.seen, 0)) AS last"
                      " FROM routes r LEFT JOIN lowers l ON l.name = r.host"
                      " WHERE coalesce(r.told, -1) != max(coalesce(r.checkin, 0), coalesce(l.seen, 0))"
                      " LIMIT ?", (PER_CHECKIN,))
    for host, version, last in rows:
        out[host] = [version or "", last or None]
    out[own_host] = [__version__, round(now, 3)]
    return out


def told(db: sqlite3.Connection, said: dict[str, list[Any]]) -> None:
    """The upper system took a check-in that said ``said``: those need not be said again."""
    rows = [(v[1], h) for h, v in said.items() if v[1] is not None]
    if len(rows) > 1:
        with Transaction(db):
            db.executemany("UPDATE routes SET told=? WHERE host=?", rows)


def observe(db: sqlite3.Connection, proven: Iterable[str], value: Any, now: float | None = None) -> int:
    """Keep what a lower system's check-in said of the hosts whose route it proved; call after their
    routes are recorded.  A value out of bounds is refused; a check-in time is never later than now."""
    if value is None:
        return 0
    if not isinstance(value, dict) or len(value) > MAX_HOSTS:
        raise ProtocolError("'hosts' must be an object of host names and [version, last check-in]")
    now = time.time() if now is None else now
    rows = []
    for host in proven:
        v = value.get(host)
        if v is None:
            continue
        if not isinstance(v, list) or len(v) != 2 or not isinstance(v[0], str) \
                or (v[0] and not VERSION.fullmatch(v[0])) \
                or not (v[1] is None or (isinstance(v[1], int | float) and not isinstance(v[1], bool)
                                         and math.isfinite(v[1]) and v[1] > 0)):
            raise ProtocolError(f"'hosts' of {host[:64]}: not [version, last check-in]")
        rows.append((v[0] or None, None if v[1] is None else min(float(v[1]), now), host))
    if not rows:
        return 0
    with joined(db):
        db.executemany("UPDATE routes SET version=?, checkin=max(coalesce(checkin, 0), coalesce(?, 0)) WHERE host=?",
                       rows)
    return len(rows)


@dataclasses.dataclass(frozen=True)
class HostInfo:
    host: str
    via: str | None  # the lower system it is reached through
    path: str  # managing server/relay/.../host, from the signed route statements
    last_checkin: float | None
    pending: int  # jobs not ended for it here
    version: str
    key: str  # fingerprint of the pinned key, or ""

    def to_json(self) -> dict[str, object]:
        return {"host": self.host, "via": self.via, "path": self.path,
                "last_checkin": local_text(self.last_checkin) if self.last_checkin else None,
                "pending": self.pending, "version": self.version or None, "key": self.key or None}


def listing(db: sqlite3.Connection, own_host: str, not_seen_days: float | None = None,
            now: float | None = None) -> list[HostInfo]:
    """Every host known here (a route, or a pinned key), optionally only those not seen for N days
    (or never), filtered in SQL."""
    now = time.time() if now is None else now
    cutoff = None if not_seen_days is None else now - not_seen_days * DAY
    last = "max(coalesce(r.checkin, 0), coalesce(l.seen, 0))"
    query = (f"SELECT h.host, r.via, r.version, {last}, k.key FROM"
             f" (SELECT host FROM routes UNION SELECT host FROM keys) h"
             f" LEFT JOIN routes r ON r.host = h.host LEFT JOIN lowers l ON l.name = h.host"
             f" LEFT JOIN keys k ON k.host = h.host WHERE h.host != ?")
    args: tuple[object, ...] = (own_host,)
    if cutoff is not None:
        query += f" AND {last} < ?"
        args += (cutoff,)
    rows = db.execute(query + " ORDER BY h.host", args).fetchall()
    upper_of = dict(db.execute("SELECT host, upper FROM statements"))
    marks = ",".join("?" * len(jobs.PENDING))
    pending = dict(db.execute(f"SELECT dest, count(*) FROM jobs WHERE state IN ({marks}) GROUP BY dest",
                              jobs.PENDING))
    return [HostInfo(host, via, path(upper_of, host, own_host), seen or None, pending.get(host, 0), version or "",
                     fingerprint(key) if key else "") for host, via, version, seen, key in rows]


def path(upper_of: dict[str, str], host: str, own_host: str) -> str:
    chain = [host]
    while chain[-1] != own_host and chain[-1] in upper_of and len(chain) < 64:
        chain.append(upper_of[chain[-1]])
    return "/".join(reversed(chain))


def remove(db: sqlite3.Connection, host: str, only_itself: bool = False) -> dict[str, int]:
    """Forget ``host`` here: its route (and, when it is a lower system of this one, the routes through
    it, unless ``only_itself``: rdssys -u on a relay drops only the relay), the jobs held for it, its
    pinned key and statement.  Returns what went."""
    with Transaction(db):
        known = db.execute("SELECT 1 FROM routes WHERE host=? UNION SELECT 1 FROM keys WHERE host=?"
                           " UNION SELECT 1 FROM lowers WHERE name=?", (host, host, host)).fetchone()
        if known is None:
            raise InputError(f"no host {host} is known here")
        gone = {"routes": db.execute("DELETE FROM routes WHERE host=? OR via=?",
                                     (host, "" if only_itself else host)).rowcount,
                "jobs": jobs.drop_held(db, host)}
        db.execute("DELETE FROM lowers WHERE name=?", (host,))
        trust.forget_host(db, host)
    return gone


def standing(db: sqlite3.Connection, lower: str) -> tuple[bool, str | None]:
    """What a kept session of ``lower`` was opened on (rds.transport.serve): whether it is a lower system
    here (forgotten and revoked ones are not) and the key pinned for it."""
    known = db.execute("SELECT 1 FROM lowers WHERE name=?", (lower,)).fetchone() is not None
    key = db.execute("SELECT key FROM keys WHERE host=?", (lower,)).fetchone()
    return known, None if key is None else str(key[0])
