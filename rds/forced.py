"""The forced commands' entry points: rds-serve and rds-wake as sshd starts them, without click.

sshd runs ``rds-serve`` for every check-in, push hop and transfer of a lower
system, and ``rds-wake`` for every startup request; what each is given is the
one command line of its ``authorized_keys`` entry.  Importing click and
rds.cli would cost more CPU than the idle check-in itself, so these read that
command line here: the options written out in full (``--lower NAME``,
``--lower=NAME``, ``--home PATH``), each once, with values click would take
as they are.  Anything else (``--help``, ``--version``, a mistake) goes to the
click command (rds.cli.serve, rds.cli.wake), which says it as every command
does; so both ways behave alike, and the man pages describe both.
"""

from __future__ import annotations

import os
import sqlite3
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

from rds.errors import RdsError, said

# the click command each entry point hands what it does not take itself
COMMANDS = {"rds-serve": "rds.cli.serve", "rds-wake": "rds.cli.wake"}


def options(args: Sequence[str], names: Sequence[str]) -> dict[str, str] | None:
    """``--name value`` and ``--name=value`` pairs of ``names``, each at most once, values neither empty nor
    starting with '-'; None for any other command line."""
    found: dict[str, str] = {}
    i = 0
    while i < len(args):
        name, eq, value = args[i].partition("=")
        if not eq:
            if i + 1 >= len(args):
                return None
            value = args[i + 1]
            i += 1
        i += 1
        if name not in names or name in found or not value or value.startswith("-"):
            return None
        found[name] = value
    return found


def _home(opts: dict[str, str]) -> tuple[bool, Path | None]:
    """``--home``'s path as click.Path(file_okay=False) takes it; (False, None) where click would say more."""
    value = opts.get("--home")
    if value is None:
        return True, None
    return (True, Path(value)) if not os.path.exists(value) or os.path.isdir(value) else (False, None)


def _run(name: str, body: Callable[[], int]) -> NoReturn:
    """What rds.cli.run does around a command: the umask, RDS_CRASH_AT checked, one line for a failure."""
    from rds import crashpoints

    os.umask(0o022)
    try:
        crashpoints.check()
        code = body()
    except (RdsError, KeyboardInterrupt, sqlite3.Error, OSError) as e:
        line, code = said(name, e)
        print(line, file=sys.stderr)
    sys.stdout.flush()
    sys.exit(code)


def _click(name: str) -> NoReturn:
    import importlib

    importlib.import_module(COMMANDS[name]).main()
    raise AssertionError("unreachable")  # main() exits


def serve() -> NoReturn:
    """rds-serve's entry point (setup.cfg)."""
    opts = options(sys.argv[1:], ("--lower", "--home"))
    ok, home = _home(opts) if opts is not None else (False, None)
    if opts is None or not ok or "--lower" not in opts:
        _click("rds-serve")
    from rds.settings import valid_hostname

    lower = opts["--lower"]
    if not valid_hostname(lower):
        _click("rds-serve")  # it says why

    def body() -> int:
        from rds.transport import serve

        return serve.forced(lower, home)

    _run("rds-serve", body)


def wake() -> NoReturn:
    """rds-wake's entry point (setup.cfg)."""
    opts = options(sys.argv[1:], ("--home",))
    ok, home = _home(opts) if opts is not None else (False, None)
    if opts is None or not ok:
        _click("rds-wake")

    def body() -> int:
        from rds import startup

        print(f"rds-wake: {startup.woken(home)}")
        return 0

    _run("rds-wake", body)
