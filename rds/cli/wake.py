"""rds-wake: a lower system's end of a startup request over SSH, run by sshd as a key's forced command."""

from __future__ import annotations

import contextlib
import os
import select
import sys
from pathlib import Path

import click

from rds.cli import entry

# how long to wait for the upper system's word before waking anyway (it logs in early, while it
# still fetches what this host will ask for; rds.transport.wake.HOLD stays well below this)
WAIT_MAX = 120.0


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
    from rds.errors import SettingsError
    from rds.home import Home, default_home
    from rds.log import logger

    path = home if home is not None else default_home()
    if not (path / "FORMAT").is_file():
        raise SettingsError(f"{path}: no rds home here")  # and none is made: the forced command may be wrong
    h = Home.open(path, create=False)
    _wait_for_word()
    how = startup.wake_home(h)
    caller = os.environ.get("SSH_CLIENT", "").split(" ")[0] or "a local caller"
    logger(h).info(f"startup request from {caller}: {how}")
    click.echo(f"rds-wake: {how}")
    return 0


def _wait_for_word() -> None:
    """Until standard input gives a byte or ends (the content is not read for meaning), at most WAIT_MAX."""
    try:
        if sys.stdin is None or sys.stdin.isatty():
            return
        fd = sys.stdin.fileno()
    except (OSError, ValueError):
        return
    ready, _, _ = select.select([fd], [], [], WAIT_MAX)
    if ready:
        with contextlib.suppress(OSError):
            os.read(fd, 1)


main = entry(command)

if __name__ == "__main__":
    main()
