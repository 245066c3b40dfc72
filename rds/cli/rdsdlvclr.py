"""rdsdlvclr: initialise the distribution situation file."""

from __future__ import annotations

import click

from rds import delivery
from rds.cli import entry, open_home, require_superuser


@click.command(name="rdsdlvclr", context_settings={"help_option_names": ["--help"]})
def command() -> int:
    """Initialise the distribution situation file: empty, in the current format.

    The distribution status server facility must be stopped (rdsdlvse -p).
    """
    home = open_home()
    require_superuser(home)
    click.echo(f"initialised {delivery.clear(home)}")
    return 0


main = entry(command)
