"""The managing server: creating jobs (``dcmjexe``) and their status (``dcmstat``)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
import sqlite3
import time
from collections.abc import Callable

from rds import codes, control, jobs, results, trust
from rds.clock import now_text, shown
from rds.database import Transaction
from rds.errors import InputError, UsageError
from rds.home import Home
from rds.identity import fingerprint
from rds.jobs import Job
from rds.packages import Manifest, PackageId
from rds.settings import valid_hostname

# dcmstat's exit codes, as JP1's
ALL_COMPLETE, SOME_FAILED, RUNNING, RUNNING_WITH_FAILURES = 0, 30, 31, 32
ENDED = (jobs.DONE, jobs.INVALID)  # a job's states in which no result changes it any more


def require_managing_server(home: Home) -> None:
    if not home.settings.is_managing_server:
        raise UsageError(f"{home.path}: not the managing server (RDSSETFL names ManagingHost "
                         f"{home.settings.managing_host}); create jobs there")


@dataclasses.dataclass(frozen=True)
class Plan:
    """How a job is released (dcmjexe): in waves with a failure limit, no earlier than a time, to an ID group."""

    waves: tuple[int, ...] = ()  # cumulative: percentages (percent) or counts of the destinations
    percent: bool = False
    fail_limit: int | None = None  # reported failures that halt it, a count or (fail_percent) a percentage
    fail_percent: bool = False
    wave_wait: float = 86400.0  # seconds a wave may wait for its results before dcmstat and the log say so
    not_before: str = ""  # stored form (UTC)
    group: str = ""

    def to_json(self) -> dict[str, object]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v != Plan.__dataclass_fields__[k].default}

    @classmethod
    def from_text(cls, text: str) -> Plan:
        d = json.loads(text or "{}")
        d["waves"] = tuple(d.get("waves", ()))
        return cls(**d)


def parse_waves(text: str) -> tuple[tuple[int, ...], bool]:
    """``1,10,50,100%`` (cumulative percentages) or ``5,50,500`` (cumulative counts)."""
    percent = text.endswith("%")
    parts = text.rstrip("%").split(",")
    if not all(re.fullmatch(r"\d{1,9}", p) for p in parts) or len(parts) > 100:
        raise InputError(f"bad waves {text!r} (for example 1,10,50,100% or 5,50,500)")
    waves = tuple(int(p) for p in parts)
    if any(b <= a for a, b in zip(waves, waves[1:], strict=False)) or waves[0] < 1 or (percent and waves[-1] > 100):
        raise InputError(f"bad waves {text!r}: each wave must reach further than the last (percentages up to 100)")
    return waves, percent


def parse_limit(text: str) -> tuple[int, bool]:
    """A failure limit: ``5`` failures or ``10%`` of the destinations released."""
    m = re.fullmatch(r"(\d{1,9})(%?)", text)
    if not m or (m.group(2) and int(m.group(1)) > 100):
        raise InputError(f"bad failure limit {text!r} (a count, or a percentage such as 10%)")
    return int(m.group(1)), bool(m.group(2))


def wave_of(plan: Plan, total: int) -> Callable[[int], int]:
    """The wave (1...) of the i-th destination (0...) of ``total``; 0 without waves."""
    if not plan.waves:
        return lambda i: 0
    ends = [min(total, max(1, math.ceil(total * w / 100)) if plan.percent else w) for w in plan.waves]
    if ends[-1] < total:
        ends.append(total)

    def wave(i: int) -> int:
        return next(n for n, end in enumerate(ends, 1) if i < end)
    return wave


def create_job(db: sqlite3.Connection, home: Home, package: PackageId, hosts: list[str],
               now: float | None = None, type_: str = jobs.INSTALL, plan: Plan = Plan()) -> tuple[int, list[str]]:
    """Create a job (Install package, Transfer package to relay system, or DELETE on relays); returns its
    number and the hosts not known yet."""
    from rds.storehouse import Storehouse  # imported where a job is made: dcmstat and the others need none of it

    require_managing_server(home)
    now = time.time() if now is None else now
    if not hosts and not plan.group:
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
    manifest = trust.sign_manifest(home.identity, manifest)  # the one the job's signature covers
    with Transaction(db):
        if plan.group:
            members = [r[0] for r in db.execute("SELECT host FROM id_groups WHERE name=? ORDER BY host",
                                                (plan.group,))]
            if not db.execute("SELECT 1 FROM id_groups WHERE name=?", (plan.group,)).fetchone() and not members:
                raise InputError(f"no ID group {plan.group} (define it with rdsiddefine)")
            hosts = [*hosts, *members]
        job_no = int(db.execute("INSERT INTO orders (type, package, created, plan, released_at) VALUES (?, ?, ?, ?, ?)",
                                (type_, str(package), created, json.dumps(plan.to_json()), now)).lastrowid or 0)
        names = list(dict.fromkeys(hosts))
        wave = wave_of(plan, len(names))
        # each destination's job is signed when it is first handed out (``signed``): a job to 100,000
        # hosts is created at once, and its signatures are made 1,000 at a check-in of each relay
        jobs.insert_many(db, [(Job(job_no, h, type_, package, created, not_before=plan.not_before), wave(i))
                              for i, h in enumerate(names)], manifest, now)
    known = {r[0] for r in db.execute("SELECT host FROM routes")}
    return job_no, [h for h in names if h not in known]


def remake(home: Home, db: sqlite3.Connection, job_no: int, dests: list[str], attempt: Callable[[str], int],
             now: float, wave: int = 0) -> int:
    """(Re)make the job ``job_no`` for ``dests`` (dcmrtry, a host joining an ID group); in a transaction."""
    from rds.storehouse import Storehouse

    order = db.execute("SELECT type, package, created, plan FROM orders WHERE job_no=?", (job_no,)).fetchone()
    pid = PackageId.parse(order["package"])
    plan = Plan.from_text(order["plan"])
    m = Storehouse.of(home).get(pid)
    if m is None:
        if order["type"] != jobs.DELETE:
            raise InputError(f"package {pid} of job {job_no} is no longer registered here")
        m = Manifest(pid, 0, hashlib.sha256(b"").hexdigest(), "/")
    m = trust.sign_manifest(home.identity, m)
    made = [Job(job_no, d, order["type"], pid, order["created"], attempt=attempt(d), not_before=plan.not_before)
            for d in dests]
    return jobs.insert_many(db, [(j, wave) for j in made], m, now)  # signed when handed out (``signed``)


def signed(db: sqlite3.Connection, home: Home, found: list[Job],
           read: dict[tuple[int, str], Manifest] | None = None) -> list[Job]:
    """``found`` as the managing server hands them out: the jobs this version made (their records carry
    the signed manifest) signed the first time, all of a package at once on every CPU, and kept signed.
    ``found`` carry one manifest a package (UpperService.one_manifest_each): the first one's signs them all.
    Jobs made before signatures are left to rds.service, which signs their manifests too.  ``read`` gets
    the manifest read from the record of the job (job, dest) each package's were signed with."""
    todo: dict[str, list[Job]] = {}
    for j in found:
        if not j.sig:
            todo.setdefault(str(j.package), []).append(j)
    made: dict[tuple[int, str], Job] = {}
    for waiting in todo.values():
        m = jobs.signed_manifest(db, waiting[0])
        if m is None:
            continue
        if read is not None:
            read[(waiting[0].job_no, waiting[0].dest)] = m
        now_signed = trust.sign_jobs(home.identity, waiting, m)
        jobs.keep_signed(db, [(j, m) for j in now_signed])
        made.update(((j.job_no, j.dest), j) for j in now_signed)
    return [made.get((j.job_no, j.dest), j) for j in found] if made else found


