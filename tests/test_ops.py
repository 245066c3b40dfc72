"""Operator control at the managing server (issue 15), each part through a three-level tree of local homes:
mgr > relay > c1, c2 (and more clients where a part needs them).

What happened is checked outside the code under test where it can be: the install script's own
record (one line per run, with the job number), the homes' databases read with sqlite3, the
package file hashed with hashlib, the host key fingerprint computed with hashlib.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import Host, Tree, wait_for

from rds import manager
from rds.home import Home

RECORD = "#!/bin/sh\ncase \"$RDS_HOST\" in fail*) exit 3;; esac\n" \
         "[ -e \"$RDS_HOME/failonce\" ] && rm \"$RDS_HOME/failonce\" && exit 4\n" \
         "echo \"$RDS_JOB\" >> \"$RDS_INSTALL_DIR/../installs\"\n"


def runs(host: Host, job: int | None = None) -> int:
    """How many times the install script ran on ``host`` (for ``job``), from the script's own record."""
    f = host.installed("/opt/installs")
    lines = f.read_text().split() if f.exists() else []
    return len(lines) if job is None else lines.count(str(job))


def db_of(host: Host) -> sqlite3.Connection:
    db = sqlite3.connect(host.path / "GROUP" / "rds.db")
    db.row_factory = sqlite3.Row
    return db


def stat(mgr: Host, job: int) -> dict[str, dict[str, Any]]:
    return {r["dest"]: r for r in json.loads(mgr.run("dcmstat", "-n", str(job), "--json", check=False).stdout)}


def build(tree: Tree, clients: list[str], under: str = "relay") -> tuple[Host, Host, str]:
    mgr = tree.add("mgr")
    relay = tree.add("relay", "mgr")
    for c in clients:
        tree.add(c, under)
    tree.check_in_upward([*clients, "relay"])
    return mgr, relay, tree.package(script=RECORD)


def job(mgr: Host, *args: str) -> int:
    return int(mgr.run("dcmjexe", *args).stdout.strip())


def passes(tree: Tree, names: list[str]) -> None:
    """One pass of each, in order (an install that fails makes rdsft -a exit 4: that is checked by dcmstat)."""
    for n in names:
        assert tree[n].run("rdsft", "-a", check=False).returncode in (0, 4)


# -- 1. delete ------------------------------------------------------------------------------------------

def test_withdrawal_goes_all_the_way_down_and_an_installed_destination_keeps_its_outcome(tree: Tree) -> None:
    mgr, relay, pid = build(tree, ["c1", "c2", "c3", "c4"])
    n = job(mgr, "-r", pid, "-h", "c1", "c2", "c3", "c4")
    passes(tree, ["relay", "c4"])  # the relay holds them all; c4 installed
    relay.run("rdsft", "-a")  # c4's COMPLETE goes up
    # c3 takes its job and holds it (its pass stops after the acknowledgement: not begun)
    proc = tree["c3"].run("rdsft", "-a", check=False, env=tree["c3"].env(RDS_CRASH_AT="acked"))
    assert proc.returncode != 0
    out = json.loads(mgr.run("dcmjbrm", "-n", str(n), "--json").stdout)
    assert out == {"job_no": n, "withdrawn": 0, "sent_down": 3, "kept": 1}
    assert stat(mgr, n)["c1"]["status"] == "EXEC" and "DELETE requested" in stat(mgr, n)["c1"]["message"]
    relay.run("rdsft", "-a")  # one check-in: c1 and c2 dropped at the relay, DELETE signed by it
    held = {r["dest"]: r["state"] for r in db_of(relay).execute("SELECT dest, state FROM jobs WHERE job_no=?", (n,))}
    assert held == {"c1": "DONE", "c2": "DONE", "c3": "HANDED", "c4": "DONE"}
    passes(tree, ["c1", "c2", "c3", "relay"])
    assert [runs(tree[c], n) for c in ("c1", "c2", "c3", "c4")] == [0, 0, 0, 1]
    rows = stat(mgr, n)
    assert {d: r["status"] for d, r in rows.items()} == {"c1": "DELETE", "c2": "DELETE", "c3": "DELETE",
                                                         "c4": "COMPLETE"}
    signer = dict(db_of(mgr).execute("SELECT dest, signer FROM results WHERE job_no=?", (n,)).fetchall())
    assert signer == {"c1": "relay", "c2": "relay", "c3": "c3", "c4": "c4"}  # c3 decided for itself
    assert mgr.run("dcmstat", "-n", str(n), check=False).returncode == 0  # DELETE is no failure
    passes(tree, ["c1", "c2", "c3"])  # later passes change nothing
    assert [runs(tree[c], n) for c in ("c1", "c2", "c3")] == [0, 0, 0]


