"""Startup requests (push) and the flag files of seed 003 section (6)."""

from __future__ import annotations

import json
import subprocess

from conftest import BIN, installs, wait_for
from observe import gone, pass_owner

from rds import flags
from rds.home import Home


def status(mgr) -> tuple[int, dict[str, str]]:  # type: ignore[no-untyped-def]
    proc = mgr.run("dcmstat", "--json", check=False)
    return proc.returncode, {r["dest"]: r["status"] for r in json.loads(proc.stdout)}


def test_push_reaches_a_client_two_levels_down_without_polling(tree) -> None:  # type: ignore[no-untyped-def]
    mgr = tree.add("mgr", push=True)
    relay = tree.add("relay", "mgr", push=True)
    c = tree.add("c", "relay", push=True)
    tree.check_in_upward(["c", "relay"])
    mgr.run("dcmjexe", "-r", tree.package(), "-h", "c")
    wait_for(lambda: installs(c) == 1)
    assert "startup request to relay: started rdsft -a" in (mgr.path / "log" / "rds.log").read_text()
    wait_for(lambda: "startup request to c: started rdsft -a" in (relay.path / "log" / "rds.log").read_text())
    # every pass has ended (the relay's: its lock is free; c's: the process that took its lock last is gone),
    # each host was woken once, and c installed once
    with Home.open(relay.path).lock("rdsft"):
        assert (relay.path / "log" / "rds.log").read_text().count("startup request to c:") == 1
    woken = pass_owner(c.path)
    assert woken is not None
    wait_for(lambda: gone(woken))
    assert (mgr.path / "log" / "rds.log").read_text().count("startup request to relay:") == 1
    assert installs(c) == 1


def test_running_rdsma_is_woken_instead_of_a_second_pass(tree) -> None:  # type: ignore[no-untyped-def]
    mgr = tree.add("mgr", push=True)
    relay = tree.add("relay", "mgr", "WatchTimeofOrders\tMANUAL\n", push=True)
    relay.run("rdsft", "-a")
    relay.run("rdsma")
    try:
        mgr.run("dcmjexe", "-r", tree.package(), "-h", "relay")
        wait_for(lambda: installs(relay) == 1)
        assert "startup request to relay: woke its rdsma" in (mgr.path / "log" / "rds.log").read_text()
        assert not (relay.path / "log" / "startup.out").exists()
    finally:
        relay.run("rdsma", "-q")


def test_failed_startup_with_cltstsud_reports_exec_error(tree) -> None:  # type: ignore[no-untyped-def]
    mgr = tree.add("mgr", push=True)
    relay = tree.add("relay", "mgr", push=True)
    relay.run("rdsft", "-a")
    (mgr.path / "rdsprm" / ".cltstsud").touch()
    away = relay.path.rename(relay.path.with_name("relay-away"))
    pkg = tree.package()
    mgr.run("dcmjexe", "-r", pkg, "-h", "relay")
    code, rows = status(mgr)
    assert (code, rows) == (32, {"relay": "EXEC-ERROR"})  # interim: running with failures (issue 14)
    away.rename(relay.path)
    relay.run("rdsft", "-a")  # the host gets its job by polling after all
    assert status(mgr) == (0, {"relay": "COMPLETE"})


def test_failed_startup_without_cltstsud_leaves_the_job_waiting(tree) -> None:  # type: ignore[no-untyped-def]
    mgr = tree.add("mgr", push=True)
    relay = tree.add("relay", "mgr", push=True)
    relay.run("rdsft", "-a")
    away = relay.path.rename(relay.path.with_name("relay-away"))
    mgr.run("dcmjexe", "-r", tree.package(), "-h", "relay")
    assert status(mgr) == (31, {"relay": "WAIT"})
    assert "startup request to relay failed" in (mgr.path / "log" / "rds.log").read_text()
    away.rename(relay.path)


def _home(tree, wup: str | None, off: bool) -> Home:  # type: ignore[no-untyped-def]
    host = tree.add("relay", push=True)
    if off:
        (host.path / "rdsprm" / ".cltwup_off").touch()
    if wup is not None:
        (host.path / "rdsprm" / "wuphosts").write_text(wup)
    return Home.open(host.path)


