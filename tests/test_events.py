"""What happens to jobs is announced by the module that makes it happen, heard after the commit
(rds/events.py, rds/database.py), and recorded by the distribution status's listener (rds/delivery.py);
the one way into a home (rds/session.py, rds.cli.with_home) attaches it and closes what it opens."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from rds import cleanup, codes, database, delivery, events, jobs, results, session
from rds.cli import with_home
from rds.database import Database, Transaction
from rds.home import PASS_LOCK, Home
from rds.jobs import Job
from rds.packages import Manifest, PackageId
from rds.results import Result
from rds.settings import load_settings

PID = PackageId.make("AB", "APP", "0100")
MANIFEST = Manifest(PID, 3, hashlib.sha256(b"abc").hexdigest(), "/opt/app")


def job(no: int, dest: str) -> Job:
    return Job(no, dest, jobs.INSTALL, PID, "2026-12-01T10:00:00")


@pytest.fixture
def heard(tmp_path: Path) -> tuple[Database, list[Any]]:
    db = database.connect(tmp_path / "rds.db")
    got: list[Any] = []
    db.listen(lambda _db, evs: got.extend(evs))
    return db, got


def test_listeners_hear_after_the_commit_and_never_after_a_rollback(heard: tuple[Database, list[Any]]) -> None:
    db, got = heard
    with Transaction(db):
        db.announce("inside")
        assert got == []  # not before the commit
    assert got == ["inside"]
    with pytest.raises(RuntimeError), Transaction(db):
        db.announce("rolled back")
        raise RuntimeError("abort")
    assert got == ["inside"]
    db.announce("outside a transaction")
    assert got == ["inside", "outside a transaction"]


def test_the_events_of_one_commit_are_heard_together(tmp_path: Path) -> None:
    db = database.connect(tmp_path / "rds.db")
    calls: list[list[Any]] = []
    db.listen(lambda _db, evs: calls.append(list(evs)))
    with Transaction(db):
        db.announce(1)
        db.announce(2)
    assert calls == [[1, 2]]


def test_a_plain_connection_has_no_listeners_and_announcing_costs_nothing(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "plain.db")
    database.announce(db, "nobody hears this")  # no error: only rds databases carry listeners


def test_jobs_announce_what_they_change(heard: tuple[Database, list[Any]]) -> None:
    db, got = heard
    jobs.store(db, [job(1, "c1"), job(2, "c2")], {str(PID): MANIFEST})
    assert got == [events.Received([job(1, "c1"), job(2, "c2")])]
    jobs.record_checkin(db, "r1", ["c1"], own_host="mgr")  # c1 is below r1, c2 is not
    got.clear()
    jobs.hand_over(db, "r1", [(1, "c1"), (2, "c2")])
    assert got == [events.Handed("r1", [job(1, "c1")])]  # r1 may claim c2's job: it does not hold it
    got.clear()
    own = job(3, "mgr")
    jobs.store(db, [own], {str(PID): MANIFEST})
    got.clear()
    jobs.begin_install(db, own)
    assert got == [events.Installing(own)]


def test_results_announce_what_they_keep_and_only_once(heard: tuple[Database, list[Any]]) -> None:
    db, got = heard
    jobs.store(db, [job(1, "c1")], {str(PID): MANIFEST})
    got.clear()
    r = Result(1, "c1", codes.COMPLETE, "installed", "2026-12-01T10:00:01")
    assert results.keep(db, r)
    assert got == [events.Ended([r])]
    assert jobs.state_of(db, job(1, "c1")) == jobs.DONE  # in the same commit
    assert not results.keep(db, r)  # already known: nothing new to hear
    assert got == [events.Ended([r])]


def test_an_invalidated_job_is_heard_as_ended_once_the_cleanup_commits(heard: tuple[Database, list[Any]],
                                                                       tmp_path: Path) -> None:
    db, got = heard
    jobs.store(db, [job(1, "c1")], {str(PID): MANIFEST})
    got.clear()
    settings = load_settings(tmp_path)  # IDCommandDeleteTiming RESOURCE_DELETE: the job goes with it
    assert cleanup.invalidate(db, settings, {str(PID): "gone"}) == (1, 1)
    assert [type(e) for e in got] == [events.Ended]
    # c1 is below this host: a relay signs only EXEC-ERROR about it (rds.trust)
    assert got[0].results[0].status == codes.EXEC_ERROR and jobs.state_of(db, job(1, "c1")) is None


def test_the_listener_turns_each_event_into_the_status_rdsdlv_documents(tmp_path: Path) -> None:
    home = Home.open(tmp_path / "relay")
    db = database.connect(home.db_path)
    jobs.store(db, [job(1, "c1"), job(2, "c2")], {str(PID): MANIFEST})
    f = delivery.File(tmp_path / "delivery.db", 100)
    listener = delivery.Listener(home)
    ended = Result(2, "c2", codes.EXEC_ERROR, "could not start", "2026-12-01T10:00:01")
    cases: list[tuple[Any, list[tuple[str, str]]]] = [
        (events.Received([job(1, "c1")]), [("c1", "KEEPING")]),
        (events.Kept([job(1, "c1")], [job(2, "c2")]), [("c2", "KEEP_ERROR"), ("c1", "KEEP")]),
        (events.Started("r1", [job(1, "c1")], None), [("c1", "CLT_WAIT")]),
        (events.Started("r1", [job(1, "c1")], True), [("c1", "CLT_START")]),
        (events.Started("r1", [job(1, "c1")], False), [("c1", "CLT_START_ERROR")]),
        (events.Handed("r1", [job(1, "c1")]), [("c1", "INS_WAIT")]),
        (events.Reading("c1", [job(1, "c1")]), [("c1", "GEN_START")]),
        (events.Installing(job(1, "c1")), [("c1", "GEN_START")]),
        (events.Ended([ended]), [("c2", "CLT_START_ERROR")]),
    ]
    try:
        for event, want in cases:
            assert [(e.dest, e.status) for e in listener.entries(f, db, [event])] == want, event
        f.put(listener.entries(f, db, [events.Received([job(1, "c1")])]))
        f.put(listener.entries(f, db, [events.Handed("r1", [job(1, "c1")])]))
        # a pass that finds the package still here never sets a later status back to KEEP
        assert listener.entries(f, db, [events.Kept([job(1, "c1")], [])]) == []
    finally:
        f.close()
        db.close()


def test_the_session_attaches_the_listener_and_with_home_closes_the_database(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RDS_HOME", str(tmp_path))
    home = Home.open(tmp_path)
    (tmp_path / "rdsprm" / "RDSSETFL").touch()  # a home for with_home below
    db = session.open_database(home)
    try:
        assert any(isinstance(listener, delivery.Listener) for listener in db.listeners)
    finally:
        db.close()
    seen: dict[str, Any] = {}

    @with_home(lock=PASS_LOCK, database=True)
    def command(word: str, *, home: Home, db: Database) -> int:
        seen.update(word=word, home=home.path, db=db)
        with pytest.raises(Exception, match="rdsft.lock"), home.lock(PASS_LOCK, timeout=0.05):
            pass  # the pass lock is held while the command runs
        return 7

    assert command("hello") == 7
    assert seen["word"] == "hello" and seen["home"] == tmp_path
    with pytest.raises(sqlite3.ProgrammingError):
        seen["db"].execute("SELECT 1")  # closed when the command returned
    with home.lock(PASS_LOCK, timeout=0.05):
        pass  # and the lock let go
