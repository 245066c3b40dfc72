"""kill -9 at any point of rdsft -a: the next run finishes every job exactly once."""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import chunkfiles
import pytest
from conftest import installs, wait_for
from observe import asleep_in, gone, pass_owner

from rds.home import Home

# Points of rdsft -a (rds/poller.py, rds/client.py, rds/install.py) where the process kills itself.
CLIENT_POINTS = ["checked-in", "stored", "acked", "downloading", "fetched", "installing", "extracted",
                 "script-started", "installed", "reported"]
RELAY_POINTS = ["checked-in", "stored", "acked", "reported"]
# Under JIT the relay fetches a package when its lower system asks for it: on this machine that fetch
# runs in the lower system's process, which is killed there.
ON_DEMAND_POINTS = ["downloading", "fetched"]


def build(tree, size: int = 3 << 20):  # type: ignore[no-untyped-def]
    mgr, relay, c = tree.add("mgr"), tree.add("relay", "mgr"), tree.add("c", "relay")
    tree.check_in_upward(["c", "relay"])
    # several MiB of incompressible data: the download takes several blocks
    pkg = tree.package(files={"bin/app.sh": "#!/bin/sh\necho app\n", "data.bin": os.urandom(size).hex()},
                       script="#!/bin/sh\nsleep 0.3\necho run >> \"$RDS_INSTALL_DIR/../installs\"\n")
    mgr.run("dcmjexe", "-r", pkg, "-h", "c")
    return mgr, relay, c


def statuses(mgr) -> dict[str, str]:  # type: ignore[no-untyped-def]
    rows = json.loads(mgr.run("dcmstat", "--json", check=False).stdout)
    return {r["dest"]: r["status"] for r in rows}



def crash(host, point: str) -> None:  # type: ignore[no-untyped-def]
    proc = host.run("rdsft", "-a", check=False, env=host.env(RDS_CRASH_AT=point))
    assert proc.returncode == -signal.SIGKILL, f"{point} was not reached: {proc.stdout}{proc.stderr}"


def no_stray_package(host) -> None:  # type: ignore[no-untyped-def]
    for d in (host.path / "RDS").iterdir():
        if d.name.startswith("C."):
            assert (d / "manifest.json").is_file()
            listed = json.loads((d / "manifest.json").read_text()).get("chunks")
            assert listed or (d / "payload.tgz").is_file()  # a chunked package's chunks, or the old payload
            held = chunkfiles.stored(host.path, [c[0] for c in listed or []])
            for name, _, size, *_ in listed or []:
                assert len(held[name]) == size


@pytest.mark.parametrize("point", CLIENT_POINTS)
def test_client_killed(tree, point: str) -> None:  # type: ignore[no-untyped-def]
    mgr, relay, c = build(tree)
    relay.run("rdsft", "-a")
    crash(c, point)
    no_stray_package(c)
    c.run("rdsft", "-a", timeout=120)
    c.run("rdsft", "-a")
    relay.run("rdssnd", "--once")
    assert installs(c) == 1
    assert statuses(mgr) == {"c": "COMPLETE"}
    assert "COMPLETE" in (c.path / "log" / "rds.log").read_text()


@pytest.mark.parametrize("point", RELAY_POINTS)
def test_relay_killed(tree, point: str) -> None:  # type: ignore[no-untyped-def]
    mgr, relay, c = build(tree)
    if point == "reported":
        relay.run("rdsft", "-a")
        c.run("rdsft", "-a")
    crash(relay, point)
    no_stray_package(relay)
    relay.run("rdsft", "-a")
    c.run("rdsft", "-a")
    relay.run("rdsft", "-a")
    done_once(mgr, relay, c)


def done_once(mgr, relay, c) -> str:  # type: ignore[no-untyped-def]
    """c installed once, the managing server knows, and the relay fetched the package from it once
    (resuming if cut); returns the relay's log."""
    assert installs(c) == 1
    assert statuses(mgr) == {"c": "COMPLETE"}
    log = (relay.path / "log" / "rds.log").read_text()
    assert log.count("from byte 0\n") == 1
    return log


@pytest.mark.parametrize("point", ON_DEMAND_POINTS)
def test_killed_while_the_relay_fetches_on_demand(tree, point: str) -> None:  # type: ignore[no-untyped-def]
    mgr, relay, c = build(tree)
    relay.run("rdsft", "-a")
    crash(c, f"{point}@1")  # the relay's fetch comes first, then c's own download
    no_stray_package(relay)
    no_stray_package(c)
    c.run("rdsft", "-a")
    relay.run("rdsft", "-a")
    log = done_once(mgr, relay, c)
    if point == "downloading":
        assert re.search(r"from byte [1-9]", log), "the cut download was not resumed"


def test_killed_twice_in_a_row(tree) -> None:  # type: ignore[no-untyped-def]
    mgr, relay, c = build(tree)
    relay.run("rdsft", "-a")
    crash(c, "downloading@2")
    crash(c, "downloading@1")
    crash(c, "script-started")
    c.run("rdsft", "-a")
    relay.run("rdssnd", "--once")
    assert installs(c) == 1 and statuses(mgr) == {"c": "COMPLETE"}


