"""``rdsft -a``: a pass of this host (check in, fetch, install, report), and its entry point without click.

``rdsft -a`` is what a host runs for every check-in and every package it
brings (rdsma runs the same pass in its loop); click and rds.cli cost it
more than a small transfer's worth of time, so the command line ``rdsft -a``
and nothing else is read here.  Anything else (``--help``, ``-c``, a
mistake) goes to the click command (rds.cli.rdsft), which says it as every
command does; rds.cli.rdsft runs ``-a`` through ``check_in`` here too, so
both ways print, fail and exit alike.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, NoReturn

from rds.errors import IntegrityError, JobsFailed, RdsError, said

if TYPE_CHECKING:
    from rds.home import Home
    from rds.poller import PassReport

NAME = "rdsft"
CLICK = "rds.cli.rdsft"  # the click command every other command line goes to (and its man page describes)


def check_in(home: Home, echo: Callable[[str], None]) -> int:
    """The passes ``rdsft -a`` runs (more than one when a startup request started it); each one's report
    said with ``echo``.  Raises what ends the command: a damaged download, failed installs."""
    from rds import poller, startup

    def one_pass() -> poller.PassReport:
        report = poller.run_once(home)
        show_pass(report, echo)
        return report

    report = startup.woken_passes(home, one_pass)
    failed = f"{len(report.failed)} of {len(report.installed)} install(s) ended in error" if report.failed else ""
    if report.damaged:  # the jobs wait for a good copy; the pass failed all the same
        raise IntegrityError(f"{len(report.damaged)} download(s) came damaged and were discarded: "
                             f"{report.damaged[0]}" + (f"; {failed}" if failed else ""))
    if report.failed:
        raise JobsFailed(failed)
    return 0


def show_pass(report: PassReport, echo: Callable[[str], None]) -> None:
    echo(f"jobs received: {report.received}; packages fetched: {len(report.fetched)}; results sent: {report.sent}")
    if report.installed:
        from tabulate import tabulate

        from rds import text

        rows = [[text.cell(v) for v in (r.job_no, r.dest, r.status, r.message)] for r in report.installed]
        echo(tabulate(rows, headers=["JOB", "HOST", "STATUS", "MESSAGE"], tablefmt="plain", disable_numparse=True))


def _echo(line: str) -> None:
    print(line, flush=True)


def main() -> NoReturn:
    """rdsft's entry point (setup.cfg): ``rdsft -a`` here, every other command line to the click command."""
    if sys.argv[1:] != ["-a"]:
        import importlib

        importlib.import_module(CLICK).main()  # by name: rds.cli.rdsft imports this module
        raise AssertionError("unreachable")  # main() exits
    import sqlite3

    from rds import crashpoints
    from rds.home import open_home

    os.umask(0o022)  # as rds.cli.run: nothing it makes is writable by others
    try:
        crashpoints.check()
        code = check_in(open_home(), _echo)
    except (RdsError, KeyboardInterrupt, sqlite3.Error, OSError) as e:
        line, code = said(NAME, e)
        print(line, file=sys.stderr)
    sys.stdout.flush()
    sys.exit(code)
