"""Startup requests over SSH: rds-wake as the forced command of the upper system's key, on real sshds.

Every host has its own sshd on 127.0.0.1 (tests/sshd.py ssh_hierarchy): the
lower system checks in through rds-serve on its upper's sshd, and the upper
system wakes it through rds-wake on the lower's sshd.
"""

from __future__ import annotations

import datetime
import getpass
import io
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import paramiko
import pytest
import sshd
from conftest import Tree, installs, wait_for
from sshd import CutProxy, Sshd, free_port, ssh_hierarchy
from trustkit import Signer

from rds.client import UpperClient
from rds.errors import ProtocolError, SettingsError
from rds.home import Home
from rds.settings import parse_settings
from rds.transport import connection, serving
from rds.transport.link import SSHLink
from rds.transport.wake import WakeRequest
from rds.wire import VERSION

pytestmark = pytest.mark.skipif(not sshd.have_sshd() and os.environ.get("CI") != "true",
                                reason="OpenSSH's sshd is not installed (bin/rds-test installs it)")

sshd_factory = sshd.sshd_factory
Factory = Callable[..., Sshd]


def log_of(host) -> str:  # type: ignore[no-untyped-def]
    path = host.path / "log" / "rds.log"
    return path.read_text() if path.exists() else ""


def status(mgr) -> tuple[int, dict[str, str]]:  # type: ignore[no-untyped-def]
    proc = mgr.run("dcmstat", "--json", check=False)
    return proc.returncode, {r["dest"]: r["status"] for r in json.loads(proc.stdout)}


def set_setting(host, name: str, value: str) -> None:  # type: ignore[no-untyped-def]
    path = host.path / "rdsprm" / "RDSSETFL"
    lines = [ln for ln in path.read_text().splitlines() if not ln.startswith(f"{name}\t")]
    path.write_text("\n".join([*lines, f"{name}\t{value}"]) + "\n")


def test_startup_request_over_ssh_starts_rdsft_and_the_job_installs_without_a_poll(
        tree: Tree, sshd_factory: Factory) -> None:
    ssh_hierarchy(tree, sshd_factory, ["mgr", "relay"])
    mgr, relay = tree["mgr"], tree["relay"]
    relay.run("rdsft", "-a")  # its first check-in says where it is reached: no rdsma, no poll after this
    mgr.run("dcmjexe", "-r", tree.package(), "-h", "relay")
    wait_for(lambda: installs(relay) == 1)
    assert "startup request to relay: started rdsft -a" in log_of(mgr)
    assert "rds-wake" in log_of(relay) and "startup request from 127.0.0.1: started rdsft -a" in log_of(relay)
    wait_for(lambda: status(mgr) == (0, {"relay": "COMPLETE"}))


def test_startup_request_over_ssh_wakes_a_running_rdsma(tree: Tree, sshd_factory: Factory) -> None:
    ssh_hierarchy(tree, sshd_factory, ["mgr", "relay"], {"relay": "WatchTimeofOrders\t60m\n"})
    mgr, relay = tree["mgr"], tree["relay"]
    relay.run("rdsma")
    try:
        wait_for(lambda: _known(mgr, "relay"))  # rdsma's first pass has checked in
        mgr.run("dcmjexe", "-r", tree.package(), "-h", "relay")
        started = time.monotonic()
        wait_for(lambda: installs(relay) == 1, timeout=30)
        assert time.monotonic() - started < 30  # the next poll would be in an hour
        assert "startup request to relay: woke its rdsma" in log_of(mgr)
        assert not (relay.path / "log" / "startup.out").exists()  # no second pass beside rdsma
    finally:
        relay.run("rdsma", "-q")


def _known(mgr, lower: str) -> bool:  # type: ignore[no-untyped-def]
    import sqlite3

    db = sqlite3.connect(mgr.path / "GROUP" / "rds.db")
    try:
        return db.execute("SELECT wake FROM lowers WHERE name=?", (lower,)).fetchone() is not None
    except sqlite3.Error:
        return False
    finally:
        db.close()


