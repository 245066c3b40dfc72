"""The attacks of issue 12 over real sshd (tests/sshd.py), with the forced commands rdslink writes.

mgr > relay1 > client1 and mgr > relay2 > client2, every link over SSH.  An
attacker holds relay1's or client1's home (its SSH key and host key) and speaks
the protocol by hand; the managing server must believe nothing it cannot prove,
and the honest path must still complete.
"""

from __future__ import annotations

import json
import os
import sqlite3
import sys
from pathlib import Path
from typing import Any

import pytest
import sshd
from conftest import Host, Tree, installs
from sshd import Sshd
from testkit import Fleet, fleet_fixture, link_up
from trustkit import Signer, request

from rds import wire
from rds.client import UpperClient
from rds.identity import fingerprint
from rds.transport.link import SSHLink

pytestmark = pytest.mark.skipif(not sshd.have_sshd() and os.environ.get("CI") != "true",
                                reason="OpenSSH's sshd is not installed (bin/rds-test installs it)")

sshd_factory = sshd.sshd_factory
FLEET = [("relay1", "mgr"), ("relay2", "mgr"), ("client1", "relay1"), ("client2", "relay2")]


built = fleet_fixture(FLEET, ["client1", "client2", "relay1", "relay2"])


@pytest.fixture
def fleet(built: Fleet) -> tuple[Tree, Sshd]:
    return built.laid_out(), built.server


def connect_as(host: Host) -> UpperClient:
    """The attacker's own connection: the host's real SSH key, the protocol spoken by hand."""
    home = host.home()
    assert home.settings.managing_host is not None
    link = SSHLink.open(home.settings, home.settings.managing_host)
    return UpperClient(link, home.host, link.where)


def state(host: Host) -> sqlite3.Connection:
    db = sqlite3.connect(host.path / "GROUP" / "rds.db")
    db.row_factory = sqlite3.Row
    return db


def at_mgr(tree: Tree, job: int, dest: str) -> tuple[str | None, str | None, tuple[str, str] | None]:
    """(route, job state, (result status, signer)) at the managing server, read straight from its database."""
    db = state(tree["mgr"])
    try:
        route = db.execute("SELECT via FROM routes WHERE host=?", (dest,)).fetchone()
        st = db.execute("SELECT state FROM jobs WHERE job_no=? AND dest=?", (job, dest)).fetchone()
        res = db.execute("SELECT status, signer FROM results WHERE job_no=? AND dest=?", (job, dest)).fetchone()
        return (route and route[0], st and st[0], res and (res[0], res[1]))
    finally:
        db.close()


def dcmstat(tree: Tree, job: int) -> list[dict[str, Any]]:
    return json.loads(tree["mgr"].run("dcmstat", "-n", str(job), "--json", check=False).stdout)  # type: ignore[no-any-return]


def own_statement(host: Host, upper: str, n: int) -> dict[str, Any]:
    me = host.home().identity
    body = {"kind": "route", "host": host.name, "upper": upper, "n": n, "key": me.public}
    return {**body, "sig": me.sign(body)}


def genuine_statement(tree: Tree, of: str, held_by: str) -> dict[str, Any]:
    db = state(tree[held_by])
    try:
        row = db.execute("SELECT host, upper, n, key, sig FROM statements WHERE host=?", (of,)).fetchone()
    finally:
        db.close()
    return {"kind": "route", "host": row[0], "upper": row[1], "n": row[2], "key": row[3], "sig": row[4]}


def honest_round(tree: Tree) -> None:
    """Every host checks in, relays again last so that results reach the managing server (an install that
    fails exits 4, which the failing-script test wants)."""
    for name in ["relay1", "relay2", "client1", "client2", "relay1", "relay2"]:
        proc = tree[name].run("rdsft", "-a", check=False)
        assert proc.returncode in (0, 4), proc.stderr


