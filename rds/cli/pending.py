"""Commands named by the design whose work is not built yet.

Each has its --help and says plainly, with exit code 255, that it is not
available in this version; see the README's roadmap.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NoReturn

import click

from rds.cli import run
from rds.errors import RdsError


def _pending(name: str, summary: str) -> Callable[[], NoReturn]:
    @click.command(name=name, context_settings={"help_option_names": ["--help"], "ignore_unknown_options": True},
                   help=f"{summary}\n\nNot built in this version of rds.")
    @click.argument("args", nargs=-1, type=click.UNPROCESSED)
    def command(args: tuple[str, ...]) -> int:
        raise RdsError(f"{name} is not built in this version of rds ({summary.lower()})")

    return lambda: run(command)


rdsclr = _pending("rdsclr", "Delete expired packages and enforce the cache size limit")
