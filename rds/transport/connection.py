"""Connecting over SSH with paramiko: the lower system's way to rds-serve, the upper's to rds-wake.

The lower system connects to ``ManagingHost ssh://[user@]host[:port][/home]``
(``Target``), checks the host key against known_hosts (never adding one),
logs in with its key and runs one command (``open_serve``), which the upper
system's ``authorized_keys`` forces to rds-serve (transport.serve).
``open_client`` does the connecting, the host-key check and the login, also
for startup requests (transport.wake); every failure is one line naming the
other system, and a host key that is unknown or changed is refused with
the commands that accept it on purpose.

This module is the only one that imports paramiko (with transport.wake,
which goes through ``open_client``), and only when a connection is opened, so
that rds-serve and commands that do not connect do not pay for it.
"""

from __future__ import annotations

import contextlib
import logging
import shlex
import socket
import sys
import threading
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rds.errors import CommunicationError, Refused, SettingsError
from rds.home import check_private
from rds.settings import Settings
from rds.transport.frames import SERVE

# paramiko imports invoke only for "Match exec" in ssh_config files, which rds does not read: without it
# paramiko loads in half the time, and it says it can do without.  Set here, before any function of this
# module or rds.transport.wake imports paramiko (open_serve did first, and loaded invoke: issue 16).
sys.modules.setdefault("invoke", None)  # type: ignore[arg-type]

# paramiko tuning, measured on loopback (../shared/reference/ssh-baseline.md and bench/transfer):
# a window of some MiB, large packets, every receive taking all the channel holds (taking less
# makes paramiko's receive buffer move its rest: quadratic), and AES-GCM first, which costs both
# paramiko and sshd the least CPU.
WINDOW = 16 << 20
PACKET = 256 << 10
RECV = WINDOW
CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com")
IDLE_MIN = 120.0  # seconds without a byte before a link is taken as cut; see idle_timeout()
REKEY_BYTES: int | None = None  # tests lower paramiko's 512 MiB to force renegotiations
# connections opened, requests sent (transport.link), keys renegotiated, the most read requests in flight,
# keep-alive frames heard, and turns: the times a link waited for the upper system after it had sent
# something (its login included), so that rds-serve's hello and the answer to a check-in sent before
# it came count as one; for the benches and the tests
STATS = {"connections": 0, "requests": 0, "rekeys": 0, "in_flight": 0, "keepalives": 0, "turns": 0}


@dataclass(frozen=True)
class Target:
    user: str | None
    host: str
    port: int
    home: str | None

    @classmethod
    def parse(cls, url: str) -> Target:
        parts = urllib.parse.urlsplit(url)
        try:
            port = parts.port or 22
        except ValueError:
            raise SettingsError(f"ManagingHost {url}: bad port") from None
        if parts.scheme != "ssh" or not parts.hostname:
            raise SettingsError(f"ManagingHost {url}: not ssh://[user@]host[:port][/home]")
        path = urllib.parse.unquote(parts.path)
        return cls(parts.username, parts.hostname, port, path if path not in ("", "/") else None)

    @property
    def where(self) -> str:
        return f"{self.user + '@' if self.user else ''}{self.host}:{self.port}"

    @property
    def known_hosts_name(self) -> str:
        return self.host if self.port == 22 else f"[{self.host}]:{self.port}"


def serve_command(lower: str, home: str | None) -> str:
    """What the lower system asks to run: the forced command replaces it, rds-serve checks it."""
    words = [SERVE, "--lower", lower] + (["--home", home] if home else [])
    return " ".join(shlex.quote(w) for w in words)


def _local_path(settings: Settings, path: Path) -> Path:
    path = path.expanduser()
    return path if path.is_absolute() else settings.home / path


