"""Resident processes of a home (rdsma, rdssnd): pid file, signals, the loop.

One of each kind per home: a lock held for the process's life makes sure of
it, and ``run/NAME.pid`` says which process it is.  Signal handlers only
record the signal; the loop acts on it:

- SIGTERM: finish the pass under way, then stop; a second SIGTERM stops at
  once (every step of a pass is committed, so the next pass finishes it).
- SIGUSR1: wake up and do a pass now (a startup request, a new result).

rdsma polls at once when it starts, then after a random part of its interval
(``first_wait``), then every interval: a thousand hosts started together
(a power cut ends) spread their polls over the interval instead of all
checking in at the same second every time.

``run/NAME.state`` records when the process started and how its last pass
went; ``status`` reads it for ``rdsma --status`` and the others.

An upgrade reaches a running resident by itself: between passes (and at
least every CODE_CHECK seconds while it waits) it compares the installed
code with what it started on (``installation.identity``: the version and the
package's files); when they differ it stops as for SIGTERM and executes its
own command line again, in the same process (same pid for systemd and the
pid file, its resident server restarted with it), on the new code.  A pass
under way, an install included, is never cut for it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import select
import shutil
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from rds import crashpoints, fsutil, installation
from rds.clock import now_text, shown
from rds.errors import AlreadyRunning, NotRunning, RdsError, SystemError_
from rds.home import Home
from rds.log import logger

# the wait before a dead companion is started again, doubled while it keeps dying within the maximum
COMPANION_BACKOFF = 1.0
COMPANION_BACKOFF_MAX = 60.0
CODE_CHECK = 60.0  # seconds between two looks at the installed code while waiting


def pid_path(home: Home, name: str) -> Path:
    return home.run / f"{name}.pid"


def running_pid(home: Home, name: str) -> int | None:
    """The pid of this home's resident ``name``, if it runs.

    It runs while it holds the flock of ``run/NAME.life`` (filelock's lock,
    taken in Resident._alive); probed here with fcntl directly, so that
    rds-wake does not pay for importing filelock.
    """
    try:
        fd = os.open(home.run / f"{name}.life", os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        try:
            return int(pid_path(home, name).read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
    finally:
        os.close(fd)  # releases the probe's lock if it got it
    return None


def state_path(home: Home, name: str) -> Path:
    return home.run / f"{name}.state"


@dataclasses.dataclass(frozen=True)
class Status:
    """Whether a resident runs, since when, and how its last pass went (``None``: not known)."""

    name: str
    running: bool
    pid: int | None
    since: str | None
    last_pass: str | None  # when the last pass ended
    outcome: str | None  # ok, warning or error
    message: str | None

    def describe(self) -> str:
        """One line, times in local time with their offset."""
        head = (f"{self.name}: running (pid {self.pid}, since {shown(self.since)})" if self.running
                else f"{self.name}: not running")
        if self.last_pass is None:
            return head + "; no pass yet"
        return head + f"; last pass ended {shown(self.last_pass)}: {self.outcome}" + (
            f": {self.message}" if self.message else "")


def status(home: Home, name: str) -> Status:
    """What ``run/NAME.state`` and the life lock say about the resident ``name``."""
    pid = running_pid(home, name)
    try:
        state = json.loads(state_path(home, name).read_text())
        if not isinstance(state, dict):
            state = {}
    except (OSError, ValueError):
        state = {}
    found = state.get("last_pass")
    last: dict[str, str] = found if isinstance(found, dict) else {}
    since = state.get("started") if pid is not None and state.get("pid") == pid else None
    return Status(name, pid is not None, pid, since, last.get("ended"), last.get("outcome"), last.get("message"))


def wake(home: Home, name: str) -> bool:
    """Ask the resident ``name`` to do a pass now; False if it does not run."""
    pid = running_pid(home, name)
    if pid is None:
        return False
    try:
        os.kill(pid, signal.SIGUSR1)
    except ProcessLookupError:
        return False
    return True


def stop(home: Home, name: str, timeout: float = 60.0) -> int:
    """Send SIGTERM to the resident ``name`` and wait until it has stopped; returns its pid."""
    pid = running_pid(home, name)
    if pid is None:
        raise NotRunning(f"{name} is not running for {home.path}")
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while running_pid(home, name) is not None:
        if time.monotonic() > deadline:
            raise RdsError(f"{name} (pid {pid}) has not stopped after {timeout:g}s; it may be finishing an install")
        time.sleep(0.05)
    return pid


def start_background(home: Home, name: str, argv: list[str], wait: float = 10.0) -> int:
    """Start ``argv`` (a command that runs in the foreground) detached; returns its pid once it runs."""
    if (pid := running_pid(home, name)) is not None:
        raise AlreadyRunning(f"{name} is already running for {home.path} (pid {pid})")
    out = open(home.log_dir / f"{name}.out", "ab")  # noqa: SIM115 - handed to the child
    with out:
        import subprocess  # not at import: rds-serve, which never starts one, imports this module

        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, env=crashpoints.child_env(RDS_HOME=str(home.path)))
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if running_pid(home, name) == proc.pid:
            return proc.pid
        if (rc := proc.poll()) == 0:
            return proc.pid  # it had only one pass to do
        if rc is not None:
            tail = (home.log_dir / f"{name}.out").read_text(errors="replace").strip().splitlines()
            raise RdsError(tail[-1] if tail else f"{name} exited {rc} at start")
        time.sleep(0.02)
    raise SystemError_(f"{name} did not start within {wait:g}s (see {home.log_dir / f'{name}.out'})")


class Resident:
    """The loop of a resident process; ``one_pass`` does the work."""

    def __init__(self, home: Home, name: str, one_pass: Callable[[], str], interval: float | None,
                 every: tuple[float, Callable[[], str]] | None = None,
                 spread: Callable[[], float] | None = None,
                 companion: Callable[[], tuple[list[str], dict[str, str]]] | None = None) -> None:
        self.home = home
        self.name = name
        self.one_pass = one_pass
        self.interval = interval  # None: only when woken
        # rdsma: the wait after the first pass is this part (0 to 1) of the interval, drawn at random, so
        # that hosts started together poll at their own moments within the interval from then on
        self.spread = spread
        self.every = every  # (seconds, task): a side task on its own clock (rdsma's cache cleanup)
        self.every_due = None if every is None else time.monotonic() + every[0]
        self.log = logger(home)
        self.terms = 0
        self.woken = False
        self.passes = 0
        self.state: dict[str, object] = {}
        # a process that lives as long as this one (rdsma's resident server, rds.resident): started with a
        # pipe from here as its standard input, which ends when this process does, however it ends; started
        # again if it dies (after COMPANION_BACKOFF doubling while it keeps dying young)
        self.companion = companion
        self.companion_proc: Any = None
        self.companion_due: float | None = None
        self.companion_backoff = COMPANION_BACKOFF
        self.companion_started = 0.0
        self.code = b""  # installation.identity() as the loop started; another one later: an upgrade
        self.code_due = 0.0
        self.upgraded = False

    def _on_term(self, signum: int, frame: object) -> None:
        self.terms += 1
        if self.terms >= 2:
            self.log.warning(f"{self.name}: second SIGTERM, stopping at once")
            os._exit(0)

    def _on_usr1(self, signum: int, frame: object) -> None:
        self.woken = True

    def _start_companion(self) -> None:
        """Start the companion now, or note when to try again."""
        assert self.companion is not None
        import subprocess

        argv, env = self.companion()
        self.companion_due = None
        try:
            self.companion_proc = subprocess.Popen(argv, env=env, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                                   stderr=None, start_new_session=True)
            self.companion_started = time.monotonic()
            self.log.info(f"{self.name}: its resident server runs (pid {self.companion_proc.pid})")
        except OSError as e:
            self.log.warning(f"{self.name}: cannot start {argv[2:3]}: {e}")
            self.companion_due = time.monotonic() + self.companion_backoff

    def _check_companion(self) -> None:
        """Start again a companion that died (kill -9, a crash), spaced while it keeps dying young."""
        proc = self.companion_proc
        if self.companion is None or self.terms:
            return
        if proc is not None and proc.poll() is not None:
            young = time.monotonic() - self.companion_started < COMPANION_BACKOFF_MAX
            self.companion_backoff = min(self.companion_backoff * 2, COMPANION_BACKOFF_MAX) if young \
                else COMPANION_BACKOFF
            self.log.warning(f"{self.name}: its resident server (pid {proc.pid}) ended with status "
                             f"{proc.returncode}; starting it again in {self.companion_backoff:g}s")
            self.companion_proc = None
            self.companion_due = time.monotonic() + self.companion_backoff
            self.code_due = 0.0  # a resident server retires when the code changes under it: look now
        if self.companion_proc is None and self.companion_due is not None and time.monotonic() >= self.companion_due:
            self._start_companion()

    def _stop_companion(self) -> None:
        proc, self.companion_proc = self.companion_proc, None
        if proc is None:
            return
        with contextlib.suppress(OSError):
            proc.stdin.close()  # it ends when its input does; sessions under way finish in their own processes
        try:
            proc.wait(5.0)
        except Exception:  # noqa: BLE001 - subprocess.TimeoutExpired, without importing subprocess here
            proc.kill()
            proc.wait()

    @contextlib.contextmanager
    def _alive(self) -> Iterator[None]:
        import filelock

        lock = filelock.FileLock(str(self.home.run / f"{self.name}.life"))
        try:
            lock.acquire(timeout=0.5)  # running_pid() takes it for an instant to look
        except filelock.Timeout:
            pid = running_pid(self.home, self.name)
            raise AlreadyRunning(f"{self.name} is already running for {self.home.path} (pid {pid})") from None
        try:
            fsutil.atomic_write(pid_path(self.home, self.name), f"{os.getpid()}\n".encode())
            self.state = {"pid": os.getpid(), "started": now_text(), "last_pass": None}
            self._record()
            yield
        finally:
            with contextlib.suppress(FileNotFoundError):
                pid_path(self.home, self.name).unlink()
            lock.release()

    def run(self, max_passes: int | None = None) -> int:
        """Loop until SIGTERM (or ``max_passes``); returns the number of passes."""
        rfd, wfd = os.pipe()
        os.set_blocking(wfd, False)
        os.set_blocking(rfd, False)
        old = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR1, signal.SIGCHLD)}
        old_fd = signal.set_wakeup_fd(wfd)
        signal.signal(signal.SIGTERM, self._on_term)
        signal.signal(signal.SIGUSR1, self._on_usr1)
        if self.companion is not None:
            signal.signal(signal.SIGCHLD, lambda *_: None)  # wakes _wait (set_wakeup_fd) to look at it
        self.code = installation.identity()
        self.code_due = time.monotonic() + CODE_CHECK
        try:
            with self._alive(), self._database_held():
                if self.companion is not None:
                    self._start_companion()
                self.log.info(f"{self.name}: started (pid {os.getpid()}, interval "
                              f"{'MANUAL' if self.interval is None else f'{self.interval:g}s'})")
                if self.interval is None:  # MANUAL: never by itself, only when woken
                    self._wait(rfd)
                while not self.terms and not self._upgraded():
                    self.woken = False
                    self._pass()
                    if max_passes is not None and self.passes >= max_passes or self.interval == 0:
                        break
                    self._wait(rfd)
                if self.upgraded:
                    self.log.info(f"{self.name}: the installed rds changed (an upgrade): starting again on it "
                                  f"after {self.passes} pass(es), same pid")
                else:
                    self.log.info(f"{self.name}: stopped after {self.passes} pass(es)")
        finally:
            self._stop_companion()
            signal.set_wakeup_fd(old_fd)
            for s, h in old.items():
                signal.signal(s, h)
            os.close(rfd)
            os.close(wfd)
        if self.upgraded:  # everything above is released: the lock, the pid file, the resident server
            sys.stdout.flush()
            sys.stderr.flush()
            os.execv(sys.executable, sys.orig_argv)
        return self.passes

    def _upgraded(self) -> bool:
        """Whether the installed code is no longer what this process started on (looked at now)."""
        self.code_due = time.monotonic() + CODE_CHECK
        try:
            self.upgraded = installation.identity() != self.code
        except OSError:  # the package half replaced at this instant: looked at again later
            self.upgraded = False
        return self.upgraded

    @contextlib.contextmanager
    def _database_held(self) -> Iterator[None]:
        """With a resident server beside the loop, the home's state database held open (idle, no transaction)
        for the loop's life: each session's process then closes a connection that is not the last, and
        SQLite checkpoints and removes the WAL when the last one closes (fsyncs, about 0.7 ms of CPU a
        check-in at an upper system)."""
        if self.companion is None:
            yield
            return
        import sqlite3

        from rds import database

        try:
            db = database.connect(self.home.db_path)
            db.execute("SELECT count(*) FROM sqlite_master").fetchall()  # opened now, not at a first use
        except (RdsError, OSError, sqlite3.Error) as e:
            self.log.warning(f"{self.name}: cannot hold the state database open: {e}")
            yield
            return
        try:
            yield
        finally:
            db.close()

    def _side_task(self) -> None:
        if self.every is None or self.every_due is None or time.monotonic() < self.every_due:
            return
        self.every_due = time.monotonic() + self.every[0]
        self._pass(self.every[1], count=False)

    def _pass(self, work: Callable[[], str] | None = None, count: bool = True) -> None:
        self.passes += count
        outcome, what = "ok", ""
        try:
            what = (work or self.one_pass)()
            if what:
                self.log.info(f"{self.name}: {what}")
        except RdsError as e:
            outcome, what = "warning", str(e)
            self.log.warning(f"{self.name}: {e}")
        except OSError as e:
            outcome, what = "error", str(e)
            self.log.error(f"{self.name}: {e}")
        if count:
            self.state["last_pass"] = {"ended": now_text(), "outcome": outcome, "message": what}
            self.state["passes"] = self.passes
            self._record()

    def _record(self) -> None:
        """run/NAME.state, for ``status``; a full disk must not stop the resident."""
        with contextlib.suppress(OSError):
            fsutil.atomic_write(state_path(self.home, self.name), json.dumps(self.state).encode())

    def _wait(self, rfd: int) -> None:
        deadline = None if self.interval is None else time.monotonic() + self.interval
        if deadline is not None and self.spread is not None:
            deadline = time.monotonic() + first_wait(self.interval or 0.0, self.spread)
            self.spread = None  # once: the polls keep the moment drawn
        while not self.terms and not self.woken:
            self._side_task()
            self._check_companion()
            if time.monotonic() >= self.code_due and self._upgraded():
                return
            ends = [t for t in (deadline, self.every_due, self.companion_due, self.code_due) if t is not None]
            timeout = None if not ends else max(0.0, min(ends) - time.monotonic())
            if deadline is not None and time.monotonic() >= deadline:
                return
            select.select([rfd], [], [], timeout)
            with contextlib.suppress(BlockingIOError):
                while os.read(rfd, 512):
                    pass


def first_wait(interval: float, rand: Callable[[], float]) -> float:
    """The wait before a resident's second poll: a random part of ``interval`` (``rand``: 0 to 1)."""
    return interval * min(max(rand(), 0.0), 1.0)


def foreground_argv(command: str, *args: str) -> list[str]:
    """The command line that runs ``command`` in the foreground, from this same installation."""
    exe = Path(sys.argv[0])
    for path in (exe.parent / command, Path(sys.executable).parent / command):
        if path.is_file() and os.access(path, os.X_OK):
            return [str(path), *args]
    return [shutil.which(command) or command, *args]
