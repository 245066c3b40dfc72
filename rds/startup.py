"""Startup requests: the upper system wakes a lower one so it checks in now.

A startup request carries no authority: it only makes the lower system run
the pass it would run at its next poll, against the upper system it is
configured to trust.  For a home on this machine it is direct: if the home's
``rdsma`` runs it is woken (SIGUSR1), else ``rdsft -a`` is started for it.
At most ``MaxConnectClients`` requests are under way at once.  The flag files
decide who is started (rds.flags); when a request fails and ``.cltstsud``
exists, the lower system's waiting jobs are reported EXEC-ERROR.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from rds import daemon, flags, jobs, results, states, status
from rds.errors import CommunicationError
from rds.home import Home
from rds.results import Result, now_text


def request(address: str | None, lower: str) -> str:
    """Send one startup request; returns how, or raises CommunicationError."""
    if address is None:
        raise CommunicationError(f"{lower}: no startup address known (it has not said where to reach it)")
    path = Path(address)
    if not (path / "FORMAT").is_file():
        raise CommunicationError(f"{lower}: no rds home at {address}")
    home = Home(path)
    if daemon.wake(home, "rdsma"):
        return "woke its rdsma"
    with open(home.log_dir / "startup.out", "ab") as out:
        subprocess.Popen(daemon.foreground_argv("rdsft", "-a"), env={**os.environ, "RDS_HOME": str(path)},
                         stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    return "started rdsft -a"


def start_lowers(home: Home, db: sqlite3.Connection, log: Callable[[str], None],
                 jobs_of: list[int] | None = None) -> dict[str, bool]:
    """Send startup requests to the lower systems with jobs waiting; returns who was reached."""
    waiting = jobs.waiting_lowers(db, jobs_of)
    if not waiting:
        return {}
    targets = flags.startable(home, waiting, jobs.subtree(db), log)
    if not targets:
        status.started(home, waiting, {})
        return {}
    addresses = {t: jobs.wake_address(db, t) for t in targets}

    def one(lower: str) -> tuple[str, str | None, str | None]:
        try:
            return lower, request(addresses[lower], lower), None
        except (CommunicationError, OSError) as e:
            return lower, None, str(e)

    reached = {}
    with ThreadPoolExecutor(max_workers=max(1, home.settings.max_connect_clients)) as pool:
        for lower, how, error in pool.map(one, targets):
            reached[lower] = error is None
            if error is None:
                log(f"startup request to {lower}: {how}")
                continue
            log(f"startup request to {lower} failed: {error}")
            if flags.is_set(home, "cltstsud"):
                for job in waiting[lower]:
                    results.record(db, Result(job.job_no, job.dest, states.EXEC_ERROR,
                                              f"startup request to {lower} failed: {error}", now_text()))
                log(f"{home.prm / flags.CLTSTSUD} exists: reported EXEC-ERROR for {len(waiting[lower])} job(s)")
    status.started(home, waiting, reached)
    return reached
