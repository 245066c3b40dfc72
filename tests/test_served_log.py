"""rds.log at an upper system (issue 16's notes): an SSH session that did something gets its line, an
idle check-in is counted and the count said at most once an hour, so that 1,000 hosts checking in every
5 minutes no longer write ~288,000 lines a day.  The log is read as a file, as an administrator greps it."""

from __future__ import annotations

import io
import time
from pathlib import Path

from testkit import managing_server
from trustkit import Signer, request

from rds import database, log, manager
from rds.home import Home
from rds.packages import PackageId
from rds.transport.frames import encode
from rds.transport.serve import serve

PID = PackageId.make("AB", "APP", "0100")


def lines(home: Home, text: str) -> list[str]:
    path = home.log_dir / "rds.log"
    return [line for line in path.read_text().splitlines() if text in line] if path.exists() else []


def session(home: Home, lower: str, *msgs: dict[str, object]) -> bytes:
    out = io.BytesIO()
    assert serve(lower, home.path, None, io.BytesIO(b"".join(encode(m) for m in msgs)), out) == 0
    return out.getvalue()


def test_an_idle_check_in_is_counted_and_one_that_hands_out_a_job_is_logged(tmp_path: Path) -> None:
    mgr = managing_server(tmp_path)
    c1, c2 = Signer("c1"), Signer("c2")
    for _ in range(3):
        session(mgr, "c1", request("checkin", "c1", statements=[c1.statement("mgr")], below=[]))
    session(mgr, "c2", request("checkin", "c2", statements=[c2.statement("mgr")], below=[]))
    session(mgr, "c2")  # connected and asked nothing
    assert lines(mgr, "served") == []
    db = database.connect(mgr.db_path)
    try:
        n, _ = manager.create_job(db, mgr, PID, ["c1"])
    finally:
        db.close()
    session(mgr, "c1", request("checkin", "c1", statements=[c1.statement("mgr")], below=[]))
    assert len(lines(mgr, "served c1: 1 request(s), 0 package byte(s)")) == 1  # job n handed out
    session(mgr, "c2", request("report", "c2", results=[c2.result(n, "c1")]))  # refused: logged
    assert len(lines(mgr, "served c2: 1 request(s)")) == 1
    log.idle_session(mgr, "c2", log.logger(mgr), now=time.time() + log.IDLE_SUMMARY)  # an hour later
    said = lines(mgr, "idle session(s)")
    assert len(said) == 1 and "served 6 idle session(s) from 2 host(s) since " in said[0]


def test_the_idle_count_is_said_at_most_once_an_hour_and_after_the_clock_goes_back(tmp_path: Path) -> None:
    home = managing_server(tmp_path)
    logger = log.logger(home)
    t0 = time.mktime((2026, 12, 2, 3, 0, 0, 0, 0, -1))
    for i in range(12):  # every 5 minutes, three hosts
        log.idle_session(home, f"h{i % 3}", logger, now=t0 + 300 * i)
    assert lines(home, "idle session(s)") == []
    log.idle_session(home, "h0", logger, now=t0 + 3600)
    log.idle_session(home, "h1", logger, now=t0 + 3601)  # a new count begins
    assert [line.split(" INFO ")[1] for line in lines(home, "idle session(s)")] == \
        ["served 13 idle session(s) from 3 host(s) since 03:00"]
    log.idle_session(home, "h2", logger, now=t0 - 600)  # the clock went back: said, not held for an hour
    assert lines(home, "idle session(s)")[-1].endswith("served 2 idle session(s) from 2 host(s) since 02:50")
    assert sorted(p.name for p in home.run.iterdir() if p.name.startswith("served-idle")) == []
