"""Durable writes: the one place that writes storehouse files.

A file is written beside its target under a temporary name, flushed to disk,
renamed over the target, and the directory is flushed too.  A crash leaves at
most a stray ``.tmp-*`` file, never a half-written target; ``remove_strays``
clears those on the next run.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

TMP_PREFIX = ".tmp-"


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_writer(target: Path, mode: int = 0o644, durable: bool = True) -> Iterator[BinaryIO]:
    """Yield a file whose content replaces ``target`` only if the block succeeds; ``durable``: flushed to
    disk, file and directory (not for what a crash makes meaningless anyway, such as a lock's owner)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=tmp_prefix(), dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, target)  # the commit point
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if durable:
        fsync_dir(target.parent)


def atomic_write(target: Path, data: bytes, mode: int = 0o644, durable: bool = True) -> None:
    with atomic_writer(target, mode, durable) as f:
        f.write(data)


def durable_rename(src: Path, dst: Path) -> None:
    """Rename ``src`` (already flushed) to ``dst`` and flush both directories."""
    os.replace(src, dst)
    fsync_dir(dst.parent)
    if src.parent != dst.parent:
        fsync_dir(src.parent)


def remove_tree(path: Path) -> None:
    """Remove a directory so that no half of it stays visible under its name.

    The directory is first renamed to a temporary name, then deleted.
    """
    if not path.exists():
        return
    doomed = path.with_name(f"{tmp_prefix()}del-{path.name}")
    os.replace(path, doomed)
    fsync_dir(path.parent)
    shutil.rmtree(doomed, ignore_errors=True)


def tmp_prefix() -> str:
    """Temporary names carry their writer's pid, so only a dead writer's leftovers are strays."""
    return f"{TMP_PREFIX}{os.getpid()}-"


def _writer_alive(name: str) -> bool:
    pid = name[len(TMP_PREFIX):].split("-", 1)[0]
    if not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return int(pid) != os.getpid()


def is_stray(name: str) -> bool:
    """Whether ``name`` is a temporary name whose writer is dead."""
    return name.startswith(TMP_PREFIX) and not _writer_alive(name)


def remove_strays(directory: Path) -> int:
    """Delete temporary files and directories left by a crash; return how many."""
    count = 0
    if not directory.is_dir():
        return 0
    for entry in directory.iterdir():
        if entry.name.startswith(TMP_PREFIX) and not _writer_alive(entry.name):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    entry.unlink()
            count += 1
    return count


def sha256_of(path: Path, chunk: int = 1 << 20) -> Any:
    """A running SHA-256 of the file's content, to go on hashing what is appended."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h


def sha256_file(path: Path) -> str:
    return str(sha256_of(path).hexdigest())
