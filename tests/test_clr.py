"""The package storehouse's cleanup: access times, the size limit, retention, invalid jobs, rdsclr, DELETE jobs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import BIN, installs, wait_for

from rds import cleanup
from rds.home import Home
from rds.packages import PackageId
from rds.storehouse import ACCESSED, MANIFEST, Storehouse
from rds.transport import serving

DAY = 86400.0


def stored_package(host, name: str, size: int = 20_000, expire_days: int | None = None) -> str:  # type: ignore[no-untyped-def]
    """Put a package straight into ``host``'s storehouse (random bytes, so its size is about ``size``)."""
    src = host.path.parent / f"src-{host.name}-{name}"
    src.mkdir()
    (src / "blob").write_bytes(os.urandom(size))
    pid = PackageId.make("AB", name, "0100")
    Storehouse(Home.open(host.path).packages).register(pid, src, "/opt/" + name.lower(), expire_days=expire_days)
    return str(pid)


def stage_on(tree, host, pid: str) -> None:  # type: ignore[no-untyped-def]
    """Under JIT a relay fetches a lower system's package only when asked for it: stage it there first."""
    cd = tree.root / f"cd-{pid}"
    tree["mgr"].run("rdsstage", "-o", str(cd), "-r", pid)
    host.run("rdsstage", "-i", str(cd))


def pkg_dir(host, pid: str) -> Path:  # type: ignore[no-untyped-def]
    return host.path / "RDS" / pid


def size_of(host, pid: str) -> int:  # type: ignore[no-untyped-def]
    return int(json.loads((pkg_dir(host, pid) / MANIFEST).read_text())["size"])


def counted(host, pids: list[str]) -> dict[str, int]:  # type: ignore[no-untyped-def]
    """The bytes each package counts against the limit: a chunk that several use (small packages share
    their end-of-archive chunk) counts in the most recently accessed one, as rds.storehouse.scan says."""
    def key(p: str) -> tuple[float, str]:
        return -(pkg_dir(host, p) / ACCESSED).stat().st_mtime, p
    seen: set[str] = set()
    out = {}
    for p in sorted(pids, key=key):
        m = json.loads((pkg_dir(host, p) / MANIFEST).read_text())
        out[p] = sum(c[2] for c in {c[0]: c for c in m["chunks"]}.values() if c[0] not in seen) \
            if m.get("chunks") else int(m["size"])
        seen |= {c[0] for c in m.get("chunks", [])}
    return out


def accessed(host, pid: str, ago: float) -> None:  # type: ignore[no-untyped-def]
    t = time.time() - ago
    os.utime(pkg_dir(host, pid) / ACCESSED, (t, t))


def stored(host, pid: str, ago: float) -> None:  # type: ignore[no-untyped-def]
    t = time.time() - ago
    os.utime(pkg_dir(host, pid) / MANIFEST, (t, t))


def kept(host) -> list[str]:  # type: ignore[no-untyped-def]
    return sorted(p.name for p in (host.path / "RDS").iterdir() if not p.name.startswith("."))


def settings(host, text: str) -> None:  # type: ignore[no-untyped-def]
    with open(host.path / "rdsprm" / "RDSSETFL", "a") as f:
        f.write(text)


def clr(host, *args: str, **kw) -> dict:  # type: ignore[no-untyped-def, type-arg]
    return json.loads(host.run("rdsclr", "--json", *args, **kw).stdout)  # type: ignore[no-any-return]


def groupid(host) -> dict[tuple[int, str], str]:  # type: ignore[no-untyped-def]
    return {(r["job_no"], r["dest"]): r["state"] for r in json.loads(host.run("rdsgroupid", "--json").stdout)}


def dcmstat(mgr) -> dict[tuple[int, str], dict]:  # type: ignore[no-untyped-def, type-arg]
    return {(r["job_no"], r["dest"]): r for r in json.loads(mgr.run("dcmstat", "--json", check=False).stdout)}


# -- least recently accessed first ---------------------------------------------