def test_enrolment_lines_are_the_documented_forced_commands_and_idempotent(fleet: tuple[Tree, Sshd]) -> None:
    tree, server = fleet
    lines = server.authorized_keys.read_text().splitlines()
    serve = Path(sys.executable).parent / "rds-serve"
    assert lines[0].startswith(f'restrict,command="{serve} --lower relay1 --home {tree.root / "mgr"}" ssh-ed25519 ')
    assert len(lines) == 4
    before = server.authorized_keys.read_bytes()
    line = tree["relay1"].run("rdslink", "-k").stdout.strip()
    assert tree["mgr"].run("rdslink", "-a", line, "-f", str(server.authorized_keys)).stdout.strip() == \
        f"relay1: unchanged in {server.authorized_keys}"
    assert server.authorized_keys.read_bytes() == before
    listed = json.loads(tree["mgr"].run("rdslink", "-l", "--json", "-f", str(server.authorized_keys)).stdout)
    relay1 = next(r for r in listed if r["name"] == "relay1")
    assert relay1["hosts"] == ["client1"] and relay1["last_checkin"] and relay1["enrolled"]
    assert relay1["host_key"] == fingerprint(tree["relay1"].home().identity.public)
    assert relay1["ssh_keys"][0].startswith("SHA256:")
    wake = tree["mgr"].run("rdslink", "-k").stdout.strip()
    tree["relay1"].run("rdslink", "-w", wake, "-f", str(server.authorized_keys))
    assert f'rds-wake --home {tree.root / "relay1"}"' in server.authorized_keys.read_text()
    out = tree["mgr"].run("rdslink", "-d", "relay1", "-f", str(server.authorized_keys)).stdout
    assert "1 line(s) removed" in out and "2 route(s) forgotten" in out
    assert "--lower relay1 " not in server.authorized_keys.read_text()
    assert tree["relay1"].run("rdsft", "-a", check=False).returncode == 253  # its key no longer logs in


def test_a_sibling_relay_cannot_take_over_another_branch_s_host(fleet: tuple[Tree, Sshd]) -> None:
    tree, _ = fleet
    pkg = tree.package()
    n = int(tree["mgr"].run("dcmjexe", "-r", pkg, "-h", "client2").stdout)
    before = at_mgr(tree, n, "client2")
    assert before == ("relay2", "WAIT", None)
    evil = connect_as(tree["relay1"])
    try:
        fake = Signer("client2")
        claims = [genuine_statement(tree, "client2", "relay2"),  # replayed: it leads to relay2
                  fake.statement("relay1", n=2**62),  # signed with a key of its own
                  own_statement(tree["relay1"], "relay1", 2**62) | {"host": "client2"}]
        for claim in claims:
            reply = evil.link.call(request("checkin", "relay1", statements=[own_statement(tree["relay1"], "mgr", 2**61),
                                                                           claim]))
            assert reply["ok"] and reply["jobs"] == []
        assert evil.link.call(request("ack", "relay1", jobs=[[n, "client2"]])) == {"ok": True, "taken": 0}
        me = tree["relay1"].home().identity
        as_client2 = Signer("client2").result(n, "client2")
        by_relay1 = {"job": n, "dest": "client2", "status": "COMPLETE", "message": "done",
                     "finished": "2026-12-01T10:00:00", "by": "relay1"}
        by_relay1["sig"] = me.sign({"kind": "result", **{k: by_relay1[k] for k in
                                                            ("job", "dest", "status", "message", "finished", "by")}})
        reply = evil.link.call(request("report", "relay1", results=[as_client2, by_relay1]))
        assert reply == {"ok": True, "accepted": 0, "refused": 2}
        assert evil.link.call(request("stat", "relay1", package=pkg))["error"] == "refused"
    finally:
        evil.link.close()
    assert at_mgr(tree, n, "client2") == before
    assert dcmstat(tree, n)[0]["status"] == "WAIT"
    log = (tree["mgr"].path / "log" / "rds.log").read_text()
    assert "relay1 claims client2 below it" in log and "relay1 brought client2" in log
    honest_round(tree)
    assert at_mgr(tree, n, "client2") == ("relay2", "DONE", ("COMPLETE", "client2"))
    assert (tree["client2"].installed() / "bin/app.sh").is_file()
    assert not (tree["relay1"].installed() / "bin/app.sh").exists()


