"""One pass of a lower system (``rdsft -a``) and the sending of results.

A pass checks in with the upper system once for this host and every host
below it, keeps the jobs it gets and acknowledges them, does its Transfer jobs,
brings the packages of its own installs per the caching policy (rds.cache;
the hosts below get theirs when they ask), installs this host's own jobs, and
sends the results upward.
An install error ends that job only; a communication error ends the pass.
Every step is committed before the next, so a pass killed at any point is
finished by the next one: no job is lost or installed twice.  A pass holds the
home's pass lock and its state database (rds.session) from start to end; what
it changes is announced by the modules that change it, and after its fetches
it says which waiting jobs have their package (``events.Kept``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import sqlite3
import time
from collections.abc import Callable
from typing import Any

from rds import (
    cache,
    cleanup,
    codes,
    control,
    crashpoints,
    database,
    events,
    fsutil,
    hosts,
    install,
    jobs,
    results,
    session,
    startup,
    trust,
)
from rds.client import UpperClient
from rds.clock import now_text
from rds.errors import CommunicationError, IntegrityError, LockTimeout, ProtocolError, RdsError, Refused, UnableToCache
from rds.home import PASS_LOCK, Home
from rds.jobs import Job
from rds.log import logger
from rds.packages import Manifest
from rds.results import Result
from rds.storehouse import Storehouse
from rds.transport import Kept, connect


@dataclasses.dataclass
class PassReport:
    received: int = 0
    fetched: list[str] = dataclasses.field(default_factory=list)
    installed: list[Result] = dataclasses.field(default_factory=list)
    sent: int = 0
    damaged: list[str] = dataclasses.field(default_factory=list)  # downloads that came damaged (rds.cache)

    @property
    def failed(self) -> list[Result]:
        return [r for r in self.installed if r.status != "COMPLETE"]


def run_once(home: Home, sleep: Callable[[float], None] = time.sleep, kept: Kept | None = None) -> PassReport:
    """One pass; with ``kept`` (rdsma, KeepConnection YES), on the session kept since the last pass, if any,
    and kept for the next one if the upper system keeps it."""
    log = logger(home)
    report = PassReport()
    with session.opened(home, PASS_LOCK) as db:
        fsutil.remove_strays(home.packages)
        cleanup.retention_after_boot(home)  # once per boot, as JP1 deletes expired packages at power-on
        store = Storehouse.of(home)
        client = kept.take(home, sleep, log.warning) if kept is not None else \
            connect(home, sleep=sleep, log=log.warning)
        ok = False
        try:
            try:
                found, manifests = check_in(home, db, client, log.info)
            except (CommunicationError, ProtocolError, Refused) as e:
                if kept is None or not kept.reused:
                    raise
                # the kept session ended at the upper system's end (it closes one it would not open afresh,
                # and a NAT may drop one): a new login now, checked as any, and no failure counted
                log.info(f"{client.where}: the session kept since the last pass has ended ({e}); logging in again")
                client.link.close()
                client = kept.again(home, sleep, log.warning)
                found, manifests = check_in(home, db, client, log.info)
            crashpoints.reach("checked-in")
            if client.moved and (gone := trust.left(db, home.host, client.moved)):
                n = jobs.moved_away(db, gone)
                log.info(f"{', '.join(gone)} moved away from below {home.host} (their own signed route statements, "
                         f"as {client.where} has them): their routes and {n} job(s) not ended here dropped; "
                         f"each job follows its host")
            if client.resend and (n := results.resend(db, client.resend)):
                log.info(f"{client.where} asks again for {n} result(s) it holds unsigned from before protocol 2: "
                         f"each goes up again as its host signed it")
            key = trust.learn_signer(home.settings, db, client.signer, client.where, log.warning)
            if client.signed:
                keep_signed(db, key, client.signed, log.info)
            good = refuse_forged(home, db, key, found, manifests, log.warning)
            report.received = jobs.store(db, good, manifests=manifests)
            if len(good) > report.received and (n := results.handed_again(db, [(j.job_no, j.dest) for j in good])):
                log.info(f"{client.where} handed again {n} job(s) that ended here already: not run again, "
                         f"their result(s) go up again")
            control.believe(db, key, client.controls, log.info)
            control.settle(db, home.host, log.info)  # withdrawn: dropped before they go further
            crashpoints.reach("stored")
            # startup requests log in below while the packages come; they are sent once they are here
            requests = startup.begin(home, db, log.info, [j.job_no for j in found]) if report.received else None
            try:
                if control.believe(db, key, client.ack(found), log.info):  # a withdrawal crossed them
                    control.settle(db, home.host, log.info)
                crashpoints.reach("acked")
                if client.invalid:
                    n = cleanup.upper_invalidated(db, store, client.invalid, client.where, home.settings)
                    if n:
                        log.info(f"{n} job(s) invalid: their package left the storehouse of {client.where}")
                if found:
                    log.info(f"received {len(found)} job(s) from {client.where}, {report.received} new")
                if n := cleanup.partial_downloads(home, db, store):  # what killed runs left, no one resumes
                    log.info(f"removed {n} partial download(s) that no job here needs, or that were empty")
                report.fetched, ended = fetch_needed(home, db, store, client, log.info, report.damaged)
                if requests is not None:
                    report.fetched += fetch_for_woken(home, db, store, client, requests, log.info)
                announce_kept(home, db, store)
            finally:
                if requests is not None:
                    requests.finish()
            report.installed = ended + install_own(home, db, store, log.info, key)
            try:
                report.sent = send_results(home, db, client)
            except CommunicationError:
                if not report.installed:
                    raise
                # scripts ran meanwhile, and rds-serve closes a session idle for ServeIdleTimeout: a new one
                client.link.close()
                client = connect(home, sleep=sleep, log=log.warning)
                report.sent = send_results(home, db, client)
            ok = True
        finally:
            if kept is not None:
                kept.give_back(client, ok)
            else:
                client.link.close()
    return report


def check_in(home: Home, db: sqlite3.Connection, client: UpperClient,
             log: Callable[[str], None] | None = None) -> tuple[list[Job], dict[str, Manifest]]:
    """Check in with this host's route statement, the statements of the hosts below that the upper system
    has not had, and all their names; once more at once with those it could not prove (it lost them).

    When this host's last statement names an upper system, the check-in is sent before the upper's hello
    comes (one round trip less, issue 16): the hello and the answer then come together.  If the hello
    names another upper system (moved, or rebuilt under a new name), that answer (a refusal) is dropped
    and the check-in is made again, with a statement naming the new one.  Nothing in an answer is
    believed before the hello that precedes it is checked (rds.transport.link).
    """
    guess = trust.last_upper(home.identity, db, home.host)
    wake, unsigned = startup_address(home), jobs.unsigned(db)
    held, said = control.held(db), hosts.reported(db, home.host)
    if guess is not None:
        own = trust.own_statement(home.identity, db, home.host, guess)  # the stored one: nothing written
        statements, below = trust.statements_up(db, own, jobs.subtree(db), guess)
        client.send_checkin(statements, below, wake=wake, unsigned=unsigned, controls=held, hosts=said)
    upper = client.link.hello()
    if guess is not None and upper != guess:
        with contextlib.suppress(Refused, ProtocolError):  # a cut link is raised: the pass ends
            client.checkin_answer()
        if log is not None:
            log(f"{client.where} is {upper} now, not {guess}: checking in there with a new route statement")
        guess = None
    if guess is None:
        own = trust.own_statement(home.identity, db, home.host, upper)  # a new upper: all told again
        statements, below = trust.statements_up(db, own, jobs.subtree(db), upper)
        said = hosts.reported(db, home.host)
        found, manifests = client.checkin(statements, below, wake=wake, unsigned=unsigned, controls=held, hosts=said)
    else:
        found, manifests = client.checkin_answer()
    trust.sent(db, upper, statements, client.unproven)
    hosts.told(db, said)
    carried = {d["host"] for d in statements}
    if any(h not in carried for h in client.unproven):
        again, below = trust.statements_up(db, own, jobs.subtree(db), upper)
        if any(d["host"] not in carried for d in again):  # statements it lost that this host has
            found, manifests = client.checkin(again, below, wake=wake, controls=held, hosts=said)
            trust.sent(db, upper, again, client.unproven)
    return found, manifests


def refuse_forged(home: Home, db: sqlite3.Connection, key: str | None, found: list[Job], manifests: dict[str, Manifest],
                  log: Callable[[str], None]) -> list[Job]:
    """The jobs the managing server really signed, with its manifests; any other is never acted on: it
    ends here in ERROR (EXEC-ERROR for a host below), which goes up like any result."""
    good = []
    for job in found:
        fault = trust.job_fault(key, job, manifests.get(str(job.package)))
        if fault is None:
            good.append(job)
            continue
        log(f"refused job {job.key} from the upper system: {fault}")
        status = codes.ERROR if job.dest == home.host else codes.EXEC_ERROR
        results.keep(db, Result(job.job_no, job.dest, status, f"refused on {home.host}: {fault}", now_text()))
    return good


def keep_signed(db: sqlite3.Connection, key: str | None, copies: list[tuple[Job, Manifest]],
                log: Callable[[str], None]) -> None:
    """Signed copies of jobs held here from before signatures: kept once they verify (each stays held,
    unsigned, until then), so that they can be handed on."""
    held = set(jobs.unsigned(db))
    good = [(j, m) for j, m in copies if (j.job_no, j.dest) in held and trust.job_fault(key, j, m) is None]
    if good:
        jobs.keep_signed(db, good)
        log(f"{len(good)} job(s) held here from before signatures now signed by the managing server")
    if len(good) < len(copies):
        log(f"{len(copies) - len(good)} signed cop(ies) of held jobs not taken (unknown here or not verified)")


def startup_address(home: Home) -> str | None:
    """Where this host's upper system sends it startup requests: StartupAddress, else this home's
    path when the upper system is on this machine; over SSH without StartupAddress, nowhere (it polls)."""
    s = home.settings
    if s.startup_address is not None:
        return s.startup_address
    return None if (s.managing_host or "").startswith("ssh://") else str(home.path)


def fetch_needed(home: Home, db: sqlite3.Connection, store: Storehouse, client: UpperClient,
                 log: Callable[[str], None], damaged: list[str] | None = None) -> tuple[list[str], list[Result]]:
    """Do this host's Transfer jobs first, then bring the packages its own installs need, per the caching policy.

    Returns the packages fetched and the jobs that ended here (transfers, and
    installs whose package cannot be cached).  Jobs for the hosts below need
    nothing here: their packages are fetched when a lower system asks for them
    (rds.cache).  A download that came damaged is added to ``damaged``; its
    jobs stay, LINE-DOWN at the managing server until a pass brings a good copy.
    """
    fetched: list[str] = []
    ended: list[Result] = []
    damaged = [] if damaged is None else damaged

    def end(job: Job, status: str, message: str) -> None:
        ended.append(Result(job.job_no, job.dest, status, message, now_text()))
        results.keep(db, ended[-1])  # the job is DONE in the same commit

    def came_damaged(waiting: list[Job], e: IntegrityError) -> None:  # rds.cache logged it and told the upper
        damaged.append(str(e))
        for job in waiting:  # interim: the install's outcome replaces it
            results.keep(db, Result(job.job_no, job.dest, codes.LINE_DOWN, str(e), now_text()))

    own = jobs.in_state(db, jobs.WAIT, home.host) + jobs.in_state(db, jobs.INSTALLING, home.host)
    for job in [j for j in own if j.type == jobs.TRANSFER]:  # the emergency push: ahead of everything
        try:
            m, got = cache.obtain(home, store, db, job.package, lambda: client, log, force=True)
        except IntegrityError as e:
            came_damaged([job], e)
            continue
        except (LockTimeout, Refused, UnableToCache) as e:
            log(f"job {job.job_no} (transfer of {job.package}): {e}")
            if isinstance(e, UnableToCache):  # a relay above refused it
                end(job, codes.ERROR, str(e))
            continue  # else the job stays; the next pass tries again
        fetched += [str(m.id)] if got else []
        end(job, codes.COMPLETE, f"package {m.id} stored and verified on {home.host}")
        log(f"job {job.job_no} (transfer of {m.id}): COMPLETE")
    needed: dict[str, list[Job]] = {}
    for job in own:
        if job.type == jobs.INSTALL:
            needed.setdefault(str(job.package), []).append(job)
    for key, waiting in sorted(needed.items()):
        try:
            m, got = cache.obtain(home, store, db, waiting[0].package, lambda: client, log)
        except UnableToCache as e:  # reported upward as ERROR, not tried again and again
            log(str(e))
            for job in waiting:
                end(job, codes.ERROR, str(e))
            continue
        except IntegrityError as e:
            came_damaged(waiting, e)
            continue
        except (LockTimeout, Refused) as e:  # LockTimeout: another process still fetches it
            log(str(e))  # the jobs stay; the next pass fetches again
            continue
        if got:
            fetched.append(key)
    return fetched, ended


def fetch_for_woken(home: Home, db: sqlite3.Connection, store: Storehouse, client: UpperClient,
                    requests: startup.Requests, log: Callable[[str], None]) -> list[str]:
    """A JIT relay that wakes lower systems for new jobs fetches their packages now, on this pass's link,
    while the startup requests log in, and says "now" once they are here: the lower system asks for
    them at once, and finds them (issue 16: the relay's fetch leaves the push's critical path).

    Only for the lower systems being woken (the others ask when they poll, and JIT fetches then);
    a package that cannot be had now is left to the lower system's read, which says why.
    """
    if home.settings.is_managing_server or home.settings.caching_policy != cache.JIT:
        return []
    wanted = {j.package for lower in requests.futures for j in requests.waiting.get(lower, [])
              if j.type != jobs.DELETE}
    fetched = []
    for pid in sorted(wanted, key=str):
        try:
            m, got = cache.obtain(home, store, db, pid, lambda: client, log)
        except (RdsError, OSError) as e:
            log(f"package {pid} for the lower systems woken: not fetched now ({e}); fetched when they ask")
            continue
        if got:
            fetched.append(str(m.id))
    return fetched


def announce_kept(home: Home, db: sqlite3.Connection, store: Storehouse) -> None:
    """After the fetches of a pass: which jobs still waiting here have their package, or will get it
    when a lower system asks (JIT, rds.cache), and which could not get it (rds.events.Kept)."""
    waiting = [j for j in jobs.in_state(db, jobs.WAIT) + jobs.in_state(db, jobs.INSTALLING)
               if j.type != jobs.DELETE]  # a DELETE job brings no package
    have = {p: store.has(p) for p in {j.package for j in waiting}}
    missing = [j for j in waiting
               if not have[j.package] and (j.dest == home.host or not cache.may_fetch(home, db, j.package))]
    gone = set(missing)
    database.announce(db, events.Kept([j for j in waiting if j not in gone], missing))


def install_own(home: Home, db: sqlite3.Connection, store: Storehouse, log: Callable[[str], None],
                key: str | None = None) -> list[Result]:
    done = []
    host = home.host
    todo = [(j, True) for j in jobs.in_state(db, jobs.INSTALLING, host)]
    todo += [(j, False) for j in jobs.in_state(db, jobs.WAIT, host)]
    now = time.time()
    for job, resumed in todo:
        if not resumed and (job.waits_until() or 0) > now:  # handed out ahead: its package is here already
            log(f"job {job.job_no} {job.package}: waits until {job.not_before} (not before, this host's clock)")
            continue
        if jobs.state_of(db, job) != (jobs.INSTALLING if resumed else jobs.WAIT):
            continue  # a DELETE job before it invalidated it
        if job.type == jobs.DELETE:
            res = cleanup.delete_job(home, db, job)
            results.keep(db, res)
            log(f"job {job.job_no} {job.package}: {res.status}: {res.message}")
            done.append(res)
            continue
        if job.type != jobs.INSTALL:
            continue  # a Transfer job: done by fetch_needed
        m = store.get(job.package)  # current and verified by fetch_needed, which may have replaced the job's
        if m is None:
            continue  # not fetched yet (its download failed): the next pass
        fault = None if key is None else trust.manifest_fault(key, m)
        if fault is not None:  # a client verifies before it installs, whatever brought the copy
            res = Result(job.job_no, job.dest, codes.ERROR, f"not installed: {fault}", now_text())
            results.keep(db, res)
            log(f"job {job.job_no} {m.id}: {res.status}: {res.message}")
            done.append(res)
            continue
        if not resumed:
            jobs.begin_install(db, job)
        crashpoints.reach("installing")
        res = install.install(home, store, job, m, resumed, log)
        crashpoints.reach("installed")
        results.keep(db, res)  # the job is DONE in the same commit
        install.forget(home, job)
        log(f"job {job.job_no} {m.id}: {res.status}: {res.message}")
        done.append(res)
    return done


def send_results(home: Home, db: sqlite3.Connection, client: UpperClient) -> int:
    """Send every result not yet acknowledged upward; they stay on disk until then.  One the upper system
    refuses for a reason that may pass (a route, key or job it does not know yet, its bound on what waits
    to go up: rds.trust.Refusal) stays here and goes again with the next pass; one refused for good is
    dropped (the upper system's log says why).  Returns how many the upper system has now."""
    sent = 0
    if not results.unsent(db, limit=1, host=home.host):
        return 0  # an idle pass takes no lock (one that comes meanwhile goes with the next pass, or rdssnd)
    log = logger(home)
    kept: set[tuple[int, str]] = set()  # refused for now: not sent again in this pass
    with home.lock("send"):
        while batch := [r for r in results.unsent(db, limit=500 + len(kept), host=home.host)
                        if (r.job_no, r.dest) not in kept][:500]:
            # this host's own results (and what it says about the hosts below it) are signed as they go up
            _, refused, later = client.report_each(
                [r if r.sig else trust.sign_result(home.identity, home.host, r) for r in batch])
            crashpoints.reach("reported")
            results.mark_sent(db, [r for r in batch if (r.job_no, r.dest) not in later])
            sent += len(batch) - len(later)
            kept |= later
            if refused > len(later):
                log.warning(f"{client.where} refused {refused - len(later)} result(s) for good (its log says why): "
                            f"not sent again")
    said_later(home, log, client.where, len(kept))
    return sent


LATER_SAY = 3600.0  # the "refused for now" line: when their number changes, else once an hour


def said_later(home: Home, log: Any, where: str, n: int, now: float | None = None) -> None:
    """Say how many results the upper system refused for now, when that number changes or once LATER_SAY
    passed since it was said (a refusal that lasts was a line every pass: 288 a day every 5 minutes);
    ``run/refused-later`` remembers the number and when it was said."""
    path = home.run / "refused-later"
    now = time.time() if now is None else now
    if not n:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        return
    try:
        count, when = (int(x) for x in path.read_text().split()[:2])
    except (OSError, ValueError):
        count, when = -1, 0
    if n == count and when <= now < when + LATER_SAY:
        return
    log.info(f"{where} refused {n} result(s) for now (a route, key or job it does not know yet, or its bound on "
             f"results waiting to go up): kept here to send again with each pass (said again when their number "
             f"changes, else hourly)")
    with contextlib.suppress(OSError):
        fsutil.atomic_write(path, f"{n} {int(now)}\n".encode())


def send_once(home: Home) -> int:
    with session.opened(home) as db:
        if not results.unsent(db, limit=1, host=home.host):
            return 0
        client = connect(home, log=logger(home).warning)
        try:
            return send_results(home, db, client)
        finally:
            client.link.close()

