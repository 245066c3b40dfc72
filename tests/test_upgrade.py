"""Upgrading a tree from protocol 1 (issue 12, part 7: nothing is lost): a relay that took results from
below before the upgrade, and had not sent them up, delivers each exactly once, signed by its host, and
believes no unsigned one offered after it."""

from __future__ import annotations

import base64
import json
import sqlite3
from pathlib import Path

import pytest
from conftest import Tree, installs
from cryptography.hazmat.primitives import serialization
from testkit import PID, managing_server
from trustkit import Signer, request

from rds import database, identity, jobs, manager, trust
from rds.home import Home
from rds.packages import Manifest
from rds.service import UpperService
from rds.transport import serving


def as_protocol_1(path: Path) -> None:
    """Make the home at ``path`` look as protocol 1 left it: a state database of version 2 (no keys,
    statements or signatures: its rows copied without them) and no host key."""
    db_path = path / "GROUP" / "rds.db"
    new = db_path.with_name("old.db")
    old = sqlite3.connect(db_path)
    db = sqlite3.connect(new)
    for v in (1, 2):
        for stmt in database.STATE.migrations[v]:
            db.execute(stmt)
    for row in old.execute("SELECT job_no, dest, type, package, created, received, state, handed_to, attempts,"
                           " record FROM jobs"):
        record = json.loads(row[9])
        record.pop("sig", None)
        record["manifest"].pop("signature", None)
        db.execute("INSERT INTO jobs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", (*row[:9], json.dumps(record)))
    db.executemany("INSERT INTO results VALUES (?, ?, ?, ?, ?, ?)",
                   old.execute("SELECT job_no, dest, status, message, finished, sent FROM results"))
    db.executemany("INSERT INTO routes VALUES (?, ?, ?)", old.execute("SELECT host, via, seen FROM routes"))
    db.executemany("INSERT INTO lowers VALUES (?, ?, ?)", old.execute("SELECT name, wake, seen FROM lowers"))
    db.executemany("INSERT INTO orders VALUES (?, ?, ?, ?)",
                   old.execute("SELECT job_no, type, package, created FROM orders"))
    db.execute("PRAGMA user_version=2")
    db.commit()
    db.close()
    old.close()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db_path}{suffix}").unlink(missing_ok=True)
    new.rename(db_path)
    for f in (path / "rdsprm").glob("host_key*"):
        f.unlink()
    for manifest in (path / "RDS").glob("*/manifest.json"):  # protocol 1's manifests carried no signature
        data = json.loads(manifest.read_text())
        data.pop("signature", None)
        manifest.write_text(json.dumps(data))


def rows(path: Path, query: str, *args: object) -> list[tuple[object, ...]]:
    db = sqlite3.connect(path / "GROUP" / "rds.db")
    try:
        return db.execute(query, args).fetchall()
    finally:
        db.close()


def public_key(path: Path) -> str:
    """The host's public key, read from its key file apart from the code under test."""
    key = serialization.load_pem_private_key((path / "rdsprm" / "host_key").read_bytes(), password=None)
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


def report(home_path: Path, lower: str, result: dict[str, object]) -> dict[str, object]:
    s: UpperService = serving(Home.open(home_path), lower)
    try:
        return s.handle(request("report", lower, results=[result]))
    finally:
        s.close()


def job_to_c1_and_c2(tmp_path: Path) -> Tree:
    """mgr, relay below it, mid and c1 below relay, c2 below mid; job 1 to c1 and c2, not taken yet."""
    tree = Tree(tmp_path / "hosts")
    for name, upper in (("mgr", None), ("relay", "mgr"), ("mid", "relay"), ("c1", "relay"), ("c2", "mid")):
        tree.add(name, upper)
    tree.check_in_upward(["c1", "c2", "mid", "relay"])
    tree["mgr"].run("dcmjexe", "-r", tree.package(), "-h", "c1", "-h", "c2")
    return tree


