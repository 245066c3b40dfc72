"""Jobs and routing (rds/jobs.py), results (rds/results.py) and the upper system's side (rds/service.py)."""

from __future__ import annotations

import dataclasses
import json
import re
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from testkit import managing_server
from trustkit import Signer

from rds import codes, database, jobs, manager, results
from rds.errors import JobRecordError, ProtocolError, Refused, UnableToCache
from rds.home import Home
from rds.jobs import Job
from rds.packages import Manifest, PackageId
from rds.results import Result
from rds.service import UpperService
from rds.storehouse import Storehouse
from rds.transport import serving
from rds.wire import VERSION

PID = PackageId.make("AB", "APP", "0100")
GOOD_JOB: dict[str, Any] = {"job": 7, "dest": "c1", "type": "INSTALL", "package": "C.AB.APP.0100.0000",
                            "created": "2024-05-01T10:00:00"}


# -- job records ----------------------------------------------------------------

def test_job_record_round_trip() -> None:
    job = Job.from_json(GOOD_JOB)
    assert (job.job_no, job.dest, job.type, job.package, job.key) == (7, "c1", "INSTALL", PID, "7:c1")
    assert job.to_json() == GOOD_JOB
    assert Job.from_json({**GOOD_JOB, "package": "C.AB.APP.0100"}).package == PID


@pytest.mark.parametrize(("change", "what"), [
    ({"job": 0}, "job number 0"),
    ({"job": -3}, "job number -3"),
    ({"job": "7"}, "job number '7'"),
    ({"job": True}, "job number True"),
    ({"job": 7.0}, "job number 7.0"),
    ({"job": 2**63}, f"job number {2**63}"),
    ({"job": None}, "job number None"),
    ({"dest": ""}, "destination ''"),
    ({"dest": "bad_host!"}, "destination 'bad_host!'"),
    ({"dest": "1.2.3.4"}, "destination '1.2.3.4'"),
    ({"dest": "a" * 65}, "destination 'aaaa"),
    ({"dest": 5}, "destination 5"),
    ({"dest": ["c1"]}, "destination ['c1']"),
    ({"type": "REMOVE"}, "job type 'REMOVE'"),
    ({"type": "install"}, "job type 'install'"),
    ({"type": None}, "job type None"),
    ({"package": "C.AB"}, "bad package ID 'C.AB'"),
    ({"package": "X.AB.APP.0100"}, "bad packager 'X'"),
    ({"package": "C.AB.A B.0100"}, "bad package 'A B'"),
    ({"created": 5}, "creation time 5"),
    ({"created": "x" * 65}, "creation time 'xxxx"),
])
def test_job_record_rejects_bad_fields(change: dict[str, Any], what: str) -> None:
    with pytest.raises(JobRecordError) as e:
        Job.from_json({**GOOD_JOB, **change})
    assert str(e.value).startswith(f"not a valid job record: {what}")


@pytest.mark.parametrize("missing", sorted(GOOD_JOB))
def test_job_record_rejects_missing_fields(missing: str) -> None:
    with pytest.raises(JobRecordError, match=r"^not a valid job record: "):
        Job.from_json({k: v for k, v in GOOD_JOB.items() if k != missing})


@pytest.mark.parametrize("record", [None, [], "job", 7, [("job", 7)]])
def test_job_record_rejects_non_objects(record: object) -> None:
    with pytest.raises(JobRecordError, match=r"^not a valid job record: "):
        Job.from_json(record)


def test_host_name_with_trailing_newline_is_refused() -> None:
    """Regression: a job record (and a check-in, a dcmjexe -h) with destination ``'c1\\n'`` was accepted."""
    with pytest.raises(JobRecordError):
        Job.from_json({**GOOD_JOB, "dest": "c1\n"})


# -- the job storehouse -----------------------------------------------------------

@pytest.fixture
def db(tmp_path: Path) -> sqlite3.Connection:
    conn = database.connect(tmp_path / "rds.db")
    yield conn  # type: ignore[misc]
    conn.close()


def manifest(pid: PackageId = PID) -> Manifest:
    return Manifest(id=pid, size=3, sha256="0" * 64, install_dir="/opt/app")


def job(no: int = 7, dest: str = "c1", pid: PackageId = PID) -> Job:
    return Job(no, dest, jobs.INSTALL, pid, "2024-05-01T10:00:00")


