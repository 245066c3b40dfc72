"""rdssnd: send results upward."""

from __future__ import annotations

import click

from rds import poller
from rds.cli import entry, open_home
from rds.errors import UsageError


@click.command(name="rdssnd", context_settings={"help_option_names": ["--help"]})
@click.option("--once", is_flag=True, help="Send every result waiting on disk now, then exit.")
def command(once: bool) -> int:
    """Send the results of this host's jobs and those reported from below to the upper system."""
    if not once:
        raise UsageError("the resident sender is not built yet; use --once")
    home = open_home()
    n = poller.send_once(home)
    click.echo(f"sent {n} result(s)")
    return 0


main = entry(command)
