"""Fuzzing the SSH frames (rds/transport/frames.py, serve.py, link.py): 4-byte big-endian lengths and JSON.

rds-serve reads whatever a hostile lower system writes on its channel; SSHLink reads whatever a
hostile upper system (or whatever runs instead of rds-serve) writes back.  Truncated, oversized,
garbage or deeply nested frames end in one clean RdsError (or an error answer), never another
exception.  The channel here is a fake that hands out the bytes; the real one is tested in
tests/test_ssh.py against OpenSSH's sshd.
"""

from __future__ import annotations

import io
import os
import struct
import subprocess
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from faults.hostile import BIN, clean_error, clean_stderr, documented_codes, json_values, snapshot, wire
from rds import database, jobs, manager
from rds.client import UpperClient
from rds.errors import CommunicationError, ProtocolError, RdsError
from rds.home import Home
from rds.packages import PackageId
from rds.storehouse import Storehouse
from rds.transport.connection import Target
from rds.transport.frames import END, FAILED, MAX_FRAME, encode, read_request
from rds.transport.link import SSHLink
from rds.transport.serve import serve
from rds.wire import READ_MAX, VERSION

PID = PackageId.make("AB", "APP", "0100")
HEAD = struct.Struct(">I")
DEEP = b"[" * 5000  # deeper than json.loads can recurse
hostile_bodies = st.sampled_from([DEEP, b"{" + b'"a":{' * 5000, b"\xff\xfe", b"", b"null", b"[1,2", b"NaN",
                                  b'{"ok": true}', b'{"ok": false, "error": "refused", "message": "no"}',
                                  b'{"ok": true, "serve": 1, "upper": "mgr"}', b'{"ok": false}', b"SSH-2.0-x\r\n",
                                  b"Welcome to the shell\n$ "]) | st.binary(max_size=40)


def frame(body: bytes, length: int | None = None) -> bytes:
    return HEAD.pack(len(body) if length is None else length) + body


frames = st.one_of(
    hostile_bodies.map(frame),
    json_values().map(lambda v: encode(wire(v))),
    st.tuples(hostile_bodies, st.sampled_from([0, 1, 2**31, MAX_FRAME, MAX_FRAME + 1, 2**32 - 1])).map(
        lambda t: frame(t[0], t[1])),
    st.binary(max_size=12),
)
streams = st.lists(frames, max_size=5).map(b"".join)


def test_deeply_nested_json_is_a_protocol_error() -> None:
    """Bug found by fuzzing: a frame of deeply nested JSON (``[[[[...``) made json.loads raise RecursionError,
    which went past rds-serve's error handling (and SSHLink's) as a traceback."""
    with pytest.raises(ProtocolError, match="not JSON"):
        read_request(io.BytesIO(frame(DEEP)))


@given(streams)
def test_read_request(data: bytes) -> None:
    inp = io.BytesIO(data)
    for _ in range(10):
        try:
            if read_request(inp) is None:
                break
        except ProtocolError as e:
            clean_error(e)
            break


# -- rds-serve under a hostile lower system -----------------------------------------------------------

@pytest.fixture
def upper(tmp_path: Path) -> Home:
    home = Home.open(tmp_path / "mgr")
    (home.prm / "RDSSETFL").write_text("HostName\tmgr\n")
    src = tmp_path / "src"
    src.mkdir()
    (src / "app").write_text("echo app\n")
    Storehouse(home.packages).register(PID, src, "/opt/app")
    db = database.connect(home.db_path)
    jobs.record_checkin(db, "relay", ["c"], "mgr")
    manager.create_job(db, home, PID, ["c"])
    db.close()
    return home


def good_requests() -> Any:
    return st.fixed_dictionaries({
        "op": st.sampled_from(["checkin", "ack", "report", "read", "stat"]), "v": st.just(VERSION) | json_values(),
        "host": st.sampled_from(["relay", "c", "mgr"])},
        optional={"package": st.sampled_from([str(PID), "C.AB.X.1.0"]) | json_values(),
                  "offset": st.sampled_from([0, 5, 10**6, -1, 2**64]) | json_values(),
                  "length": st.sampled_from([0, 10, 2**40, -1]) | json_values(),
                  "below": st.lists(st.sampled_from(["c", "d", "mgr"])) | json_values(),
                  "jobs": json_values(), "results": json_values()}).map(encode)


@given(stream=st.lists(good_requests() | frames, max_size=5).map(b"".join),
       original=st.sampled_from([None, "", "rds-serve --lower relay", "rds-serve --lower other", "rds-serve --home /x",
                                 "'unclosed", "rds-serve --home", "rds-serve --lower relay --home \udcff"])
       | st.text(max_size=30).filter(lambda t: "\x00" not in t))
