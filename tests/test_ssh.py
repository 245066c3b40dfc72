"""The SSH transport against real OpenSSH sshds on 127.0.0.1 (tests/sshd.py starts them).

Each upper home is served through the forced command of the lower system's key,
as on real hosts; one sshd serves several homes through several keys.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import sshd
from conftest import Host, Tree
from sshd import CutProxy, Sshd, free_port, keygen, make_package, serve_command
from testkit import laid_out, relay_over_ssh, sha256_of, ssh_settings

from rds import database, manager
from rds.client import UpperClient
from rds.errors import CommunicationError, ProtocolError, Refused
from rds.packages import Manifest
from rds.storehouse import Storehouse
from rds.transport import connection
from rds.transport.link import SSHLink

pytestmark = pytest.mark.skipif(not sshd.have_sshd() and os.environ.get("CI") != "true",
                                reason="OpenSSH's sshd is not installed (bin/rds-test installs it)")

sshd_factory = sshd.sshd_factory
Factory = Callable[..., Sshd]


def one_line(proc: subprocess.CompletedProcess[str]) -> str:
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


def unsigned(m: Manifest | None) -> Manifest | None:
    """``m`` without the managing server's signature (the one it hands out, rds.trust), to compare content."""
    return None if m is None else dataclasses.replace(m, signature="")


def statements(host: Host, upper: str = "mgr") -> list[dict[str, object]]:
    """A check-in's statements: the host's own, signed with its host key (rds.trust)."""
    me = host.home().identity
    body = {"kind": "route", "host": host.name, "upper": upper, "n": 1, "key": me.public}
    return [{**body, "sig": me.sign(body)}]


def open_link(host: Host) -> UpperClient:
    home = host.home()
    assert home.settings.managing_host is not None
    link = SSHLink.open(home.settings, home.settings.managing_host)
    return UpperClient(link, home.host, link.where)


def same_payload(lower: Host, upper: Host, package: str) -> None:
    """The lower system's payload is byte for byte the upper's (hashed here, not by rds), and no
    partial download is left."""
    got, sent = lower.path / "RDS" / package / "payload.tgz", upper.path / "RDS" / package / "payload.tgz"
    assert got.stat().st_size == sent.stat().st_size
    assert sha256_of(got) == sha256_of(sent)
    partial = lower.path / "RDS" / ".partial"
    assert not partial.exists() or list(partial.iterdir()) == []


def make_pair(tree: Tree, server: Sshd) -> tuple[Tree, Sshd]:
    """mgr and relay1, relay1 reaching mgr over SSH, its key forced to rds-serve --lower relay1."""
    mgr = laid_out(tree.add("mgr"))
    key = server.add_key("relay1", command=serve_command("relay1", mgr.path))
    server.start()
    tree.add("relay1", settings=ssh_settings(server, key))
    return tree, server


@pytest.fixture
def pair(tree: Tree, sshd_factory: Factory) -> tuple[Tree, Sshd]:
    return make_pair(tree, sshd_factory())


def test_managing_server_relay_client_end_to_end(tree: Tree, sshd_factory: Factory) -> None:
    server = sshd_factory()
    mgr, relay, [client] = relay_over_ssh(tree, server, ["client1"])
    tree.check_in_upward(["client1", "relay1"])
    pkg = tree.package()
    mgr.run("dcmjexe", "-r", pkg, "-h", "client1", "relay1")

    out = relay.run("rdsft", "-a").stdout
    assert "jobs received: 2; packages fetched: 1" in out
    assert (relay.installed() / "bin/app.sh").is_file()
    assert "jobs received: 1; packages fetched: 1; results sent: 1" in client.run("rdsft", "-a").stdout
    assert (client.installed() / "bin/app.sh").is_file()
    relay.run("rdsft", "-a")  # client1's result goes up
    status = mgr.run("dcmstat").stdout
    assert status.count("COMPLETE") == 2, status
    assert "forced-command" in server.log()


def test_idle_check_in_is_one_connection_and_one_request(pair: tuple[Tree, Sshd]) -> None:
    tree, _ = pair
    home = tree["relay1"].home()
    from rds import poller

    before = dict(connection.STATS)
    poller.run_once(home)
    assert connection.STATS["connections"] - before["connections"] == 1
    assert connection.STATS["requests"] - before["requests"] == 1


def test_unknown_host_key_is_refused_with_how_to_accept(pair: tuple[Tree, Sshd]) -> None:
    tree, server = pair
    server.known_hosts.write_text("")
    line = one_line(tree["relay1"].run("rdsft", "-a", check=False))
    assert f"127.0.0.1:{server.port}" in line and "is not in" in line and "refused" in line
    assert f"ssh-keyscan -p {server.port} -t ed25519 127.0.0.1 >> {server.known_hosts}" in line
    server.known_hosts.write_text(subprocess.run(["ssh-keyscan", "-p", str(server.port), "-t", "ed25519",
                                                  "127.0.0.1"], capture_output=True, text=True).stdout)
    tree["relay1"].run("rdsft", "-a")  # accepted deliberately: now it connects