def open_serve(settings: Settings, target: Target) -> tuple[Any, Any]:
    """Connect, check the host key, log in and start rds-serve; every failure is one line."""
    import paramiko

    client = open_client(settings, target, f"upper system {target.where}", "upper system")
    try:
        transport = client.get_transport()
        chan = transport.open_session(window_size=WINDOW, max_packet_size=PACKET, timeout=settings.connect_timeout)
        chan.in_buffer = Pipe()  # before anything can come: the command's output fills it
        chan.exec_command(serve_command(settings.host_name, target.home))
    except (paramiko.SSHException, OSError, EOFError) as e:
        client.close()
        raise CommunicationError(f"upper system {target.where}: SSH failed: {reason(e)}") from None
    chan.settimeout(idle_timeout(settings))
    return client, chan


def open_client(settings: Settings, target: Target, where: str, side: str) -> Any:
    """Connect to ``target``, check its host key against KnownHostsFile and log in with IdentityFile.

    ``where`` starts every message; ``side`` names the other system in them
    ("upper system", "lower system").  Used for check-ins (to the upper
    system) and for startup requests (to a lower one, rds.transport.wake).
    """
    import paramiko

    # paramiko logs what went wrong in its own thread; with no handler Python would print it on
    # stderr, beside the one line the command prints for the same failure
    logging.getLogger("paramiko").addHandler(logging.NullHandler())
    known = [_local_path(settings, settings.known_hosts_file)] if settings.known_hosts_file else \
        [Path("~/.ssh/known_hosts").expanduser(), Path("/etc/ssh/ssh_known_hosts")]
    for path in known:
        check_private(path, "the known_hosts file", missing_ok=True)  # as sshd's StrictModes (rds.home)
    pkey = _identity(settings) if settings.identity_file else None
    timeout = settings.connect_timeout

    client = paramiko.SSHClient()
    for path in known:
        try:
            client.load_system_host_keys(str(path))
        except FileNotFoundError:
            continue
        except (OSError, paramiko.SSHException) as e:
            raise SettingsError(f"known_hosts file {path}: cannot read: {reason(e)}") from None
    client.set_missing_host_key_policy(_RejectUnknown(where, known[0], target, side))
    try:
        sock = socket.create_connection((target.host, target.port), timeout=timeout)
    except socket.gaierror as e:
        raise CommunicationError(f"{where}: cannot resolve the host name ({e.strerror})") from None
    except TimeoutError:
        raise CommunicationError(f"{where}: no answer within {timeout:g}s (ConnectTimeout)") from None
    except OSError as e:
        raise CommunicationError(f"{where}: cannot connect: {reason(e)}") from None
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    STATS["connections"] += 1
    try:
        client.connect(target.host, port=target.port, username=target.user or _login_name(), pkey=pkey,
                       sock=sock, timeout=timeout, banner_timeout=timeout, auth_timeout=timeout,
                       channel_timeout=timeout, allow_agent=False, look_for_keys=pkey is None,
                       transport_factory=transport_class())
    except _HostKeyRefused as e:
        client.close()
        raise Refused(str(e)) from None
    except paramiko.BadHostKeyException as e:
        client.close()
        raise Refused(_changed_key(where, known[0], target, e.key, e.expected_key, side)) from None
    except paramiko.AuthenticationException:
        client.close()
        key = _local_path(settings, settings.identity_file) if settings.identity_file else "~/.ssh/id_*"
        raise CommunicationError(f"{where}: the {side} did not accept the key {key} for "
                                 f"{target.user or _login_name()} (is it in its authorized_keys?)") from None
    except (paramiko.SSHException, OSError, EOFError) as e:
        client.close()
        raise CommunicationError(f"{where}: SSH failed: {reason(e)}") from None
    return client


def idle_timeout(settings: Settings) -> float:
    """A link that carries nothing for this long is taken as cut (the upper may wait on its locks)."""
    return max(IDLE_MIN, 4 * settings.connect_timeout)


def _login_name() -> str:
    import getpass

    return getpass.getuser()


