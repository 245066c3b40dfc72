"""rdsma: poll the upper system for jobs every WatchTimeofOrders."""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

import click

from rds.cli import entry, resident, show_status, with_home
from rds.errors import UsageError

if TYPE_CHECKING:  # the library is imported where the loop needs it (--help, -q, --status need little of it)
    from rds import poller
    from rds.home import Home

NAME = "rdsma"
RESIDENTS = ("rdsma", "rdssnd", "rdsdlvse")  # their .out files stay while they may write them


@click.command(name=NAME, context_settings={"help_option_names": ["--help"]})
@click.option("-a", "start", is_flag=True, help="Start polling (the default).")
@click.option("-q", "stop", is_flag=True, help="Stop polling; a pass under way finishes first.")
@click.option("--foreground", is_flag=True, help="Poll in this process instead of detaching (systemd).")
@click.option("--status", is_flag=True,
              help="Say whether rdsma runs (pid, since when) and how its last pass ended; exit 0 if it runs, 8 if not.")
def command(start: bool, stop: bool, foreground: bool, status: bool) -> int:
    """Start (or with -q stop) the resident polling of this host.

    Every WatchTimeofOrders it does what rdsft -a does; 0 checks once, MANUAL
    never by itself, only when a startup request wakes it.
    """
    if stop and (start or foreground):
        raise UsageError("-q stops; it takes no other option")
    if status and (start or stop or foreground):
        raise UsageError("--status takes no other option")
    return start_or_stop(stop, foreground, status)


@with_home()
def start_or_stop(stop: bool, foreground: bool, status: bool, *, home: Home) -> int:
    if status:
        return show_status(home, NAME)
    mgr = home.settings.is_managing_server
    # On the managing server there is nothing to poll: rdsma runs the resident server and sends the startup
    # requests dcmjexe hands it (rds.startup.hand_over), only when woken; no cache cleanup there.
    from rds import poller

    interval = None if mgr else home.settings.watch_orders
    kept = None
    if foreground and not stop and interval and home.settings.keep_connection \
            and (home.settings.managing_host or "").startswith("ssh://"):
        from rds.transport import Kept

        kept = Kept(interval)  # its SSH session to the upper system kept open between polls
    one_pass = (lambda: wake_handed(home)) if mgr else (lambda: describe(poller.run_once(home, kept=kept)))
    every = None if mgr else (home.settings.cache_cleanup_interval, lambda: clean(home))
    if foreground and not stop:
        from rds import daemon
        from rds import resident as server

        # beside the loop, the home's resident server: rds-serve and rds-wake served pre-imported (rds.resident)
        daemon.Resident(home, NAME, one_pass, interval, every, spread=None if mgr else random.random,
                        companion=(lambda: server.command(home.path))
                        if home.settings.resident_server and interval != 0 else None).run()  # 0: one pass
        if kept is not None:
            kept.close()
        return 0
    return resident(home, NAME, stop, foreground, one_pass, interval, every,
                    spread=random.random)  # polls spread over the interval (rds.daemon.first_wait)


def wake_handed(home: Home) -> str:
    """The managing server's pass: the startup requests of the jobs dcmjexe handed over."""
    from rds import log, session, startup

    with session.opened(home) as db:
        n = startup.send_handed(home, db, log.logger(home).info)
    return f"startup requests sent for {n} job(s) dcmjexe handed over" if n else ""


def clean(home: Home) -> str:
    """The cache cleanup every CacheCleanupInterval, between passes; old install logs and .out files too."""
    from rds import cleanup, log

    pruned = log.prune(home, keep=RESIDENTS)
    report = cleanup.between_passes(home)
    said = "cache cleanup: " + report.summary() if report.removed or report.busy else ""
    return "; ".join(filter(None, [said, f"removed {len(pruned)} log(s) older than LogRetention" if pruned else ""]))


def describe(report: poller.PassReport) -> str:
    if not (report.received or report.fetched or report.installed or report.sent or report.damaged):
        return ""
    return (f"pass: {report.received} job(s) received, {len(report.fetched)} package(s) fetched, "
            f"{len(report.installed)} installed ({len(report.failed)} failed), {report.sent} result(s) sent"
            + (f", {len(report.damaged)} download(s) came damaged" if report.damaged else ""))


main = entry(command)
