"""dcmstat: the status of jobs at the managing server, with JP1's exit codes."""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING

import click

from rds import codes
from rds.cli import entry, fast_table, print_json, table, with_home
from rds.errors import UsageError

if TYPE_CHECKING:
    from rds.database import Database
    from rds.home import Home
    from rds.manager import JobSummary

STATUSES = list(codes.STATUS_WORDS)


@click.command(name="dcmstat", context_settings={"help_option_names": ["--help"]})
@click.option("-n", "job_no", type=click.IntRange(1), metavar="JOB", help="Only this job.")
@click.option("-s", "--summary", is_flag=True, help="Count the destinations of each job at each status.")
@click.option("-w", "--watch", is_flag=True,
              help="With -n: redraw the job's counts (and a bar on a terminal) until it ends; exit as without -w.")
@click.option("--interval", type=click.FloatRange(0.1, 3600), default=2.0, show_default=True, metavar="SECONDS",
              help="With -w: seconds between two looks.")
@click.option("--history", is_flag=True, help="With -n: the earlier attempts' outcomes (dcmrtry).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts instead of a table.")
def command(job_no: int | None, summary: bool, watch: bool, interval: float, history: bool, as_json: bool) -> int:
    """Show each destination's status: WAIT, EXEC, COMPLETE, ERROR, EXEC-ERROR, LINE-DOWN, SETUP-ERROR,
    DELETE (withdrawn, dcmjbrm), ID-INVALID (left its ID group).

    \b
    Exit status: 0 all complete, 30 some failed, 31 still running,
    32 running with failures (an EXEC-ERROR or LINE-DOWN that the
    destination's own outcome may still follow counts as running).
    """
    if watch and job_no is None:
        raise UsageError("-w watches one job: give it with -n JOB")
    if watch and as_json:
        raise UsageError("-w draws for people; --json prints once")
    if history and (job_no is None or summary or watch):
        raise UsageError("--history shows one job's earlier attempts: give -n JOB alone")
    return show(job_no, summary, watch, interval, as_json, history)


@with_home(database=True)
def show(job_no: int | None, summary: bool, watch: bool, interval: float, as_json: bool, history: bool = False, *,
         home: Home, db: Database) -> int:
    from rds import manager, results
    from rds.clock import shown

    manager.require_managing_server(home)
    if history:
        assert job_no is not None
        manager.order(db, job_no)
        earlier = results.history(db, job_no)
        if as_json:
            print_json([{"job_no": r["job_no"], "dest": r["dest"], "attempt": r["try"], "status": r["status"],
                         "updated": shown(r["finished"]), "message": r["message"]} for r in earlier])
        elif earlier:
            click.echo(table([[r["job_no"], r["dest"], r["try"], r["status"], shown(r["finished"]), r["message"]]
                              for r in earlier], ["JOB", "DESTINATION", "ATTEMPT", "STATUS", "UPDATED", "MESSAGE"]))
        else:
            click.echo(f"job {job_no}: no earlier attempts")
        return 0
    if watch:
        assert job_no is not None
        return watch_job(db, job_no, interval)
    if summary:
        found = manager.summaries(db, job_no)
        if as_json:
            print_json([s.to_json() for s in found])
        elif found:
            click.echo(summary_table(found))
        else:
            click.echo("no jobs")
        return manager.summaries_exit_code(found)
    rows = manager.destinations(db, job_no)
    if as_json:
        print_json([r.to_json() for r in rows])
    elif rows:
        click.echo(table([[r.job_no, r.dest, r.package, r.status, shown(r.updated), r.message] for r in rows],
                         ["JOB", "DESTINATION", "PACKAGE", "STATUS", "UPDATED", "MESSAGE"]))
    else:
        click.echo("no jobs")
    return manager.exit_code(rows)


def summary_table(found: list[JobSummary]) -> str:
    rows = [[str(s.job_no), s.package, s.type, str(s.total), *(str(s.counts.get(st, 0)) for st in STATUSES)]
            for s in found]
    return fast_table(rows, ["JOB", "PACKAGE", "TYPE", "DESTINATIONS", *STATUSES])


def counts_line(s: JobSummary) -> str:
    parts = [f"{st} {n}" for st, n in s.counts.items() if n]
    extra = (f"; wave {s.wave[0]} of {s.wave[1]}" if s.wave[1] else "") + \
        (f"; suspended: {s.suspended}" if s.suspended else "")
    return f"job {s.job_no} {s.package}: {s.ended}/{s.total} ended; " + ", ".join(parts) + extra


def bar(s: JobSummary, width: int = 30) -> str:
    done = width * s.ended // s.total if s.total else width
    return "[" + "#" * done + "-" * (width - done) + f"] {100 * s.ended // max(s.total, 1):3d}%"


def watch_job(db: Database, job_no: int, interval: float) -> int:
    """Look every ``interval`` until the job ends.  On a terminal the line is redrawn with a bar;
    otherwise a line is printed each time the counts change (cron, a pipe)."""
    from rds import manager

    terminal = sys.stdout.isatty()
    last = ""
    while True:
        s = manager.summaries(db, job_no)[0]
        line = counts_line(s)
        if terminal:
            click.echo(f"\r\033[K{bar(s)} {line}", nl=False)
        elif line != last:
            click.echo(line)
        last = line
        if s.exit_code not in (manager.RUNNING, manager.RUNNING_WITH_FAILURES):
            if terminal:
                click.echo()
            return s.exit_code
        time.sleep(interval)


main = entry(command)
