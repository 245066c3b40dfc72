"""Package archives: packing, the checks every member must pass, and extraction.

Nothing read from an archive is trusted.  ``scan`` reads every header before
anything is written and refuses:

- a member with an absolute path or ``..``, a device or special file, a
  hard link to anything but an earlier member, a member under a link;
- a symbolic link that leads out of the install directory once the whole
  archive is in place: each link is resolved against the archive's final
  tree, following the archive's other links as the kernel would (so
  ``e -> d/d/d/../../../target`` is refused when ``d -> .`` comes later);
- more bytes than the manifest's unpacked size (the tar stream, recorded at
  ``rdsft -c``), or a compression ratio over MAX_RATIO (the unpacked size
  over the archive's); a package made before the unpacked size was recorded
  is bounded by the ratio alone.  The stream is counted as it is
  decompressed, so a bomb stops at the limit, and member sizes are summed
  too (a sparse member could otherwise grow past its bytes in the stream).

``extract`` then writes into a fresh directory (owner-only while it fills;
inside the install directory when that exists, so that it is on the same
file system even when the install directory is a mount point, else beside
it) and, only once that is complete, moves its entries into place, each by
one rename; a refused or failed extraction
removes that directory, leaving the previous install untouched and nothing
half-written.  Whatever tarfile, gzip and zlib raise on a damaged archive
becomes one ``UnsafeArchive`` (``reading``), whose message is one line.
"""

from __future__ import annotations

import bz2
import contextlib
import copy
import gzip
import io
import lzma
import os
import shutil
import tarfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO, Protocol

from rds.errors import InputError, UnsafeArchive

# The largest compression ratio (unpacked over packed size) a package may have: gzip packs text
# 3-10 times, and nothing a package legitimately holds comes near this; a bomb is over 1000.
MAX_RATIO = 200
MAX_LINKS = 40  # links followed to resolve one path, as Linux's ELOOP


def unreadable(name: object, e: BaseException) -> UnsafeArchive:
    """The error for an archive that cannot be read; tarfile's own may run over several lines."""
    why = (str(e).splitlines() or [type(e).__name__])[0].rstrip(":")
    return UnsafeArchive(f"{name}: not a readable archive ({why})")


@contextlib.contextmanager
def reading(name: object) -> Iterator[None]:
    """Turn what a damaged archive raises while it is read into UnsafeArchive naming ``name``."""
    try:
        yield
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile, lzma.LZMAError) as e:
        raise unreadable(name, e) from None