def test_changed_host_key_is_refused(pair: tuple[Tree, Sshd], tmp_path: Path) -> None:
    tree, server = pair
    other = keygen(tmp_path / "other_host_key", "impostor")
    kind, blob = other.with_suffix(".pub").read_text().split()[:2]
    server.known_hosts.write_text(f"[127.0.0.1]:{server.port} {kind} {blob}\n")
    proc = tree["relay1"].run("rdsft", "-a", check=False)
    assert proc.returncode == 253
    line = one_line(proc)
    assert "HOST KEY CHANGED" in line and f"ssh-keygen -R '[127.0.0.1]:{server.port}'" in line
    assert "Traceback" not in proc.stderr


def test_lower_posing_as_another_host_is_refused(tree: Tree, sshd_factory: Factory) -> None:
    server = sshd_factory()
    mgr = laid_out(tree.add("mgr"))
    key = server.add_key("relay1", command=serve_command("relay1", mgr.path))
    server.start()
    # the key of relay1, used by a system that calls itself relay2
    impostor = tree.add("relay2", settings=ssh_settings(server, key))
    proc = impostor.run("rdsft", "-a", check=False)
    assert proc.returncode == 253
    assert "this key belongs to relay1" in one_line(proc)
    # and a request that claims another host on a session of relay1
    tree.add("relay1", settings=ssh_settings(server, key))
    client = open_link(tree["relay1"])
    client.host = "relay2"
    with pytest.raises(Refused, match="relay1 may not act as 'relay2'"):
        client.checkin(statements(tree["relay1"]))
    client.link.close()


def test_lower_reading_another_hosts_package_is_refused(tree: Tree, sshd_factory: Factory) -> None:
    server = sshd_factory()
    mgr = laid_out(tree.add("mgr"))
    k1 = server.add_key("relay1", command=serve_command("relay1", mgr.path))
    k2 = server.add_key("relay2", command=serve_command("relay2", mgr.path))
    server.start()
    tree.add("relay1", settings=ssh_settings(server, k1))
    relay2 = tree.add("relay2", settings=ssh_settings(server, k2))
    tree.check_in_upward(["relay1", "relay2"])
    pkg = tree.package()
    mgr.run("dcmjexe", "-r", pkg, "-h", "relay2")
    client = open_link(tree["relay1"])
    jobs, _ = client.checkin(statements(tree["relay1"]))
    assert jobs == []
    with pytest.raises(Refused, match="no job for relay1 or the hosts below it needs package"):
        client.link.read(pkg, 0, 100, io.BytesIO())
    client.link.close()
    assert "packages fetched: 1" in relay2.run("rdsft", "-a").stdout


def test_url_path_must_name_the_served_home(pair: tuple[Tree, Sshd]) -> None:
    tree, server = pair
    rdssetfl = tree["relay1"].path / "rdsprm/RDSSETFL"
    rdssetfl.write_text(rdssetfl.read_text().replace(server.url(), server.url(tree.root / "elsewhere")))
    line = one_line(tree["relay1"].run("rdsft", "-a", check=False))
    assert f"this key serves the home {tree['mgr'].path}, not {tree.root / 'elsewhere'}" in line
    rdssetfl.write_text(rdssetfl.read_text().replace(str(tree.root / "elsewhere"), str(tree["mgr"].path)))
    tree["relay1"].run("rdsft", "-a")


