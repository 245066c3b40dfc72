"""The forced commands' entry points: rds-serve and rds-wake as sshd starts them, without click.

sshd runs ``rds-serve`` for every check-in, push hop and transfer of a lower
system, and ``rds-wake`` for every startup request; what each is given is the
one command line of its ``authorized_keys`` entry.

First each hands its work to the home's resident server (rds.resident, run
by rdsma): importing nothing but ``os``, ``sys`` and ``_socket``, it connects
to ``run/resident.sock`` of the home its command line names, passes its
command line, its environment and its standard input, output and error
(SCM_RIGHTS), and waits for the exit status, which it exits with.  The
resident's pre-imported child serves on those descriptors itself: no byte
goes through this process.  If no resident answers (none runs, the socket is
stale, it is busy, or it runs other code than this process would), the
command runs in this process as before, so nothing depends on the resident.
"Other code" is told by ``identity``: rds's version and a build identity made
of the number, sizes and modification times of the package's ``.py`` files
(about 70 stat calls, no import), so that an upgrade that keeps the version
string (a local patch, a reinstall from a newer checkout) is served by the new
code at once; the resident then retires, and rdsma starts it again.

In this process, importing click and rds.cli would cost more CPU than the
idle check-in itself, so the command line is read here: the options written
out in full (``--lower NAME``, ``--lower=NAME``, ``--home PATH``), each once,
with values click would take as they are.  Anything else (``--help``,
``--version``, a mistake) goes to the click command (rds.cli.serve,
rds.cli.wake), which says it as every command does; so both ways behave
alike, and the man pages describe both.
"""

from __future__ import annotations

import os
import sys

from rds.installation import identity  # noqa: F401  (the resident compares it: rds.resident)

TYPE_CHECKING = False
if TYPE_CHECKING:  # the annotations only: importing typing costs rds-serve a few ms a check-in
    from collections.abc import Callable, Sequence
    from pathlib import Path
    from typing import NoReturn

# the click command each entry point hands what it does not take itself
COMMANDS = {"rds-serve": "rds.cli.serve", "rds-wake": "rds.cli.wake"}
OPTIONS = {"rds-serve": ("--lower", "--home"), "rds-wake": ("--home",)}

# The resident's socket, in the home's private run directory, and what is said on it (SOCK_SEQPACKET: one
# message a send).  The thin client sends MAGIC, ``identity()``, the command's name, its cwd, the number of
# its arguments, the arguments and its environment, NUL-separated, with fds 0, 1 and 2 attached; the
# resident's child answers ACCEPTED or REFUSED + why; the client says GO (from then on the child serves, and
# the client has given its fds away) and waits for one EXIT + status or SIGNAL + number.
SOCKET = "resident.sock"
MAGIC = b"rds-resident 1"
ACCEPTED, REFUSED, GO, EXIT, SIGNAL = b"accepted", b"refused ", b"go", b"exit ", b"signal "
MAX_MESSAGE = 65536  # a request longer than this is refused (and the command runs in its own process)
ANSWER_WAIT = 5.0  # seconds the client waits for the resident's child to accept; then it serves itself


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


def home_of(opts: dict[str, str]) -> str | None:
    """The home the command line names, as rds.home.default_home would find it; None where only the full
    way knows (a user's own home from platformdirs)."""
    home = opts.get("--home") or os.environ.get("RDS_HOME")
    if not home:
        return "/NETMRDS" if os.geteuid() == 0 else None
    return home


def through_resident(name: str) -> int | None:
    """Hand this command to its home's resident; its exit status, or None if no resident took it."""
    opts = options(sys.argv[1:], OPTIONS[name])
    home = home_of(opts) if opts is not None else None
    if home is None:
        return None
    import _socket

    run = os.path.join(home, "run")
    path = os.path.join(run, SOCKET)
    dirfd = -1
    s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_SEQPACKET)
    try:
        s.settimeout(ANSWER_WAIT)
        if len(os.fsencode(path)) > 100:  # beyond sun_path: reach it through the directory's descriptor
            dirfd = os.open(run, os.O_PATH | os.O_DIRECTORY)
            path = f"/proc/self/fd/{dirfd}/{SOCKET}"
        s.connect(path)
        try:
            cwd = os.getcwd()
        except OSError:
            cwd = "/"
        fields = [MAGIC, identity(), name.encode(), os.fsencode(cwd), str(len(sys.argv) - 1).encode(),
                  *(os.fsencode(a) for a in sys.argv[1:]),
                  *(os.fsencode(k) + b"=" + os.fsencode(v) for k, v in os.environ.items())]
        fds = b"".join(fd.to_bytes(4, sys.byteorder) for fd in (0, 1, 2))
        s.sendmsg([b"\0".join(fields)], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, fds)])
        if s.recv(256) != ACCEPTED:
            return None  # refused (busy, other code) or gone: this process serves
        s.sendall(GO)
    except OSError:  # none listens (no socket, a stale one, refused), or it did not answer in time
        return None
    finally:
        if dirfd >= 0:
            os.close(dirfd)
    # the resident's child serves on the descriptors now: this process lets go of its input and output, so
    # that the lower system sees them end when the child ends, and waits for the status
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    os.close(null)
    s.settimeout(None)
    try:
        said = s.recv(256)
    except OSError:
        said = b""
    if said.startswith(EXIT) and said[len(EXIT):].isdigit():
        return int(said[len(EXIT):])
    if said.startswith(SIGNAL) and said[len(SIGNAL):].isdigit():
        os.kill(os.getpid(), int(said[len(SIGNAL):]))  # ended as its server process did (kill -9: a cut)
    os.write(2, f"{name}: its server process in rdsma's resident ended without an exit status\n".encode())
    return 1


def _home(opts: dict[str, str]) -> tuple[bool, Path | None]:
    """``--home``'s path as click.Path(file_okay=False) takes it; (False, None) where click would say more."""
    from pathlib import Path

    value = opts.get("--home")
    if value is None:
        return True, None
    return (True, Path(value)) if not os.path.exists(value) or os.path.isdir(value) else (False, None)


def _run(name: str, body: Callable[[], int]) -> NoReturn:
    """What rds.cli.run does around a command: the umask, RDS_CRASH_AT checked, one line for a failure."""
    import sqlite3

    from rds import crashpoints
    from rds.errors import RdsError, said

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
    """rds-serve's entry point (setup.cfg): through the resident, else here."""
    code = through_resident("rds-serve")
    if code is not None:
        sys.exit(code)
    serve_here()


def wake() -> NoReturn:
    """rds-wake's entry point (setup.cfg): through the resident, else here."""
    code = through_resident("rds-wake")
    if code is not None:
        sys.exit(code)
    wake_here()


def serve_here() -> NoReturn:
    """rds-serve in this process (sys.argv its command line)."""
    opts = options(sys.argv[1:], OPTIONS["rds-serve"])
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


def wake_here() -> NoReturn:
    """rds-wake in this process (sys.argv its command line)."""
    opts = options(sys.argv[1:], OPTIONS["rds-wake"])
    ok, home = _home(opts) if opts is not None else (False, None)
    if opts is None or not ok:
        _click("rds-wake")

    def body() -> int:
        from rds import startup

        print(f"rds-wake: {startup.woken(home)}")
        return 0

    _run("rds-wake", body)
