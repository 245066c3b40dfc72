"""Package IDs, manifests and the package storehouse (rds/packages.py, rds/storehouse.py)."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import BIN, Tree

from rds import fsutil
from rds.errors import InputError, IntegrityError
from rds.home import Home
from rds.packages import Manifest, PackageId
from rds.storehouse import ACCESSED, MANIFEST, PAYLOAD, VERIFIED, Storehouse

PID = PackageId.make("AB", "APP", "0100")


# -- package IDs --------------------------------------------------------------

@pytest.mark.parametrize("text", [
    "C.AB.APP.0100.0000",
    "D.Z.my_pkg-2.V1R2.9999",
    "C.01." + "p" * 44 + ".ABCDEF.0042",
])
def test_package_id_round_trip(text: str) -> None:
    pid = PackageId.parse(text)
    assert str(pid) == text
    assert PackageId.parse(str(pid)) == pid
    assert PackageId.make(pid.cabinet, pid.package, pid.version, pid.generation, pid.packager) == pid


def test_package_id_fields() -> None:
    pid = PackageId.parse("C.AB.APP.0100.0007")
    assert (pid.packager, pid.cabinet, pid.package, pid.version, pid.generation) == ("C", "AB", "APP", "0100", "0007")


def test_generation_defaults_to_0000() -> None:
    assert str(PackageId.parse("C.AB.APP.0100")) == "C.AB.APP.0100.0000"
    assert str(PackageId.make("AB", "APP", "0100")) == "C.AB.APP.0100.0000"


@pytest.mark.parametrize("gen", [7, "7", "07", "0007"])
def test_generation_is_zero_padded(gen: int | str) -> None:
    assert PackageId.make("AB", "APP", "0100", gen).generation == "0007"
    assert PackageId.make("AB", "APP", "0100", gen) == PackageId.parse("C.AB.APP.0100.7")


@pytest.mark.parametrize(("field", "kwargs", "message"), [
    ("packager", {"packager": "X"}, "bad packager 'X' (allowed: C (UNIX) or D (Windows))"),
    ("packager", {"packager": "c"}, "bad packager 'c' (allowed: C (UNIX) or D (Windows))"),
    ("cabinet", {"cabinet": "ABC"}, "bad cabinet 'ABC' (allowed: 1-2 letters or digits)"),
    ("cabinet", {"cabinet": ""}, "bad cabinet '' (allowed: 1-2 letters or digits)"),
    ("cabinet", {"cabinet": "A_"}, "bad cabinet 'A_' (allowed: 1-2 letters or digits)"),
    ("package", {"package": "p" * 45}, f"bad package '{'p' * 45}' (allowed: 1-44 letters, digits, '_' or '-')"),
    ("package", {"package": "my app"}, "bad package 'my app' (allowed: 1-44 letters, digits, '_' or '-')"),
    ("package", {"package": "../x"}, "bad package '../x' (allowed: 1-44 letters, digits, '_' or '-')"),
    ("package", {"package": ""}, "bad package '' (allowed: 1-44 letters, digits, '_' or '-')"),
    ("version", {"version": "1234567"}, "bad version '1234567' (allowed: 1-6 letters or digits)"),
    ("version", {"version": "1-0"}, "bad version '1-0' (allowed: 1-6 letters or digits)"),
    ("generation", {"generation": "10000"}, "bad generation '10000' (allowed: 0-9999)"),
    ("generation", {"generation": -1}, "bad generation '-1' (allowed: 0-9999)"),
    ("generation", {"generation": "x"}, "bad generation 'x' (allowed: 0-9999)"),
    ("generation", {"generation": ""}, "bad generation '' (allowed: 0-9999)"),
])
def test_every_bad_field_is_refused(field: str, kwargs: dict[str, Any], message: str) -> None:
    args: dict[str, Any] = {"cabinet": "AB", "package": "APP", "version": "0100", **kwargs}
    with pytest.raises(InputError) as e:
        PackageId.make(**args)
    assert str(e.value) == message


@pytest.mark.parametrize("text", ["", "C.AB.APP", "C.AB.APP.0100.0000.1", "APP", "C..APP.0100", "X.AB.APP.0100",
                                  "C.AB.APP.0100.", "C.AB.APP.0100.00000", " C.AB.APP.0100"])
def test_parse_refuses_malformed_ids(text: str) -> None:
    with pytest.raises(InputError, match=r"^bad "):
        PackageId.parse(text)


def test_parse_names_the_expected_form() -> None:
    with pytest.raises(InputError) as e:
        PackageId.parse("APP")
    assert str(e.value) == "bad package ID 'APP' (expected C.CABINET.PACKAGE.VERSION[.GENERATION])"


# -- registering --------------------------------------------------------------

def make_source(root: Path, files: dict[str, str] | None = None) -> Path:
    src = root / "src"
    for rel, text in (files or {"bin/app.sh": "#!/bin/sh\necho app\n", "etc/app.conf": "x=1\n"}).items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_text(text)
    return src


@pytest.fixture
def store(tmp_path: Path) -> Storehouse:
    root = tmp_path / "RDS"
    (root / ".partial").mkdir(parents=True)
    return Storehouse(root)


def only_partial_left(store: Storehouse) -> bool:
    return sorted(p.name for p in store.root.iterdir()) == [".partial"]  # no chunk either


def only_partial_left_but(store: Storehouse, *names: str) -> bool:
    return sorted(p.name for p in store.root.iterdir() if p.name != ".chunks") == sorted([".partial", *names])


def test_register_writes_payload_and_manifest(store: Storehouse, tmp_path: Path) -> None:
    src = make_source(tmp_path)
    m = store.register(PID, src, "/opt/app", script="echo hi\n", expire_days=3)
    d = store.root / "C.AB.APP.0100.0000"
    assert sorted(p.name for p in d.iterdir()) == [ACCESSED, VERIFIED, MANIFEST, PAYLOAD]  # hashed as written
    on_disk = json.loads((d / MANIFEST).read_text())
    assert on_disk["sha256"] == fsutil.sha256_file(d / PAYLOAD) == m.sha256
    assert on_disk["size"] == (d / PAYLOAD).stat().st_size == m.size
    assert on_disk["id"] == "C.AB.APP.0100.0000"
    assert on_disk["install_dir"] == "/opt/app"
    assert on_disk["script"] == "echo hi\n"
    assert on_disk["expire_days"] == 3
    assert store.get(PID) == m
    assert store.has(PID)
    assert [x.id for x in store.list()] == [PID]
    store.verify(m)
    with tarfile.open(d / PAYLOAD) as tar:
        members = {t.name: t for t in tar.getmembers()}
    assert {"./bin/app.sh", "./etc/app.conf"} <= set(members)
    assert all(t.uid == 0 and t.uname == "root" for t in members.values())
    assert only_partial_left_but(store, "C.AB.APP.0100.0000")


def test_registering_the_same_version_twice_is_refused(store: Storehouse, tmp_path: Path) -> None:
    src = make_source(tmp_path)
    first = store.register(PID, src, "/opt/app")
    (src / "new-file").write_text("changed\n")
    with pytest.raises(InputError, match=r"^package C\.AB\.APP\.0100\.0000 is already registered$"):
        store.register(PID, src, "/opt/app")
    assert store.get(PID) == first
    assert fsutil.sha256_file(store.payload(PID)) == first.sha256
    assert only_partial_left_but(store, str(PID))


def test_another_generation_is_another_package(store: Storehouse, tmp_path: Path) -> None:
    src = make_source(tmp_path)
    store.register(PID, src, "/opt/app")
    store.register(PackageId.make("AB", "APP", "0100", 1), src, "/opt/app")
    assert [str(m.id) for m in store.list()] == ["C.AB.APP.0100.0000", "C.AB.APP.0100.0001"]


def test_missing_source_directory(store: Storehouse, tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"src: no such directory$"):
        store.register(PID, tmp_path / "src", "/opt/app")
    assert only_partial_left(store)


def test_source_that_is_a_file(store: Storehouse, tmp_path: Path) -> None:
    (tmp_path / "src").write_text("not a directory\n")
    with pytest.raises(InputError, match=r"src: no such directory$"):
        store.register(PID, tmp_path / "src", "/opt/app")
    assert only_partial_left(store)


def test_source_with_an_unreadable_file() -> None:
    """rdsft -c run by a user who cannot read a file of the source directory (root reads every file,
    so as root, as under CI, the command runs as nobody with setpriv, on a home nobody owns)."""
    with tempfile.TemporaryDirectory() as d:
        os.chmod(d, 0o755)
        home = Path(d) / "home"
        (home / "rdsprm").mkdir(parents=True)
        (home / "rdsprm" / "RDSSETFL").touch()  # a managing server
        Home.open(home)
        src = make_source(Path(d))
        (src / "etc" / "app.conf").chmod(0)
        argv = [str(BIN / "rdsft"), "-c", "-g", "AB", "-r", "APP", "-v", "0100", "-i", "/opt/app", str(src)]
        env = {**os.environ, "RDS_HOME": str(home)}
        if os.geteuid() == 0:
            for q in [home, *home.rglob("*")]:
                os.chown(q, 65534, 65534)
            argv = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *argv]
        proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
        assert proc.returncode == InputError.exit_code, proc.stderr
        assert re.fullmatch(r"rdsft: \S*app\.conf: cannot read.*\n", proc.stderr), proc.stderr
        assert sorted(q.name for q in (home / "RDS").iterdir() if q.name != ".partial") == []
        partial = home / "RDS" / ".partial"
        assert not partial.exists() or list(partial.iterdir()) == []


@pytest.mark.parametrize("install_dir", ["opt/app", "", "./opt", "~/app"])
def test_relative_install_dir_is_refused(store: Storehouse, tmp_path: Path, install_dir: str) -> None:
    with pytest.raises(InputError, match=r"must be an absolute path"):
        store.register(PID, make_source(tmp_path), install_dir)
    assert only_partial_left(store)


def test_install_dir_with_dotdot_is_refused(store: Storehouse, tmp_path: Path) -> None:
    """Regression: ``rdsft -c -i /opt/../../etc`` was registered; installed under InstallRoot it lands outside."""
    with pytest.raises(InputError):
        store.register(PID, make_source(tmp_path), "/opt/../../etc")
    assert only_partial_left(store)


@pytest.mark.parametrize(("name", "target"), [
    ("passwd", "/etc/passwd"),
    ("lib/up", "../../outside"),
    ("x", ".."),
])
def test_symlink_pointing_outside_is_refused_at_packaging(store: Storehouse, tmp_path: Path,
                                                          name: str, target: str) -> None:
    src = make_source(tmp_path)
    (src / name).parent.mkdir(parents=True, exist_ok=True)
    (src / name).symlink_to(target)
    with pytest.raises(InputError) as e:
        store.register(PID, src, "/opt/app")
    assert str(e.value) == f"./{name}: link points outside the source directory ({target})"
    assert not store.has(PID)
    assert only_partial_left(store)  # no stray temporary directory


def test_symlink_inside_is_packaged(store: Storehouse, tmp_path: Path) -> None:
    src = make_source(tmp_path)
    (src / "bin" / "app").symlink_to("app.sh")
    (src / "conf").symlink_to("etc/app.conf")
    m = store.register(PID, src, "/opt/app")
    with tarfile.open(store.payload(m.id)) as tar:
        links = {t.name: t.linkname for t in tar.getmembers() if t.issym()}
    assert links == {"./bin/app": "app.sh", "./conf": "etc/app.conf"}


def test_fifo_in_source_is_refused(store: Storehouse, tmp_path: Path) -> None:
    src = make_source(tmp_path)
    os.mkfifo(src / "pipe")
    with pytest.raises(InputError, match=r"^\./pipe: device and special files cannot be packaged$"):
        store.register(PID, src, "/opt/app")
    assert only_partial_left(store)


def test_stray_temporaries_of_a_crash_are_cleared_by_the_next_registration(store: Storehouse,
                                                                           tmp_path: Path) -> None:
    (store.root / ".tmp-abc123").mkdir()
    (store.root / ".tmp-abc123" / PAYLOAD).write_bytes(b"half")
    (store.root / ".tmp-file").write_bytes(b"half")
    store.register(PID, make_source(tmp_path), "/opt/app")
    assert only_partial_left_but(store, str(PID))


# -- manifests ----------------------------------------------------------------

GOOD_MANIFEST: dict[str, Any] = {
    "format": 1, "id": "C.AB.APP.0100.0000", "size": 10, "sha256": "ab" * 32, "install_dir": "/opt/app",
    "expire_days": None, "script": None, "packaged": "2024-01-01T00:00:00+0000",
}


def test_manifest_round_trip() -> None:
    m = Manifest.from_json(GOOD_MANIFEST)
    assert m.id == PID and m.size == 10 and m.install_dir == "/opt/app"
    assert m.to_json() == GOOD_MANIFEST
    assert Manifest.from_json(json.loads(json.dumps(m.to_json()))) == m


@pytest.mark.parametrize(("change", "why"), [
    ({"format": 2}, "format"),
    ({"format": None}, "format"),
    ({"id": "C.AB.APP"}, "bad id"),
    ({"id": 5}, "id not a string"),
    ({"size": -1}, "negative size"),
    ({"size": "ten"}, "size not a number"),
    ({"sha256": "AB" * 32}, "upper-case digest"),
    ({"sha256": "ab" * 31}, "short digest"),
    ({"sha256": "zz" * 32}, "not hex"),
    ({"install_dir": "opt/app"}, "relative install dir"),
    ({"expire_days": "soon"}, "bad expire_days"),
    ({"script": ["echo"]}, "script not a string"),
    ({"id": None}, "id missing"),
])
def test_manifest_from_json_rejects_malformed(change: dict[str, Any], why: str) -> None:
    with pytest.raises(InputError, match=r"^not a valid package manifest \("):
        Manifest.from_json({**GOOD_MANIFEST, **change})


@pytest.mark.parametrize("missing", ["format", "id", "size", "sha256", "install_dir"])
def test_manifest_from_json_rejects_missing_field(missing: str) -> None:
    d = {k: v for k, v in GOOD_MANIFEST.items() if k != missing}
    with pytest.raises(InputError, match=r"^not a valid package manifest"):
        Manifest.from_json(d)


@pytest.mark.parametrize("data", [None, [], "manifest", 5])
def test_manifest_from_json_rejects_non_objects(data: object) -> None:
    with pytest.raises(InputError, match=r"^not a valid package manifest"):
        Manifest.from_json(data)


def test_unreadable_manifest_in_the_storehouse(store: Storehouse) -> None:
    store.dir(PID).mkdir()
    (store.dir(PID) / MANIFEST).write_text("{not json")
    with pytest.raises(InputError, match=r"manifest\.json: unreadable manifest"):
        store.get(PID)
    assert store.list() == []  # listing skips it rather than failing


def chunked_manifest(n: int = 3, width: int = 4) -> dict[str, Any]:
    """A chunked manifest as JSON gives it: ``n`` chunks of 1,000 bytes packed to 600."""
    chunks = [[f"{i:064x}", 1000, 600, f"{i + n:064x}"][:width] for i in range(n)]
    return {**GOOD_MANIFEST, "size": 600 * n, "unpacked": 1000 * n, "chunks": chunks}


def test_a_chunked_manifest_round_trips() -> None:
    for width in (3, 4):
        m = Manifest.from_json(chunked_manifest(5, width))
        assert m.chunks[1] == (f"{1:064x}", 1000, 600, f"{6:064x}")[:width] and len(m.chunks) == 5
        assert Manifest.from_json(json.loads(json.dumps(m.to_json()))) == m


@pytest.mark.parametrize(("index", "entry", "why"), [
    (1, ["AB" * 32, 1000, 600], "upper-case digest"),
    (1, ["ab" * 31, 1000, 600], "short digest"),
    (1, ["ab" * 32 + "a", 1000, 600], "long digest"),
    (1, ["ab" * 31 + "a\n", 1000, 600], "a newline in the digest"),
    (1, ["ab" * 31 + "a\n" + "ab" * 32, 1000, 600], "two digests in one"),
    (1, ["\u0661" * 64, 1000, 600], "digits that are not ASCII"),
    (1, ["zz" * 32, 1000, 600], "not hex"),
    (1, [5, 1000, 600], "digest not a string"),
    (1, ["ab" * 32, True, 600], "size a bool"),
    (1, ["ab" * 32, 1000.0, 600], "size a float"),
    (1, ["ab" * 32, "1000", 600], "size a string"),
    (1, ["ab" * 32, 0, 600], "empty chunk"),
    (1, ["ab" * 32, 1000, -600], "negative packed size"),
    (1, ["ab" * 32, (2 << 20) + 1, 600], "chunk too big"),
    (1, ["ab" * 32, 1000, (2 << 20) + (2 << 14) + 65], "packed chunk too big"),
    (1, ["ab" * 32, 1000, 600, "AB" * 32], "packed digest upper-case"),
    (1, ["ab" * 32, 1000, 600, None], "packed digest not a string"),
    (1, ["ab" * 32, 1000], "too short"),
    (1, ["ab" * 32, 1000, 600, "ab" * 32, 1], "too long"),
    (0, {"sha256": "ab" * 32}, "not a list"),
    (2, None, "not a list"),
])
def test_every_chunk_entry_is_checked(index: int, entry: object, why: str) -> None:
    for width in (3, 4):
        d = chunked_manifest(3, width)
        d["chunks"][index] = entry if not isinstance(entry, list) or len(entry) != 3 or width == 3 \
            else [*entry, "cd" * 32]
        with pytest.raises(InputError, match=r"^not a valid package manifest \(chunk"):
            Manifest.from_json(d)


def test_chunk_entries_of_both_widths_in_one_list_are_refused() -> None:
    d = chunked_manifest(3, 4)
    d["chunks"][2] = d["chunks"][2][:3]
    with pytest.raises(InputError, match=r"chunk entry"):
        Manifest.from_json(d)


def test_chunks_that_do_not_add_up_are_refused() -> None:
    for change in ({"size": 1799}, {"unpacked": 3001}, {"unpacked": None}):
        with pytest.raises(InputError, match=r"do not add up"):
            Manifest.from_json({**chunked_manifest(3), **change})


@pytest.mark.parametrize("change", [
    {},
    {"script": 'sét\u2028up "chunks":0 \\"chunks": 0'},  # text that looks like the chunk list's placeholder
    {"install_dir": '/opt/"chunks": 0'},
    {"expire_days": 30, "signature": "s" * 88},
])
def test_the_signed_bytes_and_the_json_text_are_those_of_the_whole_manifest(change: dict[str, Any]) -> None:
    """Both are made from one encoding of the chunk list (Manifest._chunks_text)."""
    from rds import identity

    for m in (Manifest.from_json({**chunked_manifest(3), **change}), Manifest.from_json({**GOOD_MANIFEST, **change})):
        assert m.signed_bytes == identity.canonical(m.body())
        assert json.loads(m.json_text) == m.to_json()
        other = dataclasses.replace(m, install_dir="/etc")  # a copy is a manifest of its own: its own bytes
        assert other.signed_bytes == identity.canonical(other.body()) != m.signed_bytes


def test_parse_reads_each_text_afresh_and_the_same_text_once() -> None:
    text = json.dumps(chunked_manifest(50))
    m = Manifest.parse(text)
    assert Manifest.parse(text) is m and m == Manifest.from_json(json.loads(text))
    hostile = text.replace(f"{7:064x}", "AB" * 32)  # one chunk changed after the good text was read
    with pytest.raises(InputError, match=r"chunk entry"):
        Manifest.parse(hostile)
    moved = text.replace('"/opt/app"', '"/opt/other"')
    assert Manifest.parse(moved).install_dir == "/opt/other" and Manifest.parse(text) is m
    with pytest.raises(ValueError):
        Manifest.parse(text[:-1])


def test_a_manifest_replaced_on_disk_is_read_again(store: Storehouse) -> None:
    """Storehouse.get reads the file each time: the Manifest parsed before is given again only for the same
    text (a manifest replaced, by a new copy of the package or by hand, is read and checked afresh)."""
    store.dir(PID).mkdir()
    path = store.dir(PID) / MANIFEST
    first = json.dumps(chunked_manifest(40), indent=1)
    path.write_text(first)
    m = store.get(PID)
    assert m is not None and m.expire_days is None and store.get(PID) is m
    fsutil.atomic_write(path, json.dumps({**chunked_manifest(40), "expire_days": 9}).encode())
    again = store.get(PID)
    assert again is not None and again.expire_days == 9 and again.chunks == m.chunks
    path.write_text(first.replace(f"{3:064x}", "zz" * 32))  # the same size, in place
    with pytest.raises(InputError, match=r"chunk entry"):
        store.get(PID)
    path.write_text("{not json")
    with pytest.raises(InputError, match=r"manifest\.json: unreadable manifest"):
        store.get(PID)
    path.write_text(first)
    assert store.get(PID) == m
    path.unlink()
    assert store.get(PID) is None


def test_a_chunked_manifest_is_written_on_one_line(store: Storehouse) -> None:
    """Storehouse._commit writes a chunked manifest without indenting (json's indenting encoder is pure
    Python, 13-23 ms for 3,318 chunks); an old-format one stays indented."""
    for m in (Manifest.from_json(chunked_manifest(30)), Manifest.from_json(GOOD_MANIFEST)):
        work = store.root / ".partial" / "work"
        work.mkdir()
        store._commit(work, m)
        text = (store.dir(m.id) / MANIFEST).read_text()
        assert text.count("\n") == (0 if m.chunked else len(m.to_json()) + 1) and store.get(m.id) == m
        store.remove(m.id)


# -- downloads and verification ------------------------------------------------

def downloaded(store: Storehouse, tmp_path: Path) -> tuple[Manifest, bytes]:
    """A package registered in another storehouse, as a manifest and its payload bytes."""
    (tmp_path / "upper" / ".partial").mkdir(parents=True)
    upper = Storehouse(tmp_path / "upper")
    m = upper.register(PID, make_source(tmp_path), "/opt/app")
    return m, upper.payload(PID).read_bytes()


def test_add_downloaded_keeps_a_verified_download(store: Storehouse, tmp_path: Path) -> None:
    m, data = downloaded(store, tmp_path)
    part = store.partial_path(m.id, m.sha256)
    part.write_bytes(data)
    store.add_downloaded(m, part)
    assert store.get(PID) == m
    assert store.payload(PID).read_bytes() == data
    assert not part.exists()
    assert only_partial_left_but(store, str(PID))


@pytest.mark.usefixtures("whole_packages")  # a download of the payload file
def test_add_downloaded_discards_a_download_whose_sha256_differs(store: Storehouse, tmp_path: Path) -> None:
    m, data = downloaded(store, tmp_path)
    part = store.partial_path(m.id, m.sha256)
    part.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(IntegrityError, match=r"SHA-256 mismatch .* the download was discarded"):
        store.add_downloaded(m, part)
    assert not part.exists()
    assert not store.has(PID)
    assert only_partial_left(store)


def test_verify_detects_a_changed_payload(store: Storehouse, tmp_path: Path) -> None:
    m = store.register(PID, make_source(tmp_path), "/opt/app")
    with open(store.payload(PID), "r+b") as f:
        f.seek(m.size // 2)
        f.write(b"\0\0\0\0")
    with pytest.raises(IntegrityError, match=r"SHA-256 of .*payload\.tgz does not match its manifest; not used"):
        store.verify(m)


def test_clear_and_remove(store: Storehouse, tmp_path: Path) -> None:
    src = make_source(tmp_path)
    store.register(PID, src, "/opt/app")
    store.register(PackageId.make("AB", "OTHER", "1"), src, "/opt/other")
    (store.partial / "C.AB.X.1.0000.0123456789abcdef.part").write_bytes(b"half")
    assert store.remove(PID) is True
    assert store.remove(PID) is False
    assert store.clear() == 1
    assert store.list() == []
    assert only_partial_left(store)
    assert list(store.partial.iterdir()) == []


# -- through rdsft -c ---------------------------------------------------------

def test_rdsft_c_refuses_a_second_registration_with_exit_3(tree: Tree) -> None:
    mgr = tree.add("mgr")
    assert tree.package() == "C.AB.APP.0100.0000"
    src = tree.root / "again"
    src.mkdir()
    proc = mgr.run("rdsft", "-c", "-g", "AB", "-r", "APP", "-v", "0100", "-i", "/opt/app", str(src), check=False)
    assert proc.returncode == 3
    assert proc.stderr == "rdsft: package C.AB.APP.0100.0000 is already registered\n"
    assert sorted(p.name for p in (mgr.path / "RDS").iterdir()) == [".chunks", ".partial", "C.AB.APP.0100.0000"]


def test_rdsft_c_symlink_outside_exits_3_and_leaves_nothing(tree: Tree) -> None:
    mgr = tree.add("mgr")
    src = tree.root / "src"
    src.mkdir()
    (src / "shadow").symlink_to("/etc/shadow")
    proc = mgr.run("rdsft", "-c", "-g", "AB", "-r", "APP", "-v", "1", "-i", "/opt/app", str(src), check=False)
    assert proc.returncode == 3
    assert proc.stderr == "rdsft: ./shadow: link points outside the source directory (/etc/shadow)\n"
    assert sorted(p.name for p in (mgr.path / "RDS").iterdir()) == [".partial"]


def test_two_registrations_at_once_both_succeed(tree: Tree) -> None:
    """Regression: a second ``rdsft -c`` removed the first one's ``.tmp-*`` work directory as a crash stray,
    so the first failed with 'No such file or directory'."""
    mgr = tree.add("mgr")
    for name in ("A", "B"):
        (tree.root / f"src{name}").mkdir()
        (tree.root / f"src{name}" / "f").write_text(name)
    ready, go = tree.root / "ready", tree.root / "go"
    # the first registration stops while it packs, until told to go on
    slow = (
        "import pathlib, sys, time\n"
        "import rds.archive as p\n"
        "orig = p._packing_filter\n"
        "ready, go = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])\n"
        "def wait(m):\n"
        "    ready.touch()\n"
        "    end = time.time() + 20\n"
        "    while not go.exists() and time.time() < end:\n"
        "        time.sleep(0.02)\n"
        "    return orig(m)\n"
        "p._packing_filter = wait\n"
        "sys.argv = ['rdsft', *sys.argv[3:]]\n"
        "from rds.cli.rdsft import main\n"
        "main()\n"
    )
    first = subprocess.Popen([sys.executable, "-c", slow, str(ready), str(go), "-c", "-g", "AB", "-r", "A", "-v", "1",
                              "-i", "/opt/a", str(tree.root / "srcA")], env=mgr.env(), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        end = time.time() + 20
        while not ready.exists() and time.time() < end:
            time.sleep(0.02)
        assert ready.exists()
        work = {p.name for p in (mgr.path / "RDS").glob(".tmp-*")}
        assert work  # the first registration's work directory
        second = subprocess.Popen([str(BIN / "rdsft"), "-c", "-g", "AB", "-r", "B", "-v", "1", "-i", "/opt/b",
                                   str(tree.root / "srcB")], env=mgr.env(RDS_LOCK_TIMEOUT="30"),
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        # until the second is done, or took the first one's work directory, or waits (for a lock, say)
        end = time.time() + 4
        while (second.poll() is None and work <= {p.name for p in (mgr.path / "RDS").glob(".tmp-*")}
               and time.time() < end):
            time.sleep(0.02)
    finally:
        go.touch()
    out1, err1 = first.communicate(timeout=30)
    out2, err2 = second.communicate(timeout=30)
    assert (first.returncode, err1) == (0, "")
    assert (second.returncode, err2) == (0, "")
    assert sorted(p.name for p in (mgr.path / "RDS").iterdir()) == [".chunks", ".partial", "C.AB.A.1.0000",
                                                                     "C.AB.B.1.0000"]
