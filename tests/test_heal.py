"""Issue 19: the cache keeps seed 002's promises.  A damaged cached copy heals (JIT) or says so (SNEAKERNET);
under JIT the size limit never gives up on a job; staging renews a package's storage period; a killed pass
leaves no partial download that no one resumes.  Real commands on homes on this machine (and over SSH)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from pathlib import Path

import pytest
import sshd
from conftest import Host, Tree, installs

from rds import wire
from rds.home import Home
from rds.packages import PackageId
from rds.storehouse import MANIFEST, VERIFIED, Storehouse
from rds.transport import serving

sshd_factory = sshd.sshd_factory


def log_of(host: Host) -> str:
    path = host.path / "log" / "rds.log"
    return path.read_text() if path.exists() else ""


def payload(host: Host, pid: str) -> Path:
    return host.path / "RDS" / pid / "payload.tgz"


def manifest(host: Host, pid: str) -> dict:  # type: ignore[type-arg]
    return json.loads((host.path / "RDS" / pid / MANIFEST).read_text())  # type: ignore[no-any-return]


def rot(path: Path, at: float = 0.5) -> None:
    """Flip one byte in place and put the mtime back, as silent disk corruption leaves a file: same size,
    same mtime, same inode, so the ``.verified`` stamp still matches."""
    st = path.stat()
    with open(path, "r+b") as f:
        f.seek(int(st.st_size * at))
        byte = f.read(1)
        f.seek(int(st.st_size * at))
        f.write(bytes([byte[0] ^ 0xFF]))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_ino == st.st_ino and path.stat().st_mtime_ns == st.st_mtime_ns


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def dcmstat(mgr: Host) -> dict[tuple[int, str], dict[str, str]]:
    return {(r["job_no"], r["dest"]): r for r in json.loads(mgr.run("dcmstat", "--json", check=False).stdout)}


def damage_lines(host: Host, pid: str) -> list[str]:
    """The log lines about a damaged copy of ``pid`` (one at each end, the issue says)."""
    test_dir = str(host.path.parent.parent)  # named after the test, which may say "damaged"
    return [ln for ln in log_of(host).splitlines()
            if pid in ln and re.search(r"damaged|does not match", ln.replace(test_dir, ""))]


def chain(tree: Tree, relay_b: str = "") -> tuple[Host, Host, Host, list[Host]]:
    """manager -> relayA -> relayB -> c1, c2, the seed's three-level tree."""
    mgr, ra = tree.add("mgr"), tree.add("relayA", "mgr")
    rb = tree.add("relayB", "relayA", relay_b)
    clients = [tree.add("c1", "relayB"), tree.add("c2", "relayB")]
    tree.check_in_upward(["c1", "c2", "relayB", "relayA"])
    return mgr, ra, rb, clients


def deliver(tree: Tree, pid: str, dest: str) -> int:
    """A job for ``dest``, carried down to relayB (not yet run there)."""
    job = int(tree["mgr"].run("dcmjexe", "-r", pid, "-h", *dest.split()).stdout.strip())
    tree["relayA"].run("rdsft", "-a")
    tree["relayB"].run("rdsft", "-a")
    return job


def report_up(tree: Tree) -> None:
    tree["relayB"].run("rdssnd", "--once")
    tree["relayA"].run("rdssnd", "--once")


# -- 1. a damaged cached copy --------------------------------------------------------------------------

