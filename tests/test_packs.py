"""The chunks a download brings are appended to one pack with an index (issue 17, point 6: a first transfer
of thousands of small chunks no longer creates a file a chunk).

Checked independently of rds.chunks: the packs and their index are read with open() and sqlite3
(tests/chunkfiles.py), the archive is the manager's loose chunk files joined in the manifest's order, and
what a pack takes on disk is asked of the file system (st_blocks).
"""

from __future__ import annotations

import fcntl
import os
import random
import sqlite3
import threading
from pathlib import Path

import chunkfiles
import pytest
from sshd import make_package

from rds import chunks
from rds.errors import IntegrityError
from rds.packages import Manifest
from rds.storehouse import Storehouse
from rds.transport import serve


def upper(tmp_path: Path, size: int = 3 << 20) -> tuple[Storehouse, Manifest, bytes]:
    home = tmp_path / "up"
    m = make_package(home, size, chunked=True)
    archive = b"".join((home / "RDS" / chunks.DIR / e[0][:2] / e[0]).read_bytes() for e in m.chunks)
    assert len(archive) == m.size and len(m.chunks) > 10
    return Storehouse(home / "RDS"), m, archive


def fetch(up: Storehouse, down: Storehouse, m: Manifest) -> list[tuple[int, int]]:
    """``down`` downloads ``m`` from ``up`` as over a link (ranges of the archive); returns what was asked."""
    asked: list[tuple[int, int]] = []

    def read(ranges: list[tuple[int, int]], out: object) -> None:
        asked.extend(ranges)
        for block in up.spans(m, ranges):
            out.write(block)  # type: ignore[attr-defined]

    down.receive_chunks(m, read, "up")
    return asked


def rows(store: Storehouse) -> list[tuple[str, str, int, int]]:
    db = sqlite3.connect(store.chunks.root / chunks.PACKS / chunks.INDEX)
    try:
        return db.execute("SELECT name, pack, offset, size FROM chunk ORDER BY offset").fetchall()
    finally:
        db.close()


def test_a_download_s_chunks_go_into_one_pack_found_by_name(tmp_path: Path) -> None:
    up, m, archive = upper(tmp_path)
    down = Storehouse(tmp_path / "down" / "RDS")
    fetch(up, down, m)
    assert not list(down.chunks.root.glob("??/*"))  # no file a chunk
    packs = list((down.chunks.root / chunks.PACKS).glob("*.pack"))
    assert len(packs) == 1
    got = rows(down)
    assert {r[0] for r in got} == {e[0] for e in m.chunks} and {r[1] for r in got} == {packs[0].name}
    data = packs[0].read_bytes()
    assert all(data[o:o + n] for _, _, o, n in got)
    held = chunkfiles.stored(down.chunks.root)
    assert b"".join(held[e[0]] for e in m.chunks) == archive
    assert down.chunks.lacking(m.chunks) == []  # a second download of it would ask nothing
    whole = b"".join(bytes(b) for b in down.spans(m, [(0, m.size)]))  # read back through the store
    assert whole == archive
    down.verify(m, full=True)


def test_a_relay_serves_packed_chunks_with_sendfile(tmp_path: Path) -> None:
    up, m, archive = upper(tmp_path)
    down = Storehouse(tmp_path / "down" / "RDS")
    fetch(up, down, m)
    rnd = random.Random(8)
    for offset in [0, *sorted(rnd.sample(range(m.size), 5))]:
        length = rnd.randrange(1, m.size - offset + 1)
        r, w = os.pipe()
        got: list[bytes] = []
        def drain(r: int = r, got: list[bytes] = got) -> None:
            got.append(b"".join(iter(lambda: os.read(r, 1 << 16), b"")))

        reader = threading.Thread(target=drain)
        reader.start()
        blocks = 0
        with os.fdopen(w, "wb") as out:
            for block in down.spans(m, [(offset, length)], pieces=True):
                assert isinstance(block, chunks.Pieces)
                assert len(block.parts) == 1  # the chunks side by side in the pack, in order: one piece
                serve._send_pieces(out, block)
                blocks += 1
        reader.join(10)
        os.close(r)
        assert got[0] == archive[offset:offset + length] and blocks >= 1


