"""Job control as every level believes it: the managing server's signed word on a job's suspension
and its withdrawn destinations.

The managing server decides (rds.manager: dcmsusp, dcmjbrm, waves that halt, ID groups) and
signs one *control statement* per job, numbered: ``{"kind": "control", "job": N, "n": K,
"suspended": WHY or "", "withdrawn": {DEST: "DELETE" | "ID-INVALID", ...}}``.  Each statement
holds the job's whole control, so the newest replaces the others; an older or unsigned one
changes nothing.  It travels down with the check-in answers (and the answer to an ``ack``)
to every lower system that holds the job, is checked with the managing server's key at each
level, and is kept here (``controls``, ``withdrawn``; this module alone writes them).

What it does at a level:

- suspended: no destination of the job is handed out from here (rds.jobs.HANDABLE); jobs
  already handed finish.  A relay that withholds the statement only delays it below; it
  cannot un-suspend (the number only grows) or withdraw on its own (the signature).
- withdrawn: a destination's job still WAIT here (not handed on, not begun) is dropped here:
  its result is DELETE (ID-INVALID), signed by this host as it goes up, and the job is DONE,
  so a later hand-out of the same job is not taken again.  A job already handed on waits for
  the statement to reach the system below it; a job INSTALLING or DONE keeps its outcome.

So a withdrawal racing an install ends with one of the two: whichever system holds the job
when the statement arrives decides, under its pass lock, and a job begun is never dropped.
When the managing server or a relay said DELETE for a job that a system below had already
taken (the statement and the hand-out crossed), the destination's own signed outcome
replaces the DELETE (rds.results), so dcmstat shows what happened, never both.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from rds import codes, identity, jobs, results
from rds.clock import now_text
from rds.database import Transaction
from rds.errors import ProtocolError
from rds.identity import Identity
from rds.results import Result
from rds.settings import valid_hostname

MAX_WITHDRAWN = 1_000_000
MAX_WHY = 500


@dataclasses.dataclass(frozen=True)
class Control:
    job_no: int
    n: int
    suspended: str  # why, or "" while it runs
    withdrawn: dict[str, str]  # dest -> DELETE or ID-INVALID
    sig: str = ""

    def body(self) -> dict[str, Any]:
        return {"kind": "control", "job": self.job_no, "n": self.n, "suspended": self.suspended,
                "withdrawn": self.withdrawn}

    def to_json(self) -> dict[str, Any]:
        return {**self.body(), "sig": self.sig}

    @classmethod
    def from_json(cls, d: Any) -> Control:
        """Check a statement's form strictly (its signature is checked by ``believe``)."""
        try:
            c = cls(d["job"], d["n"], d["suspended"], d["withdrawn"], d["sig"])
            for v in (c.job_no, c.n):
                if not isinstance(v, int) or isinstance(v, bool) or not 0 < v < 2**63:
                    raise ValueError("job number or counter")
            if not isinstance(c.suspended, str) or len(c.suspended) > MAX_WHY:
                raise ValueError("suspended")
            if not isinstance(c.withdrawn, dict) or len(c.withdrawn) > MAX_WITHDRAWN:
                raise ValueError("withdrawn")
            if not all(isinstance(h, str) and valid_hostname(h) and s in codes.WITHDRAWN
                       for h, s in c.withdrawn.items()):
                raise ValueError("withdrawn destinations")
            if not isinstance(c.sig, str) or len(c.sig) != identity.SIG_CHARS:
                raise ValueError("signature")
            return c
        except (TypeError, KeyError, ValueError) as e:
            raise ProtocolError(f"not a valid job control statement: {str(e)[:200]}") from None


def _held(db: sqlite3.Connection, job_no: int) -> int:
    row = db.execute("SELECT n FROM controls WHERE job_no=?", (job_no,)).fetchone()
    return 0 if row is None else int(row[0])


def _store(db: sqlite3.Connection, c: Control, rows: bool = True) -> None:
    """Keep ``c`` as the job's control here (with ``rows``, its withdrawn destinations as rows too);
    call inside a transaction."""
    db.execute("INSERT OR REPLACE INTO controls (job_no, n, suspended, record) VALUES (?, ?, ?, ?)",
               (c.job_no, c.n, c.suspended or None, json.dumps(c.to_json())))
    if not rows:
        return
    db.execute("DELETE FROM withdrawn WHERE job_no=?", (c.job_no,))  # the statement holds them all
    db.executemany("INSERT INTO withdrawn (job_no, dest, status) VALUES (?, ?, ?)",
                   [(c.job_no, h, s) for h, s in c.withdrawn.items()])


# -- the managing server --------------------------------------------------------------------------------

def issue(db: sqlite3.Connection, me: Identity, job_no: int, suspended: str | None = None,
          withdraw: Mapping[str, str] | None = None, restore: Iterable[str] = ()) -> Control:
    """The managing server's next statement for ``job_no`` (``suspended``: None keeps the suspension as
    it is, "" resumes; ``restore``: destinations no longer withdrawn, a host that joined its ID group
    again); call inside a transaction."""
    db.executemany("DELETE FROM withdrawn WHERE job_no=? AND dest=?", [(job_no, h) for h in restore])
    row = db.execute("SELECT n, suspended FROM controls WHERE job_no=?", (job_no,)).fetchone()
    n, was = (0, "") if row is None else (int(row[0]), row[1] or "")
    if withdraw:
        db.executemany("INSERT OR IGNORE INTO withdrawn (job_no, dest, status) VALUES (?, ?, ?)",
                       [(job_no, h, s) for h, s in withdraw.items()])
    gone = dict(db.execute("SELECT dest, status FROM withdrawn WHERE job_no=?", (job_no,)))
    c = Control(job_no, n + 1, was if suspended is None else suspended[:MAX_WHY], gone)
    c = dataclasses.replace(c, sig=me.sign(c.body()))
    _store(db, c, rows=False)  # the rows are written above
    return c


