"""A private OpenSSH sshd on a free 127.0.0.1 port, for the SSH tests and the bench.

Everything lives in one directory: the host key, the client keys, the
``authorized_keys`` file whose lines force commands, the ``known_hosts`` file a
client uses to trust this sshd, the config, the pid file and the log::

    sshd = Sshd(tmp_path / "sshd")
    key = sshd.add_key("relay1", command="... rds.cli.serve --lower relay1 --home ...")
    sshd.start()
    ...   # connect to 127.0.0.1:sshd.port with key and sshd.known_hosts
    sshd.stop()

The ``sshd_factory`` fixture makes as many as a test asks for and stops them
all at the end.  ``CutProxy`` relays a connection and cuts it after so many
bytes; ``make_package`` puts a large package into a home in a second.
"""

from __future__ import annotations

import contextlib
import getpass
import io
import json
import os
import select
import shlex
import signal
import socket
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from linkproxy import Listener

from rds.home import Home
from rds.packages import Manifest, PackageId
from rds.storehouse import MANIFEST, PAYLOAD, VERIFIED, HashingWriter

SSHD = Path("/usr/sbin/sshd")
SSH_KEYGEN = "ssh-keygen"
PYTHON = Path(sys.executable)


def have_sshd() -> bool:
    return SSHD.is_file() and os.access(SSHD, os.X_OK)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def keygen(path: Path, comment: str) -> Path:
    """A new ed25519 key pair at ``path`` and ``path.pub``, without a passphrase."""
    subprocess.run([SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
                   check=True, capture_output=True)
    return path


def serve_command(lower: str, home: Path) -> str:
    """The forced command for a lower system's key: this venv's rds-serve for ``home``."""
    script = PYTHON.parent / "rds-serve"
    serve = shlex.quote(str(script)) if script.is_file() else f"{shlex.quote(str(PYTHON))} -m rds.cli.serve"
    return f"{serve} --lower {shlex.quote(lower)} --home {shlex.quote(str(home))}"


def wake_command(home: Path) -> str:
    """The forced command for an upper system's key on a lower system: this venv's rds-wake for ``home``."""
    script = PYTHON.parent / "rds-wake"
    wake = shlex.quote(str(script)) if script.is_file() else f"{shlex.quote(str(PYTHON))} -m rds.cli.wake"
    return f"{wake} --home {shlex.quote(str(home))}"


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs; a zombie that init has not reaped yet does not (containers are slow at it)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True


class Sshd:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.host_key = keygen(root / "ssh_host_ed25519_key", "rds-test-host")
        self.authorized_keys = root / "authorized_keys"
        self.authorized_keys.touch()
        self.known_hosts = root / "known_hosts"
        self.config = root / "sshd_config"
        self.pid_file = root / "sshd.pid"
        self.log_file = root / "sshd.log"
        self.user = getpass.getuser()
        self.port = 0
        self.extra_config: list[str] = []

    def host_key_line(self) -> str:
        """``type base64`` of the host key, as known_hosts and ssh-keyscan give it."""
        kind, blob = (self.root / "ssh_host_ed25519_key.pub").read_text().split()[:2]
        return f"{kind} {blob}"

    def add_key(self, name: str, command: str | None = None, options: str = "restrict") -> Path:
        """A new client key whose public half goes into authorized_keys, bound to ``command``."""
        key = keygen(self.root / f"id_{name}", f"rds-{name}")
        opts = options
        if command is not None:
            opts = f'{options},command="{command}"' if options else f'command="{command}"'
        line = f"{opts} {(self.root / f'id_{name}.pub').read_text().strip()}".strip()
        with open(self.authorized_keys, "a") as f:
            f.write(line + "\n")
        return key

    def authorize(self, public_key: Path, command: str, options: str = "restrict") -> None:
        """Put an existing public key into authorized_keys, bound to ``command``."""
        with open(self.authorized_keys, "a") as f:
            f.write(f'{options},command="{command}" {public_key.read_text().strip()}\n')

    def address(self) -> str:
        """This sshd as a StartupAddress."""
        return f"ssh://{self.user}@127.0.0.1:{self.port}"

    def url(self, home: Path | None = None) -> str:
        return f"ssh://{self.user}@127.0.0.1:{self.port}{home or ''}"

    def _write_config(self) -> None:
        lines = [
            f"Port {self.port}",
            "ListenAddress 127.0.0.1",
            f"HostKey {self.host_key}",
            f"PidFile {self.pid_file}",
            f"AuthorizedKeysFile {self.authorized_keys}",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "PermitRootLogin prohibit-password",
            "UsePAM no",
            "StrictModes no",
            "PrintMotd no",
            "LogLevel VERBOSE",
            "MaxStartups 100",
            "Subsystem sftp internal-sftp",
            *self.extra_config,
        ]
        self.config.write_text("\n".join(lines) + "\n")

    def start(self, timeout: float = 10) -> Sshd:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # privilege separation directory
        for _ in range(5):  # another process may take the free port before sshd binds it
            self.port = free_port()
            self._write_config()
            self.pid_file.unlink(missing_ok=True)
            proc = subprocess.run([str(SSHD), "-f", str(self.config), "-E", str(self.log_file)],
                                  capture_output=True, text=True)
            if proc.returncode != 0:
                raise RuntimeError(f"sshd did not start: {proc.stderr.strip()}")
            if self._wait_listening(timeout):
                self.known_hosts.write_text(f"[127.0.0.1]:{self.port} {self.host_key_line()}\n")
                return self
        raise RuntimeError(f"sshd did not start listening; its log:\n{self.log()}")

    def _wait_listening(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.pid() is not None:
                try:
                    socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                    return True
                except OSError:
                    pass
            elif "Address already in use" in self.log():
                return False
            time.sleep(0.02)
        return False

    def pid(self) -> int | None:
        try:
            return int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None

    def stop(self) -> None:
        """Stop the listener; sessions still open end with their connections."""
        pid = self.pid()
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 5
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.01)
        self.pid_file.unlink(missing_ok=True)

    def log(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")
        except OSError:
            return ""


@pytest.fixture
def sshd_factory(tmp_path: Path) -> Iterator[Callable[[str], Sshd]]:
    """Make private sshds (not yet started) under tmp_path; all are stopped at the end."""
    made: list[Sshd] = []

    def make(name: str = "sshd") -> Sshd:
        s = Sshd(tmp_path / name)
        made.append(s)
        return s

    yield make
    for s in made:
        s.stop()


class _Noise(io.RawIOBase):
    """``size`` bytes that do not compress, made fast: a random MiB, numbered."""

    def __init__(self, size: int, fresh: bool = False) -> None:
        self.left = size
        self.base = bytearray(os.urandom(1 << 20))
        self.n = 0
        self.fresh = fresh  # every MiB new: chunks would find the numbered ones alike

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        n = min(len(buf), self.left, 1 << 20)
        if self.fresh:
            self.base = bytearray(os.urandom(1 << 20))
        self.base[:8] = self.n.to_bytes(8, "big")
        self.n += 1
        self.left -= n
        buf[:n] = self.base[:n]
        return n


def make_package(home: Path, size: int, name: str = "BIG", install_dir: str = "/opt/big",
                 chunked: bool = False) -> Manifest:
    """Register a package of about ``size`` bytes in ``home``: a real archive, stored, not compressed
    (``chunked``: cut into chunks, rds.chunks, each a gzip member that holds noise)."""
    pid = PackageId.make("AB", name, "0100")
    target = home / "RDS" / str(pid)
    target.mkdir(parents=True)
    if chunked:
        from rds import chunks

        (home / "RDS" / chunks.DIR).mkdir(exist_ok=True)
        packer = chunks.Packer(chunks.ChunkStore(home / "RDS" / chunks.DIR), target / ".chunks")
        with tarfile.open(fileobj=packer, mode="w") as tar:  # type: ignore[call-overload]
            info = tarfile.TarInfo("data.bin")
            info.size = size
            start = tar.offset + len(info.tobuf(tar.format, tar.encoding, tar.errors))
            packer.cut_around(start, start + size)  # as rdsft -c cuts a file's content (rds.archive)
            tar.addfile(info, io.BufferedReader(_Noise(size, fresh=True), 1 << 20))  # no chunk twice
        packer.close()
        (target / ".chunks").unlink()
        m = Manifest(id=pid, size=packer.size, sha256=packer.sha.hexdigest(), install_dir=install_dir,
                     unpacked=packer.unpacked, chunks=tuple(packer.chunks))
        (target / MANIFEST).write_text(json.dumps(m.to_json()))
        return m
    with open(target / PAYLOAD, "wb") as raw:
        out = HashingWriter(raw)
        with tarfile.open(fileobj=out, mode="w:gz", compresslevel=0) as tar:  # type: ignore[call-overload]
            info = tarfile.TarInfo("data.bin")
            info.size = size
            tar.addfile(info, io.BufferedReader(_Noise(size), 1 << 20))
    m = Manifest(id=pid, size=out.size, sha256=out.sha.hexdigest(), install_dir=install_dir)
    st = (target / PAYLOAD).stat()  # hashed as it was written: stamped verified, as registering does
    (target / VERIFIED).write_text(f"{st.st_size} {st.st_mtime_ns} {st.st_ino} {m.sha256}")
    (target / MANIFEST).write_text(json.dumps(m.to_json()))  # the manifest last: now it is there
    return m


class CutProxy(Listener):
    """A TCP relay on 127.0.0.1 to ``port`` that counts bytes and can cut the link.

    ``cut_after``: end the connection once this many bytes went from the server
    to the client; ``freeze``: instead, stop relaying and keep it open, as a
    line that goes silent.  ``down``/``up``: bytes relayed each way, over all
    connections.
    """

    def __init__(self, port: int, cut_after: int | None = None, freeze: bool = False) -> None:
        self.cut_after = cut_after
        self.freeze = freeze
        self.down = self.up = 0
        self.cuts = 0
        super().__init__(port)

    def accepted(self, conn: socket.socket) -> None:
        threading.Thread(target=self._relay, args=(conn,), daemon=True).start()

    def _relay(self, client: socket.socket) -> None:
        server = socket.create_connection(("127.0.0.1", self.target))
        for s in (client, server):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        socks = [client, server]
        try:
            while not self._stop.is_set():
                ready, _, _ = select.select(socks, [], [], 0.2)
                for s in ready:
                    data = s.recv(1 << 20)
                    if not data:
                        return
                    if s is server:
                        if self.cut_after is not None and self.down + len(data) >= self.cut_after:
                            data = data[:max(0, self.cut_after - self.down)]
                            client.sendall(data)
                            self.down += len(data)
                            self.cut_after = None  # one cut; the next connection goes through
                            self.cuts += 1
                            if self.freeze:
                                self._stop.wait()
                            else:
                                self._hang_up(client)
                            return
                        client.sendall(data)
                        self.down += len(data)
                    else:
                        server.sendall(data)
                        self.up += len(data)
        except OSError:
            return
        finally:
            for s in socks:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()

    @staticmethod
    def _hang_up(client: socket.socket) -> None:
        """End the stream after what was sent, as a dropped line would: FIN, then discard."""
        client.shutdown(socket.SHUT_WR)
        client.settimeout(2)
        with contextlib.suppress(OSError):
            while client.recv(1 << 16):
                pass



def ssh_hierarchy(tree: Any, make_sshd: Callable[[str], Sshd], chain: list[str],
                  settings: dict[str, str] | None = None, wake: bool = True) -> dict[str, Sshd]:
    """Hosts ``chain[0]`` (managing server) > ``chain[1]`` > ... as on real machines, every link over SSH.

    Each host has its own sshd and its own key.  On each upper system's sshd the
    lower system's key is forced to ``rds-serve --lower LOWER``; with ``wake``,
    on each lower system's sshd the upper system's key is forced to
    ``rds-wake``, and the lower system gives that sshd as its StartupAddress.
    ``tree`` is a conftest.Tree; every host is pushed to (no .cltwup_off).
    """
    settings = settings or {}
    servers = {name: make_sshd(f"sshd-{name}") for name in chain}
    keys = {name: keygen(servers[name].root / "id_rds", f"rds@{name}") for name in chain}
    homes = {name: tree.root / name for name in chain}
    for upper, lower in zip(chain, chain[1:], strict=False):
        servers[upper].authorize(keys[lower].with_suffix(".pub"), serve_command(lower, homes[upper]))
        if wake:
            servers[lower].authorize(keys[upper].with_suffix(".pub"), wake_command(homes[lower]))
    for s in servers.values():
        s.start()
    for i, name in enumerate(chain):
        near = [chain[j] for j in (i - 1, i + 1) if 0 <= j < len(chain)]
        known = servers[name].root / "known_hosts_rds"
        known.write_text("".join(servers[n].known_hosts.read_text() for n in near))
        lines = [f"IdentityFile\t{keys[name]}", f"KnownHostsFile\t{known}", "ConnectTimeout\t5s"]
        if i:
            lines.append(f"ManagingHost\t{servers[chain[i - 1]].url(homes[chain[i - 1]])}")
            if wake:
                lines.append(f"StartupAddress\t{servers[name].address()}")
        host = tree.add(name, None, "\n".join(lines) + "\n" + settings.get(name, ""), push=True)
        Home.open(host.path)  # laid out now: rds-serve and rds-wake never make a home
    return servers
