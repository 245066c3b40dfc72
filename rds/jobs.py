"""Jobs, the temporary job storehouse, and routing toward destinations.

A job as it travels is one destination of one job created at the managing
server: ``(job_no, dest)`` names it everywhere in the hierarchy.  Each home
keeps the jobs for itself and for the hosts below it in its state database;
a job is handed to the lower system that leads to its destination, which
learns it by the check-ins of the systems below it (``routes``, ``lowers``).

This module alone writes the ``jobs`` table.  A job's state goes WAIT (held
here) -> HANDED (a lower system took it) or INSTALLING (this host installs it)
-> DONE (its result is kept, rds.results) or INVALID (its package left the
storehouse, rds.cleanup).  The changes that others want to hear of are
announced (rds.events: Received, Handed, Installing) and heard after the
commit.
"""

from __future__ import annotations

import dataclasses
import datetime
import itertools
import json
import sqlite3
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from rds import events
from rds.database import Transaction, announce, joined
from rds.errors import JobRecordError
from rds.packages import Manifest, PackageId
from rds.settings import valid_hostname

INSTALL = "INSTALL"
TRANSFER = "TRANSFER"  # JP1's "Transfer package to relay system": the relay fetches and keeps the package
DELETE = "DELETE"  # Batch delete packages on relay system: the destination removes the package
TYPES = (INSTALL, TRANSFER, DELETE)

# states of a job in a home's storehouse
WAIT, HANDED, INSTALLING, DONE, INVALID = "WAIT", "HANDED", "INSTALLING", "DONE", "INVALID"
PENDING = (WAIT, HANDED, INSTALLING)  # not ended: their package is still needed
STATES = (DONE, HANDED, INSTALLING, INVALID, WAIT)  # in SQLite's order: no other value lies between


@dataclasses.dataclass(frozen=True)
class Job:
    job_no: int
    dest: str
    type: str
    package: PackageId
    created: str
    sig: str = ""  # the managing server's signature (rds.trust)
    attempt: int = 1  # dcmrtry makes another attempt of a destination
    not_before: str = ""  # the earliest install time, on the destination's clock (UTC, rds.clock)

    @property
    def key(self) -> str:
        return f"{self.job_no}:{self.dest}"

    def to_json(self) -> dict[str, Any]:
        d = {"job": self.job_no, "dest": self.dest, "type": self.type,
             "package": str(self.package), "created": self.created}
        if self.sig:
            d["sig"] = self.sig
        return {**d, **self.control()}

    def control(self) -> dict[str, Any]:
        """The job-control fields it carries (signed with it, rds.trust), only those set."""
        d: dict[str, Any] = {}
        if self.attempt != 1:
            d["try"] = self.attempt
        if self.not_before:
            d["not_before"] = self.not_before
        return d

    def waits_until(self) -> float | None:
        """The earliest install time as epoch seconds, or None."""
        return epoch(self.not_before) if self.not_before else None

    @classmethod
    def from_json(cls, d: Any) -> Job:
        """Check a job record strictly; anything else is a JobRecordError."""
        try:
            job_no, dest, type_, created = d["job"], d["dest"], d["type"], d["created"]
            if not isinstance(job_no, int) or isinstance(job_no, bool) or not 0 < job_no < 2**63:
                raise ValueError(f"job number {job_no!r}")
            if not isinstance(dest, str) or not valid_hostname(dest):
                raise ValueError(f"destination {dest!r}")
            if type_ not in TYPES:
                raise ValueError(f"job type {type_!r}")
            if not isinstance(created, str) or len(created) > 64:
                raise ValueError(f"creation time {created!r}")
            sig = d.get("sig", "")
            if not isinstance(sig, str) or len(sig) > 200:
                raise ValueError("signature")
            attempt, not_before = d.get("try", 1), d.get("not_before", "")
            if not isinstance(attempt, int) or isinstance(attempt, bool) or not 0 < attempt < 2**31:
                raise ValueError(f"attempt {attempt!r}")
            if not isinstance(not_before, str) or len(not_before) > 64 or (not_before and epoch(not_before) is None):
                raise ValueError(f"not-before time {not_before!r}")
            return cls(job_no, dest, type_, PackageId.parse(str(d["package"])), created, sig, attempt, not_before)
        except (TypeError, KeyError, ValueError) as e:
            raise JobRecordError(f"not a valid job record: {str(e)[:300]}") from None  # a hostile value may be huge
        except JobRecordError:
            raise
        except Exception as e:  # InputError from PackageId.parse
            raise JobRecordError(f"not a valid job record: {e}") from None


