"""The protocol over SSH: paramiko on the lower system, ``rds-serve`` under sshd on the upper.

The lower system connects to ``ManagingHost ssh://[user@]host[:port][/home]``,
checks the host key against known_hosts (never adding one), logs in with its
key and runs one command.  The upper system's ``authorized_keys`` forces that
command for the key::

    restrict,command="rds-serve --lower relay1 --home /NETMRDS" ssh-ed25519 AAAA... rds-relay1

so the key can do nothing but speak this protocol as ``relay1`` for that home
(see rds-serve(1)).  What the lower asks to run only carries what it expects
(``rds-serve --lower NAME [--home PATH]``); the forced command wins, and
rds-serve refuses a session whose expectations differ from what it serves.

On the exec channel, each side writes frames: a 4-byte big-endian length and
that many bytes of JSON.  rds-serve speaks first, a hello (``{"ok": true,
"serve": 1, "upper": NAME}`` or a refusal), without being asked, so a
check-in costs one request.  Every request gets one answer frame; an answer
to ``read`` that says ok is followed by the bytes in blocks, each a 4-byte
length and the data, ended by a zero length (or by ``FAILED`` and an error
frame when the upper system cannot read further).

This module is the only one that imports paramiko (with rds.transport.wake,
which sends startup requests through ``open_client``), and only when a link is
opened, so that rds-serve and commands that do not connect do not pay for it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shlex
import socket
import struct
import sys
import threading
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from rds import wire
from rds.errors import CommunicationError, ProtocolError, RdsError, Refused, SettingsError
from rds.home import Home
from rds.log import logger
from rds.service import UpperService
from rds.settings import Settings

SERVE = "rds-serve"
HEADER = struct.Struct(">I")
END = 0
FAILED = 0xFFFFFFFF
MAX_FRAME = 256 << 20  # a JSON frame; the largest check-in answer stays far below

# paramiko tuning, measured on loopback (../shared/reference/ssh-baseline.md and bench/transfer):
# a window of some MiB, large packets, every receive taking all the channel holds (taking less
# makes paramiko's receive buffer move its rest: quadratic), and AES-GCM first, which costs both
# paramiko and sshd the least CPU.
WINDOW = 16 << 20
PACKET = 256 << 10
RECV = WINDOW
# after a cut: requests this large, one at a time, so a reset loses at most this much (issue 7)
RESUME_READ = 1 << 20
CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com")
IDLE_MIN = 120.0  # seconds without a byte before a link is taken as cut; see idle_timeout()
REKEY_BYTES: int | None = None  # tests lower paramiko's 512 MiB to force renegotiations
STATS = {"connections": 0, "requests": 0, "rekeys": 0}  # for bench/transfer and the tests


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


# --- frames ------------------------------------------------------------------------------------------


def encode(msg: Any) -> bytes:
    data = json.dumps(msg, separators=(",", ":")).encode()
    return HEADER.pack(len(data)) + data


def _decode(data: bytes) -> Any:
    try:
        return json.loads(data)
    except (UnicodeDecodeError, ValueError, RecursionError):  # RecursionError: hostile nesting, [[[[...
        return None


# --- the upper side: rds-serve -----------------------------------------------------------------------


def serve(lower: str, home_path: Path | None, original: str | None, inp: BinaryIO, out: BinaryIO) -> int:
    """Answer one lower system's requests until it hangs up; returns the exit status.

    ``lower`` and ``home_path`` come from the forced command and are trusted;
    ``original`` is what the lower system asked to run (SSH_ORIGINAL_COMMAND),
    which may only repeat them.
    """
    try:
        from rds.transport import serving

        service = serving(_serve_home(home_path), lower, remote=True)
        _check_original(original, lower, service.home.path)
    except Refused as e:
        _send(out, wire.error_answer(e))
        return 1
    except RdsError as e:
        _send(out, wire.upper_answer(str(e)))
        return 1
    requests = sent = 0
    try:
        _send(out, {"ok": True, "serve": wire.VERSION, "upper": service.home.host})
        while True:
            msg = _read_request(inp)
            if msg is None:
                break
            requests += 1
            if isinstance(msg, dict) and msg.get("op") == "read":
                sent += _serve_read(service, msg, out)
            else:
                try:
                    reply = service.handle(msg)
                except RdsError as e:  # the upper home itself is broken: say so and stop
                    _send(out, wire.upper_answer(str(e)))
                    return 1
                _send(out, reply)
    except (BrokenPipeError, ConnectionResetError):
        # the lower system went away; what it did not acknowledge, it asks again
        with contextlib.suppress(OSError):
            out.close()  # drop what is buffered, so that exiting does not try to flush it
    except ProtocolError as e:
        _send_quietly(out, wire.error_answer(e))
        return 1
    finally:
        service.close()
        logger(service.home).info(f"served {lower}: {requests} request(s), {sent} package byte(s)")
    return 0


def _serve_home(path: Path | None) -> Home:
    if path is not None and not (path / "FORMAT").is_file():
        raise SettingsError(f"{path}: no rds home here")  # and none is made: the forced command may be wrong
    return Home.open(path)


def _check_original(original: str | None, lower: str, home: Path) -> None:
    """The lower system's own command line may name who it is and which home it wants: both must match."""
    if not original:
        return
    try:
        words = shlex.split(original)
    except ValueError:
        raise Refused(f"cannot parse the requested command {original[:200]!r}") from None
    want = dict(zip(words[1::2], words[2::2], strict=False)) if words and words[0].endswith(SERVE) else {}
    if "--lower" in want and want["--lower"] != lower:
        raise Refused(f"this key belongs to {lower}; a system calling itself {want['--lower']!r} may not use it")
    if "--home" in want and Path(want["--home"]).resolve() != home.resolve():
        raise Refused(f"this key serves the home {home}, not {want['--home']}")


