"""The distribution status: rdsdlvse, rdsdlv, rdsdlvclr and what the hosts record."""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import BIN, Host, Tree, installs, wait_for

from rds import delivery, wire
from rds.cli import fast_table, spread, table
from rds.home import Home
from rds.jobs import Job
from rds.packages import PackageId


def rows(host: Host, *args: str) -> list[dict[str, object]]:
    return json.loads(host.run("rdsdlv", "--json", *args).stdout)


def seen(host: Host) -> dict[str, str]:
    """Destination -> status, as rdsdlv shows it on ``host``."""
    return {str(r["dest"]): str(r["status"]) for r in rows(host)}


@contextlib.contextmanager
def facility(*hosts: Host) -> Iterator[None]:
    try:
        for h in hosts:
            assert h.run("rdsdlvse").stdout.startswith("rdsdlvse: started (pid ")
        yield
    finally:
        for h in hosts:
            h.run("rdsdlvse", "-p", check=False)


def job(no: int, dest: str, pkg: str = "C.AB.APP.0100.0000") -> Job:
    return Job(no, dest, "INSTALL", PackageId.parse(pkg), "2026-11-21T10:00:00")


@pytest.fixture
def host(tree: Tree) -> Iterator[Host]:
    """One home with its facility running."""
    h = tree.add("relay")
    with facility(h):
        yield h


def fill(h: Host, entries: list[delivery.Entry]) -> None:
    f = delivery.open_file(h.home())
    try:
        f.put(entries)
    finally:
        f.close()


# -- one four-level distribution, as each host sees it ---------------------

def test_four_level_distribution_as_seen_at_each_relay(tree: Tree) -> None:
    mgr, r1 = tree.add("mgr"), tree.add("relay1", "mgr")
    r2, c = tree.add("relay2", "relay1"), tree.add("client", "relay2")
    tree.check_in_upward(["client", "relay2", "relay1"])
    with facility(mgr, r1, r2, c):
        pkg = tree.package()
        mgr.run("dcmjexe", "-r", pkg, "-h", "client")
        # .cltwup_off holds every startup request: the job waits for the lower system's poll
        assert seen(mgr) == {"client": "CLT_WAIT"}

        r1.run("rdsft", "-a")
        assert seen(mgr) == {"client": "INS_WAIT"}  # relay1 took the job
        assert seen(r1) == {"client": "CLT_WAIT"}  # kept here, then no startup request to relay2
        assert rows(r1)[0]["message"] == "no startup request to relay2: it gets the job when it polls"

        killed = r2.run("rdsft", "-a", check=False, env=r2.env(RDS_CRASH_AT="acked"))
        assert killed.returncode == -9
        assert seen(r1) == {"client": "INS_WAIT"}
        assert seen(r2) == {"client": "KEEPING"}  # stored and acknowledged, not yet kept
        r2.run("rdsft", "-a")
        assert seen(r2) == {"client": "KEEP"}  # kept (JIT: the package comes when the client asks for it)

        # in the client's process relay1 and relay2 fetch on demand (fetched@1, @2), then the client
        killed = c.run("rdsft", "-a", check=False, env=c.env(RDS_CRASH_AT="fetched@3"))
        assert killed.returncode == -9
        assert seen(r2) == {"client": "GEN_START"}  # the destination itself began reading the package
        assert seen(c) == {"client": "KEEPING"}
        c.run("rdsft", "-a")
        assert installs(c) == 1
        assert seen(c) == {"client": "COMPLETE"}
        assert seen(r2) == {"client": "COMPLETE"}  # the client reported at the end of its pass
        assert seen(r1) == {"client": "INS_WAIT"}  # relay2 has not sent it up yet
        r2.run("rdsft", "-a")
        assert seen(r1) == {"client": "COMPLETE"}
        assert seen(mgr) == {"client": "INS_WAIT"}
        r1.run("rdsft", "-a")
        assert seen(mgr) == {"client": "COMPLETE"}

        # a re-delivery (another version, cabinet and generation) overwrites the entry
        pkg2 = tree.package(name="APP", version="0200")
        mgr.run("dcmjexe", "-r", pkg2, "-h", "client")
        r1.run("rdsft", "-a")
        entries = [(e["dest"], e["version"], e["status"], e["code"]) for e in rows(r1)]
        assert entries == [("client", "0200", "CLT_WAIT", "90")]
        long = r1.run("rdsdlv", "-l").stdout.splitlines()
        assert long[0].split()[:8] == ["DESTINATION", "TYPE", "CABINET", "PACKAGE", "VERSION", "GEN", "JOB", "JOB"]
        assert long[1].split()[:10] == ["client", "C", "AB", "APP", "0200", "0000", "2", "INSTALL", "CLT_WAIT", "90"]


