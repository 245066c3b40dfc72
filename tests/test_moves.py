"""Nothing lost when a relay moves (issue: moves).

A relay r1 holds the results of its client c1 (not yet sent up) when r1 itself moves: from upper u1 to
upper u2 (both below the managing server), or from u1 to the managing server directly.  Its new upper
never held c1's job; it takes c1's own signed outcome from r1 (c1 is proven below r1) to pass up, and
each result reaches the managing server exactly once.  An upper that refuses a result for a reason that
may pass (a bound on what waits to go up, a route or a job it does not know yet) says so, and the
lower system keeps that result to send again; only one refused for good is dropped, and logged.
What happened is read outside the code under test: the install script's own record, the databases
with sqlite3 and the rds.log files.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
from conftest import Tree
from test_moved_result import SCRIPT, kept, logged, move, runs, stat, two_relays_one_job
from trustkit import Signer

from rds import codes, trust
from rds.home import Home


def unsent(home_path: Any, dest: str = "c1") -> int:
    with sqlite3.connect(home_path / "GROUP" / "rds.db") as db:
        return db.execute("SELECT COUNT(*) FROM results WHERE dest=? AND sent IS NULL", (dest,)).fetchone()[0]


def deep(tree: Tree, fails: bool) -> int:
    """mgr > u1, u2; u1 > r1 > c1; a job for c1 that c1 installed (or failed to), its result held by r1."""
    tree.add("mgr")
    tree.add("u1", "mgr")
    tree.add("u2", "mgr")
    tree.add("r1", "u1")
    tree.add("c1", "r1")
    tree.check_in_upward(["c1", "r1", "u1", "u2"])
    pid = tree.package(script=SCRIPT)
    n = int(tree["mgr"].run("dcmjexe", "-r", pid, "-h", "c1").stdout.strip())
    tree.check_in_upward(["u1", "r1"])  # the job goes down to r1
    if fails:
        (tree["c1"].path / "fail").touch()
    tree["c1"].run("rdsft", "-a", check=False)  # c1 installs; its result waits at r1 (exit 4 when it failed)
    assert runs(tree["c1"], n) == 1 and unsent(tree["r1"].path) == 1
    return n


@pytest.mark.parametrize("to", ["u2", "mgr"])
@pytest.mark.parametrize("fails", [False, True])
def test_a_result_held_by_a_relay_that_moves_reaches_the_managing_server_once(
        tree: Tree, to: str, fails: bool) -> None:
    n = deep(tree, fails)
    mgr = tree["mgr"]
    want = codes.ERROR if fails else codes.COMPLETE
    assert stat(mgr, n)["status"] == "EXEC"
    move(tree, "r1", to)
    tree["r1"].run("rdsft", "-a")  # checks in with its new upper, then sends c1's result there
    if to == "u2":
        tree["u2"].run("rdsft", "-a")
    assert stat(mgr, n)["status"] == want
    assert kept(mgr, n) == [(want, "c1")]
    assert unsent(tree["r1"].path) == 0
    tree.check_in_upward(["c1", "r1", "u1", "u2", "r1", "u2"])  # nothing more comes of it
    assert (runs(tree["c1"], n), logged(mgr, n), stat(mgr, n)["status"]) == (1, 1, want)
    # u1, told by r1's own signed statement that r1 moved away, holds neither its route nor c1's, nor the job
    assert job_state(tree["u1"].path, n) is None
    with sqlite3.connect(tree["u1"].path / "GROUP" / "rds.db") as db:
        assert db.execute("SELECT host FROM routes").fetchall() == []


def log_of(tree: Tree, name: str) -> str:
    return (tree[name].path / "log" / "rds.log").read_text()


def test_a_result_refused_for_now_stays_below_and_goes_again(tree: Tree, monkeypatch: pytest.MonkeyPatch) -> None:
    """u2 refuses c1's outcome for now (its bound on outcomes of jobs it never held is full): r1 keeps it,
    and sends it again with its next pass, when u2 takes it."""
    from rds import poller

    n = deep(tree, False)
    move(tree, "r1", "u2")
    monkeypatch.setattr(trust, "FOREIGN_MAX", 0)
    report = poller.run_once(Home.open(tree["r1"].path))  # in this process: u2 is served here (ManagingHost PATH)
    assert report.sent == 0 and unsent(tree["r1"].path) == 1
    assert f"result refused for now: r1 reported a result for job {n}:c1, which is not held here" in log_of(tree, "u2")
    assert "refused 1 result(s) for now" in log_of(tree, "r1")
    monkeypatch.undo()
    tree.check_in_upward(["r1", "u2"])
    assert stat(tree["mgr"], n)["status"] == codes.COMPLETE
    assert unsent(tree["r1"].path) == 0
    tree.check_in_upward(["r1", "u2"])
    assert (runs(tree["c1"], n), logged(tree["mgr"], n)) == (1, 1)


def test_results_refused_for_now_are_said_when_their_number_changes_else_hourly(tmp_path: Path) -> None:
    from rds import poller

    (tmp_path / "rdsprm").mkdir()
    (tmp_path / "rdsprm" / "RDSSETFL").write_text("HostName\tr1\n")
    home = Home.open(tmp_path)
    said: list[str] = []

    class Log:
        def info(self, msg: str) -> None:
            said.append(msg)

    t = 1_000_000.0
    for n, at, says in [(2, 0, True), (2, 60, False), (2, 3000, False), (3, 3100, True), (3, 3200, False),
                        (3, 3100 + poller.LATER_SAY, True), (0, 8000, False), (3, 8100, True)]:
        before = len(said)
        poller.said_later(home, Log(), "u2", n, t + at)
        assert (len(said) > before) == says, (n, at)
        if says:
            assert said[-1].startswith(f"u2 refused {n} result(s) for now")
    assert (home.run / "refused-later").read_text().split()[0] == "3"
    poller.said_later(home, Log(), "u2", 0, t + 9000)  # all taken: forgotten, the next refusal is said at once
    assert not (home.run / "refused-later").exists()


def test_a_result_refused_for_good_is_dropped_and_said(tree: Tree) -> None:
    """r1 changes c1's ERROR into COMPLETE before it goes up through its new upper: u2 refuses it for good
    (it does not verify with c1's key), r1 drops it and both logs say so; the job is not settled by it."""
    n = deep(tree, True)
    with sqlite3.connect(tree["r1"].path / "GROUP" / "rds.db") as db:
        assert db.execute("UPDATE results SET status='COMPLETE' WHERE dest='c1'").rowcount == 1
    move(tree, "r1", "u2")
    tree.check_in_upward(["r1", "u2"])
    assert f"r1 reported a result for job {n}:c1 that does not verify with c1's key" in log_of(tree, "u2")
    assert "u2 refused 1 result(s) for good" in log_of(tree, "r1")
    assert unsent(tree["r1"].path) == 0  # not sent again
    assert stat(tree["mgr"], n)["status"] == "EXEC"


def test_a_late_attempt_s_outcome_is_refused_for_good(tree: Tree) -> None:
    from test_moved_result import checkin, report
    from testkit import managing_server

    from rds import database, manager
    from rds.packages import PackageId

    mgr = managing_server(tree.root)
    r1, c1 = Signer("r1"), Signer("c1")
    checkin(mgr, "r1", [r1.statement("mgr"), c1.statement("r1", n=1)])
    db = database.connect(mgr.db_path)
    try:
        n, _ = manager.create_job(db, mgr, PackageId.make("AB", "APP", "0100"), ["c1"])
        first = c1.result(n, "c1", status=codes.ERROR, message="failed")
        assert report(mgr, "r1", [first])["accepted"] == 1
        manager.retry(db, mgr, n)
    finally:
        db.close()
    assert report(mgr, "r1", [first]) == {"ok": True, "accepted": 0, "refused": 1}  # no "later": for good
    assert f"r1 reported a result of attempt 1 of job {n}:c1, which is at attempt 2: late" in \
        (mgr.log_dir / "rds.log").read_text()


# -- a job follows its host ------------------------------------------------------------------------------


def job_state(home_path: Any, n: int, dest: str = "c1") -> tuple[str, str | None] | None:
    with sqlite3.connect(home_path / "GROUP" / "rds.db") as db:
        return db.execute("SELECT state, handed_to FROM jobs WHERE job_no=? AND dest=?", (n, dest)).fetchone()


@pytest.fixture
def handed(tree: Tree) -> int:
    """mgr > r1, r2; c1 below r1; a job for c1 that r1 took, c1 not yet."""
    n = two_relays_one_job(tree)
    tree["r1"].run("rdsft", "-a")
    assert job_state(tree["mgr"].path, n) == ("HANDED", "r1") and job_state(tree["r1"].path, n) == ("WAIT", None)
    return n


def test_a_job_follows_its_host_that_moved_before_picking_it_up(tree: Tree, handed: int) -> None:
    n = handed
    mgr = tree["mgr"]
    move(tree, "c1", "r2")
    tree.check_in_upward(["c1", "r2"])  # the managing server sees c1's new route: the job waits for r2 now
    assert job_state(mgr.path, n) == ("HANDED", "r2")
    assert "its 1 job(s) handed to r1 go through r2 now" in log_of(tree, "mgr")
    tree["r1"].run("rdsft", "-a")  # r1 is told, by c1's own signed statement, that c1 moved away
    assert job_state(tree["r1"].path, n) is None
    with sqlite3.connect(tree["r1"].path / "GROUP" / "rds.db") as db:
        assert db.execute("SELECT via FROM routes WHERE host='c1'").fetchone() is None
    assert "c1 moved away from below r1" in log_of(tree, "r1")
    tree.check_in_upward(["c1", "r2"])  # c1 takes it from r2, installs, its result goes up
    assert stat(mgr, n)["status"] == codes.COMPLETE
    assert (runs(tree["c1"], n), logged(mgr, n)) == (1, 1)
    move(tree, "c1", "r1")  # and back: nothing more comes of the job
    tree.check_in_upward(["c1", "r1", "c1", "r1", "r2"])
    assert (runs(tree["c1"], n), logged(mgr, n), stat(mgr, n)["status"]) == (1, 1, codes.COMPLETE)
    with sqlite3.connect(mgr.path / "GROUP" / "rds.db") as db:
        assert db.execute("SELECT via FROM routes WHERE host='c1'").fetchone() == ("r1",)


def test_a_host_that_comes_back_runs_a_job_it_ran_not_again(tree: Tree, handed: int) -> None:
    """c1 installs through r2 while r1, not told yet, still holds the job; c1 moves back under r1, which
    hands the job to it: c1 has run it (its own record: job and attempt) and runs it not again, but sends
    its result again, which settles r1's copy."""
    n = handed
    mgr = tree["mgr"]
    move(tree, "c1", "r2")
    tree.check_in_upward(["c1", "r2", "c1", "r2"])
    assert stat(mgr, n)["status"] == codes.COMPLETE
    move(tree, "c1", "r1")
    tree.check_in_upward(["c1", "r1", "c1", "r1", "r2"])
    assert job_state(tree["r1"].path, n) == ("DONE", "c1")
    assert (runs(tree["c1"], n), logged(mgr, n), stat(mgr, n)["status"]) == (1, 1, codes.COMPLETE)


def test_a_job_installed_before_the_move_is_not_installed_again_through_the_new_route(tree: Tree, handed: int) -> None:
    """c1 installed from r1, whose copy of the result is late: the managing server hands the job to r2 on
    seeing c1's new route; c1 runs it not again, sends its result again, and r2's copy settles too."""
    n = handed
    mgr = tree["mgr"]
    tree["c1"].run("rdsft", "-a")
    move(tree, "c1", "r2")
    tree.check_in_upward(["c1", "r2", "c1", "r2"])
    assert stat(mgr, n)["status"] == codes.COMPLETE
    assert job_state(tree["r2"].path, n) == ("DONE", "c1")
    tree.check_in_upward(["r1", "c1", "r2"])
    assert (runs(tree["c1"], n), logged(mgr, n), kept(mgr, n)) == (1, 1, [(codes.COMPLETE, "c1")])


def test_an_upper_system_cannot_make_a_relay_drop_a_host_that_did_not_move(tree: Tree, handed: int) -> None:
    """What the upper system says moved is believed only as the host signed it, newer than what is held."""
    from rds import database

    r1 = Home.open(tree["r1"].path)
    db = database.connect(r1.db_path)
    try:
        held = db.execute("SELECT host, upper, n, key, sig FROM statements WHERE host='c1'").fetchone()
        fake = Signer("c1").statement("r2", n=held[2] + 1)  # another key, c1's name
        replayed = dict(zip(("host", "upper", "n", "key", "sig"), held, strict=True))  # c1's own, not newer
        junk = {"host": "c1", "upper": "r2"}
        assert trust.left(db, "r1", [fake, replayed, junk]) == []
        assert tuple(db.execute("SELECT via FROM routes WHERE host='c1'").fetchone()) == ("c1",)
    finally:
        db.close()
    assert job_state(tree["r1"].path, handed) == ("WAIT", None)