def _identity(settings: Settings) -> Any:
    import paramiko

    assert settings.identity_file is not None
    path = _local_path(settings, settings.identity_file)
    try:
        check_private(path, "the IdentityFile", secret=True)
        return paramiko.PKey.from_path(path)
    except FileNotFoundError:
        raise SettingsError(f"IdentityFile {path}: no such file") from None
    except PermissionError:
        raise SettingsError(f"IdentityFile {path}: permission denied") from None
    except TypeError:
        raise SettingsError(f"IdentityFile {path}: the key has a passphrase; rds needs a key without one "
                            f"(its forced command on the upper system limits what it can do)") from None
    except (ValueError, paramiko.SSHException, OSError) as e:
        raise SettingsError(f"IdentityFile {path}: not a usable private key ({reason(e)})") from None


def _key_kind(key: Any) -> str:
    name = key.get_name()
    if "ed25519" in name:
        return "ed25519"
    if "ecdsa" in name:
        return "ecdsa"
    return "rsa" if "rsa" in name else name


def _accept_hint(known: Path, target: Target, key: Any, side: str = "upper system") -> str:
    kind = _key_kind(key)
    return (f"compare it with 'ssh-keygen -lf /etc/ssh/ssh_host_{kind}_key.pub' on the {side}, then "
            f"accept it deliberately: ssh-keyscan -p {target.port} -t {kind} {target.host} >> {known}")


class _HostKeyRefused(Exception):
    pass


class _RejectUnknown:
    """A MissingHostKeyPolicy that refuses, saying how to accept the key on purpose."""

    def __init__(self, where: str, known: Path, target: Target, side: str = "upper system") -> None:
        self.where = where
        self.known = known
        self.target = target
        self.side = side

    def missing_host_key(self, client: Any, hostname: str, key: Any) -> None:
        raise _HostKeyRefused(
            f"{self.where}: host key {key.get_name()} {key.fingerprint} is not in {self.known}; refused. "
            f"If it is the right key, {_accept_hint(self.known, self.target, key, self.side)}")


def _changed_key(where: str, known: Path, target: Target, got: Any, expected: Any,
                 side: str = "upper system") -> str:
    return (f"{where}: HOST KEY CHANGED: it shows {got.get_name()} {got.fingerprint}, but {known} has "
            f"{expected.get_name()} {expected.fingerprint}; refused (the connection may be intercepted). "
            f"If the key was changed on purpose, remove the old one with "
            f"ssh-keygen -R '{target.known_hosts_name}' -f {known}, then {_accept_hint(known, target, got, side)}")


_FACTORY: Any = None


def transport_class() -> Any:
    """paramiko's Transport with our window and packet sizes, safe across key renegotiations.

    paramiko's transport thread answers some messages itself (a channel close,
    a channel request that wants a reply) through ``_send_user_message``,
    which waits for the key exchange in progress to finish, and only that same
    thread can finish it: a deadlock for 30 s, then a dead connection.  Here
    such replies are held while keys are renegotiated and sent right after the
    new keys take effect, which is what the protocol asks for.
    """
    global _FACTORY
    if _FACTORY is not None:
        return _FACTORY
    import paramiko

    class Transport(paramiko.Transport):
        def __init__(self, sock: Any, **kw: Any) -> None:
            super().__init__(sock, default_window_size=WINDOW, default_max_packet_size=PACKET, **kw)
            self._held: list[Any] = []
            self._preferred_ciphers: tuple[str, ...] = (*[c for c in CIPHERS if c in self._preferred_ciphers],
                                                        *[c for c in self._preferred_ciphers if c not in CIPHERS])
            if REKEY_BYTES is not None:
                self.packetizer.REKEY_BYTES = REKEY_BYTES

        def _send_user_message(self, data: Any) -> None:
            if threading.current_thread() is self:
                with self.clear_to_send_lock:
                    if not self.clear_to_send.is_set():
                        self._held.append(data)
                        return
                    self._send_message(data)
                    return
            # If the link is gone, drop the message, as paramiko itself does once it knows: raising
            # would lose what Channel.recv had just taken from its buffer before it sent the window
            # adjustment (issue 7: up to WINDOW bytes received, never written).  The next receive
            # says that the link ended.
            with contextlib.suppress(EOFError, OSError):
                super()._send_user_message(data)

        def _parse_newkeys(self, m: Any) -> None:
            if self.initial_kex_done:
                STATS["rekeys"] += 1
            super()._parse_newkeys(m)
            with self.clear_to_send_lock:
                held, self._held = self._held, []
                for data in held:
                    self._send_message(data)

    _FACTORY = Transport
    return _FACTORY