def test_own_install_and_an_error_from_below(tree: Tree) -> None:
    mgr, relay, c = tree.add("mgr"), tree.add("relay", "mgr"), tree.add("c", "relay")
    tree.check_in_upward(["c", "relay"])
    with facility(relay, c):
        bad = tree.package(name="BAD", script="#!/bin/sh\nexit 3\n")
        mgr.run("dcmjexe", "-r", bad, "-h", "relay", "c")
        assert relay.run("rdsft", "-a", check=False).returncode == 4
        assert seen(relay) == {"relay": "ERROR", "c": "CLT_WAIT"}
        assert c.run("rdsft", "-a", check=False).returncode == 4
        assert seen(relay) == {"relay": "ERROR", "c": "ERROR"}
        assert "exit" in str(rows(relay, "-a", "c")[0]["message"]).lower()
        assert seen(c) == {"c": "ERROR"}


def test_startup_request_statuses(tree: Tree) -> None:
    mgr = tree.add("mgr", push=True)
    relay = tree.add("relay", "mgr", push=True)
    relay.run("rdsft", "-a")
    with facility(mgr):
        (mgr.path / "rdsprm" / ".cltstsud").touch()
        away = relay.path.rename(relay.path.with_name("relay-away"))
        mgr.run("dcmjexe", "-r", tree.package(), "-h", "relay")
        assert seen(mgr) == {"relay": "CLT_START_ERROR"}
        away.rename(relay.path)
        relay.run("rdsft", "-a")
        assert seen(mgr) == {"relay": "COMPLETE"}

        # a startup request that reaches the relay, whose pass then cannot reach its upper system
        settings = relay.path / "rdsprm" / "RDSSETFL"
        settings.write_text(settings.read_text().replace(str(mgr.path), str(mgr.path) + "-gone"))
        mgr.run("dcmjexe", "-r", tree.package(name="APP2"), "-h", "relay")
        assert rows(mgr, "-r", "C.AB.APP2")[0]["status"] == "CLT_START"
        wait_for(lambda: (relay.path / "log" / "startup.out").exists())


# -- the facility -----------------------------------------------------------

def test_nothing_is_recorded_while_the_facility_is_stopped(tree: Tree) -> None:
    mgr, relay = tree.add("mgr"), tree.add("relay", "mgr")
    relay.run("rdsft", "-a")
    mgr.run("dcmjexe", "-r", tree.package(), "-h", "relay")
    relay.run("rdsft", "-a")
    stopped = relay.run("rdsdlv", check=False)
    assert stopped.returncode == 8
    assert stopped.stderr.strip() == (f"rdsdlv: the distribution status server facility is not running for "
                                      f"{relay.path} (start it with rdsdlvse)")
    with facility(relay):
        assert relay.run("rdsdlv").stdout.strip() == "no entries"
        again = relay.run("rdsdlvse", check=False)
        assert again.returncode == 7 and "rdsdlvse is already running for" in again.stderr
    gone = relay.run("rdsdlvse", "-p", check=False)
    assert gone.returncode == 8 and gone.stderr.strip() == f"rdsdlvse: rdsdlvse is not running for {relay.path}"


def test_facility_in_the_foreground_trims_the_file(tree: Tree) -> None:
    h = tree.add("relay", settings="OrderOfDeliveryStatus\t3\n")
    f = delivery.File(delivery.path_of(h.home()), 1000)  # written as if with a larger limit
    f.put(delivery.entry(job(n, f"h{n}"), "KEEP") for n in range(1, 11))
    f.close()
    proc = subprocess.Popen([str(BIN / "rdsdlvse"), "--foreground"], env=h.env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: "dropped 7 oldest entries" in (h.path / "log" / "rds.log").read_text()
                 if (h.path / "log" / "rds.log").exists() else False)
        assert sorted(seen(h)) == ["h10", "h8", "h9"]
    finally:
        h.run("rdsdlvse", "-p")
    assert proc.wait(timeout=20) == 0