def test_push_over_ssh_reaches_a_client_two_levels_down_without_polling(tree: Tree, sshd_factory: Factory) -> None:
    ssh_hierarchy(tree, sshd_factory, ["mgr", "relay", "client"])
    mgr, relay, client = tree["mgr"], tree["relay"], tree["client"]
    tree.check_in_upward(["client", "relay"])
    mgr.run("dcmjexe", "-r", tree.package(), "-h", "client")
    wait_for(lambda: installs(client) == 1, timeout=30)
    assert "startup request to relay: started rdsft -a" in log_of(mgr)
    assert "startup request to client: started rdsft -a" in log_of(relay)
    assert installs(relay) == 0


def test_wake_key_is_limited_to_its_forced_command(tree: Tree, sshd_factory: Factory) -> None:
    servers = ssh_hierarchy(tree, sshd_factory, ["mgr", "relay"])
    mgr, relay = tree["mgr"], tree["relay"]
    settings = mgr.home().settings
    target = connection.Target.parse(servers["relay"].address())
    client = connection.open_client(settings, target, "test", "lower system")
    try:
        for asked in ("cat /etc/passwd", f"rds-serve --lower mgr --home {relay.path}", "sh -i"):
            chan = client.get_transport().open_session()
            chan.exec_command(asked)
            chan.shutdown_write()
            out = chan.makefile("rb").read()
            assert chan.recv_exit_status() == 0
            assert out.decode().startswith("rds-wake: "), (asked, out)  # whatever is asked, rds-wake runs
        # the sftp subsystem is not served either: rds-wake's line comes back where SFTP's greeting should
        with pytest.raises(paramiko.SFTPError, match="^Garbage packet received$"):
            client.open_sftp()
    finally:
        client.close()
    # nor can it check in as the lower system, or read its packages, through the relay's sshd
    as_lower = parse_settings(f"HostName\tmgr\nIdentityFile\t{settings.identity_file}\n"
                              f"KnownHostsFile\t{settings.known_hosts_file}\nConnectTimeout\t5s\n",
                              Path("RDSSETFL"), mgr.path)
    link = SSHLink.open(as_lower, servers["relay"].url(relay.path))
    with pytest.raises(ProtocolError, match="the other side is not rds-serve"):
        UpperClient(link, "mgr", link.where).checkin([])
    link.close()
    link = SSHLink.open(as_lower, servers["relay"].url(relay.path))
    with pytest.raises(ProtocolError, match="the other side is not rds-serve"):
        link.read("C.AB.APP.0100.0000", 0, 100, io.BytesIO())
    link.close()


def test_unknown_host_key_is_refused_not_added_and_with_cltstsud_is_exec_error(
        tree: Tree, sshd_factory: Factory) -> None:
    ssh_hierarchy(tree, sshd_factory, ["mgr", "relay"])
    mgr, relay = tree["mgr"], tree["relay"]
    relay.run("rdsft", "-a")
    known = Path(str(mgr.home().settings.known_hosts_file))
    known.write_text("")
    (mgr.path / "rdsprm" / ".cltstsud").touch()
    mgr.run("dcmjexe", "-r", tree.package(), "-h", "relay")
    assert status(mgr) == (32, {"relay": "EXEC-ERROR"})  # interim: running with failures (issue 14)
    assert known.read_text() == ""  # never added
    line = next(ln for ln in log_of(mgr).splitlines() if "startup request to relay failed" in ln)
    assert "is not in" in line and "refused" in line and "on the lower system" in line
    assert "startup request from" not in log_of(relay)
    relay.run("rdsft", "-a")  # it still gets the job by polling
    assert status(mgr) == (0, {"relay": "COMPLETE"})


@pytest.mark.parametrize("cltstsud", [True, False])
def test_refused_connection(tree: Tree, sshd_factory: Factory, cltstsud: bool) -> None:
    ssh_hierarchy(tree, sshd_factory, ["mgr", "relay"])
    mgr, relay = tree["mgr"], tree["relay"]
    set_setting(relay, "StartupAddress", f"ssh://127.0.0.1:{free_port()}")  # nothing listens there
    relay.run("rdsft", "-a")
    if cltstsud:
        (mgr.path / "rdsprm" / ".cltstsud").touch()
    mgr.run("dcmjexe", "-r", tree.package(), "-h", "relay")
    assert status(mgr) == ((32, {"relay": "EXEC-ERROR"}) if cltstsud else (31, {"relay": "WAIT"}))
    assert "startup request to relay failed: lower system relay at" in log_of(mgr)
    assert "cannot connect: connection refused" in log_of(mgr)


