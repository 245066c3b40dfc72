"""A first transfer at OpenSSH's pace (issue 16): the receiving end's parts.

Checked independently of the code under test: chunk files with hashlib, the SSH channel's bytes against
the package's own payload, the chunk store's inode flags with the kernel's ioctl.
"""

from __future__ import annotations

import array
import fcntl
import hashlib
import os
import random
import threading
from pathlib import Path

import chunkfiles
import pytest
import sshd
from conftest import Tree
from sshd import make_package, ssh_hierarchy

from rds import chunks
from rds.errors import IntegrityError
from rds.storehouse import Storehouse
from rds.transport import connection
from rds.transport.link import SSHLink

pytestmark = pytest.mark.skipif(not sshd.have_sshd() and os.environ.get("CI") != "true",
                                reason="OpenSSH's sshd is not installed (bin/rds-test installs it)")

sshd_factory = sshd.sshd_factory


def packed_entries(n: int, seed: int = 1) -> list[tuple[chunks.Entry, bytes]]:
    rnd = random.Random(seed)
    out = []
    for _ in range(n):
        data = rnd.randbytes(rnd.randrange(3000, 40_000))
        packed = chunks.pack(data)
        out.append(((hashlib.sha256(data).hexdigest(), len(data), len(packed),
                     hashlib.sha256(packed).hexdigest()), packed))
    return out


def test_pipe_gives_back_what_was_fed_in_order_however_it_is_read() -> None:
    rnd = random.Random(2)
    parts = [rnd.randbytes(rnd.randrange(1, 70_000)) for _ in range(60)]
    pipe = connection.Pipe()
    event = threading.Event()
    pipe.set_event(event)
    assert not event.is_set() and not pipe.read_ready()
    for p in parts:
        pipe.feed(p)
    assert event.is_set() and pipe.read_ready() and len(pipe) == sum(map(len, parts))
    got = []
    while len(pipe):
        got.append(pipe.read(rnd.choice([1, 100, 4096, 50_000, 1 << 20]), timeout=1))
    assert b"".join(got) == b"".join(parts)
    assert not event.is_set()
    pipe.feed(b"tail")
    assert pipe.empty() == b"tail" and len(pipe) == 0


def test_pipe_times_out_when_nothing_comes_and_ends_when_closed() -> None:
    from paramiko.buffered_pipe import PipeTimeout

    pipe = connection.Pipe()
    with pytest.raises(PipeTimeout):
        pipe.read(10, timeout=0.05)
    with pytest.raises(PipeTimeout):
        pipe.read(10, timeout=0.0)
    pipe.feed(b"last")
    pipe.close()
    assert pipe.read(100) == b"last"
    assert pipe.read(100) == b""  # closed and drained: end of stream


def test_pipe_wakes_a_reader_waiting_for_the_transport_thread() -> None:
    pipe = connection.Pipe()
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(pipe.read(1 << 20, timeout=10)))
    reader.start()
    pipe.feed(b"x" * 5000)
    reader.join(10)
    assert got == [b"x" * 5000]


def test_a_reader_waiting_when_the_channel_closes_gets_the_end_of_the_stream() -> None:
    pipe = connection.Pipe()
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(pipe.read(1 << 20, timeout=10)))
    reader.start()
    while not pipe._cv._waiters:  # type: ignore[attr-defined]  # waiting, with nothing held
        threading.Event().wait(0.001)
    pipe.close()
    reader.join(10)
    assert got == [b""]


def test_a_receive_joins_whole_packets_up_to_join_most_and_never_cuts_one() -> None:
    pipe = connection.Pipe()
    small, big = b"s" * 1000, b"B" * (connection.JOIN_MOST + 5)
    for p in (small, small, big, small):
        pipe.feed(p)
    first = pipe.read(1 << 30)
    assert first == small + small  # the big one would pass JOIN_MOST: left whole for the next receive
    second = pipe.read(1 << 30)
    assert second is not None and len(second) == len(big) and second == big
    assert pipe.read(1 << 30) == small


