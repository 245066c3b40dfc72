"""The managing server: creating jobs (``dcmjexe``) and their status (``dcmstat``)."""

from __future__ import annotations

import dataclasses
import hashlib
import sqlite3
import time

from rds import codes, jobs, trust
from rds.clock import now_text, shown
from rds.database import Transaction
from rds.errors import InputError, UsageError
from rds.home import Home
from rds.identity import fingerprint
from rds.jobs import Job
from rds.packages import Manifest, PackageId
from rds.settings import valid_hostname
from rds.storehouse import Storehouse

# dcmstat's exit codes, as JP1's
ALL_COMPLETE, SOME_FAILED, RUNNING, RUNNING_WITH_FAILURES = 0, 30, 31, 32
ENDED = (jobs.DONE, jobs.INVALID)  # a job's states in which no result changes it any more


def require_managing_server(home: Home) -> None:
    if not home.settings.is_managing_server:
        raise UsageError(f"{home.path}: not the managing server (RDSSETFL names ManagingHost "
                         f"{home.settings.managing_host}); create jobs there")


def create_job(db: sqlite3.Connection, home: Home, package: PackageId, hosts: list[str],
               now: float | None = None, type_: str = jobs.INSTALL) -> tuple[int, list[str]]:
    """Create a job (Install package, Transfer package to relay system, or DELETE on relays); returns its
    number and the hosts not known yet."""
    require_managing_server(home)
    now = time.time() if now is None else now
    if not hosts:
        raise InputError("no destination host given")
    for h in hosts:
        if not valid_hostname(h):
            raise InputError(f"malformed host name {h!r} (1-64 letters, digits, '-' and '.'; no IP address)")
        if h == home.host:
            raise InputError(f"{h} is this managing server itself, not a destination")
    manifest = Storehouse.of(home).get(package)
    if manifest is None and type_ == jobs.DELETE:  # it may be gone here already; the ID is what counts
        manifest = Manifest(package, 0, hashlib.sha256(b"").hexdigest(), "/")
    if manifest is None:
        raise InputError(f"unknown package {package} (register it with rdsft -c)")
    created = now_text(now)
    me = home.identity
    manifest = trust.sign_manifest(me, manifest)  # the one the job's signature covers
    with Transaction(db):
        job_no = int(db.execute("INSERT INTO orders (type, package, created) VALUES (?, ?, ?)",
                                (type_, str(package), created)).lastrowid or 0)
        for h in dict.fromkeys(hosts):
            jobs.insert(db, trust.sign_job(me, Job(job_no, h, type_, package, created), manifest), manifest, now)
    unknown = [h for h in dict.fromkeys(hosts) if jobs.route(db, h) is None]
    return job_no, unknown


@dataclasses.dataclass(frozen=True)
class DestinationStatus:
    job_no: int
    dest: str
    package: str
    status: str
    updated: str  # stored form (rds.clock.now_text)
    message: str
    open: bool = False  # an interim failure (EXEC-ERROR...) that the destination's own outcome may still follow

    def to_json(self) -> dict[str, object]:
        """The rds(7) JSON vocabulary: job_no, dest, package, status, code, updated, message."""
        return {"job_no": self.job_no, "dest": self.dest, "package": self.package, "status": self.status,
                "code": codes.JOB_STATUS_CODES.get(self.status, ""), "updated": shown(self.updated),
                "message": self.message}


def destinations(db: sqlite3.Connection, job_no: int | None = None) -> list[DestinationStatus]:
    """Where each destination of each job (or of ``job_no``) stands, in dcmstat's words."""
    query = ("SELECT j.job_no, j.dest, j.package, j.state, j.handed_to, j.received, r.status, r.message,"
             " r.finished, rt.via FROM jobs j LEFT JOIN results r ON r.job_no = j.job_no AND r.dest = j.dest"
             " LEFT JOIN routes rt ON rt.host = j.dest")
    args: tuple[object, ...] = ()
    if job_no is not None:
        query += " WHERE j.job_no=?"
        args = (job_no,)
    out = []
    changed = trust.changes(db)
    for row in db.execute(query + " ORDER BY j.job_no, j.dest", args):
        held = next((h for h in (row["dest"], row["via"]) if h in changed), None)
        if row["status"] is not None:
            st, updated, msg = row["status"], row["finished"], row["message"]
        elif row["state"] == jobs.WAIT and held is not None:
            old, new, brought = changed[held]
            st, updated = codes.WAIT, now_text(row["received"])
            msg = (f"held: the host key of {held} changed ({fingerprint(old) if old else 'none'} pinned, "
                   f"{fingerprint(new)} offered through {brought}); if that is right: rdslink --accept {held}")
        elif row["state"] not in jobs.STATES:  # nothing hands it out or ends it (rds.service logs it)
            st, updated = codes.WAIT, now_text(row["received"])
            msg = (f"held: its state here is {str(row['state'])[:40]!r}, not a job state (a damaged database?); "
                   f"delete it with 'rdsgroupid -d {row['job_no']}:{row['dest']}' and create it again")
        elif row["state"] == jobs.HANDED:
            st, updated, msg = codes.EXEC, now_text(row["received"]), f"taken by {row['handed_to']}"
        elif row["via"] is None:
            st, updated, msg = codes.WAIT, now_text(row["received"]), \
                f"held: {row['dest']} has not reported in yet"
        else:
            st, updated, msg = codes.WAIT, now_text(row["received"]), f"waiting for {row['via']} to check in"
        is_open = st in codes.INTERIM and row["state"] not in ENDED
        out.append(DestinationStatus(row["job_no"], row["dest"], row["package"], st, updated, msg, is_open))
    if job_no is not None and not out:
        raise InputError(f"no job {job_no}")
    return out


