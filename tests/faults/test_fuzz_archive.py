"""Fuzzing package archives: hostile tar members through check_member and the real install.

Members with absolute paths, ``..``, symbolic and hard links out of the install directory, devices,
fifos, sizes that lie, duplicate names, unknown types, cut or garbage archives; two packages in a row
into the same install directory.  Every install ends COMPLETE or ERROR with a one-line message and
never raises; nothing is written outside the home and the install directory; what is installed
holds no device, no set-id bit and no link that leads out.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import stat
import tarfile
from pathlib import Path
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from faults.hostile import clean_error, one_line, snapshot
from rds import install, jobs
from rds.archive import check_member
from rds.errors import UnsafeArchive
from rds.home import Home
from rds.jobs import Job
from rds.packages import Manifest, PackageId
from rds.storehouse import Storehouse

ABS = "{ABS}"  # replaced by an absolute path inside the sandbox
NAMES = ["a", "b", "d", "d/", "d/f", "d/e/f", "./a", ".", "./", "", "lnk", "lnk/f", "lnk/", "h", "../victim",
         "../../secret", "a/../../secret", "d/../a", f"{ABS}/abs-target", "/abs", "a" * 120, "x/" * 60 + "f",
         "é", "a\\b", "a\nb", "d/./f", "d//f"]
LINKS = ["a", "d", "d/f", ".", "..", "../victim", "../../secret", ABS, f"{ABS}/abs-target", "/etc/passwd",
         "lnk", "d/..", "d/../..", "lnk/..", "", "nonexistent", "h", "./a"]
TYPES = [tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.CHRTYPE,
         tarfile.BLKTYPE, tarfile.FIFOTYPE, tarfile.CONTTYPE, b"Z"]

members = st.fixed_dictionaries({
    "name": st.sampled_from(NAMES), "type": st.sampled_from(TYPES), "linkname": st.sampled_from(LINKS),
    "data": st.binary(max_size=30), "mode": st.sampled_from([0o644, 0o755, 0o4755, 0o2777, 0o7777, 0o000]),
    "size": st.sampled_from([None, None, None, 0, 3, 2**33, 2**40]),  # None: the data's true size
})
archives = st.fixed_dictionaries({
    "members": st.lists(members, min_size=1, max_size=6),
    "cut": st.sampled_from([None, None, None, 100, 512, 700, 1024]),
    "gzip": st.booleans(), "end": st.booleans(), "garbage": st.sampled_from([None, None, b"\x1f\x8b junk", b"x" * 600]),
})


def build(spec: dict[str, Any], absolute: str) -> bytes:
    """The bytes of the archive ``spec`` describes; headers are written by hand so that they may lie."""
    if spec["garbage"] is not None:
        return bytes(spec["garbage"])
    raw = b""
    for m in spec["members"]:
        ti = tarfile.TarInfo(m["name"].replace(ABS, absolute))
        ti.type = m["type"]
        ti.linkname = m["linkname"].replace(ABS, absolute)
        ti.mode = m["mode"]
        ti.size = len(m["data"]) if m["size"] is None else m["size"]
        if ti.type in (tarfile.CHRTYPE, tarfile.BLKTYPE):
            ti.devmajor, ti.devminor = 1, 3  # /dev/null's numbers
        raw += ti.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
        if ti.type in tarfile.REGULAR_TYPES or ti.type == b"Z":
            raw += m["data"] + b"\0" * (-len(m["data"]) % tarfile.BLOCKSIZE)
    if spec["end"]:
        raw += b"\0" * (2 * tarfile.BLOCKSIZE)
    if spec["cut"] is not None:
        raw = raw[:spec["cut"]]
    return gzip.compress(raw, mtime=0) if spec["gzip"] else raw


@given(members)
def test_check_member(tmp_path: Path, m: dict[str, Any]) -> None:
    ti = tarfile.TarInfo(m["name"].replace(ABS, str(tmp_path)))
    ti.type, ti.linkname, ti.mode = m["type"], m["linkname"].replace(ABS, str(tmp_path)), m["mode"]
    dest = tmp_path / "dest"
    try:
        out = check_member(ti, str(dest))
    except UnsafeArchive as e:
        clean_error(e)
        return
    assert out is not None
    assert not out.name.startswith("/") and ".." not in Path(out.name).parts
    assert out.isfile() or out.isdir() or out.issym() or out.islnk()
    assert out.mode is None or not out.mode & (stat.S_ISUID | stat.S_ISGID)


class Sandbox:
    """A home, its install root and files around them that no install may touch."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.home = Home.open(root / "home")
        (self.home.prm / "RDSSETFL").write_text(f"HostName\tc\nInstallRoot\t{root / 'root'}\n")
        self.dest = root / "root" / "opt" / "app"
        (root / "root" / "opt").mkdir(parents=True, exist_ok=True)
        (root / "root" / "opt" / "victim").write_text("must stay\n")
        (root / "secret").write_text("must stay too\n")
        (root / "abs-target").mkdir(exist_ok=True)
        self.store = Storehouse(self.home.packages)
        self.job_no = 0

    def install(self, payload: bytes, version: str) -> Any:
        pid = PackageId.make("AB", "APP", version)
        m = Manifest(pid, len(payload), hashlib.sha256(payload).hexdigest(), "/opt/app")
        self.store.remove(pid)
        part = self.store.partial_path(pid, m.sha256)
        part.write_bytes(payload)
        self.store.add_downloaded(m, part)
        self.job_no += 1
        job = Job(self.job_no, "c", jobs.INSTALL, pid, "now")
        return install.install(self.home, self.store, job, m, False, lambda line: None)


