"""dcmjbrm: delete (withdraw) a job, or some of its destinations, at the managing server."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from rds.cli import entry, job_destinations, print_json, with_home

if TYPE_CHECKING:
    from rds.database import Database
    from rds.home import Home


@click.command(name="dcmjbrm", context_settings={"help_option_names": ["--help"]})
@job_destinations("Only these destinations; more may follow, space-separated.  Default: all.")
def command(job_no: int, hosts: list[str] | None, as_json: bool) -> int:
    """Withdraw job JOB (or some of its destinations) all the way down: each destination not yet
    installed shows DELETE; one already installed keeps its outcome.

    \b
    A destination not handed out yet ends DELETE at once.  One handed out
    ends when the system holding it hears of the withdrawal at its next
    check-in: DELETE if it had not begun, else its own outcome.
    """
    return withdraw(job_no, hosts, as_json)


@with_home(database=True)
def withdraw(job_no: int, hosts: list[str] | None, as_json: bool, *, home: Home, db: Database) -> int:
    from rds import manager
    from rds.log import logger

    w = manager.withdraw(db, home, job_no, hosts)
    logger(home).info(f"job {job_no}: withdrawn by dcmjbrm: {w.withdrawn} DELETE here, {w.sent_down} sent down, "
                      f"{w.kept} already ended")
    if as_json:
        print_json(w.to_json())
    else:
        click.echo(f"job {job_no}: {w.withdrawn} destination(s) DELETE now, {w.sent_down} withdrawn as they "
                   f"check in (their own word decides), {w.kept} already ended (kept)")
    return 0


main = entry(command)
