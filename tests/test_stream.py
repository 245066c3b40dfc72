"""First transfers at OpenSSH's speed (issue 16 part 1, issue 17 point 6): chunks verified by the SHA-256 of
their packed bytes (no decompressing), chunks two downloads share brought once, rdsft -a without click.

Results are checked independently of rds.chunks: hashlib over the chunk files, the bytes each download
was asked for, what the real commands print.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import random
import subprocess
import sys
import threading
import zlib
from pathlib import Path
from typing import Any

import chunkfiles
import pytest
from conftest import Tree
from test_chunks import write_tree

from rds import chunks
from rds.errors import IntegrityError
from rds.home import Home
from rds.packages import Manifest, PackageId
from rds.storehouse import Storehouse


def reader(up: Storehouse, m: Manifest, asked: list[tuple[int, int]] | None = None) -> Any:
    """A ``read(ranges, out)`` that serves ``m``'s archive from ``up`` and records the ranges asked."""
    def read(ranges: list[tuple[int, int]], out: Any) -> None:
        if asked is not None:
            asked.extend(ranges)
        for block in up.spans(m, ranges):
            out.write(block)
    return read


def package(tmp_path: Path, up: Storehouse, name: str, files: dict[str, bytes]) -> Manifest:
    write_tree(tmp_path / name, files)
    return up.register(PackageId.make("AB", name, "1"), tmp_path / name, "/opt/app")


def stored_digests(store: Storehouse, m: Manifest) -> list[str]:
    return [hashlib.sha256(chunkfiles.read(store.chunks.root, e[0])).hexdigest() for e in m.chunks]


def test_the_manifest_gives_each_chunks_packed_sha256(tmp_path: Path) -> None:
    up = Storehouse.of(Home.open(tmp_path / "up"))
    m = package(tmp_path, up, "A", {"a": random.Random(1).randbytes(700_000), "b": b"x" * 50_000})
    assert all(len(e) == 4 for e in m.chunks)
    assert [e[3] for e in m.chunks] == stored_digests(up, m)  # type: ignore[misc]
    again = Manifest.from_json(m.to_json())
    assert again == m


def test_a_relay_stores_chunks_without_decompressing_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    up = Storehouse.of(Home.open(tmp_path / "up"))
    down = Storehouse.of(Home.open(tmp_path / "down"))
    m = package(tmp_path, up, "A", {"a": random.Random(2).randbytes(900_000), "t": b"text\n" * 40_000})

    def no(*a: object) -> None:
        raise AssertionError("a chunk was decompressed")

    monkeypatch.setattr(chunks, "unpack", no)
    monkeypatch.setattr(chunks.zlib, "decompressobj", no)
    down.receive_chunks(m, reader(up, m), "up")
    assert down.get(m.id) == m
    assert stored_digests(down, m) == [e[3] for e in m.chunks]  # type: ignore[misc]


def test_a_chunk_whose_packed_bytes_differ_is_refused(tmp_path: Path) -> None:
    """A hostile upper sends other packed bytes of the same size for a chunk (even ones that decompress to
    the same content): refused by the packed SHA-256, never stored."""
    up = Storehouse.of(Home.open(tmp_path / "up"))
    down = Storehouse.of(Home.open(tmp_path / "down"))
    content = random.Random(3).randbytes(300_000)
    m = package(tmp_path, up, "A", {"a": content})
    victim = m.chunks[1]
    path = up.chunks.path(victim[0])
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x40
    path.write_bytes(bytes(raw))
    with pytest.raises(IntegrityError, match="damaged chunk"):
        down.receive_chunks(m, reader(up, m), "up")
    assert not chunkfiles.has(down.chunks.root, victim[0])
    assert chunkfiles.has(down.chunks.root, m.chunks[0][0])  # the good chunk before it is kept
    assert down.get(m.id) is None


