"""One pass of a lower system (``rdsft -a``) and the sending of results.

A pass checks in with the upper system once for this host and every host
below it, keeps the jobs it gets and acknowledges them, fetches each needed
package once, installs this host's own jobs, and sends the results upward.
An install error ends that job only; a communication error ends the pass.
Every step is committed before the next, so a pass killed at any point is
finished by the next one: no job is lost or installed twice.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import time
from collections.abc import Callable

from rds import cleanup, crashpoints, fsutil, install, jobs, results, startup, state, status
from rds.errors import IntegrityError, JobRecordError, Refused
from rds.home import Home
from rds.jobs import Job
from rds.log import logger
from rds.packages import Manifest, Storehouse
from rds.protocol import UpperClient
from rds.results import Result
from rds.transport import connect


@dataclasses.dataclass
class PassReport:
    received: int = 0
    fetched: list[str] = dataclasses.field(default_factory=list)
    installed: list[Result] = dataclasses.field(default_factory=list)
    sent: int = 0

    @property
    def failed(self) -> list[Result]:
        return [r for r in self.installed if r.status != "COMPLETE"]


def run_once(home: Home, sleep: Callable[[float], None] = time.sleep) -> PassReport:
    log = logger(home)
    report = PassReport()
    with home.lock("rdsft"):
        fsutil.remove_strays(home.packages)
        cleanup.retention_after_boot(home)  # once per boot, as JP1 deletes expired packages at power-on
        db = state.connect(home.db_path)
        store = Storehouse(home.packages)
        client = connect(home, sleep=sleep, log=log.warning)
        try:
            found, manifests = client.checkin(jobs.subtree(db), wake=startup_address(home))
            crashpoints.reach("checked-in")
            report.received = jobs.store(db, found, manifests=manifests)
            status.record(home, found, "KEEPING")
            crashpoints.reach("stored")
            # startup requests log in below while the packages come; they are sent once they are here
            requests = startup.begin(home, db, log.info, [j.job_no for j in found]) if report.received else None
            try:
                client.ack(found)
                crashpoints.reach("acked")
                if client.invalid:
                    n = cleanup.upper_invalidated(db, store, client.invalid, client.where, home.settings)
                    if n:
                        log.info(f"{n} job(s) invalid: their package left the storehouse of {client.where}")
                if found:
                    log.info(f"received {len(found)} job(s) from {client.where}, {report.received} new")
                report.fetched = fetch_needed(db, store, client, log.info)
                status.kept(home, db, store)
            finally:
                if requests is not None:
                    requests.finish()
            report.installed = install_own(home, db, store, log.info)
            report.sent = send_results(home, db, client)
        finally:
            client.link.close()
            db.close()
    return report


def startup_address(home: Home) -> str | None:
    """Where this host's upper system sends it startup requests: StartupAddress, else this home's
    path when the upper system is on this machine; over SSH without StartupAddress, nowhere (it polls)."""
    s = home.settings
    if s.startup_address is not None:
        return s.startup_address
    return None if (s.managing_host or "").startswith("ssh://") else str(home.path)


def _manifest(db: sqlite3.Connection, job: Job) -> Manifest:
    row = db.execute("SELECT record FROM jobs WHERE job_no=? AND dest=?", (job.job_no, job.dest)).fetchone()
    try:
        return Manifest.from_json(json.loads(row[0])["manifest"])
    except (KeyError, TypeError, ValueError, RecursionError):  # a damaged state database
        raise JobRecordError(f"job {job.key}: its record holds no valid manifest") from None


def fetch_needed(db: sqlite3.Connection, store: Storehouse, client: UpperClient,
                 log: Callable[[str], None]) -> list[str]:
    """Bring every package that a job held here needs, once each."""
    needed: dict[str, Manifest] = {}
    for job in jobs.in_state(db, jobs.WAIT) + jobs.in_state(db, jobs.INSTALLING):
        if job.type == jobs.DELETE:
            continue  # deletes a package; needs none
        m = _manifest(db, job)
        have = store.get(m.id)
        if have is not None and have.sha256 != m.sha256:
            log(f"package {m.id} here differs from the one at {client.where}; fetching it again")
            store.remove(m.id)
            have = None
        if have is None:
            needed[str(m.id)] = m
    fetched = []
    for key, m in sorted(needed.items()):
        part = store.partial_path(m.id, m.sha256)
        log(f"fetching package {key} from {client.where} from byte {part.stat().st_size if part.exists() else 0}")
        try:
            client.fetch(store, m)
        except (IntegrityError, Refused) as e:
            log(str(e))  # the jobs stay; the next pass fetches again
            continue
        crashpoints.reach("fetched")
        log(f"fetched package {key} ({m.size} bytes) from {client.where}")
        fetched.append(key)
    return fetched


def install_own(home: Home, db: sqlite3.Connection, store: Storehouse, log: Callable[[str], None]) -> list[Result]:
    done = []
    host = home.host
    todo = [(j, True) for j in jobs.in_state(db, jobs.INSTALLING, host)]
    todo += [(j, False) for j in jobs.in_state(db, jobs.WAIT, host)]
    for job, resumed in todo:
        if jobs.state_of(db, job) != (jobs.INSTALLING if resumed else jobs.WAIT):
            continue  # a DELETE job before it invalidated it
        m = _manifest(db, job)
        if job.type == jobs.DELETE:
            res = cleanup.delete_job(home, db, job)
            results.record(db, res)
            status.record_results(home, db, [res])
            log(f"job {job.job_no} {m.id}: {res.status}: {res.message}")
            done.append(res)
            continue
        if not store.has(m.id):
            continue  # not fetched yet (its download failed): the next pass
        if not resumed:
            jobs.begin_install(db, job)
        crashpoints.reach("installing")
        status.record(home, [job], "GEN_START")
        res = install.install(home, store, job, m, resumed, log)
        crashpoints.reach("installed")
        results.record(db, res)  # the job is DONE in the same commit
        status.record_results(home, db, [res])
        install.forget(home, job)
        log(f"job {job.job_no} {m.id}: {res.status}: {res.message}")
        done.append(res)
    return done


def send_results(home: Home, db: sqlite3.Connection, client: UpperClient) -> int:
    """Send every result not yet acknowledged upward; they stay on disk until then."""
    sent = 0
    with home.lock("send"):
        while batch := results.unsent(db, limit=500):
            client.report(batch)
            crashpoints.reach("reported")
            results.mark_sent(db, batch)
            sent += len(batch)
    return sent


def send_once(home: Home) -> int:
    db = state.connect(home.db_path)
    try:
        if not results.unsent(db, limit=1):
            return 0
        client = connect(home, log=logger(home).warning)
        try:
            return send_results(home, db, client)
        finally:
            client.link.close()
    finally:
        db.close()

