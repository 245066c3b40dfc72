"""rdsgroupid: list and delete the jobs in the temporary job storehouse."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import click

from rds.cli import entry, multi, print_json, table, with_home
from rds.errors import InputError

if TYPE_CHECKING:
    from rds.database import Database
    from rds.home import Home


def parse_key(text: str) -> tuple[int, str | None]:
    m = re.fullmatch(r"(\d+)(?::(\S+))?", text)
    if not m:
        raise InputError(f"bad job {text!r} (expected JOB or JOB:HOST)")
    return int(m.group(1)), m.group(2)


@click.command(name="rdsgroupid", context_settings={"help_option_names": ["--help"]})
@click.option("-d", "delete", multiple=True, metavar="JOB[:HOST]",
              help="Delete this job (all its destinations, or one); more may follow, space-separated.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts instead of a table.")
@click.argument("more", nargs=-1, metavar="[JOB[:HOST]...]")
@with_home(database=True, superuser=True)
def command(delete: tuple[str, ...], as_json: bool, more: tuple[str, ...], *, home: Home, db: Database) -> int:
    """List the jobs held in this host's temporary job storehouse, or delete some with -d.

    \b
    States: WAIT (held here), HANDED (taken by the lower system that leads to
    the destination), INSTALLING, DONE, INVALID (its package left the storehouse).
    """
    from rds import jobs
    from rds.clock import local_text

    if delete:
        keys = [parse_key(k) for k in multi(delete, more)]
        n = jobs.delete(db, keys)
        if not n:
            raise InputError(f"no job matches {' '.join(multi(delete, more))}")
        click.echo(f"deleted {n} job(s)")
        return 0
    if more:
        raise InputError("job arguments go with -d")
    rows = jobs.listing(db)
    if as_json:
        print_json([{"job_no": r["job_no"], "dest": r["dest"], "type": r["type"], "package": r["package"],
                     "state": r["state"], "received": local_text(r["received"]), "handed_to": r["handed_to"]}
                    for r in rows])
    elif rows:
        click.echo(table([[r["job_no"], r["dest"], r["package"], r["state"], r["type"], local_text(r["received"]),
                           r["handed_to"] or ""] for r in rows],
                         ["JOB", "DESTINATION", "PACKAGE", "STATE", "TYPE", "RECEIVED", "HANDED TO"]))
    else:
        click.echo("no jobs")
    return 0


main = entry(command)
