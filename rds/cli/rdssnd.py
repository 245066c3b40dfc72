"""rdssnd: send results upward, resident every WatchTimeofStatus or once."""

from __future__ import annotations

import click

from rds import poller
from rds.cli import entry, resident, with_home
from rds.errors import UsageError
from rds.home import Home

NAME = "rdssnd"


@click.command(name=NAME, context_settings={"help_option_names": ["--help"]})
@click.option("-a", "start", is_flag=True, help="Start the resident sender (the default).")
@click.option("-q", "stop", is_flag=True, help="Stop the resident sender.")
@click.option("--once", is_flag=True, help="Send every result waiting on disk now, then exit.")
@click.option("--foreground", is_flag=True, help="Run the resident sender in this process (systemd).")
def command(start: bool, stop: bool, once: bool, foreground: bool) -> int:
    """Send the results of this host's jobs and of the hosts below it to the upper system.

    Resident, it sends every WatchTimeofStatus and at once when a result
    arrives from below; results wait on disk while the upper system is down.
    """
    if stop + once + (start or foreground) > 1:
        raise UsageError("give one of -a, -q and --once")
    return send(stop, once, foreground)


@with_home()
def send(stop: bool, once: bool, foreground: bool, *, home: Home) -> int:
    if stop:
        return resident(home, NAME, True, False, lambda: "", None)
    if home.settings.is_managing_server:
        raise UsageError(f"{home.path}: this host is the managing server; it has no upper system to send to")
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