def test_a_job_stored_twice_is_kept_once(db: sqlite3.Connection) -> None:
    manifests = {str(PID): manifest()}
    assert jobs.store(db, [job()], manifests, now=1.0) == 1
    assert jobs.store(db, [job()], manifests, now=2.0) == 0
    assert jobs.store(db, [job(), job(), job(8)], manifests, now=3.0) == 1
    rows = jobs.listing(db)
    assert [(r["job_no"], r["dest"], r["state"], r["received"]) for r in rows] == [(7, "c1", "WAIT", 1.0),
                                                                                  (8, "c1", "WAIT", 3.0)]


def test_a_done_job_is_not_taken_again(db: sqlite3.Connection) -> None:
    manifests = {str(PID): manifest()}
    jobs.store(db, [job()], manifests)
    results.keep(db, Result(7, "c1", codes.COMPLETE, "ok", "t"))
    assert jobs.store(db, [job()], manifests) == 0
    assert jobs.in_state(db, jobs.DONE) == [job()]
    assert jobs.in_state(db, jobs.WAIT) == []


def test_same_job_number_for_two_hosts_is_two_jobs(db: sqlite3.Connection) -> None:
    assert jobs.store(db, [job(7, "c1"), job(7, "c2")], {str(PID): manifest()}) == 2
    assert jobs.in_state(db, jobs.WAIT, "c2") == [job(7, "c2")]
    assert jobs.delete(db, [(7, "c1")]) == 1
    assert jobs.delete(db, [(7, None)]) == 1
    assert jobs.listing(db) == []


def test_a_record_carries_the_job_and_its_manifest_as_json_would(db: sqlite3.Connection) -> None:
    m = dataclasses.replace(manifest(), script="sét\u2028up.sh", signature="s" * 88)
    for j in (job(), dataclasses.replace(job(), sig="x" * 88, attempt=3, not_before="2024-05-02T10:00:00+00:00")):
        text = jobs.record_text(j, m)
        assert json.loads(text) == {**j.to_json(), "manifest": m.to_json()}
        assert text == json.dumps({**j.to_json(), "manifest": m.to_json()})
    jobs.store(db, [job()], {str(PID): m})
    assert jobs.manifest(db, job()) == m and jobs.signed_manifest(db, job()) == m


def test_signed_manifest_is_none_for_an_unsigned_manifest_or_a_damaged_record(db: sqlite3.Connection) -> None:
    jobs.store(db, [job(7), job(8), job(9)], {str(PID): manifest()})
    assert jobs.signed_manifest(db, job(7)) is None  # made before signatures
    db.execute("UPDATE jobs SET record=? WHERE job_no=8", ("{not json",))
    db.execute("UPDATE jobs SET record=? WHERE job_no=9", (json.dumps({**job(9).to_json(), "manifest": "x"}),))
    assert jobs.signed_manifest(db, job(8)) is None and jobs.signed_manifest(db, job(9)) is None
    assert jobs.signed_manifest(db, job(10)) is None  # no such job


def test_the_jobs_being_read_come_from_their_rows(db: sqlite3.Connection) -> None:
    """Each read of a download says GEN_START for the reader's jobs of that package: from the row's columns,
    the record (with thousands of chunks) not parsed."""
    other = PackageId.make("AB", "OTHER", "0100")
    jobs.store(db, [job(7), job(8), job(9, pid=other), job(10, "c2")],
               {str(PID): manifest(), str(other): manifest(other)})
    jobs.record_checkin(db, "c1", [], "mgr")
    jobs.record_checkin(db, "c2", [], "mgr")
    assert jobs.hand_over(db, "c1", [(7, "c1"), (9, "c1")]) == 2
    assert jobs.hand_over(db, "c2", [(10, "c2")]) == 1
    db.execute("UPDATE jobs SET record='{not json' WHERE job_no=7")
    assert jobs.being_read(db, "c1", PID) == [jobs.Held(7, "c1", jobs.INSTALL, PID)]
    assert jobs.being_read(db, "c2", PID) == [jobs.Held(10, "c2", jobs.INSTALL, PID)]
    assert jobs.being_read(db, "c1", other) == [jobs.Held(9, "c1", jobs.INSTALL, other)]


# -- routing ------------------------------------------------------------------------

