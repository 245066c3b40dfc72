"""Issue 16 part 2: an idle check-in in one round trip.

A lower system whose last route statement names its upper system sends its
check-in before rds-serve's hello comes; the hello and the answer then come
in one turn of the link (connection.STATS["turns"]).  When the hello names
another upper system (the lower was moved, or its upper rebuilt under another
name), the answer to that check-in (a refusal) is dropped and the check-in is
made again with a statement naming the new upper: nothing lost or doubled.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from conftest import Host, Tree, installs
from sshd import Sshd, have_sshd, serve_command
from testkit import laid_out, ssh_settings

from rds import poller
from rds.transport import connection, local

needs_sshd = pytest.mark.skipif(not have_sshd(), reason="needs /usr/sbin/sshd")


def counted(host: Host) -> tuple[int, int, poller.PassReport]:
    """One pass of ``host`` in this process: (requests sent, turns waited, its report)."""
    before = dict(connection.STATS)
    report = poller.run_once(host.home())
    return (connection.STATS["requests"] - before["requests"], connection.STATS["turns"] - before["turns"],
            report)


def routes(host: Host) -> dict[str, str]:
    with sqlite3.connect(host.path / "GROUP" / "rds.db") as db:
        return dict(db.execute("SELECT host, via FROM routes"))


def statement_upper(host: Host) -> str:
    with sqlite3.connect(host.path / "GROUP" / "rds.db") as db:
        return str(db.execute("SELECT upper FROM statements WHERE host=?", (host.name,)).fetchone()[0])


def log_of(host: Host) -> str:
    return "\n".join(p.read_text() for p in sorted(host.home().log_dir.glob("rds.log*")) if p.is_file())


def result_of(mgr: Host, job: str) -> dict[str, dict[str, str]]:
    rows = json.loads(mgr.run("dcmstat", "-n", job, "--json", check=False).stdout)
    return {r["dest"]: r for r in rows}


def dcmjexe(mgr: Host, pid: str, dest: str) -> str:
    return mgr.run("dcmjexe", "-r", pid, "-h", dest).stdout.strip()


@pytest.fixture
def sshd(tmp_path: Path) -> Sshd:
    server = Sshd(tmp_path / "sshd")
    yield server
    server.stop()


@needs_sshd
def test_an_idle_check_in_over_ssh_is_one_turn_of_the_link(tree: Tree, sshd: Sshd) -> None:
    mgr = laid_out(tree.add("mgr"))
    key = sshd.add_key("relay1", command=serve_command("relay1", mgr.path))
    sshd.start()
    relay = tree.add("relay1", settings=ssh_settings(sshd, key, upper=mgr))
    n, turns, _ = counted(relay)  # the first check-in: no statement yet, so it waits for the hello first
    assert turns >= 2 and statement_upper(relay) == "mgr"
    n, turns, report = counted(relay)
    assert (n, turns) == (1, 1), "an idle pass: one request, sent before the hello, one turn"
    assert report.received == 0 and report.sent == 0
    assert routes(mgr) == {"relay1": "relay1"}
    # a job comes through the pipelined check-in as through any other, installed once
    pid = tree.package()
    job = dcmjexe(mgr, pid, "relay1")
    _, turns, report = counted(relay)
    assert report.received == 1 and installs(relay) == 1 and report.sent == 1
    assert result_of(mgr, job)["relay1"]["status"] == "COMPLETE"
    n, turns, report = counted(relay)
    assert (n, turns, report.received, installs(relay)) == (1, 1, 0, 1)
    assert "refused" not in log_of(mgr)


def moved_tree(tree: Tree) -> tuple[Host, Host, Host]:
    mgr = tree.add("mgr")
    ra, rb = tree.add("ra", "mgr"), tree.add("rb", "mgr")
    return mgr, ra, rb


@needs_sshd
def test_a_moved_upper_over_ssh_drops_the_pipelined_answer_and_checks_in_again(tree: Tree, sshd: Sshd) -> None:
    """c1 reaches ra over SSH; then its key is forced to rb's home, and its ManagingHost names rb's home
    (an administrator moved it): its check-in naming ra is refused by rb, dropped, and made again."""
    mgr, ra, rb = moved_tree(tree)
    for h in (mgr, ra, rb):
        laid_out(h)
    key = sshd.add_key("c1", command=serve_command("c1", ra.path))
    sshd.start()
    c1 = tree.add("c1", settings=ssh_settings(sshd, key, upper=ra))
    counted(c1)
    tree.check_in_upward(["ra", "rb"])
    assert statement_upper(c1) == "ra" and routes(mgr).get("c1") == "ra"
    sshd.authorized_keys.write_text(sshd.authorized_keys.read_text().replace(str(ra.path), str(rb.path)))
    settings = c1.path / "rdsprm" / "RDSSETFL"
    settings.write_text(settings.read_text().replace(sshd.url(ra.path), sshd.url(rb.path)))

    n, turns, report = counted(c1)
    assert n == 2 and turns == 2, "the pipelined check-in (dropped), then one naming rb"
    assert statement_upper(c1) == "rb" and routes(rb) == {"c1": "c1"}
    said = [line for line in log_of(c1).splitlines() if "is rb now, not ra" in line]
    assert len(said) == 1
    assert "refused" not in log_of(rb), "a moved lower's first check-in is not an attack"
    n, turns, _ = counted(c1)  # and from now on one turn again
    assert (n, turns) == (1, 1)

    # nothing lost or doubled: a job made after the move reaches c1 through rb, installed once
    rb.run("rdsft", "-a")
    assert routes(mgr).get("c1") == "rb"
    pid = tree.package()
    job = dcmjexe(mgr, pid, "c1")
    rb.run("rdsft", "-a")
    _, _, report = counted(c1)
    assert report.received == 1 and installs(c1) == 1
    counted(c1)
    rb.run("rdsft", "-a")
    assert result_of(mgr, job)["c1"]["status"] == "COMPLETE" and installs(c1) == 1


def test_a_check_in_on_this_machine_is_sent_ahead_and_a_moved_upper_answered_right(
        tree: Tree, monkeypatch: pytest.MonkeyPatch) -> None:
    mgr, ra, rb = moved_tree(tree)
    c1 = tree.add("c1", "ra")
    tree.check_in_upward(["c1", "ra", "rb"])
    ahead: list[str] = []
    send = local.LocalLink.send

    def spy(self: local.LocalLink, msg: dict) -> None:  # type: ignore[type-arg]
        ahead.append(msg["op"])
        send(self, msg)
    monkeypatch.setattr(local.LocalLink, "send", spy)
    pid = tree.package()
    job = dcmjexe(mgr, pid, "c1")
    ra.run("rdsft", "-a")
    poller.run_once(c1.home())
    assert ahead == ["checkin"] and installs(c1) == 1
    ra.run("rdsft", "-a")
    assert result_of(mgr, job)["c1"]["status"] == "COMPLETE"

    settings = c1.path / "rdsprm" / "RDSSETFL"
    settings.write_text(settings.read_text().replace(str(ra.path), str(rb.path)))
    ahead.clear()
    report = poller.run_once(c1.home())
    assert ahead == ["checkin"] and statement_upper(c1) == "rb" and routes(rb) == {"c1": "c1"}
    assert report.received == 0 and installs(c1) == 1
    rb.run("rdsft", "-a")
    assert routes(mgr).get("c1") == "rb"
    job = dcmjexe(mgr, pid, "c1")  # again, after the move: through rb, once
    rb.run("rdsft", "-a")
    report = poller.run_once(c1.home())
    assert report.received == 1 and installs(c1) == 2
    rb.run("rdsft", "-a")
    assert result_of(mgr, job)["c1"]["status"] == "COMPLETE" and installs(c1) == 2
    assert "refused" not in log_of(rb)


def test_an_idle_check_in_rewrites_no_route_at_the_upper(tree: Tree) -> None:
    """Part 5: the upper records an idle check-in in one commit, and does not rewrite the routes below
    that did not change; the lower's last check-in still moves on."""
    tree.add("mgr")
    tree.add("relay", "mgr")
    for c in ("c1", "c2"):
        tree.add(c, "relay")
    tree.check_in_upward(["c1", "c2", "relay"])

    def at_mgr() -> tuple[dict[str, tuple[str, float]], float, float]:
        with sqlite3.connect(tree["mgr"].path / "GROUP" / "rds.db") as db:
            rows = {h: (v, s) for h, v, s in db.execute("SELECT host, via, seen FROM routes")}
            seen = db.execute("SELECT seen FROM lowers WHERE name='relay'").fetchone()[0]
            checkin = db.execute("SELECT checkin FROM routes WHERE host='relay'").fetchone()[0]
        return rows, seen, checkin

    routes0, seen0, checkin0 = at_mgr()
    assert set(routes0) == {"relay", "c1", "c2"} and all(v == "relay" for v, _ in routes0.values())
    tree["relay"].run("rdsft", "-a")
    routes1, seen1, checkin1 = at_mgr()
    assert routes1 == routes0, "unchanged routes are not written again"
    assert seen1 > seen0 and checkin1 > checkin0, "the relay's last check-in is kept"
    tree.add("c3", "relay").run("rdsft", "-a")
    tree["relay"].run("rdsft", "-a")
    routes2, _, _ = at_mgr()
    assert routes2["c3"][0] == "relay" and {h: routes2[h] for h in routes0} == routes0
