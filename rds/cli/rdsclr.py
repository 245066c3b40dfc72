"""rdsclr: delete expired packages, then enforce the cache size limit."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from rds.cli import entry, print_json, table, with_home
from rds.errors import UsageError

if TYPE_CHECKING:
    from rds.home import Home


@click.command(name="rdsclr", context_settings={"help_option_names": ["--help"]})
@click.option("-n", "--dry-run", "dry_run", is_flag=True, help="Say what would be removed; remove nothing.")
@click.option("--wait", is_flag=True,
              help="Delete the removed packages' files before returning (default: in the background).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts instead of a table.")
@with_home(pass_lock=True, superuser=True)  # not while a pass installs or fetches
def command(dry_run: bool, wait: bool, as_json: bool, *, home: Home) -> int:
    """Delete the packages past their storage period from the temporary package
    storehouse, then, if CacheSizeLimit is exceeded, the least recently accessed
    ones until the storehouse is at CacheHighWaterMark percent of the limit.

    Jobs whose package left are invalidated as IDCommandDeleteTiming and
    CommandDeletewithResource say (rdssetfl(5)).  Meant for cron.  A removed
    package is gone from the storehouse when rdsclr returns; its files are
    deleted by a background process unless --wait is given.
    """
    from rds import cleanup, log, storehouse
    from rds.cli.rdsma import RESIDENTS
    from rds.clock import local_text

    if home.settings.is_managing_server:
        raise UsageError("this is the managing server: its storehouse holds the registered packages; "
                         "rdsclr runs on relays and clients")
    report = cleanup.clean(home, dry_run=dry_run, defer=True)
    logs = [] if dry_run else log.prune(home, keep=RESIDENTS)  # install logs and .out files past LogRetention
    if wait:
        storehouse.reap(report.doomed)
        reaper = None
    else:
        reaper = storehouse.reap_in_background(report.doomed)
    if as_json:
        print_json({**report.to_json(), "reaper_pid": reaper, "logs_removed": len(logs)})
        return 0
    rows = [[r.package, r.size, r.reason, local_text(r.accessed), "busy: kept" if r.busy else
             ("would remove" if dry_run else "removed")] for r in report.removed + report.busy]
    if rows:
        click.echo(table(rows, ["PACKAGE", "BYTES", "REASON", "LAST ACCESS", "DONE"]))
    click.echo(report.summary())
    if logs:
        click.echo(f"removed {len(logs)} install log(s) and .out file(s) older than LogRetention")
    if reaper:
        click.echo(f"the files of {len(report.doomed)} removed package(s) are being deleted in the background "
                   f"(pid {reaper})")
    return 0


main = entry(command)
