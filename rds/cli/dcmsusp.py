"""dcmsusp: suspend or resume a job at the managing server."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from rds.cli import entry, print_json, with_home

if TYPE_CHECKING:
    from rds.database import Database
    from rds.home import Home


@click.command(name="dcmsusp", context_settings={"help_option_names": ["--help"]})
@click.option("-n", "job_no", type=click.IntRange(1), required=True, metavar="JOB", help="The job.")
@click.option("-r", "--resume", is_flag=True, help="Resume the job (a halted wave too: its failures are forgiven).")
@click.option("-m", "why", default="", metavar="TEXT", help="Why, as dcmstat shows it (at most 500 characters).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
def command(job_no: int, resume: bool, why: str, as_json: bool) -> int:
    """Suspend job JOB: no destination of it is handed out anywhere in the tree until it resumes (-r);
    destinations already handed out finish."""
    return act(job_no, resume, why, as_json)


@with_home(database=True)
def act(job_no: int, resume: bool, why: str, as_json: bool, *, home: Home, db: Database) -> int:
    from rds import manager, startup
    from rds.log import logger

    log = logger(home).info
    if resume:
        manager.resume(db, home, job_no)
        log(f"job {job_no}: resumed by dcmsusp -r")
        manager.advance(db, home, log)
        startup.start_lowers(home, db, log, [job_no])
    else:
        manager.suspend(db, home, job_no, why)
        log(f"job {job_no}: suspended by dcmsusp{': ' + why if why else ''}")  # relays hear at their check-in
    state = "running" if resume else "suspended"
    if as_json:
        print_json({"job_no": job_no, "state": state})
    else:
        click.echo(f"job {job_no}: {state}")
    return 0


main = entry(command)
