"""Attacks of a hostile lower or local system (issue 13), shared by the tests and bench/hostile.

``serve_attack`` runs in a small child process of its own (``python
tests/attacks.py serve KIND HOME``): a process's peak RSS as the kernel
reports it (wait4's ru_maxrss) includes the size of the process it was forked
from, so rds-serve must be started by a process that is small when it forks.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

BIN = Path(sys.executable).parent
MiB = 1 << 20


def body(kind: str) -> bytes:
    """The request frame's body of each attack on rds-serve."""
    from rds import wire

    if kind == "values":  # [[],[],...] as large as the cap allows
        n = (wire.MAX_REQUEST - 2) // 3
        return b"[" + b"[]," * (n - 1) + b"[]]"
    if kind == "largest":  # the largest legitimate request: 100,000 hosts below, a 300-byte statement each
        below = [f"host{i:06d}.example.com" for i in range(100_000)]
        statements = [{"host": h, "key": "k" * 40, "signature": "s" * 300} for h in below]
        return json.dumps({"op": "checkin", "v": wire.VERSION, "host": "relay1", "below": below,
                           "statements": statements}, separators=(",", ":")).encode()
    if kind == "heaviest":  # at both limits: as many values as allowed, the costliest kind, the rest one string
        n = wire.MAX_REQUEST_VALUES - 12
        head = b'{"op":"checkin","v":1,"host":"relay1","x":[' + b'"ab",' * n + b'"ab"],"pad":"'
        return head + b"x" * (wire.MAX_REQUEST - len(head) - 2) + b'"}'
    if kind == "strings":  # separators inside a string are not values
        text = "[a], {b}: c," * (wire.MAX_REQUEST_VALUES // 3)
        return json.dumps({"op": "report", "v": wire.VERSION, "host": "relay1", "results": [], "x": text}).encode()
    if kind == "wide":
        return '{"op":"checkin","x":"\U0001F600"}'.encode()
    raise ValueError(kind)


def _frame(out: Any) -> dict[str, Any]:
    (n,) = struct.unpack(">I", out.read(4))
    return json.loads(out.read(n))  # type: ignore[no-any-return]


def _serve_child(kind: str, home: str) -> dict[str, Any]:
    proc = subprocess.Popen([str(BIN / "rds-serve"), "--lower", "relay1", "--home", home],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            env={**os.environ, "SSH_ORIGINAL_COMMAND": ""})
    assert proc.stdin is not None and proc.stdout is not None
    hello = _frame(proc.stdout)
    began = time.monotonic()
    if kind == "header":  # 255 MiB announced, nothing of it sent
        frame = struct.pack(">I", 255 * MiB)
    elif kind == "promise":  # the cap announced, one byte sent, then silence
        frame = struct.pack(">I", 48 * MiB) + b"{"
    elif kind == "idle":  # half a header, then silence
        frame = b"\x00\x00"
    else:
        data = body(kind)
        frame = struct.pack(">I", len(data)) + data
    try:
        proc.stdin.write(frame)
        proc.stdin.flush()
    except BrokenPipeError:
        pass
    answer = _frame(proc.stdout)
    seconds = time.monotonic() - began
    for f in (proc.stdin, proc.stdout):
        f.close()
    _, status, usage = os.wait4(proc.pid, 0)
    return {"hello": hello, "answer": answer, "code": os.waitstatus_to_exitcode(status),
            "rss": usage.ru_maxrss * 1024, "seconds": seconds, "size": len(frame)}


def serve_attack(kind: str, home: Path) -> dict[str, Any]:
    """Run one attack on rds-serve serving ``home`` from a small child; what happened."""
    proc = subprocess.run([sys.executable, __file__, "serve", kind, str(home)], capture_output=True, text=True,
                          check=True, env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)})
    return json.loads(proc.stdout)  # type: ignore[no-any-return]


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        print(json.dumps(_serve_child(sys.argv[2], sys.argv[3])))


def zip_bomb(path: Path, unpacked: int, chunk: int = 16 * MiB) -> int:
    """A package archive holding one file of ``unpacked`` zero bytes, made without compressing them all:
    gzip members (one a chunk of zeros, repeated) may follow each other.  Returns its tar stream's size."""
    import gzip
    import tarfile

    info = tarfile.TarInfo("big")
    info.size, info.mode = unpacked, 0o644
    header = info.tobuf(tarfile.PAX_FORMAT)
    zeros = gzip.compress(bytes(chunk), compresslevel=9)
    whole, rest = divmod(unpacked, chunk)
    tail = rest + (-unpacked % 512) + 1024  # the rest of the file, its padding, the end-of-archive blocks
    with open(path, "wb") as f:
        f.write(gzip.compress(header))
        for _ in range(whole):
            f.write(zeros)
        f.write(gzip.compress(bytes(tail)))
    return len(header) + whole * chunk + tail
