"""Archives checked whole and bounded (issue 13, parts 5 and 6).

An archive holding ``e -> d/d/d/../../../target`` before ``d -> .`` passed
the check (d did not exist yet when e was checked) and installed a link out of
the install directory; a variant writing through it was refused only after d
and e were extracted.  A package expanding to 10 GiB filled a tmpfs and left a
256 MiB partial file.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

import pytest
from conftest import Tree

from rds import archive
from rds.archive import extract, scan
from rds.errors import UnsafeArchive
from rds.packages import Manifest

MiB = 1 << 20


def entry(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"", linkname: str = "",
          size: int | None = None) -> tuple[tarfile.TarInfo, io.RawIOBase | io.BytesIO | None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = kind, linkname, 0o644 if kind != tarfile.DIRTYPE else 0o755
    info.size = (len(data) if size is None else size) if kind == tarfile.REGTYPE else 0
    return info, (Zeros(size) if size is not None else io.BytesIO(data)) if kind == tarfile.REGTYPE else None


class Zeros(io.RawIOBase):
    """``n`` zero bytes, never held in memory."""

    def __init__(self, n: int) -> None:
        self.left = n

    def readable(self) -> bool:
        return True

    def readinto(self, b: memoryview) -> int:  # type: ignore[override]
        n = min(len(b), self.left)
        b[:n] = bytes(n)
        self.left -= n
        return n


def make(path: Path, *entries: tuple[tarfile.TarInfo, object]) -> tuple[Path, int]:
    """The archive and its unpacked size (what rdsft -c records)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for info, data in entries:
            tar.addfile(info, data)  # type: ignore[arg-type]
    path.write_bytes(gzip.compress(raw.getvalue(), compresslevel=1))
    return path, len(raw.getvalue())