def test_a_damaged_copy_on_a_relay_is_caught_as_served_removed_and_fetched_again(tree: Tree) -> None:
    """Regression: relayB served a copy with a flipped byte (mtime put back) on every pass; the client
    discarded it each time, its job stayed EXEC and its rdsft -a exited 0; relayB never repaired itself."""
    mgr, ra, rb, (c1, c2) = chain(tree)
    c3 = tree.add("c3", "relayB")
    tree.check_in_upward(["c3", "relayB", "relayA"])
    pid = tree.package()
    deliver(tree, pid, "c1 c2")
    c1.run("rdsft", "-a")  # relayB fetches it through relayA for c1
    c2.run("rdsft", "-a")  # and checks it before serving it to c2: the stamp says it was verified
    good = manifest(mgr, pid)["sha256"]
    assert sha256(payload(rb, pid)) == good and (rb.path / "RDS" / pid / VERIFIED).is_file()
    rot(payload(rb, pid))
    job = deliver(tree, pid, "c3")

    proc = c3.run("rdsft", "-a", check=False)
    assert proc.returncode == 6, proc.stderr  # the pass says it failed
    assert proc.stderr.startswith("rdsft: 1 download(s) came damaged and were discarded: ")
    assert installs(c3) == 0 and not (c3.path / "RDS" / pid).exists()
    assert list((c3.path / "RDS" / ".partial").iterdir()) == []
    # relayB found it as it served it: removed, one line; c3 one line
    assert not (rb.path / "RDS" / pid).exists()
    [said_b] = damage_lines(rb, pid)
    assert f"package {pid}: SHA-256 of the copy served to c3 does not match its manifest" in said_b
    assert said_b.endswith("removed, fetched again from the upper system when next needed")
    [said_c] = damage_lines(c3, pid)
    assert "SHA-256 mismatch" in said_c and f"({rb.path} served a damaged copy)" in said_c
    assert f"{rb.path} removed its copy and fetches a good one when asked again" in said_c
    # a clear status at the managing server: LINE-DOWN, saying why, until a good copy comes
    report_up(tree)
    row = dcmstat(mgr)[(job, "c3")]
    assert row["status"] == "LINE-DOWN" and "served a damaged copy" in row["message"]
    assert mgr.run("dcmstat", "-n", str(job), check=False).returncode == 32  # running, with failures

    c3.run("rdsft", "-a")
    # the next pass healed: relayB fetched a good copy from relayA, c3 installed it
    assert installs(c3) == 1
    assert sha256(payload(rb, pid)) == good and sha256(payload(c3, pid)) == good
    assert log_of(rb).count(f"fetched package {pid}") == 2
    report_up(tree)
    assert dcmstat(mgr)[(job, "c3")]["status"] == "COMPLETE"
    assert len(damage_lines(rb, pid)) == 1 and len(damage_lines(c3, pid)) == 1


def test_a_relay_that_gets_a_damaged_copy_for_a_lower_system_reports_it_and_both_heal(tree: Tree) -> None:
    """relayA's copy rots; relayB, fetching it for c3, discards it and tells relayA, which removes it; c3 is
    told to ask again later, and its next pass gets a good copy through both relays."""
    mgr, ra, rb, (c1, c2) = chain(tree)
    c3 = tree.add("c3", "relayB")
    tree.check_in_upward(["c3", "relayB", "relayA"])
    pid = tree.package()
    deliver(tree, pid, "c1 c2")
    c1.run("rdsft", "-a")  # relayB fetches it from relayA, which fetches it from mgr
    shutil.rmtree(rb.path / "RDS" / pid)  # relayB loses it (a disk replaced, say)
    c2.run("rdsft", "-a")  # relayA checks its copy before serving it again: stamped
    assert (ra.path / "RDS" / pid / VERIFIED).is_file()
    shutil.rmtree(rb.path / "RDS" / pid)
    rot(payload(ra, pid))
    job = deliver(tree, pid, "c3")

    proc = c3.run("rdsft", "-a", check=False)
    assert installs(c3) == 0 and proc.returncode == 0  # its read was refused: it asks again next pass
    [said_c] = damage_lines(c3, pid)
    assert f"{rb.path} refused read: package {pid}: SHA-256 mismatch" in said_c
    [said_a] = damage_lines(ra, pid)
    assert "SHA-256 of the copy served to relayB does not match its manifest" in said_a
    [said_b] = damage_lines(rb, pid)
    assert f"({ra.path} served a damaged copy); {ra.path} removed its copy" in said_b
    assert not (ra.path / "RDS" / pid).exists() and not (rb.path / "RDS" / pid).exists()
    c3.run("rdsft", "-a")
    assert installs(c3) == 1
    assert sha256(payload(ra, pid)) == sha256(payload(rb, pid)) == manifest(mgr, pid)["sha256"]
    report_up(tree)
    assert dcmstat(mgr)[(job, "c3")]["status"] == "COMPLETE"