def test_a_destination_not_handed_out_ends_delete_at_once(tree: Tree) -> None:
    mgr, relay, pid = build(tree, ["c1", "c2"])
    n = job(mgr, "-r", pid, "-h", "c1", "c2")
    out = json.loads(mgr.run("dcmjbrm", "-n", str(n), "-h", "c2", "--json").stdout)
    assert out == {"job_no": n, "withdrawn": 1, "sent_down": 0, "kept": 0}
    assert stat(mgr, n)["c2"]["status"] == "DELETE"
    passes(tree, ["relay", "c1", "c2", "relay"])
    assert (runs(tree["c1"], n), runs(tree["c2"], n)) == (1, 0)
    assert db_of(relay).execute("SELECT count(*) FROM jobs WHERE dest='c2'").fetchone()[0] == 0  # never went down


@pytest.mark.parametrize(("point", "installed"), [("checked-in", False), ("stored", False), ("acked", False),
                                                  ("installing", True), ("script-started", True)])
def test_withdrawal_racing_an_install_ends_with_exactly_one(tree: Tree, point: str, installed: bool) -> None:
    """The client's pass dies at each moment (as kill -9 would); the withdrawal comes then; the next pass
    finishes: installed (COMPLETE) or withdrawn (DELETE), never both, and dcmstat says which."""
    mgr = tree.add("mgr")
    c1 = tree.add("c1", "mgr")
    c1.run("rdsft", "-a")
    pid = tree.package(script=RECORD)
    n = job(mgr, "-r", pid, "-h", "c1")
    c1.run("rdsft", "-a", check=False, env=c1.env(RDS_CRASH_AT=point))
    mgr.run("dcmjbrm", "-n", str(n))
    c1.run("rdsft", "-a")
    c1.run("rdsft", "-a")
    status = stat(mgr, n)["c1"]["status"]
    assert (runs(c1, n), status) == ((1, "COMPLETE") if installed else (0, "DELETE"))


def test_a_relay_cannot_forge_a_withdrawal(tree: Tree) -> None:
    """A control statement not signed by the managing server is refused below; the job installs."""
    from rds import control, session

    mgr, relay, pid = build(tree, ["c1"])
    n = job(mgr, "-r", pid, "-h", "c1")
    relay.run("rdsft", "-a")
    forged = control.Control(n, 99, "", {"c1": "DELETE"})
    forged = control.Control(n, 99, "", {"c1": "DELETE"}, relay.home().identity.sign(forged.body()))
    with session.opened(tree["c1"].home()) as db:
        key = manager.trust.signer_key(tree["c1"].home().settings, db)
        logged: list[str] = []
        assert control.believe(db, key, [forged.to_json()], logged.append) == []
        assert "does not verify" in logged[0]
    passes(tree, ["c1", "relay"])
    assert runs(tree["c1"], n) == 1 and stat(mgr, n)["c1"]["status"] == "COMPLETE"