def test_a_leaf_cannot_take_over_a_host_through_its_honest_relay(fleet: tuple[Tree, Sshd]) -> None:
    tree, _ = fleet
    pkg = tree.package()
    n = int(tree["mgr"].run("dcmjexe", "-r", pkg, "-h", "client2").stdout)
    evil = connect_as(tree["client1"])
    try:
        fake = Signer("client2")  # relay1 has never seen client2: it pins what the leaf brings
        reply = evil.link.call(request("checkin", "client1", statements=[
            own_statement(tree["client1"], "relay1", 2**61), fake.statement("client1", n=2**62)]))
        assert reply["ok"]
        reply = evil.link.call(request("report", "client1", results=[fake.result(n, "client2")]))
        # relay1 holds no such job: it takes client2's word (as the key pinned there checks it) only to pass
        # it up, as it would for a host of a relay that moved below client1; the managing server checks it again
        assert reply == {"ok": True, "accepted": 1, "refused": 0}
    finally:
        evil.link.close()
    tree["relay1"].run("rdsft", "-a")  # honest, it passes its subtree's statements and that result up
    assert at_mgr(tree, n, "client2") == ("relay2", "WAIT", None)
    log = (tree["mgr"].path / "log" / "rds.log").read_text()
    assert f"relay1 brought client2 with the host key {fingerprint(fake.public)}" in log
    assert f"relay1 reported a result for job {n}:client2 that does not verify with client2's key" in log
    with sqlite3.connect(tree["relay1"].path / "GROUP" / "rds.db") as db:  # refused for good: not kept
        assert db.execute("SELECT COUNT(*) FROM results WHERE dest='client2'").fetchone() == (0,)
    honest_round(tree)
    assert at_mgr(tree, n, "client2")[2] == ("COMPLETE", "client2")


def test_a_result_for_a_future_job_is_refused_and_the_real_outcome_kept(fleet: tuple[Tree, Sshd]) -> None:
    tree, _ = fleet
    pkg = tree.package(script="#!/bin/sh\nexit 3\n")
    first = int(tree["mgr"].run("dcmjexe", "-r", pkg, "-h", "relay2").stdout)
    future = first + 1
    evil = connect_as(tree["relay1"])
    try:
        me = tree["relay1"].home().identity
        items = []
        for dest in ("client2", "relay1"):
            body = {"kind": "result", "job": future, "dest": dest, "status": "COMPLETE", "message": "done",
                    "finished": "2026-12-01T10:00:00", "by": "relay1"}
            items.append({**{k: v for k, v in body.items() if k != "kind"}, "sig": me.sign(body)})
        assert evil.link.call(request("report", "relay1", results=items)) == {"ok": True, "accepted": 0,
                                                                              "refused": 2}
    finally:
        evil.link.close()
    assert int(tree["mgr"].run("dcmjexe", "-r", pkg, "-h", "client2", "relay1").stdout) == future
    honest_round(tree)
    assert at_mgr(tree, future, "client2")[2] == ("ERROR", "client2")
    assert at_mgr(tree, future, "relay1")[2] == ("ERROR", "relay1")
    assert {r["status"] for r in dcmstat(tree, future)} == {"ERROR"}


def edit_relay_job(relay: Host, job: int, dest: str, change: Any) -> None:
    db = state(relay)
    try:
        record = json.loads(db.execute("SELECT record FROM jobs WHERE job_no=? AND dest=?", (job, dest)).fetchone()[0])
        change(record)
        db.execute("UPDATE jobs SET record=? WHERE job_no=? AND dest=?", (json.dumps(record), job, dest))
        db.commit()
    finally:
        db.close()


