"""Chunks: a package's content cut where the content says, each named by the SHA-256 of its bytes.

Why the uncompressed tar stream, cut as one stream, and not file by file.
``rdsft -c`` writes the package's tar stream (headers and contents, before
any compression) through ``Packer``, which cuts it with FastCDC (a gear
hash: a cut depends only on the bytes just before it, so an insertion moves
only the cuts near it and every later chunk keeps its name).  One stream
rather than one file at a time keeps the index small whatever the tree holds:
a tree of many small files (a Python environment) would otherwise need one
index entry a file, and the index of a 200 MiB environment passed 1% of the
package; cut as a stream, small files share a chunk and the index stays
near 170 bytes for 64 KiB.  A file changed in place still changes only the
chunks around its bytes (and its header's mtime, next to them).  The stream
is also cut where each file's content (16 KiB or more) starts and ends, and
before and after each directory's header (``Packer.cut_around``, ``cut_at``:
rds.archive tells the offsets), so a file's content chunks are the same
whatever surrounds it and a file two packages share crosses once.  Content
of ``BIG`` or more is cut into larger chunks (~512 KiB): fewer files to
create and verify on a first transfer.

Each chunk is compressed on its own, as one gzip member (zlib level 6, no
name, no time: the same bytes compress the same way), and stored once in the
home's chunk store whatever packages and versions use it: loose as
``RDS/.chunks/XX/SHA256`` where a package is made, appended to one pack a
download (``RDS/.chunks/packs/``, ``ChunkStore``) where it is received.  The
chunks of a package, concatenated in the manifest's order, form one valid
gzip stream: the package's archive (``payload.tgz`` of the old
format) without a copy of it anywhere.  The manifest lists each chunk as
``[sha256, size, packed size, packed sha256]`` (manifests made before issue
16 have the first three); its ``size`` and ``sha256`` are the packed
chunks' total and the SHA-256 of their concatenation, so a package is still
verified end to end (rds.archive hashes it as it reads it for install; a
relay as it serves it), and every chunk is verified on its own before it is
stored (``check``): by the SHA-256 of its packed bytes, which the signed
manifest gives, so a relay never decompresses a chunk it only passes on;
an old manifest's chunk decompressed and hashed (``unpack``).  A chunk that
is in the store is a good one.

The compiled chunker.  A gear hash in pure Python runs at 2-3 MB/s (a byte-by-byte loop), far
from ``tar -czf``'s pace (issue 17 allows 1.5 times its time), so the gear
hash is pyfastcdc's (Cython, 3 GB/s), imported only when a package is made.

Loose chunk files are written to a temporary name and renamed: a chunk is
whole or absent; a packed chunk is named in the index only once its bytes
are in the pack.  Chunks are removed only by ``collect`` (after packages
leave), which keeps every chunk a package here, a download in progress or a
package being made (their lists, ``RDS/.partial/*.chunks``) still names.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import hashlib
import io
import json
import os
import threading
import zlib
from bisect import bisect_right
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from rds import fsutil
from rds.errors import IntegrityError

MIN, AVG, MAX = 16 << 10, 64 << 10, 256 << 10  # FastCDC's sizes: an index entry (~170 bytes) per 64 KiB
BIG = 16 << 20  # a file's content this large is cut into larger chunks (fewer files to store and to send)
BIG_MIN, BIG_AVG, BIG_MAX = 128 << 10, 512 << 10, 2 << 20
LEVEL = 6
BATCH = 8 << 20  # the tar stream is cut this much at a time
DIR = ".chunks"
WRITERS = 4  # threads verifying and writing chunks as they come (Receiver): hashlib and pwrite let go of the GIL
QUEUED = 64 << 20  # packed bytes a Receiver holds, verified, before it waits for its writers
PACKS = "packs"  # .chunks/packs/: the chunks each download brought, back to back in one file, and their index
INDEX = "index.db"
PACK_COMMIT = 16 << 20  # packed bytes a download appends to its pack between two commits of their index rows
# A pack's writing is started on the disk (``_start_writeback``) PACK_STRIDE at a time, by a thread of its own
# (the call can wait for the disk) and only on pages no writer touches any more (a write to a page being
# written back waits for it): the final flush of 1.5 GiB then finds little left (a transfer 10.1 s, 12.1 s
# without; 155 MB of small chunks 1.87 s, 1.98 s without: A/B, alternated)
PACK_STRIDE = 8 << 20
COMPACT_SLACK = 1 << 20  # a pack taking more than twice its live chunks' bytes, and this, on disk is compacted

# SHA-256 of the bytes, their size, the packed (gzip member) size and, in manifests made since issue 16, the
# SHA-256 of the packed bytes (``check``: verified without decompressing)
Entry = tuple[str, int, int] | tuple[str, int, int, str]
Packed = bytes | bytearray | memoryview  # a chunk's packed bytes as they came


def packed_digest(entry: Entry) -> str | None:
    """The SHA-256 of the chunk's packed bytes that the manifest gives, if it gives one."""
    return entry[3] if len(entry) > 3 else None  # type: ignore[misc]


def pack(data: bytes) -> bytes:
    """One chunk as one gzip member, the same bytes for the same content."""
    c = zlib.compressobj(LEVEL, zlib.DEFLATED, 31)
    return c.compress(data) + c.flush()


def unpack(packed: bytes, entry: Entry) -> bytes:
    """The chunk's bytes, if ``packed`` is exactly one gzip member holding them; IntegrityError otherwise."""
    name, size, psize = entry[0], entry[1], entry[2]
    if len(packed) != psize:
        raise IntegrityError(f"chunk {name[:16]}...: {len(packed)} packed bytes, the manifest says {psize}")
    d = zlib.decompressobj(31)
    try:
        data = d.decompress(packed, size + 1)
    except zlib.error as e:
        raise IntegrityError(f"chunk {name[:16]}...: not a gzip member ({e})") from None
    if len(data) != size or not d.eof or d.unused_data or d.unconsumed_tail \
            or hashlib.sha256(data).hexdigest() != name:
        raise IntegrityError(f"chunk {name[:16]}...: its bytes do not match its name and size")
    return data