def test_old_manifests_without_packed_digests_are_still_checked_by_content(tmp_path: Path) -> None:
    up = Storehouse.of(Home.open(tmp_path / "up"))
    down = Storehouse.of(Home.open(tmp_path / "down"))
    m = package(tmp_path, up, "A", {"a": random.Random(4).randbytes(400_000)})
    old = dataclasses.replace(m, chunks=tuple((e[0], e[1], e[2]) for e in m.chunks))
    old = Manifest.from_json(old.to_json())  # reads back with three fields a chunk
    assert all(len(e) == 3 for e in old.chunks)
    down.receive_chunks(old, reader(up, old), "up")
    assert down.get(m.id) == old
    # damaged content in an old manifest's chunk is still found by decompressing and hashing it
    down2 = Storehouse.of(Home.open(tmp_path / "down2"))
    path = up.chunks.path(old.chunks[0][0])
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 1
    path.write_bytes(bytes(raw))
    with pytest.raises(IntegrityError, match="damaged chunk"):
        down2.receive_chunks(old, reader(up, old), "up")


def test_a_manifest_mixing_entry_widths_is_refused(tmp_path: Path) -> None:
    up = Storehouse.of(Home.open(tmp_path / "up"))
    m = package(tmp_path, up, "A", {"a": random.Random(5).randbytes(400_000)})
    d = m.to_json()
    d["chunks"][0] = d["chunks"][0][:3]
    with pytest.raises(Exception, match="not a valid package manifest"):
        Manifest.from_json(d)
    d = m.to_json()
    d["chunks"][0][3] = "X" * 64
    with pytest.raises(Exception, match="not a valid package manifest"):
        Manifest.from_json(d)


def test_purge_judges_a_chunk_by_its_packed_digest(tmp_path: Path) -> None:
    """Other packed bytes of the same size under a chunk's name (which decompress to the right content)
    are not the manifest's chunk: the whole would never match, so purge removes them."""
    store = Storehouse.of(Home.open(tmp_path / "h"))
    m = package(tmp_path, store, "A", {"a": random.Random(6).randbytes(200_000)})
    e = m.chunks[0]
    data = chunks.unpack(store.chunks.read(e[0]), (e[0], e[1], e[2]))
    header = bytearray(chunks.pack(data))  # the same content, packed ...
    header[9] ^= 0xFF  # ... with another OS byte in the gzip header
    assert len(header) == e[2] and hashlib.sha256(bytes(header)).hexdigest() != e[3]  # type: ignore[misc]
    assert zlib.decompress(bytes(header), 31) == data
    store.chunks.path(e[0]).write_bytes(bytes(header))
    assert store.chunks.purge(m.chunks) == 1
    assert not store.chunks.path(e[0]).exists()


def test_two_downloads_bring_the_chunks_they_share_once(tmp_path: Path) -> None:
    """A relay fetching two packages at the same moment that share chunks asks its upper for each shared
    chunk once (issue 16): the second download leaves the shared ones to the first, waits for it, and
    commits with them."""
    up = Storehouse.of(Home.open(tmp_path / "up"))
    down = Storehouse.of(Home.open(tmp_path / "down"))
    rnd = random.Random(7)
    shared = {f"lib/s{i}.bin": rnd.randbytes(100_000) for i in range(6)}
    a = package(tmp_path, up, "A", {**shared, "a.bin": rnd.randbytes(150_000)})
    b = package(tmp_path, up, "B", {**shared, "b.bin": rnd.randbytes(150_000)})
    common = {e[0] for e in a.chunks} & {e[0] for e in b.chunks}
    assert common

    started, go = threading.Event(), threading.Event()
    asked_a: list[tuple[int, int]] = []

    def slow_a(ranges: list[tuple[int, int]], out: Any) -> None:
        asked_a.extend(ranges)
        blocks = list(up.spans(a, ranges))
        out.write(blocks[0][:1000])
        started.set()
        assert go.wait(30)
        out.write(blocks[0][1000:])
        for block in blocks[1:]:
            out.write(block)

    failed: list[BaseException] = []

    def fetch_a() -> None:
        try:
            down.receive_chunks(a, slow_a, "up")
        except BaseException as e:  # noqa: BLE001 - said by the test
            failed.append(e)

    t = threading.Thread(target=fetch_a)
    t.start()
    assert started.wait(30)
    asked_b: list[tuple[int, int]] = []
    release = threading.Timer(0.5, go.set)  # A goes on while B waits for it
    release.start()
    down.receive_chunks(b, reader(up, b, asked_b), "up")
    t.join(30)
    release.cancel()
    assert not failed
    starts, offset = {}, 0
    for e in b.chunks:
        starts.setdefault(offset, e)
        offset += e[2]
    got_b = [starts[o][0] for o, _ in asked_b]  # the ranges B asked begin at chunks of its own
    assert not common & set(got_b)
    assert sum(n for _, n in asked_b) == sum(e[2] for e in {e[0]: e for e in b.chunks if e[0] not in common}.values())
    assert sum(n for _, n in asked_a) == a.size
    for m in (a, b):
        assert down.get(m.id) == m
        assert stored_digests(down, m) == [e[3] for e in m.chunks]  # type: ignore[misc]
    assert not list(down.partial.glob("*.claim"))