def test_a_status_that_cannot_be_recorded_does_not_fail_the_pass(tree: Tree) -> None:
    mgr, relay = tree.add("mgr"), tree.add("relay", "mgr")
    relay.run("rdsft", "-a")
    with facility(relay):
        db = relay.path / "GROUP" / "delivery.db"
        for p in (db, Path(f"{db}-wal"), Path(f"{db}-shm")):
            p.unlink(missing_ok=True)
        db.write_text("not a database " * 100)
        mgr.run("dcmjexe", "-r", tree.package(), "-h", "relay")
        relay.run("rdsft", "-a")
        assert installs(relay) == 1
        assert "distribution status KEEPING not recorded" in (relay.path / "log" / "rds.log").read_text()
        broken = relay.run("rdsdlv", check=False)
        assert broken.returncode == 2 and "cannot open the distribution situation file" in broken.stderr


def test_situation_file_path_and_schema(tree: Tree) -> None:
    h = tree.add("relay", settings="OutPutFileOfDeliveryStatus\tstatus/dlv.db\n")
    with facility(h):
        fill(h, [delivery.entry(job(1, "c1"), "KEEP")])
        assert seen(h) == {"c1": "KEEP"}
    path = h.path / "status" / "dlv.db"
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == delivery.SCHEMA_VERSION
    db.execute("PRAGMA user_version=99")
    db.close()
    newer = h.run("rdsdlvse", check=False)
    assert newer.returncode == 2 and "version 99 is newer than this rds" in newer.stderr


# -- rdsdlvclr ----------------------------------------------------------------

def test_rdsdlvclr_refuses_while_running_then_initialises(host: Host) -> None:
    fill(host, [delivery.entry(job(1, "c1"), "KEEP")])
    pid = (host.path / "run" / "rdsdlvse.pid").read_text().split()[0]
    busy = host.run("rdsdlvclr", check=False)
    assert busy.returncode == 7
    assert busy.stderr.strip() == (f"rdsdlvclr: the distribution status server facility is running (pid {pid}); "
                                   "stop it with rdsdlvse -p first")
    host.run("rdsdlvse", "-p")
    path = host.path / "GROUP" / "delivery.db"
    assert host.run("rdsdlvclr").stdout.strip() == f"initialised {path}"
    db = sqlite3.connect(path)
    assert db.execute("SELECT count(*) FROM entries").fetchone()[0] == 0
    assert db.execute("PRAGMA user_version").fetchone()[0] == delivery.SCHEMA_VERSION
    db.close()
    with facility(host):
        assert host.run("rdsdlv").stdout.strip() == "no entries"


# -- rdsdlv -----------------------------------------------------------------

SAMPLE = [
    delivery.entry(job(1, "h1", "C.AB.APP.0100.0000"), "KEEP"),
    delivery.entry(job(2, "h2", "C.AB.APP.0200.0001"), "COMPLETE", "installed"),
    delivery.entry(job(3, "h3", "C.XY.TOOL.0100.0000"), "INS_WAIT"),
    delivery.entry(job(3, "h1", "C.XY.TOOL.0100.0000"), "ERROR", "exit 3"),
    delivery.entry(job(4, "h4", "D.AB.APP.0100.0000"), "KEEP_ERROR"),
]


def dests(host: Host, *args: str) -> list[str]:
    return [f"{r['dest']}:{r['package_id']}" for r in rows(host, *args)]


def test_rdsdlv_filters(host: Host) -> None:
    fill(host, SAMPLE)
    assert dests(host) == ["h1:APP", "h1:TOOL", "h2:APP", "h3:TOOL", "h4:APP"]
    assert dests(host, "-a", "h1", "h3") == ["h1:APP", "h1:TOOL", "h3:TOOL"]
    assert dests(host, "-e", "keep", "2f") == ["h1:APP", "h4:APP"]
    assert dests(host, "-r", "C.AB.APP") == ["h1:APP", "h2:APP"]  # every version and generation
    assert dests(host, "-r", "C.AB.APP.0200") == ["h2:APP"]
    assert dests(host, "-r", "C.AB.APP.0200.1", "D.AB.APP.0100.0000") == ["h2:APP", "h4:APP"]
    assert dests(host, "-n", "3", "4") == ["h1:TOOL", "h3:TOOL", "h4:APP"]
    assert dests(host, "-a", "h1", "h2", "-e", "ERROR", "COMPLETE", "-n", "2", "3") == ["h1:TOOL", "h2:APP"]
    assert dests(host, "-a", "nobody") == []
    assert host.run("rdsdlv", "-a", "nobody").stdout.strip() == "no entry matches"
    full = rows(host, "-a", "h2")[0]
    assert {k: full[k] for k in ("dest", "packager", "cabinet", "package", "package_id", "version", "generation",
                                 "job_no", "type", "status", "code", "message")} == {
        "dest": "h2", "packager": "C", "cabinet": "AB", "package": "C.AB.APP.0200.0001", "package_id": "APP",
        "version": "0200", "generation": "0001", "job_no": 2, "type": "INSTALL", "status": "COMPLETE", "code": "60",
        "message": "installed"}
    for bad, code, words in ((["-e", "DONE"], 3, "unknown status 'DONE'"), (["-r", "C.AB"], 3, "bad package ID"),
                             (["-n", "x"], 3, "bad job number"), (["-c", "-l"], 1, "give one of -c, -l and -d"),
                             (["--all"], 1, "--all goes with -d"), (["-a"], 1, "requires an argument")):
        proc = host.run("rdsdlv", *bad, check=False)
        assert proc.returncode == code and words in proc.stderr, (bad, proc.stderr)