def test_a_relay_upgraded_with_unsent_protocol_1_results_delivers_each_once_signed(tmp_path: Path) -> None:
    tree = job_to_c1_and_c2(tmp_path)
    mgr, relay, mid, c1, c2 = (tree[h] for h in ("mgr", "relay", "mid", "c1", "c2"))
    tree.check_in_upward(["relay", "mid", "c1", "c2", "mid"])  # both installed; the results wait at relay
    assert installs(c1) == installs(c2) == 1
    assert rows(relay.path, "SELECT dest FROM results WHERE sent IS NULL ORDER BY dest") == [("c1",), ("c2",)]
    for host in (mgr, relay, mid, c1, c2):
        as_protocol_1(host.path)
    assert rows(relay.path, "PRAGMA user_version") == [(2,)]

    relay.run("rdsft", "-a")  # the relay is upgraded first: it checks in, and holds the unsigned results
    assert rows(mgr.path, "SELECT count(*) FROM results") == [(0,)]
    assert rows(relay.path, "SELECT dest, sig FROM results WHERE sent IS NULL ORDER BY dest") == \
        [("c1", ""), ("c2", "")]
    # a lower system that offers an unsigned (or its own) word for them after the upgrade gets nothing believed
    mallory = Signer("mid")
    forged = [{"job": 1, "dest": "c2", "status": "COMPLETE", "message": "installed", "finished": "t"},
              mallory.result(1, "c2"), {**mallory.result(1, "c2", status="ERROR", by="c2"), "by": "c2"}]
    for r in forged:
        assert report(relay.path, "mid", r)["accepted"] == 0
    assert rows(relay.path, "SELECT dest, sig FROM results WHERE sent IS NULL ORDER BY dest") == \
        [("c1", ""), ("c2", "")]
    relay.run("rdsft", "-a")
    assert rows(mgr.path, "SELECT count(*) FROM results") == [(0,)]

    c1.run("rdsft", "-a")  # asked again by the relay: sends its own result again, signed
    mid.run("rdsft", "-a")  # asked again too: holds its unsigned copy of c2's in turn, and asks c2
    assert rows(mid.path, "SELECT dest, sig, sent IS NULL FROM results") == [("c2", "", 1)]
    c2.run("rdsft", "-a")
    mid.run("rdsft", "-a")
    relay.run("rdsft", "-a")
    for host in (relay, mid, c1, c2):  # a pass more everywhere changes nothing
        host.run("rdsft", "-a")

    assert installs(c1) == installs(c2) == 1
    got = rows(mgr.path, "SELECT dest, status, signer, sig FROM results ORDER BY dest")
    assert [g[:3] for g in got] == [("c1", "COMPLETE", "c1"), ("c2", "COMPLETE", "c2")]
    for dest, status, _signer, sig in got:
        message, finished = rows(mgr.path, "SELECT message, finished FROM results WHERE dest=?", dest)[0]
        body = {"kind": "result", "job": 1, "dest": dest, "status": status, "message": message,
                "finished": finished, "by": dest}
        assert identity.verify(public_key(tree[str(dest)].path), body, sig)
    assert rows(mgr.path, "SELECT dest, state FROM jobs ORDER BY dest") == [("c1", "DONE"), ("c2", "DONE")]
    text = (mgr.home().log_dir / "rds.log").read_text()
    for dest in ("c1", "c2"):
        assert text.count(f"result of job 1 for {dest} from relay: COMPLETE") == 1
    relay_log = (relay.home().log_dir / "rds.log").read_text()
    assert "asked c1 to send again 1 result(s) held here unsigned" in relay_log
    assert "reported an unsigned result for job 1:c2" in relay_log
    assert rows(relay.path, "SELECT count(*) FROM results WHERE sent IS NULL") == [(0,)]
    assert rows(mid.path, "SELECT count(*) FROM results WHERE sent IS NULL") == [(0,)]


