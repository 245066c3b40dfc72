"""The package storehouse: everything about a package on disk.

The storehouse is a home's ``RDS/`` (its tree is drawn in rds.home): one
directory a package, named by its full ID, holding the payload, the manifest
and the stamps ``.accessed`` and ``.verified``; beside them ``.partial/``
(downloads in progress), ``.checksums/`` (the upper system's manifests,
remembered for rds.cache) and ``.damaged/`` (why a copy found damaged was
removed, until a good copy comes).  The fetch locks are in the home's ``run/``.

A chunked package (rds.chunks) has no payload file: its directory holds its
manifest and stamps, and its chunks are in the chunk store ``.chunks/``,
shared with every package that uses them; its archive is its chunks read in
the manifest's order (``source``, ``open_archive``, ``spans``).  A download
brings only the chunks missing here (``receive_chunks``); a package's chunks
leave when no package here names them any more (``collect``).  A package of
the old format (``payload.tgz``) is kept, served and installed as before.

A package's directory is built under a temporary name and renamed into place
last, so a package is either wholly there, verified, or not there at all.
Every payload that comes in (packed, staged or downloaded) passes through one
``HashingWriter``, so its SHA-256 is known when it is complete.

Access times.  Each package directory holds an empty stamp file ``.accessed``
whose mtime is the package's last access: it is created when the package is
stored (fetched, staged or registered) and its mtime is set with
``os.utime`` when the package is installed on this host (used) or read by a
lower system (served).  A stamp rather than a table in the state database:
the storehouse describes itself (a package and its access time come and go
together, with no row left behind by ``rdsft -init`` or a crash), serving a
package never writes to the database that passes are committing to, and a
stamp costs one system call.  ``os.utime`` changes one inode at once; after a
power loss it may come back older, which only makes the package look less
recently used.  The time a package was stored is the mtime of its
``manifest.json``, the file written last when the package was committed.

Checked as it is served.  The ``.verified`` stamp trusts the payload's size,
mtime and inode, which silent disk corruption leaves as they were; so a
payload is also hashed as it is served (``blocks`` with a ``Served``), read
after read of one conversation, at no I/O of its own, and rds.cache removes a
copy whose bytes turn out not to be the package.

Storage period.  A package's storage period counts from when it was stored,
the mtime of its ``manifest.json``; staging it again renews it (``renew``).

Readers and removal.  A lower system reading a package holds a shared
``flock`` on its payload (``blocks``).  A package leaves (``rds.cleanup``
decides when) by being held against readers (``hold``), renamed out of sight
under a temporary name no reader knows (``hide``), and deleted (``reap``);
a crash leaves only strays that the next run removes.
"""

from __future__ import annotations

import builtins
import contextlib
import dataclasses
import errno
import fcntl
import hashlib
import io
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path, PurePosixPath
from typing import Any

from rds import archive, chunks, crashpoints, fsutil, progress
from rds.errors import InputError, IntegrityError, ProtocolError, SystemError_
from rds.home import Home, lock_timeout
from rds.packages import Manifest, PackageId

PAYLOAD = "payload.tgz"
MANIFEST = "manifest.json"
Block = bytes | chunks.Pieces  # what a serve sends: bytes, or pieces of chunk files (``spans``)
ACCESSED = ".accessed"
VERIFIED = ".verified"
PARTIAL = ".partial"
CHECKSUMS = ".checksums"
DAMAGED = ".damaged"


@dataclasses.dataclass(frozen=True)
class Stored:
    """One package in the storehouse, as cleanup sees it."""

    id: str
    size: int
    stored: float
    accessed: float
    expire_days: int | None


class HashingWriter:
    """A write-only file that hashes and counts what passes through it; ``point``: a crash point per block."""

    def __init__(self, raw: Any, sha: Any = None, point: str | None = None) -> None:
        self.raw = raw
        self.sha = hashlib.sha256() if sha is None else sha
        self.size = 0
        self.point = point

    def write(self, data: bytes) -> int:
        n: int = self.raw.write(data)
        self.sha.update(data)
        self.size += len(data)
        if self.point is not None:
            crashpoints.reach(self.point)
        return n

    def flush(self) -> None:
        self.raw.flush()


class Served:
    """The SHA-256 of one payload as one conversation with a lower system serves it, read after read.

    Only reads that go on where the last one ended are hashed; a read that
    begins elsewhere (a resumed download) leaves the check to the lower
    system, which hashes the whole and reports a damaged copy (rds.cache).
    """

    def __init__(self, manifest: Manifest) -> None:
        self.manifest = manifest
        self.sha = hashlib.sha256()
        self.upto = 0
        self.ino: int | None = None

    def follows(self, offset: int, ino: int) -> bool:
        """Whether a read of the file ``ino`` from ``offset`` goes on with what was hashed."""
        if self.ino is None and offset == 0:
            self.ino = ino
        return ino == self.ino and offset == self.upto

    def update(self, block: bytes) -> None:
        self.sha.update(block)
        self.upto += len(block)

    @property
    def complete(self) -> bool:
        return self.upto == self.manifest.size

    @property
    def matches(self) -> bool:
        return self.complete and self.sha.hexdigest() == self.manifest.sha256


