"""dcmrtry: retry the failed destinations of a job at the managing server."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from rds.cli import entry, job_destinations, print_json, with_home

if TYPE_CHECKING:
    from rds.database import Database
    from rds.home import Home


@click.command(name="dcmrtry", context_settings={"help_option_names": ["--help"]})
@job_destinations("Only these destinations; more may follow, space-separated.  Default: every failed one.")
def command(job_no: int, hosts: list[str] | None, as_json: bool) -> int:
    """Make a new attempt for the destinations of JOB that ended ERROR, EXEC-ERROR or LINE-DOWN.

    The earlier outcome is kept in the job's history (dcmstat -n JOB --history)
    and dcmstat shows the attempt.
    """
    return retry(job_no, hosts, as_json)


@with_home(database=True)
def retry(job_no: int, hosts: list[str] | None, as_json: bool, *, home: Home, db: Database) -> int:
    from rds import manager, startup
    from rds.log import logger

    again = manager.retry(db, home, job_no, hosts)
    log = logger(home).info
    if again:
        log(f"job {job_no}: {len(again)} destination(s) retried by dcmrtry")
        startup.start_lowers(home, db, log, [job_no])
    if as_json:
        print_json([{"job_no": job_no, "dest": d, "attempt": t} for d, t in again])
    elif again:
        click.echo("\n".join(f"{job_no}:{d} attempt {t}" for d, t in again))
    else:
        click.echo(f"job {job_no}: no failed destination to retry")
    return 0


main = entry(command)