def test_a_pack_shorter_than_its_index_fails_before_a_byte_is_sent(tmp_path: Path) -> None:
    up, m, _ = upper(tmp_path)
    down = Storehouse(tmp_path / "down" / "RDS")
    fetch(up, down, m)
    [pack] = (down.chunks.root / chunks.PACKS).glob("*.pack")
    last = max(rows(down), key=lambda r: r[2])
    os.truncate(pack, last[2] + last[3] - 1)
    with pytest.raises(IntegrityError, match="not within its pack|shorter"):
        for _ in down.spans(m, [(0, m.size)], pieces=True):
            pass
    assert down.chunks.purge(m.chunks) == 1  # the chunk the pack lost is no longer held; the others are
    assert [e[0] for e in down.chunks.lacking(m.chunks)] == [last[0]]


def test_removing_a_package_frees_its_chunks_bytes_and_then_the_pack(tmp_path: Path) -> None:
    up, m, _ = upper(tmp_path, 4 << 20)
    down = Storehouse(tmp_path / "down" / "RDS")
    fetch(up, down, m)
    [pack] = (down.chunks.root / chunks.PACKS).glob("*.pack")
    before = pack.stat().st_blocks * 512
    assert before >= m.size - 4096
    keep = {e[0] for e in m.chunks[: len(m.chunks) // 2]}
    n, freed = down.chunks.collect(keep, again=lambda: keep)  # half of the chunks no longer used
    assert n == len({e[0] for e in m.chunks} - keep) and freed > 0
    assert {r[0] for r in rows(down)} == keep
    after = pack.stat().st_blocks * 512
    assert before - after >= freed - 4096 * n * 2  # holes punched: the bytes are free (whole blocks of each)
    assert pack.stat().st_size >= max(r[2] + r[3] for r in rows(down))  # the others keep their places
    assert set(chunkfiles.stored(down.chunks.root)) == keep
    down.chunks.collect(set(), again=set)
    assert not pack.exists() and rows(down) == []


def test_a_pack_being_written_is_not_removed_by_a_collection(tmp_path: Path) -> None:
    store = chunks.ChunkStore(tmp_path / "c")
    writer = chunks.PackWriter(store)
    writer.append("a" * 64, b"x" * 100)  # not committed yet: no row names it
    other = chunks.ChunkStore(tmp_path / "c")  # another process's collection
    other.collect(set(), again=set)
    assert os.path.exists(store.pack_file(writer.name))
    writer.close()
    assert [r[0] for r in other._rows()] == ["a" * 64]
    other.collect({"a" * 64}, again=lambda: {"a" * 64})
    assert os.path.exists(store.pack_file(writer.name))
    other.collect(set(), again=set)
    assert not os.path.exists(store.pack_file(writer.name))


def test_a_dead_writer_s_pack_that_no_row_names_is_removed(tmp_path: Path) -> None:
    store = chunks.ChunkStore(tmp_path / "c")
    writer = chunks.PackWriter(store)
    writer.append("b" * 64, b"y" * 100)
    fcntl.flock(writer.fd, fcntl.LOCK_UN)  # killed before its first commit: its lock went with it
    store.collect(set(), again=set)
    assert not os.path.exists(store.pack_file(writer.name))
    os.close(writer.fd)


def test_a_cut_download_keeps_its_whole_chunks_in_the_pack_and_resumes_after_them(tmp_path: Path) -> None:
    up, m, archive = upper(tmp_path)
    down = Storehouse(tmp_path / "down" / "RDS")

    def cut(ranges: list[tuple[int, int]], out: object) -> None:
        sent = 0
        for block in up.spans(m, ranges):
            if sent + len(block) > m.size // 2:
                out.write(bytes(block)[: m.size // 2 - sent])  # type: ignore[attr-defined]
                raise ConnectionResetError("cut")
            out.write(block)  # type: ignore[attr-defined]
            sent += len(block)

    with pytest.raises(ConnectionResetError):
        down.receive_chunks(m, cut, "up")
    kept = {r[0] for r in rows(down)}
    assert kept and len(kept) < len({e[0] for e in m.chunks})
    asked = fetch(up, down, m)
    assert sum(n for _, n in asked) == sum(e[2] for e in {e[0]: e for e in m.chunks if e[0] not in kept}.values())
    assert b"".join(chunkfiles.stored(down.chunks.root)[e[0]] for e in m.chunks) == archive
    assert len(list((down.chunks.root / chunks.PACKS).glob("*.pack"))) == 2  # one a download


def test_loose_chunks_of_an_older_home_and_packed_ones_make_one_package(tmp_path: Path) -> None:
    """A home from before packs holds its chunks as files: they are found, and only the rest come."""
    up, m, archive = upper(tmp_path)
    down = Storehouse(tmp_path / "down" / "RDS")
    down.chunks.root.mkdir(parents=True)
    for e in m.chunks[::2]:
        down.chunks.put(e[0], chunkfiles.read(up.chunks.root, e[0]))
    asked = fetch(up, down, m)
    assert sum(n for _, n in asked) == sum(e[2] for e in {e[0]: e for e in m.chunks[1::2]}.values())
    assert b"".join(bytes(b) for b in down.spans(m, [(0, m.size)])) == archive
    down.verify(m, full=True)


def test_a_store_removed_under_a_long_lived_process_is_not_written_through_its_old_index(tmp_path: Path) -> None:
    """rdsma keeps its storehouse open for days; rdsft -init removes the chunk store meanwhile: the rows it
    records later go to the index everyone reads, not to the removed file."""
    held = chunks.ChunkStore(tmp_path / "c")
    w = chunks.PackWriter(held)
    w.append("a" * 64, b"x" * 10)
    w.close()
    assert held.has(("a" * 64, 1, 10))
    chunks.ChunkStore(tmp_path / "c").clear()  # another process
    assert not held.has(("a" * 64, 1, 10))
    w = chunks.PackWriter(held)
    w.append("b" * 64, b"y" * 10)
    w.close()
    assert set(chunkfiles.stored(tmp_path / "c")) == {"b" * 64}


def test_a_pack_no_hole_could_be_punched_in_is_compacted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file system without holes (or dead chunks' partial blocks) leaves a pack more than half empty: its
    live chunks are copied to a new pack, their rows moved, and the old one goes."""
    up, m, archive = upper(tmp_path, 4 << 20)
    down = Storehouse(tmp_path / "down" / "RDS")
    fetch(up, down, m)
    [old] = (down.chunks.root / chunks.PACKS).glob("*.pack")
    monkeypatch.setitem(chunks._LIBC, "fallocate", None)  # no fallocate here
    keep = {e[0] for e in m.chunks[: len(m.chunks) // 4]}
    reader = chunks.Reader(down.chunks, m.chunks)  # looked up before the compaction, read after it
    down.chunks.collect(keep, again=lambda: keep)
    assert not old.exists()
    [new] = (down.chunks.root / chunks.PACKS).glob("*.pack")
    kept = sum(e[2] for e in {e[0]: e for e in m.chunks if e[0] in keep}.values())
    assert new.stat().st_size == kept and {r[1] for r in rows(down)} == {new.name}
    held = chunkfiles.stored(down.chunks.root)
    assert set(held) == keep
    assert all(held[e[0]] == chunkfiles.read(up.chunks.root, e[0]) for e in m.chunks if e[0] in keep)
    first = sum(e[2] for e in m.chunks[: len(m.chunks) // 4])
    assert reader.read(first) == archive[:first]  # its lookup was of the old pack: found again in the new
    reader.close()


def test_a_pack_mostly_alive_after_its_holes_is_left_in_place(tmp_path: Path) -> None:
    up, m, _ = upper(tmp_path, 4 << 20)
    down = Storehouse(tmp_path / "down" / "RDS")
    fetch(up, down, m)
    [pack] = (down.chunks.root / chunks.PACKS).glob("*.pack")
    keep = {e[0] for e in m.chunks[1:]}
    down.chunks.collect(keep, again=lambda: keep)
    assert pack.exists() and {r[1] for r in rows(down)} == {pack.name}


def test_a_download_makes_its_pack_then_the_index_durable_before_the_package_and_nothing_else(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Before the manifest that names the chunks is written: the pack's bytes on disk (fdatasync), then the
    index's files and the directories naming them (fsync); no syncfs, which waited for every other writer's
    data on the file system too (a copy beside the download, the extraction of an earlier job)."""
    up, m, _ = upper(tmp_path)
    down = Storehouse(tmp_path / "down" / "RDS")
    synced: list[tuple[str, str]] = []
    real_fsync, real_fdatasync, real_add = os.fsync, os.fdatasync, Storehouse.add_chunked

    def named(fd: int) -> str:
        return os.readlink(f"/proc/self/fd/{fd}")

    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(("fsync", named(fd))), real_fsync(fd))[1])
    monkeypatch.setattr(os, "fdatasync", lambda fd: (synced.append(("fdatasync", named(fd))), real_fdatasync(fd))[1])
    monkeypatch.setattr(chunks.ChunkStore, "flush", lambda self: synced.append(("syncfs", "")))
    monkeypatch.setattr(Storehouse, "add_chunked",
                        lambda self, manifest: (synced.append(("package", "")), real_add(self, manifest))[1])
    fetch(up, down, m)
    before = synced[:synced.index(("package", ""))]
    packs = down.chunks.root / chunks.PACKS
    pack = next(packs.glob("*.pack"))
    assert ("syncfs", "") not in synced
    wal = packs / f"{chunks.INDEX}-wal"
    assert wal.exists() and before.index(("fdatasync", str(pack))) < before.index(("fsync", str(wal)))
    assert ("fsync", str(packs / chunks.INDEX)) not in synced  # (its descriptor closed would drop SQLite's locks)
    assert ("fsync", str(packs)) in before and ("fsync", str(down.chunks.root)) in before
    assert chunkfiles.stored(down.chunks.root).keys() == {e[0] for e in m.chunks}


def test_making_the_index_durable_keeps_the_process_s_own_sqlite_locks(tmp_path: Path) -> None:
    """A long-lived process (rdsma) downloads, making the index durable, while other processes (rds-serve)
    open and close the index: none of them takes itself for the last connection and removes the index's
    log under the first (closing a descriptor of the index file would drop this process's locks on it:
    rdsma then died with 'disk I/O error')."""
    import subprocess
    import sys

    store = chunks.ChunkStore(tmp_path / "c")
    w = chunks.PackWriter(store)
    w.append("a" * 64, b"x" * 10)
    w.close()
    assert store.has(("a" * 64, 1, 10))
    other = f"from rds import chunks; print(chunks.ChunkStore({str(tmp_path / 'c')!r}).has(('a' * 64, 1, 10)))"
    for _ in range(2):
        assert subprocess.run([sys.executable, "-c", other], capture_output=True, text=True,
                              check=True).stdout.strip() == "True"
        assert (store.root / chunks.PACKS / f"{chunks.INDEX}-wal").exists()  # this process's log, still there
        w = chunks.PackWriter(store)
        w.append(secrets_name(), b"y" * 10)
        w.close()
    assert store.has(("a" * 64, 1, 10))


def secrets_name() -> str:
    import secrets

    return secrets.token_hex(32)
