"""dcmjexe: create a job at the managing server."""

from __future__ import annotations

from typing import TYPE_CHECKING, TextIO

import click

from rds.cli import entry, multi, with_home
from rds.errors import InputError, UsageError

if TYPE_CHECKING:
    from rds.database import Database
    from rds.home import Home
    from rds.manager import Plan
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
@click.option("-f", "host_file", type=click.File("r"), metavar="FILE",
              help="Destination hosts from FILE, one a line ('-': standard input; # starts a comment).")
@click.option("-g", "--group", metavar="GROUP", default="",
              help="An ID group (rdsiddefine): its members now, and hosts that join it later.")
@click.option("--waves", metavar="LIST", default="",
              help="Release in waves: cumulative percentages (1,10,50,100%) or counts (5,50,500) of the destinations.")
@click.option("--fail-limit", metavar="LIMIT", default="",
              help="With --waves: more reported failures than this (a count, or a percentage of the destinations "
                   "released) suspend the job.")
@click.option("--wave-wait", metavar="DURATION", default="24h", show_default=True,
              help="With --waves: how long a wave may wait for its results before dcmstat and the log say so.")
@click.option("--not-before", metavar="TIME", default="",
              help="Earliest install time (ISO 8601, e.g. 2026-12-24T03:00+01:00; without an offset, this host's "
                   "local time), on each destination's clock; handed out ahead.")
@click.argument("more_hosts", nargs=-1, metavar="[HOST...]")
def command(package: str, job_type: str, hosts: tuple[str, ...], host_file: TextIO | None, group: str, waves: str,
            fail_limit: str, wave_wait: str, not_before: str, more_hosts: tuple[str, ...]) -> int:
    """Create an Install package job (or with -t transfer a Transfer package to relay system job, with
    -t delete a Batch delete packages job) for HOSTs.

    Prints the job number.

    A host that has not reported in yet is accepted: its job is held until the
    host (through its relays) checks in, and dcmstat says so.
    """
    from rds.packages import PackageId

    if not hosts and not group and host_file is None:
        raise UsageError("give the destinations with -h HOST [HOST...], -f FILE or -g GROUP")
    if more_hosts and not hosts:
        raise UsageError("hosts go after -h")
    listed = multi(hosts, more_hosts) if hosts else []
    if host_file is not None:
        listed += [w for line in host_file for w in line.split("#", 1)[0].split()]
    return create(PackageId.parse(package), listed, job_type.upper(), plan(group, waves, fail_limit, wave_wait,
                                                                             not_before))


def plan(group: str, waves: str, fail_limit: str, wave_wait: str, not_before: str) -> Plan:
    from rds import groups, manager
    from rds.settings import parse_duration

    if group:
        groups.check_name(group)
    if fail_limit and not waves:
        raise UsageError("--fail-limit goes with --waves")
    steps, percent = manager.parse_waves(waves) if waves else ((), False)
    limit, limit_percent = manager.parse_limit(fail_limit) if fail_limit else (None, False)
    try:
        wait = parse_duration(wave_wait, "s", 1, 366 * 86400)
    except ValueError:
        raise UsageError(f"bad --wave-wait {wave_wait!r} (for example 30m, 4h, 2d)") from None
    return manager.Plan(steps, percent, limit, limit_percent, wait, when(not_before) if not_before else "", group)


def when(text: str) -> str:
    """An ISO 8601 time as stored (UTC); without an offset it is this host's local time."""
    import datetime

    from rds.clock import now_text

    try:
        t = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise InputError(f"bad --not-before {text!r} (ISO 8601, e.g. 2026-12-24T03:00:00+01:00)") from None
    return now_text((t if t.tzinfo else t.astimezone()).timestamp())


@with_home(database=True)
def create(pid: PackageId, hosts: list[str], job_type: str, plan: Plan, *, home: Home, db: Database) -> int:
    from rds import manager, startup
    from rds.log import logger

    job_no, unknown = manager.create_job(db, home, pid, hosts, type_=job_type, plan=plan)
    if unknown:
        click.echo(f"dcmjexe: {unknown_hosts(unknown)}", err=True)
    if not startup.hand_over(home, [job_no]):  # the managing server's rdsma sends them, else this process
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
