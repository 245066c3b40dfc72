"""Installing on a host (rds/install.py, rds/archive.py): hostile archives, SHA-256, scripts."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import pytest
from conftest import Host, Tree, installs

from rds import fsutil
from rds.archive import check_member, extract
from rds.errors import UnsafeArchive
from rds.install import last_line


def entry(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"", linkname: str = "",
          mode: int = 0o644) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    info.mode = mode
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    if kind in (tarfile.CHRTYPE, tarfile.BLKTYPE):
        info.devmajor, info.devminor = 1, 3
    return info, data


def archive(path: Path, *entries: tuple[tarfile.TarInfo, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data) if info.isfile() else None)
    return path


def snapshot(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.fixture
def place(tmp_path: Path) -> Path:
    """A sandbox: the archive beside ``root``, the destination deep inside it."""
    (tmp_path / "sandbox" / "root" / "opt").mkdir(parents=True)
    return tmp_path / "sandbox"


GOOD_FIRST = entry("README", data=b"written first\n")

HOSTILE = {
    "absolute path": (entry("/tmp/rds-test-absolute-pwn", data=b"x"), "is outside the install directory"),
    "dotdot": (entry("../pwn", data=b"x"), "is outside the install directory"),
    "dotdot deep": (entry("lib/../../../pwn", data=b"x"), "is outside the install directory"),
    "symlink to /etc/passwd": (entry("passwd", tarfile.SYMTYPE, linkname="/etc/passwd"),
                               "is a link pointing outside the install directory (/etc/passwd)"),
    "symlink a -> ../../x": (entry("a", tarfile.SYMTYPE, linkname="../../x"),
                             "is a link pointing outside the install directory (../../x)"),
    "symlink in subdir": (entry("lib/a", tarfile.SYMTYPE, linkname="../../x"),
                          "is a link pointing outside the install directory (../../x)"),
    "hard link outside": (entry("h", tarfile.LNKTYPE, linkname="../outside"), "refused"),
    "hard link to /etc/passwd": (entry("h", tarfile.LNKTYPE, linkname="/etc/passwd"), "refused"),
    "character device": (entry("null", tarfile.CHRTYPE), "is a device or special file"),
    "block device": (entry("disk", tarfile.BLKTYPE), "is a device or special file"),
    "fifo": (entry("pipe", tarfile.FIFOTYPE), "is a device or special file"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_archive_is_refused_and_nothing_is_written(case: str, place: Path) -> None:
    member, why = HOSTILE[case]
    arc = archive(place / "payload.tgz", GOOD_FIRST, member)
    dest = place / "root" / "opt" / "app"
    before = snapshot(place)
    with pytest.raises(UnsafeArchive) as e:
        extract(arc, dest)
    assert str(e.value).startswith(f"member {member[0].name!r}")
    assert why in str(e.value)
    assert not dest.exists()
    assert snapshot(place) == before
    assert not Path("/tmp/rds-test-absolute-pwn").exists()


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_archive_into_an_existing_install_dir_leaves_it_as_it_was(case: str, place: Path) -> None:
    member, _ = HOSTILE[case]
    arc = archive(place / "payload.tgz", GOOD_FIRST, member)
    dest = place / "root" / "opt" / "app"
    dest.mkdir()
    (dest / "README").write_text("the installed version\n")
    before = snapshot(place)
    with pytest.raises(UnsafeArchive):
        extract(arc, dest)
    assert snapshot(place) == before
    assert (dest / "README").read_text() == "the installed version\n"


def test_link_through_an_earlier_symlink_writes_nothing(place: Path) -> None:
    """Regression: ``d -> .`` then ``d/e -> ..`` was refused only mid-extraction, leaving ``d`` and earlier
    members in the install directory although the archive as a whole was refused."""
    arc = archive(place / "payload.tgz", GOOD_FIRST, entry("d", tarfile.SYMTYPE, linkname="."),
                  entry("d/e", tarfile.SYMTYPE, linkname=".."), entry("d/e/pwn", data=b"x"))
    dest = place / "root" / "opt" / "app"
    before = snapshot(place)
    with pytest.raises(UnsafeArchive):
        extract(arc, dest)
    assert not (place / "root" / "opt" / "pwn").exists()
    assert snapshot(place) == before


def test_hard_link_to_a_missing_member_is_refused(place: Path) -> None:
    """Regression: a hard link member naming a target that is not in the archive raised KeyError from extract()
    instead of UnsafeArchive."""
    arc = archive(place / "payload.tgz", GOOD_FIRST, entry("h", tarfile.LNKTYPE, linkname="missing"))
    with pytest.raises(UnsafeArchive):
        extract(arc, place / "root" / "opt" / "app")


def test_preexisting_symlink_in_the_install_dir_is_not_followed(place: Path, tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    dest = place / "root" / "opt" / "app"
    dest.mkdir()
    (dest / "logs").symlink_to(outside)
    arc = archive(place / "payload.tgz", entry("logs/x", data=b"x"))
    with pytest.raises(UnsafeArchive, match=r"logs: the package has a directory here, the install directory a link"):
        extract(arc, dest)
    assert list(outside.iterdir()) == []


def test_check_member_allows_ordinary_members(tmp_path: Path) -> None:
    for info, _ in (entry("bin/app", data=b"x", mode=0o755), entry("lib", tarfile.DIRTYPE, mode=0o755),
                    entry("lib/cur", tarfile.SYMTYPE, linkname="../bin/app"),
                    entry("bin/again", tarfile.LNKTYPE, linkname="bin/app")):
        assert check_member(info, str(tmp_path)).name == info.name


def test_good_archive_extracts(place: Path) -> None:
    arc = archive(place / "payload.tgz",
                  entry(".", tarfile.DIRTYPE, mode=0o755),
                  entry("bin", tarfile.DIRTYPE, mode=0o755),
                  entry("bin/app", data=b"#!/bin/sh\necho app\n", mode=0o755),
                  entry("bin/app-link", tarfile.SYMTYPE, linkname="app"),
                  entry("bin/app-hard", tarfile.LNKTYPE, linkname="bin/app", mode=0o755),
                  entry("etc/app.conf", data=b"x=1\n"),
                  entry("current", tarfile.SYMTYPE, linkname="./bin/../etc"))
    dest = place / "root" / "opt" / "app"
    assert extract(arc, dest) == 7
    assert (dest / "bin" / "app").read_bytes() == b"#!/bin/sh\necho app\n"
    assert os.access(dest / "bin" / "app", os.X_OK)
    assert os.readlink(dest / "bin" / "app-link") == "app"
    assert (dest / "bin" / "app-hard").stat().st_ino == (dest / "bin" / "app").stat().st_ino
    assert (dest / "current" / "app.conf").read_text() == "x=1\n"
    # and once more over itself: extraction can be repeated
    assert extract(arc, dest) == 7
    assert (dest / "etc" / "app.conf").read_text() == "x=1\n"


def test_setuid_and_world_writable_bits_are_dropped(place: Path) -> None:
    arc = archive(place / "payload.tgz", entry("su", data=b"x", mode=0o4777))
    dest = place / "root" / "opt" / "app"
    extract(arc, dest)
    assert (dest / "su").stat().st_mode & 0o7777 == 0o755


@pytest.mark.parametrize("content", [b"", b"not an archive at all", b"\x1f\x8b\x08\x00garbage"])
def test_unreadable_archive(place: Path, content: bytes) -> None:
    (place / "payload.tgz").write_bytes(content)
    dest = place / "root" / "opt" / "app"
    with pytest.raises(UnsafeArchive, match=r"^payload\.tgz: not a readable archive"):
        extract(place / "payload.tgz", dest)
    assert not dest.exists()


def test_truncated_archive_writes_nothing(place: Path) -> None:
    big = os.urandom(200_000)  # incompressible, so the cut falls inside the second member
    arc = archive(place / "payload.tgz", GOOD_FIRST, entry("blob", data=big), entry("last", data=b"y"))
    data = arc.read_bytes()
    arc.write_bytes(data[: len(data) // 2])
    dest = place / "root" / "opt" / "app"
    with pytest.raises(UnsafeArchive, match=r"not a readable archive"):
        extract(arc, dest)
    assert not dest.exists()


def test_last_line(tmp_path: Path) -> None:
    log = tmp_path / "x.log"
    log.write_text("--- 2024 job 1 C.AB.APP.0100.0000 in /opt/app\nfirst\nthe reason\n\n  \n")
    assert last_line(log) == "the reason"
    log.write_text("--- 2024 job 1 C.AB.APP.0100.0000 in /opt/app\n")
    assert last_line(log) == ""  # the script said nothing
    assert last_line(tmp_path / "missing.log") == ""


# -- through the hierarchy ----------------------------------------------------

def corrupt(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def job_status(mgr: Host, job: str) -> list[dict[str, str]]:
    proc = mgr.run("dcmstat", "-n", job, "--json", check=False)
    return json.loads(proc.stdout)  # type: ignore[no-any-return]


def two_levels(tree: Tree, script: str | None = None) -> tuple[Host, Host, str, str]:
    mgr = tree.add("mgr")
    client = tree.add("c1", upper="mgr")
    tree.check_in_upward(["c1"])
    pid = tree.package(script=script) if script is not None else tree.package()
    job = mgr.run("dcmjexe", "-r", pid, "-h", "c1").stdout.strip()
    return mgr, client, pid, job


def test_corrupt_copy_on_the_client_is_never_installed(tree: Tree) -> None:
    """Under JIT a damaged cached copy is removed and fetched again; the good copy is installed."""
    mgr, client, pid, job = two_levels(tree)
    killed = client.run("rdsft", "-a", check=False, env=client.env(RDS_CRASH_AT="fetched"))
    assert killed.returncode == -9
    corrupt(client.path / "RDS" / pid / "payload.tgz")

    proc = client.run("rdsft", "-a")
    assert "COMPLETE" in proc.stdout and "packages fetched: 1" in proc.stdout
    assert (client.installed() / "bin" / "app.sh").read_text() == "#!/bin/sh\necho app\n"
    log = (client.path / "log" / "rds.log").read_text()
    assert f"package {pid}: SHA-256 of" in log
    assert "does not match its manifest; not used; removed, fetching it again" in log
    assert installs(client) == 1
    [row] = job_status(mgr, job)
    assert row["status"] == "COMPLETE"


def test_corrupt_staged_copy_under_sneakernet_is_an_error(tree: Tree) -> None:
    """Under SNEAKERNET the copy here is the only one: damaged, it is removed and the job ends in ERROR."""
    mgr, client, pid, job = two_levels(tree)
    killed = client.run("rdsft", "-a", check=False, env=client.env(RDS_CRASH_AT="fetched"))
    assert killed.returncode == -9
    corrupt(client.path / "RDS" / pid / "payload.tgz")
    with open(client.path / "rdsprm" / "RDSSETFL", "a") as f:
        f.write("CachingPolicy\tSNEAKERNET\n")

    proc = client.run("rdsft", "-a", check=False)
    assert proc.returncode == 4
    assert not client.installed().exists()
    assert not (client.path / "RDS" / pid).exists()  # the bad copy is not kept
    [row] = job_status(mgr, job)
    assert row["status"] == "ERROR"
    assert row["message"].startswith(f"unable to cache package {pid} on c1: CachingPolicy is SNEAKERNET")
    assert "does not match its manifest" in row["message"]


def test_corrupt_payload_on_the_managing_server_is_an_error_that_says_so(tree: Tree) -> None:
    """The managing server checks its copy before serving it; damaged, it cannot fetch a good one: the job
    ends in ERROR saying what to do (it used to stay EXEC for ever, each pass discarding the download)."""
    mgr, client, pid, job = two_levels(tree)
    corrupt(mgr.path / "RDS" / pid / "payload.tgz")
    proc = client.run("rdsft", "-a", check=False)
    assert proc.returncode == 4, proc.stderr
    assert "packages fetched: 0" in proc.stdout
    assert not client.installed().exists()
    assert not (client.path / "RDS" / pid).exists()
    assert list((client.path / "RDS" / ".partial").iterdir()) == []
    [row] = job_status(mgr, job)
    assert row["status"] == "ERROR"
    assert row["message"].startswith(f"package {pid} cannot be served by the managing server mgr: the copy here "
                                     f"was damaged (package {pid}: SHA-256 of ")
    assert row["message"].endswith("register it again with 'rdsft -c', or stage a good copy with 'rdsstage -i PATH'")
    assert (client.path / "log" / "rds.log").read_text().count("cannot be served by the managing server") == 1
    assert (mgr.path / "log" / "rds.log").read_text().count("cannot be served by the managing server") == 1


def test_corrupt_copy_on_a_relay_is_never_served(tree: Tree) -> None:
    """The relay checks its copy before serving it: a damaged one is removed and fetched again (JIT)."""
    mgr = tree.add("mgr")
    relay = tree.add("relay", upper="mgr")
    client = tree.add("c1", upper="relay")
    tree.check_in_upward(["c1", "relay"])
    pid = tree.package()
    job = mgr.run("dcmjexe", "-r", pid, "-h", "c1").stdout.strip()
    relay.run("rdsft", "-a")  # the relay keeps the job; the package comes when c1 asks for it
    killed = client.run("rdsft", "-a", check=False, env=client.env(RDS_CRASH_AT="fetched@1"))
    assert killed.returncode == -9  # the relay's fetch on c1's behalf was the first
    assert (relay.path / "RDS" / pid / "manifest.json").is_file()
    assert not (client.path / "RDS" / pid).exists()
    corrupt(relay.path / "RDS" / pid / "payload.tgz")
    client.run("rdsft", "-a")
    assert installs(client) == 1
    log = (relay.path / "log" / "rds.log").read_text()
    assert "does not match its manifest; not used; removed, fetching it again" in log
    assert log.count("fetching package") == 2  # the first one's process was killed after the fetch
    relay.run("rdssnd", "--once")
    [row] = job_status(mgr, job)
    assert row["status"] == "COMPLETE"


def test_script_exit_status_decides_complete(tree: Tree) -> None:
    mgr, client, pid, job = two_levels(tree, script="#!/bin/sh\necho preparing\necho \"in $(pwd)\"\nexit 0\n")
    proc = client.run("rdsft", "-a")
    assert "COMPLETE" in proc.stdout
    assert (client.installed() / "bin" / "app.sh").is_file()
    log = (client.path / "log" / "install" / f"{job}.c1.log").read_text()
    assert "preparing\n" in log
    assert f"in {client.installed()}\n" in log
    [row] = job_status(mgr, job)
    assert row["status"] == "COMPLETE"
    assert row["message"] == f"installed in {client.installed()}; script exited 0"
    assert mgr.run("dcmstat", "-n", job).returncode == 0
    assert sorted(p.name for p in (client.path / "work").iterdir()) == []  # wrapper files cleared


def test_script_failure_is_error_with_its_last_line(tree: Tree) -> None:
    script = "echo step one\necho 'cannot create /opt/app/var: quota exceeded' >&2\nexit 3\n"
    mgr, client, pid, job = two_levels(tree, script=script)
    proc = client.run("rdsft", "-a", check=False)
    assert proc.returncode == 4
    assert proc.stderr == "rdsft: 1 of 1 install(s) ended in error\n"
    log = (client.path / "log" / "install" / f"{job}.c1.log").read_text()
    assert log.startswith("--- ")
    assert f"job {job} {pid} in {client.installed()}\n" in log
    assert log.endswith("step one\ncannot create /opt/app/var: quota exceeded\n")
    [row] = job_status(mgr, job)
    assert row["status"] == "ERROR"
    assert row["message"] == "script exited 3: cannot create /opt/app/var: quota exceeded"
    assert mgr.run("dcmstat", "-n", job, check=False).returncode == 30
    # an install error is final: the next pass does not run the script again
    client.run("rdsft", "-a")
    assert log == (client.path / "log" / "install" / f"{job}.c1.log").read_text()


def test_script_gets_its_environment(tree: Tree) -> None:
    script = "#!/bin/sh\necho \"$RDS_PACKAGE $RDS_JOB $RDS_HOST $RDS_INSTALL_DIR\" > \"$RDS_INSTALL_DIR/env\"\n"
    mgr, client, pid, job = two_levels(tree, script=script)
    client.run("rdsft", "-a")
    assert (client.installed() / "env").read_text() == f"{pid} {job} c1 {client.installed()}\n"


def test_script_killed_by_a_signal(tree: Tree) -> None:
    mgr, client, pid, job = two_levels(tree, script="echo going\nkill -9 $$\n")
    proc = client.run("rdsft", "-a", check=False)
    assert proc.returncode == 4
    [row] = job_status(mgr, job)
    assert (row["status"], row["message"]) == ("ERROR", "script killed by signal 9: going")


def test_package_without_script_is_complete_once_extracted(tree: Tree) -> None:
    mgr = tree.add("mgr")
    client = tree.add("c1", upper="mgr")
    tree.check_in_upward(["c1"])
    pid = tree.package(script=None, files={"share/doc.txt": "doc\n"})
    job = mgr.run("dcmjexe", "-r", pid, "-h", "c1").stdout.strip()
    client.run("rdsft", "-a")
    assert (client.installed() / "share" / "doc.txt").read_text() == "doc\n"
    [row] = job_status(mgr, job)
    assert (row["status"], row["message"]) == ("COMPLETE", f"installed in {client.installed()}")


def forge(mgr: Host, pid: str, *entries: tuple[tarfile.TarInfo, bytes]) -> None:
    """Replace a registered package by a hostile archive with a matching manifest, as a hostile upper would."""
    d = mgr.path / "RDS" / pid
    archive(d / "payload.tgz", *entries)
    m = json.loads((d / "manifest.json").read_text())
    m["sha256"], m["size"] = fsutil.sha256_file(d / "payload.tgz"), (d / "payload.tgz").stat().st_size
    (d / "manifest.json").write_text(json.dumps(m))


@pytest.mark.parametrize("member", [
    pytest.param(entry("../../pwn", data=b"x"), id="dotdot"),
    pytest.param(entry("passwd", tarfile.SYMTYPE, linkname="/etc/passwd"), id="symlink"),
    pytest.param(entry("h", tarfile.LNKTYPE, linkname="missing"), id="hardlink-to-missing"),
])
@pytest.mark.usefixtures("whole_packages")  # forged as a payload file (test_chunks forges chunks)
def test_hostile_package_ends_its_job_only_in_error(tree: Tree, member: tuple[tarfile.TarInfo, bytes]) -> None:
    """A hostile package is refused whole: its job ends ERROR, its script never runs, the other job is done."""
    mgr = tree.add("mgr")
    client = tree.add("c1", upper="mgr")
    tree.check_in_upward(["c1"])
    bad = tree.package(name="BAD", install_dir="/opt/bad", script="touch \"$RDS_INSTALL_DIR/../bad-ran\"\n")
    good = tree.package(name="GOOD", install_dir="/opt/good")
    forge(mgr, bad, GOOD_FIRST, member)
    bad_job = mgr.run("dcmjexe", "-r", bad, "-h", "c1").stdout.strip()
    good_job = mgr.run("dcmjexe", "-r", good, "-h", "c1").stdout.strip()

    proc = client.run("rdsft", "-a", check=False)
    assert proc.returncode == 4, proc.stderr
    assert proc.stderr == "rdsft: 1 of 2 install(s) ended in error\n"
    [row] = job_status(mgr, bad_job)
    assert row["status"] == "ERROR"
    assert row["message"].startswith(f"{bad}: member {member[0].name!r}")
    assert not client.installed("/opt/bad").exists()
    assert not (client.installed("/opt/bad").parent / "bad-ran").exists()
    assert not (tree.root / "pwn").exists() and not (client.path / "pwn").exists()
    [row] = job_status(mgr, good_job)
    assert row["status"] == "COMPLETE"
    assert (client.installed("/opt/good") / "bin" / "app.sh").is_file()