def test_rdsdlv_short_and_long_tables(host: Host) -> None:
    fill(host, SAMPLE)
    short = host.run("rdsdlv").stdout
    assert host.run("rdsdlv", "-c").stdout == short
    lines = short.splitlines()
    assert lines[0].split() == ["DESTINATION", "TYPE", "CABINET", "PACKAGE", "VERSION", "GEN", "JOB", "STATUS"]
    assert lines[2].split() == ["h1", "C", "XY", "TOOL", "0100", "0000", "3", "ERROR"]
    assert short == table([line.split() for line in lines[1:]], lines[0].split()) + "\n"  # tabulate's look
    long = host.run("rdsdlv", "-l", "-a", "h1").stdout.splitlines()
    assert long[0].split("  ")[0] == "DESTINATION" and "MESSAGE" in long[0] and "UPDATED" in long[0]
    assert long[2].split()[7:10] == ["INSTALL", "ERROR", "70"] and long[2].endswith("exit 3")


def test_rdsdlv_delete(host: Host) -> None:
    fill(host, SAMPLE)
    nofilter = host.run("rdsdlv", "-d", check=False)
    assert nofilter.returncode == 1 and "give -a, -e, -r or -n, or --all" in nofilter.stderr
    assert host.run("rdsdlv", "-d", "-a", "h1", "-e", "ERROR").stdout.strip() == "deleted 1 entry"
    assert dests(host) == ["h1:APP", "h2:APP", "h3:TOOL", "h4:APP"]
    assert host.run("rdsdlv", "-d", "-r", "C.AB.APP").stdout.strip() == "deleted 2 entries"
    assert dests(host) == ["h3:TOOL", "h4:APP"]
    assert host.run("rdsdlv", "-d", "-a", "nobody").stdout.strip() == "deleted 0 entries"
    assert host.run("rdsdlv", "-d", "--all").stdout.strip() == "deleted 2 entries"
    assert rows(host) == []


def test_order_limit_drops_the_oldest(tree: Tree) -> None:
    h = tree.add("relay", settings="OrderOfDeliveryStatus\t5\n")
    with facility(h):
        home = h.home()
        delivery.forget(home)
        for n in range(1, 21):
            delivery.record(home, [job(n, f"h{n}")], "KEEP")
        delivery.record(home, [job(30, "h17")], "COMPLETE")  # a change makes an entry young again
        assert sorted(seen(h)) == ["h16", "h17", "h18", "h19", "h20"]
        delivery.record(home, [job(31, "h21")], "KEEP")
        assert sorted(seen(h)) == ["h17", "h18", "h19", "h20", "h21"]
        delivery.forget(home)


