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
home's chunk store ``RDS/.chunks/XX/SHA256`` whatever packages and versions
use it.  The chunk files of a package, concatenated in the manifest's order,
form one valid gzip stream: the package's archive (``payload.tgz`` of the old
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

Chunk files are written to a temporary name, flushed and renamed: a chunk is
whole or absent.  They are removed only by ``collect`` (after packages
leave), which keeps every chunk a package here, a download in progress or a
package being made (their lists, ``RDS/.partial/*.chunks``) still names.
"""

from __future__ import annotations

import collections
import contextlib
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
WRITERS = 4  # threads creating chunk files as they come (Receiver): they wait on the disk, not the CPU
QUEUED = 64 << 20  # packed bytes a Receiver holds, verified, before it waits for its writers

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


_WRITEBACK: list[Any] = []  # libc's sync_file_range, once looked up (None where there is none)
# chunks this large have their writing started as they are stored; smaller ones are left to ``flush``
# (a disk request each for thousands of small chunks cost more CPU than the final syncfs saved)
WRITEBACK_FROM = 128 << 10


def _start_writeback(fd: int) -> None:
    """Have the disk start writing a chunk just written, without waiting for it (sync_file_range with
    SYNC_FILE_RANGE_WRITE): the one ``flush`` before a package is committed then finds little left to
    write (issue 16: 1.5 GiB of chunks left 0.87 s of writing to the final syncfs, 0.02 s so)."""
    if not _WRITEBACK:
        import ctypes  # only when chunks are written

        call = getattr(ctypes.CDLL(None, use_errno=True), "sync_file_range", None)
        if call is not None:
            call.argtypes = [ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint]
        _WRITEBACK.append(call)
    if _WRITEBACK[0] is not None:
        _WRITEBACK[0](fd, 0, 0, 2)  # SYNC_FILE_RANGE_WRITE; a failure leaves the work to ``flush``


class ChunkStore:
    """The chunks of one home's package storehouse: ``RDS/.chunks/XX/SHA256``, each a gzip member."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._root = str(root)
        self._fans: set[str] = set()

    def path(self, name: str) -> Path:
        return self.root / name[:2] / name

    def make(self) -> None:
        """Make the store's directory, if it is not there (``_make_store``)."""
        _make_store(self._root)

    def file(self, name: str) -> str:
        """``path`` as a string, for the calls made once a chunk (pathlib costs more than the stat)."""
        return f"{self._root}/{name[:2]}/{name}"

    def has(self, entry: Entry) -> bool:
        try:
            return os.stat(self.file(entry[0])).st_size == entry[2]
        except FileNotFoundError:
            return False

    def lacking(self, entries: Iterable[Entry]) -> list[Entry]:
        """The entries whose chunk is not here (each once, in order)."""
        seen: set[str] = set()
        out = []
        for e in entries:
            if e[0] not in seen and not self.has(e):
                out.append(e)
            seen.add(e[0])
        return out

    def put(self, name: str, packed: Packed) -> None:
        """Store a chunk already verified: written under a temporary name and renamed, whole or absent.

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

    def flush(self) -> None:
        """Flush the chunk store's file system to disk (syncfs), before a package that names new chunks is
        committed: one call for all of them."""
        if not self.root.exists():
            return
        import ctypes  # only when chunks were stored

        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            syncfs = getattr(ctypes.CDLL(None, use_errno=True), "syncfs", None)
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
                n += 1
        return n

    def read(self, name: str) -> bytes:
        return self.path(name).read_bytes()

    def total(self, entries: Iterable[Entry]) -> int:
        """The packed bytes of these chunks, each counted once."""
        return sum({e[0]: e[2] for e in entries}.values())

    def names(self) -> Iterator[tuple[str, Path]]:
        with contextlib.suppress(FileNotFoundError), os.scandir(self.root) as fans:
            for fan in list(fans):
                with contextlib.suppress(FileNotFoundError), os.scandir(fan.path) as it:
                    for e in it:
                        yield e.name, Path(e.path)

    def collect(self, live: set[str], again: Callable[[], set[str]]) -> tuple[int, int]:
        """Delete the chunks no name in ``live`` keeps, and what killed writers left; ``again`` names the
        live ones once more just before (a package being made may have named one meanwhile).  Returns
        how many chunks went and their packed bytes."""
        doomed = [(name, path) for name, path in self.names() if name not in live]
        if not doomed:
            self._prune()
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
        self._prune()
        return n, freed

    def _prune(self) -> None:
        """Remove the fan-out directories left empty, and the store itself when it holds nothing."""
        with contextlib.suppress(FileNotFoundError), os.scandir(self.root) as fans:
            for fan in list(fans):
                with contextlib.suppress(OSError):  # not empty: kept
                    os.rmdir(fan.path)
                    self._fans.discard(fan.name)
        with contextlib.suppress(OSError):
            os.rmdir(self.root)

    def clear(self) -> None:
        fsutil.remove_tree(self.root) if self.root.exists() else None


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


class Receiver:
    """A write-only file that takes packed chunks, back to back, as ``entries`` lists them: each is verified
    (``check``) and stored as soon as it is whole, so a cut loses at most the one that was coming.

    The thread that reads the link only cuts the stream into chunks and hands them, a write's worth at a
    time, to WRITERS threads, which verify each chunk and store it if it is good: creating a file waits
    on the file system (0.05 to 1 ms a file, far more on an ext4 without a journal just after many files
    were deleted), and hashing in the reading thread made it give up the GIL at each chunk and wait to
    get it back from paramiko's thread (issue 16: 3,300 small chunks cost a first transfer 0.9 s of
    waiting).  A chunk whose manifest gives its packed SHA-256 is hashed, never decompressed; nothing
    is stored before it is verified."""

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
        self.pending.append((self.pool.submit(self._write, batch), size))
        self.queued += size
        while self.queued > QUEUED:  # bounded memory: wait for the oldest batches
            self._settle_one()

    def _write(self, batch: list[tuple[Entry, Packed]]) -> None:
        for e, packed in batch:
            try:
                check(packed, e)
            except IntegrityError as err:
                with self.lock:
                    self.failed = self.failed or IntegrityError(f"{self.what}{self.where} sent a damaged chunk: "
                                                                f"{err}; not stored")
                continue
            self.store.put(e[0], packed)

    def _settle_one(self) -> None:
        future, size = self.pending.popleft()
        self.queued -= size
        future.result()  # a write that failed (a full disk) fails the download here

    def settle(self) -> None:
        """Wait until the chunks taken in so far are written."""
        while self.pending:
            self._settle_one()

    def close(self) -> None:
        """Wait for the chunks still being written and flush them to disk (one syncfs); what came is kept
        either way."""
        try:
            self.settle()
        finally:
            self.pool.shutdown()
        self.store.flush()

    def check(self) -> None:
        """Raise the first damaged chunk that came, if one did (the others were stored)."""
        if self.failed is not None:
            raise self.failed

    @property
    def done(self) -> bool:
        return self.i == len(self.entries) and not self.buf


class Pieces:
    """A block of a package's archive as pieces of open chunk files, ``(fd, offset, length)`` each, that
    rds-serve hands to sshd with os.sendfile: the bytes never pass through Python (issue 16: reading
    them into a buffer and writing it out cost the upper system a third of a transfer's time).  The
    files it opened are closed by ``close``."""

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
        self.pos = 0
        self.i = -1
        self.f: Any = None

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        self.pos = max(0, offset if whence == 0 else self.pos + offset if whence == 1 else self.starts[-1] + offset)
        return self.pos

    def tell(self) -> int:
        return self.pos

    def readinto(self, b: Any) -> int:
        """Fill ``b`` from as many chunks as it takes (one block of a serve holds many small chunks)."""
        view = memoryview(b).cast("B")
        done = 0
        while done < len(view) and self.pos < self.starts[-1]:
            i = bisect_right(self.starts, self.pos) - 1
            if i != self.i:
                self._close_chunk()
                try:
                    self.f = os.open(self.store.file(self.entries[i][0]), os.O_RDONLY)
                except FileNotFoundError:
                    raise IntegrityError(f"chunk {self.entries[i][0][:16]}... is missing from the chunk "
                                         "store") from None
                self.i = i
            want = min(len(view) - done, self.starts[i + 1] - self.pos)
            got = os.preadv(self.f, [view[done:done + want]], self.pos - self.starts[i])
            if got != want:
                raise IntegrityError(f"chunk {self.entries[i][0][:16]}... is shorter than its manifest says")
            done += want
            self.pos += want
        return done

    def pieces(self, length: int) -> Pieces:
        """The next ``length`` bytes (fewer at the end) as pieces of chunk files, each file checked to be
        its manifest's size before anything of the block is sent (a chunk file is never changed in place:
        it is written whole under another name and renamed, so it stays that size while it is open)."""
        parts: list[tuple[int, int, int]] = []
        fds: list[int] = []
        try:
            while length > 0 and self.pos < self.starts[-1]:
                i = bisect_right(self.starts, self.pos) - 1
                name, psize = self.entries[i][0], self.entries[i][2]
                try:
                    fd = os.open(self.store.file(name), os.O_RDONLY)
                except FileNotFoundError:
                    raise IntegrityError(f"chunk {name[:16]}... is missing from the chunk store") from None
                fds.append(fd)
                if os.fstat(fd).st_size != psize:
                    raise IntegrityError(f"chunk {name[:16]}... is not the size its manifest says")
                at = self.pos - self.starts[i]
                n = min(length, psize - at)
                parts.append((fd, at, n))
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
