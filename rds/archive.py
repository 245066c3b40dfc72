"""Package archives: packing, the checks every member must pass, and extraction.

Nothing read from an archive is trusted.  ``check_member`` refuses absolute
paths, ``..``, links pointing out and device files, more strictly than
tarfile's ``data`` filter; ``extract`` checks the whole archive before it
writes anything.  Whatever tarfile, gzip and zlib raise on a damaged archive
becomes one ``UnsafeArchive`` (``reading``), whose message is one line.
"""

from __future__ import annotations

import contextlib
import copy
import gzip
import tarfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath
from typing import Any

from rds.errors import InputError, UnsafeArchive


def unreadable(name: object, e: BaseException) -> UnsafeArchive:
    """The error for an archive that cannot be read; tarfile's own may run over several lines."""
    why = (str(e).splitlines() or [type(e).__name__])[0].rstrip(":")
    return UnsafeArchive(f"{name}: not a readable archive ({why})")


@contextlib.contextmanager
def reading(name: object) -> Iterator[None]:
    """Turn what a damaged archive raises while it is read into UnsafeArchive naming ``name``."""
    try:
        yield
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as e:
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


def check_payload(path: Path, name: str) -> None:
    """A package archive's own members must be extractable safely (as the install checks them)."""
    with reading(name), tarfile.open(path, "r:*") as tar:
        for member in tar:
            check_member(member, "/staging")


def extract(archive: Path, dest: Path) -> int:
    """Extract ``archive`` into ``dest`` after checking every member; returns the member count."""
    with reading(archive.name), tarfile.open(archive, "r:*") as tar:
        members = tar.getmembers()
        links = {m.name.rstrip("/").removeprefix("./") for m in members if m.issym() or m.islnk()}
        before: set[str] = set()  # tarfile finds a hard link's target only among the members before it
        for m in members:
            check_member(m, str(dest))
            parents = Path(m.name.removeprefix("./")).parents
            if any(str(p) in links for p in parents if str(p) != "."):
                raise UnsafeArchive(f"member {m.name!r} lies under a link of the archive")
            if m.islnk() and m.linkname.removeprefix("./") not in before:
                raise UnsafeArchive(f"member {m.name!r} is a hard link to {m.linkname!r}, "
                                    f"not an earlier member of the archive")
            before.add(m.name.removeprefix("./"))
        dest.mkdir(parents=True, exist_ok=True)
        if HAS_FILTERS:
            tar.extractall(dest, members=members, filter=lambda m, p: check_member(m, p))
        else:
            tar.extractall(dest, members=[check_member(m, str(dest)) for m in members], numeric_owner=True)
    return len(members)


class _CountingTar(tarfile.TarFile):
    """A TarFile that tells ``read`` how many bytes of each member's file it read (packaging's progress)."""

    read: Callable[[int], None] | None = None

    def addfile(self, tarinfo: tarfile.TarInfo, fileobj: Any = None) -> None:
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


def pack(source: Path, out: Any, read: Callable[[int], None] | None = None) -> None:
    """Write the directory ``source`` to the file ``out`` as a gzip'd tar whose members root owns;
    ``read`` hears how many bytes of the source were read, as they are."""
    with _CountingTar.open(fileobj=out, mode="w:gz", compresslevel=6) as tar:
        tar.read = read
        try:
            tar.add(source, arcname=".", filter=_packing_filter)
        except PermissionError as e:
            raise InputError(f"{e.filename}: cannot read ({e.strerror})") from None


def _packing_filter(member: tarfile.TarInfo) -> tarfile.TarInfo:
    if member.isdev() or member.isfifo():
        raise InputError(f"{member.name}: device and special files cannot be packaged")
    if member.issym() and (member.linkname.startswith("/") or _escapes(member.name, member.linkname)):
        raise InputError(f"{member.name}: link points outside the source directory ({member.linkname})")
    member.uid = member.gid = 0
    member.uname = member.gname = "root"
    return member