def test_access_times_decide_the_eviction_order(tree) -> None:  # type: ignore[no-untyped-def]
    """Neither the name nor the time stored decides: the stamp's access time does."""
    tree.add("mgr")
    relay = tree.add("relay", "mgr")
    pids = [stored_package(relay, n) for n in ("A", "B", "C", "D")]
    a, b, c, d = pids
    for pid, ago in ((a, 300), (b, 100), (c, 400), (d, 200)):  # C oldest, then A, D, B
        accessed(relay, pid, ago)
    sizes = counted(relay, pids)
    total = sum(sizes.values())
    limit = total - 1  # exceeded by one byte
    mark = (sizes[b] + sizes[d] + sizes[a] // 2) * 100 // limit  # room for two and a half packages
    settings(relay, f"CacheSizeLimit\t{limit}\nCacheHighWaterMark\t{mark}\n")
    out = clr(relay)
    assert [(r["package"], r["reason"]) for r in out["removed"]] == [(c, "over size limit"), (a, "over size limit")]
    assert kept(relay) == [b, d]
    assert out["bytes_after"] == sizes[b] + sizes[d] <= limit * mark // 100 == out["high_water"]


def test_serving_and_installing_are_accesses(tree) -> None:  # type: ignore[no-untyped-def]
    """Real accesses move a package to the back of the queue: served to a lower system, installed here."""
    mgr, relay = tree.add("mgr"), tree.add("relay", "mgr")
    low = tree.add("c", "relay")
    tree.check_in_upward(["c", "relay"])
    p1, p2 = tree.package(name="P1", script=None), tree.package(name="P2", script=None)
    mgr.run("dcmjexe", "-r", p1, "-h", "relay")
    mgr.run("dcmjexe", "-r", p2, "-h", "relay")
    relay.run("rdsft", "-a")
    assert kept(relay) == [p1, p2]
    for pid in (p1, p2):
        accessed(relay, pid, 1000)
    mgr.run("dcmjexe", "-r", p1, "-h", "c")
    relay.run("rdsft", "-a")
    before = (pkg_dir(relay, p1) / ACCESSED).stat().st_mtime
    low.run("rdsft", "-a")  # fetches P1 from the relay: served
    relay.run("rdsft", "-a")  # takes c's result: nothing pending any more
    assert (pkg_dir(relay, p1) / ACCESSED).stat().st_mtime > before + 500
    settings(relay, f"CacheSizeLimit\t{sum(counted(relay, [p1, p2]).values()) - 1}\nCacheHighWaterMark\t100\n")
    assert [r["package"] for r in clr(relay)["removed"]] == [p2]  # the later name, stored later: evicted
    # installing is an access too: P1 installed here again after its stamp went old
    accessed(relay, p1, 1000)
    mgr.run("dcmjexe", "-r", p1, "-h", "relay")
    relay.run("rdsft", "-a")
    assert time.time() - (pkg_dir(relay, p1) / ACCESSED).stat().st_mtime < 60


def test_no_cleanup_below_the_limit_and_down_to_the_mark_above_it(tree) -> None:  # type: ignore[no-untyped-def]
    tree.add("mgr")
    relay = tree.add("relay", "mgr")
    pids = [stored_package(relay, f"P{i}", size=10_000) for i in range(10)]
    for i, pid in enumerate(pids):
        accessed(relay, pid, 1000 - i)  # P0 oldest
    sizes = [counted(relay, pids)[p] for p in pids]
    settings(relay, f"CacheSizeLimit\t{sum(sizes)}\nCacheHighWaterMark\t50\n")
    out = clr(relay)
    assert out["removed"] == [] and len(kept(relay)) == 10  # at the limit is not over it
    (relay.path / "rdsprm" / "RDSSETFL").write_text((relay.path / "rdsprm" / "RDSSETFL").read_text().replace(
        f"CacheSizeLimit\t{sum(sizes)}", f"CacheSizeLimit\t{sum(sizes) - 1}"))
    out = clr(relay)
    target = (sum(sizes) - 1) * 50 // 100
    n = next(k for k in range(11) if sum(sizes[k:]) <= target)  # the fewest oldest that bring it to the mark
    assert [r["package"] for r in out["removed"]] == pids[:n]
    assert kept(relay) == pids[n:] and out["bytes_after"] == sum(sizes[n:]) <= target < sum(sizes[n - 1:])


def test_packages_that_pending_jobs_need_go_last(tree) -> None:  # type: ignore[no-untyped-def]
    """Under SNEAKERNET (nothing is fetched again) the size limit invalidates the jobs of what it removes."""
    mgr, relay = tree.add("mgr"), tree.add("relay", "mgr", "CachingPolicy\tSNEAKERNET\n")
    tree.add("c", "relay")
    tree.check_in_upward(["c", "relay"])
    needed = tree.package(name="NEEDED", script=None)
    mgr.run("dcmjexe", "-r", needed, "-h", "c")
    relay.run("rdsft", "-a")  # kept for c, which has not taken it: WAIT here
    stage_on(tree, relay, needed)
    spare = stored_package(relay, "SPARE")
    accessed(relay, needed, 5000)  # much older than SPARE
    limit = sum(counted(relay, [needed, spare]).values()) - 1
    settings(relay, f"CacheSizeLimit\t{limit}\n")
    out = clr(relay)
    assert [r["package"] for r in out["removed"]] == [spare] and kept(relay) == [needed]
    # over the limit on its own, it goes too, and its job is invalid
    rdssetfl = relay.path / "rdsprm" / "RDSSETFL"
    rdssetfl.write_text(rdssetfl.read_text().replace(f"CacheSizeLimit\t{limit}", "CacheSizeLimit\t1"))
    out = clr(relay)
    assert [r["package"] for r in out["removed"]] == [needed] and out["jobs_invalidated"] == 1


# -- invalid jobs ----------------------------------------------------------------

def _hierarchy(tree, relay_settings: str):  # type: ignore[no-untyped-def]
    """mgr -> relay -> c1, c2, c3.  One package A; job 1 installed on the relay (DONE there), job 2 for c1
    still WAIT on the relay, job 3 taken by c2 (HANDED) before c2 fetched A, job 4 taken by c3, which fetched A."""
    mgr, relay = tree.add("mgr"), tree.add("relay", "mgr", relay_settings)
    c1, c2, c3 = tree.add("c1", "relay"), tree.add("c2", "relay"), tree.add("c3", "relay")
    tree.check_in_upward(["c1", "c2", "c3", "relay"])
    a = tree.package(name="A")
    for dest in ("relay", "c1", "c2", "c3"):
        mgr.run("dcmjexe", "-r", a, "-h", dest)
    relay.run("rdsft", "-a")
    assert c2.run("rdsft", "-a", check=False, env=c2.env(RDS_CRASH_AT="acked")).returncode == -signal.SIGKILL
    assert c3.run("rdsft", "-a", check=False, env=c3.env(RDS_CRASH_AT="fetched")).returncode == -signal.SIGKILL
    assert groupid(relay) == {(1, "relay"): "DONE", (2, "c1"): "WAIT", (3, "c2"): "HANDED", (4, "c3"): "HANDED"}
    return mgr, relay, c1, c2, c3, a


@pytest.mark.parametrize(("timing", "with_resource", "left"), [
    ("RESOURCE_DELETE", "YES", {(3, "c2"): "INVALID", (4, "c3"): "INVALID"}),
    ("RESOURCE_DELETE", "NO", {(1, "relay"): "DONE", (3, "c2"): "INVALID", (4, "c3"): "INVALID"}),
    ("MANUAL", "YES", {(1, "relay"): "DONE", (2, "c1"): "INVALID", (3, "c2"): "INVALID", (4, "c3"): "INVALID"}),
    ("MANUAL", "NO", {(1, "relay"): "DONE", (2, "c1"): "INVALID", (3, "c2"): "INVALID", (4, "c3"): "INVALID"}),
])
def test_rdsft_init_invalidates_jobs_as_the_settings_say(tree, timing: str, with_resource: str,  # type: ignore[no-untyped-def]
                                                         left: dict[tuple[int, str], str]) -> None:
    mgr, relay, c1, c2, c3, a = _hierarchy(
        tree, f"IDCommandDeleteTiming\t{timing}\nCommandDeletewithResource\t{with_resource}\n")
    out = relay.run("rdsft", "-init").stdout
    assert out == f"deleted 1 package(s) from {relay.path / 'RDS'}; 3 job(s) invalidated\n"
    assert kept(relay) == []
    assert groupid(relay) == left  # rdsgroupid shows the invalid jobs that are kept
    table = relay.run("rdsgroupid").stdout
    assert "INVALID" in table
    # the job that was waiting on the relay ends EXEC-ERROR at the managing server (all a relay may sign
    # about a host below it), with the reason
    relay.run("rdssnd", "--once")
    st = dcmstat(mgr)
    assert st[(2, "c1")]["status"] == "EXEC-ERROR"
    assert st[(2, "c1")]["message"] == (f"rdsft -init removed package {a} from the package storehouse of relay; "
                                        "the job is invalid")
    assert st[(1, "relay")]["status"] == "COMPLETE"
    assert st[(3, "c2")]["status"] == st[(4, "c3")]["status"] == "EXEC"
    # c2 took its job but never got the package: it hears of it at its next check-in instead of waiting for ever
    c2.run("rdsft", "-a")
    assert installs(c2) == 0 and (3, "c2") not in groupid(c2)  # ended ERROR there, deleted (c2's defaults)
    # c3 had fetched the package before it left the relay: it installs as usual
    c3.run("rdsft", "-a")
    assert installs(c3) == 1
    relay.run("rdssnd", "--once")
    st = dcmstat(mgr)
    assert st[(3, "c2")]["status"] == "ERROR"
    assert st[(3, "c2")]["message"] == ("package " + a + " was removed from the package storehouse of "
                                        f"{relay.path} before it was fetched; the job is invalid")
    assert st[(4, "c3")]["status"] == "COMPLETE"
    assert {k: v for k, v in groupid(relay).items() if k[1] in ("c2", "c3")} == {(3, "c2"): "DONE", (4, "c3"): "DONE"}
    assert c1.run("rdsft", "-a").stdout.startswith("jobs received: 0;")  # job 2 never reaches c1


def test_rdsgroupid_d_removes_invalid_jobs(tree) -> None:  # type: ignore[no-untyped-def]
    mgr, relay, *_ = _hierarchy(tree, "IDCommandDeleteTiming\tMANUAL\n")
    relay.run("rdsft", "-init")
    assert groupid(relay)[(2, "c1")] == "INVALID"
    assert relay.run("rdsgroupid", "-d", "2:c1").stdout == "deleted 1 job(s)\n"
    assert (2, "c1") not in groupid(relay)


# -- retention ---------------------------------------------------------------------

def test_retention_by_storage_period_and_by_lifeofresource(tree) -> None:  # type: ignore[no-untyped-def]
    tree.add("mgr")
    relay = tree.add("relay", "mgr", "LifeofResource\t30\n")
    short = stored_package(relay, "SHORT", expire_days=2)  # 3 days old: past its own period
    longer = stored_package(relay, "LONGER", expire_days=5)  # 3 days old: kept
    old = stored_package(relay, "OLD")  # 31 days old, no period: LifeofResource 30
    young = stored_package(relay, "YOUNG")  # 29 days old
    forever = stored_package(relay, "FOREVER", expire_days=0)  # 0: no limit
    for pid, days in ((short, 3), (longer, 3), (old, 31), (young, 29), (forever, 1000)):
        stored(relay, pid, days * DAY)
        accessed(relay, pid, 0)  # recently used: access does not extend the storage period
    dry = clr(relay, "-n")
    assert dry["dry_run"] and sorted(r["package"] for r in dry["removed"]) == sorted([short, old])
    assert len(kept(relay)) == 5
    out = relay.run("rdsclr")
    assert out.stdout.splitlines()[0].split() == ["PACKAGE", "BYTES", "REASON", "LAST", "ACCESS", "DONE"]
    assert {ln.split()[0]: ln.split()[2] for ln in out.stdout.splitlines()[1:3]} == {short: "expired", old: "expired"}
    assert out.stdout.splitlines()[-2].startswith("removed 2 of 5 package(s), ")
    assert "deleted in the background" in out.stdout.splitlines()[-1]
    assert kept(relay) == sorted([longer, young, forever])


def test_lifeofresource_zero_keeps_packages(tree) -> None:  # type: ignore[no-untyped-def]
    tree.add("mgr")
    relay = tree.add("relay", "mgr", "LifeofResource\t0\n")
    pid = stored_package(relay, "KEEP")
    stored(relay, pid, 5000 * DAY)
    assert clr(relay)["removed"] == [] and kept(relay) == [pid]


def test_first_start_after_boot_deletes_expired_packages_once(tree) -> None:  # type: ignore[no-untyped-def]
    tree.add("mgr")
    relay = tree.add("relay", "mgr", "LifeofResource\t1\n")
    first = stored_package(relay, "FIRST")
    stored(relay, first, 2 * DAY)
    (relay.path / "run").mkdir(exist_ok=True)
    (relay.path / "run" / "boot_id").write_text("an-earlier-boot\n")
    relay.run("rdsft", "-a")  # the first start since that boot
    assert kept(relay) == []
    assert (relay.path / "run" / "boot_id").read_text().strip() == cleanup.boot_id()
    second = stored_package(relay, "SECOND")
    stored(relay, second, 2 * DAY)
    relay.run("rdsft", "-a")  # same boot: no retention at start (rdsclr or the cleanup interval do it)
    assert kept(relay) == [second]


def test_rdsclr_refuses_on_the_managing_server(tree) -> None:  # type: ignore[no-untyped-def]
    mgr = tree.add("mgr")
    tree.package()
    proc = mgr.run("rdsclr", check=False)
    assert proc.returncode == 1 and proc.stderr.startswith("rdsclr: this is the managing server")


# -- the resident cleanup ------------------------------------------------------------

def test_rdsma_cleans_up_every_cleanup_interval(tree) -> None:  # type: ignore[no-untyped-def]
    tree.add("mgr")
    relay = tree.add("relay", "mgr", "WatchTimeofOrders\t60\nCacheCleanupInterval\t1s\nCacheSizeLimit\t1\n")
    pid = stored_package(relay, "BIG")
    proc = subprocess.Popen([str(BIN / "rdsma"), "--foreground"], env=relay.env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: kept(relay) == [], timeout=30)
        second = stored_package(relay, "BIGGER")
        assert kept(relay) == [second]
        wait_for(lambda: kept(relay) == [], timeout=30)  # and again, a second later
        log = (relay.path / "log" / "rds.log").read_text()
        assert f"cleanup: removed {pid} (" in log and "rdsma: cache cleanup: removed 1 of 1 package(s)" in log
        proc.send_signal(signal.SIGTERM)  # still stops cleanly on SIGTERM
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# -- DELETE jobs ---------------------------------------------------------------------

def test_delete_job_removes_the_package_on_the_relay(tree) -> None:  # type: ignore[no-untyped-def]
    mgr, relay = tree.add("mgr"), tree.add("relay", "mgr")
    tree.add("c", "relay")
    tree.check_in_upward(["c", "relay"])
    a = tree.package(name="A")
    mgr.run("dcmjexe", "-r", a, "-h", "c")
    relay.run("rdsft", "-a")
    stage_on(tree, relay, a)
    assert kept(relay) == [a]
    assert mgr.run("dcmjexe", "-t", "delete", "-r", a, "-h", "relay").stdout == "2\n"
    out = relay.run("rdsft", "-a").stdout
    assert "COMPLETE" in out
    assert kept(relay) == []
    relay.run("rdssnd", "--once")
    st = dcmstat(mgr)
    assert st[(2, "relay")]["status"] == "COMPLETE"
    assert st[(2, "relay")]["message"] == f"deleted package {a} from the package storehouse of relay; " \
                                          "1 job(s) invalidated"
    assert st[(1, "c")]["status"] == "EXEC-ERROR" and "a DELETE job removed package" in st[(1, "c")]["message"]
    # a second DELETE finds nothing to delete, and says so
    mgr.run("dcmjexe", "-t", "DELETE", "-r", a, "-h", "relay")
    relay.run("rdsft", "-a")
    relay.run("rdssnd", "--once")
    assert dcmstat(mgr)[(3, "relay")]["message"] == f"package {a} was not in the package storehouse of relay"


def test_delete_job_passes_through_a_relay_to_the_one_below(tree) -> None:  # type: ignore[no-untyped-def]
    mgr, r1, r2 = tree.add("mgr"), tree.add("r1", "mgr"), tree.add("r2", "r1")
    tree.check_in_upward(["r2", "r1"])
    a = tree.package(name="A", script=None)
    mgr.run("dcmjexe", "-r", a, "-h", "r2")
    r1.run("rdsft", "-a")
    r2.run("rdsft", "-a")
    r1.run("rdsft", "-init")  # r1 keeps nothing; the DELETE job for r2 still passes
    mgr.run("dcmjexe", "-t", "delete", "-r", a, "-h", "r2")
    r1.run("rdsft", "-a")
    assert kept(r1) == []  # nothing fetched for a DELETE job
    r2.run("rdsft", "-a")
    assert kept(r2) == []
    r1.run("rdsft", "-a")
    assert dcmstat(mgr)[(2, "r2")]["status"] == "COMPLETE"


# -- concurrency -----------------------------------------------------------------------

def test_rdsclr_waits_for_a_pass_and_names_it(tree) -> None:  # type: ignore[no-untyped-def]
    mgr, relay = tree.add("mgr"), tree.add("relay", "mgr", "LifeofResource\t1\n")
    tree.check_in_upward(["relay"])
    pkg = tree.package(script="#!/bin/sh\nsleep 3\n")
    mgr.run("dcmjexe", "-r", pkg, "-h", "relay")
    pass_ = subprocess.Popen([str(BIN / "rdsft"), "-a"], env=relay.env(), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: any((relay.path / "work").glob("*.lock")))  # the install script runs
        stored(relay, pkg, 2 * DAY)  # expired under the running install
        proc = relay.run("rdsclr", check=False, env=relay.env(RDS_LOCK_TIMEOUT="0.3"))
        assert proc.returncode == 5 and "rdsft.lock: pid " in proc.stderr and "(rdsft -a, since" in proc.stderr
        assert kept(relay) == [pkg]
        out = clr(relay, env=relay.env(RDS_LOCK_TIMEOUT="30"))  # waits for the pass, then removes
        assert pass_.wait(timeout=30) == 0
        assert [r["package"] for r in out["removed"]] == [pkg] and kept(relay) == []
    finally:
        if pass_.poll() is None:
            pass_.kill()
            pass_.wait()


def relay_holding_a_job_for_c(tree, relay_settings: str = "") -> tuple:  # type: ignore[no-untyped-def, type-arg]
    """mgr -> relay -> c, a job for c held at the relay for a 3 MiB package."""
    mgr, relay = tree.add("mgr"), tree.add("relay", "mgr", relay_settings)
    tree.add("c", "relay")
    tree.check_in_upward(["c", "relay"])
    pkg = tree.package(name="BIG", script=None, files={"blob": os.urandom(3 << 20).hex()})
    mgr.run("dcmjexe", "-r", pkg, "-h", "c")
    relay.run("rdsft", "-a")
    return relay, pkg


def test_a_package_being_served_is_not_removed_under_the_reader(tree) -> None:  # type: ignore[no-untyped-def]
    relay, pkg = relay_holding_a_job_for_c(tree, "CacheSizeLimit\t1\n")
    service = serving(Home.open(relay.path), "c")
    try:
        blocks = service.read(pkg, 0, 1 << 40)
        first = next(blocks)  # c is in the middle of reading it
        out = clr(relay)
        assert out["removed"] == [] and [r["package"] for r in out["busy"]] == [pkg] and kept(relay) == [pkg]
        rest = b"".join(blocks)  # the reader finishes with the whole file
        assert len(first) + len(rest) == size_of(relay, pkg)
    finally:
        service.close()
    assert [r["package"] for r in clr(relay)["removed"]] == [pkg]  # once read, it goes


def test_rdsft_init_waits_for_a_reader_then_keeps_the_package_and_says_so(tree) -> None:  # type: ignore[no-untyped-def]
    relay, pkg = relay_holding_a_job_for_c(tree)
    service = serving(Home.open(relay.path), "c")
    try:
        blocks = service.read(pkg, 0, 1 << 40)
        next(blocks)
        proc = relay.run("rdsft", "-init", check=False, env=relay.env(RDS_LOCK_TIMEOUT="0.5"))
        assert proc.returncode == 5
        assert proc.stdout == f"deleted 0 package(s) from {relay.path / 'RDS'}\n"
        assert proc.stderr == f"rdsft: kept {pkg}: being read by a lower system\n"
        assert kept(relay) == [pkg] and groupid(relay) == {(1, "c"): "WAIT"}  # its job untouched
        b"".join(blocks)
    finally:
        service.close()
    assert relay.run("rdsft", "-init").stdout.startswith("deleted 1 package(s)")


def test_killed_after_settling_the_jobs_the_next_cleanup_removes_the_package(tree) -> None:  # type: ignore[no-untyped-def]
    """The jobs are settled before the package leaves: a kill in between never strands a job."""
    mgr, relay = tree.add("mgr"), tree.add("relay", "mgr", "CacheSizeLimit\t1\nIDCommandDeleteTiming\tMANUAL\n"
                                          "CachingPolicy\tSNEAKERNET\n")
    tree.add("c", "relay")
    tree.check_in_upward(["c", "relay"])
    pkg = tree.package(name="A", script=None)
    mgr.run("dcmjexe", "-r", pkg, "-h", "c")
    relay.run("rdsft", "-a")
    stage_on(tree, relay, pkg)
    proc = relay.run("rdsclr", check=False, env=relay.env(RDS_CRASH_AT="cleanup-settled"))
    assert proc.returncode == -signal.SIGKILL
    assert groupid(relay) == {(1, "c"): "INVALID"} and kept(relay) == [pkg]
    out = clr(relay)
    assert [r["package"] for r in out["removed"]] == [pkg] and out["jobs_invalidated"] == 0
    assert kept(relay) == []
    relay.run("rdssnd", "--once")
    assert dcmstat(mgr)[(1, "c")]["status"] == "EXEC-ERROR"  # the relay signs it: an interim status


def strays(host) -> list[str]:  # type: ignore[no-untyped-def]
    return [p.name for p in (host.path / "RDS").iterdir() if p.name.startswith(".tmp-")]


def test_rdsclr_deletes_the_files_in_the_background_unless_told_to_wait(tree) -> None:  # type: ignore[no-untyped-def]
    """A removed package is out of sight when rdsclr returns; its files go in a detached process,
    or before it returns with --wait."""
    tree.add("mgr")
    relay = tree.add("relay", "mgr")
    old = [stored_package(relay, n) for n in ("A", "B", "C")]
    for pid in old:
        stored(relay, pid, 40 * DAY)
    out = clr(relay)
    assert sorted(r["package"] for r in out["removed"]) == sorted(old) and kept(relay) == []
    assert isinstance(out["reaper_pid"], int)
    wait_for(lambda: not strays(relay), timeout=30)
    text = relay.run("rdsclr").stdout
    assert "background" not in text  # nothing left to delete: no background process
    more = [stored_package(relay, n) for n in ("D", "E")]
    for pid in more:
        stored(relay, pid, 40 * DAY)
    out = clr(relay, "--wait")
    assert len(out["removed"]) == 2 and out["reaper_pid"] is None and not strays(relay)


def test_rdsclr_forgets_the_checksums_of_packages_gone(tree) -> None:  # type: ignore[no-untyped-def]
    tree.add("mgr")
    relay = tree.add("relay", "mgr")
    keep, gone = stored_package(relay, "KEEP"), stored_package(relay, "GONE")
    sums = relay.path / "RDS" / ".checksums"
    sums.mkdir()
    for pid in (keep, gone):
        (sums / f"{pid}.json").write_text("{}")
    stored(relay, gone, 40 * DAY)
    clr(relay, "--wait")
    assert sorted(p.name for p in sums.iterdir()) == [f"{keep}.json"]