def check(packed: Packed, entry: Entry) -> None:
    """Verify one packed chunk against its manifest entry before it is stored or used: by the SHA-256 of its
    packed bytes when the (signed) manifest gives it, which needs no decompressing; else ``unpack``."""
    digest = packed_digest(entry)
    if digest is None:
        unpack(bytes(packed), entry)
        return
    if len(packed) != entry[2]:
        raise IntegrityError(f"chunk {entry[0][:16]}...: {len(packed)} packed bytes, the manifest says {entry[2]}")
    if hashlib.sha256(packed).hexdigest() != digest:
        raise IntegrityError(f"chunk {entry[0][:16]}...: its packed bytes do not match the manifest's SHA-256")


_LIBC: dict[str, Any] = {}  # libc's calls, once looked up (None where there is none)


def _libc(name: str, *args: Any) -> Any:
    """libc's ``name`` with these argument types (ctypes), looked up once; None where libc has none."""
    if name not in _LIBC:
        import ctypes  # only when chunks are written or freed

        call = getattr(ctypes.CDLL(None, use_errno=True), name, None)
        if call is not None:
            call.argtypes = list(args)
        _LIBC[name] = call
    return _LIBC[name]


# chunks this large have their writing started as they are stored; smaller ones are left to ``flush``
# (a disk request each for thousands of small chunks cost more CPU than the final syncfs saved)
WRITEBACK_FROM = 128 << 10


def _start_writeback(fd: int, offset: int = 0, length: int = 0) -> None:
    """Have the disk start writing a chunk just written, without waiting for it (sync_file_range with
    SYNC_FILE_RANGE_WRITE): the one ``flush`` before a package is committed then finds little left to
    write (issue 16: 1.5 GiB of chunks left 0.87 s of writing to the final syncfs, 0.02 s so)."""
    import ctypes

    call = _libc("sync_file_range", ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint)
    if call is not None:
        call(fd, offset, length, 2)  # SYNC_FILE_RANGE_WRITE; a failure leaves the work to ``flush``