# The most one receive joins of the packets waiting.  Joining all that came (up to the 16 MiB window)
# allocated fresh memory at each receive, and touching fresh pages cost more than the copy: 1.5 GiB
# came 13% faster, at 14% less CPU, joined 256 KiB at a time (issue 16); a packet is never cut.
JOIN_MOST = 256 << 10


class Pipe:
    """paramiko's ``Channel.in_buffer`` (its BufferedPipe's methods), without copying what comes.

    BufferedPipe keeps what the transport thread feeds in one ``array``: each
    packet (about 32 KiB from sshd) is appended, growing it, and each receive
    copies it out twice (a slice, then ``tobytes``), all under the GIL that the
    transport thread and the reading thread both need (issue 16: a third of a
    first transfer's time).  Here each packet's bytes are kept as they came and
    a receive hands on one packet as it came, or joins whole packets up to
    JOIN_MOST: one copy at most.  As much as the channel's window allows is
    held, as before."""

    def __init__(self) -> None:
        import collections

        self._lock = threading.Lock()
        self._cv = threading.Condition(self._lock)
        self._event: Any = None
        self._parts: collections.deque[bytes] = collections.deque()
        self._size = 0
        self._closed = False

    def set_event(self, event: Any) -> None:
        with self._lock:
            self._event = event
            if self._closed or self._size:
                event.set()
            else:
                event.clear()

    def feed(self, data: bytes) -> None:
        with self._lock:
            if self._event is not None:
                self._event.set()
            if data:
                self._parts.append(bytes(data))
                self._size += len(data)
            self._cv.notify_all()

    def read_ready(self) -> bool:
        with self._lock:
            return self._size > 0

    def read(self, nbytes: int, timeout: float | None = None) -> bytes:
        import time

        from paramiko.buffered_pipe import PipeTimeout

        with self._lock:
            if not self._size:
                if self._closed:
                    return b""
                if timeout == 0.0:
                    raise PipeTimeout()
                while not self._size and not self._closed:
                    then = time.monotonic()
                    self._cv.wait(timeout)
                    if timeout is not None:
                        timeout -= time.monotonic() - then
                        if timeout <= 0.0:
                            raise PipeTimeout()
            if not self._parts:  # closed while waiting
                return b""
            part = self._parts.popleft()
            if len(part) > nbytes:  # a caller asking for less than a packet
                self._parts.appendleft(part[nbytes:])
                part = part[:nbytes]
            out = [part]
            took = len(part)
            most = min(nbytes, JOIN_MOST)  # whole packets only: none cut, none copied but by the join
            while self._parts and took + len(self._parts[0]) <= most:
                part = self._parts.popleft()
                out.append(part)
                took += len(part)
            self._size -= took
            if not self._size and self._event is not None and not self._closed:
                self._event.clear()
        return out[0] if len(out) == 1 else b"".join(out)

    def empty(self) -> bytes:
        with self._lock:
            out = b"".join(self._parts)
            self._parts.clear()
            self._size = 0
            if self._event is not None and not self._closed:
                self._event.clear()
            return out

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._cv.notify_all()
            if self._event is not None:
                self._event.set()

    def __len__(self) -> int:
        with self._lock:
            return self._size


def reason(e: BaseException) -> str:
    """An OS or SSH error as a few words for a message."""
    if isinstance(e, OSError) and e.strerror:
        return e.strerror.lower()
    return str(e) or type(e).__name__
