"""rdssys -u: ask the upper system to forget this host."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from rds.cli import entry, print_json, with_home
from rds.errors import UsageError

if TYPE_CHECKING:
    from rds.home import Home


@click.command(name="rdssys", context_settings={"help_option_names": ["--help"]})
@click.option("-u", "unregister", is_flag=True, help="Ask the upper system to drop this host from its configuration.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
def command(unregister: bool, as_json: bool) -> int:
    """Ask the upper system to forget this host: its route, the jobs held for it, its key.  On a relay
    only the relay is forgotten, not the hosts below it."""
    if not unregister:
        raise UsageError("give -u")
    return forget(as_json)


@with_home(superuser=True)
def forget(as_json: bool, *, home: Home) -> int:
    from rds.log import logger
    from rds.transport import connect

    if home.settings.is_managing_server:
        raise UsageError("the managing server has no upper system")
    log = logger(home)
    client = connect(home, log=log.warning)
    try:
        gone = client.forget()
    finally:
        client.link.close()
    log.info(f"{client.where} forgot this host (rdssys -u)")
    if as_json:
        print_json({"upper": client.where, "jobs": gone.get("jobs", 0)})
    else:
        click.echo(f"{client.where} forgot {home.host}; it knows it again if it checks in (rdsft -a, rdsma)")
    return 0


main = entry(command)