def epoch(text: str) -> float | None:
    """An ISO 8601 time with its offset as epoch seconds; None when it is not one."""
    try:
        when = datetime.datetime.fromisoformat(text)
    except (TypeError, ValueError):
        return None
    return None if when.tzinfo is None else when.timestamp()


def _job(row: sqlite3.Row) -> Job:
    return Job.from_json(parse_record(row["record"]))


def parse_record(text: str) -> Any:
    """A job record as the state database holds it: JSON, unless the database was damaged."""
    try:
        return json.loads(text)
    except (TypeError, ValueError, RecursionError):
        raise JobRecordError(f"not a valid job record: not JSON: {str(text)[:100]!r}") from None


def store(db: sqlite3.Connection, jobs: Iterable[Job], manifests: Mapping[str, Manifest],
          now: float | None = None) -> int:
    """Keep new jobs with their packages' manifests; a job already held (or done) is not taken twice."""
    now = time.time() if now is None else now
    jobs = list(jobs)
    added = 0
    with Transaction(db):
        for j in jobs:
            added += insert(db, j, manifests[str(j.package)], now)
        announce(db, events.Received(jobs))
    return added


def insert(db: sqlite3.Connection, j: Job, manifest: Manifest, now: float, wave: int = 0) -> int:
    """Add one job unless it is known (a later attempt of it replaces the earlier: dcmrtry; the
    earlier's result here gives way to the new one's, rds.results); call inside a transaction."""
    return db.execute(
        "INSERT INTO jobs (job_no, dest, type, package, created, received, state, record, try, wave)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(job_no, dest) DO UPDATE SET"
        " received=excluded.received, state=excluded.state, record=excluded.record, try=excluded.try,"
        " handed_to=NULL, attempts=0 WHERE excluded.try > jobs.try",
        (j.job_no, j.dest, j.type, str(j.package), j.created, now, WAIT, record_text(j, manifest), j.attempt, wave),
    ).rowcount


def record_text(j: Job, manifest: Manifest) -> str:
    """The record the state database keeps of a job: its fields and its package's manifest (last), the
    manifest's JSON made once (Manifest.json_text) for all the jobs of a package."""
    head = json.dumps({**j.to_json(), "manifest": None})
    return head[:-len("null}")] + manifest.json_text + "}"


def insert_many(db: sqlite3.Connection, found: Sequence[tuple[Job, int]], manifest: Manifest, now: float) -> int:
    """``insert`` of many new jobs of one package (with their waves): the record of each made from one
    template per job and attempt, as only the destination (a checked host name) differs."""
    text = manifest.json_text
    templates: dict[tuple[int, str, str, int], tuple[str, str]] = {}

    def templated(j: Job) -> str:
        key = (j.job_no, j.sig, j.not_before, j.attempt)
        if key not in templates:
            head, _, tail = json.dumps({**dataclasses.replace(j, dest="\x00").to_json(), "manifest": 0}) \
                .rpartition("0}")[0].partition('"\\u0000"')
            templates[key] = (head + '"', '"' + tail + text + "}")
        head, tail = templates[key]
        return head + j.dest + tail

    rows = [(j.job_no, j.dest, j.type, str(j.package), j.created, now, WAIT, templated(j) if not j.sig else
             record_text(j, manifest), j.attempt, wave) for j, wave in found]
    return db.executemany(
        "INSERT INTO jobs (job_no, dest, type, package, created, received, state, record, try, wave)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(job_no, dest) DO UPDATE SET"
        " received=excluded.received, state=excluded.state, record=excluded.record, try=excluded.try,"
        " handed_to=NULL, attempts=0 WHERE excluded.try > jobs.try", rows).rowcount


def signed_manifest(db: sqlite3.Connection, job: Job) -> Manifest | None:
    """The manifest the job's record carries, if the managing server signed it (a job made by this
    version); None for one made before signatures (or a record that is not JSON).  Parsed here once:
    sqlite's json_valid and json_extract each parsed a record of 3,318 chunks again (2 ms a time)."""
    row = db.execute("SELECT record FROM jobs WHERE job_no=? AND dest=?", (job.job_no, job.dest)).fetchone()
    try:
        record = None if row is None else json.loads(row[0])
    except (TypeError, ValueError, RecursionError):
        return None
    m = record.get("manifest") if isinstance(record, dict) else None
    return Manifest.from_json(m) if isinstance(m, dict) and m.get("signature") is not None else None