def suspended(db: sqlite3.Connection) -> dict[int, str]:
    """The jobs suspended here, with why."""
    return {r[0]: r[1] for r in db.execute("SELECT job_no, suspended FROM controls WHERE suspended IS NOT NULL")}


def withdrawn(db: sqlite3.Connection, job_no: int | None = None) -> dict[tuple[int, str], str]:
    rows = db.execute("SELECT job_no, dest, status FROM withdrawn" + ("" if job_no is None else " WHERE job_no=?"),
                      () if job_no is None else (job_no,))
    return {(r[0], r[1]): r[2] for r in rows}


# -- going down -----------------------------------------------------------------------------------------

def held(db: sqlite3.Connection) -> dict[str, int]:
    """What a check-in tells the upper system: for each job not yet ended here, the number of the
    statement held (0: none).  Claiming less only brings the statements again."""
    marks = ",".join("?" * len(jobs.PENDING))
    rows = db.execute(f"SELECT DISTINCT j.job_no, coalesce(c.n, 0) FROM jobs j LEFT JOIN controls c"
                      f" ON c.job_no = j.job_no WHERE j.state IN ({marks})", jobs.PENDING)
    return {str(r[0]): int(r[1]) for r in rows}


def parse_held(value: Any) -> dict[int, int]:
    """A lower system's ``controls`` (job -> number held), checked and bounded."""
    if value is None:
        return {}
    if not isinstance(value, dict) or len(value) > MAX_WITHDRAWN:
        raise ProtocolError("'controls' must be an object of job numbers and counters")
    try:
        out = {int(k): v for k, v in value.items()}
    except (TypeError, ValueError):
        raise ProtocolError("'controls' must be an object of job numbers and counters") from None
    if not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**63 and 0 < k < 2**63
               for k, v in out.items()):
        raise ProtocolError("'controls' must be an object of job numbers and counters")
    return out


def for_lower(db: sqlite3.Connection, lower: str, theirs: Mapping[int, int]) -> list[dict[str, Any]]:
    """The statements ``lower`` has not had: of the jobs waiting here for its subtree or handed to it,
    and of those it says it holds."""
    rows = db.execute("SELECT c.job_no, c.n FROM controls c WHERE EXISTS (SELECT 1 FROM jobs j"
                      " WHERE j.job_no = c.job_no AND ((j.state=? AND j.handed_to=?) OR (j.state=? AND j.dest IN"
                      " (SELECT host FROM routes WHERE via=?))))", (jobs.HANDED, lower, jobs.WAIT, lower))
    found = dict(rows.fetchall())
    for job_no in {*theirs} - set(found):
        row = db.execute("SELECT n FROM controls WHERE job_no=?", (job_no,)).fetchone()
        if row is not None:
            found[job_no] = row[0]
    newer = sorted(job_no for job_no, n in found.items() if n > theirs.get(job_no, 0))
    return of_jobs(db, newer)


def of_jobs(db: sqlite3.Connection, job_nos: Iterable[int]) -> list[dict[str, Any]]:
    """The statements held here of ``job_nos``."""
    out = []
    for job_no in sorted(set(job_nos)):
        row = db.execute("SELECT record FROM controls WHERE job_no=?", (job_no,)).fetchone()
        if row is not None:
            out.append(json.loads(row[0]))
    return out


def believe(db: sqlite3.Connection, key: str | None, items: Any, log: Callable[[str], None]) -> list[Control]:
    """Keep the statements that the managing server (``key``) signed and that are newer than those held;
    any other is logged and changes nothing."""
    if not items:
        return []
    if not isinstance(items, list):
        raise ProtocolError("'controls' must be a list of job control statements")
    new = []
    for d in items:
        c = Control.from_json(d)
        if key is None or not identity.verify(key, c.body(), c.sig):
            log(f"refused the control of job {c.job_no}: it does not verify with the managing server's key")
            continue
        if c.n > _held(db, c.job_no):
            new.append(c)
    if new:
        with Transaction(db):
            for c in new:
                _store(db, c)
        for c in new:
            log(f"job {c.job_no}: control {c.n} from the managing server: "
                + (f"suspended ({c.suspended})" if c.suspended else "running")
                + (f", {len(c.withdrawn)} destination(s) withdrawn" if c.withdrawn else ""))
    return new


def settle(db: sqlite3.Connection, host: str, log: Callable[[str], None]) -> list[Result]:
    """Drop the withdrawn jobs still waiting here (not handed on, not begun): DELETE (ID-INVALID)."""
    ended = results.withdraw_waiting(db, f"withdrawn by the managing server before {host} handed it on or "
                                     f"began it", now_text())
    if ended:
        log(f"dropped {len(ended)} withdrawn job(s) from the temporary job storehouse")
    return ended
