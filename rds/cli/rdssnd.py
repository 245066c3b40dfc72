"""rdssnd: send results upward, resident every WatchTimeofStatus or once."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from rds.cli import entry, resident, show_status, with_home
from rds.errors import UsageError

if TYPE_CHECKING:
    from rds.home import Home

NAME = "rdssnd"


@click.command(name=NAME, context_settings={"help_option_names": ["--help"]})
@click.option("-a", "start", is_flag=True, help="Start the resident sender (the default).")
@click.option("-q", "stop", is_flag=True, help="Stop the resident sender.")
@click.option("--once", is_flag=True, help="Send every result waiting on disk now, then exit.")
@click.option("--foreground", is_flag=True, help="Run the resident sender in this process (systemd).")
@click.option("--status", is_flag=True,
              help="Say whether rdssnd runs (pid, since when) and how its last pass ended; exit 0 if it runs, 8 if "
                   "not.")
def command(start: bool, stop: bool, once: bool, foreground: bool, status: bool) -> int:
    """Send the results of this host's jobs and of the hosts below it to the upper system.

    Resident, it sends every WatchTimeofStatus and at once when a result
    arrives from below; results wait on disk while the upper system is down.
    """
    if stop + once + status + (start or foreground) > 1:
        raise UsageError("give one of -a, -q, --once and --status")
    return send(stop, once, foreground, status)


@with_home()
def send(stop: bool, once: bool, foreground: bool, status: bool, *, home: Home) -> int:
    from rds import poller

    if status:
        return show_status(home, NAME)
    if stop:
        return resident(home, NAME, True, False, lambda: "", None)
    if home.settings.is_managing_server:
        # nothing to send: said, and exit 0, so that a unit with Restart=on-failure does not loop
        click.echo(f"{NAME}: {home.path} is the managing server (RDSSETFL has no ManagingHost): it has no upper "
                   "system to send results to")
        return 0
    if once:
        click.echo(f"sent {poller.send_once(home)} result(s)")
        return 0
    interval = home.settings.watch_status
    if interval == 0:
        click.echo(f"{NAME}: WatchTimeofStatus is 0: results are not sent")
        return 0
    return resident(home, NAME, False, foreground, lambda: _sent(poller.send_once(home)), interval)


def _sent(n: int) -> str:
    return f"sent {n} result(s)" if n else ""


main = entry(command)