def test_cut_mid_transfer_resumes_from_the_byte_it_stopped_at(pair: tuple[Tree, Sshd]) -> None:
    tree, server = pair
    relay, mgr = tree["relay1"], tree["mgr"]
    relay.run("rdsft", "-a")
    m = make_package(mgr.path, 24 << 20)
    mgr.run("dcmjexe", "-r", str(m.id), "-h", "relay1")
    proxy = CutProxy(server.port, cut_after=m.size // 2)
    rdssetfl = relay.path / "rdsprm/RDSSETFL"
    rdssetfl.write_text(rdssetfl.read_text().replace(f":{server.port}", f":{proxy.port}"))
    known = server.known_hosts.read_text().replace(f"]:{server.port} ", f"]:{proxy.port} ")
    server.known_hosts.write_text(known)
    try:
        proc = relay.run("rdsft", "-a", check=False)
        assert proc.returncode == 253, proc.stderr
        line = one_line(proc)
        assert f"127.0.0.1:{proxy.port}" in line and "resumes" in line
        part = Storehouse(relay.home().packages).partial_path(m.id, m.sha256)
        have = part.stat().st_size
        assert m.size // 4 < have < m.size
        down_first = proxy.down
        relay.run("rdsft", "-a", check=False)  # installs the stored (not compressed) archive
        stored = Storehouse(relay.home().packages).get(m.id)
        assert unsigned(stored) == m
        payload = Storehouse(relay.home().packages).payload(m.id)
        assert hashlib.sha256(payload.read_bytes()).hexdigest() == m.sha256
        assert proxy.down - down_first < m.size - have + (1 << 20)  # only the rest came again
        # the cut resets the connection: what was still in the lower system's socket buffer
        # (up to tcp_rmem's few MiB on loopback, more when the lower is slow to read) came twice
        assert proxy.down < m.size + (8 << 20)
    finally:
        proxy.close()


def test_upper_ending_mid_transfer_resumes(tree: Tree, sshd_factory: Factory) -> None:
    """The upper side ends halfway through (its output cut by dd): the channel ends, the next run resumes."""
    server = sshd_factory()
    mgr = laid_out(tree.add("mgr"))
    m = make_package(mgr.path, 8 << 20)
    half = f" | dd bs=64k count={m.size // 2} iflag=count_bytes status=none"  # passes on each block at once
    key = server.add_key("relay1", command=serve_command("relay1", mgr.path) + half)
    key2 = server.add_key("relay1-whole", command=serve_command("relay1", mgr.path))
    server.start()
    relay = tree.add("relay1", settings=ssh_settings(server, key2))
    relay.run("rdsft", "-a")
    mgr.run("dcmjexe", "-r", str(m.id), "-h", "relay1")
    rdssetfl = relay.path / "rdsprm/RDSSETFL"
    rdssetfl.write_text(rdssetfl.read_text().replace(str(key2), str(key)))
    line = one_line(relay.run("rdsft", "-a", check=False))
    assert "the connection ended while waiting for package" in line and "resumes" in line
    part = Storehouse(relay.home().packages).partial_path(m.id, m.sha256)
    assert m.size // 4 < part.stat().st_size < m.size // 2
    rdssetfl.write_text(rdssetfl.read_text().replace(str(key), str(key2)))
    relay.run("rdsft", "-a", check=False)
    assert unsigned(Storehouse(relay.home().packages).get(m.id)) == m


def test_silent_link_times_out_instead_of_hanging(pair: tuple[Tree, Sshd], monkeypatch: pytest.MonkeyPatch) -> None:
    tree, server = pair
    relay, mgr = tree["relay1"], tree["mgr"]
    relay.run("rdsft", "-a")
    m = make_package(mgr.path, 8 << 20)
    mgr.run("dcmjexe", "-r", str(m.id), "-h", "relay1")
    proxy = CutProxy(server.port, cut_after=m.size // 2, freeze=True)
    rdssetfl = relay.path / "rdsprm/RDSSETFL"
    rdssetfl.write_text(rdssetfl.read_text().replace(f":{server.port}", f":{proxy.port}")
                        .replace("ConnectTimeout\t5s", "ConnectTimeout\t1s"))
    server.known_hosts.write_text(server.known_hosts.read_text().replace(f"]:{server.port} ", f"]:{proxy.port} "))
    monkeypatch.setattr(connection, "IDLE_MIN", 2.0)  # 4 x ConnectTimeout now
    try:
        client = open_link(relay)
        client.checkin(statements(relay))
        # the link's own idle clock gives up (4 x ConnectTimeout), not this test's: no wall-clock bound
        with pytest.raises(CommunicationError, match=r"nothing received for 4s"):
            client.fetch(Storehouse(relay.home().packages), m)
        assert proxy.down <= m.size // 2 + (1 << 20)  # the proxy froze the link half way: it did time out
        client.link.close()
    finally:
        proxy.close()


def test_unreachable_upper_retries_then_exits_253_with_one_line(tree: Tree, sshd_factory: Factory) -> None:
    server = sshd_factory()
    mgr = laid_out(tree.add("mgr"))
    key = server.add_key("relay1", command=serve_command("relay1", mgr.path))
    port = free_port()  # nothing listens there
    relay = tree.add("relay1", settings=ssh_settings(server, key, port=port))
    rdssetfl = relay.path / "rdsprm/RDSSETFL"
    rdssetfl.write_text(rdssetfl.read_text().replace("RetryCount\t1\n", "RetryCount\t2\n"))
    proc = relay.run("rdsft", "-a", check=False)
    assert proc.returncode == 253
    assert one_line(proc) == f"rdsft: upper system {server.user}@127.0.0.1:{port}: cannot connect: connection refused"
    retries = re.findall(r"; (retry \d+ of \d+ in \S+), at ", (relay.path / "log/rds.log").read_text())
    assert retries == ["retry 1 of 2 in 0s", "retry 2 of 2 in 0s"]  # RetryCount 2, RetryInterval 0s: no wait


def test_rejected_key_and_wrong_forced_command_are_clear(tree: Tree, sshd_factory: Factory,
                                                         tmp_path: Path) -> None:
    server = sshd_factory()
    mgr = laid_out(tree.add("mgr"))
    k_echo = server.add_key("echo", command="echo Welcome to the upper system")
    k_none = server.add_key("missing", command="/nonexistent/rds-serve --lower relay1")
    server.start()
    stranger = keygen(tmp_path / "stranger", "stranger")
    relay = tree.add("relay1", settings=ssh_settings(server, stranger))
    rdssetfl = relay.path / "rdsprm/RDSSETFL"
    line = one_line(relay.run("rdsft", "-a", check=False))
    assert "did not accept the key" in line and str(stranger) in line
    rdssetfl.write_text(rdssetfl.read_text().replace(str(stranger), str(k_echo)))
    proc = relay.run("rdsft", "-a", check=False)
    assert proc.returncode == ProtocolError.exit_code
    assert "is not rds-serve (it sent 'Welcome" in one_line(proc)
    rdssetfl.write_text(rdssetfl.read_text().replace(str(k_echo), str(k_none)))
    proc = relay.run("rdsft", "-a", check=False)
    assert proc.returncode == CommunicationError.exit_code
    assert "No such file or directory" in one_line(proc)
    assert mgr.path.is_dir()


def test_renegotiations_in_both_directions_during_transfers(tree: Tree, sshd_factory: Factory,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    server = sshd_factory()
    server.extra_config.append("RekeyLimit 2M")  # sshd asks for new keys too
    make_pair(tree, server)
    relay, mgr = tree["relay1"], tree["mgr"]
    relay.run("rdsft", "-a")
    m = make_package(mgr.path, 40 << 20)
    mgr.run("dcmjexe", "-r", str(m.id), "-h", "relay1")
    monkeypatch.setattr(connection, "REKEY_BYTES", 3 << 20)
    before = connection.STATS["rekeys"]
    client = open_link(relay)
    client.checkin(statements(relay))
    store = Storehouse(relay.home().packages)
    client.fetch(store, m)
    client.link.close()
    same_payload(relay, mgr, str(m.id))
    assert connection.STATS["rekeys"] - before >= 10


def test_channel_closing_during_renegotiation_does_not_hang(sshd_factory: Factory,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """paramiko's transport thread used to wait on itself when a channel closed during a key exchange.

    It replied to the close with _send_user_message, which waits for the key exchange that only
    that thread can finish: 30 s, then "Key-exchange timed out waiting for key negotiation".
    Without the fix this failed about one run in three.
    """
    import paramiko

    server = sshd_factory()
    key = server.add_key("stream", command="head -c 24M /dev/zero")
    server.start()
    monkeypatch.setattr(connection, "REKEY_BYTES", 256 << 10)
    for _ in range(5):
        client = paramiko.SSHClient()
        client.load_system_host_keys(str(server.known_hosts))
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        client.connect("127.0.0.1", port=server.port, username=server.user, key_filename=str(key),
                       allow_agent=False, look_for_keys=False, transport_factory=connection.transport_class())
        chan = client.get_transport().open_session(window_size=connection.WINDOW, max_packet_size=connection.PACKET)
        chan.settimeout(20)
        chan.exec_command("stream")
        n = 0
        while data := chan.recv(connection.RECV):  # a stalled key exchange raises socket.timeout here
            n += len(data)
        assert chan.recv_exit_status() == 0
        assert n == 24 << 20
        assert client.get_transport().is_active()
        client.close()


def test_package_over_1_gib_crosses_two_renegotiations(pair: tuple[Tree, Sshd]) -> None:
    tree, _ = pair
    relay, mgr = tree["relay1"], tree["mgr"]
    relay.run("rdsft", "-a")
    m = make_package(mgr.path, (1 << 30) + (64 << 20))
    db = database.connect(mgr.home().db_path)
    manager.create_job(db, mgr.home(), m.id, ["relay1"])
    db.close()
    before = connection.STATS["rekeys"]
    client = open_link(relay)
    found, manifests = client.checkin(statements(relay))
    store = Storehouse(relay.home().packages)
    client.fetch(store, Manifest.from_json(manifests[str(m.id)].to_json()))
    client.link.close()
    same_payload(relay, mgr, str(m.id))
    assert connection.STATS["rekeys"] - before >= 2
    store.remove(m.id)


def test_rds_serve_starts_without_paramiko() -> None:
    code = ("import sys, rds.cli.serve, rds.transport.serve, rds.transport.link, rds.transport.connection; "
            "print('paramiko' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"
    proc = subprocess.run([sys.executable, "-m", "rds.cli.serve", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "restrict,command=" in proc.stdout
