"""Issue 16 part 5: kept sessions.  rdsma (KeepConnection YES) keeps its SSH session and its rds-serve session
to the upper system open between polls; the upper's rds-serve (a child of the resident server) serves pass
after pass, each checked as a new session's would be, bounded in idle time and in number.

Logins are counted in sshd's own log ("Accepted publickey"), installs by the install script's own record.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import BIN, Host, Tree, installs, wait_for
from sshd import Sshd, have_sshd, serve_command
from testkit import laid_out, ssh_settings

from rds import poller, resident
from rds.errors import CommunicationError, Refused
from rds.transport import Kept

pytestmark = pytest.mark.skipif(not have_sshd(), reason="needs /usr/sbin/sshd")

KEEP = "KeepConnection\tYES\n"


def logins(server: Sshd) -> int:
    return server.log().count("Accepted publickey")


def log_of(host: Host) -> str:
    return "\n".join(p.read_text() for p in sorted(host.path.glob("log/rds.log*")) if p.is_file())


def no_wait(seconds: float) -> None:
    raise AssertionError(f"waited {seconds}s before logging in again: a kept session's end is no failure")


@pytest.fixture
def sshd(tmp_path: Path) -> Iterator[Sshd]:
    server = Sshd(tmp_path / "sshd")
    yield server
    server.stop()


class Upper:
    """The managing server with its resident server running, as rdsma runs it (rds.resident.command)."""

    def __init__(self, host: Host) -> None:
        self.host = host
        argv, env = resident.command(host.path)
        self.proc = subprocess.Popen(argv, env=env, stdin=subprocess.PIPE)
        wait_for(lambda: resident.socket_path(host.path).exists())

    def children(self) -> list[int]:
        try:
            return [int(c) for c in Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()]
        except OSError:
            return []

    def stop(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            self.proc.wait(30)


def hierarchy(tree: Tree, sshd: Sshd, lowers: list[str], upper_settings: str = "") -> tuple[Host, list[Host]]:
    mgr = laid_out(tree.add("mgr", settings=upper_settings))
    keys = {n: sshd.add_key(n, command=serve_command(n, mgr.path)) for n in lowers}
    sshd.start()
    return mgr, [tree.add(n, settings=ssh_settings(sshd, k, upper=mgr) + KEEP) for n, k in keys.items()]


@pytest.fixture
def upper_of() -> Iterator[list[Upper]]:
    started: list[Upper] = []
    yield started
    for u in started:
        u.stop()


def dcmjexe(mgr: Host, pid: str, dest: str) -> str:
    return mgr.run("dcmjexe", "-r", pid, "-h", dest).stdout.strip()


def status_of(mgr: Host, job: str) -> dict[str, str]:
    rows = json.loads(mgr.run("dcmstat", "-n", job, "--json", check=False).stdout)
    return {r["dest"]: r["status"] for r in rows}


def test_passes_on_one_kept_session_one_login_and_a_job_of_the_third_pass_installed_once(
        tree: Tree, sshd: Sshd, upper_of: list[Upper]) -> None:
    mgr, [c1] = hierarchy(tree, sshd, ["c1"])
    upper_of.append(Upper(mgr))
    kept = Kept(60)
    pid = tree.package()
    for n in range(1, 6):
        if n == 3:
            job = dcmjexe(mgr, pid, "c1")
        report = poller.run_once(c1.home(), sleep=no_wait, kept=kept)
        assert kept.client is not None and kept.client.kept > 0, f"pass {n}: the upper system keeps the session"
        if n == 3:
            assert report.received == 1 and len(report.installed) == 1
    assert logins(sshd) == 1 and kept.logins == 1, "five passes, one SSH login"
    assert installs(c1) == 1, "the job handed out on the third pass ran once"
    kept.close()
    wait_for(lambda: "served c1:" in log_of(mgr))
    assert "c1: 5 pass(es) on one kept session" in log_of(mgr)
    assert status_of(mgr, job) == {"c1": "COMPLETE"}


def test_a_lower_revoked_mid_session_gets_nothing_more(tree: Tree, sshd: Sshd, upper_of: list[Upper]) -> None:
    mgr, [c1] = hierarchy(tree, sshd, ["c1"])
    upper_of.append(Upper(mgr))
    kept = Kept(60)
    poller.run_once(c1.home(), kept=kept)
    assert kept.client is not None and kept.client.kept > 0
    job = dcmjexe(mgr, tree.package(), "c1")
    mgr.run("rdslink", "-d", "c1", "-f", str(sshd.authorized_keys))  # its line and its routes go
    with pytest.raises(CommunicationError, match="did not accept the key"):
        poller.run_once(c1.home(), sleep=lambda s: None, kept=kept)  # the kept session ends; a new login is refused
    assert "c1: kept session closed before its next pass: c1 was forgotten or revoked" in log_of(mgr)
    assert installs(c1) == 0 and status_of(mgr, job) == {"c1": "WAIT"}, "nothing more was handed to c1"


def test_a_lower_forgotten_mid_session_is_checked_afresh(tree: Tree, sshd: Sshd, upper_of: list[Upper]) -> None:
    mgr, [c1] = hierarchy(tree, sshd, ["c1"], upper_settings="KeyPinning\tSTRICT\n")
    mgr.run("rdslink", "-e", "c1", c1.run("rdslink", "-k").stdout.split()[2])  # enrolled beforehand
    upper_of.append(Upper(mgr))
    kept = Kept(60)
    poller.run_once(c1.home(), kept=kept)
    assert kept.client is not None and kept.client.kept > 0
    dcmjexe(mgr, tree.package(), "c1")
    mgr.run("dcmhosts", "-d", "c1")  # forgotten: its pinned key goes, and STRICT takes none not enrolled
    with pytest.raises(Refused, match="c1"):
        poller.run_once(c1.home(), sleep=lambda s: None, kept=kept)
    assert "c1: kept session closed before its next pass: c1 was forgotten or revoked" in log_of(mgr)
    assert logins(sshd) == 2, "the new login was checked as any new session, and refused"
    assert installs(c1) == 0 and "received" not in log_of(c1).split("logging in again")[-1]


def test_the_upper_session_killed_between_passes_one_reconnect_at_once(
        tree: Tree, sshd: Sshd, upper_of: list[Upper]) -> None:
    mgr, [c1] = hierarchy(tree, sshd, ["c1"])
    upper = Upper(mgr)
    upper_of.append(upper)
    kept = Kept(60)
    poller.run_once(c1.home(), kept=kept)
    [child] = upper.children()
    os.kill(child, signal.SIGKILL)
    job = dcmjexe(mgr, tree.package(), "c1")
    report = poller.run_once(c1.home(), sleep=no_wait, kept=kept)  # no retry wait, no failure
    assert report.received == 1 and installs(c1) == 1
    assert logins(sshd) == 2 and kept.logins == 2
    assert status_of(mgr, job) == {"c1": "COMPLETE"}
    poller.run_once(c1.home(), sleep=no_wait, kept=kept)
    assert logins(sshd) == 2, "the new session is kept in its turn"


def test_a_session_that_went_dead_unseen_is_noticed_at_the_next_poll(
        tree: Tree, sshd: Sshd, upper_of: list[Upper]) -> None:
    """The upper's end gone while the lower's paramiko has not heard of it (a NAT dropped the connection):
    the first request of the next pass finds it cut, and that pass logs in once more."""
    mgr, [c1] = hierarchy(tree, sshd, ["c1"])
    upper_of.append(Upper(mgr))
    kept = Kept(60)
    poller.run_once(c1.home(), kept=kept)
    assert kept.client is not None
    link = kept.client.link
    link.usable = lambda: True  # type: ignore[method-assign]  # what the lower believes
    link.client.get_transport().sock.shutdown(2)  # type: ignore[attr-defined]  # ...while the connection is gone
    report = poller.run_once(c1.home(), sleep=no_wait, kept=kept)
    assert report.received == 0 and logins(sshd) == 2
    assert "the session kept since the last pass has ended" in log_of(c1)


def test_an_idle_kept_session_is_closed_by_the_upper_and_the_lower_logs_in_afresh(
        tree: Tree, sshd: Sshd, upper_of: list[Upper]) -> None:
    mgr, [c1] = hierarchy(tree, sshd, ["c1"], upper_settings="KeepIdleTimeout\t2s\n")
    upper = Upper(mgr)
    upper_of.append(upper)
    kept = Kept(60)
    kept.keep = 1.0  # a poll interval within the upper's 2 s
    poller.run_once(c1.home(), kept=kept)
    assert kept.client is not None and kept.client.kept == 2.0
    link = kept.client.link
    wait_for(lambda: not link.usable(), 30)  # the upper ended it, unasked
    assert "c1: kept session idle for 2s (KeepIdleTimeout): closed" in log_of(mgr)
    wait_for(lambda: upper.children() == [])  # the session's process ended with it
    poller.run_once(c1.home(), sleep=no_wait, kept=kept)
    assert logins(sshd) == 2 and kept.logins == 2


def test_a_lower_asking_longer_than_the_upper_keeps_is_not_kept(
        tree: Tree, sshd: Sshd, upper_of: list[Upper]) -> None:
    mgr, [c1] = hierarchy(tree, sshd, ["c1"], upper_settings="KeepIdleTimeout\t1m\n")
    upper_of.append(Upper(mgr))
    kept = Kept(300)  # polls every 5 minutes: the session would be closed idle before the next poll
    poller.run_once(c1.home(), kept=kept)
    assert kept.client is None
    poller.run_once(c1.home(), kept=kept)
    assert logins(sshd) == 2


def test_beyond_max_kept_sessions_a_lower_polls_afresh(tree: Tree, sshd: Sshd, upper_of: list[Upper]) -> None:
    mgr, [c1, c2] = hierarchy(tree, sshd, ["c1", "c2"], upper_settings="MaxKeptSessions\t1\n")
    upper = Upper(mgr)
    upper_of.append(upper)
    k1, k2 = Kept(60), Kept(60)
    pid = tree.package()
    poller.run_once(c1.home(), kept=k1)
    poller.run_once(c2.home(), kept=k2)
    assert k1.client is not None and k2.client is None, "one slot: the second lower is not kept, and not failed"
    jobs = [dcmjexe(mgr, pid, "c1"), dcmjexe(mgr, pid, "c2")]
    for _ in range(2):
        poller.run_once(c1.home(), sleep=no_wait, kept=k1)
        poller.run_once(c2.home(), sleep=no_wait, kept=k2)
    assert (k1.logins, k2.logins) == (1, 3)
    assert installs(c1) == 1 and installs(c2) == 1
    assert status_of(mgr, jobs[0]) == {"c1": "COMPLETE"} and status_of(mgr, jobs[1]) == {"c2": "COMPLETE"}
    k1.close()
    wait_for(lambda: upper.children() == [])
    poller.run_once(c2.home(), kept=k2)
    assert k2.client is not None, "the slot freed, the next lower's session is kept"
    k2.close()


def test_rdsma_keeps_its_session_between_polls(tree: Tree, sshd: Sshd) -> None:
    """rdsma's own loop, against an upper whose rdsma runs the resident server: polls, one login."""
    mgr, [c1] = hierarchy(tree, sshd, ["c1"])
    with (c1.path / "rdsprm" / "RDSSETFL").open("a") as f:
        f.write("WatchTimeofOrders\t1s\n")
    procs = [subprocess.Popen([str(BIN / "rdsma"), "--foreground"], env=h.env(), stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for h in (mgr,)]
    try:
        wait_for(lambda: resident.socket_path(mgr.path).exists())
        procs.append(subprocess.Popen([str(BIN / "rdsma"), "--foreground"], env=c1.env(), stdin=subprocess.DEVNULL,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        job = dcmjexe(mgr, tree.package(), "c1")
        wait_for(lambda: installs(c1) == 1, 60)
        wait_for(lambda: status_of(mgr, job) == {"c1": "COMPLETE"}, 60)
        done = passes(c1)
        wait_for(lambda: passes(c1) >= done + 2, 30)  # two more polls after the one that installed
        assert json.loads((c1.path / "run" / "rdsma.state").read_text())["last_pass"]["outcome"] == "ok"
        assert logins(sshd) == 1, "every poll on one login"
    finally:
        for p in reversed(procs):
            p.send_signal(signal.SIGTERM)
            p.wait(30)
    wait_for(lambda: "pass(es) on one kept session" in log_of(mgr))
    [line] = [x for x in log_of(mgr).splitlines() if "pass(es) on one kept session" in x]
    assert int(line.split("c1: ", 1)[1].split()[0]) >= 3


def passes(host: Host) -> int:
    """rdsma's passes so far, as its state file says."""
    try:
        return int(json.loads((host.path / "run" / "rdsma.state").read_text())["passes"])
    except (OSError, ValueError, TypeError, KeyError):
        return 0


def test_the_upper_child_killed_mid_pass_loses_and_doubles_nothing(
        tree: Tree, sshd: Sshd, upper_of: list[Upper], monkeypatch: pytest.MonkeyPatch) -> None:
    mgr, [c1] = hierarchy(tree, sshd, ["c1"])
    upper = Upper(mgr)
    upper_of.append(upper)
    kept = Kept(60)
    poller.run_once(c1.home(), kept=kept)  # kept from here
    job = dcmjexe(mgr, tree.package(), "c1")
    reach = poller.crashpoints.reach

    def kill_the_child(name: str) -> None:
        if name == "acked":  # the job is stored here and handed over there; its package is still to come
            for child in upper.children():
                os.kill(child, signal.SIGKILL)
            wait_for(lambda: upper.children() == [])
        reach(name)

    monkeypatch.setattr(poller.crashpoints, "reach", kill_the_child)
    with pytest.raises(CommunicationError):
        poller.run_once(c1.home(), sleep=lambda s: None, kept=kept)
    monkeypatch.setattr(poller.crashpoints, "reach", reach)
    assert installs(c1) == 0 and kept.client is None
    poller.run_once(c1.home(), sleep=no_wait, kept=kept)  # a new login finishes it
    poller.run_once(c1.home(), sleep=no_wait, kept=kept)
    assert installs(c1) == 1 and status_of(mgr, job) == {"c1": "COMPLETE"}
    assert logins(sshd) == 2


@pytest.mark.parametrize("point", ["checked-in@3", "acked@3", "installing", "installed", "reported"])
def test_rdsma_killed_mid_pass_on_a_kept_session_loses_and_doubles_nothing(
        tree: Tree, sshd: Sshd, upper_of: list[Upper], point: str) -> None:
    mgr, [c1] = hierarchy(tree, sshd, ["c1"])
    upper_of.append(Upper(mgr))
    with (c1.path / "rdsprm" / "RDSSETFL").open("a") as f:
        f.write("WatchTimeofOrders\t1s\n")

    def rdsma(**env: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen([str(BIN / "rdsma"), "--foreground"], env=c1.env(**env), stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    victim = rdsma(RDS_CRASH_AT=point)
    try:
        wait_for(lambda: passes(c1) >= 2, 30)  # two polls on one login: its session is kept from here on
        job = dcmjexe(mgr, tree.package(), "c1")
        assert victim.wait(60) == -signal.SIGKILL
    finally:
        if victim.poll() is None:
            victim.kill()
            victim.wait()
    assert logins(sshd) == 1, "killed in a pass on its kept session"
    again = rdsma()
    try:
        wait_for(lambda: status_of(mgr, job) == {"c1": "COMPLETE"}, 60)
    finally:
        again.send_signal(signal.SIGTERM)
        again.wait(30)
    assert installs(c1) == 1, f"killed at {point}: installed once"


def test_startup_requests_wake_an_rdsma_that_keeps_its_session(tree: Tree, tmp_path: Path) -> None:
    """Push still works: the upper wakes the lower's rdsma (rds-wake over the lower's own sshd), whose pass goes
    over the session it keeps; two jobs pushed, one login to the upper."""
    from sshd import ssh_hierarchy

    made: list[Sshd] = []

    def make(name: str = "sshd") -> Sshd:
        server = Sshd(tmp_path / name)
        made.append(server)
        return server

    try:
        servers = ssh_hierarchy(tree, make, ["mgr", "relay"],
                                {"mgr": "KeepIdleTimeout\t2h\n", "relay": "WatchTimeofOrders\t60m\n" + KEEP})
        mgr, relay = tree["mgr"], tree["relay"]
        mgr.run("rdsma")  # the managing server's resident server
        relay.run("rdsma")
        try:
            wait_for(lambda: passes(relay) >= 1)
            pid = tree.package()
            for n in (1, 2):
                mgr.run("dcmjexe", "-r", pid, "-h", "relay")
                wait_for(lambda: installs(relay) == n, 30)  # noqa: B023  (the next poll is an hour away)
            assert "woke its rdsma" in log_of(mgr)
            assert logins(servers["mgr"]) == 1, "three passes of the relay on one login to the managing server"
        finally:
            relay.run("rdsma", "-q")
            mgr.run("rdsma", "-q")
    finally:
        for server in made:
            server.stop()


def test_rdsma_holds_the_state_database_so_a_session_does_not_checkpoint_it(tree: Tree, sshd: Sshd) -> None:
    """Each session's process closed the last connection to the upper's state database, so SQLite checkpointed
    and removed its WAL at every check-in (fsyncs); rdsma holds it open beside its resident server."""
    mgr, [c1] = hierarchy(tree, sshd, ["c1"])
    wal = mgr.path / "GROUP" / "rds.db-wal"
    poller.run_once(c1.home())
    wait_for(lambda: "served c1:" in log_of(mgr))  # logged once the session has closed the database
    assert not wal.exists(), "without rdsma, the session's close was the last: the WAL went"
    mgr.run("rdsma")
    try:
        wait_for(lambda: resident.socket_path(mgr.path).exists())
        poller.run_once(c1.home())
        wait_for(lambda: "served c1:" in log_of(mgr).split("rdsma: started")[-1])
        assert wal.exists(), "the session's close was not the last"
    finally:
        mgr.run("rdsma", "-q")
    assert not wal.exists(), "rdsma let go of it as it stopped"
