"""Trust (issue 12) on one machine: host keys, proven routes, pinned keys, signed jobs, manifests and
results, protocol version 2.  The attacks over real sshd are in test_trust_ssh.py."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
from pathlib import Path

import pytest
from testkit import managing_server
from trustkit import Signer, ask, request

from rds import codes, database, identity, jobs, manager, results, trust, wire
from rds.errors import ProtocolError
from rds.home import Home
from rds.packages import PackageId
from rds.service import UpperService
from rds.transport import serving

PID = PackageId.make("AB", "APP", "0100")


@pytest.fixture
def mgr(tmp_path: Path) -> Home:
    return managing_server(tmp_path)


def svc(home: Home, lower: str) -> UpperService:
    return serving(home, lower)


def checkin(home: Home, lower: str, statements: list[dict[str, object]]) -> dict[str, object]:
    return ask(home, lower, "checkin", statements=statements)


def routes(home: Home) -> dict[str, str]:
    db = database.connect(home.db_path)
    try:
        return {r["host"]: r["via"] for r in jobs.routes(db)}
    finally:
        db.close()


def log(home: Home) -> str:
    return (home.log_dir / "rds.log").read_text()


def test_host_key_is_made_once_owner_only_and_fingerprinted_as_openssh(tmp_path: Path) -> None:
    prm = tmp_path / "prm"
    prm.mkdir()
    first = identity.load(prm)
    assert stat.S_IMODE(os.stat(prm / "host_key").st_mode) == 0o600
    assert identity.load(prm).public == first.public  # not made again
    raw = base64.b64decode(first.public)
    assert first.fingerprint == "SHA256:" + base64.b64encode(hashlib.sha256(raw).digest()).decode().rstrip("=")
    sig = first.sign({"b": 1, "a": [1, "é"]})
    assert identity.verify(first.public, {"a": [1, "é"], "b": 1}, sig)  # one canonical form, any key order
    assert not identity.verify(first.public, {"a": [1, "é"], "b": 2}, sig)
    os.chmod(prm / "host_key", 0o644)
    with pytest.raises(Exception, match="readable by others"):
        identity.load(prm)


def test_a_route_is_believed_only_when_the_host_s_statements_lead_to_the_lower(mgr: Home) -> None:
    r1, r2, c1, b = Signer("r1"), Signer("r2"), Signer("c1"), Signer("b")
    assert checkin(mgr, "r2", [r2.statement("mgr"), b.statement("r2")])["ok"]
    assert checkin(mgr, "r1", [r1.statement("mgr"), c1.statement("r1")])["ok"]
    assert routes(mgr) == {"r1": "r1", "c1": "r1", "r2": "r2", "b": "r2"}
    # r1 claims b three ways: bare, replaying b's own statement, and with a statement it signed for b
    reply = checkin(mgr, "r1", [r1.statement("mgr"), c1.statement("r1"), b.statement("r2")])
    assert reply["ok"] and routes(mgr)["b"] == "r2"
    fake = Signer("b")
    checkin(mgr, "r1", [r1.statement("mgr"), c1.statement("r1"), fake.statement("r1", n=99)])
    assert routes(mgr)["b"] == "r2"
    checkin(mgr, "r1", [r1.statement("mgr"), c1.statement("r1"), r1.statement("r1", n=100, host="b")])
    assert routes(mgr)["b"] == "r2"
    text = log(mgr)
    assert "r1 claims b below it, but b's own statement leads through r2 elsewhere" in text
    assert f"r1 brought b with the host key {fake_fp(fake)}" in text
    assert f"r1 brought b with the host key {fake_fp(r1)}" in text


def fake_fp(s: Signer) -> str:
    return identity.fingerprint(s.public)


def test_a_lower_without_its_own_statement_or_naming_another_upper_is_refused(mgr: Home) -> None:
    r1 = Signer("r1")
    assert checkin(mgr, "r1", []) == {"ok": False, "error": "refused",
                                      "message": "r1 checked in without its own signed route statement"}
    assert checkin(mgr, "r1", [r1.statement("other")])["error"] == "refused"
    assert checkin(mgr, "r1", [{**r1.statement("mgr"), "n": 2}])["error"] == "refused"  # signature broken
    assert routes(mgr) == {}


def test_a_host_that_moves_is_followed_and_an_older_statement_does_not_bring_it_back(mgr: Home) -> None:
    r1, r2, c = Signer("r1"), Signer("r2"), Signer("c")
    checkin(mgr, "r1", [r1.statement("mgr"), c.statement("r1", n=1)])
    assert routes(mgr)["c"] == "r1"
    checkin(mgr, "r2", [r2.statement("mgr"), c.statement("r2", n=2)])
    assert routes(mgr)["c"] == "r2"
    assert "route to c moved from r1 to r2" in log(mgr)
    checkin(mgr, "r1", [r1.statement("mgr"), c.statement("r1", n=1)])  # r1 has not noticed yet
    assert routes(mgr)["c"] == "r2"


def test_a_changed_key_is_refused_held_in_dcmstat_and_accepted_with_one_step(mgr: Home) -> None:
    old, new = Signer("c1"), Signer("c1")
    checkin(mgr, "c1", [old.statement("mgr")])
    db = database.connect(mgr.db_path)
    try:
        n, _ = manager.create_job(db, mgr, PID, ["c1"])
        reply = checkin(mgr, "c1", [new.statement("mgr", n=5)])
        assert reply["error"] == "refused" and fake_fp(new) in reply["message"] and fake_fp(old) in reply["message"]
        row = manager.destinations(db, n)[0]
        assert row.status == "WAIT" and fake_fp(old) in row.message and fake_fp(new) in row.message
        assert "rdslink --accept c1" in row.message
        assert fake_fp(new) in log(mgr) and fake_fp(old) in log(mgr)
        assert trust.accept(db, "c1") == (old.public, new.public)
    finally:
        db.close()
    reply = checkin(mgr, "c1", [new.statement("mgr", n=1)])  # a new key counts again from anything
    assert [j["job"] for j in reply["jobs"]] == [n]


def test_strict_pinning_takes_only_enrolled_keys(mgr: Home) -> None:
    (mgr.prm / "RDSSETFL").write_text("HostName\tmgr\nKeyPinning\tSTRICT\n")
    home = Home.open(mgr.path)
    r1 = Signer("r1")
    assert checkin(home, "r1", [r1.statement("mgr")])["error"] == "refused"
    import subprocess
    import sys

    rdslink = [str(Path(sys.executable).parent / "rdslink")]
    env = {**os.environ, "RDS_HOME": str(home.path)}
    bad = subprocess.run([*rdslink, "-e", "r1", "not-a-key"], env=env, capture_output=True, text=True)
    assert bad.returncode == 3 and len(bad.stderr.splitlines()) == 1
    out = subprocess.run([*rdslink, "-e", "r1", r1.public], env=env, capture_output=True, text=True, check=True)
    assert out.stdout == f"r1: enrolled {identity.fingerprint(r1.public)}\n"
    assert checkin(home, "r1", [r1.statement("mgr")])["ok"]


def test_jobs_and_manifests_are_signed_by_the_managing_server(mgr: Home) -> None:
    r1 = Signer("r1")
    db = database.connect(mgr.db_path)
    try:
        n, _ = manager.create_job(db, mgr, PID, ["r1"])
    finally:
        db.close()
    reply = checkin(mgr, "r1", [r1.statement("mgr")])
    assert reply["signer"] == {"host": "mgr", "key": mgr.identity.public}
    job = jobs.Job.from_json(reply["jobs"][0])  # type: ignore[index]
    from rds.packages import Manifest
    m = Manifest.from_json(reply["manifests"][str(PID)])  # type: ignore[index]
    key = mgr.identity.public
    assert job.job_no == n and trust.job_fault(key, job, m) is None
    import dataclasses
    edited = dataclasses.replace(m, script="#!/bin/sh\nrm -rf /\n")
    assert "does not verify" in (trust.manifest_fault(key, edited) or "")
    assert "does not verify" in (trust.job_fault(key, job, edited) or "")
    other = dataclasses.replace(job, dest="r2")
    assert "does not verify" in (trust.job_fault(key, other, m) or "")


def test_results_must_be_signed_by_their_host_and_be_for_jobs_that_exist(mgr: Home) -> None:
    r1, c1 = Signer("r1"), Signer("c1")
    checkin(mgr, "r1", [r1.statement("mgr"), c1.statement("r1")])
    db = database.connect(mgr.db_path)
    try:
        n, _ = manager.create_job(db, mgr, PID, ["c1"])
    finally:
        db.close()
    s = svc(mgr, "r1")
    try:
        forged = r1.result(n, "c1", by="c1")  # r1 signs as if it were c1
        relayed_outcome = r1.result(n, "c1")  # r1 may not say COMPLETE about c1
        future = c1.result(n + 1, "c1")  # a job that does not exist yet
        assert s.handle(request("report", "r1", results=[forged, relayed_outcome, future])) == \
            {"ok": True, "accepted": 0, "refused": 3}
        down = r1.result(n, "c1", status=codes.EXEC_ERROR, message="could not reach c1")
        assert s.handle(request("report", "r1", results=[down]))["accepted"] == 1
        real = c1.result(n, "c1", status=codes.ERROR, message="script failed")
        assert s.handle(request("report", "r1", results=[real]))["accepted"] == 1
        late = r1.result(n, "c1", status=codes.LINE_DOWN, message="late")
        assert s.handle(request("report", "r1", results=[late]))["accepted"] == 0  # never over c1's outcome
        got = results.get(s.db, n, "c1")
        assert got is not None and (got.status, got.by) == (codes.ERROR, "c1")
    finally:
        s.close()
    text = log(mgr)
    assert f"job {n + 1}:c1, which does not exist here" in text
    assert "COMPLETE for job" in text and "signed by r1, not by c1" in text


def test_an_older_and_a_newer_protocol_refuse_each_other_naming_the_side_to_upgrade(mgr: Home) -> None:
    s = svc(mgr, "r1")
    try:
        old = s.handle({"op": "checkin", "v": 1, "host": "r1", "below": []})
        assert old == {"ok": False, "error": "protocol", "message":
                       f"the lower system r1 speaks protocol 1, this upper system speaks {wire.VERSION}: "
                       "upgrade rds on the lower system r1"}
        newer = s.handle({"op": "checkin", "v": wire.VERSION + 1, "host": "r1"})
        assert newer["message"].endswith("upgrade rds on this upper system")
    finally:
        s.close()


def test_an_existing_home_gets_its_key_and_keeps_its_jobs(tmp_path: Path) -> None:
    """A state database of the last version is upgraded in place; the key is made on first use."""
    import sqlite3

    home_path = tmp_path / "old"
    (home_path / "rdsprm").mkdir(parents=True)
    (home_path / "rdsprm" / "RDSSETFL").write_text("HostName\told\n")
    (home_path / "GROUP").mkdir()
    db = sqlite3.connect(home_path / "GROUP" / "rds.db")
    for v in (1, 2):
        for stmt in database.STATE.migrations[v]:
            db.execute(stmt)
    db.execute("INSERT INTO results (job_no, dest, status, message, finished) VALUES (1, 'old', 'COMPLETE', 'x', 't')")
    db.execute("PRAGMA user_version=2")
    db.commit()
    db.close()
    home = Home.open(home_path)
    assert not (home.prm / "host_key").exists()
    db2 = database.connect(home.db_path)
    try:
        r = results.unsent(db2)[0]
        assert (r.job_no, r.status, r.sig) == (1, "COMPLETE", "")
        signed = trust.sign_result(home.identity, "old", r)
        assert identity.verify(home.identity.public, signed.body(), signed.sig)
    finally:
        db2.close()
    assert (home.prm / "host_key").exists()
    with pytest.raises(ProtocolError):
        trust.Statement.from_json({"host": "a"})


def test_staged_media_with_a_bad_signature_are_refused_whole(tmp_path: Path) -> None:
    from conftest import Tree

    tree = Tree(tmp_path / "hosts")
    mgr = tree.add("mgr")
    client = tree.add("client", "mgr", settings="CachingPolicy\tSNEAKERNET\n")
    fresh = tree.add("fresh", "mgr", settings="CachingPolicy\tSNEAKERNET\n")
    client.run("rdsft", "-a")  # pins the managing server's key, as its first answer gives it
    pkgs = [tree.package(name=n) for n in ("APP", "TOOL")]
    medium = tmp_path / "medium"
    mgr.run("rdsstage", "-o", str(medium))
    proc = fresh.run("rdsstage", "-i", str(medium), check=False)  # it never checked in: nothing to check with
    assert proc.returncode == 3 and "managing server's key is not known" in proc.stderr
    manifest = medium / pkgs[1] / "manifest.json"
    data = json.loads(manifest.read_text())
    data["install_dir"] = "/etc"  # a carrier redirects the install
    manifest.write_text(json.dumps(data))
    proc = client.run("rdsstage", "-i", str(medium), check=False)
    assert proc.returncode == 6 and "nothing was staged" in proc.stderr and pkgs[1] in proc.stderr
    assert sorted(p.name for p in (client.path / "RDS").iterdir() if not p.name.startswith(".")) == []
    mgr.run("rdsstage", "-o", str(tmp_path / "good.tar"))
    client.run("rdsstage", "-i", str(tmp_path / "good.tar"))
    for p in pkgs:
        staged = client.path / "RDS" / p / "payload.tgz"
        assert hashlib.sha256(staged.read_bytes()).hexdigest() == \
            hashlib.sha256((mgr.path / "RDS" / p / "payload.tgz").read_bytes()).hexdigest()


def test_statements_go_up_once_and_names_alone_prove_nothing_that_changed(mgr: Home) -> None:
    r1, r2, c = Signer("r1"), Signer("r2"), Signer("c")
    own = r1.statement("mgr")

    def names_only(lower: str, statement: dict[str, object], below: list[str]) -> dict[str, object]:
        s = svc(mgr, lower)
        try:
            return s.handle(request("checkin", lower, statements=[statement], below=below))
        finally:
            s.close()

    assert names_only("r1", own, ["c"])["unproven"] == ["c"]  # never seen: it must send c's statement
    assert checkin(mgr, "r1", [own, c.statement("r1")])["unproven"] == []
    assert names_only("r1", own, ["c"])["unproven"] == [] and routes(mgr)["c"] == "r1"
    checkin(mgr, "r2", [r2.statement("mgr"), c.statement("r2", n=2)])
    reply = names_only("r1", own, ["c"])  # the same names as last time: but c has moved since
    assert reply["unproven"] == ["c"] and routes(mgr)["c"] == "r2"


def test_a_relay_sends_again_what_its_upper_system_lost(tmp_path: Path) -> None:
    from conftest import Tree

    tree = Tree(tmp_path / "hosts")
    mgr = tree.add("mgr")
    tree.add("relay", "mgr")
    tree.add("client", "relay")
    tree.check_in_upward(["client", "relay"])
    assert routes(mgr.home()) == {"relay": "relay", "client": "relay"}
    db = database.connect(mgr.home().db_path)
    with database.Transaction(db):  # the managing server's statements are lost (a restored backup)
        db.execute("DELETE FROM statements")
        db.execute("DELETE FROM routes")
        db.execute("DELETE FROM believed WHERE name LIKE 'proof:%'")
    db.close()
    tree["relay"].run("rdsft", "-a")  # told 'unproven', it sends client's statement again at once
    assert routes(mgr.home()) == {"relay": "relay", "client": "relay"}


def test_a_large_batch_of_signatures_is_checked_as_one_by_one() -> None:
    s = Signer("h")
    items = [(s.public, {"n": i}, s.sign({"n": i})) for i in range(600)]
    items[17] = (s.public, {"n": 17}, s.sign({"n": 18}))  # a signature of something else
    items[599] = (Signer("h").public, {"n": 599}, s.sign({"n": 599}))  # another key
    assert identity.verify_many(items) == [i not in (17, 599) for i in range(600)]


def test_jobs_of_one_package_id_with_other_manifests_are_handed_out_one_manifest_at_a_time(mgr: Home) -> None:
    """A DELETE job made while the package was gone carries a stand-in manifest; registered again, an Install
    job carries the real one.  An answer carries one manifest a package: the job whose manifest it is not
    waits for a later check-in, then verifies with its own (before, it was signed against the other's and
    refused at the relay as forged)."""
    from rds.packages import Manifest
    from rds.storehouse import Storehouse

    other = PackageId.make("AB", "NEW", "0100")
    r1 = Signer("r1")
    db = database.connect(mgr.db_path)
    try:
        gone, _ = manager.create_job(db, mgr, other, ["r1"], type_=jobs.DELETE)
        src = mgr.path.parent / "src"
        Storehouse(mgr.packages).register(other, src, "/opt/new", sign=lambda m: trust.sign_manifest(mgr.identity, m))
        install, _ = manager.create_job(db, mgr, other, ["r1"])
    finally:
        db.close()
    key = mgr.identity.public
    handed = []
    for _ in range(2):
        reply = checkin(mgr, "r1", [r1.statement("mgr")])
        found = [jobs.Job.from_json(j) for j in reply["jobs"]]  # type: ignore[attr-defined]
        assert len(found) == 1
        m = Manifest.from_json(reply["manifests"][str(other)])  # type: ignore[index]
        assert trust.job_fault(key, found[0], m) is None
        handed.append((found[0].job_no, found[0].type, m.size))
        ask(mgr, "r1", "ack", jobs=[[found[0].job_no, "r1"]])
    assert handed[0][:2] == (install, jobs.INSTALL) and handed[0][2] > 0
    assert handed[1] == (gone, jobs.DELETE, 0)
    assert "wait for a later check-in" in log(mgr)