def test_a_relay_cannot_lift_a_suspension_with_an_older_statement(tree: Tree) -> None:
    """The relay keeps the managing server's first statement (running) and replays it after the
    suspension: the client keeps the newer one, and nothing is handed out below it."""
    from rds import control, session

    mgr, relay, pid = build(tree, ["c1"])
    tree.add("c2", "c1")
    tree.check_in_upward(["c2", "c1", "relay"])
    n = job(mgr, "-r", pid, "-h", "c2")
    mgr.run("dcmsusp", "-n", str(n))
    mgr.run("dcmsusp", "-n", str(n), "-r")
    running = json.loads(db_of(mgr).execute("SELECT record FROM controls WHERE job_no=?", (n,)).fetchone()[0])
    passes(tree, ["relay", "c1"])  # c1 holds c2's job, running
    mgr.run("dcmsusp", "-n", str(n), "-m", "hold")
    passes(tree, ["relay", "c1"])
    assert [tuple(r) for r in db_of(tree["c1"]).execute("SELECT n, suspended FROM controls")] == [(3, "hold")]
    with session.opened(tree["c1"].home()) as db:
        key = manager.trust.signer_key(tree["c1"].home().settings, db)
        assert control.believe(db, key, [running], lambda _: None) == []  # older: changes nothing
    passes(tree, ["c2"])
    assert runs(tree["c2"], n) == 0 and stat(mgr, n)["c2"]["message"] == "taken by relay"


# -- 2. retry -------------------------------------------------------------------------------------------

def test_retry_makes_a_new_attempt_and_keeps_the_earlier_outcome(tree: Tree) -> None:
    mgr, relay, pid = build(tree, ["c1", "c2"])
    (tree["c2"].path / "failonce").touch()
    n = job(mgr, "-r", pid, "-h", "c1", "c2")
    passes(tree, ["relay", "c1", "c2", "relay"])
    assert stat(mgr, n)["c2"]["status"] == "ERROR"
    assert mgr.run("dcmstat", "-n", str(n), check=False).returncode == 30
    out = json.loads(mgr.run("dcmrtry", "-n", str(n), "--json").stdout)
    assert out == [{"job_no": n, "dest": "c2", "attempt": 2}]
    assert stat(mgr, n)["c2"]["status"] == "WAIT" and stat(mgr, n)["c2"]["attempt"] == 2
    passes(tree, ["relay", "c1", "c2", "relay"])
    rows = stat(mgr, n)
    assert (rows["c2"]["status"], rows["c2"]["attempt"], rows["c1"]["attempt"]) == ("COMPLETE", 2, 1)
    assert rows["c2"]["message"].startswith("attempt 2: ")
    assert (runs(tree["c1"], n), runs(tree["c2"], n)) == (1, 1)
    history = json.loads(mgr.run("dcmstat", "-n", str(n), "--history", "--json").stdout)
    assert [(h["dest"], h["attempt"], h["status"]) for h in history] == [("c2", 1, "ERROR")]
    assert json.loads(mgr.run("dcmrtry", "-n", str(n), "--json").stdout) == []  # nothing failed now


def test_a_late_result_of_an_earlier_attempt_does_not_settle_the_new_one(tree: Tree) -> None:
    from rds import results, session
    from rds.results import Result

    mgr, relay, pid = build(tree, ["c1"])
    (tree["c1"].path / "failonce").touch()
    n = job(mgr, "-r", pid, "-h", "c1")
    passes(tree, ["relay", "c1", "relay"])
    mgr.run("dcmrtry", "-n", str(n))
    with session.opened(mgr.home()) as db:
        assert not results.keep(db, Result(n, "c1", "COMPLETE", "late", "2026-01-01T00:00:00+00:00", "c1", "x", 1))
    assert stat(mgr, n)["c1"]["status"] == "WAIT"


# -- 3. suspend and resume -------------------------------------------------------------------------------

