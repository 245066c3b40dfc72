"""Startup requests: the upper system wakes a lower one so it checks in now.

A startup request carries no authority: it only makes the lower system run
the pass it would run at its next poll, against the upper system it is
configured to trust.  Where it goes is what the lower system said at its last
check-in (``wake``, from its StartupAddress setting, or its home's path when
it reaches its upper system on this machine):

- the absolute path of a home on this machine: direct (``wake_home``);
- ``ssh://[user@]host[:port]``: over SSH to ``rds-wake``, the forced command
  of this system's key on the lower one (rds.transport.wake), which then does
  the same there.

Either way, if the lower home's ``rdsma`` runs it is woken (SIGUSR1), else
``rdsft -a`` is started for it.  A lower system that said nothing gets no
request: it gets its jobs when it polls, and that is not a failure.  At most
``MaxConnectClients`` requests are under way at once, each bounded by
``ConnectTimeout``.  The flag files decide who is started (rds.flags); when a
request was tried and failed and ``.cltstsud`` exists, the lower system's
waiting jobs are reported EXEC-ERROR.

A relay ``begin``s its requests as soon as it has stored new jobs, so the
SSH logins happen while it fetches their packages, and ``finish``es them once
the packages are here: the lower system then finds everything it asks for.
(A JIT relay fetches in its pass its own packages and those of the lower
systems it wakes, rds.poller.fetch_for_woken; a polling lower system's package
comes when the lower system asks for it, see rds.cache.)
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import select
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from rds import cache, codes, crashpoints, daemon, database, events, flags, jobs, results
from rds.clock import now_text
from rds.errors import CommunicationError, RdsError, SettingsError
from rds.home import Home
from rds.log import logger
from rds.packages import PackageId
from rds.results import Result
from rds.storehouse import Storehouse

T = TypeVar("T")


# Startup requests are coalesced and spaced: a wake while a pass it started runs, is starting or
# waits only marks "run again once" (run/wake.again) and returns.  The pass holds run/wake.lock
# from before it is started (the waker takes it and hands it down) until no mark is left, so at
# most one pass waits behind the running one.  No such pass starts sooner than StartupInterval
# (default 60 s) after the one before it began (run/wake.last), so a flood of wakes costs one
# pass per StartupInterval; a lone wake starts its pass at once, and a pass with no mark behind it
# ends its process.  rdsma coalesces SIGUSR1 the same way (a wake during a pass: one more pass).
WAKE_LOCK = "wake.lock"
WAKE_AGAIN = "wake.again"
WAKE_LAST = "wake.last"  # its mtime: when the last pass started by a wake began
# how long rds-wake waits for the upper system's word before waking anyway (it logs in early, while it
# still fetches what this host will ask for; rds.transport.wake.HOLD stays well below this)
WAIT_MAX = 120.0
WAKE_FD = "RDS_WAKE_FD"  # in the environment of a pass started by a wake: the inherited lock


def woken(path: Path | None) -> str:
    """rds-wake as sshd runs it on this lower system: wait for the upper system's word (``WAIT_MAX`` at
    most), wake the home at ``path`` (``wake_home``), log who asked; says how (rds.cli.wake, rds.forced)."""
    from rds.home import default_home

    path = path if path is not None else default_home()
    if not (path / "FORMAT").is_file():
        raise SettingsError(f"{path}: no rds home here")  # and none is made: the forced command may be wrong
    home = Home.open(path, create=False)
    _wait_for_word()
    how = wake_home(home)
    caller = os.environ.get("SSH_CLIENT", "").split(" ")[0] or "a local caller"
    logger(home).info(f"startup request from {caller}: {how}")
    return how


def _wait_for_word() -> None:
    """Until standard input gives a byte or ends (the content is not read for meaning), at most WAIT_MAX."""
    try:
        if sys.stdin is None or sys.stdin.isatty():
            return
        fd = sys.stdin.fileno()
    except (OSError, ValueError):
        return
    ready, _, _ = select.select([fd], [], [], WAIT_MAX)
    if ready:
        with contextlib.suppress(OSError):
            os.read(fd, 1)


def wake_home(home: Home) -> str:
    """Make ``home`` check in now: wake its rdsma, else start a detached ``rdsft -a``, unless one started
    by a wake holds the wake lock (it then runs again once); says which."""
    if daemon.wake(home, "rdsma"):
        return "woke its rdsma"
    (home.run / WAKE_AGAIN).touch()  # before the lock is tried: a pass about to end sees one or the other
    fd = os.open(home.run / WAKE_LOCK, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return "a pass runs or ran just now: marked to run again once"
        with open(home.log_dir / "startup.out", "ab") as out:
            subprocess.Popen(daemon.foreground_argv("rdsft", "-a"), pass_fds=(fd,),
                             env=crashpoints.child_env(RDS_HOME=str(home.path), **{WAKE_FD: str(fd)}),
                             stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    finally:
        os.close(fd)  # the pass holds the lock now
    return "started rdsft -a"


def woken_passes(home: Home, one_pass: Callable[[], T], sleep: Callable[[float], None] = time.sleep) -> T:
    """Run ``one_pass``, StartupInterval after the last one began, and again while wakes marked it
    (see WAKE_LOCK); in a pass not started by a wake, just once.  Returns the last pass's result."""
    fd_text = os.environ.pop(WAKE_FD, None)
    if fd_text is None or not fd_text.isdigit():
        return one_pass()
    fd = int(fd_text)
    again, last = home.run / WAKE_AGAIN, home.run / WAKE_LAST
    interval = home.settings.startup_interval
    log = logger(home)
    try:
        while True:
            sleep(_until(last, interval))  # wakes meanwhile only mark
            again.unlink(missing_ok=True)
            last.touch()
            result = one_pass()
            if not again.exists():
                fcntl.flock(fd, fcntl.LOCK_UN)
                # a wake that found the lock held just before it was released left its mark: take it back
                if not again.exists():
                    return result
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    return result  # another wake started a pass of its own
            log.info(f"startup requests came during the pass: running again once, "
                     f"{interval:g}s after it began (StartupInterval)")
    finally:
        os.close(fd)