def _read_request(inp: BinaryIO) -> Any:
    head = inp.read(HEADER.size)
    if not head:
        return None
    if len(head) < HEADER.size:
        raise ProtocolError("the request ended early")
    (n,) = HEADER.unpack(head)
    if n > MAX_FRAME:
        raise ProtocolError(f"a request of {n} bytes is too large")
    data = inp.read(n)
    if len(data) < n:
        raise ProtocolError("the request ended early")
    msg = _decode(data)
    if msg is None:
        raise ProtocolError("a request is not JSON")
    return msg


def _serve_read(service: UpperService, msg: dict[str, Any], out: BinaryIO) -> int:
    try:
        wire.check(msg, service.lower)
        blocks = service.read(msg.get("package"), msg.get("offset"), msg.get("length"))
    except wire.ANSWERED as e:
        _send(out, wire.error_answer(e))
        return 0
    except (RdsError, OSError) as e:  # the upper's own storehouse
        why = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        _send(out, wire.upper_answer(f"reading {msg.get('package')}: {why}"))
        return 0
    out.write(encode({"ok": True}))
    sent = 0
    try:
        for block in blocks:
            out.write(HEADER.pack(len(block)))
            out.write(block)
            sent += len(block)
    except OSError as e:
        if isinstance(e, (BrokenPipeError, ConnectionResetError)):
            raise
        out.write(HEADER.pack(FAILED))
        _send(out, wire.upper_answer(f"reading {msg.get('package')}: {e.strerror}"))
        return sent
    out.write(HEADER.pack(END))
    out.flush()
    return sent


def _send(out: BinaryIO, msg: Any) -> None:
    out.write(encode(msg))
    out.flush()


def _send_quietly(out: BinaryIO, msg: Any) -> None:
    with contextlib.suppress(OSError):
        _send(out, msg)


# --- the lower side: SSHLink -------------------------------------------------------------------------