def test_suspension_stops_hand_outs_at_every_relay_within_one_check_in(tree: Tree) -> None:
    mgr = tree.add("mgr")
    for r in ("relay1", "relay2"):
        tree.add(r, "mgr")
    for c, r in (("c1", "relay1"), ("c2", "relay1"), ("c3", "relay2")):
        tree.add(c, r)
    tree.check_in_upward(["c1", "c2", "c3", "relay1", "relay2"])
    pid = tree.package(script=RECORD)
    n = job(mgr, "-r", pid, "-h", "c1", "c2", "c3")
    passes(tree, ["relay1", "relay2"])  # both relays hold the jobs
    tree["c1"].run("rdsft", "-a")  # handed out before the suspension: it finishes
    mgr.run("dcmsusp", "-n", str(n), "-m", "bad package")
    check_ins = {"relay1": 0, "relay2": 0}
    for r in check_ins:
        tree[r].run("rdsft", "-a")
        check_ins[r] += 1
    assert check_ins == {"relay1": 1, "relay2": 1}
    passes(tree, ["c2", "c3"])
    assert (runs(tree["c1"], n), runs(tree["c2"], n), runs(tree["c3"], n)) == (1, 0, 0)
    for r in ("relay1", "relay2"):
        assert db_of(tree[r]).execute("SELECT suspended FROM controls WHERE job_no=?", (n,)).fetchone()[0] \
            == "bad package"
    summary = json.loads(mgr.run("dcmstat", "-s", "-n", str(n), "--json", check=False).stdout)[0]
    assert summary["suspended"] == "bad package"
    mgr.run("dcmsusp", "-n", str(n), "-r")
    passes(tree, ["relay1", "relay2", "c2", "c3", "relay1", "relay2"])
    assert (runs(tree["c2"], n), runs(tree["c3"], n)) == (1, 1)
    assert {r["status"] for r in stat(mgr, n).values()} == {"COMPLETE"}


def test_suspension_at_the_managing_server_holds_jobs_not_handed_yet(tree: Tree) -> None:
    mgr, relay, pid = build(tree, ["c1"])
    n = job(mgr, "-r", pid, "-h", "c1")
    mgr.run("dcmsusp", "-n", str(n))
    passes(tree, ["relay", "c1"])
    assert runs(tree["c1"], n) == 0
    assert stat(mgr, n)["c1"]["message"] == "suspended: suspended by the administrator"
    assert db_of(relay).execute("SELECT count(*) FROM jobs").fetchone()[0] == 0


# -- 4. waves --------------------------------------------------------------------------------------------

def test_waves_release_in_turn_and_halt_when_failures_pass_the_limit(tree: Tree) -> None:
    clients = ["c1", "fail2", "c3", "c4", "c5"]
    mgr, relay, pid = build(tree, clients)
    n = job(mgr, "-r", pid, "--waves", "1,2,5", "--fail-limit", "0", "-h", *clients)
    waves = dict(db_of(mgr).execute("SELECT dest, wave FROM jobs WHERE job_no=?", (n,)).fetchall())
    assert waves == {"c1": 1, "fail2": 2, "c3": 3, "c4": 3, "c5": 3}
    assert "in wave 2 of 3" in stat(mgr, n)["fail2"]["message"]
    passes(tree, ["relay", *clients, "relay"])  # wave 1: c1 only
    assert [runs(tree[c], n) for c in clients] == [1, 0, 0, 0, 0]
    passes(tree, ["relay", *clients, "relay"])  # wave 2: fail2 fails: halted
    assert stat(mgr, n)["fail2"]["status"] == "ERROR"
    why = stat(mgr, n)["c3"]["message"]
    assert why.startswith("suspended: halted in wave 2 of 3: 1 failure(s)"), why
    log = (mgr.path / "log" / "rds.log").read_text()
    assert f"job {n}: halted in wave 2 of 3" in log
    for _ in range(2):
        passes(tree, ["relay", *clients, "relay"])
    assert [runs(tree[c], n) for c in clients] == [1, 0, 0, 0, 0]
    assert db_of(relay).execute("SELECT count(*) FROM jobs WHERE dest IN ('c3','c4','c5')").fetchone()[0] == 0
    mgr.run("dcmsusp", "-n", str(n), "-r")  # resumed: the failure is forgiven, wave 3 goes
    passes(tree, ["relay", *clients, "relay"])
    assert [runs(tree[c], n) for c in clients] == [1, 0, 1, 1, 1]