def routes(db: sqlite3.Connection) -> dict[str, str]:
    return {r["host"]: r["via"] for r in jobs.routes(db)}


def test_checkin_teaches_routes(db: sqlite3.Connection) -> None:
    jobs.record_checkin(db, "r1", ["c1", "c2"], own_host="mgr")
    jobs.record_checkin(db, "r2", ["c3"], own_host="mgr")
    assert routes(db) == {"r1": "r1", "c1": "r1", "c2": "r1", "r2": "r2", "c3": "r2"}
    assert jobs.route(db, "c2") == "r1"
    assert jobs.route(db, "c9") is None
    assert jobs.subtree(db) == ["c1", "c2", "c3", "r1", "r2"]


def test_a_host_that_moves_to_another_lower_system_is_rerouted(db: sqlite3.Connection) -> None:
    jobs.record_checkin(db, "r1", ["c1", "c2"], own_host="mgr")
    jobs.store(db, [job(7, "c1")], {str(PID): manifest()})
    assert [j for j, _ in jobs.for_lower(db, "r1")] == [job(7, "c1")]
    jobs.record_checkin(db, "r2", ["c1"], own_host="mgr")
    assert routes(db) == {"r1": "r1", "c1": "r2", "c2": "r1", "r2": "r2"}
    assert jobs.for_lower(db, "r1") == []
    assert [j for j, _ in jobs.for_lower(db, "r2")] == [job(7, "c1")]
    # r1 no longer reports c1: that does not take it away from r2
    jobs.record_checkin(db, "r1", ["c2"], own_host="mgr")
    assert jobs.route(db, "c1") == "r2"


def test_hosts_no_longer_reported_are_dropped(db: sqlite3.Connection) -> None:
    jobs.record_checkin(db, "r1", ["c1", "c2"], own_host="mgr")
    jobs.record_checkin(db, "r1", ["c1"], own_host="mgr")
    assert routes(db) == {"r1": "r1", "c1": "r1"}
    jobs.record_checkin(db, "r1", [], own_host="mgr")
    assert routes(db) == {"r1": "r1"}


def test_a_lower_system_cannot_claim_this_host(db: sqlite3.Connection) -> None:
    jobs.record_checkin(db, "r1", ["mgr", "c1"], own_host="mgr")
    assert routes(db) == {"r1": "r1", "c1": "r1"}


def test_hand_over_only_to_the_lower_system_on_the_route(db: sqlite3.Connection) -> None:
    jobs.record_checkin(db, "r1", ["c1"], own_host="mgr")
    jobs.record_checkin(db, "r2", ["c2"], own_host="mgr")
    jobs.store(db, [job(7, "c1"), job(7, "c2")], {str(PID): manifest()})
    assert jobs.hand_over(db, "r2", [(7, "c1")]) == 0
    assert jobs.hand_over(db, "r1", [(7, "c1")]) == 1
    assert jobs.hand_over(db, "r1", [(7, "c1")]) == 0  # taken once
    assert [(r["dest"], r["state"], r["handed_to"]) for r in jobs.listing(db)] == [("c1", "HANDED", "r1"),
                                                                                  ("c2", "WAIT", None)]
    assert jobs.for_lower(db, "r1") == []


# -- results ------------------------------------------------------------------------

def result(status: str = codes.COMPLETE, dest: str = "c1", no: int = 7, message: str = "done") -> Result:
    return Result(no, dest, status, message, "2024-05-01T10:05:00")


def stored(db: sqlite3.Connection) -> list[tuple[Any, ...]]:
    return [tuple(r) for r in db.execute("SELECT job_no, dest, status, message FROM results ORDER BY job_no, dest")]


@pytest.fixture
def routed(db: sqlite3.Connection) -> sqlite3.Connection:
    jobs.record_checkin(db, "r1", ["c1"], own_host="mgr")
    jobs.store(db, [job(7, "c1")], {str(PID): manifest()})
    return db


def test_accept_is_idempotent(routed: sqlite3.Connection) -> None:
    assert results.accept(routed, "r1", [result()], "mgr") == 1
    assert results.accept(routed, "r1", [result()], "mgr") == 0
    assert results.accept(routed, "r1", [result(), result()], "mgr") == 0
    assert stored(routed) == [(7, "c1", "COMPLETE", "done")]
    assert len(results.unsent(routed)) == 1


