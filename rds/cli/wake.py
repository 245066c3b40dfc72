"""rds-wake: a lower system's end of a startup request over SSH, run by sshd as a key's forced command."""

from __future__ import annotations

from pathlib import Path

import click

from rds.cli import entry


@click.command(name="rds-wake", context_settings={"help_option_names": ["--help"]})
@click.option("--home", type=click.Path(path_type=Path, file_okay=False), metavar="PATH",
              help="The home to wake (default: RDS_HOME, or /NETMRDS for root).")
def command(home: Path | None) -> int:
    """Make this host check in with its upper system now.

    Not run by hand: sshd runs it as the forced command of the upper system's
    key in authorized_keys:

    \b
      restrict,command="rds-wake --home /NETMRDS" ssh-ed25519 AAAA... rds@manager

    It waits until its input says anything or ends, wakes the home's rdsma
    (or starts rdsft -a), prints one line and exits.  It ignores what the
    caller asked to run.  See rds-wake(1).
    """
    from rds import startup

    click.echo(f"rds-wake: {startup.woken(home)}")
    return 0


main = entry(command)

if __name__ == "__main__":
    main()
