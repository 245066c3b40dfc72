"""End to end through the real commands: managing server -> relays -> clients."""

from __future__ import annotations

import json

from conftest import installs

from rds import poller
from rds.home import Home
from rds.transport import local


def dcmstat(host, *args):  # type: ignore[no-untyped-def]
    proc = host.run("dcmstat", "--json", *args, check=False)
    return proc.returncode, {(r["job_no"], r["dest"]): r for r in json.loads(proc.stdout)}


def fetch_count(host) -> int:  # type: ignore[no-untyped-def]
    return (host.path / "log" / "rds.log").read_text().count("fetched package")


def test_four_levels_manager_relay_relay_client(tree) -> None:  # type: ignore[no-untyped-def]
    mgr, r1, r2, c = tree.add("mgr"), tree.add("relay1", "mgr"), tree.add("relay2", "relay1"), \
        tree.add("client", "relay2")
    tree.check_in_upward(["client", "relay2", "relay1"])
    pkg = tree.package()
    job = mgr.run("dcmjexe", "-r", pkg, "-h", "client").stdout.strip()
    assert job == "1"
    assert dcmstat(mgr)[1][(1, "client")]["status"] == "WAIT"
    for h in (r1, r2, c):
        h.run("rdsft", "-a")
    assert dcmstat(mgr)[1][(1, "client")]["status"] == "EXEC"
    assert (c.installed() / "bin" / "app.sh").read_text() == "#!/bin/sh\necho app\n"
    assert installs(c) == 1
    r2.run("rdssnd", "--once")
    r1.run("rdssnd", "--once")
    code, rows = dcmstat(mgr)
    assert code == 0
    assert rows[(1, "client")]["status"] == "COMPLETE"
    # the package crossed each link once
    assert [fetch_count(h) for h in (r1, r2, c)] == [1, 1, 1]


def test_relay_with_two_clients_fetches_once(tree) -> None:  # type: ignore[no-untyped-def]
    mgr, relay = tree.add("mgr"), tree.add("relay", "mgr")
    tree.add("c1", "relay")
    tree.add("c2", "relay")
    tree.check_in_upward(["c1", "c2", "relay"])
    pkg = tree.package()
    mgr.run("dcmjexe", "-r", pkg, "-h", "c1", "c2")
    relay.run("rdsft", "-a")
    listing = relay.run("rdsgroupid").stdout
    assert "c1" in listing and "c2" in listing and "WAIT" in listing
    tree["c1"].run("rdsft", "-a")
    tree["c2"].run("rdsft", "-a")
    assert "HANDED" in relay.run("rdsgroupid").stdout
    relay.run("rdsft", "-a")  # sends the results it got from below
    code, rows = dcmstat(mgr)
    assert code == 0 and {r["status"] for r in rows.values()} == {"COMPLETE"}
    assert fetch_count(relay) == 1
    assert installs(tree["c1"]) == installs(tree["c2"]) == 1


def test_routing_through_two_branches(tree) -> None:  # type: ignore[no-untyped-def]
    mgr = tree.add("mgr")
    tree.add("ra", "mgr")
    tree.add("rb", "mgr")
    tree.add("ca", "ra")
    tree.add("cb", "rb")
    tree.check_in_upward(["ca", "cb", "ra", "rb"])
    pkg = tree.package()
    mgr.run("dcmjexe", "-r", pkg, "-h", "ca")
    tree["rb"].run("rdsft", "-a")
    assert "no jobs" in tree["rb"].run("rdsgroupid").stdout
    tree["ra"].run("rdsft", "-a")
    assert "ca" in tree["ra"].run("rdsgroupid").stdout
    assert fetch_count(tree["rb"]) == 0