def order(db: sqlite3.Connection, job_no: int) -> sqlite3.Row:
    row = db.execute("SELECT * FROM orders WHERE job_no=?", (job_no,)).fetchone()
    if row is None:
        raise InputError(f"no job {job_no}")
    return row


# -- job control (dcmjbrm, dcmrtry, dcmsusp, waves) -------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Withdrawal:
    job_no: int
    withdrawn: int  # ended DELETE here: never handed out
    sent_down: int  # handed out: the destination (or the relay holding it) decides, and says
    kept: int  # already ended: their outcome stands

    def to_json(self) -> dict[str, object]:
        return dataclasses.asdict(self)


def withdraw(db: sqlite3.Connection, home: Home, job_no: int, dests: list[str] | None = None,
             status: str = codes.DELETE, why: str = "") -> Withdrawal:
    """dcmjbrm: withdraw the destinations of ``job_no`` (all, or ``dests``) that have not ended."""
    require_managing_server(home)
    order(db, job_no)
    now = now_text()
    with Transaction(db):
        rows = db.execute("SELECT j.dest, j.state, r.status FROM jobs j LEFT JOIN results r ON r.job_no = j.job_no"
                          " AND r.dest = j.dest WHERE j.job_no=?", (job_no,)).fetchall()
        if dests is not None:
            wanted = set(dests)
            missing = wanted - {r[0] for r in rows}
            if missing:
                raise InputError(f"job {job_no} has no destination {', '.join(sorted(missing)[:5])}")
            rows = [r for r in rows if r[0] in wanted]
        open_ = {r[0]: status for r in rows if r[2] not in codes.OUTCOMES and r[2] not in codes.WITHDRAWN}
        handed = sum(1 for r in rows if r[0] in open_ and r[1] != jobs.WAIT)
        control.issue(db, home.identity, job_no, withdraw=open_)
    ended = results.withdraw_waiting(db, why or f"withdrawn at {home.host} before it was handed out", now,
                                     home.host, job_no)
    return Withdrawal(job_no, len(ended), handed, len(rows) - len(open_))