def check_member(member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo:
    """Refuse what must not be extracted; stricter than tarfile's ``data`` filter."""
    name = member.name
    if name.startswith("/") or ".." in PurePosixPath(name).parts:
        raise UnsafeArchive(f"member {name!r} is outside the install directory")
    if member.isdev() or member.isfifo() or not (member.isfile() or member.isdir() or member.issym() or member.islnk()):
        raise UnsafeArchive(f"member {name!r} is a device or special file")
    if member.issym() and (member.linkname.startswith("/") or _escapes(name, member.linkname)):
        raise UnsafeArchive(f"member {name!r} is a link pointing outside the install directory ({member.linkname})")
    if not HAS_FILTERS:
        return _data_filter_311(member)
    try:
        return tarfile.data_filter(member, dest)
    except tarfile.FilterError as e:
        raise UnsafeArchive(f"member {name!r} refused: {e}") from None


# Debian 12's python3 (3.11.2) predates tarfile's extraction filters (PEP 706, 3.11.4): there the
# checks above do their refusing, and this does what the ``data`` filter does to the member itself.
HAS_FILTERS = hasattr(tarfile, "data_filter")


def _data_filter_311(member: tarfile.TarInfo) -> tarfile.TarInfo:
    m = copy.copy(member)
    if m.isfile() or m.islnk():
        m.mode = (m.mode & 0o755) | 0o600  # no setuid/setgid/sticky, no group or other write
        if not m.mode & 0o100:
            m.mode &= ~0o111
    else:
        m.mode = 0o755
    m.uid = m.gid = 0  # owned by root, as rdsft -c packs it, whoever the archive names
    m.uname = m.gname = "root"
    return m


def _escapes(name: str, linkname: str) -> bool:
    depth = len(PurePosixPath(name).parent.parts)
    for part in PurePosixPath(linkname).parts:
        if part == "..":
            depth -= 1
            if depth < 0:
                return True
        elif part != ".":
            depth += 1
    return False


class _Bounded(io.RawIOBase):
    """The decompressed tar stream, refused once it passes ``limit`` bytes."""

    def __init__(self, raw: BinaryIO, limit: int, name: str) -> None:
        self.raw, self.limit, self.name, self.pos = raw, limit, name, 0

    def _check(self) -> None:
        if self.pos > self.limit:
            raise UnsafeArchive(f"{self.name}: expands past {self.limit} bytes (its unpacked size, or "
                                f"{MAX_RATIO} times its own size); refused")

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        data = self.raw.read(min(len(b), self.limit + 1 - self.pos))
        b[:len(data)] = data
        self.pos += len(data)
        self._check()
        return len(data)

    def seek(self, offset: int, whence: int = 0) -> int:
        if whence in (0, 1) and (offset if whence == 0 else self.pos + offset) > self.limit:
            self.pos = self.limit + 1  # refused before decompressing up to there
            self._check()
        self.pos = self.raw.seek(offset, whence)
        self._check()
        return self.pos

    def tell(self) -> int:
        return self.pos


class _Members(io.RawIOBase):
    """gzip members back to back (a chunked package's archive: one member a chunk), decompressed a MiB
    of input at a time by zlib, which checks each member's CRC and length.  gzip.GzipFile reads 8 KiB at
    a time in Python and seeks forward the same way: a third of an install's time on a large package."""

    IN = 1 << 20

    def __init__(self, raw: BinaryIO) -> None:
        self.raw = raw
        self._rewind()

    def _rewind(self) -> None:
        self.raw.seek(0)
        self.d = zlib.decompressobj(31)
        self.tail = b""  # input not yet given to the decompressor
        self.pending = memoryview(b"")
        self.pos = 0
        self.started = False  # bytes of the current member were given

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def _fill(self, most: int) -> bool:
        while not self.pending:
            if self.d.eof:
                self.tail = self.d.unused_data or self.tail
                self.d = zlib.decompressobj(31)
                self.started = False
            if not self.tail:
                self.tail = self.raw.read(self.IN)
                if not self.tail:
                    if self.started:
                        raise EOFError("Compressed file ended before the end-of-stream marker was reached")
                    return False
            self.started = True
            self.pending = memoryview(self.d.decompress(self.tail, max(most, 1 << 16)))
            self.tail = self.d.unconsumed_tail
        return True

    def readinto(self, b: Any) -> int:
        if not self._fill(len(b)):
            return 0
        n = min(len(b), len(self.pending))
        b[:n] = self.pending[:n]
        self.pending = self.pending[n:]
        self.pos += n
        return n

    def seek(self, offset: int, whence: int = 0) -> int:
        target = offset if whence == 0 else self.pos + offset if whence == 1 else -1
        if target < 0:
            raise io.UnsupportedOperation("seek from the end of a compressed stream")
        if target < self.pos:
            self._rewind()
        while self.pos < target:
            if not self._fill(min(target - self.pos, 1 << 20)):
                break
            n = min(target - self.pos, len(self.pending))
            self.pending = self.pending[n:]
            self.pos += n
        return self.pos

    def tell(self) -> int:
        return self.pos


def _decompressed(f: BinaryIO, members: bool = False) -> BinaryIO:
    magic = f.read(6)
    f.seek(0)
    if magic.startswith(b"\x1f\x8b") and members:
        return _Members(f)  # type: ignore[return-value]
    if magic.startswith(b"\x1f\x8b"):
        return gzip.GzipFile(fileobj=f, mode="rb")  # type: ignore[return-value]
    if magic.startswith(b"BZh"):
        return bz2.BZ2File(f)  # type: ignore[return-value]
    if magic.startswith(b"\xfd7zXZ\x00"):
        return lzma.LZMAFile(f)  # type: ignore[return-value]
    return f


class Source(Protocol):
    """An archive that is not one file: a chunked package's chunks, read as one (rds.storehouse)."""

    name: str
    size: int

    def open(self) -> Any: ...  # a binary file of the archive's bytes, hashed as it is read

    def finish(self, f: Any) -> None: ...  # the whole was read and matches the manifest, or IntegrityError


def _size(src: Path | Source) -> int:
    return src.stat().st_size if isinstance(src, Path) else src.size


@contextlib.contextmanager
def _open(path: Path | Source, unpacked: int | None) -> Iterator[tarfile.TarFile]:
    """The archive at ``path``, its decompressed stream bounded (see the module).  A Source is checked
    whole as it is read, before the block ends (its rest read once tar has what it needs)."""
    packed = _size(path)
    bound = max(packed, 1 << 20) * MAX_RATIO  # a small archive may hold 1 MiB of headers and padding
    if unpacked is not None and unpacked > bound:
        raise UnsafeArchive(f"{path.name}: unpacks to {unpacked} bytes from {packed}, a compression ratio over "
                            f"{MAX_RATIO}; refused")
    limit = bound if unpacked is None else unpacked
    with open(path, "rb") if isinstance(path, Path) else path.open() as f, \
            _decompressed(f, members=not isinstance(path, Path)) as stream:
        bounded = io.BufferedReader(_Bounded(stream, limit, path.name), 1 << 16)
        with tarfile.open(fileobj=bounded, mode="r:") as tar:  # type: ignore[call-overload]
            yield tar
        if not isinstance(path, Path):
            path.finish(f)


def scan(path: Path | Source, name: str, unpacked: int | None = None) -> list[tarfile.TarInfo]:
    """Every member of the archive, once the whole archive passed the checks of the module's docstring."""
    with reading(name), _open(path, unpacked) as tar:
        members = tar.getmembers()
        limit = (unpacked if unpacked is not None else max(_size(path), 1 << 20) * MAX_RATIO)
    if sum(m.size for m in members if m.isfile()) > limit:
        raise UnsafeArchive(f"{name}: its members hold more than {limit} bytes; refused")
    tree = _Tree(members)
    before: set[str] = set()  # tarfile finds a hard link's target only among the members before it
    for m in members:
        check_member(m, "/staging")
        rel = _norm(m.name)
        if any(p in tree.links for p in _parents(rel)):
            raise UnsafeArchive(f"member {m.name!r} lies under a link of the archive")
        if m.islnk() and _norm(m.linkname) not in before:
            raise UnsafeArchive(f"member {m.name!r} is a hard link to {m.linkname!r}, "
                                f"not an earlier member of the archive")
        if m.issym():
            tree.check_link(rel, m)
        before.add(rel)
    return members


def _norm(name: str) -> str:
    parts = [p for p in PurePosixPath(name).parts if p != "."]
    return "/".join(parts)


def _parents(rel: str) -> list[str]:
    parts = rel.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


class _Tree:
    """The archive's final tree: where each of its symbolic links leads once every member is in place."""

    def __init__(self, members: list[tarfile.TarInfo]) -> None:
        self.links: dict[str, str] = {}
        for m in members:  # a later member of the same name replaces an earlier one, as extraction does
            rel = _norm(m.name)
            if m.issym():
                self.links[rel] = m.linkname
            else:
                self.links.pop(rel, None)

    def check_link(self, rel: str, m: tarfile.TarInfo) -> None:
        here = rel.split("/")[:-1]
        if not self._inside(here, m.linkname, 0):
            raise UnsafeArchive(f"member {m.name!r} is a link leading outside the install directory "
                                f"once the archive is in place ({m.linkname})")

    def _inside(self, at: list[str], target: str, followed: int) -> bool:
        """Whether ``target``, seen from the directory ``at``, stays inside; links of the tree are followed."""
        if target.startswith("/"):
            return False
        path = list(at)
        parts = [p for p in target.split("/") if p not in ("", ".")]
        for i, part in enumerate(parts):
            if part == "..":
                if not path:
                    return False
                path.pop()
                continue
            path.append(part)
            link = self.links.get("/".join(path))
            if link is not None:
                followed += 1
                if followed > MAX_LINKS:
                    return False  # a loop: ELOOP at run time, refused here
                path.pop()
                rest = "/".join([link, *parts[i + 1:]])
                return self._inside(path, rest, followed)
        return True


def check_payload(path: Path | Source, name: str, unpacked: int | None = None) -> None:
    """A package archive's own members must be extractable safely (as the install checks them)."""
    scan(path, name, unpacked)


def extract(archive: Path | Source, dest: Path, unpacked: int | None = None) -> int:
    """Extract ``archive`` into ``dest`` after checking it whole; returns the member count.

    A Source (a chunked package) is hashed as it is scanned: the whole is
    verified end to end before anything is written.

    Written into a fresh directory beside ``dest`` first, moved into place
    only when complete (see the module's docstring).
    """
    members = scan(archive, archive.name, unpacked)
    dest.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(dest)
    # on the file system of what it replaces, so that each move is a rename: inside an install
    # directory that exists (it may be a mount point), else beside it
    fresh = dest / f"{FRESH}{os.getpid()}" if dest.is_dir() else dest.parent / f"{FRESH}{os.getpid()}-{dest.name}"
    fresh.mkdir(mode=0o700)
    try:
        with reading(archive.name), _open(archive, unpacked) as tar:
            if HAS_FILTERS:
                tar.extractall(fresh, members=members, filter=lambda m, p: check_member(m, p))
            else:
                tar.extractall(fresh, members=[check_member(m, str(fresh)) for m in members], numeric_owner=True)
        if not any(m.isdir() and _norm(m.name) == "" for m in members):
            fresh.chmod(0o755)  # the archive does not say: as a new directory would be
        _conflicts(fresh, dest)
        _move(fresh, dest)
    finally:
        if fresh.exists():
            shutil.rmtree(fresh, ignore_errors=True)
    return len(members)


FRESH = ".rds-new-"  # a fresh directory being filled: .rds-new-PID-NAME beside the install directory


def _remove_stale(dest: Path) -> None:
    """Remove what a killed extraction into ``dest`` left."""
    inside = dest.glob(f"{FRESH}*") if dest.is_dir() else iter(())
    for stale in [*dest.parent.glob(f"{FRESH}*-{dest.name}"), *inside]:
        pid = stale.name[len(FRESH):].split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _conflicts(fresh: Path, dest: Path) -> None:
    """Refuse, before anything moves, what the install directory holds in the way: a link or a file
    where the package has a directory (it would be written through or lost), a directory where it
    has a file."""
    if not dest.is_symlink() and not dest.exists():
        return
    if not dest.is_dir():  # the install directory itself may be a link to one, the administrator's choice
        raise UnsafeArchive(f"{dest}: not a directory; not installed")
    with os.scandir(fresh) as entries:
        found = list(entries)
    for entry in found:
        there = dest / entry.name
        if not there.is_symlink() and not there.exists():
            continue
        if entry.is_dir(follow_symlinks=False):
            if there.is_symlink() or not there.is_dir():
                raise UnsafeArchive(f"{there}: the package has a directory here, the install directory a "
                                    f"link or a file; not installed")
            _conflicts(Path(entry.path), there)
        elif there.is_dir() and not there.is_symlink():
            raise UnsafeArchive(f"{there}: the package has a file here, the install directory a directory; "
                                f"not installed")


def _move(fresh: Path, dest: Path) -> None:
    """Move the complete extraction into place, each entry by one rename."""
    if not dest.exists():
        os.rename(fresh, dest)
        return
    with os.scandir(fresh) as entries:
        found = list(entries)
    for entry in found:
        there = dest / entry.name
        if entry.is_dir(follow_symlinks=False) and there.is_dir() and not there.is_symlink():
            _move(Path(entry.path), there)
        else:
            os.replace(entry.path, there)


def pack(source: Path, out: Any, read: Callable[[int], None] | None = None, gz: bool = True) -> int:
    """Write the directory ``source`` to the file ``out`` as a gzip'd tar (``gz``; else the bare tar
    stream, which rds.chunks cuts and compresses) whose members root owns, in name order (so that an
    unchanged tree packs the same); ``read`` hears how many bytes of the source were read, as they
    are.  Returns the unpacked size (the tar stream's bytes), which the manifest records."""
    with gzip.GzipFile(fileobj=out, mode="wb", compresslevel=6) if gz else contextlib.nullcontext(out) as z:
        counted = _CountingWriter(z)
        with _CountingTar.open(fileobj=counted, mode="w") as tar:  # type: ignore[call-overload]
            tar.read = read
            tar.cuts = out if hasattr(out, "cut_around") else None
            try:
                tar.add(source, arcname=".", filter=_packing_filter)
            except PermissionError as e:
                raise InputError(f"{e.filename}: cannot read ({e.strerror})") from None
            if tar.cuts is not None:
                tar.cuts.cut_at(tar.offset)  # the last members end where the end-of-archive blocks start
    return counted.size


class _CountingTar(tarfile.TarFile):
    """A TarFile that tells ``read`` how many bytes of each member's file it read (packaging's progress)."""

    read: Callable[[int], None] | None = None
    cuts: Any = None  # a rds.chunks.Packer: told where members start and end

    def addfile(self, tarinfo: tarfile.TarInfo, fileobj: Any = None) -> None:
        if self.cuts is not None:
            start = self.offset + len(tarinfo.tobuf(self.format, self.encoding, self.errors))
            if tarinfo.isdir():  # its header alone (its mtime changes what follows in no other chunk), then
                self.cuts.cut_at(self.offset)  # its small files chunked together, apart from the rest
                self.cuts.cut_at(start)
            elif tarinfo.isreg() and tarinfo.size >= self.cuts.MIN:
                self.cuts.cut_around(start, start + tarinfo.size)
        if fileobj is not None and self.read is not None:
            fileobj = _Counting(fileobj, self.read)
        super().addfile(tarinfo, fileobj)


class _Counting:
    def __init__(self, raw: Any, read: Callable[[int], None]) -> None:
        self.raw, self.count = raw, read

    def read(self, n: int = -1) -> bytes:
        data: bytes = self.raw.read(n)
        self.count(len(data))
        return data


class _CountingWriter:
    """A file that counts what is written through it (the unpacked size)."""

    def __init__(self, out: Any) -> None:
        self.out, self.size = out, 0

    def write(self, data: bytes) -> int:
        self.size += len(data)
        return int(self.out.write(data))

    def tell(self) -> int:
        return self.size


def _packing_filter(member: tarfile.TarInfo) -> tarfile.TarInfo:
    if member.isdev() or member.isfifo():
        raise InputError(f"{member.name}: device and special files cannot be packaged")
    if member.issym() and (member.linkname.startswith("/") or _escapes(member.name, member.linkname)):
        raise InputError(f"{member.name}: link points outside the source directory ({member.linkname})")
    member.uid = member.gid = 0
    member.uname = member.gname = "root"
    return member
