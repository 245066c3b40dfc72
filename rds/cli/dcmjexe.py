"""dcmjexe: create a job at the managing server."""

from __future__ import annotations

import click

from rds import jobs, manager, startup, state
from rds.cli import entry, multi, open_home
from rds.errors import UsageError
from rds.log import logger
from rds.packages import PackageId


@click.command(name="dcmjexe", context_settings={"help_option_names": ["--help"]})
@click.option("-r", "package", required=True, metavar="FULL_PACKAGE_ID",
              help="The package, C.CABINET.PACKAGE_ID.VERSION[.GENERATION].")
@click.option("-h", "hosts", multiple=True, metavar="HOST", help="Destination host; more may follow, space-separated.")
@click.option("-t", "job_type", type=click.Choice(["install", "transfer"]), default="install", show_default=True,
              help="install: Install package; transfer: Transfer package to relay system (the relay fetches "
                   "and keeps it first, whatever its CachingPolicy: the emergency update).")
@click.argument("more_hosts", nargs=-1, metavar="[HOST...]")
def command(package: str, hosts: tuple[str, ...], job_type: str, more_hosts: tuple[str, ...]) -> int:
    """Create an Install package (or -t transfer) job for HOSTs and print its job number.

    A host that has not reported in yet is accepted: its job is held until the
    host (through its relays) checks in, and dcmstat says so.
    """
    if not hosts:
        raise UsageError("give the destinations with -h HOST [HOST...]")
    home = open_home()
    pid = PackageId.parse(package)
    db = state.connect(home.db_path)
    job_no, unknown = manager.create_job(db, home, pid, multi(hosts, more_hosts),
                                         type_=jobs.TRANSFER if job_type == "transfer" else jobs.INSTALL)
    for h in unknown:
        click.echo(f"dcmjexe: {h} has not reported in yet; its job is held until it does", err=True)
    startup.start_lowers(home, db, logger(home).info, [job_no])
    click.echo(str(job_no))
    return 0


main = entry(command)