def unsigned(db: sqlite3.Connection, limit: int = 1000) -> list[tuple[int, str]]:
    """Jobs not ended here that came before signatures (protocol 1): a lower system would refuse them, so
    they are not handed on until the upper system sends signed copies (``keep_signed``)."""
    marks = ",".join("?" * len(PENDING))
    rows = db.execute(f"SELECT job_no, dest FROM jobs WHERE state IN ({marks})"
                      " AND CASE WHEN json_valid(record) THEN json_extract(record, '$.sig') IS NULL ELSE 0 END"
                      " ORDER BY job_no, dest LIMIT ?", (*PENDING, limit))  # a damaged record is said where it is read
    return [(r[0], r[1]) for r in rows]


def handed_copies(db: sqlite3.Connection, lower: str, keys: Iterable[tuple[int, str]]) -> list[tuple[Job, Manifest]]:
    """The jobs among ``keys`` handed to ``lower`` and not ended, with the manifests their records carry."""
    out = []
    for key in keys:
        row = db.execute("SELECT record FROM jobs WHERE job_no=? AND dest=? AND handed_to=? AND state=?",
                         (*key, lower, HANDED)).fetchone()
        if row is not None:
            record = parse_record(row[0])
            try:
                out.append((Job.from_json(record), Manifest.from_json(record["manifest"])))
            except (KeyError, TypeError):
                raise JobRecordError(f"job {key[0]}:{key[1]}: its record holds no valid manifest") from None
    return out


def keep_signed(db: sqlite3.Connection, signed: Iterable[tuple[Job, Manifest]]) -> None:
    """Jobs made before signatures, now signed by the managing server with their manifests: kept so
    (one commit), never signed again."""
    with Transaction(db):
        db.executemany("UPDATE jobs SET record=? WHERE job_no=? AND dest=?",
                       [(record_text(j, m), j.job_no, j.dest) for j, m in signed])


def manifest(db: sqlite3.Connection, job: Job) -> Manifest:
    """The manifest the job record carries (a job travels with its package's manifest)."""
    row = db.execute("SELECT record FROM jobs WHERE job_no=? AND dest=?", (job.job_no, job.dest)).fetchone()
    try:
        return Manifest.from_json(parse_record(row[0])["manifest"])
    except (KeyError, TypeError):  # a damaged state database
        raise JobRecordError(f"job {job.key}: its record holds no valid manifest") from None


def transfer_pending(db: sqlite3.Connection, package: PackageId) -> bool:
    """Whether a Transfer job not yet done here (for this host or passing through) wants ``package``."""
    return db.execute("SELECT 1 FROM jobs WHERE type=? AND package=? AND state IN (?, ?, ?) LIMIT 1",
                      (TRANSFER, str(package), WAIT, HANDED, INSTALLING)).fetchone() is not None


def in_state(db: sqlite3.Connection, state: str, dest: str | None = None) -> list[Job]:
    if dest is None:
        rows = db.execute("SELECT record FROM jobs WHERE state=? ORDER BY job_no, dest", (state,))
    else:
        rows = db.execute("SELECT record FROM jobs WHERE state=? AND dest=? ORDER BY job_no", (state, dest))
    return [_job(r) for r in rows]


def state_of(db: sqlite3.Connection, job: Job) -> str | None:
    row = db.execute("SELECT state FROM jobs WHERE job_no=? AND dest=?", (job.job_no, job.dest)).fetchone()
    return None if row is None else str(row[0])


# a state none of STATES: each range of values between them (and beyond) is found through the state index
_UNKNOWN = " UNION ALL ".join(
    f"SELECT job_no, dest, state FROM jobs WHERE {where}" for where in
    [f"state < '{STATES[0]}'", *(f"state > '{a}' AND state < '{b}'" for a, b in itertools.pairwise(STATES)),
     f"state > '{STATES[-1]}'"])


def unknown_state(db: sqlite3.Connection, limit: int = 20) -> list[tuple[int, str, str]]:
    """Jobs whose state is none of STATES (a damaged or hand-edited database): nothing would hand them out
    or end them.  (job, dest, the state as text of at most 40 characters); cheap enough for every check-in."""
    rows = db.execute(f"SELECT * FROM ({_UNKNOWN}) ORDER BY job_no, dest LIMIT ?", (limit,))
    return [(r[0], r[1], str(r[2])[:40]) for r in rows]


