"""Results: how each job ended, kept on disk until the upper system has them.

A result is keyed by its job like the job itself, ``(job_no, dest)``, at every
level; a result that arrives twice is taken once.  An interim status
(EXEC-ERROR...) may later give way to the install's outcome, never the reverse.
Only this module writes the ``results`` table; a result that settles a job
makes it DONE (rds.jobs) in the same commit, and each result kept is
announced (``events.Ended``) after it.

An outcome about a host below that a relay took before protocol 2 carries no
signature (its ``sig`` is empty, as migration 3 left it): no upper system
would believe it, and the relay cannot sign it for its host.  Such a result is
held (``held``): never sent up, and asked again of the lower system that leads
to its host at that system's next check-in (``resend``), which sends its own
copy again, signed by the host; that copy takes the held one's place
(docs/upgrade.md).
"""

from __future__ import annotations

import dataclasses
import sqlite3
import time
from collections.abc import Iterable
from typing import Any

from rds import codes, events, jobs
from rds.database import Transaction, announce
from rds.errors import ProtocolError
from rds.settings import valid_hostname

MESSAGE_MAX = 2000


@dataclasses.dataclass(frozen=True)
class Result:
    job_no: int
    dest: str
    status: str
    message: str
    finished: str
    by: str = ""  # the host that signed it: the destination, or a relay for EXEC-ERROR and LINE-DOWN
    sig: str = ""  # its signature (rds.trust); empty until this host sends its own result up
    attempt: int = 1  # the job's attempt it is about (dcmrtry); signed when above 1

    def _try(self, d: dict[str, Any]) -> dict[str, Any]:
        if self.attempt != 1:
            d["try"] = self.attempt
        return d

    def to_json(self) -> dict[str, Any]:
        d = {"job": self.job_no, "dest": self.dest, "status": self.status,
             "message": self.message, "finished": self.finished}
        if self.sig:
            d.update(by=self.by, sig=self.sig)
        return self._try(d)

    def body(self) -> dict[str, Any]:
        """What its signer signs."""
        return self._try({"kind": "result", "job": self.job_no, "dest": self.dest, "status": self.status,
                          "message": self.message, "finished": self.finished, "by": self.by})

    @classmethod
    def from_json(cls, d: Any) -> Result:
        try:
            r = cls(d["job"], d["dest"], d["status"], d["message"], d["finished"], d.get("by", ""), d.get("sig", ""),
                    d.get("try", 1))
            if not isinstance(r.attempt, int) or isinstance(r.attempt, bool) or not 0 < r.attempt < 2**31:
                raise ValueError(f"attempt {r.attempt!r}")
            if not isinstance(r.job_no, int) or isinstance(r.job_no, bool) or not 0 < r.job_no < 2**63:
                raise ValueError(f"job number {r.job_no!r}")
            if not isinstance(r.dest, str) or not valid_hostname(r.dest):
                raise ValueError(f"destination {r.dest!r}")
            if r.status not in codes.RESULT_STATUSES:
                raise ValueError(f"status {r.status!r}")
            if not isinstance(r.message, str) or not isinstance(r.finished, str):
                raise ValueError("message")
            if not isinstance(r.by, str) or not isinstance(r.sig, str) or len(r.sig) > 200 \
                    or (r.by and not valid_hostname(r.by)):
                raise ValueError("signature")
            return dataclasses.replace(r, message=r.message[:MESSAGE_MAX], finished=r.finished[:64])
        except (TypeError, KeyError, ValueError) as e:
            raise ProtocolError(f"not a valid result: {e}") from None


def _replaces(old: tuple[str, int] | None, r: Result) -> bool:
    """Whether ``r`` is news over the result held (status, attempt).  A later attempt replaces an
    earlier one; within one attempt an interim status gives way to a withdrawal or an outcome, and
    a withdrawal to the outcome (the withdrawal came too late: rds.control), never the reverse."""
    if old is None or r.attempt > old[1]:
        return True
    if r.attempt < old[1] or old[0] == r.status or old[0] in codes.OUTCOMES:
        return False
    return old[0] not in codes.WITHDRAWN or r.status in codes.OUTCOMES
_OUTCOMES = ", ".join(f"'{s}'" for s in codes.OUTCOMES)
# an outcome about another host, unsigned: taken from below before protocol 2 (this host signs its own as they go)
_HELD = f"sig = '' AND dest != ? AND status IN ({_OUTCOMES})"