def check_installed(dest: Path) -> None:
    if not dest.exists():
        return
    top = os.path.realpath(dest)
    for dirpath, dirnames, filenames in os.walk(dest):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st_ = p.lstat()
            assert stat.S_ISREG(st_.st_mode) or stat.S_ISDIR(st_.st_mode) or stat.S_ISLNK(st_.st_mode), \
                f"{p} is a special file"
            assert not st_.st_mode & (stat.S_ISUID | stat.S_ISGID), f"{p} is set-id"
            if stat.S_ISLNK(st_.st_mode):
                target = os.path.realpath(p)
                assert target == top or target.startswith(top + os.sep), f"{p} leads out, to {target}"


@given(st.lists(archives, min_size=1, max_size=2))
def test_install_hostile_archives(tmp_path: Path, specs: list[dict[str, Any]]) -> None:
    box = Sandbox(tmp_path / f"box{len(list(tmp_path.iterdir()))}")
    before = snapshot(box.root, skip=(box.home.path, box.dest))
    for n, spec in enumerate(specs):
        res = box.install(build(spec, str(box.root)), f"{n}")
        assert res.status in ("COMPLETE", "ERROR")
        one_line(res.message)
        check_installed(box.dest)
    assert snapshot(box.root, skip=(box.home.path, box.dest)) == before, "an install wrote outside its directory"


def member(name: str, type_: bytes = tarfile.REGTYPE, linkname: str = "", data: bytes = b"x") -> dict[str, Any]:
    return {"name": name, "type": type_, "linkname": linkname, "data": data, "mode": 0o644, "size": None}


def archive(*ms: dict[str, Any]) -> dict[str, Any]:
    return {"members": list(ms), "cut": None, "gzip": True, "end": True, "garbage": None}


def test_a_link_that_leads_out_through_another_link(tmp_path: Path) -> None:
    """Each link of the archive stays inside lexically, but one goes through the other (``d/l -> ..``,
    ``m -> d/l/..``) and so leads out: refused, and nothing that leads out is left."""
    box = Sandbox(tmp_path / "box")
    spec = archive(member("d", tarfile.DIRTYPE), member("d/l", tarfile.SYMTYPE, ".."),
                   member("m", tarfile.SYMTYPE, "d/l/.."))
    res = box.install(build(spec, str(box.root)), "1")
    assert res.status == "ERROR" and "m" in res.message, res
    check_installed(box.dest)


def test_a_second_package_writing_through_the_first_one_s_link(tmp_path: Path) -> None:
    """The first package leaves a link inside the install directory; the second writes a file under the link's
    name: it lands inside, or the install fails; nothing outside changes."""
    box = Sandbox(tmp_path / "box")
    before = snapshot(box.root, skip=(box.home.path, box.dest))
    first = box.install(build(archive(member("sub", tarfile.DIRTYPE), member("lnk", tarfile.SYMTYPE, "sub")),
                              str(box.root)), "1")
    assert first.status == "COMPLETE", first
    second = box.install(build(archive(member("lnk", tarfile.DIRTYPE), member("lnk/f", data=b"y")),
                               str(box.root)), "2")
    assert second.status in ("COMPLETE", "ERROR")
    check_installed(box.dest)
    assert snapshot(box.root, skip=(box.home.path, box.dest)) == before


def test_a_device_member_is_refused(tmp_path: Path) -> None:
    box = Sandbox(tmp_path / "box")
    res = box.install(build(archive(member("a"), member("null", tarfile.CHRTYPE)), str(box.root)), "1")
    assert res.status == "ERROR" and "device or special file" in res.message
    assert not box.dest.exists() or not (box.dest / "a").exists(), "checked whole before anything is written"


def test_a_hard_link_to_a_later_member_is_refused(tmp_path: Path) -> None:
    """Bug found by fuzzing: a hard link to a member that comes after it (or to itself) passed the check, and
    tarfile then raised KeyError out of the install: a traceback instead of an ERROR result."""
    box = Sandbox(tmp_path / "box")
    for n, spec in enumerate([archive(member("h", tarfile.LNKTYPE, "a"), member("a")),
                              archive(member("h", tarfile.LNKTYPE, "h"))]):
        res = box.install(build(spec, str(box.root)), str(n))
        assert res.status == "ERROR" and "not an earlier member" in res.message, res
    spec = archive(member("a", data=b"same"), member("h", tarfile.LNKTYPE, "a"))
    assert box.install(build(spec, str(box.root)), "9").status == "COMPLETE"
    assert (box.dest / "h").read_bytes() == b"same"


def test_an_unreadable_archive_is_one_line(tmp_path: Path) -> None:
    """Bug found by fuzzing: tarfile's error for an archive that no method opens runs over several lines, and
    the ERROR result carried them all."""
    box = Sandbox(tmp_path / "box")
    res = box.install(b"x" * 600, "1")
    assert res.status == "ERROR" and "payload.tgz: not a readable archive (" in res.message
    one_line(res.message)