def test_a_resumed_download_of_a_damaged_copy_is_reported_and_checked_upstream(tree: Tree) -> None:
    """A resumed download is not hashed whole where it is served: the lower system's report makes the relay
    hash its copy again (not believing the report as said), remove it and fetch it again."""
    mgr, ra, rb, (c1, c2) = chain(tree)
    pid = tree.package(files={"data": os.urandom(200_000).hex()})
    deliver(tree, pid, "c1")
    c1.run("rdsft", "-a")
    job = deliver(tree, pid, "c2")
    data = payload(rb, pid).read_bytes()
    part = Storehouse.of(c2.home()).partial_path(PackageId.parse(pid), manifest(mgr, pid)["sha256"])
    part.write_bytes(data[: len(data) // 4])  # a good first quarter, cut
    rot(payload(rb, pid), at=0.75)  # the relay's copy rots where the resumed read will go

    proc = c2.run("rdsft", "-a", check=False)
    assert proc.returncode == 6
    assert f"starting at byte {len(data) // 4}" in log_of(rb)
    [said_b] = damage_lines(rb, pid)
    assert "does not match its manifest, hashed again when c2, which got it from here, reported it damaged" in said_b
    assert said_b.endswith("removed, fetched again from the upper system when next needed")
    [said_c] = damage_lines(c2, pid)
    assert f"{rb.path} removed its copy and fetches a good one when asked again" in said_c
    assert not (rb.path / "RDS" / pid).exists()
    c2.run("rdsft", "-a")
    assert installs(c2) == 1 and sha256(payload(c2, pid)) == manifest(mgr, pid)["sha256"]
    report_up(tree)
    assert dcmstat(mgr)[(job, "c2")]["status"] == "COMPLETE"


def test_a_report_of_damage_is_not_believed_when_the_copy_upstream_is_intact(tree: Tree) -> None:
    """The damage was in the client's own partial download: the relay hashes its copy, finds it intact, keeps it."""
    mgr, ra, rb, (c1, c2) = chain(tree)
    pid = tree.package(files={"data": os.urandom(200_000).hex()})
    deliver(tree, pid, "c1")
    c1.run("rdsft", "-a")
    deliver(tree, pid, "c2")
    data = bytearray(payload(rb, pid).read_bytes())
    data[10] ^= 0xFF
    part = Storehouse.of(c2.home()).partial_path(PackageId.parse(pid), manifest(mgr, pid)["sha256"])
    part.write_bytes(bytes(data[: len(data) // 2]))  # damaged here, before a cut
    before = payload(rb, pid).stat().st_ino

    assert c2.run("rdsft", "-a", check=False).returncode == 6
    [said_b] = damage_lines(rb, pid)
    assert "the copy here is intact (hashed again), so the damage happened on the way or on c2" in said_b
    assert payload(rb, pid).stat().st_ino == before  # kept
    [said_c] = damage_lines(c2, pid)
    assert "checked its copy again and finds it intact" in said_c
    c2.run("rdsft", "-a")
    assert installs(c2) == 1
    assert log_of(rb).count(f"fetched package {pid}") == 1  # never fetched again


def test_a_damaged_copy_under_sneakernet_is_reported_as_damaged(tree: Tree) -> None:
    """SNEAKERNET: the relay cannot fetch a good copy: the job ends in ERROR saying the copy was damaged,
    until a good copy is staged."""
    mgr, ra, rb, (c1, c2) = chain(tree, "CachingPolicy\tSNEAKERNET\n")
    pid = tree.package()
    cd = tree.root / "cd"
    mgr.run("rdsstage", "-o", str(cd), "-r", pid)
    rb.run("rdsft", "-a")  # learns the managing server's key (relayA knows it now), which staging checks with
    rb.run("rdsstage", "-i", str(cd))
    deliver(tree, pid, "c1")
    c1.run("rdsft", "-a")  # served once: verified, stamped
    rot(payload(rb, pid))
    job = deliver(tree, pid, "c2")

    proc = c2.run("rdsft", "-a", check=False)
    assert proc.returncode == 4, proc.stderr
    assert not (rb.path / "RDS" / pid).exists()
    [said_b] = damage_lines(rb, pid)
    assert said_b.endswith("removed, stage a good copy (SNEAKERNET)")
    report_up(tree)
    row = dcmstat(mgr)[(job, "c2")]
    assert row["status"] == "ERROR"
    assert row["message"].startswith(f"unable to cache package {pid} on relayB: CachingPolicy is SNEAKERNET "
                                     f"(manual update) and the copy here was damaged (SHA-256 of the copy served "
                                     f"to c2 does not match its manifest")
    assert "stage it there with 'rdsstage -i PATH'" in row["message"]
    assert sum("unable to cache" in ln for ln in log_of(c2).splitlines()) == 1
    # a good copy staged: the next job gets it
    rb.run("rdsstage", "-i", str(cd))
    job2 = deliver(tree, pid, "c2")
    c2.run("rdsft", "-a")
    assert installs(c2) == 1
    report_up(tree)
    assert dcmstat(mgr)[(job2, "c2")]["status"] == "COMPLETE"


def test_reads_that_go_on_from_each_other_are_hashed_as_one(tree: Tree) -> None:
    """Over SSH a download is several reads (64 MiB each); the relay hashes them as one payload."""
    mgr, relay = tree.add("mgr"), tree.add("relay", "mgr")
    tree.add("c", "relay")
    tree.check_in_upward(["c", "relay"])
    pid = tree.package(files={"data": os.urandom(300_000).hex()})
    mgr.run("dcmjexe", "-r", pid, "-h", "c")
    relay.run("rdsft", "-a")
    m = Storehouse.of(mgr.home()).get(PackageId.parse(pid))
    assert m is not None
    cd = tree.root / "cd"
    mgr.run("rdsstage", "-o", str(cd), "-r", pid)
    relay.run("rdsstage", "-i", str(cd))

    def read_in(pieces: int) -> bytes:
        service = serving(Home.open(relay.path), "c")
        try:
            out, step = b"", m.size // pieces + 1
            for offset in range(0, m.size, step):
                out += b"".join(service.read(pid, offset, step))
            return out
        finally:
            service.close()

    assert hashlib.sha256(read_in(3)).hexdigest() == m.sha256
    assert damage_lines(relay, pid) == [] and payload(relay, pid).exists()
    rot(payload(relay, pid), at=0.9)  # in the last read
    assert hashlib.sha256(read_in(3)).hexdigest() != m.sha256
    [said] = damage_lines(relay, pid)
    assert "SHA-256 of the copy served to c does not match its manifest" in said
    assert not (relay.path / "RDS" / pid).exists()


@pytest.mark.skipif(not sshd.have_sshd() and os.environ.get("CI") != "true",
                    reason="OpenSSH's sshd is not installed (bin/rds-test installs it)")
def test_a_damaged_copy_heals_over_ssh(tree: Tree, sshd_factory) -> None:  # type: ignore[no-untyped-def]
    from testkit import relay_over_ssh

    mgr, relay, [c1, c2, c3] = relay_over_ssh(tree, sshd_factory(), ["c1", "c2", "c3"])
    tree.check_in_upward(["c1", "c2", "c3", "relay1"])
    pid = tree.package(files={"data": os.urandom(1 << 19).hex()})
    mgr.run("dcmjexe", "-r", pid, "-h", "c1", "c2")
    relay.run("rdsft", "-a")
    c1.run("rdsft", "-a")  # fetched for c1 by rds-serve on the relay
    c2.run("rdsft", "-a")  # verified before it is served again: stamped
    assert (relay.path / "RDS" / pid / VERIFIED).is_file()
    good = manifest(mgr, pid)["sha256"]
    rot(payload(relay, pid))
    job = int(mgr.run("dcmjexe", "-r", pid, "-h", "c3").stdout.strip())
    relay.run("rdsft", "-a")

    proc = c3.run("rdsft", "-a", check=False)
    assert proc.returncode == 6, proc.stderr
    [said_relay] = damage_lines(relay, pid)  # logged by rds-serve on the relay
    assert "SHA-256 of the copy served to c3 does not match its manifest" in said_relay
    [said_c] = damage_lines(c3, pid)
    assert "served a damaged copy" in said_c and "removed its copy and fetches a good one" in said_c
    assert not (relay.path / "RDS" / pid).exists()
    relay.run("rdsft", "-a")  # sends c3's result up
    assert dcmstat(mgr)[(job, "c3")]["status"] == "LINE-DOWN"
    c3.run("rdsft", "-a")
    assert installs(c3) == 1 and sha256(payload(relay, pid)) == good == sha256(payload(c3, pid))
    relay.run("rdsft", "-a")
    assert dcmstat(mgr)[(job, "c3")]["status"] == "COMPLETE"


# -- 2. JIT: the size limit only makes room ------------------------------------------------------------

def test_under_jit_the_size_limit_never_invalidates_a_waiting_job(tree: Tree) -> None:
    """Regression: evicting for space ended a waiting install "the cache size limit removed package ...
    the job is invalid"; under JIT the package is fetched again when it is asked for."""
    mgr = tree.add("mgr")
    relay = tree.add("relay", "mgr", "CacheSizeLimit\t1\n")
    c1, c2 = tree.add("c1", "relay"), tree.add("c2", "relay")
    tree.check_in_upward(["c1", "c2", "relay"])
    pid = tree.package()
    job = int(mgr.run("dcmjexe", "-r", pid, "-h", "c1", "c2").stdout.strip())
    relay.run("rdsft", "-a")
    c1.run("rdsft", "-a")  # c1 took its job and installed: the relay holds the package; c2's job waits
    c2_state = {(r["job_no"], r["dest"]): r["state"] for r in json.loads(relay.run("rdsgroupid", "--json").stdout)}
    assert c2_state[(job, "c2")] == "WAIT"
    out = json.loads(relay.run("rdsclr", "--json").stdout)
    assert [r["package"] for r in out["removed"]] == [pid] and out["jobs_invalidated"] == 0
    assert not (relay.path / "RDS" / pid).exists()
    states = {(r["job_no"], r["dest"]): r["state"] for r in json.loads(relay.run("rdsgroupid", "--json").stdout)}
    assert states[(job, "c2")] == "WAIT"
    c2.run("rdsft", "-a")
    assert installs(c2) == 1
    relay.run("rdssnd", "--once")
    assert {r["status"] for r in dcmstat(mgr).values()} == {"COMPLETE"}
    # what really deletes a package still invalidates, under JIT too
    job2 = int(mgr.run("dcmjexe", "-r", pid, "-h", "c1").stdout.strip())
    relay.run("rdsft", "-a")
    relay.run("rdsstage", "-i", str(_export(tree, pid)))
    assert "1 job(s) invalidated" in relay.run("rdsft", "-init").stdout
    relay.run("rdssnd", "--once")
    assert dcmstat(mgr)[(job2, "c1")]["status"] == "EXEC-ERROR"  # all a relay signs about a host below


def _export(tree: Tree, pid: str) -> Path:
    cd = tree.root / f"cd-{pid}"
    if not cd.exists():
        tree["mgr"].run("rdsstage", "-o", str(cd), "-r", pid)
    return cd


# -- 3. staging renews the storage period --------------------------------------------------------------

def test_staging_again_renews_a_staged_package_under_sneakernet(tree: Tree) -> None:
    """Regression: staged packages expired after LifeofResource, and staging the same package again said
    "unchanged" without renewing it."""
    tree.add("mgr")
    relay = tree.add("relay", "mgr", "CachingPolicy\tSNEAKERNET\nLifeofResource\t2\n")
    relay.run("rdsft", "-a")  # learns the managing server's key, which staging checks with
    pid = tree.package()
    cd = _export(tree, pid)
    relay.run("rdsstage", "-i", str(cd))
    stamp = relay.path / "RDS" / pid / MANIFEST
    three_days = time.time() - 3 * 86400
    os.utime(stamp, (three_days, three_days))
    out = json.loads(relay.run("rdsstage", "-i", str(cd), "--json").stdout)
    assert [(o["package"], o["action"]) for o in out] == [(pid, "unchanged")]
    assert time.time() - stamp.stat().st_mtime < 60
    assert json.loads(relay.run("rdsclr", "--json").stdout)["removed"] == []
    # not staged again, it expires: retention applies to staged packages as to any
    os.utime(stamp, (three_days, three_days))
    out = json.loads(relay.run("rdsclr", "--json").stdout)
    assert [(r["package"], r["reason"]) for r in out["removed"]] == [(pid, "expired")]


def test_staging_replaces_a_copy_damaged_in_place(tree: Tree) -> None:
    mgr = tree.add("mgr")
    relay = tree.add("relay", "mgr", "CachingPolicy\tSNEAKERNET\n")
    relay.run("rdsft", "-a")  # learns the managing server's key
    pid = tree.package()
    cd = _export(tree, pid)
    relay.run("rdsstage", "-i", str(cd))
    rot(payload(relay, pid))
    out = json.loads(relay.run("rdsstage", "-i", str(cd), "--json").stdout)
    assert [(o["package"], o["action"]) for o in out] == [(pid, "replaced")]
    assert sha256(payload(relay, pid)) == manifest(mgr, pid)["sha256"]


# -- 5. partial downloads that no one resumes ----------------------------------------------------------

@pytest.mark.usefixtures("whole_packages")  # a .part file (chunks resume by chunk: test_chunks)
def test_a_killed_download_is_resumed_and_leftovers_no_one_resumes_are_removed(tree: Tree) -> None:
    """Regression: a killed rdsft -a left an empty .part file on the client for good."""
    mgr, c = tree.add("mgr"), tree.add("c", "mgr")
    tree.check_in_upward(["c"])
    pid = tree.package(files={"data": os.urandom(3 << 20).hex()})
    job = mgr.run("dcmjexe", "-r", pid, "-h", "c").stdout.strip()
    killed = c.run("rdsft", "-a", check=False, env=c.env(RDS_CRASH_AT="downloading@2"))
    assert killed.returncode == -9
    partial = c.path / "RDS" / ".partial"
    [part] = partial.iterdir()
    have = part.stat().st_size
    assert 0 < have < manifest(mgr, pid)["size"]
    # what killed runs of other kinds leave: an empty download, one of a package no job wants, a staging temp
    other = PackageId.make("AB", "GONE", "0100")
    empty = Storehouse.of(c.home()).partial_path(other, "0" * 64)
    empty.touch()
    unwanted = Storehouse.of(c.home()).partial_path(PackageId.make("AB", "OLD", "0100"), "1" * 64)
    unwanted.write_bytes(b"x" * 1000)
    stray = partial / ".tmp-999999999-staging"
    stray.write_bytes(b"y")
    c.run("rdsft", "-a")
    assert installs(c) == 1
    assert f"from byte {have}" in log_of(c)
    assert "removed 2 partial download(s) that no job here needs, or that were empty" in log_of(c)
    assert list(partial.iterdir()) == []
    assert job in c.run("rdsgroupid", "--json").stdout


def test_an_empty_partial_download_of_a_needed_package_is_removed_and_fetched_whole(tree: Tree) -> None:
    mgr, c = tree.add("mgr"), tree.add("c", "mgr")
    tree.check_in_upward(["c"])
    pid = tree.package()
    mgr.run("dcmjexe", "-r", pid, "-h", "c")
    m = manifest(mgr, pid)
    part = Storehouse.of(c.home()).partial_path(PackageId.parse(pid), m["sha256"])
    part.touch()  # as a run killed between creating the file and its first byte left it
    c.run("rdsft", "-a")
    assert installs(c) == 1 and not part.exists()
    assert f"fetching package {pid} from {mgr.path} from byte 0" in log_of(c)


def test_a_download_in_progress_is_not_removed_by_another_pass(tree: Tree) -> None:
    _mgr, c = tree.add("mgr"), tree.add("c", "mgr")
    home = c.home()
    store = Storehouse.of(home)
    pid = PackageId.make("AB", "BUSY", "0100")
    part = store.partial_path(pid, "2" * 64)
    part.touch()
    from rds import cleanup, session

    with store.fetch_lock(pid), session.opened(home) as db:  # another process downloads it
        assert cleanup.partial_downloads(home, db, store) == 0
    assert part.exists()
    with session.opened(home) as db:
        assert cleanup.partial_downloads(home, db, store) == 1
    assert not part.exists()


def test_a_report_of_damage_is_bounded_like_any_request(tree: Tree) -> None:
    """A lower system may report only packages its subtree needs, with a well-formed SHA-256; a report about
    another version of the package, or one no longer here, changes nothing."""
    mgr = tree.add("mgr")
    tree.add("c", "mgr"), tree.add("other", "mgr")
    tree.check_in_upward(["c", "other"])
    pid = tree.package()
    mgr.run("dcmjexe", "-r", pid, "-h", "c")
    service = serving(Home.open(mgr.path), "other")
    try:
        answer = service.handle(wire.request("damaged", "other", package=pid, sha256="0" * 64))
        assert answer["ok"] is False and answer["error"] == "refused"
        assert "no job for other or the hosts below it needs package" in answer["message"]
    finally:
        service.close()
    service = serving(Home.open(mgr.path), "c")
    try:
        for bad in ("0" * 63, "G" * 64, 5, None):
            answer = service.handle(wire.request("damaged", "c", package=pid, sha256=bad))
            assert answer == {"ok": False, "error": "protocol",
                              "message": "'sha256' must be 64 lowercase hex digits"}
        answer = service.handle(wire.request("damaged", "c", package=pid, sha256="1" * 64))
        assert answer == {"ok": True, "copy": "gone"}  # another version: not this copy's business
    finally:
        service.close()
    assert payload(mgr, pid).exists() and damage_lines(mgr, pid) == []
