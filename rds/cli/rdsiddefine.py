"""rdsiddefine: ID groups at the managing server."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from rds.cli import entry, multi, print_json, table, with_home
from rds.errors import UsageError

if TYPE_CHECKING:
    from rds.database import Database
    from rds.home import Home


@click.command(name="rdsiddefine", context_settings={"help_option_names": ["--help"]})
@click.option("-s", "add", metavar="GROUP", help="Add the hosts given with -h to GROUP (made if new).")
@click.option("-dm", "leave", metavar="GROUP", help="Remove the hosts given with -h from GROUP.")
@click.option("-dl", "drop", metavar="GROUP", help="Delete GROUP: every member leaves it.")
@click.option("-ll", "list_", is_flag=True, help="List the groups and their members (the default).")
@click.option("-h", "hosts", multiple=True, metavar="HOST", help="A member; more may follow, space-separated.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts instead of a table.")
@click.argument("more_hosts", nargs=-1, metavar="[HOST...]")
def command(add: str | None, leave: str | None, drop: str | None, list_: bool, hosts: tuple[str, ...],
            as_json: bool, more_hosts: tuple[str, ...]) -> int:
    """Define ID groups: a job for a group (dcmjexe -g GROUP) reaches its members, and hosts that join
    later; a host that leaves stops receiving it (ID-INVALID)."""
    if sum(x is not None for x in (add, leave, drop)) > 1:
        raise UsageError("give one of -s, -dm and -dl")
    members = multi(hosts, more_hosts) if hosts else []
    if (add or leave) and not members:
        raise UsageError("give the members with -h HOST [HOST...]")
    if (drop or not (add or leave)) and (members or more_hosts):
        raise UsageError("-h goes with -s or -dm")
    return define(add, leave, drop, members, as_json)


@with_home(database=True, superuser=True)
def define(add: str | None, leave: str | None, drop: str | None, members: list[str], as_json: bool, *,
           home: Home, db: Database) -> int:
    from rds import groups, startup
    from rds.log import logger

    log = logger(home).info
    if add:
        n, made = groups.join(db, home, add, members)
        log(f"ID group {add}: {n} member(s) added, {made} group job destination(s) made")
        if made:
            startup.start_lowers(home, db, log)
        return said(as_json, {"group": add, "added": n, "jobs": made},
                    f"{add}: {n} member(s) added; {made} job destination(s) made for them")
    if leave or drop:
        name = leave or drop or ""
        n, gone = groups.leave(db, home, name, members if leave else None)
        log(f"ID group {name}: {n} member(s) left, {gone} group job destination(s) withdrawn (ID-INVALID)")
        return said(as_json, {"group": name, "removed": n, "withdrawn": gone},
                    f"{name}: {n} member(s) removed; {gone} job destination(s) withdrawn (ID-INVALID)")
    found = groups.members(db)
    if as_json:
        print_json([{"group": g, "members": hs} for g, hs in found.items()])
    elif found:
        click.echo(table([[g, " ".join(hs)] for g, hs in found.items()], ["GROUP", "MEMBERS"]))
    else:
        click.echo("no ID groups")
    return 0


def said(as_json: bool, data: dict[str, object], line: str) -> int:
    if as_json:
        print_json(data)
    else:
        click.echo(line)
    return 0


main = entry(command)