def test_a_halt_reaches_relays_holding_released_destinations_within_one_check_in(tree: Tree) -> None:
    clients = ["fail1", "c2", "c3"]
    mgr, relay, pid = build(tree, clients)
    n = job(mgr, "-r", pid, "--waves", "1,100%", "--fail-limit", "0", "-h", *clients)
    relay.run("rdsft", "-a")
    assert db_of(relay).execute("SELECT count(*) FROM jobs").fetchone()[0] == 1
    # wave 1 fails: the report that brings the failure halts it; the relay hears at its next check-in
    passes(tree, ["fail1", "relay"])
    assert stat(mgr, n)["c2"]["message"].startswith("suspended: halted")
    relay.run("rdsft", "-a")
    passes(tree, ["c2", "c3"])
    assert (runs(tree["c2"], n), runs(tree["c3"], n)) == (0, 0)


def test_a_wave_that_waits_too_long_says_so(tree: Tree) -> None:
    mgr, relay, pid = build(tree, ["c1", "c2"])
    n = job(mgr, "-r", pid, "--waves", "1,2", "--wave-wait", "1h", "-h", "c1", "c2")
    relay.run("rdsft", "-a")  # c1 is released, but never reports
    with sqlite3.connect(mgr.path / "GROUP" / "rds.db") as db:  # two hours pass at the managing server
        db.execute("UPDATE orders SET released_at = released_at - 7200 WHERE job_no=?", (n,))
    assert stat(mgr, n)["c2"]["message"] == ("in wave 2 of 2: released when the waves before it have reported; "
                                             "wave 1 has waited 2h00m for its results (longer than 1h00m)")
    relay.run("rdsft", "-a")  # a check-in lets the managing server log it, once
    relay.run("rdsft", "-a")
    log = (mgr.path / "log" / "rds.log").read_text()
    assert log.count(f"job {n}: wave 1 of 2 has waited") == 1


def test_wave_sizes() -> None:
    plan = manager.Plan(*manager.parse_waves("1,10,50,100%"))
    wave = manager.wave_of(plan, 200)
    sizes = [sum(1 for i in range(200) if wave(i) == w) for w in (1, 2, 3, 4)]
    assert sizes == [2, 18, 80, 100]
    counts = manager.wave_of(manager.Plan(*manager.parse_waves("5,50")), 60)
    assert [sum(1 for i in range(60) if counts(i) == w) for w in (1, 2, 3)] == [5, 45, 10]


# -- 5. hosts --------------------------------------------------------------------------------------------

def fingerprint_of(host: Host) -> str:
    key = host.home().identity.public
    return "SHA256:" + base64.b64encode(hashlib.sha256(base64.b64decode(key)).digest()).decode().rstrip("=")


