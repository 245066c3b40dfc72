"""rds-serve hands a chunked package's bytes to sshd without reading them (issue 16): os.sendfile from the
chunk files into a widened pipe; a chunk store that writes its large chunks as they come.

Checked independently of the code under test: the archive is the chunk files read with open() and
joined in the manifest's order; the pipe's size is asked of the kernel (F_GETPIPE_SZ).
"""

from __future__ import annotations

import fcntl
import io
import os
import random
import threading
from pathlib import Path

import pytest
from sshd import make_package

from rds import chunks
from rds.errors import IntegrityError
from rds.packages import Manifest
from rds.storehouse import Storehouse
from rds.transport import serve

F_GETPIPE_SZ = 1032


def package(tmp_path: Path, size: int = 3 << 20) -> tuple[Storehouse, Manifest, bytes]:
    home = tmp_path / "h"
    m = make_package(home, size, chunked=True)
    archive = b"".join((home / "RDS" / chunks.DIR / e[0][:2] / e[0]).read_bytes() for e in m.chunks)
    assert len(archive) == m.size
    return Storehouse(home / "RDS"), m, archive


def through_pipe(blocks: list[chunks.Pieces]) -> bytes:
    """What _send_pieces puts into a pipe, read back by another thread."""
    r, w = os.pipe()
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(b"".join(iter(lambda: os.read(r, 1 << 16), b""))))
    reader.start()
    with os.fdopen(w, "wb") as out:
        for block in blocks:
            serve._send_pieces(out, block)
    reader.join(10)
    os.close(r)
    return got[0]


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_blocks_served_as_files_are_the_archive_s_own_bytes(tmp_path: Path) -> None:
    store, m, archive = package(tmp_path)
    rnd = random.Random(4)
    spans = [(0, m.size)] + [(o, rnd.randrange(1, m.size - o + 50)) for o in sorted(rnd.sample(range(m.size), 6))]
    for offset, length in spans:
        before = open_fds()
        sent: list[bytes] = []
        for block in store.spans(m, [(offset, length)], pieces=True):
            assert isinstance(block, chunks.Pieces) and 0 < len(block) <= 1 << 20
            sent.append(through_pipe([block]))
            assert block.read() == sent[-1]
        assert b"".join(sent) == archive[offset:offset + length]
        assert open_fds() == before  # every chunk file a block opened is closed
    whole = [bytes(b) for b in store.spans(m, [(0, m.size)])]  # the other way, for a writer that takes bytes
    assert all(isinstance(b, bytes) for b in whole) and b"".join(whole) == archive


@pytest.mark.parametrize("harm", ["removed", "truncated", "grown"])
def test_a_chunk_not_as_listed_fails_before_any_of_its_block_is_sent(tmp_path: Path, harm: str) -> None:
    store, m, archive = package(tmp_path)
    victim = m.chunks[len(m.chunks) // 2]
    path = store.chunks.path(victim[0])
    if harm == "removed":
        path.unlink()
    else:
        data = path.read_bytes()
        path.write_bytes(data[:-1] if harm == "truncated" else data + b"x")
    before = open_fds()
    sent = 0
    blocks = store.spans(m, [(0, m.size)], pieces=True)
    with pytest.raises(IntegrityError, match=victim[0][:16]):
        for block in blocks:
            sent += len(block)
    starts = [0]
    for e in m.chunks:
        starts.append(starts[-1] + e[2])
    assert sent <= starts[len(m.chunks) // 2]  # nothing of the block holding the bad chunk went
    blocks.close()
    assert open_fds() == before


def test_a_file_shorter_than_its_piece_breaks_the_stream(tmp_path: Path) -> None:
    f = tmp_path / "short"
    f.write_bytes(b"abc")
    fd = os.open(f, os.O_RDONLY)
    r, w = os.pipe()
    try:
        with os.fdopen(w, "wb") as out, pytest.raises(serve.Broken, match="ended early"):
            serve._send_pieces(out, chunks.Pieces([(fd, 0, 10)], []))
    finally:
        os.close(fd)
        os.close(r)


def test_the_pipe_to_sshd_is_widened_while_package_bytes_go_and_as_it_was_after(tmp_path: Path) -> None:
    r, w = os.pipe()
    try:
        with os.fdopen(w, "wb", closefd=False) as out:
            assert fcntl.fcntl(w, F_GETPIPE_SZ) == 64 << 10
            wide = serve.Widened(out)
            wide.widen()
            most = int(Path("/proc/sys/fs/pipe-max-size").read_text())
            widened = serve.PIPE_SIZE if os.getuid() == 0 or most >= serve.PIPE_SIZE else 64 << 10
            assert fcntl.fcntl(w, F_GETPIPE_SZ) == widened
            assert serve.sendable(out)
            os.write(w, b"x" * (200 << 10))  # more than the old size, not read yet: it cannot shrink now
            wide.restore()
            assert fcntl.fcntl(w, F_GETPIPE_SZ) == widened
            while len(os.read(r, 1 << 20)) == 1 << 20:
                pass
            wide.restore()  # read: as it was
            assert fcntl.fcntl(w, F_GETPIPE_SZ) == 64 << 10
    finally:
        os.close(r)
        os.close(w)
    with open(tmp_path / "file", "wb") as f:
        wide = serve.Widened(f)  # not a pipe: left as it is, no error
        wide.widen()
        wide.restore()
        assert not serve.sendable(f)
    assert not serve.sendable(io.BytesIO())  # tests and in-process serving: blocks as bytes


def test_large_chunks_start_their_writing_as_they_are_stored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = chunks.ChunkStore(tmp_path / "store")
    store.make()
    fd = os.open(tmp_path / "store", os.O_RDONLY)
    chunks._start_writeback(fd)  # looks sync_file_range up
    os.close(fd)
    assert chunks._LIBC["sync_file_range"] is not None  # Linux has it
    started: list[int] = []
    monkeypatch.setitem(chunks._LIBC, "sync_file_range", lambda fd, *_: started.append(os.fstat(fd).st_size))
    small, big = os.urandom(chunks.WRITEBACK_FROM - 1), os.urandom(chunks.WRITEBACK_FROM)
    store.put("a" * 64, small)
    store.put("b" * 64, big)
    assert started == [len(big)]  # the small one is left to the flush before the package is committed
    assert store.read("a" * 64) == small and store.read("b" * 64) == big
