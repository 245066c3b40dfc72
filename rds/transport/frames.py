"""The frames of the SSH transport: how rds.wire's messages travel on the exec channel.

On the channel each side writes frames: a 4-byte big-endian length and that
many bytes of JSON.  rds-serve speaks first, a hello (``{"ok": true,
"serve": 3, "upper": NAME}`` or a refusal), without being asked, so a
check-in costs one request.  Every request gets one answer frame; an answer
to ``read`` that says ok is followed by the bytes in blocks, each a 4-byte
length and the data, ended by a zero length (``END``), or by ``FAILED`` and
an error frame when the upper system cannot read further.  Before an answer
frame, the upper system may send any number of ``KEEPALIVE`` headers (no
body): it is still working on the answer (protocol 3; the request's
``alive`` says how often, rds.wire), and the lower system's idle timeout
starts again at each.

Both ends use this module: rds-serve (transport.serve) and SSHLink
(transport.link).  It imports no paramiko.

A request is bounded before it costs anything (``read_request``): a length
over rds.wire.MAX_REQUEST is refused from the header, before its body is
read; the body is read as it arrives (a header that announces much and
sends little costs little), must be ASCII (``encode`` escapes everything
else, and one wide character would make Python's text of it four times the
frame), and may hold at most rds.wire.MAX_REQUEST_VALUES JSON values, counted
before it is parsed: ``json.loads`` of 48 MiB of ``[],[],...`` alone would
take over 1 GiB.  A side that sends nothing for ``idle`` seconds is told so
and the session ends (``Idle``).
"""

from __future__ import annotations

import json
import os
import re
import select
import struct
import threading
from typing import Any, BinaryIO

from rds import wire
from rds.errors import ProtocolError

SERVE = "rds-serve"  # the command on the upper system
HEADER = struct.Struct(">I")
END = 0
FAILED = 0xFFFFFFFF
KEEPALIVE = 0xFFFFFFFE
MAX_FRAME = 256 << 20  # an answer frame; the largest check-in answer stays far below
CHUNK = 1 << 20
# a JSON string, escapes included, in the unrolled form that does not backtrack
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')


class Idle(ProtocolError):
    """The other side sent nothing for the idle timeout."""


def encode(msg: Any) -> bytes:
    data = json.dumps(msg, separators=(",", ":")).encode()
    return HEADER.pack(len(data)) + data


def decode(data: bytes) -> Any:
    try:
        return json.loads(data)
    except (UnicodeDecodeError, ValueError, RecursionError):  # RecursionError: hostile nesting, [[[[...
        return None


def values(data: bytes | bytearray) -> int:
    """How many JSON values ``data`` holds at most: its brackets, braces, commas and colons (plus one).

    Counted first over the whole frame, which costs no copy; only when that
    count is over the limit are those inside strings told apart.
    """
    count = 1 + sum(data.count(c) for c in (b"[", b"{", b",", b":"))
    if count <= wire.MAX_REQUEST_VALUES:
        return count
    bare = _STRING.sub(b'""', data)
    return 1 + sum(bare.count(c) for c in (b"[", b"{", b",", b":"))


def read_request(inp: BinaryIO, idle: float | None = None) -> Any:
    """The next request frame's message, or None at the end of the input; bounded (see the module)."""
    head = _read(inp, HEADER.size, idle)
    if not head:
        return None
    if len(head) < HEADER.size:
        raise ProtocolError("the request ended early")
    (n,) = HEADER.unpack(head)
    if n > wire.MAX_REQUEST:
        raise ProtocolError(f"a request of {n} bytes is too large (at most {wire.MAX_REQUEST})")
    data = _read(inp, n, idle)
    if len(data) < n:
        raise ProtocolError("the request ended early")
    if not data.isascii():
        raise ProtocolError("a request must be ASCII JSON (other characters escaped as \\uXXXX)")
    if values(data) > wire.MAX_REQUEST_VALUES:
        raise ProtocolError(f"a request holds more than {wire.MAX_REQUEST_VALUES} JSON values")
    text = data.decode("ascii")
    del data  # the text and what is parsed from it, not the frame too
    msg = decode_text(text)
    if msg is None:
        raise ProtocolError("a request is not JSON")
    return msg


def decode_text(text: str) -> Any:
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return None


def _read(inp: BinaryIO, n: int, idle: float | None) -> bytearray:
    """Up to ``n`` bytes (fewer only at the end of the input), grown as they arrive; with ``idle``,
    waiting at most that long for each piece."""
    fd = _fileno(inp) if idle is not None else -1
    data = bytearray()
    while len(data) < n:
        if fd >= 0 and not select.select([fd], [], [], idle)[0]:
            raise Idle(f"nothing received for {idle:g}s; closing the session")
        piece = os.read(fd, min(CHUNK, n - len(data))) if fd >= 0 else inp.read(min(CHUNK, n - len(data)))
        if not piece:
            break
        data += piece
    return data


def _fileno(inp: BinaryIO) -> int:
    try:
        return inp.fileno()
    except (OSError, ValueError):  # not a file (a test's BytesIO): no waiting to bound
        return -1


class Heartbeat:
    """While the block runs, write a KEEPALIVE header on ``out`` every ``interval`` seconds (None: never).

    The block must not write on ``out`` itself: the answer follows once the
    heartbeat has stopped.  A write that fails ends the heartbeat quietly;
    the answer's own write then finds the broken pipe.
    """

    def __init__(self, out: BinaryIO, interval: float | None) -> None:
        self.out = out
        self.interval = interval
        self.sent = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Heartbeat:
        if self.interval is not None:
            self._thread = threading.Thread(target=self._beat, name="keep-alive", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _beat(self) -> None:
        assert self.interval is not None
        while not self._stop.wait(self.interval):
            try:
                self.out.write(HEADER.pack(KEEPALIVE))
                self.out.flush()
            except (OSError, ValueError):
                return
            self.sent += 1


def send(out: BinaryIO, msg: Any) -> None:
    out.write(encode(msg))
    out.flush()