def test_second_rdsft_waits_then_says_who_holds_the_lock(tree) -> None:  # type: ignore[no-untyped-def]
    tree.add("mgr")
    relay = tree.add("relay", "mgr")
    home = Home.open(relay.path)
    with home.lock("rdsft"):
        started = time.monotonic()
        proc = relay.run("rdsft", "-a", check=False, env=relay.env(RDS_LOCK_TIMEOUT="1"))
        waited = time.monotonic() - started
    assert proc.returncode == 5
    assert waited >= 1
    line = proc.stderr.strip()
    assert line.startswith(f"rdsft: {relay.path}/run/rdsft.lock: pid {os.getpid()} (")
    assert line.endswith("holds it; gave up after 1s")


def test_two_rdsft_are_serialized(tree) -> None:  # type: ignore[no-untyped-def]
    """The order of events, each observed: this process holds the pass lock; the second rdsft -a is
    waiting for it (asleep in the lock's poll loop, and has not run: the lock's owner file still names
    this process); this process lets go; only then does the other take the lock (the owner file names
    it) and run its pass."""
    tree.add("mgr")
    relay = tree.add("relay", "mgr")
    home = Home.open(relay.path)
    owner = relay.path / "run" / "rdsft.owner"
    with home.lock("rdsft"):
        assert json.loads(owner.read_text())["pid"] == os.getpid()
        proc = subprocess.Popen([str(relay.run.__globals__["BIN"] / "rdsft"), "-a"],
                                env=relay.env(RDS_LOCK_TIMEOUT="600"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        # before its lock, rdsft -a sleeps nowhere but in the lock's poll loop
        wait_for(lambda: asleep_in(proc.pid, "nanosleep") or proc.poll() is not None, timeout=120)
        assert proc.poll() is None, proc.communicate()
        assert json.loads(owner.read_text())["pid"] == os.getpid()  # it has not taken the lock
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert json.loads(owner.read_text())["pid"] == proc.pid  # it took the lock after this process let go
    assert "jobs received: 0" in out


def relay_job_state(relay) -> list[str]:  # type: ignore[no-untyped-def]
    db = sqlite3.connect(f"file:{relay.path / 'GROUP' / 'rds.db'}?mode=ro", uri=True)
    try:
        return [r[0] for r in db.execute("SELECT state FROM jobs WHERE dest='relay'")]
    finally:
        db.close()


def test_a_stray_rds_crash_at_does_not_reach_the_passes_it_wakes(tree) -> None:  # type: ignore[no-untyped-def]
    """Bug: RDS_CRASH_AT in the shell of whoever ran dcmjexe was inherited by the detached rdsft -a
    that the startup request started, which then killed itself at that point."""
    mgr = tree.add("mgr", push=True)
    relay = tree.add("relay", "mgr", push=True)
    relay.run("rdsft", "-a")
    mgr.run("dcmjexe", "-r", tree.package(), "-h", "relay", env=mgr.env(RDS_CRASH_AT="installing"))
    wait_for(lambda: statuses(mgr) == {"relay": "COMPLETE"}, timeout=60)
    assert installs(relay) == 1


def test_a_test_may_ask_for_the_hook_in_the_woken_pass(tree) -> None:  # type: ignore[no-untyped-def]
    """RDS_CRASH_AT_CHILDREN reaches the woken pass as its RDS_CRASH_AT: it dies at the point, the job
    taken and not installed; the next pass installs it once."""
    mgr = tree.add("mgr", push=True)
    relay = tree.add("relay", "mgr", push=True)
    relay.run("rdsft", "-a")
    before = pass_owner(relay.path)
    mgr.run("dcmjexe", "-r", tree.package(), "-h", "relay", env=mgr.env(RDS_CRASH_AT_CHILDREN="installing"))
    wait_for(lambda: pass_owner(relay.path) not in (None, before), timeout=60)
    woken = pass_owner(relay.path)
    assert woken is not None
    wait_for(lambda: gone(woken), timeout=60)
    assert relay_job_state(relay) == ["INSTALLING"] and installs(relay) == 0
    relay.run("rdsft", "-a")
    assert installs(relay) == 1 and statuses(mgr) == {"relay": "COMPLETE"}


@pytest.mark.parametrize(("value", "says"), [
    ("instaling", "'instaling' is not a crash point"),
    ("installing@x", "'installing@x': after '@' give a count from 1"),
    ("installing@0", "'installing@0': after '@' give a count from 1"),
    ("", None),
])
def test_a_malformed_rds_crash_at_is_a_clear_error(tree, value: str, says: str | None) -> None:  # type: ignore[no-untyped-def]
    tree.add("mgr")
    for variable in ("RDS_CRASH_AT", "RDS_CRASH_AT_CHILDREN"):
        proc = tree["mgr"].run("dcmstat", "--json", check=False, env=tree["mgr"].env(**{variable: value}))
        if says is None:
            assert proc.returncode == 0, proc.stderr
            continue
        assert proc.returncode == 2 and proc.stdout == "", proc
        assert proc.stderr.startswith(f"dcmstat: {variable}={value!r}: {says}") and "test hook" in proc.stderr
        assert len(proc.stderr.splitlines()) == 1


def test_every_crash_point_that_rds_reaches_is_known() -> None:
    """RDS_CRASH_AT is checked against crashpoints.POINTS: a point reached in the code but not listed would be
    refused, a point listed but never reached would kill nothing."""
    from rds import crashpoints

    source = "\n".join(p.read_text() for p in Path(crashpoints.__file__).parent.rglob("*.py"))
    reached = set(re.findall(r'crashpoints\.reach\("([\w-]+)"\)', source))
    reached |= set(re.findall(r'HashingWriter\([^()]*"([\w-]+)"\)', source))  # a point per block written
    assert reached == crashpoints.POINTS