def test_the_same_result_twice_in_one_report_counts_once(routed: sqlite3.Connection) -> None:
    assert results.accept(routed, "r1", [result(), result()], "mgr") == 1


def test_interim_exec_error_gives_way_to_complete(routed: sqlite3.Connection) -> None:
    assert results.accept(routed, "r1", [result(codes.EXEC_ERROR, message="c1 did not answer")], "mgr") == 1
    assert jobs.in_state(routed, jobs.WAIT) == [job()]  # an interim status does not end the job
    results.mark_sent(routed, results.unsent(routed))
    assert results.unsent(routed) == []
    assert results.accept(routed, "r1", [result(codes.COMPLETE)], "mgr") == 1
    assert stored(routed) == [(7, "c1", "COMPLETE", "done")]
    assert [r.status for r in results.unsent(routed)] == ["COMPLETE"]  # goes up again
    assert jobs.in_state(routed, jobs.DONE) == [job()]


@pytest.mark.parametrize("later", [codes.EXEC_ERROR, codes.LINE_DOWN, codes.ERROR, codes.SETUP_ERROR])
def test_complete_is_never_replaced(routed: sqlite3.Connection, later: str) -> None:
    results.accept(routed, "r1", [result(codes.COMPLETE)], "mgr")
    results.mark_sent(routed, results.unsent(routed))
    assert results.accept(routed, "r1", [result(later, message="late")], "mgr") == 0
    assert stored(routed) == [(7, "c1", "COMPLETE", "done")]
    assert results.unsent(routed) == []


def test_an_error_outcome_is_not_replaced_either(routed: sqlite3.Connection) -> None:
    results.accept(routed, "r1", [result(codes.ERROR, message="script exited 1")], "mgr")
    assert results.accept(routed, "r1", [result(codes.COMPLETE)], "mgr") == 0
    assert stored(routed) == [(7, "c1", "ERROR", "script exited 1")]


def test_mark_sent_does_not_swallow_an_upgrade(routed: sqlite3.Connection) -> None:
    results.accept(routed, "r1", [result(codes.EXEC_ERROR)], "mgr")
    batch = results.unsent(routed)
    results.accept(routed, "r1", [result(codes.COMPLETE)], "mgr")  # arrives while batch is on its way
    results.mark_sent(routed, batch)
    assert [r.status for r in results.unsent(routed)] == ["COMPLETE"]


def test_accept_refuses_results_for_hosts_not_below(routed: sqlite3.Connection) -> None:
    jobs.record_checkin(routed, "r2", ["c2"], own_host="mgr")
    for dest in ("c2", "r2", "mgr", "nowhere"):
        with pytest.raises(ProtocolError, match=f"^r1 reported a result for {dest}, which is not below it$"):
            results.accept(routed, "r1", [result(dest="r1"), result(dest=dest)], "mgr")
    assert stored(routed) == []  # the whole report is refused, not half of it
    assert results.accept(routed, "r1", [result(dest="r1", no=9)], "mgr") == 1  # its own result


@pytest.mark.parametrize(("change", "what"), [
    ({"job": 0}, "job number 0"),
    ({"job": True}, "job number True"),
    ({"dest": "bad_host!"}, "destination 'bad_host!'"),
    ({"status": "DONE"}, "status 'DONE'"),
    ({"message": None}, "message"),
])
def test_result_record_rejects_bad_fields(change: dict[str, Any], what: str) -> None:
    with pytest.raises(ProtocolError, match=rf"^not a valid result: {what}"):
        Result.from_json({**result().to_json(), **change})


def test_result_message_is_cut_to_size() -> None:
    r = Result.from_json({**result().to_json(), "message": "x" * 5000})
    assert len(r.message) == results.MESSAGE_MAX


# -- the upper system's side ------------------------------------------------------------

@pytest.fixture
def mgr(tmp_path: Path) -> Home:
    return managing_server(tmp_path, signed=False, others=[PackageId.make("AB", "OTHER", "1")])


@pytest.fixture
def service(mgr: Home) -> UpperService:
    svc = serving(mgr, "r1")
    yield svc  # type: ignore[misc]
    svc.close()


def req(op: str, host: str = "r1", **fields: Any) -> dict[str, Any]:
    return {"op": op, "v": VERSION, "host": host, **fields}


KEYS = {name: Signer(name) for name in ("r1", "r2", "c1", "c2")}


