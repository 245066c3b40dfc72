"""rdsdlvse: start (or with -p stop) the distribution status server facility."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from rds.cli import entry, resident, show_status, with_home
from rds.errors import UsageError

if TYPE_CHECKING:
    from rds.home import Home

NAME = "rdsdlvse"  # the facility's resident is named after its command (rds.delivery.FACILITY)
TRIM_INTERVAL = 60.0  # seconds between two trims of the file to OrderOfDeliveryStatus


@click.command(name=NAME, context_settings={"help_option_names": ["--help"]})
@click.option("-p", "stop", is_flag=True, help="Stop the facility: statuses are no longer recorded.")
@click.option("--foreground", is_flag=True, help="Run the facility in this process instead of detaching (systemd).")
@click.option("--status", is_flag=True,
              help="Say whether the facility runs (pid, since when) and how its last pass ended; exit 0 if it runs, "
                   "8 if not.")
def command(stop: bool, foreground: bool, status: bool) -> int:
    """Start the distribution status server facility of this home (or with -p stop it).

    While it runs, this host records in the distribution situation file
    (OutPutFileOfDeliveryStatus) where each package it handles stands for
    each destination; rdsdlv shows it.  The facility keeps the file to
    OrderOfDeliveryStatus entries.
    """
    if stop and foreground or status and (stop or foreground):
        raise UsageError("-p, --foreground and --status exclude one another")
    return start_or_stop(stop, foreground, status)


@with_home(superuser=True)
def start_or_stop(stop: bool, foreground: bool, status: bool, *, home: Home) -> int:
    from rds import delivery

    if status:
        return show_status(home, NAME)
    if not stop:
        delivery.open_file(home).close()  # a bad path or a newer file is said now, not in the log
    return resident(home, NAME, stop, foreground, lambda: _trim(home), TRIM_INTERVAL)


def _trim(home: Home) -> str:
    from rds import delivery

    f = delivery.open_file(home)
    try:
        n = f.trim()
    finally:
        f.close()
    return f"dropped {n} oldest entr{'y' if n == 1 else 'ies'} (OrderOfDeliveryStatus)" if n else ""


main = entry(command)