def begin_install(db: sqlite3.Connection, job: Job) -> int:
    """Mark ``job`` as being installed; returns which attempt this is."""
    with Transaction(db):
        db.execute("UPDATE jobs SET state=?, attempts=attempts+1 WHERE job_no=? AND dest=?",
                   (INSTALLING, job.job_no, job.dest))
        announce(db, events.Installing(job))
        return int(db.execute("SELECT attempts FROM jobs WHERE job_no=? AND dest=?",
                              (job.job_no, job.dest)).fetchone()[0])


# what may be handed out: not suspended (rds.control), and on the managing server in a released wave
HANDABLE = (" AND j.job_no NOT IN (SELECT job_no FROM controls WHERE suspended IS NOT NULL)"
            " AND (j.wave = 0 OR j.wave <= (SELECT released FROM orders o WHERE o.job_no = j.job_no))")


def for_lower(db: sqlite3.Connection, lower: str) -> list[tuple[Job, str]]:
    """Jobs waiting here whose destination is reached through ``lower`` and that may be handed out, each
    with the mark of the manifest its record carries (``manifest_mark``)."""
    rows = db.execute(
        "SELECT j.record FROM jobs j JOIN routes r ON r.host = j.dest"
        " WHERE j.state=? AND r.via=?" + HANDABLE + " ORDER BY j.job_no, j.dest",
        (WAIT, lower),
    )
    out = []
    for r in rows:
        record = parse_record(r["record"])
        out.append((Job.from_json(record), manifest_mark(record.get("manifest") if isinstance(record, dict) else None)))
    return out


def manifest_mark(m: Any) -> str:
    """What tells two manifests of one package ID apart (a package removed and registered again with other
    contents; a DELETE job made while it was gone carries a stand-in): its digest, size and signature."""
    if not isinstance(m, dict):
        return ""
    return f"{m.get('sha256')}:{m.get('size')}:{m.get('signature')}"


def hand_over(db: sqlite3.Connection, lower: str, keys: Iterable[tuple[int, str]]) -> int:
    """The lower system acknowledged these jobs: they are its now (an acknowledgement of a job it may
    not have changes nothing)."""
    n = 0
    held = []
    with Transaction(db):
        for job_no, dest in keys:
            n += db.execute(
                "UPDATE jobs SET state=?, handed_to=? WHERE job_no=? AND dest=? AND state=?"
                " AND dest IN (SELECT host FROM routes WHERE via=?)" + HANDABLE.replace("j.", "jobs."),
                (HANDED, lower, job_no, dest, WAIT, lower),
            ).rowcount
            row = db.execute("SELECT record FROM jobs WHERE job_no=? AND dest=? AND handed_to=?",
                             (job_no, dest, lower)).fetchone()
            if row is not None:  # taken now, or already (an acknowledgement sent again)
                held.append(_job(row))
        announce(db, events.Handed(lower, held))
    return n


def done(db: sqlite3.Connection, key: tuple[int, str]) -> None:
    """The job's outcome is known (rds.results keeps it); call inside that transaction."""
    db.execute("UPDATE jobs SET state=? WHERE job_no=? AND dest=?", (DONE, *key))


def end_withdrawn(db: sqlite3.Connection, job_no: int | None = None) -> int:
    """The withdrawn jobs still WAIT here are DONE (rds.results keeps their DELETE); in a transaction."""
    where = "" if job_no is None else " AND job_no=?"
    return db.execute(f"UPDATE jobs SET state=? WHERE state=?{where} AND EXISTS (SELECT 1 FROM withdrawn w"
                      f" WHERE w.job_no = jobs.job_no AND w.dest = jobs.dest)",
                      (DONE, WAIT) if job_no is None else (DONE, WAIT, job_no)).rowcount


def drop_held(db: sqlite3.Connection, dest: str) -> int:
    """The jobs for ``dest`` not ended here go (its host was removed); call inside a transaction."""
    marks = ",".join("?" * len(PENDING))
    return db.execute(f"DELETE FROM jobs WHERE dest=? AND state IN ({marks})", (dest, *PENDING)).rowcount


def invalidate(db: sqlite3.Connection, key: tuple[int, str]) -> None:
    """The job's package left the storehouse (rds.cleanup); call inside a transaction."""
    db.execute("UPDATE jobs SET state=? WHERE job_no=? AND dest=?", (INVALID, *key))


