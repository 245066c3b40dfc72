"""dcmjbrm: delete (withdraw) a job, or some of its destinations, at the managing server."""

from __future__ import annotations

import click

from rds import manager
from rds.cli import entry, multi, print_json, with_home
from rds.database import Database
from rds.home import Home
from rds.log import logger


@click.command(name="dcmjbrm", context_settings={"help_option_names": ["--help"]})
@click.option("-n", "job_no", type=click.IntRange(1), required=True, metavar="JOB", help="The job.")
@click.option("-h", "hosts", multiple=True, metavar="HOST",
              help="Only these destinations; more may follow, space-separated.  Default: all.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@click.argument("more_hosts", nargs=-1, metavar="[HOST...]")
def command(job_no: int, hosts: tuple[str, ...], as_json: bool, more_hosts: tuple[str, ...]) -> int:
    """Withdraw job JOB (or some of its destinations) all the way down: each destination not yet
    installed shows DELETE; one already installed keeps its outcome.

    \b
    A destination not handed out yet ends DELETE at once.  One handed out
    ends when the system holding it hears of the withdrawal at its next
    check-in: DELETE if it had not begun, else its own outcome.
    """
    return withdraw(job_no, multi(hosts, more_hosts) if hosts else None, as_json)


@with_home(database=True)
def withdraw(job_no: int, hosts: list[str] | None, as_json: bool, *, home: Home, db: Database) -> int:
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
