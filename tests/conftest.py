"""Hermetic homes: every test gets its own RDS_HOME and a way to build a hierarchy."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from rds.home import Home

BIN = Path(sys.executable).parent


@pytest.fixture(autouse=True)
def hermetic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    home = tmp_path / "default-home"
    (home / "rdsprm").mkdir(parents=True)
    (home / "rdsprm" / "RDSSETFL").touch()  # a home is a directory with rdsprm/RDSSETFL (an empty one: a manager)
    monkeypatch.setenv("RDS_HOME", str(home))
    monkeypatch.setenv("RDS_LOCK_TIMEOUT", "5")
    monkeypatch.delenv("RDS_CRASH_AT", raising=False)
    monkeypatch.delenv("RDS_CRASH_AT_CHILDREN", raising=False)
    yield


def wait_for(cond: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.05)


def installs(host: Host) -> int:
    """How many times the default test package's script ran on ``host``."""
    f = host.installed("/opt/installs")
    return len(f.read_text().splitlines()) if f.exists() else 0


class Host:
    """One host of a test hierarchy: a home on this machine, driven through the real commands."""

    def __init__(self, tree: Tree, name: str, upper: Host | None, settings: str = "", push: bool = False) -> None:
        self.name = name
        self.path = tree.root / name
        self.upper = upper
        (self.path / "rdsprm").mkdir(parents=True)
        if not push:  # tests drive each pass themselves unless they test startup requests
            (self.path / "rdsprm" / ".cltwup_off").touch()
        lines = [f"HostName\t{name}", "RetryCount\t1", "RetryInterval\t0s",
                 f"InstallRoot\t{self.path / 'root'}",
                 f"PackageFormat\t{os.environ.get('RDS_TEST_PACKAGE_FORMAT', 'CHUNKS')}"]
        if upper is not None:
            lines.append(f"ManagingHost\t{upper.path}")
        (self.path / "rdsprm" / "RDSSETFL").write_text("\n".join(lines) + "\n" + settings)

    def home(self) -> Home:
        return Home.open(self.path)

    def env(self, **extra: str) -> dict[str, str]:
        return {**os.environ, "RDS_HOME": str(self.path), **extra}

    def run(self, *args: str, check: bool = True, env: dict[str, str] | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
        cmd, *rest = args
        proc = subprocess.run([str(BIN / cmd), *rest], env=env or self.env(), capture_output=True, text=True,
                              timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"{' '.join(args)} on {self.name} exited {proc.returncode}:\n"
                                 f"{proc.stdout}\n{proc.stderr}")
        return proc

    def installed(self, install_dir: str = "/opt/app") -> Path:
        return self.path / "root" / install_dir.lstrip("/")


class Tree:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.hosts: dict[str, Host] = {}

    def add(self, name: str, upper: str | None = None, settings: str = "", push: bool = False) -> Host:
        host = Host(self, name, self.hosts[upper] if upper else None, settings, push)
        self.hosts[name] = host
        return host

    def __getitem__(self, name: str) -> Host:
        return self.hosts[name]

    def check_in_upward(self, names: Sequence[str]) -> None:
        """Run ``rdsft -a`` on the named hosts in order (lowest first), so the tree assembles itself."""
        for n in names:
            self.hosts[n].run("rdsft", "-a")

    def package(self, host: str = "mgr", name: str = "APP", version: str = "0100", install_dir: str = "/opt/app",
                script: str | None = "#!/bin/sh\necho run >> \"$RDS_INSTALL_DIR/../installs\"\n",
                files: dict[str, str] | None = None) -> str:
        src = self.root / f"src-{name}-{version}"
        src.mkdir()
        for rel, text in (files or {"bin/app.sh": "#!/bin/sh\necho app\n"}).items():
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            (src / rel).write_text(text)
        args = ["rdsft", "-c", "-g", "AB", "-r", name, "-v", version, "-i", install_dir]
        if script is not None:
            (self.root / f"script-{name}-{version}").write_text(script)
            args += ["--script", str(self.root / f"script-{name}-{version}")]
        return self.hosts[host].run(*args, str(src)).stdout.strip()


@pytest.fixture
def tree(tmp_path: Path) -> Tree:
    return Tree(tmp_path / "hosts")


@pytest.fixture
def whole_packages(monkeypatch: pytest.MonkeyPatch) -> None:
    """Packages of the format before chunks (one payload.tgz; PackageFormat WHOLE), which hosts still serve
    and install: for the tests that look at or damage a package's payload file itself."""
    import functools

    from rds.storehouse import Storehouse

    monkeypatch.setenv("RDS_TEST_PACKAGE_FORMAT", "WHOLE")
    monkeypatch.setattr(Storehouse, "register", functools.partialmethod(Storehouse.register, chunked=False))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that reads or damages a package's payload file (``payload.tgz``) tests the format that has one:
    it runs with ``whole_packages``; every other test makes packages of chunks, the default."""
    import inspect

    for item in items:
        fn = getattr(item, "function", None)
        if fn is None or "whole_packages" in getattr(item, "fixturenames", ()):
            continue
        try:
            source = inspect.getsource(fn)
        except (OSError, TypeError):
            continue
        if "payload" in source.lower() and "chunk" not in source.lower():
            item.fixturenames.insert(0, "whole_packages")  # type: ignore[attr-defined] # before the others


def mounts_under(top: Path) -> list[Path]:
    """Mount points at or below ``top`` in this mount namespace, deepest first (from /proc/self/mountinfo)."""
    found = []
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return []
    for line in lines:
        fields = line.split()
        if len(fields) < 5:
            continue
        point = Path(fields[4].encode().decode("unicode_escape"))  # \040 for a space and the like
        if point == top or top in point.parents:
            found.append(point)
    return sorted(found, key=lambda p: len(p.parts), reverse=True)


def detach(points: Sequence[Path]) -> None:
    """Unmount each (lazily if busy): a file system left mounted in pytest's temporary directories makes
    pytest's own clean-up of old runs fail with EBUSY at the end of a later session."""
    for point in points:
        if subprocess.run(["umount", str(point)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(point)], capture_output=True)


def pytest_sessionstart(session: pytest.Session) -> None:
    """Before pytest removes the temporary directories of old runs: a small file system a killed run left
    mounted there (tests/faults mounts tmpfs as root) is unmounted, outside this run's own directory."""
    if os.geteuid() != 0 or hasattr(session.config, "workerinput"):
        return
    base = session.config._tmp_path_factory.getbasetemp()  # type: ignore[attr-defined]
    runs = base.parent
    detach([p for p in mounts_under(runs) if not (p == base or base in p.parents)])


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Nothing this run mounted stays mounted once it ends, whatever a test left behind."""
    if os.geteuid() != 0 or hasattr(session.config, "workerinput"):
        return
    base = session.config._tmp_path_factory.getbasetemp()  # type: ignore[attr-defined]
    detach(mounts_under(base))