def _keep(db: sqlite3.Connection, r: Result) -> bool:
    """Insert or upgrade ``r``; False when it was already known.  Call inside a transaction."""
    row = db.execute("SELECT try FROM jobs WHERE job_no=? AND dest=?", (r.job_no, r.dest)).fetchone()
    if row is not None and not r.sig and r.attempt == 1:  # made here: about the attempt held here
        r = dataclasses.replace(r, attempt=int(row[0]))
    if row is not None and r.attempt < row[0]:
        return False  # an earlier attempt's, late
    old = db.execute("SELECT status, try, sig FROM results WHERE job_no=? AND dest=?", (r.job_no, r.dest)).fetchone()
    if old is not None and not old[2] and old[0] in codes.OUTCOMES and r.sig and r.by == r.dest \
            and r.attempt == old[1]:
        # the host's own signed word in place of an unsigned copy from before protocol 2: sent up in its place
        db.execute("UPDATE results SET status=?, message=?, finished=?, sent=NULL, signer=?, sig=?"
                   " WHERE job_no=? AND dest=?",
                   (r.status, r.message[:MESSAGE_MAX], r.finished[:64], r.by, r.sig, r.job_no, r.dest))
        if old[0] == r.status:
            return False
        if r.status in codes.OUTCOMES:
            jobs.done(db, (r.job_no, r.dest))
        announce(db, events.Ended([r]))
        return True
    if not _replaces(None if old is None else (old[0], old[1]), r):
        return False
    db.execute(
        "INSERT INTO results (job_no, dest, status, message, finished, sent, signer, sig, try)"
        " VALUES (?, ?, ?, ?, ?, NULL, ?, ?, ?)"
        " ON CONFLICT(job_no, dest) DO UPDATE SET status=excluded.status, message=excluded.message,"
        " finished=excluded.finished, sent=NULL, signer=excluded.signer, sig=excluded.sig, try=excluded.try",
        (r.job_no, r.dest, r.status, r.message[:MESSAGE_MAX], r.finished[:64], r.by, r.sig, r.attempt),
    )
    if r.status in codes.OUTCOMES or r.status in codes.WITHDRAWN:
        jobs.done(db, (r.job_no, r.dest))
    announce(db, events.Ended([r]))
    return True


def keep(db: sqlite3.Connection, r: Result) -> bool:
    """Keep the result ``r`` (a job that ended settles as DONE in the same commit): in the caller's
    transaction if one is open, else in a commit of its own; False when it was already known."""
    if db.in_transaction:
        return _keep(db, r)
    with Transaction(db):
        return _keep(db, r)


def withdraw_waiting(db: sqlite3.Connection, message: str, finished: str, by: str = "",
                     job_no: int | None = None) -> list[Result]:
    """The jobs still WAIT here whose destination the managing server withdrew (rds.control) end
    DELETE (ID-INVALID), in one commit, the jobs DONE with them; returns those results."""
    where = "j.state=?" + ("" if job_no is None else " AND j.job_no=?")
    args: tuple[object, ...] = (jobs.WAIT,) if job_no is None else (jobs.WAIT, job_no)
    with Transaction(db):
        rows = db.execute(f"SELECT j.job_no, j.dest, w.status, j.try FROM jobs j JOIN withdrawn w"
                          f" ON w.job_no = j.job_no AND w.dest = j.dest WHERE {where}", args).fetchall()
        ended = [Result(r[0], r[1], r[2], message, finished, by, "", r[3]) for r in rows]
        db.execute(
            f"INSERT INTO results (job_no, dest, status, message, finished, sent, signer, sig, try)"
            f" SELECT j.job_no, j.dest, w.status, ?, ?, NULL, ?, '', j.try FROM jobs j JOIN withdrawn w"
            f" ON w.job_no = j.job_no AND w.dest = j.dest WHERE {where} ON CONFLICT(job_no, dest) DO UPDATE SET"
            f" status=excluded.status, message=excluded.message, finished=excluded.finished, sent=NULL,"
            f" signer=excluded.signer, sig='', try=excluded.try", (message, finished, by, *args))
        jobs.end_withdrawn(db, job_no)
        if ended:
            announce(db, events.Ended(ended))
    return ended


def to_history(db: sqlite3.Connection, job_no: int, statuses: Iterable[str],
               dests: Iterable[str] | None = None) -> list[tuple[str, int]]:
    """dcmrtry: the results of ``job_no`` at ``statuses`` (of ``dests``) move to ``history``; returns
    (dest, attempt) of each.  Call inside a transaction."""
    marks = ",".join("?" * len(list(statuses)))
    rows = db.execute(f"SELECT dest, try FROM results WHERE job_no=? AND status IN ({marks})",
                      (job_no, *statuses)).fetchall()
    wanted = None if dests is None else set(dests)
    moved = [(r[0], int(r[1])) for r in rows if wanted is None or r[0] in wanted]
    db.executemany("INSERT OR REPLACE INTO history (job_no, dest, try, status, message, finished)"
                   " SELECT job_no, dest, try, status, message, finished FROM results WHERE job_no=? AND dest=?",
                   [(job_no, d) for d, _ in moved])
    db.executemany("DELETE FROM results WHERE job_no=? AND dest=?", [(job_no, d) for d, _ in moved])
    return moved


