"""The lower system's end of the SSH transport: one connection and one rds-serve session on it.

``SSHLink`` is the Link (rds.client) that ``ManagingHost ssh://...`` gives:
it sends request frames (transport.frames) on the channel that
transport.connection opened, reads the answers, and copies a package's
blocks straight to the download file.  A link that breaks is one
CommunicationError that names the cause and what rds-serve said, if it said
anything; a hello that is not rds-serve's names what answered instead.
"""

from __future__ import annotations

import collections
import contextlib
import math
import socket
import struct
import time
from typing import Any, BinaryIO, cast

from rds import wire
from rds.errors import CommunicationError, ProtocolError
from rds.settings import Settings, valid_hostname
from rds.transport.connection import IDLE_MIN, RECV, STATS, Target, open_serve, reason
from rds.transport.frames import END, FAILED, HEADER, KEEPALIVE, MAX_FRAME, SERVE, decode, encode

PIPELINE = 4  # ranges requests in flight (read_ranges): 4 x READ_MAX covers any link's bandwidth-delay product
# after a cut: requests this large (issue 7), as many in flight as fill the link, at most FILL bytes
# of them (issue 16)
RESUME_READ = 1 << 20
FILL = 16 << 20


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
        self._dead = False  # cut: no answer will come any more
        self._turn = True  # sent something since the last frame read (the login, to begin with): STATS turns
        # keep-alive frames while the upper system prepares an answer: four within the idle timeout
        self.alive = min(wire.ALIVE_MAX, max(wire.ALIVE_MIN, (chan.gettimeout() or IDLE_MIN) / 4))

    @classmethod
    def open(cls, settings: Settings, url: str) -> SSHLink:
        target = Target.parse(url)
        client, chan = open_serve(settings, target)
        return cls(client, chan, target, settings.host_name)

    # the Link protocol

    def call(self, msg: dict[str, Any]) -> dict[str, Any]:
        self._request(msg)
        return self._answer()

    def send(self, msg: dict[str, Any]) -> None:
        """Send a request at once, even before rds-serve's hello came (a pipelined check-in): its
        answer, read by ``receive``, is read after the hello, and believed only once the hello is checked."""
        self._request(msg)

    def receive(self) -> dict[str, Any]:
        return self._answer()

    def read(self, package: str, offset: int, length: int, out: BinaryIO) -> None:
        """Write ``length`` bytes of ``package`` from ``offset`` to ``out``, keeping the link full.

        Requests are sent ahead of the answers, so the link does not wait a
        round trip between two of them: READ_MAX at a time from the start of
        a package, RESUME_READ after a cut.  Everything received is written
        before a cut is reported, so the next run resumes from the last byte
        that arrived.
        """
        self._got = 0
        # A resumed download follows a cut, and a link that was cut may well be cut again: a reset loses
        # what was on its way, so after a cut only as much is asked ahead as fills the link, its
        # bandwidth-delay product (``_Pace``): two requests on a fast or near link, more on a long one.
        size = wire.READ_MAX if offset == 0 else RESUME_READ
        pace = _Pace(size)
        pending: collections.deque[tuple[int, float]] = collections.deque()  # (length, when asked), due
        if length <= 0:
            return
        n = min(length, size)
        self._request(wire.request("read", self.host, package=package, offset=offset, length=n))
        pending.append((n, time.monotonic()))
        asked, end = offset + n, offset + length
        try:
            while pending:
                while asked < end and len(pending) < pace.ahead:
                    n = min(end - asked, size)
                    try:
                        self._request(wire.request("read", self.host, package=package, offset=asked, length=n))
                    except CommunicationError:
                        if not pending:
                            raise
                        end = asked  # cut: what already came for the requests before is still read and kept
                        break
                    pending.append((n, time.monotonic()))
                    asked += n
                STATS["in_flight"] = max(STATS["in_flight"], len(pending))
                n, sent = pending.popleft()
                answer = self._answer()
                pace.answered(sent)
                if not answer.get("ok"):
                    raise wire.exception(answer, self.where, "read")
                got = self._blocks(package, out)
                pace.received(got)
                self._got += got
                if got < n:
                    return  # the package is shorter than asked: the caller sees it
        finally:
            self._drain(package, [n for n, _ in pending])

    def _drain(self, package: str, pending: list[int]) -> None:
        """Read the answers still due to requests sent ahead, so the next request gets its own answer."""
        if self._dead:
            return
        try:
            for _ in pending:
                if self._answer().get("ok"):
                    self._blocks(package, _Discard())
        except Exception:  # noqa: BLE001 - the session is out of step: no later answer can be believed
            self._dead = True
            self.close()

    def read_ranges(self, package: str, ranges: list[tuple[int, int]], out: BinaryIO) -> None:
        """Write byte ranges of ``package`` to ``out``, back to back: a chunked package's lacking chunks.

        As few ``ranges`` requests as the bounds allow (wire.MAX_RANGES ranges,
        READ_MAX bytes each), PIPELINE of them in flight: each answer read makes
        room for the next request, so the link never waits a round trip between
        two (a sliding window, not batches), and a download of many small ranges
        costs no round trip a range; a request is at most ~100 KiB, so the
        requests in flight never block the channel.  The answers come in order;
        after an error answer no more is asked, and the answers still due are
        read (and dropped) before it is raised, leaving the link usable.
        """
        requests: list[list[list[int]]] = [[]]
        total = 0
        for o, n in ranges:
            for k in range(0, n, wire.READ_MAX):
                piece = min(wire.READ_MAX, n - k)
                if requests[-1] and (len(requests[-1]) >= wire.MAX_RANGES or total + piece > wire.READ_MAX):
                    requests.append([])
                    total = 0
                requests[-1].append([o + k, piece])
                total += piece
        self._got = 0
        todo = collections.deque(r for r in requests if r)
        pending: collections.deque[list[list[int]]] = collections.deque()
        failed: Exception | None = None
        while todo or pending:
            while todo and failed is None and len(pending) < PIPELINE:  # a window that slides: one out, one in
                r = todo.popleft()
                self._request(wire.request("ranges", self.host, package=package, ranges=r))
                pending.append(r)
            STATS["in_flight"] = max(STATS["in_flight"], len(pending))
            r = pending.popleft()
            answer = self._answer()
            if not answer.get("ok"):
                failed = failed or wire.exception(answer, self.where, "ranges")
                continue
            got = self._blocks(package, cast(BinaryIO, _Dropped()) if failed else out)
            self._got += got
            if got < sum(n for _, n in r) and failed is None:
                failed = ProtocolError(f"{self.where}: package {package} is shorter than the ranges asked")
        if failed is not None:
            raise failed

    def usable(self) -> bool:
        """Whether the session can carry another pass: not cut, and rds-serve has not ended it (a kept session
        the upper system closed while idle, or whose process ended, is seen here before anything is sent)."""
        try:
            transport = self.client.get_transport()
            return not self._dead and transport is not None and transport.is_active() and not self.chan.closed \
                and not self.chan.eof_received and not self.chan.exit_status_ready()
        except Exception:  # noqa: BLE001 - a link that is already broken
            return False

    def close(self) -> None:
        # Closing the whole connection, not the channel: a channel close that crosses a key
        # renegotiation is where paramiko can hang.  rds-serve sees end of input and exits.
        with contextlib.suppress(Exception):  # a link that is already broken
            self.client.close()

    # frames over the channel

    def _request(self, msg: dict[str, Any]) -> None:
        STATS["requests"] += 1
        self._turn = True
        msg = {**msg, "alive": self.alive}
        try:
            self.chan.sendall(encode(msg))
        except (OSError, EOFError) as e:
            raise self._cut(f"sending {msg.get('op')}: {reason(e)}") from None
        except Exception as e:  # paramiko.SSHException: the transport died
            raise self._cut(f"sending {msg.get('op')}: {e}") from None

    def hello(self) -> str:
        """The upper system's name, from rds-serve's hello (read once), whose protocol must be this one's."""
        if not self._greeted:
            hello = self._frame()
            self._greeted = True
            if not hello.get("ok"):
                raise wire.exception(hello, self.where, "the session")
            upper = hello.get("upper")
            if hello.get("serve") != wire.VERSION:
                raise ProtocolError(wire.mismatch(hello.get("serve"), "the upper system", self.target.where,
                                                  "this lower system"))
            if not isinstance(upper, str) or not valid_hostname(upper):
                raise ProtocolError(f"{self.where}: rds-serve gave no valid host name in its hello")
            self.upper = upper
        assert self.upper is not None
        return self.upper

    def _answer(self) -> dict[str, Any]:
        self.hello()
        reply = self._frame()
        if not reply.get("ok") and reply.get("error") == "upper":  # the upper system itself failed: a cut link
            raise wire.exception(reply, self.where, "the request")
        return reply

    def _frame(self) -> dict[str, Any]:
        if self._turn:
            STATS["turns"] += 1
            self._turn = False
        head = self._exact(HEADER.size, "an answer")
        (n,) = HEADER.unpack(head)
        while n == KEEPALIVE:  # the upper system is still at work (fetching for us, say)
            STATS["keepalives"] += 1
            head = self._exact(HEADER.size, "an answer")
            (n,) = HEADER.unpack(head)
        if n > MAX_FRAME:
            self._not_serve(head + self._buf[self._pos:self._pos + 76])
        data = self._exact(n, "an answer")
        msg = decode(data)
        if not isinstance(msg, dict) or "ok" not in msg:
            self._not_serve(head + data)
        return msg  # type: ignore[no-any-return]

    def _not_serve(self, got: bytes) -> None:
        text = got[:80].decode("utf-8", "replace").strip()
        raise ProtocolError(f"{self.where}: the other side is not {SERVE} (it sent {text!r}); "
                            f"check the forced command in the upper system's authorized_keys")

    def _blocks(self, package: str, out: Any) -> int:
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
            raise self._cut(f"while waiting for {what}: {reason(e)}", done) from None
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

    def _copy(self, n: int, out: Any, package: str, done: int) -> int:
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
        self._dead = True
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


