"""A chunk store read without rds.chunks: loose files ``.chunks/XX/NAME``, and packs through their index
``.chunks/packs/index.db`` read with sqlite3 (name, pack, offset, packed size), as the layout is documented
in rds.chunks and rds(7)."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable
from pathlib import Path


def _root(where: Path) -> Path:
    """The chunk store of a home, of its storehouse (RDS), or the store itself."""
    if (where / "RDS").is_dir():
        return where / "RDS" / ".chunks"
    return where / ".chunks" if where.name == "RDS" else where


def _rows(root: Path) -> list[tuple[str, str, int, int]]:
    index = root / "packs" / "index.db"
    if not index.exists():
        return []
    db = sqlite3.connect(f"file:{index}?mode=ro", uri=True)
    try:
        return db.execute("SELECT name, pack, offset, size FROM chunk").fetchall()
    finally:
        db.close()


def stored(where: Path, names: Iterable[str] | None = None) -> dict[str, bytes]:
    """Every chunk held, or those of ``names`` that are: name -> packed bytes (temporary files left out)."""
    root = _root(where)
    if not root.exists():
        return {}
    wanted = None if names is None else set(names)
    if wanted is None:
        out = {p.name: p.read_bytes() for p in root.glob("??/*") if p.is_file() and not p.name.startswith(".")}
    else:
        out = {n: (root / n[:2] / n).read_bytes() for n in wanted if (root / n[:2] / n).is_file()}
    for name, pack, offset, size in _rows(root):
        if name in out or (wanted is not None and name not in wanted):
            continue
        with open(root / "packs" / pack, "rb") as f:
            f.seek(offset)
            out[name] = f.read(size)
    return out


def read(where: Path, name: str) -> bytes:
    """One chunk's packed bytes; FileNotFoundError when it is not held."""
    got = stored(where, [name]).get(name)
    if got is None:
        raise FileNotFoundError(f"chunk {name} is not held in {_root(where)}")
    return got


def has(where: Path, name: str) -> bool:
    return name in stored(where, [name])


def change(where: Path, name: str, how: Callable[[bytearray], bytes]) -> None:
    """Change a held chunk's bytes in place (a disk that rots): ``how`` gets them and returns the new ones,
    which must be as long (a pack's other chunks keep their places)."""
    root = _root(where)
    loose = root / name[:2] / name
    if loose.exists():
        loose.write_bytes(how(bytearray(loose.read_bytes())))
        return
    for n, pack, offset, size in _rows(root):
        if n == name:
            with open(root / "packs" / pack, "r+b") as f:
                f.seek(offset)
                new = how(bytearray(f.read(size)))
                assert len(new) == size, "a packed chunk can only be changed in place"
                f.seek(offset)
                f.write(new)
            return
    raise FileNotFoundError(f"chunk {name} is not held in {root}")


def disk_bytes(where: Path) -> int:
    """What the chunk store takes on disk (blocks), packs' holes left out."""
    root = _root(where)
    return sum(p.stat().st_blocks * 512 for p in root.rglob("*") if p.is_file()) if root.exists() else 0
