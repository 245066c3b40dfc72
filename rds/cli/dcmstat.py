"""dcmstat: the status of jobs at the managing server, with JP1's exit codes."""

from __future__ import annotations

import click

from rds import manager
from rds.cli import entry, print_json, table, with_home
from rds.database import Database
from rds.home import Home


@click.command(name="dcmstat", context_settings={"help_option_names": ["--help"]})
@click.option("-n", "job_no", type=click.IntRange(1), metavar="JOB", help="Only this job.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts instead of a table.")
@with_home(database=True)
def command(job_no: int | None, as_json: bool, *, home: Home, db: Database) -> int:
    """Show each destination's status: WAIT, EXEC, COMPLETE, ERROR, EXEC-ERROR, LINE-DOWN, SETUP-ERROR.

    \b
    Exit status: 0 all complete, 30 some failed, 31 still running,
    32 running with failures.
    """
    manager.require_managing_server(home)
    rows = manager.destinations(db, job_no)
    if as_json:
        print_json([r.to_json() for r in rows])
    elif rows:
        click.echo(table([[r.job_no, r.dest, r.package, r.status, r.updated, r.message] for r in rows],
                         ["JOB", "DESTINATION", "PACKAGE", "STATUS", "UPDATED", "MESSAGE"]))
    else:
        click.echo("no jobs")
    return manager.exit_code(rows)


main = entry(command)