def _until(last: Path, interval: float) -> float:
    """Seconds until StartupInterval has passed since the last woken pass began (at most the interval)."""
    try:
        since = time.time() - last.stat().st_mtime
    except FileNotFoundError:
        return 0.0
    return min(interval, max(0.0, interval - since))


def _wake_path(address: str, lower: str) -> str:
    path = Path(address)
    if not (path / "FORMAT").is_file():
        raise CommunicationError(f"{lower}: no rds home at {address}")
    return wake_home(Home(path))


class Requests:
    """Startup requests under way: ``begin`` prepares them, ``finish`` sends them and reports."""

    def __init__(self, home: Home, db: sqlite3.Connection, log: Callable[[str], None],
                 jobs_of: list[int] | None = None) -> None:
        self.home = home
        self.db = db
        self.log = log
        self.waiting = jobs.waiting_lowers(db, jobs_of)
        self.go = threading.Event()
        self.futures: dict[str, Future[str]] = {}
        self.pool: ThreadPoolExecutor | None = None
        if not self.waiting:
            return
        targets = []
        for lower in flags.startable(home, self.waiting, jobs.subtree(db), log):
            address = jobs.wake_address(db, lower)
            if address is None:
                log(f"no startup request to {lower}: it has not said where to reach it (StartupAddress); "
                    "it gets its jobs when it polls")
            else:
                targets.append((lower, address))
        if not targets:
            return
        self.pool = ThreadPoolExecutor(max_workers=max(1, home.settings.max_connect_clients),
                                       thread_name_prefix="startup")
        for lower, address in targets:
            self.futures[lower] = self.pool.submit(self._one, lower, address)

    def _one(self, lower: str, address: str) -> str:
        if not address.startswith("ssh://"):
            self.go.wait()
            return _wake_path(address, lower)
        from rds.transport.wake import WakeRequest

        request = WakeRequest(self.home.settings, address, lower)
        try:
            request.open()  # log in now; rds-wake waits for the word
            self.go.wait()
            return request.send()
        finally:
            request.close()

    def finish(self) -> dict[str, bool]:
        """Send the requests, wait for their answers; returns who was reached."""
        self.go.set()
        reached = {}
        for lower, future in self.futures.items():
            error: Any = None
            try:
                how = future.result()
            except (RdsError, OSError) as e:
                error = e
            reached[lower] = error is None
            if error is None:
                self.log(f"startup request to {lower}: {how}")
                continue
            self.log(f"startup request to {lower} failed: {error}")
            if flags.is_set(self.home, "cltstsud"):
                for job in self.waiting[lower]:
                    results.keep(self.db, Result(job.job_no, job.dest, codes.EXEC_ERROR,
                                                   f"startup request to {lower} failed: {error}", now_text()))
                self.log(f"{self.home.prm / flags.CLTSTSUD} exists: reported EXEC-ERROR for "
                         f"{len(self.waiting[lower])} job(s)")
        if self.pool is not None:
            self.pool.shutdown()
        self.announce(reached)
        return reached

    def announce(self, reached: dict[str, bool]) -> None:
        """Who was started, who not, who was not asked (rds.events.Started), for the jobs whose package
        is here or comes when the lower system asks for it (a JIT relay, rds.cache)."""
        s = self.home.settings
        on_demand = not s.is_managing_server and s.caching_policy == cache.JIT
        store = Storehouse.of(self.home)
        here: dict[PackageId, bool] = {}  # a job to 100,000 hosts asks the storehouse once, not 100,000 times
        for held in self.waiting.values():
            for j in held:
                if not on_demand and j.package not in here:
                    here[j.package] = store.has(j.package)
        for lower, held in self.waiting.items():
            ready = [j for j in held if on_demand or here[j.package]]
            database.announce(self.db, events.Started(lower, ready, reached.get(lower)))