RETRIED = (codes.ERROR, codes.EXEC_ERROR, codes.LINE_DOWN)


def retry(db: sqlite3.Connection, home: Home, job_no: int, dests: list[str] | None = None,
          now: float | None = None) -> list[tuple[str, int]]:
    """dcmrtry: another attempt for the destinations of ``job_no`` that failed (ERROR, EXEC-ERROR,
    LINE-DOWN); their outcome goes to the job's history.  Returns (dest, new attempt)."""
    require_managing_server(home)
    order(db, job_no)
    now = time.time() if now is None else now
    with Transaction(db):
        moved = results.to_history(db, job_no, RETRIED, dests)
        tries = dict(moved)
        remake(home, db, job_no, sorted(tries), lambda d: tries[d] + 1, now)
    return [(d, t + 1) for d, t in sorted(moved)]


def suspend(db: sqlite3.Connection, home: Home, job_no: int, why: str) -> None:
    """dcmsusp: no destination of the job is handed out anywhere until it resumes."""
    require_managing_server(home)
    order(db, job_no)
    with Transaction(db):
        control.issue(db, home.identity, job_no, suspended=why or "suspended by the administrator")


def resume(db: sqlite3.Connection, home: Home, job_no: int) -> None:
    """dcmsusp -r: hand it out again; the failures that halted its waves are forgiven."""
    require_managing_server(home)
    order(db, job_no)
    with Transaction(db):
        if job_no not in control.suspended(db):
            raise InputError(f"job {job_no} is not suspended")
        control.issue(db, home.identity, job_no, suspended="")
        db.execute("UPDATE orders SET fail_base=?, released_at=? WHERE job_no=?",
                   (_wave_counts(db, job_no)[1], time.time(), job_no))


def _wave_counts(db: sqlite3.Connection, job_no: int, released: int | None = None) -> tuple[int, int, int]:
    """(destinations released, reported, failed) of a job's released waves."""
    failed = ",".join(f"'{s}'" for s in codes.FAILED)
    where = "" if released is None else " AND j.wave <= ?"
    row = db.execute(f"SELECT count(*), count(r.status), sum(r.status IN ({failed})) FROM jobs j LEFT JOIN results r"
                     f" ON r.job_no = j.job_no AND r.dest = j.dest WHERE j.job_no=?{where}",
                     (job_no,) if released is None else (job_no, released)).fetchone()
    return int(row[0]), int(row[1]), int(row[2] or 0)


