"""The package cache: JIT on demand through the chain, SNEAKERNET, currency, staging, emergency transfers,
one upstream transfer for concurrent needs.  Real processes, homes on this machine."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import tarfile
import time
from pathlib import Path

import pytest
import sshd
from conftest import BIN, Host, Tree, installs

from rds import storehouse
from rds.home import Home
from rds.packages import PackageId
from rds.storehouse import Storehouse

sshd_factory = sshd.sshd_factory


def log_of(host: Host) -> str:
    path = host.path / "log" / "rds.log"
    return path.read_text() if path.exists() else ""


def bytes_sent(host: Host, pid: str) -> int:
    """Package bytes this host served to its lower systems (it logs each read)."""
    return sum(int(n) for n in re.findall(rf"sent (\d+) byte\(s\) of {re.escape(pid)} to ", log_of(host)))


def stats_answered(host: Host, pid: str) -> int:
    return log_of(host).count(f"stat of {pid} asked by ")


def size_of(host: Host, pid: str) -> int:
    return int(json.loads((host.path / "RDS" / pid / "manifest.json").read_text())["size"])


def dcmstat(mgr: Host) -> tuple[int, dict[tuple[int, str], dict[str, str]]]:
    proc = mgr.run("dcmstat", "--json", check=False)
    return proc.returncode, {(r["job_no"], r["dest"]): r for r in json.loads(proc.stdout)}


def big_package(tree: Tree, name: str = "APP", size: int = 2 << 20, **kw: object) -> str:
    """A package of incompressible data, so that a download takes many blocks."""
    return tree.package(name=name, files={"bin/app.sh": "#!/bin/sh\necho app\n", "data.bin": os.urandom(size).hex()},
                        **kw)  # type: ignore[arg-type]


# -- JIT ------------------------------------------------------------------------------------------------

def test_jit_on_demand_through_four_levels_one_transfer_per_link(tree: Tree) -> None:
    mgr, r1, r2 = tree.add("mgr"), tree.add("r1", "mgr"), tree.add("r2", "r1")
    c1, c2 = tree.add("c1", "r2"), tree.add("c2", "r2")
    tree.check_in_upward(["c1", "c2", "r2", "r1"])
    pid = big_package(tree)
    size = size_of(mgr, pid)
    mgr.run("dcmjexe", "-r", pid, "-h", "c1")
    r1.run("rdsft", "-a")
    r2.run("rdsft", "-a")
    # the jobs went down, the package did not: no relay holds it yet
    assert not (r1.path / "RDS" / pid).exists() and not (r2.path / "RDS" / pid).exists()
    assert "c1" in r2.run("rdsgroupid").stdout
    c1.run("rdsft", "-a")  # c1 asks r2, which asks r1, which asks mgr
    assert installs(c1) == 1
    assert [bytes_sent(h, pid) for h in (mgr, r1, r2)] == [size, size, size]
    assert [log_of(h).count("fetched package") for h in (r1, r2, c1)] == [1, 1, 1]

    # both relays lose their copy (evicted); a second client still gets it, once per link again
    for r in (r1, r2):
        r.run("rdsft", "-init")
    mgr.run("dcmjexe", "-r", pid, "-h", "c2")
    r1.run("rdsft", "-a")
    r2.run("rdsft", "-a")
    c2.run("rdsft", "-a")
    assert installs(c2) == 1
    assert [bytes_sent(h, pid) for h in (mgr, r1, r2)] == [2 * size, 2 * size, 2 * size]
    r2.run("rdssnd", "--once")
    r1.run("rdssnd", "--once")
    code, rows = dcmstat(mgr)
    assert code == 0 and {r["status"] for r in rows.values()} == {"COMPLETE"}


def test_a_partial_download_is_resumed(tree: Tree) -> None:
    mgr, c = tree.add("mgr"), tree.add("c", "mgr")
    tree.check_in_upward(["c"])
    pid = big_package(tree)
    mgr.run("dcmjexe", "-r", pid, "-h", "c")
    m = Storehouse(mgr.path / "RDS").get(Storehouse(mgr.path / "RDS").list()[0].id)
    assert m is not None
    half = m.size // 2
    part = Storehouse(c.home().packages).partial_path(m.id, m.sha256)
    part.write_bytes((mgr.path / "RDS" / pid / "payload.tgz").read_bytes()[:half])  # a cut download
    c.run("rdsft", "-a")
    assert installs(c) == 1
    assert f"fetching package {pid} from {mgr.path} from byte {half}\n" in log_of(c)
    assert bytes_sent(mgr, pid) == m.size - half
    assert f"starting at byte {half}" in log_of(mgr)
    assert not part.exists()


# -- SNEAKERNET ---------------------------------------------------------------------------------------

def test_sneakernet_unable_to_cache_is_error_at_dcmstat(tree: Tree) -> None:
    mgr = tree.add("mgr")
    relay = tree.add("relay", "mgr", settings="CachingPolicy\tSNEAKERNET\n")
    c1 = tree.add("c1", "relay")
    own = tree.add("own", "mgr", settings="CachingPolicy\tSNEAKERNET\n")
    tree.check_in_upward(["c1", "relay", "own"])
    pid = tree.package()
    job = mgr.run("dcmjexe", "-r", pid, "-h", "c1", "own").stdout.strip()
    relay.run("rdsft", "-a")  # jobs still flow under SNEAKERNET
    proc = c1.run("rdsft", "-a", check=False)
    assert proc.returncode == 4 and "ERROR" in proc.stdout
    proc = own.run("rdsft", "-a", check=False)
    assert proc.returncode == 4
    c1.run("rdsft", "-a")  # the job ended: not tried again
    relay.run("rdssnd", "--once")
    code, rows = dcmstat(mgr)
    assert code == 30
    for host in ("relay", "own"):
        dest = "c1" if host == "relay" else "own"
        msg = rows[(int(job), dest)]["message"]
        assert rows[(int(job), dest)]["status"] == "ERROR"
        assert msg.startswith(f"unable to cache package {pid} on {host}: CachingPolicy is SNEAKERNET "
                              "(manual update) and it was not staged; stage it there with 'rdsstage -i PATH'")
        assert f"'dcmjexe -t transfer -r {pid} -h {host}'" in msg
    # the SNEAKERNET hosts never asked the managing server for the package or its checksum
    assert bytes_sent(mgr, pid) == 0 and stats_answered(mgr, pid) == 0
    assert not (relay.path / "RDS" / pid).exists()


# -- staging ------------------------------------------------------------------------------------------

def test_staging_from_a_directory_and_an_archive(tree: Tree) -> None:
    mgr = tree.add("mgr")
    relay = tree.add("relay", "mgr", settings="CachingPolicy\tSNEAKERNET\n")
    other = tree.add("other", "mgr", settings="CachingPolicy\tSNEAKERNET\n")
    c1 = tree.add("c1", "relay")
    tree.check_in_upward(["c1", "relay", "other"])
    pid = tree.package()
    pid2 = tree.package(name="TOOL")
    cd, cd_tgz = tree.root / "cd", tree.root / "cd.tar.gz"
    out = json.loads(mgr.run("rdsstage", "-o", str(cd), "--json").stdout)
    assert [(o["package"], o["action"]) for o in out] == [(pid, "exported"), (pid2, "exported")]
    mgr.run("rdsstage", "-o", str(cd_tgz), "-r", pid)
    with tarfile.open(cd_tgz) as tar:
        assert sorted(tar.getnames()) == [f"{pid}/manifest.json", f"{pid}/payload.tgz"]

    out = json.loads(relay.run("rdsstage", "-i", str(cd_tgz), "--json").stdout)
    assert [(o["package"], o["action"]) for o in out] == [(pid, "staged")]
    assert relay.run("rdsstage", "-i", str(cd), "-r", pid).stdout.split("\n")[1].split()[:2] == [pid, "unchanged"]
    out = json.loads(other.run("rdsstage", "-i", str(cd), "--json").stdout)
    assert {o["action"] for o in out} == {"staged"}
    # the staged copy serves the hosts below, and the managing server sends nothing
    mgr.run("dcmjexe", "-r", pid, "-h", "c1")
    relay.run("rdsft", "-a")
    c1.run("rdsft", "-a")
    assert installs(c1) == 1
    assert bytes_sent(mgr, pid) == 0 and bytes_sent(relay, pid) == size_of(mgr, pid)


@pytest.mark.usefixtures("whole_packages")  # a medium's payload.tgz, tampered
def test_tampered_and_hostile_media_are_rejected(tree: Tree) -> None:
    mgr, relay = tree.add("mgr"), tree.add("relay", "mgr")
    relay.run("rdsft", "-a")  # learns the managing server's key
    pid = tree.package()
    cd = tree.root / "cd"
    mgr.run("rdsstage", "-o", str(cd))
    payload = cd / pid / "payload.tgz"
    data = bytearray(payload.read_bytes())
    data[len(data) // 2] ^= 0xFF
    payload.write_bytes(bytes(data))
    proc = relay.run("rdsstage", "-i", str(cd), check=False)
    assert proc.returncode == 6
    assert proc.stderr.startswith(f"rdsstage: 1 of 1 package(s) rejected: {pid}/payload.tgz: ")
    assert "not staged" in proc.stderr
    assert not (relay.path / "RDS" / pid).exists()

    def archive(name: str, *members: tuple[tarfile.TarInfo, bytes]) -> Path:
        path = tree.root / name
        with tarfile.open(path, "w:gz") as tar:
            for info, body in members:
                info.size = len(body) if info.isfile() else 0
                tar.addfile(info, io.BytesIO(body) if info.isfile() else None)
        return path

    good = [(tarfile.TarInfo(f"{pid}/{n}"), (mgr.path / "RDS" / pid / n).read_bytes())
            for n in ("manifest.json", "payload.tgz")]
    escape = tarfile.TarInfo("../../etc/evil")
    link = tarfile.TarInfo(f"{pid}/payload.tgz")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/shadow"
    stray = tarfile.TarInfo(f"{pid}/run.sh")
    for name, members, why in [
        ("escape.tgz", [*good, (escape, b"x")], "outside"),
        ("link.tgz", [good[0], (link, b"")], "link"),
        ("stray.tgz", [*good, (stray, b"#!/bin/sh\n")],
         "is not a package's manifest.json, payload.tgz, chunks.json or chunks.bin"),
    ]:
        proc = relay.run("rdsstage", "-i", str(archive(name, *members)), check=False)
        assert proc.returncode == 3, (name, proc.stderr)
        assert why in proc.stderr, (name, proc.stderr)
        assert not (relay.path / "RDS" / pid).exists()
    assert [p for p in (relay.path / "RDS" / ".partial").iterdir()] == []


# -- emergency transfer -----------------------------------------------------------------------------

def test_emergency_transfer_under_sneakernet_ahead_of_queued_installs(tree: Tree) -> None:
    mgr = tree.add("mgr")
    r1 = tree.add("r1", "mgr", settings="CachingPolicy\tSNEAKERNET\n")
    r2 = tree.add("r2", "r1", settings="CachingPolicy\tSNEAKERNET\n")
    c = tree.add("c", "r2")
    tree.check_in_upward(["c", "r2", "r1", "r2"])  # r2 learns the managing server's key once r1 knows it
    staged = tree.package(name="TOOL", install_dir="/opt/tool")
    fix = tree.package(name="FIX", install_dir="/opt/fix")
    cd = tree.root / "cd"
    mgr.run("rdsstage", "-o", str(cd), "-r", staged)
    r2.run("rdsstage", "-i", str(cd))
    install_job = mgr.run("dcmjexe", "-r", staged, "-h", "r2").stdout.strip()  # queued first
    transfer_job = mgr.run("dcmjexe", "-t", "transfer", "-r", fix, "-h", "r2").stdout.strip()
    assert int(transfer_job) > int(install_job)
    r1.run("rdsft", "-a")
    assert not (r1.path / "RDS" / fix).exists()  # r1 only passes it on
    out = r2.run("rdsft", "-a").stdout
    assert "COMPLETE" in out
    log = log_of(r2)
    done_transfer = log.index(f"job {transfer_job} (transfer of {fix}): COMPLETE")
    done_install = log.index(f"job {install_job} {staged}: COMPLETE")
    assert done_transfer < done_install  # ahead of the queued install
    # through r1 (SNEAKERNET too), which fetched it for the transfer job passing through
    assert (r2.path / "RDS" / fix / "manifest.json").is_file() and (r1.path / "RDS" / fix).is_dir()
    assert bytes_sent(mgr, fix) == size_of(mgr, fix) == bytes_sent(r1, fix)
    r1.run("rdssnd", "--once")
    _, rows = dcmstat(mgr)
    assert rows[(int(transfer_job), "r2")]["status"] == "COMPLETE"
    assert rows[(int(transfer_job), "r2")]["message"] == f"package {fix} stored and verified on r2"
    assert rows[(int(install_job), "r2")]["status"] == "COMPLETE"
    # now the fix is there, an install below r2 needs nothing from upstream
    mgr.run("dcmjexe", "-r", fix, "-h", "c")
    r1.run("rdsft", "-a")
    r2.run("rdsft", "-a")
    c.run("rdsft", "-a")
    assert installs(c) == 1 and bytes_sent(mgr, fix) == size_of(mgr, fix)


# -- currency -----------------------------------------------------------------------------------------

def test_checksum_lifetime_decides_when_the_upper_is_asked_again(tree: Tree) -> None:
    mgr = tree.add("mgr")
    c = tree.add("c", "mgr", settings="ChecksumLifetime\t60\n")
    zero = tree.add("zero", "mgr", settings="ChecksumLifetime\t0\n")
    tree.check_in_upward(["c", "zero"])
    pid = tree.package()
    size = size_of(mgr, pid)
    for _ in range(2):  # the second job finds the copy here, its checksum trusted still
        mgr.run("dcmjexe", "-r", pid, "-h", "c", "zero")
        c.run("rdsft", "-a")
        zero.run("rdsft", "-a")
    assert log_of(mgr).count(f"stat of {pid} asked by c\n") == 1
    assert log_of(mgr).count(f"stat of {pid} asked by zero\n") == 2  # 0: asked every time
    assert installs(c) == installs(zero) == 2
    assert bytes_sent(mgr, pid) == 2 * size  # one download each
    # the lifetime runs out: asked again, the copy matches, nothing is fetched
    remembered = c.path / "RDS" / storehouse.CHECKSUMS / f"{pid}.json"
    data = json.loads(remembered.read_text())
    data["asked"] -= 61 * 60
    remembered.write_text(json.dumps(data))
    mgr.run("dcmjexe", "-r", pid, "-h", "c")
    c.run("rdsft", "-a")
    assert log_of(mgr).count(f"stat of {pid} asked by c\n") == 2
    assert installs(c) == 3 and bytes_sent(mgr, pid) == 2 * size


def test_a_cached_copy_that_is_not_current_is_fetched_again_never_served(tree: Tree) -> None:
    mgr = tree.add("mgr")
    relay = tree.add("relay", "mgr", settings="ChecksumLifetime\t0\n")
    c1, c2 = tree.add("c1", "relay"), tree.add("c2", "relay")
    tree.check_in_upward(["c1", "c2", "relay"])
    pid = tree.package(files={"VERSION": "old\n"})
    mgr.run("dcmjexe", "-r", pid, "-h", "c1")
    relay.run("rdsft", "-a")
    c1.run("rdsft", "-a")
    assert (c1.installed() / "VERSION").read_text() == "old\n"
    old_size = size_of(relay, pid)
    # the managing server's package changes under the same ID
    shutil.rmtree(mgr.path / "RDS" / pid)
    shutil.rmtree(tree.root / "src-APP-0100")
    os.remove(tree.root / "script-APP-0100")
    assert tree.package(files={"VERSION": "new, and longer\n"}) == pid
    mgr.run("dcmjexe", "-r", pid, "-h", "c2")
    relay.run("rdsft", "-a")
    c2.run("rdsft", "-a")
    assert (c2.installed() / "VERSION").read_text() == "new, and longer\n"
    log = log_of(relay)
    assert f"package {pid} here (SHA-256 " in log and "is not the current one" in log
    # the relay served the old copy once (to c1) and the new one once (to c2), never the old to c2
    sent = [int(n) for n in re.findall(rf"sent (\d+) byte\(s\) of {re.escape(pid)} to c2,", log)]
    assert sent == [size_of(relay, pid)] and size_of(relay, pid) != old_size


# -- one transfer for concurrent needs ------------------------------------------------------------

def test_concurrent_needs_cause_one_upstream_transfer(tree: Tree) -> None:
    mgr, relay = tree.add("mgr"), tree.add("relay", "mgr")
    clients = [tree.add(f"c{i}", "relay") for i in range(6)]
    tree.check_in_upward([c.name for c in clients] + ["relay"])
    pid = big_package(tree, size=6 << 20)
    size = size_of(mgr, pid)
    mgr.run("dcmjexe", "-r", pid, "-h", *[c.name for c in clients])
    relay.run("rdsft", "-a")
    procs = [subprocess.Popen([str(BIN / "rdsft"), "-a"], env=c.env(RDS_LOCK_TIMEOUT="60"),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for c in clients]
    started = time.monotonic()
    for p in procs:
        _, err = p.communicate(timeout=180)
        assert p.returncode == 0, err
    assert time.monotonic() - started < 180
    assert [installs(c) for c in clients] == [1] * len(clients)
    assert bytes_sent(mgr, pid) == size  # one transfer from upstream, not one each
    assert log_of(relay).count("fetching package") == 1
    assert bytes_sent(relay, pid) == len(clients) * size


# -- over SSH: rds-serve on a relay fetches on demand with the relay's own key ---------------------

@pytest.mark.skipif(not sshd.have_sshd() and os.environ.get("CI") != "true",
                    reason="OpenSSH's sshd is not installed (bin/rds-test installs it)")
def test_on_demand_and_unable_to_cache_over_ssh(tree: Tree, sshd_factory) -> None:  # type: ignore[no-untyped-def]
    from testkit import relay_over_ssh

    mgr, relay, [client] = relay_over_ssh(tree, sshd_factory(), ["client1"])
    tree.check_in_upward(["client1", "relay1"])
    pid = big_package(tree, size=1 << 20)
    mgr.run("dcmjexe", "-r", pid, "-h", "client1")
    assert "packages fetched: 0" in relay.run("rdsft", "-a").stdout
    assert "jobs received: 1; packages fetched: 1" in client.run("rdsft", "-a").stdout
    assert installs(client) == 1
    assert bytes_sent(mgr, pid) == bytes_sent(relay, pid) == size_of(mgr, pid)
    assert f"fetched package {pid}" in log_of(relay)  # by rds-serve, on client1's behalf

    with open(relay.path / "rdsprm" / "RDSSETFL", "a") as f:
        f.write("CachingPolicy\tSNEAKERNET\n")
    other = tree.package(name="OTHER")
    job = mgr.run("dcmjexe", "-r", other, "-h", "client1").stdout.strip()
    relay.run("rdsft", "-a")
    proc = client.run("rdsft", "-a", check=False)
    assert proc.returncode == 4
    relay.run("rdsft", "-a")
    _, rows = dcmstat(mgr)
    assert rows[(int(job), "client1")]["status"] == "ERROR"
    assert rows[(int(job), "client1")]["message"].startswith(f"unable to cache package {other} on relay1: ")


def test_a_relay_cut_off_from_its_upper_keeps_serving_its_verified_copy(tree: Tree) -> None:
    mgr = tree.add("mgr")
    relay = tree.add("relay", "mgr", settings="ChecksumLifetime\t0\n")
    c1, c2 = tree.add("c1", "relay"), tree.add("c2", "relay")
    tree.check_in_upward(["c1", "c2", "relay"])
    pid = tree.package()
    mgr.run("dcmjexe", "-r", pid, "-h", "c1", "c2")
    relay.run("rdsft", "-a")
    c1.run("rdsft", "-a")  # the relay fetches the package
    hidden = mgr.path.with_name("mgr-unreachable")
    mgr.path.rename(hidden)  # the managing server cannot be reached any more
    try:
        c2.run("rdsft", "-a")
    finally:
        hidden.rename(mgr.path)
    assert installs(c2) == 1
    assert (f"package {pid}: cannot ask the upper system whether the copy here is current (upper system "
            f"{mgr.path}: no such directory); using the copy here, verified against its manifest") in log_of(relay)


def test_a_read_that_waits_too_long_for_a_fetch_is_asked_again_later(tree: Tree) -> None:
    mgr, relay, c = tree.add("mgr"), tree.add("relay", "mgr"), tree.add("c", "relay")
    tree.check_in_upward(["c", "relay"])
    pid = tree.package()
    job = mgr.run("dcmjexe", "-r", pid, "-h", "c").stdout.strip()
    relay.run("rdsft", "-a")
    with Storehouse.of(relay.home()).fetch_lock(PackageId.parse(pid)):  # another fetch of the package that takes long
        proc = c.run("rdsft", "-a", env=c.env(RDS_LOCK_TIMEOUT="1"))
    assert "packages fetched: 0" in proc.stdout and installs(c) == 0
    assert f"relay is still fetching {pid} for another system" in log_of(c)
    assert f"{job}" in c.run("rdsgroupid").stdout  # the job waits, it did not fail
    c.run("rdsft", "-a")
    assert installs(c) == 1


def test_staging_replaces_another_copy_but_never_a_registered_package(tree: Tree) -> None:
    mgr, relay = tree.add("mgr"), tree.add("relay", "mgr")
    other_mgr = tree.add("mgr2")  # a second managing server
    relay.run("rdsft", "-a")  # learns the managing server's key, which staged manifests must verify with
    pid = tree.package(files={"VERSION": "old\n"})
    old_cd, new_cd, foreign_cd = tree.root / "old.tar", tree.root / "new.tgz", tree.root / "foreign.tgz"
    mgr.run("rdsstage", "-o", str(old_cd))
    relay.run("rdsstage", "-i", str(old_cd))
    # the same package ID with other content: made on another managing server, and again on this one
    shutil.rmtree(tree.root / "src-APP-0100")
    os.remove(tree.root / "script-APP-0100")
    assert tree.package(host="mgr2", files={"VERSION": "new\n"}) == pid
    other_mgr.run("rdsstage", "-o", str(foreign_cd))
    proc = relay.run("rdsstage", "-i", str(foreign_cd), check=False)  # not signed by its managing server
    assert proc.returncode == 6 and "nothing was staged" in proc.stderr
    shutil.rmtree(mgr.path / "RDS" / pid)
    shutil.rmtree(tree.root / "src-APP-0100")
    os.remove(tree.root / "script-APP-0100")
    assert tree.package(files={"VERSION": "new\n"}) == pid
    mgr.run("rdsstage", "-o", str(new_cd))
    out = json.loads(relay.run("rdsstage", "-i", str(new_cd), "--json").stdout)
    assert [(o["package"], o["action"]) for o in out] == [(pid, "replaced")]
    assert size_of(relay, pid) == size_of(mgr, pid)
    proc = mgr.run("rdsstage", "-i", str(old_cd), check=False)
    assert proc.returncode == 6
    assert f"package {pid} is registered here with other content; not replaced" in proc.stderr
    payload = f"RDS/{pid}/payload.tgz"
    assert (mgr.path / payload).read_bytes() == (relay.path / payload).read_bytes()  # kept its own


def test_fetch_locks_do_not_pile_up(tmp_path: Path) -> None:
    """Regression: every package fetched left its own lock file in run/ for good."""
    home = Home.open(tmp_path / "h")
    for i in range(600):
        with Storehouse.of(home).fetch_lock(PackageId.make("AB", f"P{i}", "1")):
            pass
    assert len(list(home.run.glob("fetch-*.lock"))) <= 256
