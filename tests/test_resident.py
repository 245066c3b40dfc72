"""rdsma and rdssnd as resident processes: real processes, real signals."""

from __future__ import annotations

import json
import signal
import subprocess

from conftest import BIN, installs, wait_for
from observe import asleep_in, delivered

from rds import daemon
from rds.home import Home

# An install script that waits until the test opens its gate (a file), then counts itself.
GATED_SCRIPT = "#!/bin/sh\nwhile [ ! -e '{gate}' ]; do sleep 0.05; done\necho run >> \"$RDS_INSTALL_DIR/../installs\"\n"



def status(mgr) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return {r["dest"]: r["status"] for r in json.loads(mgr.run("dcmstat", "--json", check=False).stdout)}



def test_polling_picks_up_a_job_and_q_stops_it(tree) -> None:  # type: ignore[no-untyped-def]
    mgr = tree.add("mgr")
    relay = tree.add("relay", "mgr", "WatchTimeofOrders\t1s\n")
    c = tree.add("c", "relay", "WatchTimeofOrders\t1s\n")
    try:
        assert relay.run("rdsma").stdout.startswith("rdsma: started (pid ")
        assert c.run("rdsma").stdout.startswith("rdsma: started (pid ")
        again = c.run("rdsma", check=False)
        assert again.returncode == 7 and "rdsma: rdsma is already running for" in again.stderr
        wait_for(lambda: _known_at(mgr, "c"))
        mgr.run("dcmjexe", "-r", tree.package(), "-h", "c")
        wait_for(lambda: status(mgr) == {"c": "COMPLETE"})
        assert installs(c) == 1
    finally:
        for h in (c, relay):
            h.run("rdsma", "-q", check=False)
    assert daemon.running_pid(Home.open(c.path), "rdsma") is None
    gone = c.run("rdsma", "-q", check=False)
    assert gone.returncode == 8 and gone.stderr.strip() == f"rdsma: rdsma is not running for {c.path}"


def _known_at(host, name: str) -> bool:  # type: ignore[no-untyped-def]
    from rds import database, jobs

    db = database.connect(Home.open(host.path).db_path)
    try:
        return name in jobs.subtree(db)
    finally:
        db.close()


def foreground(host, cmd: str = "rdsma") -> subprocess.Popen[str]:  # type: ignore[no-untyped-def]
    return subprocess.Popen([str(BIN / cmd), "--foreground"], env=host.env(), text=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def started_script(c) -> bool:  # type: ignore[no-untyped-def]
    return any(p.suffix == ".sh" for p in (c.path / "work").iterdir())


def gated_install_under_way(tree):  # type: ignore[no-untyped-def]
    """A client whose rdsma --foreground is running an install script that waits for its gate."""
    mgr, relay, c = tree.add("mgr"), tree.add("relay", "mgr"), tree.add("c", "relay", "WatchTimeofOrders\t1h\n")
    tree.check_in_upward(["c", "relay"])
    gate = tree.root / "gate"
    mgr.run("dcmjexe", "-r", tree.package(script=GATED_SCRIPT.format(gate=gate)), "-h", "c")
    relay.run("rdsft", "-a")
    proc = foreground(c)
    wait_for(lambda: started_script(c))
    return mgr, relay, c, proc, gate


def sigterm(proc: subprocess.Popen[str]) -> None:
    """Send SIGTERM and wait until it was delivered (no longer pending), so a second one is a second one."""
    proc.send_signal(signal.SIGTERM)
    wait_for(lambda: delivered(proc.pid, signal.SIGTERM))


def test_sigterm_lets_the_install_finish(tree) -> None:  # type: ignore[no-untyped-def]
    mgr, relay, c, proc, gate = gated_install_under_way(tree)
    sigterm(proc)
    assert proc.poll() is None  # still waiting for the script
    gate.touch()
    assert proc.wait(timeout=60) == 0
    assert installs(c) == 1
    relay.run("rdsft", "-a")
    assert status(mgr) == {"c": "COMPLETE"}


def test_second_sigterm_stops_at_once_and_next_pass_finishes(tree) -> None:  # type: ignore[no-untyped-def]
    """The order of events: the second SIGTERM ends rdsma while the script is still held at its gate
    (so it did not wait for the install); the next pass waits for the script and takes its status."""
    mgr, relay, c, proc, gate = gated_install_under_way(tree)
    sigterm(proc)
    sigterm(proc)
    assert proc.wait(timeout=60) == 0
    assert not gate.exists() and installs(c) == 0  # the script is still waiting in its wrapper
    assert "rdsma: second SIGTERM, stopping at once" in (c.path / "log" / "rds.log").read_text()
    gate.touch()
    c.run("rdsft", "-a")  # waits for the wrapper and takes its status: no second run
    relay.run("rdsft", "-a")
    assert installs(c) == 1
    assert status(mgr) == {"c": "COMPLETE"}


def test_watch_zero_checks_once_and_manual_waits_for_a_wake(tree) -> None:  # type: ignore[no-untyped-def]
    tree.add("mgr")
    once = tree.add("once", "mgr", "WatchTimeofOrders\t0\n")
    proc = foreground(once)
    assert proc.wait(timeout=20) == 0
    assert "rdsma: stopped after 1 pass(es)" in (once.path / "log" / "rds.log").read_text()

    manual = tree.add("manual", "mgr", "WatchTimeofOrders\tMANUAL\n")
    proc = foreground(manual)
    try:
        home = Home.open(manual.path)
        wait_for(lambda: daemon.running_pid(home, "rdsma") == proc.pid)
        log = manual.path / "log" / "rds.log"
        wait_for(lambda: asleep_in(proc.pid, "select", "poll"))  # waiting, with no timer, for a wake
        assert f"rdsma: started (pid {proc.pid}, interval MANUAL)" in log.read_text()
        assert log.read_text().count("received") == 0
        assert daemon.wake(home, "rdsma")
        wait_for(lambda: _known_at(tree["mgr"], "manual"))
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    assert "rdsma: stopped after 1 pass(es)" in log.read_text()  # the woken one: none of its own


def test_resident_rdssnd_forwards_a_result_at_once(tree) -> None:  # type: ignore[no-untyped-def]
    mgr = tree.add("mgr")
    relay = tree.add("relay", "mgr", "WatchTimeofStatus\t1h\n")
    c = tree.add("c", "relay")
    tree.check_in_upward(["c", "relay"])
    mgr.run("dcmjexe", "-r", tree.package(), "-h", "c")
    relay.run("rdsft", "-a")
    relay.run("rdssnd")
    try:
        c.run("rdsft", "-a")
        wait_for(lambda: status(mgr) == {"c": "COMPLETE"}, timeout=5)
    finally:
        assert relay.run("rdssnd", "-q").stdout.startswith("rdssnd: stopped (pid ")


def test_rdssnd_with_watch_status_zero_says_so(tree) -> None:  # type: ignore[no-untyped-def]
    tree.add("mgr")
    relay = tree.add("relay", "mgr", "WatchTimeofStatus\t0\n")
    proc = relay.run("rdssnd")
    assert proc.stdout.strip() == "rdssnd: WatchTimeofStatus is 0: results are not sent"
