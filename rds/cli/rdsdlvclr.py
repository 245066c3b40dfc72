"""rdsdlvclr: initialise the distribution situation file."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from rds.cli import entry, with_home

if TYPE_CHECKING:
    from rds.home import Home


@click.command(name="rdsdlvclr", context_settings={"help_option_names": ["--help"]})
@with_home(superuser=True)
def command(*, home: Home) -> int:
    """Initialise the distribution situation file: empty, in the current format.

    The distribution status server facility must be stopped (rdsdlvse -p).
    """
    from rds import delivery

    click.echo(f"initialised {delivery.clear(home)}")
    return 0


main = entry(command)
