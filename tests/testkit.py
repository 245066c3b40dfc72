"""What several test files share: a managing server's home with a package, a relay and its clients over
real sshd, hashing a file apart from rds, and a set-up built once and laid out again for each test."""

from __future__ import annotations

import hashlib
import json
import shutil
import struct
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import pytest
from conftest import Host, Tree
from sshd import Sshd, serve_command

from rds import trust
from rds.home import Home
from rds.packages import PackageId
from rds.storehouse import Storehouse

PID = PackageId.make("AB", "APP", "0100")


def managing_server(root: Path, signed: bool = True, others: Iterable[PackageId] = ()) -> Home:
    """The home ``root/mgr``, a managing server with PID (and ``others``) registered from one small
    directory: signed by its key, or as before signatures (``signed=False``)."""
    (root / "mgr" / "rdsprm").mkdir(parents=True)
    (root / "mgr" / "rdsprm" / "RDSSETFL").write_text("HostName\tmgr\n")
    home = Home.open(root / "mgr")
    src = root / "src"
    src.mkdir()
    (src / "app").write_text("app\n")
    sign = (lambda m: trust.sign_manifest(home.identity, m)) if signed else None
    for pid, install_dir in [(PID, "/opt/app"), *((p, f"/opt/{p.package.lower()}") for p in others)]:
        Storehouse(home.packages).register(pid, src, install_dir, sign=sign)
    return home


def sha256_of(path: Path) -> str:
    """hashlib over the file, not rds's own checksum code."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def frames(data: bytes) -> list[object]:
    """The length-prefixed JSON frames of rds-serve's output, read here independently of rds."""
    out = []
    while data:
        (n,) = struct.unpack(">I", data[:4])
        out.append(json.loads(data[4:4 + n]))
        data = data[4 + n:]
    return out


def ssh_settings(server: Sshd, key: Path, upper: Host | None = None, port: int | None = None,
                 known_hosts: Path | None = None) -> str:
    """RDSSETFL lines for a host that reaches ``upper`` (the managing server if None) through ``server``."""
    url = server.url(upper.path if upper else None)
    if port is not None:
        url = url.replace(f":{server.port}", f":{port}")
    return (f"ManagingHost\t{url}\nIdentityFile\t{key}\nKnownHostsFile\t{known_hosts or server.known_hosts}\n"
            "ConnectTimeout\t5s\n")


def laid_out(host: Host) -> Host:
    Home.open(host.path)  # an upper home must exist before rds-serve serves it
    return host


def relay_over_ssh(tree: Tree, server: Sshd, clients: Iterable[str]) -> tuple[Host, Host, list[Host]]:
    """mgr, relay1 below it and ``clients`` below relay1, each reaching its upper system through
    ``server`` with a key forced to rds-serve; the server is started.  Returns (mgr, relay1, clients)."""
    mgr = laid_out(tree.add("mgr"))
    relay_home = tree.root / "relay1"
    k_relay = server.add_key("relay1", command=serve_command("relay1", mgr.path))
    keys = {c: server.add_key(c, command=serve_command(c, relay_home)) for c in clients}
    server.start()
    relay = laid_out(tree.add("relay1", settings=ssh_settings(server, k_relay, upper=mgr)))
    return mgr, relay, [tree.add(c, settings=ssh_settings(server, k, upper=relay)) for c, k in keys.items()]


class Template:
    """A set-up that costs seconds to build (homes linked over a real sshd) built once for a module, and laid out
    again for each test from a copy taken when it was built: the same bytes, modes and times at the same paths
    (the homes' settings and the sshd's authorized_keys name them), so each test starts from what a fresh
    build would give it, whatever the test before changed."""

    def __init__(self, places: Iterable[Path], keep: Path) -> None:
        self.kept = [(place, keep / str(i)) for i, place in enumerate(places)]
        for place, copy in self.kept:
            _copy(place, copy)

    def lay_out(self) -> None:
        for place, copy in self.kept:
            if place.is_dir() and not place.is_symlink():
                shutil.rmtree(place)
            else:
                place.unlink(missing_ok=True)
            _copy(copy, place)


def _copy(source: Path, target: Path) -> None:
    if source.is_dir():
        shutil.copytree(source, target, symlinks=True)
    else:
        shutil.copy2(source, target)


def link_up(tree: Tree, server: Sshd, name: str, upper: str) -> None:
    """Enrol ``name`` under ``upper`` as an administrator would: rdslink -k there, rdslink -a here."""
    line = tree[name].run("rdslink", "-k").stdout.strip()
    assert line.startswith(f"rdslink {name} ")
    assert tree[upper].run("rdslink", "-a", line, "-f", str(server.authorized_keys)).stdout.strip() == \
        f"{name}: added in {server.authorized_keys}"


class Fleet:
    """``mgr`` and the homes of ``links`` (name, upper), each linked to its upper through one real sshd as an
    administrator links them, checked in (``check_in``, in order); built once for a module (a few seconds of
    rdslink and SSH passes), and laid out again for each test with ``laid_out``."""

    def __init__(self, root: Path, links: Iterable[tuple[str, str]], check_in: Iterable[str]) -> None:
        self.server = Sshd(root / "sshd").start()
        try:
            self.tree = Tree(root / "hosts")
            Home.open(self.tree.add("mgr").path)
            for name, upper in links:
                host = self.tree.add(name, settings=(
                    f"ManagingHost\t{self.server.url(self.tree.root / upper)}\n"
                    f"IdentityFile\t{self.tree.root / name / 'rdsprm' / 'id_ed25519'}\n"
                    f"KnownHostsFile\t{self.server.known_hosts}\nConnectTimeout\t5s\n"))
                Home.open(host.path)
                link_up(self.tree, self.server, name, upper)
            self.tree.check_in_upward(list(check_in))
            self.template = Template([self.tree.root, self.server.authorized_keys], root / "kept")
        except BaseException:
            self.server.stop()
            raise

    def laid_out(self) -> Tree:
        """The homes and authorized_keys as built, whatever the test before did; a Tree of their hosts."""
        self.template.lay_out()
        tree = Tree(self.tree.root)
        tree.hosts = dict(self.tree.hosts)
        return tree


def fleet_fixture(links: Iterable[tuple[str, str]], check_in: Iterable[str]) -> Callable[..., Iterator[Fleet]]:
    """A module-scoped fixture: the Fleet built once, its sshd stopped after the module's last test."""
    @pytest.fixture(scope="module")
    def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
        fleet = Fleet(tmp_path_factory.mktemp("fleet"), links, check_in)
        yield fleet
        fleet.server.stop()
    return built
