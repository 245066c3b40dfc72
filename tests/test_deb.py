"""The Debian package (bin/rds-deb): built from this tree, its contents checked, unpacked into a
scratch root, and a whole distribution (bin/rds-demo) run with the commands unpacked there under
Debian's /usr/bin/python3."""

from __future__ import annotations

import configparser
import gzip
import os
import shutil
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SYSTEM_PYTHON = Path("/usr/bin/python3")


def _needed(tool: str) -> None:
    if shutil.which(tool) is None:
        assert os.environ.get("CI") != "true", f"{tool} is not installed (bin/rds-test installs it)"
        pytest.skip(f"{tool} is not installed")


def console_scripts() -> list[str]:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg", encoding="utf-8")
    return [ln.partition("=")[0].strip() for ln in cfg["options.entry_points"]["console_scripts"].split("\n")
            if ln.strip()]


@pytest.fixture(scope="module")
def deb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    _needed("dpkg-deb")
    out = tmp_path_factory.mktemp("dist")
    proc = subprocess.run([str(ROOT / "bin" / "rds-deb"), str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    debs = list(out.glob("rds_*.deb"))
    assert [Path(proc.stdout.strip())] == debs
    return debs[0]


@pytest.fixture(scope="module")
def scratch(deb: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("root")
    subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True, timeout=120)
    return root


def members(deb: Path) -> dict[str, tuple[int, int, int]]:
    """Path in the package -> (mode, uid, gid), read with dpkg-deb's own data.tar listing."""
    proc = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], capture_output=True, check=True, timeout=120)
    import io

    with tarfile.open(fileobj=io.BytesIO(proc.stdout)) as tar:
        return {m.name.removeprefix("."): (m.mode, m.uid, m.gid) for m in tar}


def field(deb: Path, name: str) -> str:
    return subprocess.run(["dpkg-deb", "-f", str(deb), name], capture_output=True, text=True, check=True).stdout.strip()


def test_file_name_and_control(deb: Path) -> None:
    from rds import __version__

    arch = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True).stdout.strip()
    assert deb.name == f"rds_{__version__}_{arch}.deb"
    assert field(deb, "Package") == "rds" and field(deb, "Version") == __version__
    depends = field(deb, "Depends")
    assert "python3 (>= 3.11)" in depends and "python3 (<< 3.12)" in depends
    # only Debian's archive is needed: no pip, no python3-paramiko (2.12 in Debian 12 is too old)
    assert "paramiko" not in depends and "pip" not in depends


def test_contents(deb: Path) -> None:
    files = members(deb)
    for name in console_scripts():
        assert files[f"/usr/bin/{name}"][0] & 0o777 == 0o755, name
    for page in (ROOT / "man").glob("*.[157]"):
        assert f"/usr/share/man/man{page.suffix[1:]}/{page.name}.gz" in files
    for unit in ("rdsma", "rdssnd", "rdsdlvse"):
        assert f"/lib/systemd/system/{unit}.service" in files
    for name in ("/etc/logrotate.d/rds", "/usr/share/doc/rds/copyright",
                 "/usr/share/doc/rds/examples/RDSSETFL.sample", "/usr/share/doc/rds/examples/localrc",
                 "/usr/lib/rds/rds/cli/rdsft.py", "/usr/lib/rds/paramiko/transport.py",
                 "/usr/lib/rds/click/core.py"):
        assert name in files, name
    assert all(uid == 0 and gid == 0 for _, uid, gid in files.values())
    assert not [n for n in files if "__pycache__" in n or n.startswith("/usr/local")]
    assert not [n for n in files if n.startswith("/usr/lib/rds/tests")]


def test_man_pages_are_the_sources(scratch: Path) -> None:
    for page in (ROOT / "man").glob("*.[157]"):
        packed = scratch / f"usr/share/man/man{page.suffix[1:]}/{page.name}.gz"
        assert gzip.decompress(packed.read_bytes()) == page.read_bytes()


def test_man_finds_rdsft(scratch: Path) -> None:
    _needed("man")
    proc = subprocess.run(["man", "-M", str(scratch / "usr/share/man"), "-P", "cat", "rdsft"], capture_output=True,
                          text=True, timeout=60, env={**os.environ, "MANWIDTH": "80", "MAN_KEEP_FORMATTING": ""})
    assert proc.returncode == 0, proc.stderr
    assert "rdsft - check for jobs" in proc.stdout and "EXIT STATUS" in proc.stdout


