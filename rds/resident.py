"""The resident server of a home: rds-serve and rds-wake served by a pre-imported process.

sshd starts ``rds-serve`` for every check-in of a lower system and
``rds-wake`` for every startup request.  A fresh Python that imports rds
costs more CPU than the idle check-in itself (0.13 s of 0.17 s), so rdsma
runs, next to its loop, this server: one process per home (``python -m
rds.resident HOME``, started and restarted by rdsma, rds.daemon), which has
imported what serving needs once and listens on ``run/resident.sock`` (mode
0600 in the home's 0700 run directory; a peer of another uid is refused by
SO_PEERCRED).  The forced commands become thin clients (rds.forced): they
pass their command line, environment and fds 0, 1 and 2, and wait for the
exit status.

For each connection the server forks a child, which reads the request
(bounded: MAX_MESSAGE bytes, three descriptors, ANSWER_WAIT seconds), takes
the client's descriptors as its own standard input, output and error and
its environment, and runs the same code as the command in its own process
(rds.forced.serve_here / wake_here).  A fork per session, not a thread: the
sessions stay as isolated as one process per check-in was (their own
memory, their own locks, their own crash), kill -9 of one ends one session,
and the server itself never runs a request.  The server reaps its children
and tells each client how its child ended (an exit status, or the signal
that killed it, which the client then dies of as well: the lower system
sees the cut it would have seen); a child whose client goes away ends at
once.  At most MAX_CHILDREN sessions are served at once, besides those kept
between a lower system's passes (MaxKeptSessions, read as the server starts:
rds.transport.serve.Kept); beyond that the
server closes the connection unanswered, and for a client of another rds
version or a malformed request the child refuses: either way the command
runs in its own process, as it does when no server listens.

The server ends when rdsma does (its standard input is a pipe from rdsma)
or on SIGTERM; sessions under way finish in their children.  One server per
home: it holds ``run/resident.lock`` (its pid in ``run/resident.owner``)
for its life, and a second one started for the same home exits.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import gc
import logging
import os
import select
import signal
import socket
import stat
import sys
import threading
from pathlib import Path

from rds import __version__, forced

MAX_CHILDREN = 256  # sessions served at once; one more is refused and served by its own process
LOCK = "resident.lock"
OWNER = "resident.owner"
NAMES = ("rds-serve", "rds-wake")


def socket_path(home: Path) -> Path:
    return home / "run" / forced.SOCKET


class Server:
    """Listens on the home's socket and forks a child per session."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.run_dir = home / "run"
        self.children: dict[int, socket.socket] = {}  # child pid -> the session's socket (for its status)
        self.listener: socket.socket | None = None
        self.lock_fd = -1
        self.stopping = False
        # sessions kept between a lower system's passes (MaxKeptSessions, rds.transport.serve.Kept) come on top of
        # MAX_CHILDREN, so that as many fresh ones are still served pre-imported
        self.most = MAX_CHILDREN + kept_sessions(home)

    def take_lock(self) -> bool:
        """The home's server lock, held for this process's life; False if another server holds it."""
        self.lock_fd = os.open(self.run_dir / LOCK, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(self.lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.lock_fd)
            self.lock_fd = -1
            return False
        with contextlib.suppress(OSError):
            (self.run_dir / OWNER).write_text(f"{os.getpid()} rds.resident\n")
        return True

    def listen(self) -> None:
        """Bind the socket (a stale file of a dead server is replaced: this process holds the lock)."""
        path = socket_path(self.home)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        old = os.umask(0o177)  # the socket is born 0600
        dirfd = os.open(self.run_dir, os.O_PATH | os.O_DIRECTORY)
        try:
            s.bind(str(path) if len(os.fsencode(str(path))) <= 100 else f"/proc/self/fd/{dirfd}/{forced.SOCKET}")
        finally:
            os.umask(old)
            os.close(dirfd)
        s.listen(64)
        s.setblocking(False)
        self.listener = s

    def serve_forever(self, parent_fd: int | None) -> None:
        """Accept sessions until SIGTERM or until ``parent_fd`` (rdsma's pipe) ends."""
        assert self.listener is not None
        rfd, wfd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(wfd)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.signal(signal.SIGTERM, self._on_term)
        gc.freeze()  # what is imported now stays shared with the children (no copy-on-write by the collector)
        watch = [self.listener.fileno(), rfd] + ([parent_fd] if parent_fd is not None else [])
        while not self.stopping:
            ready, _, _ = select.select(watch, [], [], 60.0)
            if rfd in ready:
                with contextlib.suppress(BlockingIOError):
                    while os.read(rfd, 512):
                        pass
            self.reap()
            if parent_fd is not None and parent_fd in ready and not os.read(parent_fd, 512):
                break  # rdsma ended
            if self.listener.fileno() in ready:
                self.accept()
        self.close()

    def _on_term(self, signum: int, frame: object) -> None:
        self.stopping = True

    def accept(self) -> None:
        assert self.listener is not None
        while True:
            try:
                conn, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:  # out of descriptors: the client finds no answer and serves itself
                if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    return
                raise
            pid_uid_gid = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
            uid = int.from_bytes(pid_uid_gid[4:8], sys.byteorder)
            if uid != os.getuid() or len(self.children) >= self.most:
                conn.close()  # another user, or too busy: the client serves itself (or is nobody of ours)
                continue
            try:
                pid = os.fork()
            except OSError:
                conn.close()
                continue
            if pid == 0:
                code = 1
                try:
                    self.listener.close()
                    os.close(self.lock_fd)
                    for other in self.children.values():
                        other.close()
                    code = session(conn)
                finally:
                    os._exit(code)
            self.children[pid] = conn

    def reap(self) -> None:
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            conn = self.children.pop(pid, None)
            if conn is None:
                continue
            said = forced.SIGNAL + str(os.WTERMSIG(status)).encode() if os.WIFSIGNALED(status) else \
                forced.EXIT + str(os.waitstatus_to_exitcode(status)).encode()
            with contextlib.suppress(OSError):  # the child said it already, or the client is gone
                conn.send(said, socket.MSG_DONTWAIT)
            conn.close()

    def close(self) -> None:
        if self.listener is not None:
            with contextlib.suppress(OSError):
                socket_path(self.home).unlink()
            self.listener.close()
            self.listener = None
        for conn in self.children.values():
            conn.close()  # the children serve on; their clients hear them from the children
        self.children.clear()


def kept_sessions(home: Path) -> int:
    """The home's MaxKeptSessions, as the server starts (0 if its settings cannot be read: rdsma says why)."""
    from rds.errors import SettingsError
    from rds.settings import load_settings

    try:
        s = load_settings(home)
    except SettingsError:
        return 0
    return s.max_kept_sessions if s.resident_server else 0


def read_request(conn: socket.socket) -> tuple[str, list[str], dict[str, str], str, list[int]] | str:
    """The client's (name, arguments, environment, cwd, descriptors), or why it is refused."""
    conn.settimeout(forced.ANSWER_WAIT)
    data, anc, flags, _ = conn.recvmsg(forced.MAX_MESSAGE, socket.CMSG_SPACE(3 * 4))
    fds: list[int] = []
    for level, kind, payload in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            usable = len(payload) - len(payload) % 4
            fds += [int.from_bytes(payload[i:i + 4], sys.byteorder) for i in range(0, usable, 4)]
    if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC) or len(fds) != 3:
        for fd in fds:
            os.close(fd)
        return "a request over its bounds"
    fields = data.split(b"\0")
    if len(fields) < 5 or fields[0] != forced.MAGIC:
        return "not a request of rds"
    if fields[1] != __version__.encode():
        return f"another version of rds ({fields[1][:40]!r})"
    name = fields[2].decode("ascii", "replace")
    nargs = int(fields[4]) if fields[4].isdigit() else -1
    if name not in NAMES or not 0 <= nargs <= len(fields) - 5:
        return "a request of another kind"
    args = [os.fsdecode(a) for a in fields[5:5 + nargs]]
    env = {}
    for item in fields[5 + nargs:]:
        key, eq, value = item.partition(b"=")
        if eq and key:
            env[os.fsdecode(key)] = os.fsdecode(value)
    return name, args, env, os.fsdecode(fields[3]), fds