def checkin(host: str = "r1", below: list[str] | None = None) -> dict[str, Any]:
    """A check-in of ``host`` with the signed statements of the hosts below it (rds.trust)."""
    statements = [KEYS[host].statement("mgr")] + [KEYS[h].statement(host) for h in below or []]
    return req("checkin", host=host, statements=statements, below=below or [])


def signed(r: Result) -> dict[str, Any]:
    """``r`` as its destination signs it."""
    return KEYS[r.dest].result(r.job_no, r.dest, r.status, r.message, r.finished)


def create_job(mgr: Home, dest: str, pid: PackageId = PID) -> int:
    db = database.connect(mgr.db_path)
    try:
        return manager.create_job(db, mgr, pid, [dest])[0]
    finally:
        db.close()


def test_checkin_hands_out_the_subtree_s_jobs_with_their_manifests(mgr: Home, service: UpperService) -> None:
    n1 = create_job(mgr, "c1")
    create_job(mgr, "c2")
    reply = service.handle(checkin("r1", ["c1"]))
    assert reply["ok"] is True and reply["upper"] == "mgr"
    assert [(j["job"], j["dest"]) for j in reply["jobs"]] == [(n1, "c1")]
    got = Manifest.from_json(reply["manifests"][str(PID)])  # as registered, signed by the managing server
    assert dataclasses.replace(got, signature="") == Storehouse(mgr.packages).get(PID) and got.signature
    assert service.handle(req("ack", jobs=[[n1, "c1"]])) == {"ok": True, "taken": 1}
    assert service.handle(checkin("r1", ["c1"]))["jobs"] == []


def test_request_for_another_host_is_refused(service: UpperService) -> None:
    for host in ("r2", "mgr", None, ""):
        reply = service.handle(req("checkin", host=host, below=[]))  # type: ignore[arg-type]
        assert reply == {"ok": False, "error": "refused", "message": f"r1 may not act as {host!r}"}
    assert jobs.routes(service.db) == []


def test_results_for_hosts_not_below_are_refused(mgr: Home, service: UpperService) -> None:
    n = create_job(mgr, "c1")
    other = serving(mgr, "r2")
    other.handle(checkin("r2", ["c2"]))
    other.close()
    service.handle(checkin("r1", ["c1"]))
    bad = service.handle(req("report", results=[signed(result(dest="c2", no=n))]))
    assert bad == {"ok": True, "accepted": 0, "refused": 1}
    assert "r1 reported a result for c2, which is not below it" in (mgr.log_dir / "rds.log").read_text()
    good = service.handle(req("report", results=[signed(result(dest="c1", no=n))]))
    assert good == {"ok": True, "accepted": 1, "refused": 0}
    assert service.handle(req("report", results=[signed(result(dest="c1", no=n))])) == \
        {"ok": True, "accepted": 0, "refused": 0}
    assert stored(service.db) == [(n, "c1", "COMPLETE", "done")]


def test_reads_only_packages_the_subtree_needs(mgr: Home, service: UpperService) -> None:
    create_job(mgr, "c1")
    create_job(mgr, "c2", PackageId.make("AB", "OTHER", "1"))
    service.handle(checkin("r1", ["c1"]))
    store = Storehouse(mgr.packages)
    assert b"".join(service.read(str(PID), 0, 1 << 20)) == store.payload(PID).read_bytes()
    assert b"".join(service.read(str(PID), 10, 5)) == store.payload(PID).read_bytes()[10:15]
    with pytest.raises(Refused, match=r"^no job for r1 or the hosts below it needs package C\.AB\.OTHER\.1\.0000$"):
        service.read("C.AB.OTHER.1", 0, 100)
    with pytest.raises(Refused, match=r"needs package C\.AB\.NONE\.1\.0000$"):
        service.read("C.AB.NONE.1", 0, 100)
    with pytest.raises(ProtocolError, match=r"non-negative"):
        service.read(str(PID), -1, 100)
    with pytest.raises(ProtocolError, match=r"must be a package ID"):
        service.read(None, 0, 100)


def test_reads_of_a_package_no_longer_kept_are_refused(mgr: Home, service: UpperService) -> None:
    create_job(mgr, "c1")
    service.handle(checkin("r1", ["c1"]))
    Storehouse(mgr.packages).remove(PID)
    with pytest.raises(Refused, match=r"^package C\.AB\.APP\.0100\.0000 is not kept on mgr$"):
        service.read(str(PID), 0, 100)


