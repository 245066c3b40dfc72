"""rdsdlvclr: initialise the distribution situation file."""

from __future__ import annotations

import click

from rds import delivery
from rds.cli import entry, with_home
from rds.home import Home


@click.command(name="rdsdlvclr", context_settings={"help_option_names": ["--help"]})
@with_home(superuser=True)
def command(*, home: Home) -> int:
    """Initialise the distribution situation file: empty, in the current format.

    The distribution status server facility must be stopped (rdsdlvse -p).
    """
    click.echo(f"initialised {delivery.clear(home)}")
    return 0


main = entry(command)
