"""Chunk cuts at file boundaries (issue 17 point 6, bench/delta's shared half): a file's content chunks are
the same whatever surrounds it; large content is cut into larger chunks.  Checked with zlib, hashlib and
tarfile on the stored chunk files, not with rds.chunks' own reading."""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import re
import tarfile
import zlib
from pathlib import Path

from conftest import Tree

from rds import archive, chunks


def write_tree(root: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    for p in [root, *root.rglob("*")]:  # directories too: a shared one has the same header in both
        os.utime(p, (1_700_000_000, 1_700_000_000))


def packed(tmp: Path, files: dict[str, bytes], name: str) -> tuple[list[chunks.Entry], Path]:
    write_tree(tmp / name, files)
    store = chunks.ChunkStore(tmp / "store")
    packer = chunks.Packer(store, tmp / f"{name}.list")
    archive.pack(tmp / name, packer, gz=False)
    packer.close()
    return packer.chunks, store.root


def contents(root: Path, entries: list[chunks.Entry]) -> list[bytes]:
    out = []
    for name, size, *_ in entries:
        data = zlib.decompress((root / name[:2] / name).read_bytes(), 31)
        assert hashlib.sha256(data).hexdigest() == name and len(data) == size
        out.append(data)
    return out


def spans_of(data: bytes, pieces: list[bytes]) -> list[bytes] | None:
    """The run of chunks whose bytes are exactly ``data``, if there is one."""
    starts = [0]
    for p in pieces:
        starts.append(starts[-1] + len(p))
    stream = b"".join(pieces)
    at = stream.find(data)
    if at < 0 or at not in starts or at + len(data) not in starts:
        return None
    return pieces[starts.index(at):starts.index(at + len(data))]


def test_a_file_is_cut_into_the_same_chunks_whatever_surrounds_it(tmp_path: Path) -> None:
    rnd = random.Random(5)
    shared = {"lib/a/big.so": rnd.randbytes(300_000), "lib/a/mid.so": rnd.randbytes(40_000),
              "lib/a/s1.py": b"x = 1\n" * 50, "lib/a/s2.py": b"y = 2\n" * 70}
    a, root = packed(tmp_path, {**shared, "lib/b/own.so": rnd.randbytes(90_000), "lib/b/t.py": b"z\n" * 9}, "a")
    b, _ = packed(tmp_path, {"extra/first.bin": rnd.randbytes(70_000), "extra/t.py": b"w\n" * 33,
                             **{f"lib/{k[4:]}": v for k, v in shared.items()}}, "b")
    pa, pb = contents(root, a), contents(root, b)
    for rel in ("lib/a/big.so", "lib/a/mid.so"):
        ca, cb = spans_of(shared[rel], pa), spans_of(shared[rel], pb)
        assert ca is not None and ca == cb, rel  # its content is whole chunks, the same ones in both
    # the directory of small files the two share: the same chunks too (cut at its header)
    names_a = {hashlib.sha256(p).hexdigest() for p in pa}
    small = [p for p in pb if b"x = 1\n" * 50 in p]
    assert small and all(hashlib.sha256(p).hexdigest() in names_a for p in small)
    with tarfile.open(fileobj=io.BytesIO(b"".join(pb))) as tar:  # still one tar stream, member for member
        assert tar.extractfile("./lib/a/big.so").read() == shared["lib/a/big.so"]  # type: ignore[union-attr]
    assert len(a) < 20 and len(b) < 20  # small files are not a chunk each


def test_large_content_is_cut_into_larger_chunks(tmp_path: Path) -> None:
    big = os.urandom(chunks.BIG + (4 << 20))
    small = os.urandom(600_000)
    entries, root = packed(tmp_path, {"share/data.bin": big, "lib/m.so": small}, "t")
    pieces = contents(root, entries)
    run = spans_of(big, pieces)
    assert run is not None
    assert all(len(p) <= chunks.BIG_MAX for p in run) and len(run) <= len(big) // chunks.BIG_MIN + 1
    assert len(run) < len(big) // chunks.MAX  # more than 256 KiB each on average: far fewer files
    m = spans_of(small, pieces)
    assert m is not None and len(m) >= 2 and all(len(p) <= chunks.MAX for p in m)  # smaller: the usual sizes


def test_a_package_sharing_directories_with_another_moves_none_of_their_bytes(tree: Tree, tmp_path: Path) -> None:
    """bench/delta's second package, small: what crosses the link for B is no more than its own half
    packaged alone (the bytes counted from the serving side's log)."""
    mgr, relay = tree.add("mgr"), tree.add("relay", "mgr")
    tree.check_in_upward(["relay"])
    rnd = random.Random(9)
    def some(prefix: str, n: int) -> dict[str, bytes]:
        return {f"{prefix}/d{i % 4}/f{i:03d}{'.so' if i % 3 else '.py'}":
                rnd.randbytes(rnd.randrange(20_000, 120_000)) if i % 3 else b"x = %d\n" % i * rnd.randrange(9, 900)
                for i in range(n)}
    shared, rest, own = some("lib", 40), some("lib/zz", 30), some("extra", 30)
    write_tree(tmp_path / "a", {**shared, **rest})
    write_tree(tmp_path / "b", {**own, **shared})
    write_tree(tmp_path / "own", own)
    ids = {}
    for key in ("a", "b", "own"):
        ids[key] = mgr.run("rdsft", "-c", "-g", "AB", "-r", key.upper(), "-v", "0100", "-i", f"/opt/{key}",
                           str(tmp_path / key)).stdout.strip()
    for key in ("a", "b"):
        mgr.run("dcmjexe", "-t", "transfer", "-r", ids[key], "-h", "relay")
        relay.run("rdsft", "-a")
    log = (mgr.path / "log" / "rds.log").read_text()
    moved = {k: sum(int(n) for n in re.findall(rf"sent (\d+) byte\(s\) of {re.escape(ids[k])} to relay", log))
             for k in ("a", "b")}
    size = {k: json.loads((mgr.path / "RDS" / ids[k] / "manifest.json").read_text())["size"] for k in ids}
    assert moved["a"] == size["a"]
    assert 0 < moved["b"] <= size["own"] < size["b"]  # the shared directories' bytes did not cross