def test_a_corrupt_payload_is_not_served(mgr: Home, service: UpperService) -> None:
    """Regression: SPEC says every package is verified by SHA-256 before it is served; a relay kept serving a
    corrupted ``payload.tgz`` to the hosts below it."""
    create_job(mgr, "c1")
    service.handle(checkin("r1", ["c1"]))
    store = Storehouse(mgr.packages)
    payload = store.payload(PID)
    data = bytearray(payload.read_bytes())
    data[len(data) // 2] ^= 0xFF
    payload.write_bytes(bytes(data))
    served: list[bytes] = []
    with pytest.raises(UnableToCache, match=(  # the managing server has no upper system to fetch a good one from
            rf"^package {re.escape(str(PID))} cannot be served by the managing server mgr: the copy here was damaged "
            rf"\(package {re.escape(str(PID))}: SHA-256 of {re.escape(str(payload))} does not match its manifest; "
            r"not used\) and removed; register it again with 'rdsft -c', or stage a good copy with "
            r"'rdsstage -i PATH'$")):
        served += service.read(str(PID), 0, len(data))
    assert served == [] and not payload.exists() and not payload.parent.exists()


@pytest.mark.parametrize(("msg", "message"), [
    (None, "a request must be a JSON object"),
    ([], "a request must be a JSON object"),
    ("checkin", "a request must be a JSON object"),
    (5, "a request must be a JSON object"),
    ({"op": "checkin", "host": "r1"}, f"the lower system r1 speaks protocol None, this upper system speaks {VERSION}: "
                                      "upgrade rds on the lower system r1"),
    ({"op": "checkin", "host": "r1", "v": VERSION + 1},
     f"the lower system r1 speaks protocol {VERSION + 1}, this upper system speaks {VERSION}: "
     "upgrade rds on this upper system"),
    ({"op": "checkin", "host": "r1", "v": "1"},
     f"the lower system r1 speaks protocol 1, this upper system speaks {VERSION}"),
    (req("checkin", below=[]), "'statements' must be a list of signed route statements"),
    (req("checkin", statements=[{"host": "r1"}]), "not a valid route statement"),
    (req("delete"), "unknown request 'delete'"),
    ({"v": VERSION, "host": "r1"}, "a request needs an op"),
    (req("checkin", below="c1"), "'below' must be a list of host names"),
    (req("checkin", below={"c1": 1}), "'below' must be a list of host names"),
    (req("checkin", below=[5]), "'below' holds a bad host name: 5"),
    (req("checkin", below=["c1", None]), "'below' holds a bad host name: None"),
    (req("checkin", below=["bad_host!"]), "'below' holds a bad host name: 'bad_host!'"),
    (req("checkin", below=["1.2.3.4"]), "'below' holds a bad host name: '1.2.3.4'"),
    (req("ack", jobs=5), "'jobs' must be a list of [job, dest] pairs"),
    (req("ack", jobs=[[1, "c1", "x"]]), "'jobs' must be a list of [job, dest] pairs"),
    (req("ack", jobs=[["one", "c1"]]), "'jobs' must be a list of [job, dest] pairs"),
    (req("report", results={"job": 1}), "'results' must be a list"),
    (req("report", results=["COMPLETE"]), "not a valid result: "),
    (req("report", results=[{**result().to_json(), "status": "FINE"}]), "not a valid result: status 'FINE'"),
])
def test_bad_messages_get_an_error_answer(service: UpperService, msg: Any, message: str) -> None:
    reply = service.handle(msg)
    assert reply["ok"] is False
    assert reply["error"] == "protocol"
    assert reply["message"].startswith(message)
    assert jobs.routes(service.db) == []


@pytest.mark.parametrize("msg", [
    req("ack", jobs=[[2**64, "c1"]]),
    req("report", results=[{**result(dest="r1").to_json(), "job": 2**64}]),
])
def test_huge_job_numbers_get_an_error_answer(service: UpperService, msg: dict[str, Any]) -> None:
    """Regression: a lower system sending job number 2**64 made the upper system's handler raise OverflowError."""
    reply = service.handle(msg)
    assert reply["ok"] is False and reply["error"] == "protocol"
