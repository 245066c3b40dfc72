"""rds-serve: the upper system's end of an SSH link, run by sshd as a key's forced command."""

from __future__ import annotations

from pathlib import Path

import click

from rds.cli import entry
from rds.errors import UsageError
from rds.settings import valid_hostname


@click.command(name="rds-serve", context_settings={"help_option_names": ["--help"]})
@click.option("--lower", required=True, metavar="NAME",
              help="The lower system this key belongs to; it may act only as NAME.")
@click.option("--home", type=click.Path(path_type=Path, file_okay=False), metavar="PATH",
              help="The home to serve (default: RDS_HOME, or /NETMRDS for root).")
def command(lower: str, home: Path | None) -> int:
    """Answer one lower system's requests on standard input and output.

    Not run by hand: sshd runs it as the forced command of the lower system's
    key in authorized_keys, one line per lower system:

    \b
      restrict,command="rds-serve --lower relay1 --home /NETMRDS" ssh-ed25519 AAAA... rds-relay1

    The key can then only check in as NAME, get the jobs and packages for NAME
    and the hosts below it, and report their results.  See rds-serve(1).
    """
    if not valid_hostname(lower):
        raise UsageError(f"--lower {lower!r}: not a host name")
    from rds.transport import serve

    return serve.forced(lower, home)


main = entry(command)

if __name__ == "__main__":
    main()