def exit_code(rows: list[DestinationStatus]) -> int:
    """JP1's dcmstat codes.  An interim failure that can still change (EXEC-ERROR: the destination
    could not be started but gets the job when it polls) is a job still running, with failures."""
    return _code(any(r.status in codes.FAILED for r in rows),
                 any(r.status in (codes.WAIT, codes.EXEC) or r.open for r in rows))


def _code(failed: bool, running: bool) -> int:
    if running:
        return RUNNING_WITH_FAILURES if failed else RUNNING
    return SOME_FAILED if failed else ALL_COMPLETE


@dataclasses.dataclass(frozen=True)
class JobSummary:
    """How many destinations of one job stand at each status (dcmstat -s)."""

    job_no: int
    package: str
    type: str
    counts: dict[str, int]  # status -> destinations, in codes.JOB_STATUS_CODES' order
    open: int  # interim failures that can still change

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def ended(self) -> int:
        """Destinations whose status is final."""
        return self.total - self.counts.get(codes.WAIT, 0) - self.counts.get(codes.EXEC, 0) - self.open

    @property
    def failed(self) -> bool:
        return any(self.counts.get(s) for s in codes.FAILED)

    @property
    def running(self) -> bool:
        return bool(self.counts.get(codes.WAIT) or self.counts.get(codes.EXEC) or self.open)

    @property
    def exit_code(self) -> int:
        return _code(self.failed, self.running)

    def to_json(self) -> dict[str, object]:
        return {"job_no": self.job_no, "package": self.package, "type": self.type, "total": self.total,
                "ended": self.ended, "counts": self.counts, "exit_code": self.exit_code}


def summaries_exit_code(found: list[JobSummary]) -> int:
    """dcmstat's code over several jobs: as over all their destinations together."""
    return _code(any(s.failed for s in found), any(s.running for s in found))


def summaries(db: sqlite3.Connection, job_no: int | None = None) -> list[JobSummary]:
    """Counts per job and status, in SQL: a job to 10,000 hosts costs no Python per destination."""
    interim = ", ".join(f"'{s}'" for s in codes.INTERIM)
    ended = ", ".join(f"'{s}'" for s in ENDED)
    query = (f"SELECT j.job_no, o.package, o.type,"
             f" CASE WHEN r.status IS NOT NULL THEN r.status WHEN j.state = '{jobs.HANDED}' THEN '{codes.EXEC}'"
             f"  ELSE '{codes.WAIT}' END AS st,"
             f" count(*), sum(r.status IN ({interim}) AND j.state NOT IN ({ended}))"
             f" FROM jobs j JOIN orders o ON o.job_no = j.job_no"
             f" LEFT JOIN results r ON r.job_no = j.job_no AND r.dest = j.dest")
    args: tuple[object, ...] = ()
    if job_no is not None:
        query += " WHERE j.job_no=?"
        args = (job_no,)
    found: dict[int, JobSummary] = {}
    for no, package, type_, st, n, n_open in db.execute(query + " GROUP BY j.job_no, st ORDER BY j.job_no", args):
        s = found.setdefault(no, JobSummary(no, package, type_, {}, 0))
        s.counts[st] = n
        found[no] = dataclasses.replace(s, open=s.open + (n_open or 0))
    if job_no is not None and not found:
        raise InputError(f"no job {job_no}")
    order = list(codes.JOB_STATUS_CODES)
    return [dataclasses.replace(s, counts=dict(sorted(s.counts.items(), key=lambda kv: order.index(kv[0])
                                                      if kv[0] in order else len(order))))
            for s in found.values()]