def tree_of(root: Path) -> dict[str, str]:
    """Every path under ``root`` with what it is: file content's SHA-256, link target, or dir."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        out[rel] = (f"-> {os.readlink(p)}" if p.is_symlink() else "dir" if p.is_dir()
                    else hashlib.sha256(p.read_bytes()).hexdigest())
    return out


@pytest.fixture
def place(tmp_path: Path) -> Path:
    (tmp_path / "root" / "opt" / "app").mkdir(parents=True)
    (tmp_path / "root" / "opt" / "app" / "README").write_text("the previous install\n")
    (tmp_path / "root" / "target").write_text("outside\n")
    return tmp_path


def test_link_checked_against_a_later_link_is_refused_before_writing(place: Path) -> None:
    arc, size = make(place / "a.tgz", entry("ok", data=b"x"),
                     entry("e", tarfile.SYMTYPE, linkname="d/d/d/../../../target"),
                     entry("d", tarfile.SYMTYPE, linkname="."))
    before = tree_of(place)
    with pytest.raises(UnsafeArchive, match=r"'e' is a link leading outside the install directory once"):
        extract(arc, place / "root" / "opt" / "app", size)
    assert tree_of(place) == before


def test_writing_through_such_a_link_leaves_the_previous_install_untouched(place: Path) -> None:
    arc, size = make(place / "a.tgz", entry("README", data=b"new\n"), entry("d", tarfile.SYMTYPE, linkname="."),
                     entry("e", tarfile.SYMTYPE, linkname="d/d/d/../../.."), entry("e/target", data=b"pwned\n"))
    before = tree_of(place)
    with pytest.raises(UnsafeArchive):
        extract(arc, place / "root" / "opt" / "app", size)
    assert tree_of(place) == before
    assert (place / "root" / "target").read_text() == "outside\n"


@pytest.mark.parametrize("links", [
    [("a", "b/../.."), ("b", ".")],            # a resolves through b, defined later
    [("x/l", "../y/../../z"), ("y", "x")],     # y -> x makes .. land above the root
    [("p", "q"), ("q", "p")],                  # a loop: refused, not followed forever
    [("s", "t/.."), ("t", "u"), ("u", "..")],  # a chain of three
])
def test_links_leading_out_through_the_final_tree(place: Path, links: list[tuple[str, str]]) -> None:
    entries = [entry("x", tarfile.DIRTYPE), *(entry(n, tarfile.SYMTYPE, linkname=t) for n, t in links)]
    arc, size = make(place / "a.tgz", *entries)
    with pytest.raises(UnsafeArchive):
        scan(arc, "a.tgz", size)


def test_links_that_stay_inside_pass(place: Path) -> None:
    arc, size = make(place / "a.tgz", entry("lib", tarfile.DIRTYPE), entry("lib/real", data=b"x"),
                     entry("cur", tarfile.SYMTYPE, linkname="lib/real"), entry("d", tarfile.SYMTYPE, linkname="."),
                     entry("e", tarfile.SYMTYPE, linkname="d/d/lib/../lib/real"),
                     entry("lib/up", tarfile.SYMTYPE, linkname="../cur"))
    dest = place / "root" / "opt" / "app"
    assert extract(arc, dest, size) == 6
    assert (dest / "e").read_text() == "x" and (dest / "lib" / "up").read_text() == "x"
    assert (dest / "README").read_text() == "the previous install\n"  # what the package does not hold stays


def test_bomb_beyond_the_recorded_unpacked_size_stops_there_and_leaves_nothing(place: Path) -> None:
    arc, size = make(place / "a.tgz", entry("big", size=64 * MiB))
    before = tree_of(place)
    with pytest.raises(UnsafeArchive, match="expands past"):
        extract(arc, place / "root" / "opt" / "app", 4 * MiB)  # the manifest says 4 MiB
    assert tree_of(place) == before  # no partial file, no fresh directory


def test_ratio_over_the_limit_is_refused_before_reading(place: Path) -> None:
    arc, size = make(place / "a.tgz", entry("big", size=256 * MiB))
    assert size > arc.stat().st_size * archive.MAX_RATIO
    before = tree_of(place)
    with pytest.raises(UnsafeArchive, match=f"compression ratio over {archive.MAX_RATIO}"):
        extract(arc, place / "root" / "opt" / "app", size)
    assert tree_of(place) == before


def test_old_manifest_without_unpacked_size_is_bounded_by_the_ratio(place: Path, tree: Tree) -> None:
    """A manifest made before the unpacked size was recorded still loads and installs; a bomb is stopped."""
    good, _ = make(place / "good.tgz", entry("bin", tarfile.DIRTYPE), entry("bin/app", data=b"app\n"))
    dest = place / "root" / "opt" / "app"
    assert extract(good, dest, None) == 2 and (dest / "bin" / "app").read_text() == "app\n"
    bomb, _ = make(place / "bomb.tgz", entry("big", size=300 * MiB))
    assert bomb.stat().st_size * archive.MAX_RATIO < 300 * MiB
    before = tree_of(place)
    with pytest.raises(UnsafeArchive, match="expands past"):
        extract(bomb, dest, None)
    assert tree_of(place) == before
    old = {"format": 1, "id": "C.AB.APP.0100.0000", "size": 10, "sha256": "ab" * 32, "install_dir": "/opt/app"}
    assert Manifest.from_json(old).unpacked is None and "unpacked" not in Manifest.from_json(old).to_json()


@pytest.mark.usefixtures("whole_packages")  # a manifest made before the unpacked size: made before chunks too
def test_package_with_an_old_manifest_still_installs(tree: Tree) -> None:
    mgr, relay = tree.add("mgr"), tree.add("relay", "mgr")
    relay.run("rdsft", "-a")
    pid = tree.package()
    path = mgr.path / "RDS" / pid / "manifest.json"
    m = json.loads(path.read_text())
    del m["unpacked"]
    path.write_text(json.dumps(m))
    mgr.run("dcmjexe", "-r", pid, "-h", "relay")
    relay.run("rdsft", "-a")
    assert (relay.installed() / "bin" / "app.sh").read_text() == "#!/bin/sh\necho app\n"


def test_rdsft_c_records_the_unpacked_size(tree: Tree) -> None:
    mgr = tree.add("mgr")
    pid = tree.package()
    m = json.loads((mgr.path / "RDS" / pid / "manifest.json").read_text())
    assert m["unpacked"] == len(gzip.decompress((mgr.path / "RDS" / pid / "payload.tgz").read_bytes()))


def test_rdsft_c_refuses_a_package_over_the_ratio(tree: Tree, tmp_path: Path) -> None:
    mgr = tree.add("mgr")
    src = tmp_path / "src"
    src.mkdir()
    with open(src / "zeros", "wb") as f:
        f.truncate(300 * MiB)  # sparse: costs no disk, packs 300 MiB of zeros
    proc = mgr.run("rdsft", "-c", "-g", "AB", "-r", "Z", "-v", "1", "-i", "/opt/z", str(src), check=False)
    assert proc.returncode != 0 and f"compression ratio over {archive.MAX_RATIO}" in proc.stderr
    assert not list((mgr.path / "RDS").glob("C.AB.Z.*"))


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_an_install_directory_that_is_a_mount_point_is_replaced_in_place(place: Path) -> None:
    """The fresh directory lies on the install directory's own file system: each move stays a rename."""
    from faults.runners import small_fs

    dest = place / "root" / "opt" / "mounted"
    dest.mkdir()
    with small_fs(dest, 64 * MiB):
        (dest / "keep").write_text("kept\n")
        arc, size = make(place / "a.tgz", entry("bin", tarfile.DIRTYPE), entry("bin/app", data=b"v2\n"))
        assert extract(arc, dest, size) == 2
        assert (dest / "bin" / "app").read_text() == "v2\n" and (dest / "keep").read_text() == "kept\n"
        assert not [p for p in dest.iterdir() if p.name.startswith(".rds-new-")]
