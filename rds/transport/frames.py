"""The frames of the SSH transport: how rds.wire's messages travel on the exec channel.

On the channel each side writes frames: a 4-byte big-endian length and that
many bytes of JSON.  rds-serve speaks first, a hello (``{"ok": true,
"serve": 2, "upper": NAME}`` or a refusal), without being asked, so a
check-in costs one request.  Every request gets one answer frame; an answer
to ``read`` that says ok is followed by the bytes in blocks, each a 4-byte
length and the data, ended by a zero length (``END``), or by ``FAILED`` and
an error frame when the upper system cannot read further.

Both ends use this module: rds-serve (transport.serve) and SSHLink
(transport.link).  It imports no paramiko.
"""

from __future__ import annotations

import json
import struct
from typing import Any, BinaryIO

from rds.errors import ProtocolError

SERVE = "rds-serve"  # the command on the upper system
HEADER = struct.Struct(">I")
END = 0
FAILED = 0xFFFFFFFF
MAX_FRAME = 256 << 20  # a JSON frame; the largest check-in answer stays far below


def encode(msg: Any) -> bytes:
    data = json.dumps(msg, separators=(",", ":")).encode()
    return HEADER.pack(len(data)) + data


def decode(data: bytes) -> Any:
    try:
        return json.loads(data)
    except (UnicodeDecodeError, ValueError, RecursionError):  # RecursionError: hostile nesting, [[[[...
        return None


def read_request(inp: BinaryIO) -> Any:
    """The next request frame's message, or None at the end of the input."""
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
    msg = decode(data)
    if msg is None:
        raise ProtocolError("a request is not JSON")
    return msg


def send(out: BinaryIO, msg: Any) -> None:
    out.write(encode(msg))
    out.flush()
