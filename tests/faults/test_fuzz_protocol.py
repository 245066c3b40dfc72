"""Fuzzing job records and the messages between a lower and an upper system.

A hostile lower system may send anything to the upper system's UpperService: it gets an error
answer, never an exception, and the upper home is the only place written.  A hostile upper system
may answer anything to the lower system's UpperClient: the lower raises one clean RdsError, never
stores a job without its manifest, and never keeps a package that does not match its manifest.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from trustkit import Signer

from faults.hostile import clean_error, json_values, nasty_text, one_line, snapshot, wire
from rds import database, jobs, manager
from rds.client import UpperClient
from rds.errors import JobRecordError, ProtocolError, RdsError
from rds.home import Home
from rds.jobs import Job
from rds.packages import Manifest, PackageId
from rds.storehouse import Storehouse
from rds.transport import serving
from rds.wire import VERSION

PID = PackageId.make("AB", "APP", "0100")

hosts = st.sampled_from(["c", "d", "relay", "relay2", "mgr", "", "1.2.3.4", "C", "a" * 65, "c\n", "c d"]) | nasty_text
package_ids = st.sampled_from([str(PID), "C.AB.APP.0100", "C.AB.OTHER.1.0", "D.AB.APP.0100.0000", "C.AB",
                               "C.AB.APP.0100.99999", "C..APP.1.0", "C.AB.APP.0100.0000.0"]) | nasty_text
numbers = st.sampled_from([1, 2, 0, -1, 2**63 - 1, 2**63, True, 1.0, 1.5, "1", None, float("inf"), float("nan")]) \
    | st.integers(min_value=-(2**70), max_value=2**70)


def _field(good: Any, others: Any) -> Any:
    return st.just(good) | others


job_records = st.fixed_dictionaries({
    "job": _field(1, numbers), "dest": _field("c", hosts), "type": _field("INSTALL", nasty_text),
    "package": _field(str(PID), package_ids), "created": _field("2024-05-01T10:00:00", json_values())},
) | json_values()


def manifest_records(sha: str, size: int) -> Any:
    return st.fixed_dictionaries({
        "format": _field(1, json_values()), "id": _field(str(PID), package_ids), "size": _field(size, numbers),
        "sha256": _field(sha, st.sampled_from(["", sha.upper(), "0" * 64, sha + "0"]) | nasty_text),
        "install_dir": _field("/opt/app", st.sampled_from(["opt/app", "/opt/../etc", "/opt/a\x00b", "/", "//x",
                                                          "/opt/app/.."]) | nasty_text),
        "expire_days": _field(None, numbers), "script": _field(None, json_values()),
        "packaged": _field("", json_values())},
        optional={"extra": json_values()}) | json_values()


@given(job_records)
def test_job_records(record: Any) -> None:
    try:
        job = Job.from_json(wire(record))
    except JobRecordError as e:
        clean_error(e)
        return
    assert 0 < job.job_no < 2**63 and job.type == jobs.INSTALL
    assert Job.from_json(wire(job.to_json())) == job


# -- the upper side: a hostile lower system -----------------------------------------------------------

@pytest.fixture
def upper(tmp_path: Path) -> tuple[Home, Manifest]:
    """A managing server ``mgr`` with lower systems relay (c below it) and relay2 (d), one job for each."""
    home = Home.open(tmp_path / "mgr")
    (home.prm / "RDSSETFL").write_text("HostName\tmgr\n")
    src = tmp_path / "src"
    (src / "bin").mkdir(parents=True)
    (src / "bin" / "app").write_text("echo app\n")
    m = Storehouse(home.packages).register(PID, src, "/opt/app")
    db = database.connect(home.db_path)
    jobs.record_checkin(db, "relay", ["c"], "mgr")
    jobs.record_checkin(db, "relay2", ["d"], "mgr")
    manager.create_job(db, home, PID, ["c", "d"])
    db.close()
    return home, m


SIGNERS = {h: Signer(h) for h in ("relay", "c", "d")}
STATEMENTS = [SIGNERS["relay"].statement("mgr"), SIGNERS["c"].statement("relay"), SIGNERS["d"].statement("relay"),
              SIGNERS["c"].statement("relay2", n=5), {**SIGNERS["relay"].statement("mgr"), "n": 7}]


def requests() -> Any:
    ops = st.sampled_from(["checkin", "ack", "report", "read", "stat", "hello", ""]) | json_values()
    result = st.fixed_dictionaries({"job": _field(1, numbers), "dest": _field("c", hosts),
                                    "status": st.sampled_from(["COMPLETE", "ERROR", "EXEC-ERROR", "WAIT", "x"]),
                                    "message": _field("done", json_values()), "finished": _field("now", json_values())})
    return st.fixed_dictionaries(
        {"op": _field("checkin", ops), "v": _field(VERSION, json_values()), "host": _field("relay", hosts)},
        optional={"below": st.lists(hosts, max_size=4) | json_values(),
                  "statements": st.lists(st.sampled_from(STATEMENTS), max_size=3) | json_values(),
                  "wake": st.sampled_from(["/tmp/x", "relative", "/" + "a" * 5000, "/x\x00"]) | json_values(),
                  "jobs": st.lists(st.tuples(numbers, hosts).map(list), max_size=3) | json_values(),
                  "results": st.lists(result, max_size=3) | json_values(),
                  "package": package_ids | json_values(), "offset": numbers, "length": numbers},
    ) | json_values()


@given(requests())
def test_upper_service_answers_everything(tmp_path: Path, upper: tuple[Home, Manifest], msg: Any) -> None:
    home, _ = upper
    before = snapshot(tmp_path, skip=(home.path,))
    service = serving(home, "relay")
    try:
        reply = wire(service.handle(wire(msg)))  # what the transport would carry back
    finally:
        service.close()
    assert isinstance(reply, dict) and isinstance(reply.get("ok"), bool)
    if not reply["ok"]:
        assert reply["error"] in ("refused", "protocol")
        one_line(reply["message"], limit=20_000)
    assert snapshot(tmp_path, skip=(home.path,)) == before, "the upper system wrote outside its home"
    db = database.connect(home.db_path)
    try:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        # whatever relay says, it never takes a job that is not routed through it
        for row in db.execute("SELECT j.dest, j.handed_to, r.via FROM jobs j LEFT JOIN routes r ON r.host = j.dest"
                              " WHERE j.state = 'HANDED'"):
            assert row[1] != "relay" or row[0] in ("c", "relay") or row[2] == "relay", tuple(row)
    finally:
        db.close()


@given(package=package_ids | json_values(), offset=numbers, length=numbers)
def test_upper_service_reads(upper: tuple[Home, Manifest], package: Any, offset: Any, length: Any) -> None:
    home, m = upper
    service = serving(home, "relay")
    try:
        data = b"".join(service.read(wire(package), wire(offset), wire(length)))
    except RdsError as e:
        clean_error(e, limit=20_000)
        return
    finally:
        service.close()
    whole = Storehouse(home.packages).payload(PID).read_bytes()
    assert data == whole[offset:offset + length]


def test_read_beyond_the_end_is_refused(upper: tuple[Home, Manifest]) -> None:
    """Bug found by fuzzing: a read with an offset past 2**63 made rds-serve (or the local link) fail with
    OverflowError and a traceback when it seeked; an offset beyond the package is a protocol error now."""
    home, m = upper
    service = serving(home, "relay")
    for offset in (m.size + 1, 2**63, 2**64):
        with pytest.raises(ProtocolError, match="beyond"):
            b"".join(service.read(str(PID), offset, 10))
    assert b"".join(service.read(str(PID), m.size, 10)) == b""
    service.close()


def test_ack_with_an_infinite_job_number_is_answered(upper: tuple[Home, Manifest]) -> None:
    """Bug found by fuzzing: ``ack`` with a job number of Infinity (which Python's json reads) raised
    OverflowError out of UpperService.handle instead of giving an error answer."""
    service = serving(upper[0], "relay")
    for number in (float("inf"), float("-inf"), float("nan")):
        reply = service.handle(wire({"op": "ack", "v": VERSION, "host": "relay", "jobs": [[number, "c"]]}))
        assert reply == {"ok": False, "error": "protocol", "message": "'jobs' must be a list of [job, dest] pairs"}
    service.close()


# -- the lower side: a hostile upper system -----------------------------------------------------------

class FakeLink:
    """An upper system that answers every request with ``reply`` and every read with ``data``."""

    def __init__(self, reply: Any, data: bytes = b"") -> None:
        self.reply = reply
        self.data = data

    def call(self, msg: dict[str, Any]) -> dict[str, Any]:
        return wire(self.reply)  # type: ignore[no-any-return]

    def read(self, package: str, offset: int, length: int, out: Any) -> None:
        out.write(self.data[offset:offset + length + 7])  # may send more than asked

    def close(self) -> None:
        pass


PAYLOAD = b"the package archive" * 50
SHA = hashlib.sha256(PAYLOAD).hexdigest()


def checkin_answers() -> Any:
    return st.fixed_dictionaries(
        {"ok": _field(True, json_values())},
        optional={"jobs": st.lists(job_records, max_size=3) | json_values(),
                  "manifests": st.dictionaries(package_ids, manifest_records(SHA, len(PAYLOAD)), max_size=2)
                  | json_values(),
                  "error": st.sampled_from(["refused", "protocol", "upper"]) | json_values(),
                  "message": json_values(), "accepted": numbers | json_values(),
                  "invalid": st.lists(st.tuples(numbers, hosts).map(list), max_size=2) | json_values(),
                  "manifest": manifest_records(SHA, len(PAYLOAD))},
    ) | json_values()


@pytest.fixture
def lower_db(tmp_path: Path) -> sqlite3.Connection:
    db = database.connect(tmp_path / "lower.db")
    yield db
    db.close()


@given(checkin_answers())
def test_upper_client_checkin(lower_db: sqlite3.Connection, answer: Any) -> None:
    client = UpperClient(FakeLink(answer), "relay", "upper system mgr")
    try:
        found, manifests = client.checkin(["c"])
    except RdsError as e:
        clean_error(e, limit=20_000)
        return
    for job in found:
        assert manifests[str(job.package)].id == job.package
    jobs.store(lower_db, found, manifests)
    for job in jobs.in_state(lower_db, jobs.WAIT):  # what the next steps of the pass read back
        row = lower_db.execute("SELECT record FROM jobs WHERE job_no=? AND dest=?", (job.job_no, job.dest))
        m = Manifest.from_json(json.loads(row.fetchone()[0])["manifest"])
        assert "\x00" not in m.install_dir


@given(st.sampled_from(["ack", "report", "stat"]), checkin_answers())
def test_upper_client_ack_report_and_stat(op: str, answer: Any) -> None:
    client = UpperClient(FakeLink(answer), "relay", "upper system mgr")
    job = Job(1, "c", jobs.INSTALL, PID, "now")
    try:
        if op == "ack":
            client.ack([job])
        elif op == "stat":
            assert client.stat(PID).id == PID
        else:
            assert client.report([]) >= 0
    except RdsError as e:
        clean_error(e, limit=20_000)


@given(data=st.sampled_from([PAYLOAD, PAYLOAD[:-1], PAYLOAD + b"x", b"", b"x" + PAYLOAD[1:]]) | st.binary(max_size=64),
       partial=st.sampled_from([b"", PAYLOAD[:10], b"junk", PAYLOAD + b"more"]))
def test_upper_client_fetch(tmp_path: Path, data: bytes, partial: bytes) -> None:
    store = Storehouse(tmp_path / "RDS")
    store.partial.mkdir(parents=True, exist_ok=True)
    m = Manifest(PID, len(PAYLOAD), SHA, "/opt/app")
    store.remove(PID)
    part = store.partial_path(PID, SHA)
    if partial:
        part.write_bytes(partial)
    elif part.exists():
        part.unlink()
    client = UpperClient(FakeLink({"ok": True}, data), "relay", "upper system mgr")
    try:
        client.fetch(store, m)
    except RdsError as e:
        clean_error(e)
    if store.has(PID):
        assert store.payload(PID).read_bytes() == PAYLOAD, "a package that does not match its manifest was kept"
    for p in store.partial.iterdir():
        assert p.stat().st_size <= len(PAYLOAD) + 7


def test_manifest_with_infinite_size_is_refused() -> None:
    """Bug found by fuzzing: a manifest whose size (or storage period) was Infinity, which Python's json reads,
    made Manifest.from_json raise OverflowError, so a hostile upper system crashed rdsft -a with a traceback."""
    good = Manifest(PID, 10, SHA, "/opt/app").to_json()
    for change in ({"size": float("inf")}, {"expire_days": float("-inf")}, {"size": float("nan")}):
        with pytest.raises(RdsError, match="not a valid package manifest"):
            Manifest.from_json(wire({**good, **change}))


def test_manifest_with_nul_in_install_dir_is_refused() -> None:
    """Bug found by fuzzing: an install directory holding a NUL passed the manifest check, and the install then
    failed with ValueError and a traceback."""
    good = Manifest(PID, 10, SHA, "/opt/app").to_json()
    with pytest.raises(RdsError, match="not a valid package manifest"):
        Manifest.from_json({**good, "install_dir": "/opt/a\x00b"})


def test_report_answer_with_a_bad_count() -> None:
    """Bug found by fuzzing: an upper system answering ``report`` with an ``accepted`` that is not a number
    made the lower system fail with ValueError or TypeError and a traceback."""
    for accepted in ("many", [1], float("inf"), None):
        client = UpperClient(FakeLink({"ok": True, "accepted": accepted}), "relay", "upper system mgr")
        with pytest.raises(ProtocolError, match="report"):
            client.report([])


def test_an_error_message_with_line_breaks() -> None:
    """Bug found by fuzzing: the message of an upper system's error answer was quoted as it came, so a
    hostile upper could print several lines (or rewrite the line with a carriage return) on stderr."""
    client = UpperClient(FakeLink({"ok": False, "error": "refused", "message": "no\rFAKE\nline"}), "relay", "mgr")
    with pytest.raises(RdsError) as e:
        client.checkin([])
    assert str(e.value) == "mgr refused checkin: no FAKE line"