def test_a_relay_that_edits_a_manifest_is_refused_and_the_honest_path_completes(fleet: tuple[Tree, Sshd]) -> None:
    tree, _ = fleet
    pkg = tree.package()
    n = int(tree["mgr"].run("dcmjexe", "-r", pkg, "-h", "client1", "client2").stdout)
    tree.check_in_upward(["relay1", "relay2"])
    planted = tree.root / "planted"

    def add_script(record: dict[str, Any]) -> None:
        record["manifest"]["script"] = f"#!/bin/sh\ntouch {planted}\n"

    edit_relay_job(tree["relay1"], n, "client1", add_script)  # relay1 is compromised
    out = tree["client1"].run("rdsft", "-a").stdout
    assert "jobs received: 0" in out
    assert not planted.exists() and not (tree["client1"].installed() / "bin/app.sh").exists()
    honest_round(tree)
    assert at_mgr(tree, n, "client2")[2] == ("COMPLETE", "client2")
    status, signer = at_mgr(tree, n, "client1")[2] or ("", "")
    assert (status, signer) == ("ERROR", "client1")
    row = next(r for r in dcmstat(tree, n) if r["dest"] == "client1")
    assert "does not verify with the managing server's key" in row["message"]
    assert not planted.exists()


def test_a_relay_that_forges_a_job_or_a_result_is_refused(fleet: tuple[Tree, Sshd]) -> None:
    tree, _ = fleet
    pkg = tree.package()
    n = int(tree["mgr"].run("dcmjexe", "-r", pkg, "-h", "client1").stdout)
    tree["relay1"].run("rdsft", "-a")

    def forge(record: dict[str, Any]) -> None:  # relay1 makes a job n+100 of its own for the same package
        record["job"] = n + 100
        record["sig"] = tree["relay1"].home().identity.sign({"kind": "job", "job": n + 100})

    db = state(tree["relay1"])
    try:
        row = db.execute("SELECT * FROM jobs WHERE job_no=?", (n,)).fetchone()
        record = json.loads(row["record"])
        forge(record)
        db.execute("INSERT INTO jobs (job_no, dest, type, package, created, received, state, record)"
                   " VALUES (?, 'client1', 'INSTALL', ?, ?, 0, 'WAIT', ?)",
                   (n + 100, row["package"], row["created"], json.dumps(record)))
        # and a COMPLETE of its own for client1's real job, signed with its own key
        forged = {"kind": "result", "job": n, "dest": "client1", "status": "COMPLETE", "message": "installed",
                  "finished": "2026-12-01T10:00:00", "by": "relay1"}
        db.execute("INSERT INTO results (job_no, dest, status, message, finished, signer, sig) VALUES (?, 'client1', "
                   "'COMPLETE', 'installed', '2026-12-01T10:00:00', 'relay1', ?)",
                   (n, tree["relay1"].home().identity.sign(forged)))
        db.commit()
    finally:
        db.close()
    tree["relay1"].run("rdsft", "-a")  # sends the forged COMPLETE, signed by relay1
    assert at_mgr(tree, n, "client1")[2] is None
    out = tree["client1"].run("rdsft", "-a").stdout
    assert f"{n + 100}    client1  ERROR" not in out  # a host below ends it, as EXEC-ERROR or ERROR
    assert installs(tree["client1"]) == 1  # the real job, signed, installs once; the forged one never
    tree["relay1"].run("rdsft", "-a")
    assert at_mgr(tree, n + 100, "client1") == ("relay1", None, None)  # the forged job's ERROR refused
    log = (tree["mgr"].path / "log" / "rds.log").read_text()
    assert f"COMPLETE for job {n}:client1 signed by relay1, not by client1" in log
    assert f"job {n + 100}:client1, which does not exist here" in log


