"""Staging: packages carried by hand (seed 002's manual update, the CD).

``export`` copies packages out of a storehouse (the managing server's, usually)
into a directory or a tar archive (``.tar``, ``.tar.gz``, ``.tgz``); ``stage``
takes them from one into this home's storehouse, whatever its caching policy.
Both use the storehouse's own layout, one directory a package::

    C.AB.APP.0100.0000/manifest.json
    C.AB.APP.0100.0000/payload.tgz

Nothing from the medium is trusted: an archive may hold only those regular
files (anything else, a link, a device, a path outside, rejects the whole
archive before anything is staged); each payload is copied into a temporary
file while it is hashed, and must have the manifest's size and SHA-256, and
its own members must pass the install's checks (rds.archive).  Every
manifest must carry the managing server's signature (rds.trust), or the
whole medium is refused before anything is staged.  A package is
added under its fetch lock (``Storehouse.fetch_lock``) with the storehouse's
atomic commit: it appears whole or not at all.

Staging renews a package's storage period (rds.cleanup's retention counts
from when a package was stored): a new or replaced copy is stored now, and
a package already here, found intact, is "unchanged" and renewed all the
same, so a SNEAKERNET relay whose media come regularly keeps what they carry.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import re
import shutil
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from rds import archive, chunks, fsutil, progress, trust
from rds.errors import InputError, IntegrityError, RdsError, UnsafeArchive
from rds.home import Home
from rds.packages import Manifest, PackageId
from rds.storehouse import MANIFEST, PAYLOAD, Storehouse

ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz")
MANIFEST_MAX = 1 << 20
_MEMBER = re.compile(r"(?:\./)?([^/]+)(?:/(manifest\.json|payload\.tgz|chunks\.json|chunks\.bin))?/?")
CHUNK_LIST, CHUNKS = "chunks.json", "chunks.bin"  # a medium that carries only the chunks a target lacks


def is_archive(path: Path) -> bool:
    return path.name.endswith(ARCHIVE_SUFFIXES)


@dataclasses.dataclass(frozen=True)
class Outcome:
    package: str
    action: str  # exported, staged, replaced, unchanged, rejected
    message: str = ""
    size: int = 0

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# -- export -------------------------------------------------------------------------------------------

def _select(store: Storehouse, only: list[PackageId] | None) -> list[Manifest]:
    if not only:
        found = store.list()
        if not found:
            raise InputError(f"{store.root}: no packages to export")
        return found
    out = []
    for pid in only:
        m = store.get(pid)
        if m is None:
            raise InputError(f"unknown package {pid} (not in {store.root})")
        out.append(m)
    return out


def export(store: Storehouse, dest: Path, only: list[PackageId] | None = None,
           sign: Callable[[Manifest], Manifest] | None = None, have: set[str] | None = None) -> list[Outcome]:
    """Copy packages (all, or ``only``) to a directory or an archive; each is verified first, and its
    manifest signed on the way out by ``sign`` (the managing server's, which signs what it hands out).
    ``have``: the chunks the target storehouse holds; a chunked package then goes as its manifest and
    only the chunks it lacks (``chunks.json`` names them, ``chunks.bin`` holds them back to back)."""
    manifests = _select(store, only)
    for m in manifests:
        store.verify(m, full=have is not None)  # never put a damaged copy (or chunk) on the medium
    manifests = [sign(m) if sign is not None else m for m in manifests]
    if have is not None:
        if is_archive(dest) and len(manifests) > 1:
            raise InputError(f"{dest}: an archive of missing chunks holds one package: give it with -r, or "
                             "export to a directory")
        return [_export_chunks(store, m, dest, have) if m.chunked else
                _export_one(store, m, dest) for m in manifests]
    if is_archive(dest):
        mode = "w:gz" if dest.name.endswith((".gz", ".tgz")) else "w"
        shown = progress.Progress(f"exporting to {dest}", sum(m.size for m in manifests))
        with fsutil.atomic_writer(dest) as raw, tarfile.open(fileobj=raw, mode=mode) as tar, shown:  # type: ignore[call-overload]
            for m in manifests:
                for name in (MANIFEST, PAYLOAD):
                    info = tar.gettarinfo(str(store.dir(m.id) / MANIFEST), arcname=f"{m.id}/{name}")
                    info.uid = info.gid = 0
                    info.uname = info.gname = "root"
                    if name == MANIFEST:
                        data = _manifest_bytes(m)
                        info.size = len(data)
                        tar.addfile(info, io.BytesIO(data))
                        continue
                    info.size = m.size  # a chunked package's chunks, concatenated: its archive
                    with store.open_archive(m) as f:
                        tar.addfile(info, progress.Reader(f, shown))
    else:
        dest.mkdir(parents=True, exist_ok=True)
        with progress.Progress(f"exporting to {dest}", sum(m.size for m in manifests)) as shown:
            for m in manifests:
                _export_dir(store, m, dest, shown)
    return [Outcome(str(m.id), "exported", str(dest), m.size) for m in manifests]


def _export_one(store: Storehouse, m: Manifest, dest: Path) -> Outcome:
    return export(store, dest, [m.id], sign=lambda _: m)[0]


def _export_chunks(store: Storehouse, m: Manifest, dest: Path, have: set[str]) -> Outcome:
    """Write ``m`` and the chunks of it that ``have`` lacks, as a directory's package or into an archive."""
    carried = [e for e in {e[0]: e for e in m.chunks}.values() if e[0] not in have]
    listing = json.dumps([e[0] for e in carried]).encode()
    size = sum(e[2] for e in carried)
    if is_archive(dest):
        if dest.exists():
            raise InputError(f"{dest}: exists; a medium of missing chunks is written as a new archive")
        mode = "w:gz" if dest.name.endswith((".gz", ".tgz")) else "w"
        with fsutil.atomic_writer(dest) as raw, tarfile.open(fileobj=raw, mode=mode) as tar:  # type: ignore[call-overload]
            for name, data in ((MANIFEST, _manifest_bytes(m)), (CHUNK_LIST, listing)):
                info = tarfile.TarInfo(f"{m.id}/{name}")
                info.size, info.mode = len(data), 0o644
                tar.addfile(info, io.BytesIO(data))
            info = tarfile.TarInfo(f"{m.id}/{CHUNKS}")
            info.size, info.mode = size, 0o644
            tar.addfile(info, io.BufferedReader(_Concat(store, carried), 1 << 20))
        return Outcome(str(m.id), "exported", f"{dest}: {len(carried)} of {len(m.chunks)} chunks", size)
    target = dest / str(m.id)
    dest.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=fsutil.tmp_prefix(), dir=dest))
    try:
        fsutil.atomic_write(work / MANIFEST, _manifest_bytes(m))
        fsutil.atomic_write(work / CHUNK_LIST, listing)
        with fsutil.atomic_writer(work / CHUNKS) as out:
            for e in carried:
                out.write(store.chunks.read(e[0]))
        if target.exists():
            fsutil.remove_tree(target)
        fsutil.durable_rename(work, target)
    except BaseException:
        fsutil.remove_tree(work)
        raise
    return Outcome(str(m.id), "exported", f"{dest}: {len(carried)} of {len(m.chunks)} chunks", size)