class Storehouse:
    """The package storehouse of one home."""

    def __init__(self, root: Path, home: Home | None = None) -> None:
        self.root = root
        self.partial = root / PARTIAL
        self.chunks = chunks.ChunkStore(root / chunks.DIR, lock_timeout())
        self.home = home if home is not None else Home(root.parent)  # the storehouse is its home's RDS/

    @classmethod
    def of(cls, home: Home) -> Storehouse:
        return cls(home.packages, home)

    def dir(self, pid: PackageId) -> Path:
        return self.root / str(pid)

    def payload(self, pid: PackageId) -> Path:
        return self.dir(pid) / PAYLOAD

    def get(self, pid: PackageId) -> Manifest | None:
        try:  # read each time; parsed once a process while its text stays the same (Manifest.parse)
            return Manifest.parse((self.dir(pid) / MANIFEST).read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError, RecursionError) as e:  # RecursionError: hostile nesting, [[[[...
            raise InputError(f"{self.dir(pid) / MANIFEST}: unreadable manifest ({str(e)[:200]})") from None

    def has(self, pid: PackageId) -> bool:
        return (self.dir(pid) / MANIFEST).is_file()

    def scan(self) -> list[Stored]:
        """Every whole package in the storehouse with its size, stored and access times.

        Chunks that packages share are counted once, in the size of the most
        recently accessed package that uses them: removing packages least
        recently accessed first (rds.cleanup), each frees what it counts."""
        out = []
        with os.scandir(self.root) as it:
            for d in it:
                if d.name.startswith(".") or not d.is_dir(follow_symlinks=False):
                    continue
                try:  # the manifest was checked when the package was committed: read only what counts here
                    with open(os.path.join(d.path, MANIFEST), "rb") as f:
                        stored = os.fstat(f.fileno()).st_mtime
                        m = json.loads(f.read())
                    if m["id"] != d.name:
                        continue
                    size = int(m["size"])
                    names = m.get("chunks") or []
                    expire = m.get("expire_days")
                    expire = None if expire is None else int(expire)
                except (OSError, ValueError, KeyError, TypeError):  # half-made or foreign: not ours to judge
                    continue
                try:
                    accessed = os.stat(os.path.join(d.path, ACCESSED)).st_mtime
                except FileNotFoundError:
                    accessed = stored
                out.append((Stored(d.name, size, stored, accessed, expire), names))
        return _shared_once(out)

    def list(self) -> list[Manifest]:
        out = []
        for d in sorted(self.root.iterdir()):
            if d.name.startswith(".") or not d.is_dir():
                continue
            try:
                m = self.get(PackageId.parse(d.name))
            except InputError:
                continue
            if m is not None:
                out.append(m)
        return out

    # -- adding packages ------------------------------------------------------------------------------

    def register(
        self,
        pid: PackageId,
        source: Path,
        install_dir: str,
        script: str | None = None,
        expire_days: int | None = None,
        sign: Callable[[Manifest], Manifest] | None = None,
        chunked: bool = True,
    ) -> Manifest:
        """Pack ``source`` into a new package and add it, its manifest signed by ``sign`` (rds.trust);
        the rename into place comes last.  ``chunked``: cut into chunks (rds.chunks), else one
        ``payload.tgz`` (the old format, still served and installed)."""
        if not source.is_dir():
            raise InputError(f"{source}: no such directory")
        if not os.access(source, os.R_OK | os.X_OK):
            raise InputError(f"{source}: cannot read this directory")
        if not install_dir.startswith("/") or ".." in PurePosixPath(install_dir).parts:
            raise InputError(f"install directory {install_dir!r} must be an absolute path without '..'")
        if self.has(pid):
            raise InputError(f"package {pid} is already registered")
        fsutil.remove_strays(self.root)
        work = Path(tempfile.mkdtemp(prefix=fsutil.tmp_prefix(), dir=self.root))
        try:
            if chunked:
                manifest = self._pack_chunks(pid, source, install_dir, script, expire_days)
                if sign is not None:
                    manifest = sign(manifest)
                self._commit(work, manifest)
                return manifest
            payload = work / PAYLOAD
            with fsutil.atomic_writer(payload) as raw, progress.Progress(
                    f"packing {source}", progress.tree_size(source)) as shown:
                hashing = HashingWriter(raw)
                unpacked = archive.pack(source, hashing, shown.add)
            if unpacked > max(hashing.size, 1 << 20) * archive.MAX_RATIO:
                raise InputError(f"{source}: packs {unpacked} bytes into {hashing.size}, a compression ratio "
                                 f"over {archive.MAX_RATIO} that hosts refuse to extract (rds(7))")
            manifest = Manifest(
                id=pid,
                size=hashing.size,
                sha256=hashing.sha.hexdigest(),
                install_dir=install_dir,
                expire_days=expire_days,
                script=script,
                packaged=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                unpacked=unpacked,
            )
            if sign is not None:
                manifest = sign(manifest)
            self._commit(work, manifest)
        except BaseException:
            fsutil.remove_tree(work) if work.exists() else None
            raise
        return manifest

    def _pack_chunks(self, pid: PackageId, source: Path, install_dir: str, script: str | None,
                     expire_days: int | None) -> Manifest:
        """Cut ``source``'s tar stream into chunks in the chunk store (rds.chunks); the package's manifest."""
        fd, listed = tempfile.mkstemp(prefix=fsutil.tmp_prefix(), suffix=".chunks", dir=self.partial)
        os.close(fd)  # the names it uses, kept from collection until the package is committed
        try:
            packer = chunks.Packer(self.chunks, Path(listed))
            with progress.Progress(f"packing {source}", progress.tree_size(source)) as shown:
                try:
                    archive.pack(source, packer, shown.add, gz=False)
                finally:
                    packer.close()
            if packer.unpacked > max(packer.size, 1 << 20) * archive.MAX_RATIO:
                raise InputError(f"{source}: packs {packer.unpacked} bytes into {packer.size}, a compression "
                                 f"ratio over {archive.MAX_RATIO} that hosts refuse to extract (rds(7))")
            return Manifest(id=pid, size=packer.size, sha256=packer.sha.hexdigest(), install_dir=install_dir,
                            expire_days=expire_days, script=script, packaged=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                            unpacked=packer.unpacked, chunks=tuple(packer.chunks))
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(listed)
            self.collect()  # what a refused packing stored goes, unless other packages use it
            raise
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(listed)

    def _commit(self, work: Path, manifest: Manifest) -> None:
        (work / ACCESSED).touch()  # stored counts as an access
        # Every caller hashed the payload as it was written (register, add_downloaded), so it is
        # verified now: stamped, the first serve reads each byte once instead of hashing the whole
        # archive before serving it (issue 16).  Chunked packages (issue 17): keep this stamp, or
        # the like, where a payload is committed.
        if (work / PAYLOAD).exists():  # a whole payload (a chunked package is checked chunk by chunk)
            self._stamp(work / PAYLOAD, work / VERIFIED, manifest)
        # one line when chunked: json's indenting encoder is pure Python (13-23 ms for 3,318 chunks)
        text = manifest.json_text if manifest.chunked else json.dumps(manifest.to_json(), indent=1)
        fsutil.atomic_write(work / MANIFEST, text.encode())
        target = self.dir(manifest.id)
        if target.exists():
            raise InputError(f"package {manifest.id} is already in the storehouse")
        fsutil.durable_rename(work, target)  # the commit point: the package is visible whole
        self.forget_damage(manifest.id)  # a good copy came

    def partial_path(self, pid: PackageId, sha256: str) -> Path:
        return self.partial / f"{pid}.{sha256[:16]}.part"

    def partial_size(self, manifest: Manifest) -> int:
        """How much of the download of ``manifest`` is here; partial downloads of other versions go."""
        part = self.partial_path(manifest.id, manifest.sha256)
        for stale in self.partial.glob(f"{manifest.id}.*.part"):  # a version no longer current
            if stale != part:
                stale.unlink(missing_ok=True)
        if manifest.chunked:  # the chunks here already, whatever brought them
            return manifest.size - self.chunks.total(self.chunks.lacking(manifest.chunks))
        return part.stat().st_size if part.exists() else 0

    def receive(self, manifest: Manifest, read: Callable[[int, int, Any], None], where: str) -> None:
        """Download a package from ``where``, resuming a partial download; verify it and add it.

        ``read(offset, length, out)`` writes that many bytes of the payload
        to ``out``; they are hashed as they arrive.
        """
        if manifest.chunked:
            def each(ranges: list[tuple[int, int]], out: Any) -> None:
                for o, n in ranges:
                    read(o, n, out)
            self.receive_chunks(manifest, each, where)
            return
        part = self.partial_path(manifest.id, manifest.sha256)
        have = part.stat().st_size if part.exists() else 0
        if have > manifest.size:
            part.unlink()
            have = 0
        sha = fsutil.sha256_of(part) if have else hashlib.sha256()
        if have < manifest.size:
            out = _Appending(part)  # opened at the first byte: a run killed before any leaves no empty file
            try:
                try:
                    with progress.Progress(f"{manifest.id} from {where}", manifest.size, have) as shown:
                        read(have, manifest.size - have,
                             progress.Writer(HashingWriter(out, sha, "downloading"), shown))
                    out.close()  # flushed to disk
                finally:
                    out.close(flush=False)  # what came is kept for the next run to resume after
            except OSError as e:
                if e.errno not in (errno.ENOSPC, errno.EDQUOT):
                    raise
                kept = part.stat().st_size if part.exists() else 0
                raise SystemError_(f"{part}: disk full; the {kept} bytes of package {manifest.id} received "
                                   "are kept and the next run resumes after them") from None
            finally:
                if part.exists() and part.stat().st_size == 0:
                    part.unlink()  # nothing came: leave no empty partial download
        got = part.stat().st_size if part.exists() else 0  # nothing came: no partial file was left
        if got != manifest.size:
            raise ProtocolError(f"{where}: package {manifest.id} came "
                                f"{'short' if got < manifest.size else 'too long'} ({got} of {manifest.size} bytes)")
        self.add_downloaded(manifest, part, sha.hexdigest())

    def receive_chunks(self, manifest: Manifest, read: Callable[[builtins.list[tuple[int, int]], Any], None],
                       where: str) -> None:
        """Download the chunks of ``manifest`` this host lacks from ``where`` and add the package.

        ``read(ranges, out)`` writes those byte ranges of the package's archive
        to ``out``, back to back: only the ranges that hold lacking chunks are
        asked, each chunk verified and stored as it becomes whole
        (rds.chunks.Receiver), so a cut download resumes after the last
        whole chunk.  The package is committed when every chunk is here.
        """
        listed = self.partial / f"{manifest.id}.{manifest.sha256[:16]}.chunks"
        lacking = self.chunks.lacking(manifest.chunks)
        if lacking:
            chunks.write_list(listed, manifest.chunks)  # kept from collection while they come
            with self._claim(manifest, lacking) as (mine, theirs):
                self._receive(manifest, mine, read, where)
            if theirs:  # chunks another download here was bringing at the same moment: wait for it
                _wait_released(theirs, lock_timeout())
                rest = self.chunks.lacking(manifest.chunks)
                if rest:  # it failed or took too long: brought here after all
                    self._receive(manifest, rest, read, where)
        self.add_chunked(manifest)
        with contextlib.suppress(FileNotFoundError):
            listed.unlink()

    @contextlib.contextmanager
    def _claim(self, manifest: Manifest, lacking: builtins.list[chunks.Entry]) -> Iterator[
            tuple[builtins.list[chunks.Entry], builtins.list[int]]]:
        """Claim the lacking chunks that no other download here is bringing (issue 16): two packages that
        share chunks, fetched at the same moment, bring each shared chunk once.  Yields the chunks to bring
        and the open claims of the downloads that bring the others (``_wait_released``).

        A claim is ``.partial/PACKAGE.SHA.claim`` listing the chunks, held with an exclusive flock for the
        download's length: a claim whose lock is free is a dead download's, and is ignored."""
        path = self.partial / f"{manifest.id}.{manifest.sha256[:16]}.claim"
        theirs: builtins.list[int] = []
        mine = lacking
        fd = None
        try:
            with self.home.lock("chunk-claims"):
                claimed: set[str] = set()
                with os.scandir(self.partial) as it:
                    others = [e.path for e in it if e.name.endswith(".claim") and e.path != str(path)]
                for other in others:
                    try:
                        ofd = os.open(other, os.O_RDONLY)
                    except FileNotFoundError:
                        continue
                    try:
                        fcntl.flock(ofd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                    except BlockingIOError:  # a download under way: its chunks are coming
                        names = set(chunks.read_list(Path(other)))
                        if names & {e[0] for e in mine}:
                            claimed |= names
                            theirs.append(ofd)
                            continue
                    os.close(ofd)  # a dead download's claim, or one that shares nothing
                mine = [e for e in lacking if e[0] not in claimed]
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
                fcntl.flock(fd, fcntl.LOCK_EX)
                os.write(fd, json.dumps([e[0] for e in mine]).encode())
            yield mine, theirs
        except BaseException:
            for ofd in theirs:
                os.close(ofd)
            raise
        finally:
            if fd is not None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
                os.close(fd)

    def _receive(self, manifest: Manifest, lacking: builtins.list[chunks.Entry],
                 read: Callable[[builtins.list[tuple[int, int]], Any], None], where: str) -> None:
        """Bring the chunks ``lacking`` (each verified and stored as it comes)."""
        if not lacking:
            return
        todo = chunks.ranges(manifest.chunks, {e[0] for e in lacking})
        have = manifest.size - self.chunks.total(lacking)
        self.chunks.make()
        receiver = chunks.Receiver(self.chunks, [e for _, _, inside in todo for e in inside], where,
                                   str(manifest.id))
        try:
            try:
                with progress.Progress(f"{manifest.id} from {where}", manifest.size, have) as shown:
                    read([(o, n) for o, n, _ in todo], progress.Writer(_Crashing(receiver), shown))
            finally:
                receiver.close()  # the whole chunks that came are kept for the next run
            receiver.check()
        except OSError as e:
            if e.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            raise SystemError_(f"{self.chunks.root}: disk full; the whole chunks of package {manifest.id} "
                               "received are kept and the next run resumes after them") from None
        if not receiver.done:
            raise ProtocolError(f"{where}: package {manifest.id} came short ({receiver.size} of "
                                f"{sum(n for _, n, _ in todo)} bytes asked)")

    def add_chunked(self, manifest: Manifest) -> None:
        """Commit a chunked package whose chunks are all here (verified as they came)."""
        missing = self.chunks.lacking(manifest.chunks)
        if missing:
            raise IntegrityError(f"package {manifest.id}: {len(missing)} of its chunks are not in the chunk store")
        work = Path(tempfile.mkdtemp(prefix=fsutil.tmp_prefix(), dir=self.root))
        try:
            self._commit(work, manifest)
        except BaseException:
            fsutil.remove_tree(work)
            raise

    def source(self, manifest: Manifest) -> Path | archive.Source:
        """The package's archive, to scan and extract (rds.archive): its payload, or its chunks read as one
        and checked whole against the manifest as they are read."""
        return _Chunked(self.chunks, manifest) if manifest.chunked else self.payload(manifest.id)

    def open_archive(self, manifest: Manifest) -> Any:
        """The package's archive as one binary file: its payload, or its chunks concatenated (a valid
        gzip stream: one gzip member a chunk), which is what a medium carries (rds.staging)."""
        if manifest.chunked:
            return io.BufferedReader(chunks.Reader(self.chunks, manifest.chunks), 1 << 20)
        return open(self.payload(manifest.id), "rb")

    @contextlib.contextmanager
    def incoming(self, src: Any, size: int | None = None) -> Iterator[tuple[Path, int, str]]:
        """Copy a payload carried in (rdsstage -i) from the file ``src`` into ``.partial/``, hashed and
        flushed to disk; yields its path, size and SHA-256.  It is gone afterwards unless it was added."""
        fd, tmp = tempfile.mkstemp(prefix=fsutil.tmp_prefix(), dir=self.partial)
        part = Path(tmp)
        try:
            with os.fdopen(fd, "wb") as raw, progress.Progress(f"staging {getattr(src, 'name', 'a package')}",
                                                                size) as shown:
                copy = HashingWriter(raw)
                shutil.copyfileobj(src, progress.Writer(copy, shown), 1 << 20)
                raw.flush()
                os.fsync(raw.fileno())
            yield part, copy.size, copy.sha.hexdigest()
        finally:
            with contextlib.suppress(FileNotFoundError):
                part.unlink()

    def add_downloaded(self, manifest: Manifest, part: Path, digest: str | None = None) -> None:
        """Move a complete download into place after checking its SHA-256 (``digest``, if hashed already);
        a chunked package's archive is cut into its chunks, each verified."""
        digest = digest or fsutil.sha256_file(part)
        if digest != manifest.sha256:
            part.unlink()
            raise IntegrityError(f"package {manifest.id}: SHA-256 mismatch (got {digest[:16]}..., "
                                 f"expected {manifest.sha256[:16]}...); the download was discarded")
        if manifest.chunked:
            self.chunks.make()
            with open(part, "rb") as f:
                chunks.receive_stream(self.chunks, manifest.chunks, f, str(part),
                                      f"package {manifest.id}: its archive does not hold its chunks")
            self.add_chunked(manifest)
            part.unlink()
            return
        work = Path(tempfile.mkdtemp(prefix=fsutil.tmp_prefix(), dir=self.root))
        try:
            os.replace(part, work / PAYLOAD)
            self._commit(work, manifest)
        except BaseException:
            fsutil.remove_tree(work)
            raise

    def fetch_lock(self, pid: PackageId, timeout: float | None = None) -> contextlib.AbstractContextManager[None]:
        """The lock held while ``pid`` is fetched or staged.

        Packages share 256 lock files (``run/fetch-XX.lock``) by a hash of their
        ID, so lock files do not pile up as packages come and go; two packages
        that share one wait for each other's fetch, which is rare and harmless.
        """
        return self.home.lock(f"fetch-{hashlib.sha256(str(pid).encode()).hexdigest()[:2]}", timeout)

    # -- using packages -------------------------------------------------------------------------------

    def verify(self, manifest: Manifest, full: bool = False) -> None:
        """Check the payload against its manifest; a check is remembered until the file changes
        (``full``: hashed again whatever the stamp says).  A chunked package: every chunk is here
        with its size (each was verified when it came; the whole is hashed as it is installed or
        served); ``full``: its chunks read as one and hashed."""
        if manifest.chunked:
            if full:
                src = _Chunked(self.chunks, manifest)
                src.finish(src.open())
            elif self.chunks.lacking(manifest.chunks):
                raise IntegrityError(f"package {manifest.id}: chunks of it are missing from the chunk store; "
                                     "not used")
            return
        path = self.payload(manifest.id)
        stamp_path = self.dir(manifest.id) / VERIFIED
        try:
            if not full and stamp_path.read_text() == _stamp_of(path, manifest):
                return
        except FileNotFoundError:
            pass
        digest = fsutil.sha256_file(path)
        if digest != manifest.sha256:
            raise IntegrityError(f"package {manifest.id}: SHA-256 of {path} does not match its manifest; not used")
        self._stamp(path, stamp_path, manifest)

    @staticmethod
    def _stamp(payload: Path, stamp_path: Path, manifest: Manifest) -> None:
        """Remember that ``payload`` was found to be ``manifest``'s, until the file changes."""
        fsutil.atomic_write(stamp_path, _stamp_of(payload, manifest).encode())

    def touch(self, pid: PackageId) -> None:
        """Record that the package was used or served now (see the module's docstring for why a stamp file)."""
        stamp = self.dir(pid) / ACCESSED
        try:
            os.utime(stamp)
        except FileNotFoundError:
            with contextlib.suppress(FileNotFoundError):  # the package itself may have just left
                stamp.touch()

    def renew(self, pid: PackageId) -> None:
        """Start the package's storage period again now (it counts from the mtime of its manifest).

        The manifest is written again, flushed, rather than touched: a renewal
        lost to a power cut would let retention at the next boot remove it.
        """
        path = self.dir(pid) / MANIFEST
        fsutil.atomic_write(path, path.read_bytes())

    def payload_inode(self, pid: PackageId) -> int | None:
        """The payload's inode (a chunked package's: its manifest's), which changes with each copy."""
        for name in (PAYLOAD, MANIFEST):
            with contextlib.suppress(FileNotFoundError):
                return (self.dir(pid) / name).stat().st_ino
        return None

    def spans(self, manifest: Manifest, spans: builtins.list[tuple[int, int]],
              check: Served | None = None, pieces: bool = False) -> Iterator[Block]:
        """The archive's bytes of each span in turn, under one shared lock (see ``blocks``); with
        ``pieces``, a chunked package's blocks come as chunks.Pieces (files for os.sendfile), each
        closed when the next is asked for."""
        pid = manifest.id
        chunked = not self.payload(pid).exists()
        with open(self.dir(pid) / (MANIFEST if chunked else PAYLOAD), "rb") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_SH)  # cleanup does not remove a package while it is read
            ino = os.fstat(lock.fileno()).st_ino
            f: Any = chunks.Reader(self.chunks, manifest.chunks) if chunked else lock
            try:
                for offset, length in spans:
                    hashing = check if check is not None and check.follows(offset, ino) else None
                    f.seek(offset)
                    while pieces and chunked and length > 0:
                        part = f.pieces(min(length, 1 << 20))
                        if not part:
                            break
                        length -= len(part)
                        try:
                            yield part
                        finally:
                            part.close()
                    while length > 0:
                        block = f.read(min(length, 1 << 20))
                        if not block:
                            break
                        length -= len(block)
                        if hashing is not None:
                            hashing.update(block)
                        yield block
            finally:
                if chunked:
                    f.close()

    def blocks(self, pid: PackageId, offset: int, length: int, check: Served | None = None) -> Iterator[bytes]:
        """The payload's bytes from ``offset``, read under a shared lock that keeps removal out;
        ``check`` hashes them if they go on where its last read ended."""
        manifest = self.get(pid)
        if manifest is None:
            raise FileNotFoundError(f"package {pid} is not in the storehouse")
        for block in self.spans(manifest, [(offset, length)], check):  # bytes: no pieces were asked for
            yield block if isinstance(block, bytes) else block.read()

    # -- copies found damaged ---------------------------------------------------------------------------

    def _damage_path(self, pid: PackageId) -> Path:
        return self.root / DAMAGED / str(pid)

    def note_damage(self, pid: PackageId, why: str) -> None:
        """Remember why the copy of ``pid`` was removed as damaged, to say so to whoever asks for it."""
        fsutil.atomic_write(self._damage_path(pid), f"{why} (found {time.strftime('%Y-%m-%d %H:%M:%S')})".encode())

    def damage(self, pid: PackageId) -> str | None:
        """Why the last copy of ``pid`` here was removed as damaged, if no good copy came since."""
        try:
            return self._damage_path(pid).read_text()[:1000]
        except (FileNotFoundError, UnicodeDecodeError):
            return None

    def forget_damage(self, pid: PackageId | None = None) -> None:
        """Forget that the copy of ``pid`` (of every package: None) was damaged."""
        if pid is None:
            shutil.rmtree(self.root / DAMAGED, ignore_errors=True)
            return
        with contextlib.suppress(FileNotFoundError):
            self._damage_path(pid).unlink()

    # -- the upper system's checksums -----------------------------------------------------------------

    def _checksum_path(self, pid: PackageId) -> Path:
        return self.root / CHECKSUMS / f"{pid}.json"

    def remembered(self, pid: PackageId, now: float, lifetime: float) -> Manifest | None:
        """The upper system's manifest of ``pid`` if it was asked less than ``lifetime`` seconds ago."""
        try:
            data = json.loads(self._checksum_path(pid).read_text())
            asked = float(data["asked"])
            m = Manifest.from_json(data["manifest"])
        except (OSError, ValueError, KeyError, TypeError, InputError):
            return None
        if m.id != pid or not asked <= now < asked + lifetime:
            return None
        return m

    def remember(self, m: Manifest, asked: float) -> None:
        fsutil.atomic_write(self._checksum_path(m.id),
                            json.dumps({"asked": asked, "manifest": m.to_json()}).encode())

    def forget_checksums(self) -> None:
        """Drop the remembered upstream checksums of packages no longer here."""
        held = {e.name for e in os.scandir(self.root) if not e.name.startswith(".")}
        with contextlib.suppress(FileNotFoundError), os.scandir(self.root / CHECKSUMS) as it:
            for e in it:
                if e.name.endswith(".json") and e.name[:-5] not in held:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(e.path)

    # -- removing packages ----------------------------------------------------------------------------

    def remove(self, pid: PackageId) -> bool:
        if not self.dir(pid).exists():
            return False
        fsutil.remove_tree(self.dir(pid))
        self.collect()
        return True

    def collect(self) -> tuple[int, int]:
        """Delete the chunks that no package here, and no download or packing in progress, names;
        returns how many went and their bytes."""
        if not self.chunks.root.exists():
            return 0, 0
        live = self._live()
        return self.chunks.collect(live, again=self._live)

    def _live(self) -> set[str]:
        live: set[str] = set()
        with os.scandir(self.root) as it:
            for d in it:
                if d.name.startswith(".") and not d.name.startswith(fsutil.TMP_PREFIX):
                    continue
                with contextlib.suppress(OSError, ValueError, KeyError, TypeError, AttributeError), \
                        open(os.path.join(d.path, MANIFEST), "rb") as f:
                    live.update(c[0] for c in json.loads(f.read()).get("chunks") or [])
        with contextlib.suppress(FileNotFoundError), os.scandir(self.partial) as it:
            for e in it:
                if e.name.endswith(".chunks"):
                    live.update(chunks.read_list(Path(e.path)))
        return live

    def clear(self) -> int:
        """Delete every package and every partial download; returns how many packages went."""
        n = 0
        for m in self.list():
            n += self.remove(m.id)
        self.clear_partial()
        self.collect()
        self.forget_damage()
        return n

    def clear_partial(self) -> None:
        """Delete every partial download, and what a crash left in the storehouse."""
        for part in self.partial.iterdir():
            with contextlib.suppress(FileNotFoundError):
                part.unlink()
        fsutil.remove_strays(self.root)

    def partials(self) -> Iterator[tuple[Path, PackageId | None, int]]:
        """The partial downloads here: path, package (None: not a download's name) and size."""
        with os.scandir(self.partial) as it:
            entries = list(it)
        for entry in entries:
            pid = None
            if entry.name.endswith(".part"):
                with contextlib.suppress(InputError):
                    pid = PackageId.parse(entry.name[:-len(".part")].rsplit(".", 1)[0])
            try:
                yield Path(entry.path), pid, entry.stat(follow_symlinks=False).st_size
            except FileNotFoundError:
                continue

    @contextlib.contextmanager
    def hold(self, name: str, wait: float) -> Iterator[bool]:
        """Hold the package ``name`` against readers for the block; False if a reader still has it after ``wait``."""
        ok, fd = self._hold(self.root / name, wait)
        try:
            yield ok
        finally:
            if fd is not None:
                os.close(fd)

    def _hold(self, path: Path, wait: float) -> tuple[bool, int | None]:
        """Lock a package against readers (they hold a shared flock on its payload while they read).

        Returns (False, None) if a reader still holds it after ``wait`` seconds;
        else True and the open file that keeps the lock (None: no payload).
        """
        deadline = time.monotonic() + wait
        try:
            fd = os.open(path / PAYLOAD, os.O_RDONLY)
        except FileNotFoundError:
            try:  # a chunked package: its readers lock its manifest
                fd = os.open(path / MANIFEST, os.O_RDONLY)
            except FileNotFoundError:
                return True, None
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True, fd
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    return False, None
                time.sleep(0.05)

    def hide(self, names: Iterable[str]) -> dict[str, Path]:
        """Rename packages out of sight and flush the storehouse once; returns where each went.

        Their files stay under temporary names that no reader knows, for
        ``reap``; a package already gone is left out.
        """
        hidden = {}
        for name in names:
            path = self.root / name
            target = path.with_name(f"{fsutil.tmp_prefix()}del-{path.name}")
            with contextlib.suppress(FileNotFoundError):
                os.replace(path, target)
                hidden[name] = target
        fsutil.fsync_dir(self.root)
        return hidden


