"""dcmhosts: the hosts the managing server (or any upper system) knows; remove one."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from rds.cli import entry, fast_table, print_json, with_home

if TYPE_CHECKING:
    from rds.database import Database
    from rds.home import Home


@click.command(name="dcmhosts", context_settings={"help_option_names": ["--help"]})
@click.option("--not-seen", "days", type=click.FloatRange(0), metavar="DAYS",
              help="Only hosts whose last check-in is DAYS or more ago, or never known.")
@click.option("-d", "remove", metavar="HOST",
              help="Remove HOST: its routes (and those through it), the jobs held for it, its pinned key.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts instead of a table.")
def command(days: float | None, remove: str | None, as_json: bool) -> int:
    """List every host known here: the lower system it is reached through, its full path, its last
    check-in, its pending jobs, its rds version and its key's fingerprint."""
    return show(days, remove, as_json)


@with_home(database=True, superuser=True)
def show(days: float | None, remove: str | None, as_json: bool, *, home: Home, db: Database) -> int:
    from rds import hosts, manager
    from rds.clock import local_text
    from rds.log import logger

    if remove is not None:
        manager.require_managing_server(home)
        gone = hosts.remove(db, remove)
        logger(home).info(f"{remove} removed by dcmhosts -d: {gone['routes']} route(s), {gone['jobs']} held job(s), "
                          f"its key")
        if as_json:
            print_json({"host": remove, **gone})
        else:
            click.echo(f"{remove}: removed ({gone['routes']} route(s), {gone['jobs']} held job(s), its key)")
        return 0
    found = hosts.listing(db, home.host, days)
    if as_json:
        print_json([h.to_json() for h in found])
    elif found:
        click.echo(fast_table([[h.host, h.via or "-", h.path, local_text(h.last_checkin) if h.last_checkin else "never",
                                str(h.pending), h.version or "-", h.key or "-"] for h in found],
                              ["HOST", "VIA", "PATH", "LAST CHECK-IN", "PENDING", "VERSION", "KEY"]))
    else:
        click.echo("no hosts")
    return 0


main = entry(command)