def session(conn: socket.socket) -> int:
    """In the forked child: take the client's request and descriptors and run the command as it would have."""
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.set_wakeup_fd(-1)
    try:
        request = read_request(conn)
        if isinstance(request, str):
            conn.send(forced.REFUSED + request.encode()[:200])
            return 1
        conn.send(forced.ACCEPTED)
        go = conn.recv(16)
    except OSError:
        return 1
    name, args, env, cwd, fds = request
    if go != forced.GO:
        return 1  # the client gave up waiting and serves itself
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    conn.settimeout(None)
    # the client went away (killed): end this session at once, as sshd's child would have ended
    threading.Thread(target=_end_with_client, args=(conn,), daemon=True).start()
    os.environ.clear()
    os.environ.update(env)
    with contextlib.suppress(OSError):
        os.chdir(cwd)
    _fresh_logs()
    sys.stdin = open(0, encoding="utf-8", errors="surrogateescape", closefd=False)  # noqa: SIM115
    sys.stdout = open(1, "w", encoding="utf-8", errors="surrogateescape", closefd=False)  # noqa: SIM115
    sys.stderr = open(2, "w", encoding="utf-8", errors="backslashreplace", closefd=False)  # noqa: SIM115
    sys.argv = [name, *args]
    if name == "rds-serve":
        from rds.transport import serve

        serve.KEEPABLE = True  # a session here may be kept between a lower system's passes
    code = 0
    try:
        (forced.serve_here if name == "rds-serve" else forced.wake_here)()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        if e.code is not None and not isinstance(e.code, int):
            print(e.code, file=sys.stderr)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    with contextlib.suppress(OSError):
        conn.send(forced.EXIT + str(code).encode())
    return code