def test_overwrite_rule() -> None:
    with tempfile.TemporaryDirectory() as d:
        f = delivery.File(Path(d) / "s.db", 100)
        try:
            def now() -> list[tuple[object, ...]]:
                return [(r[0], r[2], r[4], r[5], r[6], r[8]) for r in f.select(delivery.Filter())]

            f.put([delivery.entry(job(5, "c", "C.AB.APP.0100.0000"), "KEEPING")])
            f.put([delivery.entry(job(5, "c", "C.AB.APP.0100.0000"), "KEEP")])
            f.put([delivery.entry(job(5, "c", "C.AB.APP.0100.0000"), "KEEPING")])  # KEEPING only begins an entry
            assert now() == [("c", "AB", "0100", "0000", 5, "KEEP")]
            f.put([delivery.entry(job(5, "c", "C.AB.APP.0100.0000"), "COMPLETE")])
            f.put([delivery.entry(job(5, "c", "C.AB.APP.0100.0000"), "CLT_START_ERROR")])  # COMPLETE is final
            assert now() == [("c", "AB", "0100", "0000", 5, "COMPLETE")]
            # a re-delivery: another cabinet, version and generation, the same entry
            f.put([delivery.entry(job(7, "c", "C.XY.APP.0300.0002"), "KEEPING")])
            assert now() == [("c", "XY", "0300", "0002", 7, "KEEPING")]
            f.put([delivery.entry(job(6, "c", "C.AB.APP.0200.0000"), "COMPLETE")])  # an older job: ignored
            assert now() == [("c", "XY", "0300", "0002", 7, "KEEPING")]
            # another packager type or package, or another destination: other entries
            f.put([delivery.entry(job(7, "c", "D.XY.APP.0300.0002"), "KEEP"),
                   delivery.entry(job(7, "c", "C.XY.APP2.0300.0002"), "KEEP"),
                   delivery.entry(job(7, "d", "C.XY.APP.0300.0002"), "KEEP")])
            assert len(now()) == 4
        finally:
            f.close()


# -- who may run it -----------------------------------------------------------

def as_nobody(args: list[str], home: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "RDS_HOME": str(home)}
    return subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *args], env=env,
                          capture_output=True, text=True, timeout=60)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch to another user")
def test_only_the_superuser_or_the_homes_owner() -> None:
    with tempfile.TemporaryDirectory() as d:
        os.chmod(d, 0o755)
        home = Path(d) / "home"
        Home.open(home)
        (home / "rdsprm" / "RDSSETFL").touch()
        for cmd in (["rdsdlv"], ["rdsdlv", "-d", "--all"], ["rdsdlvse"], ["rdsdlvse", "-p"], ["rdsdlvclr"]):
            proc = as_nobody([str(BIN / cmd[0]), *cmd[1:]], home)
            assert proc.returncode == 1, (cmd, proc.stderr)
            assert proc.stderr.strip() == \
                f"{cmd[0]}: {home}: permission denied: only root or the owner of this home may use it"
        for p in [home, *home.rglob("*")]:
            os.chown(p, 65534, 65534)
        proc = as_nobody([str(BIN / "rdsdlv")], home)  # the owner passes; the facility is not running
        assert proc.returncode == 8, proc.stderr


# -- the helpers ----------------------------------------------------------------

def test_spread_repeats_the_option_before_each_value() -> None:
    opts = ["-a", "-e"]
    assert spread(["-a", "h1", "h2", "-e", "X", "Y", "-c", "--json"], opts) == \
        ["-a", "h1", "-a", "h2", "-e", "X", "-e", "Y", "-c", "--json"]
    assert spread(["-c", "x", "-a", "h1"], opts) == ["-c", "x", "-a", "h1"]
    assert spread(["-a", "h1", "--", "-e"], opts) == ["-a", "h1", "--", "-e"]


def test_fast_table_looks_like_tabulate() -> None:
    cases = [
        (["DESTINATION", "T", "STATUS"], [["a", "bb", "c"], ["long-destination", "x", ""], ["", "", ""]]),
        (["D", "TYPE", "MESSAGE"], [["h", "C", "a message with  spaces"], ["host2", "", "x"]]),
        (["A", "B"], [["1", "2"]]),
    ]
    for headers, data in cases:
        assert fast_table(data, headers) == table(data, headers)


def test_a_lower_system_cannot_mark_another_ones_job_taken(tree: Tree) -> None:
    from rds.transport import serving

    mgr, b = tree.add("mgr"), tree.add("b", "mgr")
    tree.add("a", "mgr")
    tree.check_in_upward(["a", "b"])
    with facility(mgr):
        mgr.run("dcmjexe", "-r", tree.package(), "-h", "b")
        service = serving(mgr.home(), "a")
        try:
            ack = {"op": "ack", "v": wire.VERSION, "host": "a", "jobs": [[1, "b"]]}
            assert service.handle(ack) == {"ok": True, "taken": 0}
        finally:
            service.close()
        assert seen(mgr) == {"b": "CLT_WAIT"}
        b.run("rdsft", "-a")
        assert seen(mgr) == {"b": "COMPLETE"}