def begin(home: Home, db: sqlite3.Connection, log: Callable[[str], None],
          jobs_of: list[int] | None = None) -> Requests:
    """Start the startup requests for the lower systems with jobs waiting; send them with ``finish``."""
    return Requests(home, db, log, jobs_of)


# Jobs dcmjexe handed to the managing server's rdsma (run/wake.jobs/JOB_NO): it sends their startup requests
# in its pass, pre-imported and without a login of its own to wait for, and dcmjexe returns at once.
HANDED = "wake.jobs"


def hand_over(home: Home, job_nos: list[int]) -> bool:
    """Leave the startup requests for ``job_nos`` to this home's rdsma if it runs; False if it does not
    (the caller sends them itself).  A file a job, removed once its requests are sent (rdsma's pass)."""
    if daemon.running_pid(home, "rdsma") is None:
        return False
    spool = home.run / HANDED
    spool.mkdir(mode=0o700, exist_ok=True)
    for n in job_nos:
        (spool / str(n)).touch()
    if daemon.wake(home, "rdsma"):
        return True
    for n in job_nos:
        (spool / str(n)).unlink(missing_ok=True)
    return False


def send_handed(home: Home, db: sqlite3.Connection, log: Callable[[str], None]) -> int:
    """The startup requests of the jobs handed over (``hand_over``); returns how many jobs they were."""
    spool = home.run / HANDED
    try:
        names = [p.name for p in spool.iterdir() if p.name.isdigit() and len(p.name) < 12]
    except FileNotFoundError:
        return 0
    if names:
        start_lowers(home, db, log, sorted(int(n) for n in names))
        for n in names:  # sent: a crash before this sends them again, which a lower system coalesces
            (spool / n).unlink(missing_ok=True)
    return len(names)


def start_lowers(home: Home, db: sqlite3.Connection, log: Callable[[str], None],
                 jobs_of: list[int] | None = None) -> dict[str, bool]:
    """Send startup requests to the lower systems with jobs waiting now; returns who was reached."""
    return begin(home, db, log, jobs_of).finish()
