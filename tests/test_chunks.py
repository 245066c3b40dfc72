"""Chunked packages (issue 17): content-defined chunks, chunk stores, only the lacking chunks cross a link.

Results are checked independently of rds.chunks: chunk names with hashlib over zlib's own
decompression, packages with tarfile over the chunks concatenated, bytes moved from the log.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import json
import os
import random
import re
import tarfile
import zlib
from pathlib import Path

import chunkfiles
import pytest
import sshd
from conftest import Host, Tree
from sshd import serve_command

from rds import chunks, trust
from rds.errors import IntegrityError, UnsafeArchive
from rds.home import Home
from rds.packages import Manifest, PackageId
from rds.storehouse import PAYLOAD, Storehouse


def chunk_files(home: Path) -> dict[str, bytes]:
    return chunkfiles.stored(home)


def manifest_of(home: Path, pid: str) -> dict:
    return json.loads((home / "RDS" / pid / "manifest.json").read_text())


def sent(host: Host, pid: str) -> int:
    log = (host.path / "log" / "rds.log").read_text()
    return sum(int(n) for n in re.findall(rf"sent (\d+) byte\(s\) of {re.escape(pid)} to ", log))


def make_tree(root: Path, seed: int, n: int = 40) -> dict[str, bytes]:
    rnd = random.Random(seed)
    files = {f"lib/m{i:03d}.bin": rnd.randbytes(rnd.randrange(20_000, 200_000)) for i in range(n)}
    files.update({f"src/t{i:03d}.py": (f"# {i}\n" + "x = 1\n" * rnd.randrange(10, 3000)).encode()
                  for i in range(n)})
    write_tree(root, files)
    return files


def write_tree(root: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
        os.utime(root / rel, (1_700_000_000, 1_700_000_000))
    for d in [root, *(p for p in root.rglob("*") if p.is_dir())]:
        os.utime(d, (1_700_000_000, 1_700_000_000))


def register(host: Host, src: Path, version: str, name: str = "APP") -> str:
    return host.run("rdsft", "-c", "-g", "AB", "-r", name, "-v", version, "-i", f"/opt/{name.lower()}",
                    str(src)).stdout.strip()


def deliver(mgr: Host, relay: Host, client: Host, src: Path, version: str) -> str:
    """Register ``src`` as APP ``version``, send it to ``client`` through ``relay``, one pass each; its ID."""
    pid = register(mgr, src, version)
    mgr.run("dcmjexe", "-r", pid, "-h", client.name)
    relay.run("rdsft", "-a")
    client.run("rdsft", "-a")
    return pid


def test_manifest_names_each_chunk_by_sha256_and_chunks_make_the_archive(tree: Tree, tmp_path: Path) -> None:
    mgr = tree.add("mgr")
    files = make_tree(tmp_path / "v1", 1)
    pid = register(mgr, tmp_path / "v1", "0100")
    m = manifest_of(mgr.path, pid)
    store = chunk_files(mgr.path)
    archive = b""
    for name, size, psize, psha in m["chunks"]:
        packed = store[name]
        assert len(packed) == psize and hashlib.sha256(packed).hexdigest() == psha
        data = zlib.decompress(packed, 31)
        assert len(data) == size and hashlib.sha256(data).hexdigest() == name
        archive += packed
    assert not (mgr.path / "RDS" / pid / PAYLOAD).exists()  # kept once, in the chunk store
    assert len(archive) == m["size"] and hashlib.sha256(archive).hexdigest() == m["sha256"]
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(archive))) as tar:
        got = {i.name.removeprefix("./"): tar.extractfile(i).read() for i in tar if i.isfile()}  # type: ignore[union-attr]
    assert got == files
    index = len(json.dumps(m["chunks"]))
    assert index <= 0.01 * m["size"], (index, m["size"])


def test_a_small_insertion_moves_only_the_chunks_around_it(tmp_path: Path) -> None:
    rnd = random.Random(7)
    data = rnd.randbytes(4 << 20)
    changed = data[:1_000_000] + b"inserted" + data[1_000_000:]
    lists = []
    for i, stream in enumerate((data, changed)):
        (tmp_path / str(i)).mkdir()
        listed = tmp_path / f"{i}.list"
        packer = chunks.Packer(chunks.ChunkStore(tmp_path / str(i)), listed)
        for k in range(0, len(stream), 100_000):
            packer.write(stream[k:k + 100_000])
        packer.close()
        lists.append([c[0] for c in packer.chunks])
        assert b"".join(zlib.decompress((tmp_path / str(i) / c[:2] / c).read_bytes(), 31)
                        for c in lists[-1]) == stream
    assert len(set(lists[1]) - set(lists[0])) <= 2
    assert len(lists[0]) > 30


def test_version_2_crosses_each_link_as_the_chunks_that_changed(tree: Tree, tmp_path: Path) -> None:
    mgr, relay, client = tree.add("mgr"), tree.add("relay", "mgr"), tree.add("c1", "relay")
    tree.check_in_upward(["c1", "relay"])
    files = make_tree(tmp_path / "v1", 2, n=100)
    v1 = deliver(mgr, relay, client, tmp_path / "v1", "0100")
    size1 = manifest_of(mgr.path, v1)["size"]
    assert sent(mgr, v1) == sent(relay, v1) == size1

    files2 = dict(files)
    files2["lib/m005.bin"] = files["lib/m005.bin"][:5000] + b"patched" + files["lib/m005.bin"][5007:]
    files2["src/new.py"] = b"print('new')\n"
    del files2["lib/m030.bin"]
    write_tree(tmp_path / "v2", files2)
    v2 = deliver(mgr, relay, client, tmp_path / "v2", "0200")
    size2 = manifest_of(mgr.path, v2)["size"]
    for host in (mgr, relay):
        assert 0 < sent(host, v2) <= 0.1 * size2, (sent(host, v2), size2)
    got = client.installed("/opt/app")
    for rel, data in files2.items():
        assert hashlib.sha256((got / rel).read_bytes()).digest() == hashlib.sha256(data).digest()


def test_chunks_shared_by_packages_are_stored_once_and_freed_with_the_last(tmp_path: Path) -> None:
    home = Home.open(tmp_path / "h")
    store = Storehouse.of(home)
    rnd = random.Random(3)
    shared = {f"s{i}": rnd.randbytes(300_000) for i in range(4)}
    write_tree(tmp_path / "a", {**shared, "only-a": rnd.randbytes(300_000)})
    write_tree(tmp_path / "b", {**shared, "only-b": rnd.randbytes(300_000)})
    a = store.register(PackageId.make("AB", "A", "1"), tmp_path / "a", "/opt/a")
    b = store.register(PackageId.make("AB", "B", "1"), tmp_path / "b", "/opt/b")
    names_a, names_b = {c[0] for c in a.chunks}, {c[0] for c in b.chunks}
    assert len(names_a & names_b) >= 0.6 * len(names_a)
    assert set(chunk_files(home.path)) == names_a | names_b  # each once
    scanned = {s.id: s.size for s in store.scan()}
    on_disk = sum(len(d) for d in chunk_files(home.path).values())
    assert sum(scanned.values()) == on_disk  # shared chunks counted once
    store.remove(a.id)
    assert set(chunk_files(home.path)) == names_b  # a's own chunks went, the shared ones stayed
    store.clear()
    assert chunk_files(home.path) == {}


def test_a_cut_download_resumes_without_the_chunks_already_here(tmp_path: Path) -> None:
    up = Storehouse.of(Home.open(tmp_path / "up"))
    down = Storehouse.of(Home.open(tmp_path / "down"))
    write_tree(tmp_path / "src", {"big": random.Random(5).randbytes(3 << 20)})
    m = up.register(PackageId.make("AB", "APP", "1"), tmp_path / "src", "/opt/app")
    asked: list[tuple[int, int]] = []

    def read(offset: int, length: int, out: object, cut: int | None = None) -> None:
        asked.append((offset, length))
        n = 0
        for block in up.blocks(m.id, offset, length):
            if cut is not None and n + len(block) > cut:
                out.write(block[:cut - n])  # type: ignore[attr-defined]
                raise ConnectionResetError("cut")
            out.write(block)  # type: ignore[attr-defined]
            n += len(block)

    with pytest.raises(ConnectionResetError):
        down.receive(m, lambda o, n, out: read(o, n, out, cut=m.size // 2), "up")
    here = down.partial_size(m)
    assert 0 < here <= m.size // 2
    asked.clear()
    down.receive(m, read, "up")
    assert sum(n for _, n in asked) == m.size - here  # only what was not here
    down.verify(m, full=True)


def test_a_damaged_chunk_is_never_stored(tmp_path: Path) -> None:
    up = Storehouse.of(Home.open(tmp_path / "up"))
    down = Storehouse.of(Home.open(tmp_path / "down"))
    write_tree(tmp_path / "src", {"big": random.Random(6).randbytes(1 << 20)})
    m = up.register(PackageId.make("AB", "APP", "1"), tmp_path / "src", "/opt/app")
    victim = up.chunks.path(m.chunks[1][0])
    raw = bytearray(victim.read_bytes())
    raw[len(raw) // 2] ^= 1
    victim.write_bytes(bytes(raw))

    def read(offset: int, length: int, out: object) -> None:
        for block in up.blocks(m.id, offset, length):
            out.write(block)  # type: ignore[attr-defined]

    with pytest.raises(IntegrityError, match="damaged chunk"):
        down.receive(m, read, "up")
    assert m.chunks[1][0] not in chunk_files(down.root.parent)
    assert m.chunks[0][0] in chunk_files(down.root.parent)  # the good one before it is kept
    with pytest.raises(IntegrityError):  # the whole is checked end to end as it is read
        up.verify(m, full=True)


def test_install_checks_the_whole_before_writing(tmp_path: Path) -> None:
    from rds import archive

    store = Storehouse.of(Home.open(tmp_path / "h"))
    write_tree(tmp_path / "src", {"a": random.Random(8).randbytes(600_000), "b": b"b\n"})
    m = store.register(PackageId.make("AB", "APP", "1"), tmp_path / "src", "/opt/app")
    last = store.chunks.path(m.chunks[-1][0])
    raw = bytearray(last.read_bytes())
    raw[-3] ^= 1  # the gzip trailer of the last chunk: tar would never notice
    last.write_bytes(bytes(raw))
    dest = tmp_path / "dest"
    with pytest.raises((IntegrityError, UnsafeArchive)):  # by its hash, or gzip's own check of the member
        archive.extract(store.source(m), dest, m.unpacked)
    assert not dest.exists() or not any(dest.iterdir())


def test_the_signature_covers_the_chunk_list(tmp_path: Path) -> None:
    home = Home.open(tmp_path / "h")
    me = home.identity
    store = Storehouse.of(home)
    write_tree(tmp_path / "src", {"a": random.Random(9).randbytes(300_000)})
    m = trust.sign_manifest(me, store.register(PackageId.make("AB", "APP", "1"), tmp_path / "src", "/opt/app"))
    assert trust.manifest_fault(me.public, m) is None
    c = list(m.chunks)
    c[0] = ("0" * 64, c[0][1], c[0][2])
    assert trust.manifest_fault(me.public, dataclasses.replace(m, chunks=tuple(c))) is not None
    again = Manifest.from_json(json.loads(json.dumps(m.to_json())))
    assert again == m


def test_a_manifest_whose_chunks_do_not_add_up_is_refused(tmp_path: Path) -> None:
    store = Storehouse.of(Home.open(tmp_path / "h"))
    write_tree(tmp_path / "src", {"a": b"a" * 100})
    m = store.register(PackageId.make("AB", "APP", "1"), tmp_path / "src", "/opt/app").to_json()
    m["size"] += 1
    with pytest.raises(Exception, match="not a valid package manifest"):
        Manifest.from_json(m)


def test_old_format_packages_are_still_served_and_installed(tree: Tree, tmp_path: Path) -> None:
    mgr, relay, client = tree.add("mgr"), tree.add("relay", "mgr"), tree.add("c1", "relay")
    tree.check_in_upward(["c1", "relay"])
    write_tree(tmp_path / "src", {"bin/app.sh": b"#!/bin/sh\necho app\n"})
    home = mgr.home()
    store = Storehouse.of(home)
    sign = trust.sign_manifest
    m = store.register(PackageId.make("AB", "OLD", "1"), tmp_path / "src", "/opt/old",
                       sign=lambda m: sign(home.identity, m), chunked=False)
    assert (store.dir(m.id) / PAYLOAD).exists() and not m.chunks
    mgr.run("dcmjexe", "-r", str(m.id), "-h", "c1")
    relay.run("rdsft", "-a")
    client.run("rdsft", "-a")
    assert (client.installed("/opt/old") / "bin" / "app.sh").read_bytes() == b"#!/bin/sh\necho app\n"
    assert (relay.path / "RDS" / str(m.id) / PAYLOAD).exists()


def test_receiver_refuses_more_than_it_asked(tmp_path: Path) -> None:
    store = chunks.ChunkStore(tmp_path / "c")
    data = b"x" * 1000
    packed = chunks.pack(data)
    entry = (hashlib.sha256(data).hexdigest(), len(data), len(packed))
    r = chunks.Receiver(store, [entry], "up")
    with pytest.raises(IntegrityError, match="more than"):
        r.write(packed + b"extra")
    r.close()


sshd_factory = sshd.sshd_factory


def test_version_2_over_ssh_asks_only_the_lacking_ranges(tree: Tree, sshd_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from test_ssh import laid_out, ssh_settings

    server = sshd_factory()
    mgr = laid_out(tree.add("mgr"))
    relay_home = tree.root / "relay1"
    k_relay = server.add_key("relay1", command=serve_command("relay1", mgr.path))
    k_client = server.add_key("client1", command=serve_command("client1", relay_home))
    server.start()
    relay = laid_out(tree.add("relay1", settings=ssh_settings(server, k_relay, upper=mgr)))
    client = tree.add("client1", settings=ssh_settings(server, k_client, upper=relay))
    tree.check_in_upward(["client1", "relay1"])
    files = make_tree(tmp_path / "v1", 4, n=60)
    v1 = deliver(mgr, relay, client, tmp_path / "v1", "0100")
    files2 = dict(files)
    for k in ("lib/m003.bin", "lib/m020.bin", "lib/m041.bin", "src/t007.py"):  # scattered: several ranges
        files2[k] = files[k][:100] + b"changed" + files[k][107:]
    write_tree(tmp_path / "v2", files2)
    v2 = deliver(mgr, relay, client, tmp_path / "v2", "0200")
    size2 = manifest_of(mgr.path, v2)["size"]
    for host in (mgr, relay):
        assert 0 < sent(host, v2) <= 0.15 * size2, (sent(host, v2), size2)
    new = {c[0] for c in manifest_of(mgr.path, v2)["chunks"]} - {c[0] for c in manifest_of(mgr.path, v1)["chunks"]}
    at = [i for i, c in enumerate(manifest_of(mgr.path, v2)["chunks"]) if c[0] in new]
    assert sum(1 for a, b in zip(at, at[1:], strict=False) if b != a + 1) >= 2  # in several ranges ...
    log = (mgr.path / "log" / "rds.log").read_text()
    assert len(re.findall(rf"sent \d+ byte\(s\) of {re.escape(v2)} to relay1", log)) == 1  # ... asked at once
    for rel, data in files2.items():
        assert hashlib.sha256((client.installed("/opt/app") / rel).read_bytes()).digest() == \
            hashlib.sha256(data).digest()


def chunk_bytes(home: Path) -> int:
    return sum(len(d) for d in chunk_files(home).values())


def test_the_size_limit_counts_chunk_bytes_once_and_frees_what_no_package_uses(tree: Tree, tmp_path: Path) -> None:
    mgr, relay = tree.add("mgr"), tree.add("relay", "mgr")
    tree.check_in_upward(["relay"])
    rnd = random.Random(12)
    shared = {f"lib/s{i}": rnd.randbytes(200_000) for i in range(6)}
    write_tree(tmp_path / "a", {**shared, "a/own": rnd.randbytes(400_000)})
    write_tree(tmp_path / "b", {**shared, "b/own": rnd.randbytes(400_000)})
    a = register(mgr, tmp_path / "a", "0100", name="A")
    b = register(mgr, tmp_path / "b", "0100", name="B")
    for pid in (a, b):
        mgr.run("dcmjexe", "-t", "transfer", "-r", pid, "-h", "relay")
        relay.run("rdsft", "-a")
    both = chunk_bytes(relay.path)
    assert both < manifest_of(mgr.path, a)["size"] + manifest_of(mgr.path, b)["size"]  # shared ones once
    os.utime(relay.path / "RDS" / a / ".accessed", (1, 1))  # A was used least recently
    report = json.loads(relay.run("rdsclr", "--wait", "--json").stdout)  # chunks gone when it returns
    assert report["bytes_before"] == both  # what the limit counts is what the chunk store holds
    with open(relay.path / "rdsprm" / "RDSSETFL", "a") as f:
        f.write(f"CacheSizeLimit\t{both - 1}\nCacheHighWaterMark\t100\n")
    report = json.loads(relay.run("rdsclr", "--wait", "--json").stdout)  # chunks gone when it returns
    assert [r["package"] for r in report["removed"]] == [a]
    left = chunk_bytes(relay.path)
    assert left == report["bytes_after"] < both
    assert set(chunk_files(relay.path)) == {c[0] for c in manifest_of(relay.path, b)["chunks"]}
    relay.run("rdsft", "-init")
    assert chunk_files(relay.path) == {}


@pytest.mark.parametrize("hostile", ["../../pwn", "/etc/pwn"])
def test_a_hostile_chunked_package_is_refused_whole(tree: Tree, hostile: str) -> None:
    """The install's checks hold for a package whose chunks a hostile upper made: nothing is written."""
    mgr, client = tree.add("mgr"), tree.add("c1", "mgr")
    tree.check_in_upward(["c1"])
    bad = tree.package(name="BAD", install_dir="/opt/bad", script="touch \"$RDS_INSTALL_DIR/../bad-ran\"\n")
    d = mgr.path / "RDS" / bad
    stream = io.BytesIO()
    with tarfile.open(fileobj=stream, mode="w") as tar:
        for name in ("./ok.txt", hostile):
            info = tarfile.TarInfo(name)
            info.size = 3
            tar.addfile(info, io.BytesIO(b"x\n\n"))
    packer = chunks.Packer(chunks.ChunkStore(mgr.path / "RDS" / ".chunks"), d / ".list")
    packer.write(stream.getvalue())
    packer.close()
    m = json.loads((d / "manifest.json").read_text())
    m.update(chunks=[list(c) for c in packer.chunks], size=packer.size, sha256=packer.sha.hexdigest(),
             unpacked=packer.unpacked)
    (d / "manifest.json").write_text(json.dumps(m))
    mgr.run("dcmjexe", "-r", bad, "-h", "c1")
    proc = client.run("rdsft", "-a", check=False)
    assert (proc.returncode, proc.stderr) == (4, "rdsft: 1 of 1 install(s) ended in error\n")
    assert not client.installed("/opt/bad").exists()
    assert not (client.installed("/opt/bad").parent / "bad-ran").exists()
    assert not (client.path / "pwn").exists() and not Path("/etc/pwn").exists()