class _Concat(io.RawIOBase):
    """Chunk files back to back, read as one file."""

    def __init__(self, store: Storehouse, entries: list[chunks.Entry]) -> None:
        self.store, self.entries, self.buf = store, iter(entries), b""

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        while not self.buf:
            e = next(self.entries, None)
            if e is None:
                return 0
            self.buf = self.store.chunks.read(e[0])
        n = min(len(b), len(self.buf))
        b[:n], self.buf = self.buf[:n], self.buf[n:]
        return n


def _manifest_bytes(m: Manifest) -> bytes:
    """As the storehouse writes it (Storehouse._commit): a chunked manifest on one line (json's indenting
    encoder is pure Python: 13-23 ms for 3,318 chunks, and twice the bytes), an old one indented."""
    return (m.json_text if m.chunked else json.dumps(m.to_json(), indent=1)).encode()


def _export_dir(store: Storehouse, m: Manifest, dest: Path, shown: progress.Progress) -> None:
    target = dest / str(m.id)
    work = Path(tempfile.mkdtemp(prefix=fsutil.tmp_prefix(), dir=dest))
    try:
        fsutil.atomic_write(work / MANIFEST, _manifest_bytes(m))
        with store.open_archive(m) as src, fsutil.atomic_writer(work / PAYLOAD) as out:
            shutil.copyfileobj(progress.Reader(src, shown), out, 1 << 20)
        if target.exists():
            fsutil.remove_tree(target)
        fsutil.durable_rename(work, target)  # the package appears whole on the medium
    except BaseException:
        fsutil.remove_tree(work)
        raise


