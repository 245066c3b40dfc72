"""dcmjexe: create a job at the managing server."""

from __future__ import annotations

import click

from rds import manager, startup
from rds.cli import entry, multi, with_home
from rds.database import Database
from rds.errors import UsageError
from rds.home import Home
from rds.log import logger
from rds.packages import PackageId


@click.command(name="dcmjexe", context_settings={"help_option_names": ["--help"]})
@click.option("-r", "package", required=True, metavar="FULL_PACKAGE_ID",
              help="The package, C.CABINET.PACKAGE_ID.VERSION[.GENERATION].")
@click.option("-t", "job_type", type=click.Choice(["install", "transfer", "delete"], case_sensitive=False),
              default="install", show_default=True,
              help="Job type: install the package; transfer it to relay systems (Transfer package to relay "
                   "system: the relay fetches and keeps it first, whatever its CachingPolicy, the emergency "
                   "update); or delete it from the storehouse of relay systems (Batch delete packages on relay "
                   "system).")
@click.option("-h", "hosts", multiple=True, metavar="HOST", help="Destination host; more may follow, space-separated.")
@click.argument("more_hosts", nargs=-1, metavar="[HOST...]")
def command(package: str, job_type: str, hosts: tuple[str, ...], more_hosts: tuple[str, ...]) -> int:
    """Create an Install package job (or with -t transfer a Transfer package to relay system job, with
    -t delete a Batch delete packages job) for HOSTs.

    Prints the job number.

    A host that has not reported in yet is accepted: its job is held until the
    host (through its relays) checks in, and dcmstat says so.
    """
    if not hosts:
        raise UsageError("give the destinations with -h HOST [HOST...]")
    return create(PackageId.parse(package), multi(hosts, more_hosts), job_type.upper())


@with_home(database=True)
def create(pid: PackageId, hosts: list[str], job_type: str, *, home: Home, db: Database) -> int:
    job_no, unknown = manager.create_job(db, home, pid, hosts, type_=job_type)
    if unknown:
        click.echo(f"dcmjexe: {unknown_hosts(unknown)}", err=True)
    startup.start_lowers(home, db, logger(home).info, [job_no])
    click.echo(str(job_no))
    return 0


def unknown_hosts(hosts: list[str], shown: int = 10) -> str:
    """One line however many: the count, the first names, how many more."""
    names = ", ".join(hosts[:shown]) + (f" and {len(hosts) - shown} more" if len(hosts) > shown else "")
    if len(hosts) == 1:
        return f"{names} has not reported in yet; its job is held until it does"
    return f"{len(hosts)} hosts have not reported in yet ({names}); their jobs are held until they do"


main = entry(command)