def test_a_dead_downloads_claim_is_ignored(tmp_path: Path) -> None:
    up = Storehouse.of(Home.open(tmp_path / "up"))
    down = Storehouse.of(Home.open(tmp_path / "down"))
    m = package(tmp_path, up, "A", {"a": random.Random(8).randbytes(300_000)})
    down.partial.mkdir(parents=True, exist_ok=True)
    (down.partial / "C.AB.X.1.0000.0123456789abcdef.claim").write_text(f'["{m.chunks[0][0]}"]')  # no one holds it
    asked: list[tuple[int, int]] = []
    down.receive_chunks(m, reader(up, m, asked), "up")
    assert sum(n for _, n in asked) == m.size


PROBE = ("import atexit, sys\n"
         "atexit.register(lambda: print('imported:', sorted(m for m in sys.modules if m.split('.')[0] == 'click'"
         " or m == 'rds.cli' or m.startswith('rds.cli.')), file=sys.stderr))\n"
         "sys.argv[0] = 'rdsft'\n"
         "from {module} import main\n"
         "main()\n")


def rdsft(module: str, args: list[str], home: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", PROBE.format(module=module), *args], capture_output=True,
                          text=True, timeout=120, env={**os.environ, "RDS_HOME": str(home)})


def test_rdsft_a_runs_without_click_and_says_what_the_click_command_says(tree: Tree) -> None:
    mgr, relay = tree.add("mgr"), tree.add("relay", "mgr")
    pid = tree.package()
    mgr.run("dcmjexe", "-r", pid, "-h", "relay")
    fast = rdsft("rds.checkin", ["-a"], relay.path)
    assert fast.returncode == 0, fast.stderr
    assert fast.stderr.splitlines()[-1] == "imported: []"
    assert "jobs received: 1; packages fetched: 1; results sent: 1" in fast.stdout
    assert "COMPLETE" in fast.stdout and relay.installed().exists()
    again = rdsft("rds.cli.rdsft", ["-a"], relay.path)
    assert again.returncode == 0
    assert again.stdout == "jobs received: 0; packages fetched: 0; results sent: 0\n"
    assert rdsft("rds.checkin", ["-a"], relay.path).stdout == again.stdout
    for args in (["--help"], ["-a", "-x"], ["-a", "-init"], [], ["-a", "--version"]):  # to click, as before
        one, two = rdsft("rds.checkin", args, relay.path), rdsft("rds.cli.rdsft", args, relay.path)
        assert (one.returncode, one.stdout, one.stderr) == (two.returncode, two.stdout, two.stderr), args
    broken = tree.root / "nohome"
    one, two = rdsft("rds.checkin", ["-a"], broken), rdsft("rds.cli.rdsft", ["-a"], broken)
    assert one.returncode == two.returncode != 0
    assert one.stderr.splitlines()[:-1] == two.stderr.splitlines()[:-1]
    assert one.stderr.splitlines()[-1] == "imported: []"
    assert one.stderr.splitlines()[0].startswith("rdsft: ")