def drop(db: sqlite3.Connection, key: tuple[int, str]) -> int:
    """Delete one job; call inside a transaction."""
    return db.execute("DELETE FROM jobs WHERE job_no=? AND dest=?", key).rowcount


def find(db: sqlite3.Connection, keys: Iterable[tuple[int, str]]) -> dict[tuple[int, str], Job]:
    """The jobs held here among ``keys``."""
    out = {}
    for key in keys:
        row = db.execute("SELECT record FROM jobs WHERE job_no=? AND dest=?", key).fetchone()
        if row is not None:
            out[key] = _job(row)
    return out


@dataclasses.dataclass(frozen=True)
class Held:
    """A job as the columns of its row give it: what an event says of it (rds.events.AJob), its record
    (the package's manifest, thousands of chunks) not read."""

    job_no: int
    dest: str
    type: str
    package: PackageId


def being_read(db: sqlite3.Connection, lower: str, package: PackageId) -> list[Held]:
    """The jobs handed to ``lower`` for itself whose package is ``package`` (each read of a download says
    so: their records are not parsed)."""
    rows = db.execute("SELECT job_no, dest, type FROM jobs WHERE dest=? AND package=? AND state=? ORDER BY job_no",
                      (lower, str(package), HANDED))
    return [Held(job_no, dest, type_, package) for job_no, dest, type_ in rows]


def needed_below(db: sqlite3.Connection, lower: str, package: PackageId) -> bool:
    """Whether a job for ``lower`` or a host below it needs ``package`` (a DELETE job needs none)."""
    return db.execute("SELECT 1 FROM jobs j JOIN routes r ON r.host = j.dest WHERE r.via=? AND j.package=?"
                      " AND j.type!=? LIMIT 1", (lower, str(package), DELETE)).fetchone() is not None


def pending_packages(db: sqlite3.Connection) -> set[str]:
    """Packages that jobs not yet ended here still need."""
    marks = ",".join("?" * len(PENDING))
    rows = db.execute(f"SELECT DISTINCT package FROM jobs WHERE type != ? AND state IN ({marks})",
                      (DELETE, *PENDING))
    return {r[0] for r in rows}


def of_packages(db: sqlite3.Connection, packages: Iterable[str]) -> list[tuple[tuple[int, str], str, str, str]]:
    """(key, type, state, package) of every job here whose package is one of ``packages``."""
    wanted = sorted(set(packages))  # a cleanup chunk names at most a few hundred
    rows = db.execute(f"SELECT job_no, dest, type, package, state FROM jobs WHERE package IN"
                      f" ({','.join('?' * len(wanted))}) ORDER BY job_no, dest", wanted).fetchall()
    return [((r[0], r[1]), r[2], r[4], r[3]) for r in rows]


def invalid_handed_to(db: sqlite3.Connection, lower: str) -> list[list[object]]:
    """Jobs handed to ``lower`` whose package left this storehouse before it reported on them."""
    rows = db.execute("SELECT job_no, dest FROM jobs WHERE state=? AND handed_to=? ORDER BY job_no, dest",
                      (INVALID, lower))
    return [[r[0], r[1]] for r in rows]


def listing(db: sqlite3.Connection) -> list[sqlite3.Row]:
    return list(db.execute(
        "SELECT job_no, dest, type, package, created, received, state, handed_to, attempts, try"
        " FROM jobs ORDER BY job_no, dest"))


def delete(db: sqlite3.Connection, keys: Iterable[tuple[int, str | None]]) -> int:
    n = 0
    with Transaction(db):
        for job_no, dest in keys:
            if dest is None:
                n += db.execute("DELETE FROM jobs WHERE job_no=?", (job_no,)).rowcount
            else:
                n += drop(db, (job_no, dest))
    return n


# -- routing ---------------------------------------------------------------

