"""rds-serve: the upper system's end of the SSH transport, run by sshd as a key's forced command.

The upper system's ``authorized_keys`` forces the command for each lower
system's key::

    restrict,command="rds-serve --lower relay1 --home /NETMRDS" ssh-ed25519 AAAA... rds-relay1

so the key can do nothing but speak this protocol as ``relay1`` for that home
(see rds-serve(1)).  What the lower asks to run only carries what it expects
(``rds-serve --lower NAME [--home PATH]``, transport.connection.serve_command);
the forced command wins, and rds-serve refuses a session whose expectations
differ from what it serves.  It reads request frames (transport.frames) on
standard input, hands them to an UpperService (rds.service) and writes the
answers, and a package's bytes, on standard output.

What a session may cost is bounded: a request over rds.wire.MAX_REQUEST is
refused from its header, one with more JSON values than
rds.wire.MAX_REQUEST_VALUES before it is parsed (transport.frames), and a
session that sends no request for ServeIdleTimeout (default 5 minutes) is
told so and closed.  A session served by the resident server may be kept
between a lower system's passes (``Kept``: KeepConnection YES there,
MaxKeptSessions and KeepIdleTimeout here), each pass checked again first.
A waiting session costs one process (about 12 MiB PSS); one lower system
may hold MAX_SESSIONS at once and is refused more (100 idle
sessions from one key: 16 wait, 84 are refused at once).  sshd bounds how
many logins may be under way (MaxStartups), how many channels one connection
may open (MaxSessions) and when a dead client is dropped
(ClientAliveInterval); see docs/ssh.md.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shlex
import stat
import sys
import time
from pathlib import Path
from typing import Any, BinaryIO

from rds import hosts, wire
from rds.chunks import Pieces
from rds.errors import ProtocolError, RdsError, Refused, SettingsError
from rds.home import Home
from rds.log import idle_session, logger
from rds.service import UpperService
from rds.transport import serving
from rds.transport.frames import END, FAILED, HEADER, SERVE, Heartbeat, Idle, encode, read_request, send

# Sessions one lower system may hold at once: its pass, rdssnd, and, for a relay, the fetches its
# own lower systems cause, with room to spare.  Each waiting session is a process of about 12 MiB
# (PSS); beyond this, a session is refused at once.
MAX_SESSIONS = 16


def forced(lower: str, home_path: Path | None) -> int:
    """rds-serve as sshd runs it: the protocol on this process's standard input and output, whatever
    else prints going to stderr (rds.cli.serve and rds.forced both start it so)."""
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # whatever else prints goes to stderr, never into the protocol stream
    return serve(lower, home_path, os.environ.get("SSH_ORIGINAL_COMMAND"), sys.stdin.buffer, out)


def serve(lower: str, home_path: Path | None, original: str | None, inp: BinaryIO, out: BinaryIO) -> int:
    """Answer one lower system's requests until it hangs up; returns the exit status.

    ``lower`` and ``home_path`` come from the forced command and are trusted;
    ``original`` is what the lower system asked to run (SSH_ORIGINAL_COMMAND),
    which may only repeat them.  A session the lower system asks to keep
    between its passes (``Kept``) is checked again before each pass as a new
    session would be, and ends when anything it was opened on has changed.
    """
    service: UpperService | None = None
    try:
        service = _open(lower, home_path, original)
        idle = service.home.settings.serve_idle_timeout
        slot = _take_slot(service.home, lower)  # held until this process ends
    except Refused as e:
        send(out, wire.error_answer(e))
        if service is not None:
            logger(service.home).warning(f"{lower}: {e}")
        return 1
    except RdsError as e:
        send(out, wire.upper_answer(str(e)))
        return 1
    requests = sent = 0
    busy = False  # whether the session did something worth a line of its own (else it is counted)
    kept = Kept(lower) if KEEPABLE else None
    wide = Widened(out)
    try:
        send(out, {"ok": True, "serve": wire.VERSION, "upper": service.home.host})
        while True:
            msg = read_request(inp, idle)
            if msg is None:
                break
            requests += 1
            wide.restore()  # a read before: its bytes are out of the pipe by now, or at a later request
            try:
                alive = wire.alive(msg) if isinstance(msg, dict) else None
            except ProtocolError as e:
                send(out, wire.error_answer(e))
                busy = True
                continue
            op = msg.get("op") if isinstance(msg, dict) else None
            if op == "checkin" and kept is not None and kept.granted:  # the next pass on a kept session
                fresh, why = kept.again(service, home_path, original)
                if fresh is None:  # unanswered: the lower system logs in afresh, checked as any new session
                    logger(service.home).info(f"{lower}: kept session closed before its next pass: {why}")
                    return 0
                service, idle = fresh, kept.granted
            if op in ("read", "ranges"):
                wide.widen()
                sent += _serve_read(service, msg, out, alive)
                busy = True
            else:
                try:
                    with Heartbeat(out, alive):  # a stat may ask this home's own upper system first
                        reply = service.handle(msg)
                except RdsError as e:  # the upper home itself is broken: say so and stop
                    send(out, wire.upper_answer(str(e)))
                    return 1
                if op == "checkin" and kept is not None and reply.get("ok") and "keep" in msg:
                    granted = kept.grant(service, msg.get("keep"))
                    if granted:
                        reply = {**reply, "kept": granted}
                    idle = granted or service.home.settings.serve_idle_timeout
                send(out, reply)
                busy = busy or not _idle(msg, reply)
    except (BrokenPipeError, ConnectionResetError):
        busy = True
        # the lower system went away; what it did not acknowledge, it asks again
        with contextlib.suppress(OSError):
            out.close()  # drop what is buffered, so that exiting does not try to flush it
    except Broken as e:  # the lower system takes the end of the stream as a cut, and resumes after it
        busy = True
        logger(service.home).warning(f"{lower}: a package read failed in the middle of a block ({e}); "
                                     f"session ended")
        return 1
    except Idle as e:
        if kept is not None and kept.granted:  # between two passes: closed, and the lower logs in afresh
            logger(service.home).info(f"{lower}: kept session idle for {kept.granted:g}s (KeepIdleTimeout): closed")
            return 0
        busy = True
        _send_quietly(out, wire.error_answer(e))
        logger(service.home).info(f"{lower}: {e}")
        return 0
    except ProtocolError as e:
        busy = True
        _send_quietly(out, wire.error_answer(e))
        logger(service.home).warning(f"{lower}: {e}")
        return 1
    finally:
        service.close()
        os.close(slot)
        if kept is not None:
            kept.close()
            if kept.passes:
                logger(service.home).info(f"{lower}: {kept.passes} pass(es) on one kept session")
        if busy:
            logger(service.home).info(f"served {lower}: {requests} request(s), {sent} package byte(s)")
        else:  # ~288,000 lines a day for 1,000 hosts every 5 minutes: counted, said once an hour
            idle_session(service.home, lower, logger(service.home))
    return 0


def _idle(msg: Any, reply: dict[str, Any]) -> bool:
    """Whether a request and its answer did nothing worth a line: a check-in that handed out, asked
    and refused nothing."""
    return isinstance(msg, dict) and msg.get("op") == "checkin" and reply.get("ok") is True \
        and not any(reply.get(k) for k in ("jobs", "invalid", "unproven", "controls", "resend", "signed"))


def _open(lower: str, home_path: Path | None, original: str | None) -> UpperService:
    """The service for ``lower``, as a new session opens it: the home, its settings, the command line."""
    service = serving(_serve_home(home_path), lower, remote=True)
    try:
        _check_original(original, lower, service.home.path)
    except RdsError:
        service.close()
        raise
    return service


# Set by the resident server in the child that serves a session (rds.resident): only such a session is kept
# between a lower system's passes (a kept session in its own process would hold a whole Python).
KEEPABLE = False
# A kept session logs in afresh at least this often (seconds): a key taken out of authorized_keys by hand,
# which only sshd reads at a login, is refused within that time (rdslink -d takes effect at the next pass).
KEEP_LIFETIME = 3600.0
KEPT_SLOT = "kept.{}.lock"


class Kept:
    """A session a lower system keeps open between its passes (KeepConnection YES on the lower system).

    The lower system asks at each check-in (``keep``: the seconds it expects to
    wait before its next pass); the upper system keeps the session when that
    is within its KeepIdleTimeout and one of its MaxKeptSessions slots is free
    (``run/kept.N.lock``, held by this process), and says so (``kept``).
    Before each later pass, everything a new session is opened on is read
    again (``again``): the home and its settings, the command line, the
    resident server that forked this session (rdsma restarted, after an
    upgrade say, ends it), and the lower system's standing here (forgotten,
    revoked, its key changed).  If any of it changed, the session ends
    without answering, and the lower system logs in afresh, where sshd and a
    new session check it.
    """

    def __init__(self, lower: str) -> None:
        self.lower = lower
        self.parent = os.getppid()  # the resident server
        self.began = time.monotonic()
        self.granted = 0.0  # seconds kept idle between passes; 0: not kept
        self.slot = -1  # the open file that holds the kept-session slot
        self.index = -1  # its number
        self.standing: tuple[bool, str | None] | None = None
        self.passes = 0

    def grant(self, service: UpperService, asked: Any) -> float:
        """After a check-in that asked to keep the session: the seconds it is kept idle, or 0."""
        s = service.home.settings
        if isinstance(asked, bool) or not isinstance(asked, (int, float)) or not 0 < asked <= s.keep_idle_timeout \
                or not s.resident_server or time.monotonic() - self.began > KEEP_LIFETIME:
            self.granted = 0.0  # the lower system closes the session after this pass
            self.close()
            return 0.0
        if self.slot < 0:
            self.slot, self.index = _kept_slot(service.home, s.max_kept_sessions)
            if self.slot < 0:
                return 0.0  # all taken: this lower system logs in afresh at its next pass
        self.standing = hosts.standing(service.db, self.lower)
        self.granted = float(s.keep_idle_timeout)
        self.passes += 1
        return self.granted

    def again(self, service: UpperService, home_path: Path | None,
              original: str | None) -> tuple[UpperService | None, str]:
        """The service for the next pass, opened anew, or None and why the session ends instead."""
        if os.getppid() != self.parent:
            return None, "the resident server that started it has ended (rdsma stopped or restarted)"
        service.close()
        try:
            fresh = _open(self.lower, home_path, original)
        except RdsError as e:
            return None, str(e)
        if fresh.home.settings.max_kept_sessions <= self.index or not fresh.home.settings.resident_server:
            fresh.close()
            return None, "this host keeps fewer sessions now (MaxKeptSessions, ResidentServer)"
        if hosts.standing(fresh.db, self.lower) != self.standing:
            fresh.close()
            return None, f"{self.lower} was forgotten or revoked here, or its key changed, since its last pass"
        return fresh, ""

    def close(self) -> None:
        if self.slot >= 0:
            os.close(self.slot)
            self.slot = self.index = -1


def _kept_slot(home: Home, most: int) -> tuple[int, int]:
    """A free one of the home's ``most`` kept-session slots: (an open file holding its lock, its number),
    or (-1, -1)."""
    for i in range(most):
        fd = os.open(home.run / KEPT_SLOT.format(i), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd, i
        except BlockingIOError:
            os.close(fd)
    return -1, -1


def _take_slot(home: Home, lower: str) -> int:
    """One of the MAX_SESSIONS session slots of ``lower`` (an open file holding its lock), or Refused."""
    for i in range(MAX_SESSIONS):
        fd = os.open(home.run / f"serve.{lower}.{i}.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            os.close(fd)
    raise Refused(f"{lower} already has {MAX_SESSIONS} sessions open here; refused "
                  f"(an idle one ends after ServeIdleTimeout)")


def _serve_home(path: Path | None) -> Home:
    if path is not None and not (path / "FORMAT").is_file():
        raise SettingsError(f"{path}: no rds home here")  # and none is made: the forced command may be wrong
    return Home.open(path, create=path is None)


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


# The pipe sshd reads the protocol stream from: 64 KiB by default, which made each MiB served cost sixteen
# turns between rds-serve and sshd (issue 16: 256 MiB took 0.29 s to cross the pipe, 0.07 s with 1 MiB)
PIPE_SIZE = 1 << 20
F_SETPIPE_SZ, F_GETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031), getattr(fcntl, "F_GETPIPE_SZ", 1032)


class Widened:
    """The pipe to sshd made PIPE_SIZE while package bytes go through it, and as it was again after.

    Only while: the kernel counts pipe buffers per user, and past
    /proc/sys/fs/pipe-user-pages-soft (64 MiB) it gives every new pipe of
    that user two pages, sshd's own for the next sessions included; a
    hundred kept sessions each holding a widened pipe would pass it.  The
    pipe shrinks back at the next request, once what it held was read (the
    kernel refuses while it holds more than the smaller size: tried again)."""

    def __init__(self, out: BinaryIO) -> None:
        self.fd = -1
        self.was = 0
        try:
            fd = out.fileno()
            if stat.S_ISFIFO(os.fstat(fd).st_mode):
                self.fd = fd
        except (OSError, AttributeError, ValueError):
            pass

    def widen(self) -> None:
        if self.fd < 0 or self.was:
            return
        with contextlib.suppress(OSError):  # not allowed for this user now: as it was
            was = fcntl.fcntl(self.fd, F_GETPIPE_SZ)
            if was < PIPE_SIZE:
                fcntl.fcntl(self.fd, F_SETPIPE_SZ, PIPE_SIZE)
                self.was = was

    def restore(self) -> None:
        if not self.was:
            return
        try:
            fcntl.fcntl(self.fd, F_SETPIPE_SZ, self.was)
            self.was = 0
        except OSError:  # EBUSY: sshd has not read it all yet
            pass


def sendable(out: BinaryIO) -> bool:
    """Whether blocks can go to ``out`` with os.sendfile (a pipe or socket, as under sshd)."""
    try:
        mode = os.fstat(out.fileno()).st_mode
    except (OSError, AttributeError, ValueError):  # io.UnsupportedOperation is an OSError
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)


class Broken(Exception):
    """A block could not be sent whole after its length went: the stream cannot go on."""


def _send_pieces(out: BinaryIO, block: Pieces) -> None:
    """A block's chunk files, straight from the page cache into sshd's pipe (os.sendfile)."""
    out.flush()
    fd = out.fileno()
    for src, at, n in block.parts:
        while n > 0:
            try:
                k = os.sendfile(fd, src, at, n)
            except (BrokenPipeError, ConnectionResetError):
                raise
            except OSError as e:
                raise Broken(e.strerror or str(e)) from None
            if k == 0:
                raise Broken("a chunk file ended early")
            at += k
            n -= k


def _serve_read(service: UpperService, msg: dict[str, Any], out: BinaryIO, alive: float | None = None) -> int:
    pieces = sendable(out)
    try:
        wire.check(msg, service.lower)
        # a JIT relay may fetch the package from its own upper system first: the lower system hears
        # a keep-alive every ``alive`` seconds meanwhile, so its idle timeout does not cut the pass
        with Heartbeat(out, alive):
            if msg.get("op") == "ranges":
                blocks = service.read_ranges(msg.get("package"), msg.get("ranges"), pieces)
            else:
                blocks = service.read(msg.get("package"), msg.get("offset"), msg.get("length"), pieces)
    except wire.ANSWERED as e:
        send(out, wire.error_answer(e))
        return 0
    except (RdsError, OSError) as e:  # the upper's own storehouse
        why = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        send(out, wire.upper_answer(f"reading {msg.get('package')}: {why}"))
        return 0
    out.write(encode({"ok": True}))
    sent = 0
    try:
        for block in blocks:
            out.write(HEADER.pack(len(block)))
            if isinstance(block, Pieces):
                _send_pieces(out, block)
            else:
                out.write(block)
            sent += len(block)
    except OSError as e:
        if isinstance(e, (BrokenPipeError, ConnectionResetError)):
            raise
        out.write(HEADER.pack(FAILED))
        send(out, wire.upper_answer(f"reading {msg.get('package')}: {e.strerror}"))
        return sent
    out.write(HEADER.pack(END))
    out.flush()
    return sent


def _send_quietly(out: BinaryIO, msg: Any) -> None:
    with contextlib.suppress(OSError):
        send(out, msg)