# -- stage --------------------------------------------------------------------------------------------

class _Medium:
    """The packages on a directory or in an archive: their manifests, and a way to open payloads."""

    def __init__(self, source: Path) -> None:
        self.source = source
        self.tar: tarfile.TarFile | None = None
        self.members: dict[str, tarfile.TarInfo] = {}

    def __enter__(self) -> _Medium:
        if not self.source.exists():
            raise InputError(f"{self.source}: no such file or directory")
        if self.source.is_dir():
            return self
        try:
            with archive.reading(self.source):
                self.tar = tarfile.open(self.source, "r:*")
                members = self.tar.getmembers()
        except OSError as e:  # a medium that cannot be read is refused as one that is damaged
            raise archive.unreadable(self.source, e) from None
        for member in members:  # the whole archive is checked before anything is staged
            archive.check_member(member, "/staging")
            match = _MEMBER.fullmatch(member.name)
            if match is None or (match.group(2) is None) != member.isdir() or not (member.isdir() or member.isfile()):
                raise UnsafeArchive(f"{self.source}: member {member.name!r} is not a package's "
                                    f"{MANIFEST}, {PAYLOAD}, {CHUNK_LIST} or {CHUNKS}; nothing was staged")
            if match.group(2):
                self.members[f"{match.group(1)}/{match.group(2)}"] = member
        return self

    def __exit__(self, *exc: object) -> None:
        if self.tar is not None:
            self.tar.close()

    def packages(self) -> list[str]:
        if self.tar is None:
            return sorted(p.name for p in self.source.iterdir() if not p.name.startswith(".") and p.is_dir())
        return sorted({k.split("/")[0] for k in self.members})

    def has(self, package: str, name: str) -> bool:
        if self.tar is None:
            return (self.source / package / name).is_file()
        return f"{package}/{name}" in self.members

    @contextlib.contextmanager
    def open(self, package: str, name: str) -> Iterator[IO[bytes]]:
        if self.tar is None:
            path = self.source / package / name
            if path.is_symlink() or not path.is_file():
                raise InputError(f"{path}: not a regular file")
            with open(path, "rb") as f:
                yield f
            return
        member = self.members.get(f"{package}/{name}")
        extracted = self.tar.extractfile(member) if member is not None else None
        if extracted is None:
            raise InputError(f"{self.source}: {package}/{name} is missing")
        with extracted:
            yield extracted


def _read_manifest(medium: _Medium, package: str) -> Manifest:
    with medium.open(package, MANIFEST) as f:
        data = f.read(MANIFEST_MAX + 1)
    if len(data) > MANIFEST_MAX:
        raise InputError(f"{package}/{MANIFEST} is too large")
    try:
        m = Manifest.from_json(json.loads(data))
    except ValueError as e:
        raise InputError(f"{package}/{MANIFEST}: not JSON ({e})") from None
    if str(m.id) != package:
        raise InputError(f"{package}/{MANIFEST} describes {m.id}, not {package}")
    return m


def stage(home: Home, source: Path, only: list[PackageId] | None = None, key: str | None = None) -> list[Outcome]:
    """Stage every package (or ``only``) of ``source`` into ``home``'s storehouse, each verified.

    Every manifest on the medium must verify with ``key``, the managing
    server's, or nothing at all is staged.
    """
    if key is None:
        raise InputError(f"the managing server's key is not known on {home.host}: check in with the upper "
                         "system once, or set ManagerKey in RDSSETFL (rdslink -k on the managing server prints it)")
    store = Storehouse.of(home)
    out = []
    with _Medium(source) as medium:
        names = medium.packages()
        if only:
            missing = [str(p) for p in only if str(p) not in names]
            if missing:
                raise InputError(f"{source}: no package {', '.join(missing)} there")
            names = [str(p) for p in only]
        if not names:
            raise InputError(f"{source}: no packages there")
        for name in names:  # the whole medium is refused if one manifest is not the managing server's
            try:
                fault = trust.manifest_fault(key, _read_manifest(medium, name))
            except InputError:
                continue  # rejected below, on its own
            if fault is not None:
                raise IntegrityError(f"{source}: {fault}; nothing was staged")
        for name in names:
            try:
                out.append(_stage_one(home, store, medium, name))
            except (IntegrityError, InputError) as e:
                out.append(Outcome(name, "rejected", str(e)))
    return out