def _end_with_client(conn: socket.socket) -> None:
    with contextlib.suppress(OSError):
        conn.recv(16)
    os._exit(1)


def _fresh_logs() -> None:
    """The server's loggers name the server's pid and command: the session makes its own."""
    for name, log in list(logging.root.manager.loggerDict.items()):
        if name.startswith("rds.") and isinstance(log, logging.Logger):
            for handler in list(log.handlers):
                log.removeHandler(handler)
                with contextlib.suppress(Exception):
                    handler.close()


def preload() -> None:
    """Import once what the sessions use, so that no session pays for it."""
    import click  # noqa: F401  (--help and mistakes go to the click commands)
    import filelock  # noqa: F401  (a read's shared lock on a package, rds.home.lock)

    import rds.cli.serve  # noqa: F401
    import rds.cli.wake  # noqa: F401
    from rds import cache, client, manager, poller, startup  # noqa: F401  (manager: the managing server's check-ins)
    from rds.transport import connection, link, serve  # noqa: F401
    with contextlib.suppress(ImportError):
        import paramiko  # noqa: F401  (a JIT relay's fetch from its own upper system)


def command(home: Path) -> tuple[list[str], dict[str, str]]:
    """The command line and environment that start the server of ``home`` from this same installation
    (its path as this process found rds and its libraries: the Debian package's launchers run python -IS)."""
    from rds import crashpoints

    path = os.pathsep.join(p for p in sys.path if p and os.path.isdir(p))
    return [sys.executable, "-m", "rds.resident", str(home)], crashpoints.child_env(PYTHONPATH=path)


def main() -> None:
    """``python -m rds.resident HOME``: rdsma starts it with a pipe as standard input."""
    if len(sys.argv) != 2:
        sys.exit("usage: python -m rds.resident HOME (rdsma starts it)")
    os.umask(0o022)
    server = Server(Path(sys.argv[1]))
    if not server.take_lock():
        sys.exit(0)  # another server holds this home already
    preload()
    server.listen()
    server.serve_forever(0 if stat.S_ISFIFO(os.fstat(0).st_mode) else None)


if __name__ == "__main__":
    main()