def test_units_verify(scratch: Path, tmp_path: Path) -> None:
    """systemd-analyze verify in a root holding the system's own units and the package's files."""
    _needed("systemd-analyze")
    root = tmp_path / "verify"
    shutil.copytree("/lib/systemd/system", root / "lib/systemd/system", symlinks=True)
    shutil.copytree(scratch, root, symlinks=True, dirs_exist_ok=True)
    units = sorted(str(p) for p in (root / "lib/systemd/system").glob("rds*.service"))
    assert len(units) == 3
    proc = subprocess.run(["systemd-analyze", "verify", f"--root={root}", *units], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0 and not proc.stderr.strip(), proc.stderr
    for unit in units:
        text = Path(unit).read_text()
        exec_start = next(ln.split("=", 1)[1] for ln in text.splitlines() if ln.startswith("ExecStart="))
        assert (scratch / exec_start.split()[0].lstrip("/")).is_file()


def test_apt_can_install_it(deb: Path) -> None:
    """apt's own solver, simulating: every dependency is in Debian's archive."""
    _needed("apt-get")
    if not SYSTEM_PYTHON.exists():
        pytest.skip("not a Debian system")
    proc = subprocess.run(["apt-get", "-s", "-o", "Debug::NoLocking=1", "install", str(deb)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Inst rds " in proc.stdout or "rds is already the newest" in proc.stdout


@pytest.fixture
def clean_env() -> Iterator[dict[str, str]]:
    """Only what a root shell has: no venv, no PYTHONPATH."""
    yield {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": os.environ.get("HOME", "/root"), "LANG": "C.UTF-8"}


def test_every_installed_command_answers_version(scratch: Path, clean_env: dict[str, str]) -> None:
    if not SYSTEM_PYTHON.exists():
        pytest.skip("no /usr/bin/python3")
    from rds import __version__

    for name in console_scripts():
        proc = subprocess.run([str(scratch / "usr/bin" / name), "--version"], capture_output=True, text=True,
                              env=clean_env, timeout=60)
        assert (proc.returncode, proc.stdout) == (0, f"{name} (rds) {__version__}\n"), proc.stderr


def test_demo_runs_with_the_installed_commands(scratch: Path, tmp_path: Path, clean_env: dict[str, str]) -> None:
    if not SYSTEM_PYTHON.exists():
        pytest.skip("no /usr/bin/python3")
    demo = tmp_path / "demo"
    proc = subprocess.run([str(ROOT / "bin" / "rds-demo"), str(demo)], capture_output=True, text=True, timeout=600,
                          env={**clean_env, "RDS_BIN": str(scratch / "usr/bin")})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # no other rds on that PATH: the commands the demo ran were the unpacked ones
    assert shutil.which("rdsft", path=clean_env["PATH"]) in (None, "/usr/bin/rdsft")
    for client in ("client1", "client2"):
        assert (demo / client / "root/opt/hello/installed-on").read_text().strip() == client
    final = proc.stdout.split("Status at the managing server", 1)[1]
    lines = [ln for ln in final.splitlines() if ln.startswith("1 ")]
    assert len(lines) == 2 and all(" COMPLETE " in ln for ln in lines), proc.stdout


# -- the sdist and the metadata ---------------------------------------------------------------------------

def test_license_file_matches_setup_cfg() -> None:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg", encoding="utf-8")
    assert cfg["metadata"]["license"] == "MIT" and cfg["metadata"]["license_files"] == "LICENSE"
    assert (ROOT / "LICENSE").read_text().startswith("MIT License\n")


def test_paramiko_has_an_upper_bound() -> None:
    """rds/transport/connection.py overrides private methods of paramiko's Transport."""
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg", encoding="utf-8")
    [req] = [ln.strip() for ln in cfg["options"]["install_requires"].splitlines() if ln.strip().startswith("paramiko")]
    assert "<" in req
    import paramiko
    from packaging.requirements import Requirement

    assert Requirement(req).specifier.contains(paramiko.__version__)  # the tests run with an allowed one


def test_sdist_carries_what_its_tests_need(tmp_path: Path) -> None:
    work = tmp_path / "src"
    shutil.copytree(ROOT, work, ignore=shutil.ignore_patterns(".venv", ".git", "*.egg-info", "__pycache__",
                                                              ".*_cache", "dist", "build"))
    import sys

    proc = subprocess.run([sys.executable, "-c", "import setuptools; setuptools.setup()", "-q", "sdist", "-d",
                           str(tmp_path / "out")], cwd=work, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    [sdist] = (tmp_path / "out").glob("rds-*.tar.gz")
    with tarfile.open(sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    wanted = {n for n in tracked if n.split("/")[0] in ("rds", "tests", "man", "etc", "docs", "bin", "bench", ".ci")}
    wanted |= {"LICENSE", "README.md", "setup.cfg", "pyproject.toml"}
    assert not wanted - names, sorted(wanted - names)