def waves(db: sqlite3.Connection, job_no: int) -> int:
    return int(db.execute("SELECT max(wave) FROM jobs WHERE job_no=?", (job_no,)).fetchone()[0] or 0)


def advance(db: sqlite3.Connection, home: Home, log: Callable[[str], None], now: float | None = None) -> list[str]:
    """Release the next wave of each job whose released waves all reported within the failure limit;
    halt (suspend) a job whose reported failures pass it; say once when a wave waits too long.
    Returns what it did, as logged."""
    now = time.time() if now is None else now
    said = []
    held = control.suspended(db)
    for o in db.execute("SELECT job_no, plan, released, released_at, fail_base, late_said FROM orders"
                        " WHERE plan != '{}'").fetchall():
        plan = Plan.from_text(o["plan"])
        no, released = o["job_no"], o["released"]
        last = waves(db, no)
        if not plan.waves or no in held:
            continue
        while True:
            total, reported, failed = _wave_counts(db, no, released)
            failed -= o["fail_base"]
            limit = plan.fail_limit
            if limit is not None and failed > (total * limit / 100 if plan.fail_percent else limit):
                why = (f"halted in wave {released} of {last}: {failed} failure(s) reported among {total} "
                       f"destination(s) released, over the limit of {limit}{'%' if plan.fail_percent else ''}")
                with Transaction(db):
                    control.issue(db, home.identity, no, suspended=why)
                said.append(f"job {no}: {why}")
                break
            if released >= last or reported < total:
                if released < last and o["released_at"] and now - o["released_at"] > plan.wave_wait \
                        and not o["late_said"]:
                    said.append(f"job {no}: wave {released} of {last} has waited {_span(now - o['released_at'])} "
                                f"for {total - reported} result(s) (longer than {_span(plan.wave_wait)})")
                    db.execute("UPDATE orders SET late_said=1 WHERE job_no=?", (no,))
                break
            released += 1
            db.execute("UPDATE orders SET released=?, released_at=?, late_said=0 WHERE job_no=?", (released, now, no))
            said.append(f"job {no}: wave {released} of {last} released ({reported} of {total} reported, "
                        f"{failed} failure(s))")
    for line in said:
        log(line)
    return said