def test_install_error_skips_only_that_job(tree) -> None:  # type: ignore[no-untyped-def]
    mgr, relay, c = tree.add("mgr"), tree.add("relay", "mgr"), tree.add("c", "relay")
    tree.check_in_upward(["c", "relay"])
    good = tree.package(name="GOOD", install_dir="/opt/good")
    bad = tree.package(name="BAD", install_dir="/opt/bad", script="#!/bin/sh\necho broken disk >&2\nexit 3\n")
    mgr.run("dcmjexe", "-r", bad, "-h", "c")
    mgr.run("dcmjexe", "-r", good, "-h", "c")
    relay.run("rdsft", "-a")
    proc = c.run("rdsft", "-a", check=False)
    assert proc.returncode == 4
    assert proc.stderr.strip() == "rdsft: 1 of 2 install(s) ended in error"
    relay.run("rdsft", "-a")
    code, rows = dcmstat(mgr)
    assert code == 30
    assert rows[(1, "c")]["status"] == "ERROR"
    assert rows[(1, "c")]["message"] == "script exited 3: broken disk"
    assert rows[(2, "c")]["status"] == "COMPLETE"
    assert "broken disk" in (c.path / "log" / "install" / "1.c.log").read_text()


def test_job_for_unknown_host_is_held_until_it_reports(tree) -> None:  # type: ignore[no-untyped-def]
    mgr, relay = tree.add("mgr"), tree.add("relay", "mgr")
    relay.run("rdsft", "-a")
    pkg = tree.package()
    proc = mgr.run("dcmjexe", "-r", pkg, "-h", "late")
    assert "late has not reported in yet" in proc.stderr
    code, rows = dcmstat(mgr)
    assert code == 31 and rows[(1, "late")]["message"] == "held: late has not reported in yet"
    late = tree.add("late", "relay")
    tree.check_in_upward(["late", "relay", "late", "relay"])
    code, rows = dcmstat(mgr)
    assert code == 0 and rows[(1, "late")]["status"] == "COMPLETE"
    assert installs(late) == 1


def test_communication_error_stops_the_run_and_keeps_results(tree) -> None:  # type: ignore[no-untyped-def]
    mgr, relay, c = tree.add("mgr"), tree.add("relay", "mgr"), tree.add("c", "relay")
    tree.check_in_upward(["c", "relay"])
    mgr.run("dcmjexe", "-r", tree.package(), "-h", "c")
    relay.run("rdsft", "-a")
    c.run("rdsft", "-a")
    moved = mgr.path.rename(mgr.path.with_name("mgr-away"))
    proc = relay.run("rdsft", "-a", check=False)
    assert proc.returncode == 253
    assert proc.stderr.strip() == f"rdsft: upper system {mgr.path}: no such directory"
    moved.rename(mgr.path)
    relay.run("rdssnd", "--once")
    assert dcmstat(mgr)[1][(1, "c")]["status"] == "COMPLETE"


def test_idle_check_in_is_one_request(tree, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    tree.add("mgr")
    relay = tree.add("relay", "mgr")
    for c in ("c1", "c2", "c3"):
        tree.add(c, "relay")
    tree.check_in_upward(["c1", "c2", "c3"])
    calls: list[str] = []
    real = local.LocalLink.call

    def counting(self, msg):  # type: ignore[no-untyped-def]
        calls.append(msg["op"])
        return real(self, msg)

    monkeypatch.setattr(local.LocalLink, "call", counting)
    poller.run_once(Home.open(relay.path))
    assert calls == ["checkin"]
    db_routes = relay.run("rdsgroupid").stdout
    assert db_routes.strip() == "no jobs"


def test_results_are_sent_once(tree) -> None:  # type: ignore[no-untyped-def]
    mgr, relay, c = tree.add("mgr"), tree.add("relay", "mgr"), tree.add("c", "relay")
    tree.check_in_upward(["c", "relay"])
    mgr.run("dcmjexe", "-r", tree.package(), "-h", "c")
    relay.run("rdsft", "-a")
    assert "results sent: 1" in c.run("rdsft", "-a").stdout
    assert "results sent: 0" in c.run("rdsft", "-a").stdout
    assert relay.run("rdssnd", "--once").stdout.strip() == "sent 1 result(s)"
    assert relay.run("rdssnd", "--once").stdout.strip() == "sent 0 result(s)"