def _shared_once(found: list[tuple[Stored, list[Any]]]) -> list[Stored]:
    """The packages with their sizes, a chunk that several use counted in the most recently accessed one."""
    seen: set[str] = set()
    out = []
    for st, names in sorted(found, key=lambda x: (-x[0].accessed, x[0].id)):
        if names:
            size = 0
            with contextlib.suppress(TypeError, ValueError, IndexError):
                for c in names:
                    if c[0] not in seen:
                        seen.add(c[0])
                        size += int(c[2])
            st = dataclasses.replace(st, size=size)
        out.append(st)
    return sorted(out, key=lambda s: s.id)


class _Chunked:
    """A chunked package's archive as rds.archive reads it: its chunks as one, hashed as they are read.

    rds.archive reads it twice to install it (its members checked whole, then extracted): the first
    read checks the whole against the manifest, and once it matched, the second is not hashed again
    (issue 16: the destination reads each byte as few times as it can)."""

    def __init__(self, store: chunks.ChunkStore, manifest: Manifest) -> None:
        self.store, self.manifest = store, manifest
        self.name = f"package {manifest.id}"
        self.size = manifest.size
        self.verified = False
        self.hashing: chunks.Hashing | None = None

    def open(self) -> Any:
        """The archive, read from the chunk files a MiB at a time (gzip asks 8 KiB at a time)."""
        raw = chunks.Reader(self.store, self.manifest.chunks)
        self.hashing = None if self.verified else chunks.Hashing(raw, self.manifest.sha256, self.manifest.size,
                                                                   self.name)
        return io.BufferedReader(self.hashing or raw, 1 << 20)

    def finish(self, f: Any) -> None:
        if self.hashing is not None:
            self.hashing.finish()
            self.hashing = None
            self.verified = True