def test_hosts_view_paths_versions_keys_and_not_seen(tree: Tree) -> None:
    mgr, relay, pid = build(tree, ["c1", "c2"])
    n = job(mgr, "-r", pid, "-h", "c1", "c2", "ghost")
    relay.run("rdsft", "-a")
    found = {h["host"]: h for h in json.loads(mgr.run("dcmhosts", "--json").stdout)}
    assert set(found) == {"relay", "c1", "c2"}
    assert (found["c1"]["via"], found["c1"]["path"], found["relay"]["path"]) == ("relay", "mgr/relay/c1", "mgr/relay")
    assert found["c1"]["version"] == "0.1.0" and found["c1"]["key"] == fingerprint_of(tree["c1"])
    assert found["c1"]["pending"] == 1 and found["c1"]["last_checkin"]
    with sqlite3.connect(mgr.path / "GROUP" / "rds.db") as db:  # c2 went quiet ten days ago
        db.execute("UPDATE routes SET checkin=? WHERE host='c2'", (time.time() - 10 * 86400,))
    quiet = [h["host"] for h in json.loads(mgr.run("dcmhosts", "--not-seen", "7", "--json").stdout)]
    assert quiet == ["c2"]
    out = json.loads(mgr.run("dcmhosts", "-d", "c2", "--json").stdout)
    assert out == {"host": "c2", "routes": 1, "jobs": 1}
    db = db_of(mgr)
    assert db.execute("SELECT count(*) FROM keys WHERE host='c2'").fetchone()[0] == 0
    assert db.execute("SELECT count(*) FROM jobs WHERE dest='c2'").fetchone()[0] == 0
    assert db.execute("SELECT count(*) FROM routes WHERE host='c2'").fetchone()[0] == 0
    assert n


def test_rdssys_u_asks_the_upper_system_to_forget_only_this_host(tree: Tree) -> None:
    mgr, relay, pid = build(tree, ["c1", "c2"])
    tree.add("c3", "c1")  # c1 is a relay too
    tree.check_in_upward(["c3", "c1", "relay"])
    n = job(mgr, "-r", pid, "-h", "c1", "c3")
    relay.run("rdsft", "-a")
    tree["c1"].run("rdssys", "-u")
    rdb = db_of(relay)
    assert rdb.execute("SELECT count(*) FROM routes WHERE host='c1'").fetchone()[0] == 0
    assert rdb.execute("SELECT count(*) FROM routes WHERE host='c3'").fetchone()[0] == 1  # only the relay c1
    assert rdb.execute("SELECT count(*) FROM keys WHERE host='c1'").fetchone()[0] == 0
    assert rdb.execute("SELECT count(*) FROM jobs WHERE dest='c1'").fetchone()[0] == 0
    relay.run("rdsft", "-a")
    assert "c1" not in {h["host"] for h in json.loads(mgr.run("dcmhosts", "--json").stdout) if h["via"]}
    assert n
    assert mgr.run("rdssys", "-u", check=False).returncode == 1


# -- 6. ID groups ----------------------------------------------------------------------------------------

def test_a_group_job_reaches_members_and_later_joiners_and_not_those_who_left(tree: Tree) -> None:
    mgr, relay, pid = build(tree, ["c1", "c2", "c3", "c4"])
    mgr.run("rdsiddefine", "-s", "WEB", "-h", "c1", "c3")
    n = job(mgr, "-r", pid, "-g", "WEB")
    mgr.run("rdsiddefine", "-dm", "WEB", "-h", "c1")  # leaves before it was handed out
    assert stat(mgr, n)["c1"]["status"] == "ID-INVALID"
    relay.run("rdsft", "-a")
    mgr.run("rdsiddefine", "-s", "WEB", "-h", "c2", "c4")  # join later
    mgr.run("rdsiddefine", "-dm", "WEB", "-h", "c4")  # c4 leaves while the relay holds... not yet: WAIT here
    passes(tree, ["relay", "c1", "c2", "c3", "c4", "relay"])
    assert [runs(tree[c], n) for c in ("c1", "c2", "c3", "c4")] == [0, 1, 1, 0]
    assert {d: r["status"] for d, r in stat(mgr, n).items()} == \
        {"c1": "ID-INVALID", "c2": "COMPLETE", "c3": "COMPLETE", "c4": "ID-INVALID"}
    groups = json.loads(mgr.run("rdsiddefine", "-ll", "--json").stdout)
    assert groups == [{"group": "WEB", "members": ["c2", "c3"]}]


