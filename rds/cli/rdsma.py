"""rdsma: poll the upper system for jobs every WatchTimeofOrders."""

from __future__ import annotations

import click

from rds import cleanup, poller
from rds.cli import entry, resident, with_home
from rds.errors import UsageError
from rds.home import Home

NAME = "rdsma"


@click.command(name=NAME, context_settings={"help_option_names": ["--help"]})
@click.option("-a", "start", is_flag=True, help="Start polling (the default).")
@click.option("-q", "stop", is_flag=True, help="Stop polling; a pass under way finishes first.")
@click.option("--foreground", is_flag=True, help="Poll in this process instead of detaching (systemd).")
def command(start: bool, stop: bool, foreground: bool) -> int:
    """Start (or with -q stop) the resident polling of this host.

    Every WatchTimeofOrders it does what rdsft -a does; 0 checks once, MANUAL
    never by itself, only when a startup request wakes it.
    """
    if stop and (start or foreground):
        raise UsageError("-q stops; it takes no other option")
    return start_or_stop(stop, foreground)


@with_home()
def start_or_stop(stop: bool, foreground: bool, *, home: Home) -> int:
    if not stop and home.settings.is_managing_server:
        raise UsageError(f"{home.path}: this host is the managing server (RDSSETFL has no ManagingHost); "
                         "rdsma runs on relays and clients")
    return resident(home, NAME, stop, foreground, lambda: describe(poller.run_once(home)),
                    home.settings.watch_orders, (home.settings.cache_cleanup_interval, lambda: clean(home)))


def clean(home: Home) -> str:
    """The cache cleanup every CacheCleanupInterval, between passes."""
    report = cleanup.between_passes(home)
    return "cache cleanup: " + report.summary() if report.removed or report.busy else ""


def describe(report: poller.PassReport) -> str:
    if not (report.received or report.fetched or report.installed or report.sent or report.damaged):
        return ""
    return (f"pass: {report.received} job(s) received, {len(report.fetched)} package(s) fetched, "
            f"{len(report.installed)} installed ({len(report.failed)} failed), {report.sent} result(s) sent"
            + (f", {len(report.damaged)} download(s) came damaged" if report.damaged else ""))


main = entry(command)