class _Crashing:
    """Passes writes on, with the crash point of a download at each (the tests kill a download there)."""

    def __init__(self, raw: Any) -> None:
        self.raw = raw

    def write(self, data: bytes) -> int:
        n = int(self.raw.write(data))
        if os.environ.get(crashpoints.VARIABLE):  # the test hook: a kill here finds the whole chunks written
            self.raw.settle()
        crashpoints.reach("downloading")
        return n

    def flush(self) -> None:
        pass


class _Appending:
    """A partial download opened for appending when its first byte comes, then flushed to disk."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.f: Any = None

    def write(self, data: bytes) -> int:
        if self.f is None:
            self.f = open(self.path, "ab")  # noqa: SIM115 - closed by close()
        return int(self.f.write(data))

    def flush(self) -> None:
        if self.f is not None:
            self.f.flush()

    def close(self, flush: bool = True) -> None:
        if self.f is None:
            return
        f, self.f = self.f, None
        try:
            if flush:
                f.flush()
                os.fsync(f.fileno())
        finally:
            f.close()


def _wait_released(claims: list[int], wait: float) -> None:
    """Wait until the downloads holding these claims (open files, closed here) end, ``wait`` seconds at
    most: past that, whatever they have not brought is brought by the one that waits."""
    deadline = time.monotonic() + wait
    try:
        for fd in claims:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        return
                    time.sleep(0.02)
    finally:
        for fd in claims:
            os.close(fd)


def _stamp_of(payload: Path, manifest: Manifest) -> str:
    st = payload.stat()
    return f"{st.st_size} {st.st_mtime_ns} {st.st_ino} {manifest.sha256}"


def reap(paths: Iterable[Path]) -> None:
    """Delete the files of packages already out of sight (renamed to temporary names), then the chunks
    that only they used."""
    paths = list(paths)
    for path in paths:
        shutil.rmtree(path, ignore_errors=True)
    if paths:
        Storehouse(paths[0].parent).collect()


def reap_in_background(paths: list[Path]) -> int | None:
    """Delete them in a detached child; returns its pid (None when there is nothing to do).

    The packages left the storehouse at the commit point: only their files
    remain, under temporary names that no reader knows.  Deleting them costs
    about one millisecond a package on a slow disk, which a command run by
    hand need not wait for.  Should the child die, the next pass removes them
    as strays.
    """
    if not paths:
        return None
    pid = os.fork()
    if pid:
        return pid
    try:  # the child: let go of the parent's locks and files, and of its terminal
        os.setsid()
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):  # whoever reads rdsclr's output (cron, a pipe) must not wait for the child
            os.dup2(null, fd)
        os.closerange(3, os.sysconf("SC_OPEN_MAX") if os.sysconf("SC_OPEN_MAX") > 0 else 1024)
        reap(paths)
    finally:
        os._exit(0)
