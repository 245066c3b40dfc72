"""kill -9 at any point of rdsft -a: the next run finishes every job exactly once."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
import time

import pytest
from conftest import installs

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
            assert (d / "manifest.json").is_file() and (d / "payload.tgz").is_file()


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
    tree.add("mgr")
    relay = tree.add("relay", "mgr")
    home = Home.open(relay.path)
    release = threading.Event()

    def hold() -> None:
        with home.lock("rdsft"):
            release.wait(10)

    t = threading.Thread(target=hold)
    t.start()
    time.sleep(0.2)
    proc = subprocess.Popen([str(relay.run.__globals__["BIN"] / "rdsft"), "-a"], env=relay.env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(1)
    assert proc.poll() is None  # waiting for the lock
    release.set()
    t.join()
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "jobs received: 0" in out
