"""What several test files share: a managing server's home with a package, a relay and its clients over
real sshd, and hashing a file apart from rds."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

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
