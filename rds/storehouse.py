"""The package storehouse: everything about a package on disk.

The storehouse is a home's ``RDS/`` (its tree is drawn in rds.home): one
directory a package, named by its full ID, holding the payload, the manifest
and the stamps ``.accessed`` and ``.verified``; beside them ``.partial/``
(downloads in progress) and ``.checksums/`` (the upper system's manifests,
remembered for rds.cache).  The fetch locks are in the home's ``run/``.

A package's directory is built under a temporary name and renamed into place
last, so a package is either wholly there, verified, or not there at all.
Every payload that comes in (packed, staged or downloaded) passes through one
``HashingWriter``, so its SHA-256 is known when it is complete.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

from rds import archive, crashpoints, fsutil
from rds.errors import InputError, IntegrityError, ProtocolError, SystemError_
from rds.home import Home
from rds.packages import Manifest, PackageId

PAYLOAD = "payload.tgz"
MANIFEST = "manifest.json"
ACCESSED = ".accessed"  # its mtime is the package's last access (rds.cleanup)
VERIFIED = ".verified"
PARTIAL = ".partial"
CHECKSUMS = ".checksums"


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


class Storehouse:
    """The package storehouse of one home."""

    def __init__(self, root: Path, home: Home | None = None) -> None:
        self.root = root
        self.partial = root / PARTIAL
        self.home = home if home is not None else Home(root.parent)  # the storehouse is its home's RDS/

    @classmethod
    def of(cls, home: Home) -> Storehouse:
        return cls(home.packages, home)

    def dir(self, pid: PackageId) -> Path:
        return self.root / str(pid)

    def payload(self, pid: PackageId) -> Path:
        return self.dir(pid) / PAYLOAD

    def get(self, pid: PackageId) -> Manifest | None:
        try:
            data = json.loads((self.dir(pid) / MANIFEST).read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError, RecursionError) as e:  # RecursionError: hostile nesting, [[[[...
            raise InputError(f"{self.dir(pid) / MANIFEST}: unreadable manifest ({str(e)[:200]})") from None
        return Manifest.from_json(data)

    def has(self, pid: PackageId) -> bool:
        return (self.dir(pid) / MANIFEST).is_file()

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
    ) -> Manifest:
        """Pack ``source`` into a new package and add it; the rename into place comes last."""
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
            payload = work / PAYLOAD
            with fsutil.atomic_writer(payload) as raw:
                hashing = HashingWriter(raw)
                archive.pack(source, hashing)
            manifest = Manifest(
                id=pid,
                size=hashing.size,
                sha256=hashing.sha.hexdigest(),
                install_dir=install_dir,
                expire_days=expire_days,
                script=script,
                packaged=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            )
            self._commit(work, manifest)
        except BaseException:
            fsutil.remove_tree(work) if work.exists() else None
            raise
        return manifest

    def _commit(self, work: Path, manifest: Manifest) -> None:
        (work / ACCESSED).touch()  # stored counts as an access
        fsutil.atomic_write(work / MANIFEST, json.dumps(manifest.to_json(), indent=1).encode())
        target = self.dir(manifest.id)
        if target.exists():
            raise InputError(f"package {manifest.id} is already in the storehouse")
        fsutil.durable_rename(work, target)  # the commit point: the package is visible whole

    def partial_path(self, pid: PackageId, sha256: str) -> Path:
        return self.partial / f"{pid}.{sha256[:16]}.part"

    def partial_size(self, manifest: Manifest) -> int:
        """How much of the download of ``manifest`` is here; partial downloads of other versions go."""
        part = self.partial_path(manifest.id, manifest.sha256)
        for stale in self.partial.glob(f"{manifest.id}.*.part"):  # a version no longer current
            if stale != part:
                stale.unlink(missing_ok=True)
        return part.stat().st_size if part.exists() else 0

    def receive(self, manifest: Manifest, read: Callable[[int, int, Any], None], where: str) -> None:
        """Download a package from ``where``, resuming a partial download; verify it and add it.

        ``read(offset, length, out)`` writes that many bytes of the payload
        to ``out``; they are hashed as they arrive.
        """
        part = self.partial_path(manifest.id, manifest.sha256)
        have = part.stat().st_size if part.exists() else 0
        if have > manifest.size:
            part.unlink()
            have = 0
        sha = fsutil.sha256_of(part) if have else hashlib.sha256()
        if have < manifest.size:
            try:
                with open(part, "ab") as out:
                    read(have, manifest.size - have, HashingWriter(out, sha, "downloading"))
                    out.flush()
                    os.fsync(out.fileno())
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

    def add_downloaded(self, manifest: Manifest, part: Path, digest: str | None = None) -> None:
        """Move a complete download into place after checking its SHA-256 (``digest``, if hashed already)."""
        digest = digest or fsutil.sha256_file(part)
        if digest != manifest.sha256:
            part.unlink()
            raise IntegrityError(f"package {manifest.id}: SHA-256 mismatch (got {digest[:16]}..., "
                                 f"expected {manifest.sha256[:16]}...); the download was discarded")
        work = Path(tempfile.mkdtemp(prefix=fsutil.tmp_prefix(), dir=self.root))
        try:
            os.replace(part, work / PAYLOAD)
            self._commit(work, manifest)
        except BaseException:
            fsutil.remove_tree(work)
            raise

    def fetch_lock(self, pid: PackageId) -> contextlib.AbstractContextManager[None]:
        """The lock held while ``pid`` is fetched or staged.

        Packages share 256 lock files (``run/fetch-XX.lock``) by a hash of their
        ID, so lock files do not pile up as packages come and go; two packages
        that share one wait for each other's fetch, which is rare and harmless.
        """
        return self.home.lock(f"fetch-{hashlib.sha256(str(pid).encode()).hexdigest()[:2]}")

    # -- using packages -------------------------------------------------------------------------------

    def verify(self, manifest: Manifest) -> None:
        """Check the payload against its manifest; a check is remembered until the file changes."""
        path = self.payload(manifest.id)
        st = path.stat()
        stamp_path = self.dir(manifest.id) / VERIFIED
        stamp = f"{st.st_size} {st.st_mtime_ns} {st.st_ino} {manifest.sha256}"
        try:
            if stamp_path.read_text() == stamp:
                return
        except FileNotFoundError:
            pass
        digest = fsutil.sha256_file(path)
        if digest != manifest.sha256:
            raise IntegrityError(f"package {manifest.id}: SHA-256 of {path} does not match its manifest; not used")
        fsutil.atomic_write(stamp_path, stamp.encode())

    def touch(self, pid: PackageId) -> None:
        """Record that the package was used or served now (see rds.cleanup for why a stamp file)."""
        stamp = self.dir(pid) / ACCESSED
        try:
            os.utime(stamp)
        except FileNotFoundError:
            with contextlib.suppress(FileNotFoundError):  # the package itself may have just left
                stamp.touch()

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

    # -- removing packages ----------------------------------------------------------------------------

    def remove(self, pid: PackageId) -> bool:
        if not self.dir(pid).exists():
            return False
        fsutil.remove_tree(self.dir(pid))
        return True

    def clear(self) -> int:
        """Delete every package and every partial download; returns how many packages went."""
        n = 0
        for m in self.list():
            n += self.remove(m.id)
        for part in self.partial.iterdir():
            part.unlink()
        fsutil.remove_strays(self.root)
        return n