def test_chunks_are_verified_and_stored_by_the_writers_not_the_reading_thread(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Hashing in the thread that reads the link made it wait for the GIL at every chunk (issue 16)."""
    entries = packed_entries(40)
    bad = 17
    stream = bytearray(b"".join(p for _, p in entries))
    at = sum(len(p) for _, p in entries[:bad]) + 50
    stream[at] ^= 1
    checked_in: set[str] = set()
    real = chunks.check

    def check(packed: bytes, entry: chunks.Entry) -> None:
        checked_in.add(threading.current_thread().name)
        real(packed, entry)

    monkeypatch.setattr(chunks, "check", check)
    store = chunks.ChunkStore(tmp_path / "c")
    r = chunks.Receiver(store, [e for e, _ in entries], "up")
    for k in range(0, len(stream), 100_000):  # many chunks a write, and chunks split between writes
        r.write(bytes(stream[k:k + 100_000]))
    r.close()
    with pytest.raises(IntegrityError, match="damaged chunk"):
        r.check()
    assert threading.current_thread().name not in checked_in and checked_in
    held = chunkfiles.stored(tmp_path / "c")
    for i, (e, packed) in enumerate(entries):
        if i == bad:
            assert e[0] not in held  # never stored
        else:
            assert hashlib.sha256(held[e[0]]).hexdigest() == hashlib.sha256(packed).hexdigest()


def inode_flags(path: Path) -> int | None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        flags = array.array("l", [0])
        fcntl.ioctl(fd, 0x80086601, flags, True)  # FS_IOC_GETFLAGS
        return flags[0]
    except OSError:
        return None
    finally:
        os.close(fd)


def test_the_chunk_store_spreads_its_directories_over_the_file_system(tmp_path: Path) -> None:
    """ext4 puts a directory's files in its block group, where, without a journal, each new file is
    found only after every inode deleted there in the last minutes: the chunk store is a TOPDIR."""
    probe = tmp_path / "probe"
    probe.mkdir()
    if inode_flags(probe) is None:
        pytest.skip("this file system keeps no inode flags (FS_IOC_GETFLAGS)")
    store = chunks.ChunkStore(tmp_path / "c")
    [(e, packed)] = packed_entries(1)
    r = chunks.Receiver(store, [e], "up")
    r.write(packed)
    r.close()
    r.check()
    flags = inode_flags(tmp_path / "c")
    assert flags is not None and flags & 0x00020000  # FS_TOPDIR_FL
    assert hashlib.sha256(chunkfiles.read(tmp_path / "c", e[0])).hexdigest() == e[3]
    store.make()  # already there: left as it is
    assert inode_flags(tmp_path / "c") == flags


def test_a_chunked_package_over_ssh_comes_through_the_copyless_channel_buffer(tree: Tree, sshd_factory,  # type: ignore[no-untyped-def]
                                                                               tmp_path: Path) -> None:
    ssh_hierarchy(tree, sshd_factory, ["mgr", "relay"], wake=False)
    mgr, relay = tree["mgr"], tree["relay"]
    tree.check_in_upward(["relay"])
    m = make_package(mgr.path, 3 << 20, "PIPE", chunked=True)
    mgr.run("dcmjexe", "-t", "transfer", "-r", str(m.id), "-h", "relay")
    home = relay.home()
    assert home.settings.managing_host is not None
    link = SSHLink.open(home.settings, home.settings.managing_host)
    try:
        assert isinstance(link.chan.in_buffer, connection.Pipe)
        link.hello()
        out = tmp_path / "got"
        with open(out, "wb") as f:
            link.read_ranges(str(m.id), [(0, m.size)], f)
    finally:
        link.close()
    upstream = hashlib.sha256()
    for name, *_ in m.chunks:
        upstream.update((mgr.path / "RDS" / ".chunks" / name[:2] / name).read_bytes())
    assert hashlib.sha256(out.read_bytes()).hexdigest() == upstream.hexdigest() == m.sha256
    relay.run("rdsft", "-a")
    assert Storehouse(home.packages).get(m.id) is not None


def test_a_buffer_the_caller_reuses_is_copied_and_bytes_it_cannot_change_are_not(tmp_path: Path) -> None:
    entries = packed_entries(30, seed=3)
    stream = b"".join(p for _, p in entries)
    for kind in ("reused", "bytes"):
        store = chunks.ChunkStore(tmp_path / kind)
        r = chunks.Receiver(store, [e for e, _ in entries], "up")
        buf = bytearray(65_536)
        for k in range(0, len(stream), len(buf)):
            piece = stream[k:k + len(buf)]
            if kind == "reused":  # as a readinto loop does: the same buffer, overwritten at once
                buf[:len(piece)] = piece
                r.write(memoryview(buf)[:len(piece)])
                buf[:] = bytes(len(buf))
            else:
                r.write(memoryview(piece))
        r.close()
        r.check()
        for e, packed in entries:
            assert chunkfiles.read(tmp_path / kind, e[0]) == packed