BELOW = ["c1", "c2", "c3"]


def test_without_cltwup_off_every_lower_is_started_and_wuphosts_is_ignored(tree) -> None:  # type: ignore[no-untyped-def]
    home = _home(tree, "c1\n", off=False)
    warnings: list[str] = []
    assert flags.startable(home, ["c1", "c2"], BELOW, warnings.append) == ["c1", "c2"]
    assert warnings == []


def test_cltwup_off_without_wuphosts_starts_nobody(tree) -> None:  # type: ignore[no-untyped-def]
    home = _home(tree, None, off=True)
    said: list[str] = []
    assert flags.startable(home, ["c1", "c2"], BELOW, said.append) == []
    assert said == [f"{home.prm}/.cltwup_off exists: no startup request to c1, c2; they get their jobs by polling"]


def test_wuphosts_rules(tree) -> None:  # type: ignore[no-untyped-def]
    home = _home(tree, "c1 c2 ignored-too\n c3\n10.0.0.7\nC2\nrelay\nstranger\n\n::1\n", off=True)
    said: list[str] = []
    assert flags.startable(home, ["c1", "c2", "c3"], BELOW, said.append) == ["c1"]
    path = home.prm / "wuphosts"
    assert said == [
        f"{path}:2: starts with a blank; ignored",
        f"{path}:3: 10.0.0.7 is an IP address, not a host name; ignored",
        f"{path}:4: C2 is not below this relay; ignored",
        f"{path}:5: relay is this relay itself; ignored",
        f"{path}:6: stranger is not below this relay; ignored",
        f"{path}:8: ::1 is an IP address, not a host name; ignored",
        f"{home.prm}/.cltwup_off exists: no startup request to c2, c3; they get their jobs by polling",
    ]


def test_cltwup_off_hosts_not_listed_get_their_jobs_by_polling(tree) -> None:  # type: ignore[no-untyped-def]
    mgr = tree.add("mgr", push=True)
    relay = tree.add("relay", "mgr")  # has .cltwup_off
    (relay.path / "rdsprm" / "wuphosts").write_text("c1\n")
    c1, c2 = tree.add("c1", "relay", push=True), tree.add("c2", "relay", push=True)
    tree.check_in_upward(["c1", "c2", "relay"])
    (mgr.path / "rdsprm" / ".cltwup_off").touch()
    mgr.run("dcmjexe", "-r", tree.package(), "-h", "c1", "c2")
    before = pass_owner(c2.path)
    relay.run("rdsft", "-a")
    wait_for(lambda: installs(c1) == 1)
    log = (relay.path / "log" / "rds.log").read_text()  # the relay's pass has ended: what it did is said
    assert "startup request to c1: started rdsft -a" in log
    assert "no startup request to c2; they get their jobs by polling" in log
    assert "startup request to c2:" not in log
    assert installs(c2) == 0 and pass_owner(c2.path) == before  # no pass ran on c2 since its check-in
    c2.run("rdsft", "-a")
    assert installs(c2) == 1


def test_rds_wake_wakes_its_home_and_takes_nothing_from_the_caller(tree) -> None:  # type: ignore[no-untyped-def]
    tree.add("mgr")
    relay = tree.add("relay", "mgr", push=True)
    relay.run("rdsgroupid")  # lays the home out
    env = relay.env(SSH_ORIGINAL_COMMAND="rdsft -init", SSH_CLIENT="192.0.2.9 50000 22")
    wake = [str(BIN / "rds-wake"), "--home"]
    proc = subprocess.run([*wake, str(relay.path)], env=env, stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=60)
    assert (proc.returncode, proc.stdout) == (0, "rds-wake: started rdsft -a\n"), proc.stderr
    assert "startup request from 192.0.2.9: started rdsft -a" in (relay.path / "log" / "rds.log").read_text()
    wait_for(lambda: "jobs received: 0" in (relay.path / "log" / "startup.out").read_text())
    missing = tree.root / "nohome"
    proc = subprocess.run([*wake, str(missing)], env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=60)
    assert (proc.returncode, proc.stderr) == (2, f"rds-wake: {missing}: no rds home here\n")
    assert not missing.exists()  # none is made