class SSHLink:
    """One SSH connection to the upper system and one rds-serve session on it."""

    def __init__(self, client: Any, chan: Any, target: Target, host: str) -> None:
        self.client = client
        self.chan = chan
        self.target = target
        self.where = f"upper system {target.where}"
        self.host = host
        self.upper: str | None = None
        self._buf = b""
        self._pos = 0
        self._greeted = False
        self._got = 0

    @classmethod
    def open(cls, settings: Settings, url: str) -> SSHLink:
        target = Target.parse(url)
        client, chan = _connect(settings, target)
        return cls(client, chan, target, settings.host_name)

    # the Link protocol

    def call(self, msg: dict[str, Any]) -> dict[str, Any]:
        self._request(msg)
        return self._answer()

    def read(self, package: str, offset: int, length: int, out: BinaryIO) -> None:
        """Write ``length`` bytes of ``package`` from ``offset`` to ``out``, in requests of READ_MAX at most.

        Everything received is written before a cut is reported, so the next
        run resumes from the last byte that arrived.
        """
        self._got = 0
        # A resumed download follows a cut, and a link that was cut may well be cut again: a reset
        # loses what was on its way (the window, up to WINDOW), so ask for little at a time.
        most = wire.READ_MAX if offset == 0 else RESUME_READ
        while length > 0:
            n = min(length, most)
            self._request(wire.request("read", self.host, package=package, offset=offset, length=n))
            answer = self._answer()
            if not answer.get("ok"):
                raise wire.exception(answer, self.where, "read")
            got = self._blocks(package, out)
            self._got += got
            offset += got
            length -= got
            if got < n:
                return  # the package is shorter than asked: the caller sees it

    def close(self) -> None:
        # Closing the whole connection, not the channel: a channel close that crosses a key
        # renegotiation is where paramiko can hang.  rds-serve sees end of input and exits.
        with contextlib.suppress(Exception):  # a link that is already broken
            self.client.close()

    # frames over the channel

    def _request(self, msg: dict[str, Any]) -> None:
        STATS["requests"] += 1
        try:
            self.chan.sendall(encode(msg))
        except (OSError, EOFError) as e:
            raise self._cut(f"sending {msg.get('op')}: {_why(e)}") from None
        except Exception as e:  # paramiko.SSHException: the transport died
            raise self._cut(f"sending {msg.get('op')}: {e}") from None

    def _answer(self) -> dict[str, Any]:
        if not self._greeted:
            hello = self._frame()
            self._greeted = True
            if not hello.get("ok"):
                raise wire.exception(hello, self.where, "the session")
            self.upper = hello.get("upper")
        reply = self._frame()
        if not reply.get("ok") and reply.get("error") == "upper":  # the upper system itself failed: a cut link
            raise wire.exception(reply, self.where, "the request")
        return reply

    def _frame(self) -> dict[str, Any]:
        head = self._exact(HEADER.size, "an answer")
        (n,) = HEADER.unpack(head)
        if n > MAX_FRAME:
            self._not_serve(head + self._buf[self._pos:self._pos + 76])
        data = self._exact(n, "an answer")
        msg = _decode(data)
        if not isinstance(msg, dict) or "ok" not in msg:
            self._not_serve(head + data)
        return msg  # type: ignore[no-any-return]

    def _not_serve(self, got: bytes) -> None:
        text = got[:80].decode("utf-8", "replace").strip()
        raise ProtocolError(f"{self.where}: the other side is not {SERVE} (it sent {text!r}); "
                            f"check the forced command in the upper system's authorized_keys")

    def _blocks(self, package: str, out: BinaryIO) -> int:
        got = 0
        while True:
            (n,) = HEADER.unpack(self._exact(HEADER.size, f"package {package}", self._got + got))
            if n == END:
                return got
            if n == FAILED:
                raise wire.exception(self._frame(), self.where, "read")
            if n > wire.READ_MAX:
                raise ProtocolError(f"{self.where}: a block of {n} bytes in package {package}")
            got += self._copy(n, out, package, self._got + got)

    def _more(self, what: str, done: int | None) -> None:
        try:
            data = self.chan.recv(RECV)
        except TimeoutError:
            raise self._cut(f"nothing received for {self.chan.gettimeout():g}s while waiting for {what}",
                            done) from None
        except (OSError, EOFError) as e:
            raise self._cut(f"while waiting for {what}: {_why(e)}", done) from None
        if not data:
            raise self._cut(f"the connection ended while waiting for {what}", done)
        self._buf, self._pos = data, 0

    def _exact(self, n: int, what: str, done: int | None = None) -> bytes:
        parts = []
        while n > 0:
            if self._pos >= len(self._buf):
                self._more(what, done)
            piece = self._buf[self._pos:self._pos + n]
            self._pos += len(piece)
            n -= len(piece)
            parts.append(piece)
        return b"".join(parts)

    def _copy(self, n: int, out: BinaryIO, package: str, done: int) -> int:
        left = n
        while left > 0:
            if self._pos >= len(self._buf):
                self._more(f"package {package}", done + n - left)
            end = min(len(self._buf), self._pos + left)
            if self._pos == 0 and end == len(self._buf):
                out.write(self._buf)
            else:
                out.write(memoryview(self._buf)[self._pos:end])
            left -= end - self._pos
            self._pos = end
        return n

    def _cut(self, why: str, done: int | None = None) -> CommunicationError:
        """The link broke: name the cause, and what rds-serve said if it ended."""
        said = self._stderr()
        if said:
            why = f"{why} (the command on the upper system said: {said})"
        elif self.chan.exit_status_ready() and self.chan.recv_exit_status() >= 0:  # -1: none came
            why = f"{why} (the command on the upper system exited with status {self.chan.recv_exit_status()})"
        if done:
            why = f"{why}; the {done} bytes received are kept and the next run resumes after them"
        return CommunicationError(f"{self.where}: {why}")

    def _stderr(self) -> str:
        try:
            deadline = time.monotonic() + 1
            while not self.chan.exit_status_ready() and self.client.get_transport().is_active() \
                    and time.monotonic() < deadline:
                time.sleep(0.01)
            data = b""
            while self.chan.recv_stderr_ready():
                data += self.chan.recv_stderr(65536)
        except Exception:  # noqa: BLE001 - only a better message is lost
            return ""
        lines = [line.strip() for line in data.decode("utf-8", "replace").splitlines() if line.strip()]
        return lines[-1][:300] if lines else ""


