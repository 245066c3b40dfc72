"""The commands.  Each module is one thin click command; ``run`` alone turns
exceptions into one line on stderr and the documented exit code (rds(7)), and
``with_home`` is every command's one way into its home: it opens the home,
checks the caller when asked, takes the named lock when asked, opens the state
database (with the distribution status listening, rds.session) and closes it."""

from __future__ import annotations

import contextlib
import functools
import os
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NoReturn

import click

from rds import errors
from rds.errors import NotPermitted, RdsError, SettingsError, SystemError_, UsageError

if TYPE_CHECKING:
    from pathlib import Path

    from rds.home import Home

# What a command imports before it parses its options is all that ``--help`` pays for: click and this module.
# The library is imported where a command uses it, inside the function that ``with_home`` decorates
# (tests/test_cli_imports.py keeps it so).

EXIT_USAGE = UsageError.exit_code
EXIT_SYSTEM = SystemError_.exit_code


def _error(line: str) -> None:
    """One error line on stderr; what other systems said in it is escaped and it is cut (rds.text)."""
    from rds import text

    click.echo(text.cut(text.shown(line), text.LINE), err=True)


def _print_version(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        from rds import __version__

        click.echo(f"{ctx.info_name} (rds) {__version__}")
        ctx.exit(0)


def add_version_option(command: click.Command) -> None:
    """Every command answers ``--version``: added here, once, before it parses its options."""
    if not any("--version" in p.opts for p in command.params):
        command.params.append(click.Option(["--version", "show_rds_version"], is_flag=True, expose_value=False,
                                           is_eager=True, callback=_print_version,
                                           help="Print the version of rds and exit."))


def run(command: click.Command, args: Sequence[str] | None = None) -> NoReturn:
    name = command.name or os.path.basename(sys.argv[0])
    os.umask(0o022)  # whatever umask it was started with: nothing it makes is writable by others (rds.home)
    add_version_option(command)
    try:
        from rds import crashpoints

        crashpoints.check()  # a test hook (rds(7)): a malformed value is refused before anything runs
        rv = command.main(args=args, prog_name=name, standalone_mode=False)
        code = rv if isinstance(rv, int) else 0
    except click.exceptions.NoArgsIsHelpError as e:
        click.echo(e.ctx.get_help() if e.ctx else str(e), err=True)
        code = EXIT_USAGE
    except click.UsageError as e:
        hint = f" (see '{name} --help')"
        _error(f"{name}: {e.format_message()}{hint}")
        code = EXIT_USAGE
    except click.exceptions.Abort:
        click.echo(f"{name}: aborted", err=True)
        code = 130
    except click.exceptions.Exit as e:
        code = e.exit_code
    except _said() as e:
        line, code = errors.said(name, e)
        click.echo(line, err=True)
    sys.stdout.flush()
    sys.exit(code)


def _said() -> tuple[type[Exception] | type[KeyboardInterrupt], ...]:
    """What ``run`` says in one line (rds.errors.said): looked up only when something ends a command, so that
    sqlite3 is not imported by a command that never opens a database."""
    import sqlite3

    return RdsError, KeyboardInterrupt, sqlite3.Error, OSError


def resident(home: Home, name: str, stop: bool, foreground: bool, one_pass: Callable[[], str],
             interval: float | None, every: tuple[float, Callable[[], str]] | None = None,
             spread: Callable[[], float] | None = None) -> int:
    """Stop, run in this process, or start detached the resident ``name`` of ``home``."""
    from rds import daemon

    if stop:
        click.echo(f"{name}: stopped (pid {daemon.stop(home, name)})")
    elif foreground:
        daemon.Resident(home, name, one_pass, interval, every, spread).run()
    else:
        pid = daemon.start_background(home, name, daemon.foreground_argv(name, "--foreground"))
        click.echo(f"{name}: started (pid {pid})")
    return 0


def show_status(home: Home, name: str) -> int:
    """``NAME --status``: one line; exit 0 if the resident runs, NotRunning's code if not."""
    from rds import daemon
    from rds.errors import NotRunning

    st = daemon.status(home, name)
    click.echo(st.describe())
    return 0 if st.running else NotRunning.exit_code


Command = Callable[..., int]


def with_home(lock: str | None = None, database: bool = False, superuser: bool = False,
              pass_lock: bool = False) -> Callable[[Command], Command]:
    """Decorate a command (or the part of it that works on the home) like borg's ``with_repository``.

    The function gets ``home=`` (rds.home.Home) and, with ``database``,
    ``db=`` (the state database, closed when it returns), besides its own
    arguments; ``lock`` names a lock of the home held meanwhile, ``pass_lock``
    holds the pass lock (rds.home.PASS_LOCK, named here without importing rds.home
    before the options are parsed); ``superuser`` refuses a caller that may not run the command.  A command
    checks its options first, then calls what this decorates, so that a
    usage error is said before the home is opened.
    """
    def decorate(f: Command) -> Command:
        @functools.wraps(f)
        def inner(*args: Any, **kw: Any) -> int:
            from rds.home import PASS_LOCK

            held = PASS_LOCK if pass_lock else lock
            home = open_home()
            if superuser:
                require_superuser(home)
            if not database:
                with home.lock(held) if held is not None else contextlib.nullcontext():
                    return f(*args, home=home, **kw)
            from rds import session

            with session.opened(home, held) as db:
                return f(*args, home=home, db=db, **kw)
        return inner
    return decorate


def open_home() -> Home:
    """The home a command works on: RDS_HOME, else /NETMRDS for root, else the user's own.

    It must be one already (``rdsprm/RDSSETFL``: nothing else turns a directory into a home), the
    caller must be allowed to use it, and its settings are read and checked here, for every command.
    """
    from pathlib import Path

    from rds.home import Home, default_home

    env = os.environ.get("RDS_HOME")
    if env is not None and not env.strip():
        raise SettingsError("RDS_HOME is set but empty: set it to a home (RDS_HOME=/srv/rds/relay1), or unset "
                            "it for the default home (/NETMRDS for root)")
    try:
        path = default_home()
    except PermissionError as e:  # RDS_HOME lies beyond a directory this user may not enter
        raise NotPermitted(not_permitted(Path(e.filename or env or "RDS_HOME"))) from None
    check_may_use(path)
    settings_file = path / "rdsprm" / "RDSSETFL"
    if not settings_file.is_file():
        raise SettingsError(f"{path}: not an rds home (no rdsprm/RDSSETFL); make one with: mkdir -p {path}/rdsprm "
                            f"&& touch {settings_file} (a managing server; see rdssetfl(5) and RDSSETFL.sample)")
    home = Home.open(path)
    home.settings  # noqa: B018 - every command reads and checks RDSSETFL, whatever it goes on to do
    return home


def check_may_use(path: Path) -> None:
    """Root may use any home; another user one they own or may write (the one error for all others)."""
    if os.geteuid() == 0:
        return
    try:
        st = path.stat()
    except FileNotFoundError:
        return  # said next: not a home
    except PermissionError:
        raise NotPermitted(not_permitted(path)) from None
    if st.st_uid == os.geteuid():
        return
    if not os.access(path, os.R_OK | os.W_OK | os.X_OK):  # an owner-only home (rds.home): nothing inside to see
        raise NotPermitted(not_permitted(path))
    parts = [path, *(p for p in (path / "rdsprm", path / "GROUP", path / "log", path / "run") if p.exists())]
    if not all(os.access(p, os.R_OK | os.W_OK | os.X_OK) for p in parts):
        raise NotPermitted(not_permitted(path))


def require_superuser(home: Home) -> None:
    """Root may; with RDS_HOME set, so may the home's owner."""
    if os.geteuid() == 0:
        return
    if os.environ.get("RDS_HOME") and home.path.stat().st_uid == os.geteuid():
        return
    raise NotPermitted(not_permitted(home.path))


def not_permitted(path: Path) -> str:
    """The one error for a user who may not use a home or run a command on it (exit 1)."""
    return f"{path}: permission denied: only root or the owner of this home may use it"


def multi(first: tuple[str, ...], rest: tuple[str, ...]) -> list[str]:
    """JP1 takes several values after one option, space-separated: ``-h a b c``."""
    return [*first, *rest]


def job_destinations(hosts_help: str) -> Callable[[Command], Command]:
    """The options of a command that acts on a job's destinations (dcmjbrm, dcmrtry): ``-n JOB``,
    ``-h HOST [HOST...]`` and ``--json``.  The function gets ``job_no``, ``hosts`` (None: all) and ``as_json``;
    hosts without ``-h`` are a usage error, never "all"."""
    def decorate(f: Command) -> Command:
        @functools.wraps(f)
        def inner(job_no: int, hosts: tuple[str, ...], as_json: bool, more_hosts: tuple[str, ...]) -> int:
            if more_hosts and not hosts:
                raise UsageError(f"unexpected argument {more_hosts[0]!r} (hosts go after -h)")
            return f(job_no, multi(hosts, more_hosts) if hosts else None, as_json)
        options = [click.option("-n", "job_no", type=click.IntRange(1), required=True, metavar="JOB",
                                help="The job."),
                   click.option("-h", "hosts", multiple=True, metavar="HOST", help=hosts_help),
                   click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts."),
                   click.argument("more_hosts", nargs=-1, metavar="[HOST...]")]
        for option in reversed(options):
            inner = option(inner)
        return inner
    return decorate


def spread(args: Sequence[str], options: Sequence[str]) -> list[str]:
    """Repeat an option before each value that follows it: ``-a h1 h2 -e X`` -> ``-a h1 -a h2 -e X``.

    For commands whose options each take several values (JP1's ``rdsdlv``),
    so click sees ordinary repeated options.
    """
    out: list[str] = []
    current: str | None = None
    taken = False  # the current option has its first value
    for i, arg in enumerate(args):
        if arg == "--":
            return out + list(args[i:])
        if arg.startswith("-") and len(arg) > 1:
            current, taken = (arg, False) if arg in options else (None, False)
            out.append(arg)
        elif current is not None and taken:
            out += [current, arg]
        else:
            out.append(arg)
            taken = True
    return out


class SpreadCommand(click.Command):
    """A click command whose ``spread_options`` take several space-separated values."""

    spread_options: tuple[str, ...] = ()

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        return super().parse_args(ctx, spread(args, self.spread_options))


def print_json(data: Any) -> None:
    import json

    click.echo(json.dumps(data, indent=1, sort_keys=False))


def table(rows: list[list[Any]], headers: list[str]) -> str:
    """A table for a terminal: every cell shown safely and cut (rds.text); ``--json`` gives the whole texts."""
    from tabulate import tabulate

    from rds import text

    rows = [[text.cell(v) for v in r] for r in rows]
    return tabulate(rows, headers=headers, tablefmt="plain", disable_numparse=True)


def fast_table(rows: Sequence[Sequence[str]], headers: Sequence[str]) -> str:
    """What ``table`` prints for rows of one-line strings, fast enough for 100,000 rows."""
    from rds import text

    rows = [r if _plain(r, text.CELL) else [text.cell(v) for v in r] for r in rows]
    columns = list(zip(*rows, strict=True)) if rows else [()] * len(headers)
    # tabulate pads a header by 2 at least; the last column needs no padding
    widths = [max(len(h) + 2, max(map(len, c), default=0)) for h, c in zip(headers, columns, strict=True)]
    fmt = "  ".join([*(f"%-{w}s" for w in widths[:-1]), "%s"])
    lines = [(fmt % tuple(headers)).rstrip()]
    lines += [(fmt % tuple(r)).rstrip() for r in rows]
    return "\n".join(lines)


def _plain(row: Sequence[str], cell: int) -> bool:
    """Whether a row shows as it is (printable ASCII, no cell longer than ``cell``): most rows, at C speed."""
    joined = "".join(row)
    return joined.isascii() and joined.isprintable() and max(map(len, row), default=0) <= cell


def entry(command: click.Command) -> Callable[[], NoReturn]:
    return lambda: run(command)