def _span(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


@dataclasses.dataclass(frozen=True)
class DestinationStatus:
    job_no: int
    dest: str
    package: str
    status: str
    updated: str  # stored form (rds.clock.now_text)
    message: str
    open: bool = False  # an interim failure (EXEC-ERROR...) that the destination's own outcome may still follow
    attempt: int = 1

    def to_json(self) -> dict[str, object]:
        """The rds(7) JSON vocabulary: job_no, dest, package, status, code, updated, message, attempt."""
        return {"job_no": self.job_no, "dest": self.dest, "package": self.package, "status": self.status,
                "code": codes.JOB_STATUS_CODES.get(self.status, ""), "updated": shown(self.updated),
                "message": self.message, "attempt": self.attempt}


@dataclasses.dataclass(frozen=True)
class _Job:
    """What dcmstat says of a job beyond its destinations: suspension, waves, not before."""

    suspended: str | None
    plan: Plan
    released: int
    released_at: float | None
    last: int


def _jobs(db: sqlite3.Connection, job_no: int | None) -> dict[int, _Job]:
    held = control.suspended(db)
    rows = db.execute("SELECT o.job_no, o.plan, o.released, o.released_at, max(j.wave) FROM orders o"
                      " JOIN jobs j ON j.job_no = o.job_no" + ("" if job_no is None else " WHERE o.job_no=?")
                      + " GROUP BY o.job_no", () if job_no is None else (job_no,))
    return {r[0]: _Job(held.get(r[0]), Plan.from_text(r[1]), r[2], r[3], r[4] or 0) for r in rows}


def _waiting(j: _Job | None, wave: int, now: float) -> str | None:
    """Why a destination not handed out yet waits, when the job's control says it."""
    if j is None:
        return None
    if j.suspended:
        return f"suspended: {j.suspended}"
    if wave > j.released:
        late = ""
        if j.released_at and now - j.released_at > j.plan.wave_wait:
            late = (f"; wave {j.released} has waited {_span(now - j.released_at)} for its results "
                    f"(longer than {_span(j.plan.wave_wait)})")
        return f"in wave {wave} of {j.last}: released when the waves before it have reported{late}"
    return None


def destinations(db: sqlite3.Connection, job_no: int | None = None) -> list[DestinationStatus]:
    """Where each destination of each job (or of ``job_no``) stands, in dcmstat's words."""
    query = ("SELECT j.job_no, j.dest, j.package, j.state, j.handed_to, j.received, r.status, r.message,"
             " r.finished, rt.via, j.try, j.wave, w.status AS withdrawn"
             " FROM jobs j LEFT JOIN results r ON r.job_no = j.job_no AND r.dest = j.dest"
             " LEFT JOIN routes rt ON rt.host = j.dest"
             " LEFT JOIN withdrawn w ON w.job_no = j.job_no AND w.dest = j.dest")
    args: tuple[object, ...] = ()
    if job_no is not None:
        query += " WHERE j.job_no=?"
        args = (job_no,)
    out = []
    changed = trust.changes(db)
    control_of = _jobs(db, job_no)
    now = time.time()
    for row in db.execute(query + " ORDER BY j.job_no, j.dest", args):
        held = next((h for h in (row["dest"], row["via"]) if h in changed), None)
        j = control_of.get(row["job_no"])
        nb = j.plan.not_before if j is not None else ""
        if row["status"] is not None:
            st, updated, msg = row["status"], row["finished"], row["message"]
            if row["withdrawn"] and st not in codes.WITHDRAWN and st not in codes.OUTCOMES:
                msg = f"{row['withdrawn']} requested; {st} until the system holding it says: {msg}"
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
            if row["withdrawn"]:
                msg = (f"{row['withdrawn']} requested: sent down; the destination's own word (installed or "
                       f"withdrawn) decides; taken by {row['handed_to']}")
            elif nb and (jobs.epoch(nb) or 0) > now:
                msg += f"; installs no earlier than {shown(nb)} (the destination's clock)"
        elif (why := _waiting(j, row["wave"], now)) is not None:
            st, updated, msg = codes.WAIT, now_text(row["received"]), why
        elif row["via"] is None:
            st, updated, msg = codes.WAIT, now_text(row["received"]), \
                f"held: {row['dest']} has not reported in yet"
        else:
            st, updated, msg = codes.WAIT, now_text(row["received"]), f"waiting for {row['via']} to check in"
            if nb and (jobs.epoch(nb) or 0) > now:
                msg += f"; installs no earlier than {shown(nb)} (the destination's clock)"
        if row["try"] > 1:
            msg = f"attempt {row['try']}: {msg}"
        is_open = st in codes.INTERIM and row["state"] not in ENDED
        out.append(DestinationStatus(row["job_no"], row["dest"], row["package"], st, updated, msg, is_open,
                                     row["try"]))
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
    counts: dict[str, int]  # status -> destinations, in codes.STATUS_WORDS' order
    open: int  # interim failures that can still change
    suspended: str | None = None  # why, while suspended (dcmsusp, a wave's halt)
    wave: tuple[int, int] = (0, 0)  # waves released, of how many

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
                "ended": self.ended, "counts": self.counts, "exit_code": self.exit_code,
                "suspended": self.suspended, "waves": list(self.wave) if self.wave[1] else None}


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
    order = list(codes.STATUS_WORDS)
    control_of = _jobs(db, job_no)
    out = []
    for s in found.values():
        j = control_of.get(s.job_no)
        out.append(dataclasses.replace(
            s, counts=dict(sorted(s.counts.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order
                                  else len(order))),
            suspended=j.suspended if j else None, wave=(min(j.released, j.last), j.last) if j else (0, 0)))
    return out
