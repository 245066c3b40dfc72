"""The package storehouse: each package a directory named by its full ID.

The directory is built under a temporary name and renamed into place last, so
a package is either wholly there, verified, or not there at all.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import time
from pathlib import Path, PurePosixPath
from typing import Any

from rds import archive, fsutil
from rds.errors import InputError, IntegrityError
from rds.packages import Manifest, PackageId

PAYLOAD = "payload.tgz"
MANIFEST = "manifest.json"
ACCESSED = ".accessed"  # its mtime is the package's last access (rds.cleanup)


class Storehouse:
    """The package storehouse of one home."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.partial = root / ".partial"

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

    def verify(self, manifest: Manifest) -> None:
        """Check the payload against its manifest; a check is remembered until the file changes."""
        path = self.payload(manifest.id)
        st = path.stat()
        stamp_path = self.dir(manifest.id) / ".verified"
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

    def clear(self) -> int:
        """Delete every package and every partial download; returns how many packages went."""
        n = 0
        for m in self.list():
            n += self.remove(m.id)
        for part in self.partial.iterdir():
            part.unlink()
        fsutil.remove_strays(self.root)
        return n

    def remove(self, pid: PackageId) -> bool:
        if not self.dir(pid).exists():
            return False
        fsutil.remove_tree(self.dir(pid))
        return True


class HashingWriter:
    """A write-only file that hashes and counts what passes through it."""

    def __init__(self, raw: Any) -> None:
        self.raw = raw
        self.sha = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.sha.update(data)
        self.size += len(data)
        return self.raw.write(data)

    def flush(self) -> None:
        self.raw.flush()
