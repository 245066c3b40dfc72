"""A result that reaches the managing server after its host moved to another relay (issue 16's notes).

A destination's signed outcome proves itself whoever carries it: a relay it left can delay it but not
forge it.  What a relay says on its own authority (EXEC-ERROR, LINE-DOWN) is believed only for the hosts
proven below it when it says it.  The tree is mgr > r1, r2; c1 starts under r1 and moves under r2.
What happened is read outside the code under test: the install script's own record, the managing
server's database with sqlite3 and its rds.log.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

import pytest
from conftest import Host, Tree
from trustkit import Signer, ask

from rds import codes, database, manager, results
from rds.home import Home
from rds.packages import PackageId

SCRIPT = "#!/bin/sh\necho \"$RDS_JOB\" >> \"$RDS_INSTALL_DIR/../installs\"\n" \
         "[ -e \"$RDS_HOME/fail\" ] && exit 3\nexit 0\n"


def runs(host: Host, job: int) -> int:
    f = host.installed("/opt/installs")
    return f.read_text().split().count(str(job)) if f.exists() else 0


def stat(mgr: Host, job: int) -> dict[str, Any]:
    rows = json.loads(mgr.run("dcmstat", "-n", str(job), "--json", check=False).stdout)
    return {r["dest"]: r for r in rows}["c1"]


def kept(mgr: Host, job: int) -> list[tuple[str, str]]:
    with sqlite3.connect(mgr.path / "GROUP" / "rds.db") as db:
        return db.execute("SELECT status, signer FROM results WHERE job_no=? AND dest='c1'", (job,)).fetchall()


def logged(mgr: Host, job: int) -> int:
    """How many times the managing server took a result of ``job`` for c1 (one log line each)."""
    text = (mgr.path / "log" / "rds.log").read_text()
    return sum(f"result of job {job} for c1 from " in line for line in text.splitlines())


def move(tree: Tree, name: str, to: str) -> None:
    settings = tree[name].path / "rdsprm" / "RDSSETFL"
    upper = tree[name].upper
    assert upper is not None
    settings.write_text(settings.read_text().replace(f"ManagingHost\t{upper.path}\n",
                                                     f"ManagingHost\t{tree[to].path}\n"))
    tree[name].upper = tree[to]


def two_relays_one_job(tree: Tree) -> int:
    """mgr > r1, r2; c1 below r1; a job for c1 (its number)."""
    tree.add("mgr")
    tree.add("r1", "mgr")
    tree.add("r2", "mgr")
    tree.add("c1", "r1")
    tree.check_in_upward(["c1", "r1", "r2"])
    pid = tree.package(script=SCRIPT)
    return int(tree["mgr"].run("dcmjexe", "-r", pid, "-h", "c1").stdout.strip())


@pytest.fixture
def moved(tree: Tree) -> tuple[Tree, int]:
    """c1 installed a job from r1, r1 still holds its result, and c1 moved under r2 since."""
    return tree, two_relays_one_job(tree)


def install_then_move(tree: Tree) -> None:
    tree["r1"].run("rdsft", "-a")  # r1 takes the job
    tree["c1"].run("rdsft", "-a", check=False)  # c1 installs, its result goes to r1 (exit 4 when it failed)
    move(tree, "c1", "r2")
    tree.check_in_upward(["c1", "r2"])  # the managing server now reaches c1 through r2


@pytest.mark.parametrize("fails", [False, True])
def test_a_result_held_by_the_relay_a_host_left_settles_its_job_once(moved: tuple[Tree, int], fails: bool) -> None:
    tree, n = moved
    mgr = tree["mgr"]
    if fails:
        (tree["c1"].path / "fail").touch()
    install_then_move(tree)
    assert stat(mgr, n)["status"] == "EXEC"
    with sqlite3.connect(mgr.path / "GROUP" / "rds.db") as db:
        assert db.execute("SELECT via FROM routes WHERE host='c1'").fetchone() == ("r2",)
    tree["r1"].run("rdsft", "-a")  # r1 sends c1's result up late
    want = codes.ERROR if fails else codes.COMPLETE
    assert stat(mgr, n)["status"] == want
    assert kept(mgr, n) == [(want, "c1")]
    tree.check_in_upward(["c1", "r2", "r1", "c1", "r2"])  # nothing more comes of it
    assert (runs(tree["c1"], n), logged(mgr, n), stat(mgr, n)["status"]) == (1, 1, want)


def test_a_result_the_host_still_holds_goes_up_through_its_new_relay_once(moved: tuple[Tree, int]) -> None:
    """c1 installed but could not send its result before it moved: r2, which never held the job, passes
    c1's own signed outcome up; r1 later sending the same outcome does not double it."""
    tree, n = moved
    mgr, c1 = tree["mgr"], tree["c1"]
    tree["r1"].run("rdsft", "-a")
    c1.run("rdsft", "-a")
    with sqlite3.connect(c1.path / "GROUP" / "rds.db") as db:  # as if its report to r1 had not gone
        db.execute("UPDATE results SET sent=NULL WHERE job_no=?", (n,))
    move(tree, "c1", "r2")
    tree.check_in_upward(["c1", "r2"])
    assert stat(mgr, n)["status"] == codes.COMPLETE
    tree.check_in_upward(["r1", "c1", "r2"])
    assert (runs(c1, n), logged(mgr, n), kept(mgr, n)) == (1, 1, [(codes.COMPLETE, "c1")])


# -- what the relay a host left may no longer say -------------------------------------------------------