class _Pace:
    """How many read requests of ``size`` to keep in flight: enough to cover the link's bandwidth-delay
    product, measured as the download goes (the shortest wait for an answer's head, the rate of bytes
    since the first), at least 2 and at most FILL bytes' worth."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.most = max(2, FILL // size)
        self.ahead = 2
        self.rtt: float | None = None
        self.start: float | None = None
        self.bytes = 0

    def answered(self, sent: float) -> None:
        """The head of the answer to a request sent at ``sent`` came: a round trip, or more when it queued
        behind the bytes of answers before it (the shortest is the best guess)."""
        now = time.monotonic()
        if self.start is None:
            self.start = now
        self.rtt = now - sent if self.rtt is None else min(self.rtt, now - sent)

    def received(self, n: int) -> None:
        self.bytes += n
        if self.start is None or self.rtt is None:
            return
        elapsed = time.monotonic() - self.start
        if elapsed > 0:
            product = self.bytes / elapsed * self.rtt  # bytes the link holds in one round trip
            self.ahead = min(self.most, max(2, 1 + math.ceil(product / self.size)))


class _Discard:
    """Where the bytes of an answer nobody waits for go."""

    def write(self, data: bytes) -> int:
        return len(data)


def traffic(link: SSHLink) -> tuple[int, int] | None:
    """Bytes (sent, received) on the link's TCP connection, from Linux TCP_INFO; None elsewhere."""
    try:
        sock = link.client.get_transport().sock
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
        acked, received = struct.unpack_from("=QQ", info, 120)
        return acked, received
    except (AttributeError, OSError, struct.error):
        return None


class _Dropped:
    """Where the blocks of a batch after a failed request go."""

    def write(self, data: bytes) -> int:
        return len(data)