def _stage_chunks(home: Home, store: Storehouse, medium: _Medium, name: str, m: Manifest) -> Outcome:
    """A medium that carries only some chunks of ``m``: each verified and stored; the package is added
    when every chunk is here, and rejected (its chunks kept) when some are missing."""
    with medium.open(name, CHUNK_LIST) as f:
        data = f.read(MANIFEST_MAX + 1)
    try:
        names = json.loads(data)
    except ValueError:
        names = None
    entries = {e[0]: e for e in m.chunks}
    if not isinstance(names, list) or len(names) > len(entries) or any(n not in entries for n in names):
        raise InputError(f"{name}/{CHUNK_LIST}: not a list of chunks of its package")
    carried = [entries[n] for n in names]
    store.chunks.make()
    listed = store.partial / f"{m.id}.{m.sha256[:16]}.chunks"
    chunks.write_list(listed, m.chunks)  # kept from collection while it is staged
    try:
        with medium.open(name, CHUNKS) as src:
            chunks.receive_stream(store.chunks, carried, src, f"{name}/{CHUNKS}",
                                  f"{name}/{CHUNKS}: shorter than the chunks {CHUNK_LIST} names; not staged")
        lacking = store.chunks.lacking(m.chunks)
        if lacking:
            raise IntegrityError(f"{name}: {len(lacking)} chunk(s) of the package are neither on the medium nor "
                                 f"here; the {len(carried)} it carried are kept: make a medium for this host with "
                                 f"'rdsstage -o PATH --have LIST' from its 'rdsstage --chunks'")
        with store.fetch_lock(m.id):
            have = store.get(m.id)
            if have is not None and have.sha256 == m.sha256:
                store.renew(m.id)
                return Outcome(name, "unchanged", "already here; storage period renewed", m.size)
            if have is not None and home.settings.is_managing_server:
                raise InputError(f"package {m.id} is registered here with other content; not replaced")
            if have is not None:
                store.remove(m.id)
            archive.check_payload(store.source(m), name, m.unpacked)  # the whole, hashed, and its members
            store.add_chunked(m)
        return Outcome(name, "replaced" if have is not None else "staged",
                       f"{store.dir(m.id)} ({len(carried)} of {len(m.chunks)} chunks carried)",
                       sum(e[2] for e in carried))
    finally:
        with contextlib.suppress(FileNotFoundError):
            listed.unlink()


def _stage_one(home: Home, store: Storehouse, medium: _Medium, name: str) -> Outcome:
    m = _read_manifest(medium, name)
    if medium.has(name, CHUNK_LIST):
        if not m.chunked:
            raise InputError(f"{name}: carries chunks of a package that is not chunked")
        return _stage_chunks(home, store, medium, name, m)
    with medium.open(name, PAYLOAD) as src, store.incoming(src, m.size) as (part, size, digest):
        if size != m.size or digest != m.sha256:
            raise IntegrityError(f"{name}/{PAYLOAD}: {size} bytes with SHA-256 {digest[:16]}..., but the "
                                 f"manifest says {m.size} bytes and {m.sha256[:16]}...; not staged")
        archive.check_payload(part, PAYLOAD, m.unpacked)
        with store.fetch_lock(m.id):  # not while a fetch of the same package runs
            have = store.get(m.id)
            if have is not None and have.sha256 == m.sha256:
                with contextlib.suppress(RdsError):
                    store.verify(have, full=True)  # hashed again: a copy damaged in place is replaced
                    store.renew(m.id)  # staged again: its storage period starts again
                    return Outcome(name, "unchanged", "already here, verified; storage period renewed", m.size)
            if have is not None and have.sha256 != m.sha256 and home.settings.is_managing_server:
                raise InputError(f"package {m.id} is registered here with other content; not replaced")
            if have is not None:
                store.remove(m.id)
            store.add_downloaded(m, part, digest)
            return Outcome(name, "replaced" if have is not None else "staged", str(store.dir(m.id)), m.size)