class ChunkStore:
    """The chunks of one home's package storehouse, each a gzip member, found by name in one of two places.

    Loose, one file a chunk: ``RDS/.chunks/XX/SHA256`` (what ``rdsft -c`` and
    ``rdsstage -i`` store, and every chunk of homes made before packs).  Packed:
    the chunks one download brought, back to back in one file
    ``RDS/.chunks/packs/RANDOM.pack``, each found through the index
    ``packs/index.db`` (SQLite: name, pack, offset, packed size).  Creating a
    file a chunk cost a first transfer of 3,300 small chunks more than half
    of its time (issue 17: the chunks of a 155 MB tree into the store 1.15 s as
    files, 0.78 s appended to one pack; the link alone 0.34 s), and the disk
    can be given a pack's writing as it grows, where a flush a small file
    cost more than it saved.  A chunk is looked for loose first, then packed.

    The index is written by the download that appends the chunks, a batch of
    rows at a time after their bytes are in the pack (a download killed
    loses at most the rows of its last ``PACK_COMMIT`` bytes: it fetches them
    again), and made durable after the pack (its fdatasync, then the index's
    files) before the package that names them is committed.  ``collect``
    deletes the rows of chunks no package uses, frees their bytes in the pack
    (a hole punched, the file keeps its size and every other chunk its
    offset) and removes a pack no row names once no download is writing it."""

    def __init__(self, root: Path, busy: float = 30.0) -> None:
        self.root = root
        self._root = str(root)
        self._fans: set[str] = set()
        self.busy = busy  # seconds to wait for another process's write to the index
        self._db: Any = None
        self._db_pid = 0
        self._db_ino = 0  # the index file the connection was opened on
        self._db_lock = threading.Lock()

    def path(self, name: str) -> Path:
        """Where the chunk's file is when it is loose."""
        return self.root / name[:2] / name

    def make(self) -> None:
        """Make the store's directory, if it is not there (``_make_store``)."""
        _make_store(self._root)

    def file(self, name: str) -> str:
        """``path`` as a string, for the calls made once a chunk (pathlib costs more than the stat)."""
        return f"{self._root}/{name[:2]}/{name}"

    def pack_file(self, pack: str) -> str:
        return f"{self._root}/{PACKS}/{pack}"

    # the index of the packs

    def _index(self, create: bool = False) -> Any:
        """The packs' index (a sqlite3 connection), or None when there is none and ``create`` is not asked.
        Opened again in a child after a fork (a connection is never shared across processes)."""
        path = f"{self._root}/{PACKS}/{INDEX}"
        try:
            ino = os.stat(path).st_ino
        except FileNotFoundError:
            ino = 0
        if self._db is not None and self._db_pid == os.getpid() and self._db_ino == ino:
            return self._db
        self.close()  # another process removed the store (rdsft -init) since: never the old file's rows
        if not create and not ino:
            return None
        import sqlite3  # only where chunks are packed

        if create:
            self.make()
            os.makedirs(f"{self._root}/{PACKS}", exist_ok=True)
        db = sqlite3.connect(path, timeout=self.busy, isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA synchronous=NORMAL")  # made durable by ``sync_index`` or ``flush`` before a commit
            if create:
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("CREATE TABLE IF NOT EXISTS chunk (name TEXT PRIMARY KEY, pack TEXT NOT NULL, "
                           "offset INTEGER NOT NULL, size INTEGER NOT NULL) WITHOUT ROWID")
        except BaseException:
            db.close()
            raise
        self._db, self._db_pid, self._db_ino = db, os.getpid(), os.stat(path).st_ino
        return db

    def packed(self, names: Sequence[str]) -> dict[str, tuple[str, int, int]]:
        """Where the named chunks that are in packs are: name -> (pack file, offset, packed size)."""
        db = self._index()
        if db is None or not names:
            return {}
        out: dict[str, tuple[str, int, int]] = {}
        with self._db_lock:
            for i in range(0, len(names), 500):
                part = list(names[i:i + 500])
                marks = ",".join("?" * len(part))
                for name, pack, offset, size in db.execute(
                        f"SELECT name, pack, offset, size FROM chunk WHERE name IN ({marks})", part):
                    out[name] = (self.pack_file(pack), offset, size)
        return out

    def add_rows(self, rows: Sequence[tuple[str, str, int, int]]) -> None:
        """Record chunks appended to a pack: (name, pack, offset, packed size); a name already recorded keeps
        its first place."""
        if rows:
            self._change("INSERT OR IGNORE INTO chunk VALUES (?, ?, ?, ?)", rows, create=True)

    def _drop_rows(self, names: Iterable[str]) -> None:
        self._change("DELETE FROM chunk WHERE name = ?", [(n,) for n in names])

    def _change(self, sql: str, rows: Sequence[tuple[Any, ...]], create: bool = False) -> None:
        """One transaction of the index; a full disk is an OSError (ENOSPC) as for the chunks' bytes, any
        other failure of the index says that it is the index."""
        import sqlite3

        db = self._index(create=create)
        if db is None:
            return
        try:
            with self._db_lock:
                db.execute("BEGIN IMMEDIATE")
                try:
                    db.executemany(sql, rows)
                    db.execute("COMMIT")
                finally:
                    if db.in_transaction:
                        db.execute("ROLLBACK")
        except sqlite3.Error as e:
            where = f"{self._root}/{PACKS}/{INDEX}"
            if "full" in str(e):
                raise OSError(errno.ENOSPC, "disk full", where) from None
            raise IntegrityError(f"{where}: the index of the chunk packs: {e}") from None

    def packed_in(self, pack: str) -> bool:
        """Whether the index names a chunk in ``pack``."""
        db = self._index()
        if db is None:
            return False
        with self._db_lock:
            return db.execute("SELECT 1 FROM chunk WHERE pack = ? LIMIT 1", (pack,)).fetchone() is not None

    def close(self) -> None:
        if self._db is not None:
            if self._db_pid == os.getpid():
                self._db.close()
            self._db = None

    # what is here

    def has(self, entry: Entry) -> bool:
        return self._loose(entry) or self.packed([entry[0]]).get(entry[0], ("", 0, -1))[2] == entry[2]

    def _loose(self, entry: Entry) -> bool:
        try:
            return os.stat(self.file(entry[0])).st_size == entry[2]
        except FileNotFoundError:
            return False

    def lacking(self, entries: Iterable[Entry]) -> list[Entry]:
        """The entries whose chunk is not here (each once, in order)."""
        unique: dict[str, Entry] = {}
        for e in entries:
            unique.setdefault(e[0], e)
        packed = self.packed(list(unique))
        return [e for name, e in unique.items()
                if packed.get(name, ("", 0, -1))[2] != e[2] and not self._loose(e)]

    def put(self, name: str, packed: Packed) -> None:
        """Store a chunk already verified, loose: written under a temporary name and renamed, whole or absent.

        Not flushed one by one (a flush a chunk cost a download 60% of its
        speed): whoever stores chunks calls ``flush`` once before it commits the
        package that names them.  A chunk that a power cut leaves short is
        lacking (``has`` compares sizes); one that it leaves garbled fails the
        package's end-to-end check and is removed (``purge``)."""
        target = self.file(name)
        fan = os.path.dirname(target)
        if name[:2] not in self._fans:
            _makedirs(fan)
            self._fans.add(name[:2])
        tmp = f"{fan}/{fsutil.tmp_prefix()}{threading.get_ident()}"
        try:
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
            except FileNotFoundError:  # its directory was pruned by a collection meanwhile
                _makedirs(fan)
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
            try:
                view = memoryview(packed)
                while view:
                    view = view[os.write(fd, view):]
                if len(packed) >= WRITEBACK_FROM:
                    _start_writeback(fd)
            finally:
                os.close(fd)
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def sync_index(self) -> None:
        """Make the packs' index durable, with the directories that name its files and the packs: the index's
        write-ahead log (the rows committed since its last checkpoint; a checkpoint syncs the index itself),
        ``packs/`` and the store's own directory.  Never the index file: closing a descriptor of it drops
        every POSIX lock this process holds on it, SQLite's shared lock of a connection in WAL mode among
        them, and another process closing its connection then takes itself for the last one and removes
        the log under this one ('disk I/O error')."""
        for name in (f"{PACKS}/{INDEX}-wal", PACKS, ""):
            try:
                fd = os.open(os.path.join(self._root, name), os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:  # no log: every row is in the index itself (checkpointed, synced)
                continue
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def flush(self) -> None:
        """Flush the chunk store's file system to disk (syncfs), before a package that names new chunks is
        committed: one call for all of them, loose or packed, and the packs' index.  A download writes one
        pack only, and makes just that durable (``PackWriter.close``): syncfs also waited for every other
        writer's data on the file system (a copy beside it, a previous job's extraction)."""
        if not self.root.exists():
            return
        import ctypes  # only when chunks were stored

        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            syncfs = _libc("syncfs", ctypes.c_int)
            if syncfs is None or syncfs(fd) != 0:  # not Linux: the whole machine's
                os.sync()
        finally:
            os.close(fd)

    def purge(self, entries: Iterable[Entry]) -> int:
        """Remove the chunks of ``entries`` that are not what their names say (a package found damaged);
        returns how many went."""
        n = 0
        for e in {e[0]: e for e in entries}.values():
            try:
                check(self.read(e[0]), e)
            except FileNotFoundError:
                continue
            except IntegrityError:
                with contextlib.suppress(FileNotFoundError):
                    self.path(e[0]).unlink()
                self._drop_rows([e[0]])
                n += 1
        return n

    def read(self, name: str) -> bytes:
        """A chunk's packed bytes; FileNotFoundError when it is not here, IntegrityError when its pack is
        gone or shorter than its index says."""
        try:
            return self.path(name).read_bytes()
        except FileNotFoundError:
            where = self.packed([name]).get(name)
            if where is None:
                raise
        pack, offset, size = where
        try:
            fd = os.open(pack, os.O_RDONLY)
        except FileNotFoundError:
            now = self.packed([name]).get(name)  # compacted since it was looked up
            if now is None or now[0] == pack:
                raise IntegrityError(f"chunk {name[:16]}...: its pack {os.path.basename(pack)} is gone") from None
            pack, offset, size = now
            fd = os.open(pack, os.O_RDONLY)
        try:
            data = os.pread(fd, size, offset)
        finally:
            os.close(fd)
        if len(data) != size:
            raise IntegrityError(f"chunk {name[:16]}...: its pack {os.path.basename(pack)} is shorter than "
                                 "its index says")
        return data

    def total(self, entries: Iterable[Entry]) -> int:
        """The packed bytes of these chunks, each counted once."""
        return sum({e[0]: e[2] for e in entries}.values())

    def names(self) -> Iterator[tuple[str, Path]]:
        """The loose chunks: (name, file)."""
        with contextlib.suppress(FileNotFoundError), os.scandir(self.root) as fans:
            for fan in list(fans):
                if fan.name == PACKS:
                    continue
                with contextlib.suppress(FileNotFoundError), os.scandir(fan.path) as it:
                    for e in it:
                        yield e.name, Path(e.path)

    def every(self) -> set[str]:
        """The name of every chunk here, loose or packed."""
        found = {name for name, _ in self.names() if not name.startswith(fsutil.TMP_PREFIX)}
        db = self._index()
        if db is not None:
            with self._db_lock:
                found.update(name for (name,) in db.execute("SELECT name FROM chunk"))
        return found

    def collect(self, live: set[str], again: Callable[[], set[str]]) -> tuple[int, int]:
        """Delete the chunks no name in ``live`` keeps, and what killed writers left; ``again`` names the
        live ones once more just before (a package being made may have named one meanwhile).  Returns
        how many chunks went and their packed bytes."""
        doomed = [(name, path) for name, path in self.names() if name not in live]
        rows = self._rows()
        if not doomed and all(r[0] in live for r in rows):
            self._prune()
            self._drop_packs(rows, [])
            return 0, 0
        live = again()
        n = freed = 0
        for name, path in doomed:
            if name in live or (name.startswith(fsutil.TMP_PREFIX) and not fsutil.is_stray(name)):
                continue
            try:
                size = path.stat().st_size
                path.unlink()
            except FileNotFoundError:
                continue
            n += 1
            freed += size
        dead = [r for r in rows if r[0] not in live]
        if dead:
            self._drop_rows(r[0] for r in dead)
            n += len(dead)
            freed += sum(r[3] for r in dead)
        self._drop_packs([r for r in rows if r[0] in live], dead)
        self._prune()
        return n, freed

    def _rows(self) -> list[tuple[str, str, int, int]]:
        db = self._index()
        if db is None:
            return []
        with self._db_lock:
            return db.execute("SELECT name, pack, offset, size FROM chunk").fetchall()  # type: ignore[no-any-return]

    def _drop_packs(self, kept: list[tuple[str, str, int, int]], dead: list[tuple[str, str, int, int]]) -> None:
        """Remove the packs no row names and no download writes to (it holds a lock on its pack while it
        appends); free the bytes of the dead chunks of the others (holes punched: offsets stay)."""
        held = {r[1] for r in kept}
        import fcntl

        packs: list[str] = []
        with contextlib.suppress(FileNotFoundError), os.scandir(f"{self._root}/{PACKS}") as it:
            packs = [e.name for e in it if e.name.endswith(".pack") and e.name not in held]
        for pack in packs:
            try:
                fd = os.open(self.pack_file(pack), os.O_RDONLY | os.O_NOFOLLOW)
            except FileNotFoundError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                if not self.packed_in(pack):  # rows committed by a download that ended since they were read
                    os.unlink(self.pack_file(pack))
            except BlockingIOError:  # a download is appending to it
                pass
            finally:
                os.close(fd)
        by_pack: dict[str, list[tuple[int, int]]] = {}
        for _, pack, offset, size in dead:
            if pack in held:
                by_pack.setdefault(pack, []).append((offset, size))
        live: dict[str, int] = {}
        for _, pack, _, size in kept:
            live[pack] = live.get(pack, 0) + size
        for pack, spans in by_pack.items():
            _punch(self.pack_file(pack), spans)
            with contextlib.suppress(FileNotFoundError):
                if os.stat(self.pack_file(pack)).st_blocks * 512 > 2 * live.get(pack, 0) + COMPACT_SLACK:
                    self._compact(pack)

    def _compact(self, pack: str) -> None:
        """Copy the chunks still named in ``pack`` to a new pack, move their rows there and remove it: where
        no hole could be punched (a file system without them) or the dead chunks' partial blocks left it
        more than half empty.  The new pack is on disk before the rows move, and they are before the old
        one goes; a reader that opened the old one reads on from it, one that had not finds the new."""
        import fcntl

        try:
            fd = os.open(self.pack_file(pack), os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            return
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # written to, or compacted by another process
                return
            db = self._index()
            if db is None:
                return
            with self._db_lock:
                rows = db.execute("SELECT name, offset, size FROM chunk WHERE pack = ? ORDER BY offset",
                                  (pack,)).fetchall()
            writer = PackWriter(self)
            try:
                for name, offset, size in rows:
                    data = os.pread(fd, size, offset)
                    if len(data) == size:  # one the pack lost is left lacking
                        writer.write(name, data, writer.reserve(size))
                os.fsync(writer.fd)
                with writer.lock:
                    moved, writer.rows = writer.rows, []
                self._change("UPDATE chunk SET pack = ?, offset = ? WHERE name = ? AND pack = ?",
                             [(new, at, name, pack) for name, new, at, _ in moved])
            finally:
                writer.close()  # the index synced: the rows' move on disk before the old pack goes
            if not self.packed_in(pack):
                os.unlink(self.pack_file(pack))
        finally:
            os.close(fd)

    def _prune(self) -> None:
        """Remove the fan-out directories left empty, and the store itself when it holds nothing."""
        with contextlib.suppress(FileNotFoundError), os.scandir(self.root) as fans:
            for fan in list(fans):
                if fan.name == PACKS:
                    continue
                with contextlib.suppress(OSError):  # not empty: kept
                    os.rmdir(fan.path)
                    self._fans.discard(fan.name)
        with contextlib.suppress(OSError):
            os.rmdir(self.root)

    def clear(self) -> None:
        self.close()
        fsutil.remove_tree(self.root) if self.root.exists() else None


class PackWriter:
    """The chunks of one download appended to a new pack, ``ChunkStore`` finding them through its index.

    Writer threads ``append`` at once (each chunk's place is taken under a
    lock, its bytes written with pwrite outside it); a chunk's row is
    recorded only after its bytes are in the pack, and ``commit`` (the
    download's own thread) writes the recorded rows to the index.  The
    disk is given the pack's writing every ``PACK_STRIDE`` bytes, so the
    fdatasync before the package is committed finds little left to write.
    The pack is locked while it is written (``collect`` leaves it alone)."""

    def __init__(self, store: ChunkStore) -> None:
        import fcntl
        import secrets

        store._index(create=True)
        self.store = store
        self.name = f"{secrets.token_hex(8)}.pack"
        self.fd = os.open(store.pack_file(self.name), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                          | os.O_CLOEXEC, 0o644)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        self.end = 0  # the next chunk's offset
        self.started = 0  # writing started up to here
        self.rows: list[tuple[str, str, int, int]] = []
        self.lock = threading.Lock()
        self.writing: set[int] = set()  # where the chunks being written start
        self.flusher: Any = None  # the thread that starts the writing (it may wait for the disk; no writer does)

    def reserve(self, n: int) -> int:
        """The place of the next chunk of ``n`` packed bytes (taken in the order they come: a range of the
        archive is one range of the pack, served with one sendfile)."""
        with self.lock:
            at = self.end
            self.end += n
            self.writing.add(at)
        return at

    def write(self, name: str, packed: Packed, at: int) -> None:
        """Write a verified chunk at its place and record its row (``commit`` writes the rows)."""
        try:
            view = memoryview(packed)
            done = 0
            while done < len(view):
                done += os.pwrite(self.fd, view[done:], at + done)
        finally:
            with self.lock:
                self.writing.discard(at)
        begin = stop = -1
        with self.lock:
            self.rows.append((name, self.name, at, len(view)))
            # only whole pages no writer touches any more: a page being written back makes a write to it wait
            behind = (min(self.writing) if self.writing else self.end) & ~4095
            if behind - self.started >= PACK_STRIDE:
                begin, stop = self.started, behind
                self.started = stop
        if begin >= 0:
            if self.flusher is None:
                from concurrent.futures import ThreadPoolExecutor

                self.flusher = ThreadPoolExecutor(1)
            self.flusher.submit(_start_writeback, self.fd, begin, stop - begin)

    def skip(self, at: int) -> None:
        """A place reserved for a chunk that is not written (it came damaged): a hole in the pack."""
        with self.lock:
            self.writing.discard(at)

    def append(self, name: str, packed: Packed) -> None:
        self.write(name, packed, self.reserve(len(packed)))

    def commit(self) -> None:
        """Write the rows of the chunks written so far to the index."""
        with self.lock:
            rows = list(self.rows)
        self.store.add_rows(rows)
        with self.lock:
            del self.rows[:len(rows)]

    def close(self) -> None:
        """Commit what came, make it durable and let the pack go; a pack nothing was written to is removed.
        When the disk is too full for the index, the pack gives back its last chunks until the rows of the
        others fit (a full disk then costs the next run those, not the whole download).  The pack's bytes
        reach the disk first (fdatasync: most of them were sent on the way, ``PACK_STRIDE`` at a time), then
        the index that names them; only this download's files are waited for."""
        try:
            room = 1 << 20
            while True:
                try:
                    self.commit()
                    break
                except OSError as e:
                    if e.errno not in (errno.ENOSPC, errno.EDQUOT) or not self.rows:
                        raise
                    self._give_back(room)
                    room *= 4
        finally:
            if self.flusher is not None:
                self.flusher.shutdown()
            try:
                if self.end == 0 or (not self.rows and not self.store.packed_in(self.name)):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(self.store.pack_file(self.name))
                else:
                    os.fdatasync(self.fd)
            finally:
                os.close(self.fd)
            self.store.sync_index()  # the rows committed, whether or not the last of them fitted

    def _give_back(self, room: int) -> None:
        """Cut the pack after its written chunks, less at least ``room`` bytes of them; their rows go."""
        with self.lock:
            written = max(at + n for _, _, at, n in self.rows)
            cut = max(0, written - room) & ~4095
            self.rows = [r for r in self.rows if r[2] + r[3] <= cut]
            self.end = min(self.end, cut)
        os.ftruncate(self.fd, cut)


def _punch(path: str, spans: list[tuple[int, int]]) -> None:
    """Free the whole blocks of these (offset, length) spans of a pack (fallocate PUNCH_HOLE, the size kept):
    where the file system cannot, the bytes stay until the pack goes."""
    import ctypes

    fallocate = _libc("fallocate", ctypes.c_int, ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong)
    if fallocate is None:
        return
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return
    try:
        block = os.fstat(fd).st_blksize or 4096
        for offset, length in spans:
            start = -(-offset // block) * block
            end = (offset + length) // block * block
            if end > start and fallocate(fd, 0x01 | 0x02, start, end - start) != 0:  # KEEP_SIZE|PUNCH_HOLE
                return  # not this file system: the pack keeps them
    finally:
        os.close(fd)


def _makedirs(fan: str) -> None:
    """Make a fan-out directory and the store above it, though a collection may prune the store between
    the two (``ChunkStore._prune``: os.makedirs would then fail to make the fan)."""
    for _ in range(5):
        try:
            _make_store(os.path.dirname(fan))
            os.makedirs(fan, exist_ok=True)
            return
        except FileNotFoundError:
            continue
    os.makedirs(fan, exist_ok=True)


FS_IOC_GETFLAGS, FS_IOC_SETFLAGS, FS_TOPDIR_FL = 0x80086601, 0x40086602, 0x00020000  # linux/fs.h


def _make_store(root: str) -> None:
    """Make the chunk store's directory, marked as the top of a tree whose subdirectories ext4 spreads over
    its block groups (``chattr +T``; nothing elsewhere).  Its fan-out directories, and so the chunk files,
    do not all go to the block group of the storehouse: there, ext4 without a journal scans past every
    inode deleted in the last minutes at each file it creates (``recently_deleted``), which a collection
    or a removed home leaves by the thousand (issue 16: 55% of a first transfer's CPU time)."""
    try:
        os.mkdir(root)
    except FileExistsError:
        return
    import array
    import fcntl

    with contextlib.suppress(OSError):
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            flags = array.array("l", [0])
            fcntl.ioctl(fd, FS_IOC_GETFLAGS, flags, True)
            flags[0] |= FS_TOPDIR_FL
            fcntl.ioctl(fd, FS_IOC_SETFLAGS, flags, True)
        finally:
            os.close(fd)


class Packer:
    """A write-only file that takes a package's tar stream and leaves its chunks in a ChunkStore.

    ``chunks`` lists them in order; ``size`` and ``sha`` count and hash their
    packed bytes, concatenated (the package's archive).  A chunk already in
    the store is not written again, and its stored bytes are the ones counted.
    """

    MIN = MIN  # a file's content this large is cut apart from what surrounds it (rds.archive, ``cut_around``)

    def __init__(self, store: ChunkStore, listed: Path) -> None:
        from concurrent.futures import ThreadPoolExecutor

        import pyfastcdc  # compiled: only when a package is made (commands start fast)

        self.small = pyfastcdc.FastCDC(avg_size=AVG, min_size=MIN, max_size=MAX)
        self.big = pyfastcdc.FastCDC(avg_size=BIG_AVG, min_size=BIG_MIN, max_size=BIG_MAX)
        self.cdc = self.small
        self.marks: collections.deque[tuple[int, Any]] = collections.deque()  # (stream offset, the chunker after)
        self.store = store
        self.listed = open(listed, "a")  # noqa: SIM115 - closed by close(); the names used, for collection
        self.buf = bytearray()
        self.waiting: list[bytes] = []  # cut, not yet stored (``_store``: a batch at a time)
        self.waiting_size = 0
        self.chunks: list[Entry] = []
        self.sha = hashlib.sha256()
        self.size = 0
        self.unpacked = 0
        self.pool = ThreadPoolExecutor(max(1, min(4, os.cpu_count() or 1)))  # zlib and hashlib let go of the GIL

    def write(self, data: bytes) -> int:
        view = memoryview(data)
        while self.marks and self.unpacked + len(view) >= self.marks[0][0]:
            at, cdc = self.marks.popleft()
            k = max(0, at - self.unpacked)
            self.buf += view[:k]
            self.unpacked += k
            view = view[k:]
            self._cut(final=True)  # a cut here, whatever the content says
            self.cdc = cdc
        self.buf += view
        self.unpacked += len(view)
        if len(self.buf) >= BATCH:
            self._cut(final=False)
        return len(data)

    def cut_at(self, offset: int) -> None:
        """Cut the stream at ``offset`` (not yet written): a directory's header starts or ends there."""
        self.marks.append((offset, self.small))

    def cut_around(self, start: int, end: int) -> None:
        """Cut the stream where a file's content starts and where it ends: its chunks are the same whatever
        the files and headers around it (a file two packages share moves once); large content is cut into
        larger chunks."""
        self.marks.append((start, self.big if end - start >= BIG else self.small))
        self.marks.append((end, self.small))

    def flush(self) -> None:
        pass

    def tell(self) -> int:
        return self.unpacked

    def close(self) -> None:
        """Cut and store what is left; the list is complete afterwards."""
        try:
            self._cut(final=True)
            self._store()
            self.store.flush()  # before the manifest that names them is written
        finally:
            self.pool.shutdown()
            self.listed.close()

    def _cut(self, final: bool) -> None:
        """Cut what is buffered (``final``: all of it; else up to the last cut the content made) into the
        chunks waiting to be stored, and store them once they are a batch: the cuts at files and
        directories do not make the workers wait one small file at a time."""
        if self.buf:
            data = bytes(self.buf)
            pieces = [(c.offset, c.length) for c in self.cdc.cut_buf(data)]
            if not final and pieces:
                pieces.pop()  # the last one may end where the buffer does, not where the content says
            used = sum(n for _, n in pieces)
            self.buf = bytearray(data[used:])
            self.waiting.extend(data[o:o + n] for o, n in pieces)
            self.waiting_size += used
        if self.waiting_size >= BATCH:
            self._store()

    def _store(self) -> None:
        pieces, self.waiting, self.waiting_size = self.waiting, [], 0
        names = [hashlib.sha256(p).hexdigest() for p in pieces]
        self.listed.write("".join(f"{n}\n" for n in names))  # named before used: collection keeps them
        self.listed.flush()
        for name, size, packed, digest in self.pool.map(self._one, pieces):
            self.chunks.append((name, size, len(packed), digest))
            self.sha.update(packed)
            self.size += len(packed)

    def _one(self, data: bytes) -> tuple[str, int, bytes, str]:
        name = hashlib.sha256(data).hexdigest()
        path = self.store.path(name)
        with contextlib.suppress(FileNotFoundError):
            packed = path.read_bytes()
            with contextlib.suppress(IntegrityError):
                unpack(packed, (name, len(data), len(packed)))
                os.utime(path)  # named again: not collected while this package is being made
                return name, len(data), packed, hashlib.sha256(packed).hexdigest()
        packed = pack(data)
        self.store.put(name, packed)
        return name, len(data), packed, hashlib.sha256(packed).hexdigest()


def receive_stream(store: ChunkStore, entries: Sequence[Entry], src: Any, where: str, short: str) -> None:
    """Store the chunks ``entries`` as the stream ``src`` holds them back to back (a staged medium's chunk
    file, a whole archive downloaded), each verified as it becomes whole; the first damaged one is raised
    (the others are kept), and ``short`` when the stream ends before the last."""
    import shutil

    receiver = Receiver(store, list(entries), where)
    try:
        shutil.copyfileobj(src, receiver, 1 << 20)
    finally:
        receiver.close()
    receiver.check()
    if not receiver.done:
        raise IntegrityError(short)


class Receiver:
    """A write-only file that takes packed chunks, back to back, as ``entries`` lists them: each is verified
    (``check``) and stored as soon as it is whole, so a cut loses at most the one that was coming.

    The thread that reads the link only cuts the stream into chunks, gives each its place in the
    download's pack (``PackWriter``: in the order they came) and hands them, a write's worth at a time,
    to WRITERS threads, which verify each chunk and write it there if it is good: hashing in the reading
    thread made it give up the GIL at each chunk and wait to get it back from paramiko's thread (issue
    16: 3,300 small chunks cost a first transfer 0.9 s of waiting).  A chunk whose manifest gives its
    packed SHA-256 is hashed, never decompressed; nothing is stored before it is verified, and a damaged
    chunk's place stays a hole.  The rows of the chunks written are committed to the index every
    PACK_COMMIT bytes, when ``settle`` is asked and at ``close``."""

    def __init__(self, store: ChunkStore, entries: Sequence[Entry], where: str, package: str = "") -> None:
        self.store, self.entries, self.where = store, list(entries), where
        self.what = f"package {package}: " if package else ""
        from concurrent.futures import ThreadPoolExecutor  # only when chunks come (commands start fast)

        self.i = 0
        self.buf = bytearray()
        self.size = 0
        self.pool = ThreadPoolExecutor(WRITERS)
        self.pending: collections.deque[tuple[Any, int]] = collections.deque()  # (a batch being written, bytes)
        self.queued = 0
        self.failed: IntegrityError | None = None  # the first damaged chunk (``check`` raises it)
        self.lock = threading.Lock()
        self.pack: PackWriter | None = None  # made when the first chunk is taken
        self.uncommitted = 0  # bytes settled since the pack's rows were last committed

    def write(self, data: bytes | memoryview) -> int:
        n = len(data)
        self.size += n
        view = memoryview(data)
        keep = view.readonly  # bytes that nobody changes (what the link received): kept as they are, not copied
        batch: list[tuple[Entry, Packed]] = []
        at = 0
        if self.buf and self.i < len(self.entries):  # the chunk an earlier write began
            need = self.entries[self.i][2] - len(self.buf)
            at = min(need, n)
            self.buf += view[:at]
            if at == need:
                batch.append((self.entries[self.i], self.buf))  # no longer written to
                self.buf = bytearray()
                self.i += 1
        while self.i < len(self.entries) and n - at >= self.entries[self.i][2]:  # whole chunks: one copy at most
            e = self.entries[self.i]
            batch.append((e, view[at:at + e[2]] if keep else bytes(view[at:at + e[2]])))
            at += e[2]
            self.i += 1
        if at < n:
            self.buf += view[at:]
        if batch:
            self._take(batch)
        if self.i == len(self.entries) and self.buf:
            raise IntegrityError(f"{self.where} sent more than the chunks asked for; not stored")
        return n

    def flush(self) -> None:
        pass

    def _take(self, batch: list[tuple[Entry, Packed]]) -> None:
        """Hand chunks to a writer, which verifies each and stores the good ones; a damaged one is
        remembered, not stored, and the rest of the stream is still read (the link stays in step)."""
        size = sum(len(p) for _, p in batch)
        if self.pack is None:
            self.pack = PackWriter(self.store)
        places = [self.pack.reserve(len(p)) for _, p in batch]  # in the order they came
        self.pending.append((self.pool.submit(self._write, batch, places), size))
        self.queued += size
        while self.queued > QUEUED:  # bounded memory: wait for the oldest batches
            self._settle_one()

    def _write(self, batch: list[tuple[Entry, Packed]], places: list[int]) -> None:
        assert self.pack is not None
        for (e, packed), at in zip(batch, places, strict=True):
            try:
                check(packed, e)
            except IntegrityError as err:
                self.pack.skip(at)
                with self.lock:
                    self.failed = self.failed or IntegrityError(f"{self.what}{self.where} sent a damaged chunk: "
                                                                f"{err}; not stored")
                continue
            self.pack.write(e[0], packed, at)

    def _settle_one(self) -> None:
        future, size = self.pending.popleft()
        self.queued -= size
        future.result()  # a write that failed (a full disk) fails the download here
        self.uncommitted += size
        if self.uncommitted >= PACK_COMMIT and self.pack is not None:
            self.pack.commit()  # a download killed now resumes after these
            self.uncommitted = 0

    def settle(self) -> None:
        """Wait until the chunks taken in so far are written, and recorded in the packs' index."""
        while self.pending:
            self._settle_one()
        if self.pack is not None:
            self.pack.commit()
            self.uncommitted = 0

    def close(self) -> None:
        """Wait for the chunks still being written, record them and make them durable (their pack, then the
        index: ``PackWriter.close``); what came is kept either way."""
        try:
            while self.pending:
                self._settle_one()
        finally:
            self.pool.shutdown()
            if self.pack is not None:
                self.pack.close()

    def check(self) -> None:
        """Raise the first damaged chunk that came, if one did (the others were stored)."""
        if self.failed is not None:
            raise self.failed

    @property
    def done(self) -> bool:
        return self.i == len(self.entries) and not self.buf


class Pieces:
    """A block of a package's archive as pieces of open chunk files or packs, ``(fd, offset, length)`` each, that
    rds-serve hands to sshd with os.sendfile: the bytes never pass through Python (issue 16: reading
    them into a buffer and writing it out cost the upper system a third of a transfer's time).  The
    loose chunks' files it opened are closed by ``close`` (packs by the Reader that opened them)."""

    __slots__ = ("parts", "size", "_fds")

    def __init__(self, parts: list[tuple[int, int, int]], fds: list[int]) -> None:
        self.parts, self._fds = parts, fds
        self.size = sum(n for _, _, n in parts)

    def __len__(self) -> int:
        return self.size

    def read(self) -> bytes:
        """The block's bytes, for a writer that cannot take files."""
        out = bytearray()
        for fd, at, n in self.parts:
            got = os.pread(fd, n, at)
            if len(got) != n:
                raise IntegrityError("a chunk file is shorter than it was a moment ago")
            out += got
        return bytes(out)

    def close(self) -> None:
        for fd in self._fds:
            os.close(fd)
        self._fds = []


class Reader(io.RawIOBase):
    """A package's archive read from its chunks: their packed bytes concatenated, seekable."""

    def __init__(self, store: ChunkStore, entries: Sequence[Entry]) -> None:
        self.store, self.entries = store, list(entries)
        self.starts = [0]
        for e in self.entries:
            self.starts.append(self.starts[-1] + e[2])
        self.where = store.packed([e[0] for e in self.entries])  # the packed ones: one look-up for all
        self.packs: dict[str, tuple[int, int]] = {}  # pack file -> (open file, its size)
        self.pos = 0
        self.i = -1
        self.f: Any = None  # the open file of the current chunk when it is loose (closed after it)
        self.fd = -1  # the file the current chunk is read from
        self.base = 0  # where the current chunk starts in it

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        self.pos = max(0, offset if whence == 0 else self.pos + offset if whence == 1 else self.starts[-1] + offset)
        return self.pos

    def tell(self) -> int:
        return self.pos

    def _open(self, i: int) -> tuple[int, int, bool]:
        """The chunk ``i``: (an open file that holds it, where it starts there, whether the file is its own
        and must be closed after it).  A loose chunk's file is checked to be its manifest's size, a packed
        one to lie within its pack (neither is changed in place: a loose one is written whole under another
        name and renamed; a pack only grows, and no row names bytes not yet written)."""
        name, psize = self.entries[i][0], self.entries[i][2]
        fd = -1
        if name not in self.where:  # looked up in the index at the start: no failed open a packed chunk
            with contextlib.suppress(FileNotFoundError):
                fd = os.open(self.store.file(name), os.O_RDONLY)
        if fd >= 0:
            if os.fstat(fd).st_size != psize:
                os.close(fd)
                raise IntegrityError(f"chunk {name[:16]}... is not the size its manifest says")
            return fd, 0, True
        (pfd, end), (_, offset, size) = self._pack(name, self.where.get(name) or self.store.packed([name]).get(name))
        if size != psize or offset + size > end:
            raise IntegrityError(f"chunk {name[:16]}... is not the size its manifest says, or not within its pack")
        return pfd, offset, False

    def _pack(self, name: str, where: tuple[str, int, int] | None) -> tuple[tuple[int, int],
                                                                           tuple[str, int, int]]:
        """The open pack (file, size: kept while the reader is) that holds the chunk, and where in it; looked
        up once more if the pack went since (compacted: ``ChunkStore._compact``)."""
        for attempt in range(2):
            if where is None:
                break
            if where[0] not in self.packs:
                try:
                    fd = os.open(where[0], os.O_RDONLY)
                except FileNotFoundError:
                    if attempt:
                        raise IntegrityError(f"chunk {name[:16]}...: its pack {os.path.basename(where[0])} "
                                             "is gone") from None
                    where = self.store.packed([name]).get(name)
                    continue
                self.packs[where[0]] = (fd, os.fstat(fd).st_size)
            return self.packs[where[0]], where
        raise IntegrityError(f"chunk {name[:16]}... is missing from the chunk store")

    def readinto(self, b: Any) -> int:
        """Fill ``b`` from as many chunks as it takes (one block of a serve holds many small chunks)."""
        view = memoryview(b).cast("B")
        done = 0
        while done < len(view) and self.pos < self.starts[-1]:
            i = bisect_right(self.starts, self.pos) - 1
            if i != self.i:
                self._close_chunk()
                fd, self.base, own = self._open(i)
                self.f = fd if own else None
                self.i = i
                self.fd = fd
            want = min(len(view) - done, self.starts[i + 1] - self.pos)
            got = os.preadv(self.fd, [view[done:done + want]], self.base + self.pos - self.starts[i])
            if got != want:
                raise IntegrityError(f"chunk {self.entries[i][0][:16]}... is shorter than its manifest says")
            done += want
            self.pos += want
        return done

    def pieces(self, length: int) -> Pieces:
        """The next ``length`` bytes (fewer at the end) as pieces of chunk files and packs, each checked
        (``_open``) before anything of the block is sent."""
        parts: list[tuple[int, int, int]] = []
        fds: list[int] = []
        try:
            while length > 0 and self.pos < self.starts[-1]:
                i = bisect_right(self.starts, self.pos) - 1
                fd, base, own = self._open(i)
                if own:
                    fds.append(fd)
                at = self.pos - self.starts[i]
                n = min(length, self.entries[i][2] - at)
                if parts and not own and parts[-1][0] == fd and parts[-1][1] + parts[-1][2] == base + at:
                    parts[-1] = (fd, parts[-1][1], parts[-1][2] + n)  # the next bytes of the same pack: one piece
                else:
                    parts.append((fd, base + at, n))
                self.pos += n
                length -= n
        except BaseException:
            Pieces(parts, fds).close()
            raise
        return Pieces(parts, fds)

    def _close_chunk(self) -> None:
        if self.f is not None:
            os.close(self.f)
            self.f = None
        self.i = -1

    def close(self) -> None:
        self._close_chunk()
        for fd, _ in self.packs.values():
            os.close(fd)
        self.packs = {}
        super().close()


class Hashing(io.RawIOBase):
    """A reader that hashes what it reads from the start; ``finish`` reads the rest and checks the whole."""

    def __init__(self, raw: Any, sha256: str, size: int, name: str) -> None:
        self.raw, self.want, self.expected, self.name = raw, sha256, size, name
        self.sha = hashlib.sha256()
        self.upto = 0
        self.pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        self.pos = self.raw.seek(offset, whence)
        return self.pos

    def tell(self) -> int:
        return self.pos

    def readinto(self, b: Any) -> int:
        n = int(self.raw.readinto(b))
        if self.pos <= self.upto < self.pos + n:  # only what goes on from what was hashed
            self.sha.update(memoryview(b)[self.upto - self.pos:n])
            self.upto = self.pos + n
        self.pos += n
        return n

    def finish(self) -> None:
        """Hash to the end (what tar did not need to read) and check the whole against the manifest."""
        self.seek(self.upto)
        while self.readinto(bytearray(1 << 20)):
            pass
        if self.upto != self.expected or self.sha.hexdigest() != self.want:
            raise IntegrityError(f"{self.name}: SHA-256 of its chunks, read whole, does not match its manifest; "
                                 "not used")

    def close(self) -> None:
        self.raw.close()
        super().close()


def ranges(entries: Sequence[Entry], lacking: set[str]) -> list[tuple[int, int, list[Entry]]]:
    """The byte ranges of the archive that hold the lacking chunks, adjacent ones joined: (offset, length,
    the chunks in it, each once)."""
    out: list[tuple[int, int, list[Entry]]] = []
    offset = 0
    taken: set[str] = set()
    for e in entries:
        if e[0] in lacking and e[0] not in taken:
            taken.add(e[0])
            if out and out[-1][0] + out[-1][1] == offset:
                start, length, inside = out[-1]
                out[-1] = (start, length + e[2], [*inside, e])
            else:
                out.append((offset, e[2], [e]))
        offset += e[2]
    return out


def write_list(path: Path, entries: Sequence[Entry]) -> None:
    """Record the chunks a download in progress needs, so that ``collect`` keeps them meanwhile."""
    fsutil.atomic_write(path, json.dumps([e[0] for e in entries]).encode())


def read_list(path: Path) -> list[str]:
    """The names a list holds: a download's (JSON) or a packing's (one a line, as it goes)."""
    try:
        text = path.read_text()
    except (OSError, ValueError):
        return []
    try:
        names = json.loads(text)
    except ValueError:
        return text.split()
    return [n for n in names if isinstance(n, str)] if isinstance(names, list) else []