def test_jobs_made_before_signatures_are_signed_once_and_kept_signed(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """service.checkin signs a job made before signatures once, stores it signed (rds.jobs) and reads
    each package's manifest once per answer."""
    home = managing_server(tmp_path, signed=False)  # registered before signatures too
    pid = PID
    r9 = Signer("r9")
    checkin = request("checkin", "r9", statements=[r9.statement("mgr")], below=[])
    db = database.connect(home.db_path)
    try:
        assert serving(home, "r9").handle(checkin)["ok"]
        made = [manager.create_job(db, home, pid, ["r9"])[0] for _ in range(3)]
        with database.Transaction(db):  # as protocol 1 made them: no signatures
            for (n, record) in db.execute("SELECT job_no, record FROM jobs").fetchall():
                data = json.loads(record)
                data.pop("sig", None)  # dcmjexe's jobs are signed when first handed out
                data["manifest"].pop("signature")
                db.execute("UPDATE jobs SET record=? WHERE job_no=?", (json.dumps(data), n))
    finally:
        db.close()
    signs: list[int] = []
    reads: list[int] = []
    sign_job, read = trust.sign_job, jobs.manifest
    monkeypatch.setattr(trust, "sign_job", lambda *a: signs.append(1) or sign_job(*a))
    monkeypatch.setattr(jobs, "manifest", lambda *a: reads.append(1) or read(*a))
    answers = []
    for _ in range(2):
        s = serving(home, "r9")
        try:
            answers.append(s.handle(checkin))
        finally:
            s.close()
    assert len(signs) == 3 and len(reads) == 2  # signed on the first check-in only; one read an answer
    assert answers[0]["jobs"] == answers[1]["jobs"] and answers[0]["manifests"] == answers[1]["manifests"]
    key = public_key(home.path)
    m = Manifest.from_json(answers[0]["manifests"][str(pid)])
    assert [j["job"] for j in answers[0]["jobs"]] == made
    for j in answers[0]["jobs"]:
        assert trust.job_fault(key, jobs.Job.from_json(j), m) is None
    stored = {n: json.loads(r) for n, r in rows(home.path, "SELECT job_no, record FROM jobs")}
    assert [stored[j["job"]]["sig"] for j in answers[0]["jobs"]] == [j["sig"] for j in answers[0]["jobs"]]
    assert all(r["manifest"] == answers[0]["manifests"][str(pid)] for r in stored.values())
    assert (home.log_dir / "rds.log").read_text().count("signed 3 job(s) made before signatures") == 1


def test_jobs_a_relay_took_before_signatures_are_signed_from_above_and_installed_once(tmp_path: Path) -> None:
    """Jobs in flight at the upgrade: held unsigned at relays (one not handed on yet, one handed on to a
    relay below that had not passed it on), each signed copy comes from above and the job installs once."""
    tree = job_to_c1_and_c2(tmp_path)
    mgr, relay, mid, c1, c2 = (tree[h] for h in ("mgr", "relay", "mid", "c1", "c2"))
    tree.check_in_upward(["relay", "mid"])  # c1's job waits at relay, c2's at mid
    assert rows(relay.path, "SELECT dest, state FROM jobs ORDER BY dest") == [("c1", "WAIT"), ("c2", "HANDED")]
    for host in (mgr, relay, mid, c1, c2):
        as_protocol_1(host.path)

    for host in (c1, c2):  # the clients first: their upper systems hold the jobs back, unsigned
        host.run("rdsft", "-a")
    assert installs(c1) == installs(c2) == 0
    assert rows(c1.path, "SELECT count(*) FROM jobs") == [(0,)]
    tree.check_in_upward(["relay", "mid", "c1", "c2", "mid", "relay"])
    assert installs(c1) == installs(c2) == 1
    got = rows(mgr.path, "SELECT dest, status, signer FROM results ORDER BY dest")
    assert got == [("c1", "COMPLETE", "c1"), ("c2", "COMPLETE", "c2")]
    for host in (relay, mid):
        assert rows(host.path, "SELECT count(*) FROM jobs WHERE json_extract(record, '$.sig') IS NULL") == [(0,)]
    assert "signed 2 job(s) handed to relay before signatures" in (mgr.home().log_dir / "rds.log").read_text()