def record_checkin(db: sqlite3.Connection, lower: str, below: Iterable[str], own_host: str,
                   now: float | None = None, wake: str | None = None) -> dict[str, str]:
    """Learn from a check-in which hosts ``lower`` leads to (itself included; rds.trust proved them).

    Returns the hosts whose route moved to ``lower``, with the lower system
    that led to them before."""
    now = time.time() if now is None else now
    hosts = {lower, *below} - {own_host}
    with joined(db):
        db.execute("INSERT INTO lowers (name, wake, seen) VALUES (?, ?, ?)"
                   " ON CONFLICT(name) DO UPDATE SET wake=excluded.wake, seen=excluded.seen", (lower, wake, now))
        names = sorted(hosts)
        moved: dict[str, str] = {}
        for i in range(0, len(names), 500):
            part = names[i:i + 500]
            moved.update(db.execute(f"SELECT host, via FROM routes WHERE via!=? AND host IN"
                                    f" ({','.join('?' * len(part))})", (lower, *part)))
        held = {r[0] for r in db.execute("SELECT host FROM routes WHERE via=?", (lower,))}
        for gone in held - hosts:
            db.execute("DELETE FROM routes WHERE host=? AND via=?", (gone, lower))
        # a route that did not change is not written again (a relay's check-in names every host below it):
        # a route's ``seen`` is when it was last recorded as it is; the lower's own check-in time is in lowers
        db.executemany("INSERT INTO routes (host, via, seen) VALUES (?, ?, ?)"
                       " ON CONFLICT(host) DO UPDATE SET via=excluded.via, seen=excluded.seen",
                       [(h, lower, now) for h in sorted(hosts) if h not in held])
    return moved


def follow(db: sqlite3.Connection, moved: Mapping[str, str]) -> dict[str, int]:
    """The jobs handed to the lower system that led to a host before its route moved (``moved``: host ->
    that lower system) and not ended wait here again, for its new route; returns how many per host.  The
    host runs a job it ran already not again (its own record: job and attempt, ``insert``).  Call inside a
    transaction."""
    out = {}
    for host, was in sorted(moved.items()):
        if n := db.execute("UPDATE jobs SET state=?, handed_to=NULL WHERE dest=? AND state=? AND handed_to=?",
                           (WAIT, host, HANDED, was)).rowcount:
            out[host] = n
    return out


def moved_away(db: sqlite3.Connection, hosts: Iterable[str]) -> int:
    """These hosts moved away from below this one (proven by their own statements: rds.trust.left): their
    routes go, with those of the hosts reached through them, and all their jobs not ended here (each
    follows its host: the managing server hands it through the host's new route, ``follow``).  Returns
    how many jobs went."""
    n = 0
    with joined(db):
        for host in hosts:  # with it, the hosts this one reached through it (a relay moves with its own)
            for h in [host, *(r[0] for r in db.execute("SELECT host FROM routes WHERE via=?", (host,)))]:
                db.execute("DELETE FROM routes WHERE host=?", (h,))
                n += drop_held(db, h)
    return n


def subtree(db: sqlite3.Connection) -> list[str]:
    """Every host known below this one."""
    return [r[0] for r in db.execute("SELECT host FROM routes ORDER BY host")]


def route(db: sqlite3.Connection, host: str) -> str | None:
    row = db.execute("SELECT via FROM routes WHERE host=?", (host,)).fetchone()
    return None if row is None else str(row[0])


def waiting_lowers(db: sqlite3.Connection, jobs_of: Iterable[int] | None = None) -> dict[str, list[Job]]:
    """The lower systems that have jobs waiting here, with those jobs (made from the table's columns:
    a job to 100,000 hosts parses no records)."""
    out: dict[str, list[Job]] = {}
    wanted = None if jobs_of is None else set(jobs_of)
    rows = db.execute("SELECT r.via, j.job_no, j.dest, j.type, j.package, j.created, j.try FROM jobs j"
                      " JOIN routes r ON r.host = j.dest WHERE j.state=?" + HANDABLE
                      + " ORDER BY r.via, j.job_no, j.dest", (WAIT,))
    packages: dict[str, PackageId] = {}
    for via, job_no, dest, type_, package, created, attempt in rows:
        if wanted is None or job_no in wanted:
            pid = packages.get(package) or packages.setdefault(package, PackageId.parse(package))
            out.setdefault(via, []).append(Job(job_no, dest, type_, pid, created, attempt=attempt))
    return out


def wake_address(db: sqlite3.Connection, lower: str) -> str | None:
    row = db.execute("SELECT wake FROM lowers WHERE name=?", (lower,)).fetchone()
    return None if row is None else row[0]


def routes(db: sqlite3.Connection) -> list[sqlite3.Row]:
    return list(db.execute("SELECT host, via, seen FROM routes ORDER BY via, host"))


def checked_in(db: sqlite3.Connection) -> dict[str, float]:
    """The lower systems that checked in here, with when they last did."""
    return {r[0]: r[1] for r in db.execute("SELECT name, seen FROM lowers ORDER BY name")}