def _why(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror:
        return e.strerror.lower()
    return str(e) or type(e).__name__


# --- connecting --------------------------------------------------------------------------------------


def _local_path(settings: Settings, path: Path) -> Path:
    path = path.expanduser()
    return path if path.is_absolute() else settings.home / path


def _connect(settings: Settings, target: Target) -> tuple[Any, Any]:
    """Connect, check the host key, log in and start rds-serve; every failure is one line."""
    import paramiko

    client = open_client(settings, target, f"upper system {target.where}", "upper system")
    try:
        transport = client.get_transport()
        chan = transport.open_session(window_size=WINDOW, max_packet_size=PACKET, timeout=settings.connect_timeout)
        chan.exec_command(serve_command(settings.host_name, target.home))
    except (paramiko.SSHException, OSError, EOFError) as e:
        client.close()
        raise CommunicationError(f"upper system {target.where}: SSH failed: {_why(e)}") from None
    chan.settimeout(idle_timeout(settings))
    return client, chan


def open_client(settings: Settings, target: Target, where: str, side: str) -> Any:
    """Connect to ``target``, check its host key against KnownHostsFile and log in with IdentityFile.

    ``where`` starts every message; ``side`` names the other system in them
    ("upper system", "lower system").  Used for check-ins (to the upper
    system) and for startup requests (to a lower one, rds.transport.wake).
    """
    # paramiko imports invoke only for "Match exec" in ssh_config files, which rds does not read:
    # without it paramiko loads in half the time, and it says it can do without.
    sys.modules.setdefault("invoke", None)  # type: ignore[arg-type]
    import paramiko

    # paramiko logs what went wrong in its own thread; with no handler Python would print it on
    # stderr, beside the one line the command prints for the same failure
    logging.getLogger("paramiko").addHandler(logging.NullHandler())
    known = [_local_path(settings, settings.known_hosts_file)] if settings.known_hosts_file else \
        [Path("~/.ssh/known_hosts").expanduser(), Path("/etc/ssh/ssh_known_hosts")]
    pkey = _identity(settings) if settings.identity_file else None
    timeout = settings.connect_timeout

    client = paramiko.SSHClient()
    for path in known:
        try:
            client.load_system_host_keys(str(path))
        except FileNotFoundError:
            continue
        except (OSError, paramiko.SSHException) as e:
            raise SettingsError(f"known_hosts file {path}: cannot read: {_why(e)}") from None
    client.set_missing_host_key_policy(_RejectUnknown(where, known[0], target, side))
    try:
        sock = socket.create_connection((target.host, target.port), timeout=timeout)
    except socket.gaierror as e:
        raise CommunicationError(f"{where}: cannot resolve the host name ({e.strerror})") from None
    except TimeoutError:
        raise CommunicationError(f"{where}: no answer within {timeout:g}s (ConnectTimeout)") from None
    except OSError as e:
        raise CommunicationError(f"{where}: cannot connect: {_why(e)}") from None
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
        raise CommunicationError(f"{where}: SSH failed: {_why(e)}") from None
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
        return paramiko.PKey.from_path(path)
    except FileNotFoundError:
        raise SettingsError(f"IdentityFile {path}: no such file") from None
    except PermissionError:
        raise SettingsError(f"IdentityFile {path}: permission denied") from None
    except TypeError:
        raise SettingsError(f"IdentityFile {path}: the key has a passphrase; rds needs a key without one "
                            f"(its forced command on the upper system limits what it can do)") from None
    except (ValueError, paramiko.SSHException, OSError) as e:
        raise SettingsError(f"IdentityFile {path}: not a usable private key ({_why(e)})") from None


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
            self._preferred_ciphers = (*[c for c in CIPHERS if c in self._preferred_ciphers],
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


def traffic(link: SSHLink) -> tuple[int, int] | None:
    """Bytes (sent, received) on the link's TCP connection, from Linux TCP_INFO; None elsewhere."""
    try:
        sock = link.client.get_transport().sock
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
        acked, received = struct.unpack_from("=QQ", info, 120)
        return acked, received
    except (AttributeError, OSError, struct.error):
        return None
