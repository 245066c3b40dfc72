"""Speed on real links, over a real sshd (issue 16): resumed downloads keep requests in flight, and a
JIT relay's long fetch for a lower system keeps that system's session alive.

Behaviour only: the requests in flight are counted on the channel, and the
slow fetch is made slow by tests/linkproxy.py's rate limit (a lower bound the
proxy guarantees), never by a timed assertion.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest
import sshd
from conftest import Host, Tree
from linkproxy import LinkProxy
from sshd import Sshd, make_package, serve_command, ssh_hierarchy
from testkit import sha256_of

from rds.client import UpperClient
from rds.errors import CommunicationError
from rds.home import Home
from rds.storehouse import Storehouse
from rds.transport import connection
from rds.transport.frames import HEADER
from rds.transport.link import FILL, RESUME_READ, SSHLink

pytestmark = pytest.mark.skipif(not sshd.have_sshd() and os.environ.get("CI") != "true",
                                reason="OpenSSH's sshd is not installed (bin/rds-test installs it)")

sshd_factory = sshd.sshd_factory
Factory = Callable[..., Sshd]


def open_link(host: Host) -> UpperClient:
    home = host.home()
    assert home.settings.managing_host is not None
    link = SSHLink.open(home.settings, home.settings.managing_host)
    return UpperClient(link, home.host, link.where)


def statements(host: Host, upper: str) -> list[dict[str, object]]:
    me = host.home().identity
    body = {"kind": "route", "host": host.name, "upper": upper, "n": 1, "key": me.public}
    return [{**body, "sig": me.sign(body)}]


def through(host: Host, known: Path, port: int, proxy: LinkProxy) -> None:
    """``host`` reaches its upper system (the sshd on ``port``) through ``proxy`` from now on."""
    rdssetfl = host.path / "rdsprm/RDSSETFL"
    rdssetfl.write_text(rdssetfl.read_text().replace(f":{port}/", f":{proxy.port}/"))
    known.write_text(known.read_text().replace(f"]:{port} ", f"]:{proxy.port} "))


class Watch:
    """Counts, on the channel itself, the read requests sent and the bytes received, and the most read
    requests whose bytes had not all come when another was sent."""

    def __init__(self, link: SSHLink, start: int) -> None:
        self.chan = link.chan
        self.received = 0  # bytes, headers included: a request is taken as answered a little early
        self.asked: list[tuple[int, int]] = []
        self.start = start
        self.most = 0
        send, recv = self.chan.sendall, self.chan.recv

        def sendall(data: bytes) -> None:
            msg = json.loads(data[HEADER.size:])
            if msg.get("op") == "read":
                self.asked.append((msg["offset"], msg["length"]))
                due = [a for a in self.asked if a[0] + a[1] - self.start > self.received]
                self.most = max(self.most, len(due))
            send(data)

        def counted(n: int) -> bytes:
            data: bytes = recv(n)
            self.received += len(data)
            return data

        self.chan.sendall, self.chan.recv = sendall, counted


def test_a_resumed_download_keeps_the_link_full(tree: Tree, sshd_factory: Factory) -> None:
    server = sshd_factory()
    mgr = tree.add("mgr")
    Home.open(mgr.path)
    key = server.add_key("relay1", command=serve_command("relay1", mgr.path))
    server.start()
    relay = tree.add("relay1", settings=f"ManagingHost\t{server.url(mgr.path)}\nIdentityFile\t{key}\n"
                                        f"KnownHostsFile\t{server.known_hosts}\nConnectTimeout\t5s\n")
    relay.run("rdsft", "-a")
    m = make_package(mgr.path, 24 << 20)
    mgr.run("dcmjexe", "-r", str(m.id), "-h", "relay1")
    # a long, fast line: its bandwidth-delay product (20 MB/s x 0.2 s = 4 MB) spans several requests
    proxy = LinkProxy(server.port, rtt=0.2, rate=20e6, cut_after=m.size // 3)
    through(relay, server.known_hosts, server.port, proxy)
    try:
        assert relay.run("rdsft", "-a", check=False).returncode == 253  # cut a third of the way
        store = Storehouse(relay.home().packages)
        have = store.partial_path(m.id, m.sha256).stat().st_size
        assert 0 < have < m.size
        client = open_link(relay)
        client.checkin(statements(relay, "mgr"))
        assert isinstance(client.link, SSHLink)
        watch = Watch(client.link, have)
        client.fetch(store, m)
        client.link.close()
    finally:
        proxy.close()
    assert watch.asked[0][0] == have and all(n <= RESUME_READ for _, n in watch.asked)
    assert sum(n for _, n in watch.asked) == m.size - have  # each byte asked once
    assert 3 <= watch.most <= FILL // RESUME_READ, watch.most  # not one request at a time, nor unbounded
    assert sha256_of(store.payload(m.id)) == m.sha256


def test_a_long_jit_fetch_keeps_the_lower_systems_session_alive(tree: Tree, sshd_factory: Factory,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """mgr > relay > c over SSH, the relay's link to mgr through a slow line: c asks the relay for a
    package the relay has not got; the relay's fetch takes longer than c's idle timeout."""
    servers = ssh_hierarchy(tree, sshd_factory, ["mgr", "relay", "c"], wake=False)
    mgr, relay, c = tree["mgr"], tree["relay"], tree["c"]
    tree.check_in_upward(["c", "relay"])
    rate = 1e6  # bytes a second: 6 MiB take over 6 s, more than c's idle timeout of 4 s
    cut, kept = make_package(mgr.path, 6 << 20, "CUT"), make_package(mgr.path, 6 << 20, "KEPT")
    for m in (cut, kept):
        mgr.run("dcmjexe", "-r", str(m.id), "-h", "c")
    relay.run("rdsft", "-a")  # the jobs go down to the relay; JIT: the packages stay at mgr
    assert not Storehouse(relay.home().packages).has(kept.id)
    proxy = LinkProxy(servers["mgr"].port, rtt=0.02, rate=rate)
    through(relay, servers["relay"].root / "known_hosts_rds", servers["mgr"].port, proxy)
    rdssetfl = c.path / "rdsprm/RDSSETFL"
    rdssetfl.write_text(rdssetfl.read_text().replace("ConnectTimeout\t5s", "ConnectTimeout\t1s"))
    monkeypatch.setattr(connection, "IDLE_MIN", 2.0)  # c's idle timeout: 4 x ConnectTimeout
    store = Storehouse(c.home().packages)
    try:
        # without keep-alive frames (a lower system that does not ask for them) the pass is cut
        client = open_link(c)
        client.checkin(statements(c, "relay"))
        assert isinstance(client.link, SSHLink)
        client.link.alive = None  # type: ignore[assignment]
        with pytest.raises(CommunicationError, match=r"nothing received for 4s"):
            client.fetch(store, cut)
        client.link.close()
        # with them, the same wait ends with the package
        before = connection.STATS["keepalives"]
        client = open_link(c)
        client.checkin(statements(c, "relay"))
        client.fetch(store, kept)
        client.link.close()
    finally:
        proxy.close()
    assert connection.STATS["keepalives"] - before >= 2
    assert proxy.down >= cut.size + kept.size  # the relay fetched both during c's reads, through the slow line
    assert sha256_of(store.payload(kept.id)) == kept.sha256