def test_setup_cfg_points_rdsft_at_the_click_free_entry() -> None:
    cfg = (Path(__file__).resolve().parent.parent / "setup.cfg").read_text()
    assert "rdsft = rds.checkin:main" in cfg


def test_gzip_members_read_as_one_stream_as_gzip_reads_them(tmp_path: Path) -> None:
    """An install reads a chunked archive through rds.archive._Members (zlib, a MiB at a time): the same
    bytes as the gzip module, seeks forward and back included; a damaged or cut member is refused."""
    import gzip
    import io

    from rds import archive
    from rds.errors import UnsafeArchive

    rnd = random.Random(9)
    parts = [rnd.randbytes(rnd.randrange(1, 300_000)) if i % 2 else b"text " * rnd.randrange(1, 90_000)
             for i in range(40)]
    packed = b"".join(chunks.pack(p) for p in parts)
    whole = b"".join(parts)
    assert gzip.decompress(packed) == whole
    f = archive._Members(io.BytesIO(packed))
    assert f.read(100) == whole[:100]
    assert f.seek(3_000_000) == 3_000_000 and f.read(10) == whole[3_000_000:3_000_010]
    assert f.seek(5) == 5 and f.read() == whole[5:]
    assert archive._Members(io.BytesIO(packed)).seek(len(whole) + 10) == len(whole)
    for bad in (packed[:-3], packed[:len(packed) // 2], packed[:-5] + bytes([packed[-5] ^ 1]) + packed[-4:],
                packed + b"garbage!"):
        with pytest.raises(UnsafeArchive), archive.reading("bad"):
            archive._Members(io.BytesIO(bad)).read()


def test_a_chunked_bomb_still_stops_at_its_unpacked_size(tmp_path: Path) -> None:
    from rds import archive
    from rds.errors import UnsafeArchive

    store = Storehouse.of(Home.open(tmp_path / "h"))
    m = package(tmp_path, store, "A", {"zeros": bytes(3 << 20)})
    lying = dataclasses.replace(m, unpacked=1 << 20)  # the manifest says less than the stream holds
    with pytest.raises(UnsafeArchive, match="expands past"):
        archive.extract(store.source(lying), tmp_path / "dest", lying.unpacked)
    assert not (tmp_path / "dest").exists() or not any((tmp_path / "dest").iterdir())


def test_paramiko_comes_without_invoke_whoever_imports_it_first() -> None:
    """rds.transport.connection keeps invoke out before any of its functions imports paramiko (open_serve
    imported it first and loaded invoke: about a third of rdsft -a's start)."""
    code = ("import sys\nimport rds.transport.connection\nimport paramiko\n"
            "print(sys.modules.get('invoke') is None and not any(m.startswith('invoke.') for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "True", out.stderr


@pytest.mark.parametrize("piece", [1, 7, 4096, 100_003, 1 << 22])
def test_chunks_are_taken_whatever_the_pieces_they_come_in(tmp_path: Path, piece: int) -> None:
    up = Storehouse.of(Home.open(tmp_path / "up"))
    down = Storehouse.of(Home.open(tmp_path / "down"))
    rnd = random.Random(10)
    m = package(tmp_path, up, "A", {f"f{i}": rnd.randbytes(rnd.randrange(100, 90_000)) for i in range(30)})
    whole = b"".join(up.chunks.read(e[0]) for e in m.chunks)
    down.chunks.root.mkdir(parents=True)
    r = chunks.Receiver(down.chunks, list(m.chunks), "up")
    for k in range(0, len(whole), piece):
        r.write(memoryview(whole)[k:k + piece] if k % 2 else whole[k:k + piece])
    r.close()
    r.check()
    assert r.done
    assert stored_digests(down, m) == [e[3] for e in m.chunks]  # type: ignore[misc]
    with pytest.raises(IntegrityError, match="sent more"):
        r.write(b"x")