def test_a_host_that_moves_to_another_relay_is_followed(fleet: tuple[Tree, Sshd], sshd_factory: Any) -> None:
    tree, _ = fleet
    other = sshd_factory("sshd-relay2").start()  # relay2's own machine
    link_up(tree, other, "client1", "relay2")
    setfl = tree["client1"].path / "rdsprm" / "RDSSETFL"
    kept = [line for line in setfl.read_text().splitlines() if not line.startswith(("ManagingHost", "KnownHosts"))]
    setfl.write_text("\n".join(kept) + f"\nManagingHost\t{other.url(tree.root / 'relay2')}\n"
                     f"KnownHostsFile\t{other.known_hosts}\n")
    tree.check_in_upward(["client1", "relay2", "relay1"])  # relay1 still lists client1's older statement
    pkg = tree.package()
    n = int(tree["mgr"].run("dcmjexe", "-r", pkg, "-h", "client1").stdout)
    assert at_mgr(tree, n, "client1")[0] == "relay2"
    assert "route to client1 moved from relay1 to relay2" in (tree["mgr"].path / "log" / "rds.log").read_text()
    tree.check_in_upward(["relay2", "client1", "relay2"])
    assert at_mgr(tree, n, "client1")[2] == ("COMPLETE", "client1")


def test_a_changed_host_key_holds_the_host_s_jobs_until_accepted(fleet: tuple[Tree, Sshd]) -> None:
    tree, _ = fleet
    old = tree["relay1"].home().identity.public
    pkg = tree.package()
    n = int(tree["mgr"].run("dcmjexe", "-r", pkg, "-h", "relay1").stdout)
    (tree["relay1"].path / "rdsprm" / "host_key").unlink()  # a reinstalled host: a new key
    new = tree["relay1"].home().identity.public
    proc = tree["relay1"].run("rdsft", "-a", check=False)
    assert proc.returncode == 253 and fingerprint(new) in proc.stderr and fingerprint(old) in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    row = dcmstat(tree, n)[0]
    assert row["status"] == "WAIT" and fingerprint(old) in row["message"] and fingerprint(new) in row["message"]
    assert "rdslink --accept relay1" in row["message"]
    assert at_mgr(tree, n, "relay1")[1] == "WAIT"
    log = (tree["mgr"].path / "log" / "rds.log").read_text()
    assert fingerprint(old) in log and fingerprint(new) in log
    assert "accepted" in tree["mgr"].run("rdslink", "--accept", "relay1").stdout
    tree["relay1"].run("rdsft", "-a")
    assert at_mgr(tree, n, "relay1")[2] == ("COMPLETE", "relay1")


def test_protocol_1_upper_is_refused_naming_the_side_to_upgrade(tree: Tree, sshd_factory: Any) -> None:
    server = sshd_factory().start()
    old = tree.root.parent / "old-serve"
    old.write_text(f"#!{sys.executable}\nimport json, struct, sys\n"
                   "d = json.dumps({'ok': True, 'serve': 1, 'upper': 'mgr'}).encode()\n"
                   "sys.stdout.buffer.write(struct.pack('>I', len(d)) + d)\n")
    old.chmod(0o755)
    key = server.add_key("relay1", command=str(old))
    host = tree.add("relay1", settings=f"ManagingHost\t{server.url()}\nIdentityFile\t{key}\n"
                                       f"KnownHostsFile\t{server.known_hosts}\nConnectTimeout\t5s\n")
    proc = host.run("rdsft", "-a", check=False)
    assert proc.returncode == 252
    assert proc.stderr.strip() == (f"rdsft: the upper system {server.user}@127.0.0.1:{server.port} speaks protocol 1, "
                                   f"this lower system speaks {wire.VERSION}: upgrade rds on the upper system "
                                   f"{server.user}@127.0.0.1:{server.port}")