def test_a_host_that_leaves_while_a_relay_holds_its_group_job_is_dropped_there(tree: Tree) -> None:
    mgr, relay, pid = build(tree, ["c1", "c2"])
    mgr.run("rdsiddefine", "-s", "DB", "-h", "c1", "c2")
    n = job(mgr, "-r", pid, "-g", "DB")
    relay.run("rdsft", "-a")
    mgr.run("rdsiddefine", "-dm", "DB", "-h", "c2")
    passes(tree, ["relay", "c1", "c2", "relay"])
    assert (runs(tree["c1"], n), runs(tree["c2"], n)) == (1, 0)
    row = db_of(mgr).execute("SELECT status, signer FROM results WHERE job_no=? AND dest='c2'", (n,)).fetchone()
    assert tuple(row) == ("ID-INVALID", "relay")
    mgr.run("rdsiddefine", "-s", "DB", "-h", "c2")  # joins again: a new attempt
    passes(tree, ["relay", "c2", "relay"])
    assert runs(tree["c2"], n) == 1 and stat(mgr, n)["c2"]["attempt"] == 2


# -- 7. not before ---------------------------------------------------------------------------------------

def test_not_before_hands_out_ahead_and_installs_no_earlier(tree: Tree) -> None:
    mgr, relay, pid = build(tree, ["c1"])
    at = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=4)
    n = job(mgr, "-r", pid, "--not-before", at.isoformat(timespec="seconds"), "-h", "c1")
    passes(tree, ["relay", "c1"])
    started = time.time()
    payload = next((tree["c1"].path / "RDS").rglob("*.tar*"), None) or \
        next(p for p in (tree["c1"].path / "RDS").rglob("*") if p.is_file() and p.stat().st_size > 0)
    assert hashlib.sha256(payload.read_bytes()).hexdigest()  # the package is in place ahead
    assert runs(tree["c1"], n) == 0
    assert "installs no earlier than" in stat(mgr, n)["c1"]["message"]

    def installed() -> bool:
        tree["c1"].run("rdsft", "-a")
        return runs(tree["c1"], n) == 1
    wait_for(installed, timeout=30)
    installed_at = Path(tree["c1"].installed("/opt/installs")).stat().st_mtime
    assert installed_at >= at.timestamp() - 1 and time.time() >= started
    relay.run("rdsft", "-a")
    assert stat(mgr, n)["c1"]["status"] == "COMPLETE"


def test_bad_not_before_and_waves_are_refused(tree: Tree) -> None:
    mgr = tree.add("mgr")
    Home.open(mgr.path)
    for args in (["--not-before", "tomorrow"], ["--waves", "10,5"], ["--waves", "1,200%"],
                 ["--waves", "1,2", "--fail-limit", "x"], ["--fail-limit", "3"]):
        proc = mgr.run("dcmjexe", "-r", "C.AB.APP.0100", "-h", "c1", *args, check=False)
        assert proc.returncode in (1, 3) and len(proc.stderr.strip().splitlines()) == 1, (args, proc.stderr)


def test_a_relay_that_moves_tells_its_new_upper_system_of_the_hosts_below_it(tree: Tree) -> None:
    """What a relay told its old upper system of the hosts below it (``told``) is told the new one too."""
    tree.add("mgr")
    for name, upper in (("ra", "mgr"), ("rb", "mgr"), ("r2", "ra"), ("c1", "r2")):
        tree.add(name, upper)
    tree.check_in_upward(["c1", "r2", "ra", "rb"])
    r2 = tree["r2"]
    settings = r2.path / "rdsprm" / "RDSSETFL"
    settings.write_text(settings.read_text().replace(str(tree["ra"].path), str(tree["rb"].path)))
    r2.run("rdsft", "-a")  # its first check-in with rb
    with sqlite3.connect(tree["rb"].path / "GROUP" / "rds.db") as db:
        row = db.execute("SELECT version, checkin FROM routes WHERE host='c1'").fetchone()
    assert row is not None and row[0] == "0.1.0" and row[1]  # c1's version and last check-in, as c1 said them