def test_lower_without_startup_address_is_not_a_failure_it_polls(tree: Tree, sshd_factory: Factory) -> None:
    ssh_hierarchy(tree, sshd_factory, ["mgr", "relay"], wake=False)
    mgr, relay = tree["mgr"], tree["relay"]
    relay.run("rdsft", "-a")
    (mgr.path / "rdsprm" / ".cltstsud").touch()
    mgr.run("dcmjexe", "-r", tree.package(), "-h", "relay")
    assert status(mgr) == (31, {"relay": "WAIT"})
    assert ("no startup request to relay: it has not said where to reach it (StartupAddress); "
            "it gets its jobs when it polls") in log_of(mgr)
    assert "failed" not in log_of(mgr)
    relay.run("rdsft", "-a")
    assert status(mgr) == (0, {"relay": "COMPLETE"})


def test_prepared_request_that_went_stale_is_sent_again(tree: Tree, sshd_factory: Factory,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A session rds-wake gave up on (it woke the host early) is not trusted: the request is sent anew."""
    servers = ssh_hierarchy(tree, sshd_factory, ["mgr", "relay"])
    from rds.transport import wake

    request = WakeRequest(tree["mgr"].home().settings, servers["relay"].address(), "relay")
    request.open()
    monkeypatch.setattr(wake, "HOLD", 0.0)
    # the stale session woke it too, when its input ended: the second wake may find that pass starting
    assert request.send() in ("started rdsft -a", "a pass runs or ran just now: marked to run again once")
    wait_for(lambda: log_of(tree["relay"]).count("startup request from 127.0.0.1") == 2)


RELAY1 = Signer("relay1")
BAD_WAKE = ["relative/home", "ssh://h/path", "ssh://h:0", "ssh://h:70000", "ssh://a@b@c", "ssh://h?x=1",
            "ssh://-oProxyCommand=x", "ssh://h;reboot", "ssh://[1.2.3.4]", "ssh://300.1.1.1", "ssh://u@h:22 ",
            "http://h", "/home\nx", 7, ["ssh://h"], "/" + "x" * 5000]
GOOD_WAKE = ["/NETMRDS", "ssh://relay1", "ssh://rds@relay1.example.com:2222", "ssh://127.0.0.1", "ssh://[::1]:22"]


@pytest.mark.parametrize("wake", BAD_WAKE + GOOD_WAKE, ids=repr)
def test_check_in_takes_only_a_strict_startup_address(tree: Tree, wake: object) -> None:
    mgr = tree.add("mgr")
    service = serving(Home.open(mgr.path), "relay1")
    try:
        answer = service.handle({"op": "checkin", "v": VERSION, "host": "relay1", "below": [],
                                 "statements": [RELAY1.statement("mgr")], "wake": wake})
    finally:
        service.close()
    if wake in GOOD_WAKE:
        assert answer["ok"], answer
    else:
        assert answer == {"ok": False, "error": "protocol",
                          "message": "'wake' must be ssh://[user@]host[:port] or the absolute path of a home"}


@pytest.mark.parametrize("value", [w for w in BAD_WAKE if isinstance(w, str) and "\n" not in w and w.strip() == w])
def test_startup_address_setting_is_strict(tmp_path: Path, value: str) -> None:
    with pytest.raises(SettingsError, match="StartupAddress: bad value"):
        parse_settings(f"StartupAddress\t{value}\n", tmp_path / "RDSSETFL", tmp_path)


@pytest.mark.parametrize(("forced", "said"), [
    ("{wake} --home /nonexistent/home", "/nonexistent/home: no rds home here (exit status 2)"),
    ("/bin/echo Welcome", "the other side is not rds-wake (it sent 'Welcome', exit status 0); check the forced "
                          "command in the lower system's authorized_keys"),
])
def test_wrong_forced_command_is_a_failed_request(tree: Tree, sshd_factory: Factory, forced: str,
                                                  said: str) -> None:
    servers = ssh_hierarchy(tree, sshd_factory, ["mgr", "relay"])
    mgr, relay = tree["mgr"], tree["relay"]
    relay.run("rdsft", "-a")
    keys = servers["relay"].authorized_keys
    wake = sshd.wake_command(relay.path).split(" --home")[0]
    keys.write_text(keys.read_text().replace(sshd.wake_command(relay.path), forced.format(wake=wake)))
    (mgr.path / "rdsprm" / ".cltstsud").touch()
    mgr.run("dcmjexe", "-r", tree.package(), "-h", "relay")
    assert status(mgr) == (32, {"relay": "EXEC-ERROR"})  # interim: running with failures (issue 14)
    line = next(ln for ln in log_of(mgr).splitlines() if "startup request to relay failed" in ln)
    assert line.endswith(said), line


class TimedProxy(CutProxy):
    """A TCP relay that notes when each connection through it began."""

    def __init__(self, port: int) -> None:
        self.began: list[float] = []
        super().__init__(port)

    def _relay(self, client) -> None:  # type: ignore[no-untyped-def]
        self.began.append(time.time())
        super()._relay(client)


def woke_at(host) -> float:  # type: ignore[no-untyped-def]
    """When rds-wake on ``host`` logged its request (before it answered), from its rds.log."""
    line = next(ln for ln in log_of(host).splitlines() if "startup request from" in ln)
    return datetime.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()


def test_at_most_max_connect_clients_requests_are_under_way(tree: Tree, sshd_factory: Factory) -> None:
    names = ["r1", "r2", "r3", "r4", "r5"]
    mgr_key = sshd.keygen(tree.root.parent / "id_mgr", "rds@mgr")
    known = tree.root.parent / "known_hosts_mgr"
    proxies = {}
    lines = []
    for name in names:
        server = sshd_factory(f"sshd-{name}")
        server.authorize(mgr_key.with_suffix(".pub"), sshd.wake_command(tree.root / name))
        server.start()
        proxies[name] = TimedProxy(server.port)
        lines.append(f"[127.0.0.1]:{proxies[name].port} {server.host_key_line()}\n")
    known.write_text("".join(lines))
    mgr = tree.add("mgr", settings=f"IdentityFile\t{mgr_key}\nKnownHostsFile\t{known}\nMaxConnectClients\t2\n",
                   push=True)
    try:
        for name in names:
            tree.add(name, "mgr", f"StartupAddress\tssh://{getpass.getuser()}@127.0.0.1:{proxies[name].port}\n",
                     push=True).run("rdsft", "-a")
        mgr.run("dcmjexe", "-r", tree.package(), "-h", *names)
        for name in names:
            assert f"startup request to {name}: started rdsft -a" in log_of(mgr)
            wait_for(lambda n=name: installs(tree[n]) == 1)
        began = {n: proxies[n].began[0] for n in names}
        done = {n: woke_at(tree[n]) for n in names}  # a request ends only after this
        for name in names:
            # the requests whose connection was open when this one's began: at most one other
            open_then = [n for n in names if n != name and began[n] < began[name] < done[n] - 0.002]
            assert len(open_then) <= 1, (name, open_then, began, done)
        assert sorted(began.values())[2] > sorted(done.values())[0] - 0.002  # the third waited for a slot
    finally:
        for proxy in proxies.values():
            proxy.close()


def test_a_lower_over_ssh_cannot_name_a_home_on_the_upper_system(tree: Tree) -> None:
    """Else its StartupAddress could make the upper system run rdsft -a for any home it has."""
    mgr = tree.add("mgr")
    service = serving(Home.open(mgr.path), "relay1", remote=True)
    try:
        answer = service.handle({"op": "checkin", "v": VERSION, "host": "relay1", "below": [],
                                 "statements": [RELAY1.statement("mgr")], "wake": str(mgr.path)})
        assert answer == {"ok": False, "error": "protocol", "message":
                          "'wake' over SSH must be ssh://[user@]host[:port], not a path on this machine"}
        assert service.handle({"op": "checkin", "v": VERSION, "host": "relay1", "below": [],
                               "statements": [RELAY1.statement("mgr")], "wake": "ssh://127.0.0.1:2222"})["ok"]
    finally:
        service.close()