PID = PackageId.make("AB", "APP", "0100")


def report(home: Home, lower: str, items: list[dict[str, Any]]) -> dict[str, Any]:
    return ask(home, lower, "report", results=items)


def checkin(home: Home, lower: str, statements: list[dict[str, Any]], below: tuple[str, ...] = ()) -> None:
    assert ask(home, lower, "checkin", statements=statements, below=list(below))["ok"]


@pytest.fixture
def left(tmp_path: Any) -> tuple[Home, Signer, Signer, Signer, int]:
    """A managing server with a job for c1, which was below r1 and has moved below r2 since."""
    from testkit import managing_server

    mgr = managing_server(tmp_path)
    r1, r2, c1 = Signer("r1"), Signer("r2"), Signer("c1")
    checkin(mgr, "r1", [r1.statement("mgr"), c1.statement("r1", n=1)])
    db = database.connect(mgr.db_path)
    try:
        n, _ = manager.create_job(db, mgr, PID, ["c1"])
    finally:
        db.close()
    checkin(mgr, "r2", [r2.statement("mgr"), c1.statement("r2", n=2)])
    return mgr, r1, r2, c1, n


def status(home: Home, n: int) -> str | None:
    db = database.connect(home.db_path)
    try:
        r = results.get(db, n, "c1")
        return None if r is None else r.status
    finally:
        db.close()


def test_the_relay_a_host_left_cannot_forge_its_outcome_or_speak_for_it(
        left: tuple[Home, Signer, Signer, Signer, int]) -> None:
    mgr, r1, _, c1, n = left
    forged = r1.result(n, "c1", by="c1")  # r1's key, c1's name
    own = r1.result(n, "c1")  # an outcome on r1's own authority
    down = r1.result(n, "c1", status=codes.LINE_DOWN, message="c1 is gone")  # no longer r1's to say
    tampered = {**c1.result(n, "c1", status=codes.ERROR), "status": codes.COMPLETE}
    assert report(mgr, "r1", [forged, own, down, tampered]) == {"ok": True, "accepted": 0, "refused": 4}
    assert status(mgr, n) is None
    assert report(mgr, "r1", [c1.result(n, "c1", status=codes.ERROR, message="failed")])["accepted"] == 1
    assert status(mgr, n) == codes.ERROR
    text = (mgr.log_dir / "rds.log").read_text()
    assert text.count("r1 reported a result for c1, which is not below it") == 2  # own and down
    assert text.count("that does not verify with c1's key") == 2  # forged and tampered


def test_the_relay_a_host_left_cannot_replay_an_earlier_attempt_s_outcome(
        left: tuple[Home, Signer, Signer, Signer, int]) -> None:
    mgr, r1, r2, c1, n = left
    first = c1.result(n, "c1", status=codes.ERROR, message="failed")
    assert report(mgr, "r2", [first])["accepted"] == 1
    db = database.connect(mgr.db_path)
    try:
        manager.retry(db, mgr, n)
    finally:
        db.close()
    assert status(mgr, n) is None  # attempt 2 waits
    replayed = c1.result(n, "c1", status=codes.COMPLETE)  # attempt 1's word (a COMPLETE c1 never signed for 2)
    assert report(mgr, "r1", [first, replayed])["accepted"] == 0
    assert status(mgr, n) is None


def test_a_relay_passes_up_a_bounded_number_of_outcomes_of_jobs_it_never_held(tree: Tree) -> None:
    from rds import trust

    tree.add("mgr")
    tree.add("r2", "mgr")
    tree.check_in_upward(["r2"])
    r2 = tree["r2"].home()
    c1, c3 = Signer("c1"), Signer("c3")
    checkin(r2, "c1", [c1.statement("r2")])
    checkin(r2, "c3", [c3.statement("r2")])
    flood = [c1.result(n, "c1") for n in range(1, trust.FOREIGN_MAX + 6)]
    over = [[n, "c1"] for n in range(trust.FOREIGN_MAX + 1, trust.FOREIGN_MAX + 6)]  # c1 sends them again later
    assert report(r2, "c1", flood) == {"ok": True, "accepted": trust.FOREIGN_MAX, "refused": 5, "later": over}
    assert report(r2, "c1", [c3.result(1, "c3")]) == {"ok": True, "accepted": 0, "refused": 1}  # c3 is not below c1
    checkin(r2, "c1", [c1.statement("r2", n=2), c3.statement("c1", n=2)], ("c3",))  # c3 now below c1
    with sqlite3.connect(tree["r2"].path / "GROUP" / "rds.db") as db:
        assert db.execute("SELECT via FROM routes WHERE host='c3'").fetchone() == ("c1",)
    # c3's own word on a job not held here now passes through c1, within the same bound per lower system
    assert report(r2, "c1", [c3.result(1, "c3")])["later"] == [[1, "c3"]]
    with sqlite3.connect(tree["r2"].path / "GROUP" / "rds.db") as db:
        assert db.execute("SELECT COUNT(*) FROM results WHERE dest='c1'").fetchone() == (trust.FOREIGN_MAX,)
    tree["r2"].run("rdsft", "-a")  # the managing server refuses them (no such jobs); r2 keeps none of them
    with sqlite3.connect(tree["r2"].path / "GROUP" / "rds.db") as db:
        assert db.execute("SELECT COUNT(*) FROM results").fetchone() == (0,)
    assert "which does not exist here" in (tree["mgr"].path / "log" / "rds.log").read_text()