def test_serve(tmp_path: Path, upper: Home, stream: bytes, original: str | None) -> None:
    before = snapshot(tmp_path, skip=(upper.path,))
    out = io.BytesIO()
    status = serve("relay", upper.path, original, io.BytesIO(stream), out)
    assert status in (0, 1)
    assert snapshot(tmp_path, skip=(upper.path,)) == before, "rds-serve wrote outside its home"
    answers = io.BytesIO(out.getvalue())
    hello = read_request(answers)
    assert isinstance(hello, dict) and isinstance(hello["ok"], bool)


# -- SSHLink under a hostile upper system ---------------------------------------------------------------

class FakeChan:
    """A channel that hands out ``data`` in pieces of ``piece`` bytes, then end of file."""

    def __init__(self, data: bytes, piece: int) -> None:
        self.data = data
        self.piece = piece
        self.sent = b""

    def sendall(self, data: bytes) -> None:
        self.sent += data

    def recv(self, n: int) -> bytes:
        got, self.data = self.data[:min(n, self.piece)], self.data[min(n, self.piece):]
        return got

    def gettimeout(self) -> float:
        return 1.0

    def exit_status_ready(self) -> bool:
        return True

    def recv_exit_status(self) -> int:
        return 1

    def recv_stderr_ready(self) -> bool:
        return False


class FakeClient:
    def get_transport(self) -> FakeClient:
        return self

    def is_active(self) -> bool:
        return False

    def close(self) -> None:
        pass


def link(data: bytes, piece: int) -> SSHLink:
    return SSHLink(FakeClient(), FakeChan(data, piece), Target(None, "mgr", 22, None), "relay")


HELLO = encode({"ok": True, "serve": 1, "upper": "mgr"})
blocks = st.lists(st.one_of(
    st.binary(max_size=20).map(frame),
    st.sampled_from([HEAD.pack(END), HEAD.pack(FAILED), HEAD.pack(READ_MAX + 1), HEAD.pack(5)]),
    frames), max_size=4).map(b"".join)


@given(st.just(HELLO) | frames, streams, st.sampled_from([1, 3, 4096]))
def test_link_call(hello: bytes, answers: bytes, piece: int) -> None:
    client = UpperClient(link(hello + answers, piece), "relay", "upper system mgr")
    try:
        client.checkin(["c"])
        client.report([])
    except RdsError as e:
        clean_error(e, limit=20_000)


@given(st.just(HELLO) | frames, st.just(encode({"ok": True})) | frames, blocks, st.sampled_from([1, 7, 4096]))
def test_link_read(hello: bytes, answer: bytes, data: bytes, piece: int) -> None:
    out = io.BytesIO()
    try:
        link(hello + answer + data, piece).read(str(PID), 0, 100, out)
    except RdsError as e:
        clean_error(e, limit=20_000)
    assert len(out.getvalue()) <= len(data)


def test_a_shell_banner_instead_of_rds_serve() -> None:
    """What a login shell prints instead of rds-serve's hello is named, not decoded as a huge frame."""
    with pytest.raises(ProtocolError, match="not rds-serve") as e:
        link(b"Welcome to the shell\n$ ", 4096).call({"op": "checkin"})
    clean_error(e.value)
    with pytest.raises(CommunicationError, match="ended while waiting"):
        link(HELLO[:-1], 4096).call({"op": "checkin"})


def test_a_refusal_with_line_breaks_is_one_line() -> None:
    """Bug found by fuzzing: what rds-serve (or whatever answers instead) says in an error answer was quoted
    with its line breaks."""
    hello = encode({"ok": False, "error": "refused", "message": "a\nb\rc"})
    with pytest.raises(RdsError) as e:
        link(hello, 4096).call({"op": "checkin"})
    clean_error(e.value)
    assert str(e.value).endswith("refused the session: a b c")


@pytest.mark.parametrize("stream", [
    frame(DEEP), HEAD.pack(2**32 - 1) + b"x", HEAD.pack(10) + b"{}", b"\x00\x00", b"GET / HTTP/1.0\r\n\r\n",
    encode({"op": "checkin", "v": 1, "host": "relay", "below": ["c"]}) + frame(b"[" * 3000),
    encode({"op": "read", "v": 1, "host": "relay", "package": str(PID), "offset": 2**64, "length": 1}),
    encode({"op": "ack", "v": 1, "host": "relay", "jobs": [[1e400, "c"]]}),
], ids=["deep", "oversized", "truncated", "short-header", "http", "checkin-then-deep", "read-past-end", "ack-inf"])
def test_rds_serve_process(upper: Home, stream: bytes) -> None:
    """The real rds-serve, as sshd would run it, fed what a hostile lower system writes."""
    proc = subprocess.run([str(BIN / "rds-serve"), "--lower", "relay", "--home", str(upper.path)], input=stream,
                          capture_output=True, timeout=60, env={**os.environ, "RDS_HOME": str(upper.path)})
    assert proc.returncode in documented_codes("rds-serve")
    clean_stderr(proc.stderr.decode())
    out = io.BytesIO(proc.stdout)
    assert read_request(out)["ok"] is True  # the hello
    answer = read_request(out)
    assert answer is None or isinstance(answer, dict) and "ok" in answer