def history(db: sqlite3.Connection, job_no: int) -> list[sqlite3.Row]:
    return list(db.execute("SELECT job_no, dest, try, status, message, finished FROM history WHERE job_no=?"
                           " ORDER BY dest, try", (job_no,)))


def accept(db: sqlite3.Connection, lower: str, results: Iterable[Result], own_host: str,
           kept: list[Result] | None = None) -> int:
    """Take results reported by ``lower`` (believed by rds.trust.result_faults): a host's own signed
    outcome whichever lower system carries it (its host may have moved since), what a relay says of a
    host only for ``lower``'s own subtree.

    Returns how many were new here; ``kept``, if given, receives them.
    """
    results = list(results)
    with Transaction(db):
        for r in results:
            if r.dest == own_host or (r.by != r.dest and r.dest != lower and jobs.route(db, r.dest) != lower):
                raise ProtocolError(f"{lower} reported a result for {r.dest}, which is not below it")
        new = [r for r in results if _keep(db, r)]
    if kept is not None:
        kept.extend(new)
    return len(new)


def unsent(db: sqlite3.Connection, limit: int = 1000, host: str | None = None) -> list[Result]:
    """Results not yet acknowledged by the upper system; given this ``host``, without the held ones."""
    where, args = ("", ()) if host is None else (f" AND NOT ({_HELD})", (host,))
    rows = db.execute("SELECT job_no, dest, status, message, finished, signer, sig, try FROM results"
                      f" WHERE sent IS NULL{where} ORDER BY finished, job_no, dest LIMIT ?", (*args, limit))
    return [Result(*r) for r in rows]


def held(db: sqlite3.Connection, host: str, via: str | None = None, limit: int = 1000) -> list[tuple[int, str]]:
    """The outcomes about hosts below ``host`` held unsigned, (job, dest), of the jobs handed to ``via``
    if given (its subtree has the result): each waits for its host to send it again, signed (``resend``)."""
    query = f"SELECT job_no, dest FROM results r WHERE sent IS NULL AND {_HELD}"
    args: tuple[object, ...] = (host,)
    if via is not None:
        query += " AND EXISTS (SELECT 1 FROM jobs j WHERE j.job_no=r.job_no AND j.dest=r.dest AND j.handed_to=?)"
        args += (via,)
    return [(r[0], r[1]) for r in db.execute(query + " ORDER BY job_no, dest LIMIT ?", (*args, limit))]


def resend(db: sqlite3.Connection, keys: Iterable[tuple[int, str]]) -> int:
    """The upper system holds these results unsigned (from before protocol 2): send them again, this
    host's own signed as they go, those from below as their hosts signed them (an unsigned one here
    is held in turn, and asked of the lower system).  Returns how many will go again."""
    with Transaction(db):
        return sum(db.execute("UPDATE results SET sent=NULL WHERE job_no=? AND dest=? AND sent IS NOT NULL",
                              key).rowcount for key in keys)


def handed_again(db: sqlite3.Connection, keys: Iterable[tuple[int, str]]) -> int:
    """The upper system handed these jobs again, which ended here already at the same attempt (their host
    moved, and the job followed it: rds.jobs.follow): their results go up again, to settle that copy
    too; the job is not run again.  Returns how many will go again."""
    with Transaction(db):
        return sum(db.execute("UPDATE results SET sent=NULL WHERE job_no=? AND dest=? AND sent IS NOT NULL"
                              " AND EXISTS (SELECT 1 FROM jobs j WHERE j.job_no=results.job_no AND j.dest=results.dest"
                              " AND j.state=? AND j.try=results.try)", (*key, jobs.DONE)).rowcount for key in keys)


def mark_sent(db: sqlite3.Connection, sent: Iterable[Result], now: float | None = None) -> None:
    """The upper system took ``sent``; a host's outcome of a job never held here, passed up for it
    (rds.trust.result_faults), is not kept any longer."""
    now = time.time() if now is None else now
    with Transaction(db):
        for r in sent:
            db.execute("UPDATE results SET sent=? WHERE job_no=? AND dest=? AND status=?",
                       (now, r.job_no, r.dest, r.status))
            db.execute("DELETE FROM results WHERE job_no=? AND dest=? AND sent IS NOT NULL AND NOT EXISTS"
                       " (SELECT 1 FROM jobs WHERE job_no=? AND dest=?)", (r.job_no, r.dest, r.job_no, r.dest))


def get(db: sqlite3.Connection, job_no: int, dest: str) -> Result | None:
    row = db.execute("SELECT job_no, dest, status, message, finished, signer, sig, try FROM results"
                     " WHERE job_no=? AND dest=?",
                     (job_no, dest)).fetchone()
    return None if row is None else Result(*row)
