"""Errors of the commands (rds/cli): exit codes of rds(7), one line on stderr, never a traceback."""

from __future__ import annotations

import configparser
import dataclasses
import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import Host, Tree

from rds import database, jobs
from rds.cli import run
from rds.packages import PackageId
from rds.storehouse import Storehouse

SETUP_CFG = Path(__file__).resolve().parent.parent / "setup.cfg"


def console_scripts() -> dict[str, str]:
    cfg = configparser.ConfigParser()
    cfg.read(SETUP_CFG)
    lines = cfg["options.entry_points"]["console_scripts"].strip().splitlines()
    return dict((part.strip() for part in line.split("=", 1)) for line in lines if line.strip())  # type: ignore[misc]


@dataclasses.dataclass
class Ran:
    returncode: int
    stdout: str
    stderr: str


def fails(proc: Ran | subprocess.CompletedProcess[str], command: str, code: int, message: str | None = None) -> str:
    """The command failed with ``code`` and said why in exactly one line of stderr."""
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith(f"{command}: ")
    assert proc.stderr.endswith("\n") and proc.stderr.count("\n") == 1, proc.stderr
    line = proc.stderr.rstrip("\n")
    if message is not None:
        assert line == f"{command}: {message}"
    return line


class Cli:
    """Runs a command in this process through ``rds.cli.run``, as its console script does (fast)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
        self.monkeypatch = monkeypatch
        self.capsys = capsys

    def __call__(self, host: Host, name: str, *args: str) -> Ran:
        module = importlib.import_module(console_scripts()[name].split(":")[0])
        if hasattr(module, "CLICK"):  # rdsft's entry point (rds.checkin) hands its click command the rest
            module = importlib.import_module(module.CLICK)
        self.monkeypatch.setenv("RDS_HOME", str(host.path))
        self.capsys.readouterr()
        with pytest.raises(SystemExit) as e:
            run(module.command, list(args))
        out, err = self.capsys.readouterr()
        return Ran(int(e.value.code or 0), out, err)


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Cli:
    return Cli(monkeypatch, capsys)


@pytest.fixture
def mgr(tree: Tree) -> Host:
    host = tree.add("mgr")
    tree.add("c1", upper="mgr")
    return host


@pytest.fixture
def pid(tree: Tree, mgr: Host) -> str:
    src = tree.root / "src-APP"
    (src / "bin").mkdir(parents=True)
    (src / "bin" / "app").write_text("app\n")
    return str(Storehouse(mgr.home().packages).register(PackageId.parse("C.AB.APP.0100"), src, "/opt/app").id)


def job_count(mgr: Host) -> int:
    db = database.connect(mgr.home().db_path)
    try:
        return len(jobs.listing(db))
    finally:
        db.close()


# -- dcmjexe ------------------------------------------------------------------

def test_dcmjexe_creates_a_job(cli: Cli, mgr: Host, pid: str) -> None:
    assert cli(mgr, "dcmjexe", "-r", pid, "-h", "c1", "c9") == Ran(0, "1\n", (
        "dcmjexe: 2 hosts have not reported in yet (c1, c9); their jobs are held until they do\n"))
    assert job_count(mgr) == 2


def test_dcmjexe_unknown_package(cli: Cli, mgr: Host, pid: str) -> None:
    proc = cli(mgr, "dcmjexe", "-r", "C.AB.NONE.0100", "-h", "c1")
    fails(proc, "dcmjexe", 3, "unknown package C.AB.NONE.0100.0000 (register it with rdsft -c)")
    assert proc.stdout == ""
    assert job_count(mgr) == 0


def test_dcmjexe_malformed_package_id(cli: Cli, mgr: Host) -> None:
    fails(cli(mgr, "dcmjexe", "-r", "APP", "-h", "c1"), "dcmjexe", 3,
          "bad package ID 'APP' (expected C.CABINET.PACKAGE.VERSION[.GENERATION])")


@pytest.mark.parametrize("host", ["bad_host!", "1.2.3.4", "c1-", "a" * 65, "c1/../c2", ""])
def test_dcmjexe_malformed_host_name(cli: Cli, mgr: Host, pid: str, host: str) -> None:
    proc = cli(mgr, "dcmjexe", "-r", pid, "-h", "c1", host)
    fails(proc, "dcmjexe", 3, f"malformed host name {host!r} (1-64 letters, digits, '-' and '.'; no IP address)")
    assert proc.stdout == ""
    assert job_count(mgr) == 0  # not even the job for the good host


def test_dcmjexe_to_the_managing_server_itself(cli: Cli, mgr: Host, pid: str) -> None:
    fails(cli(mgr, "dcmjexe", "-r", pid, "-h", "mgr"), "dcmjexe", 3,
          "mgr is this managing server itself, not a destination")
    assert job_count(mgr) == 0


def test_dcmjexe_on_a_host_that_is_not_the_managing_server(cli: Cli, tree: Tree, mgr: Host, pid: str) -> None:
    c1 = tree["c1"]
    fails(cli(c1, "dcmjexe", "-r", pid, "-h", "c1"), "dcmjexe", 1,
          f"{c1.path}: not the managing server (RDSSETFL names ManagingHost {mgr.path}); create jobs there")
    assert job_count(c1) == 0


def test_dcmjexe_without_destinations(cli: Cli, mgr: Host, pid: str) -> None:
    fails(cli(mgr, "dcmjexe", "-r", pid), "dcmjexe", 1,
          "give the destinations with -h HOST [HOST...], -f FILE or -g GROUP")


def test_dcmjexe_without_package(cli: Cli, mgr: Host) -> None:
    line = fails(cli(mgr, "dcmjexe", "-h", "c1"), "dcmjexe", 1)
    assert "Missing option '-r'" in line and line.endswith("(see 'dcmjexe --help')")


# -- rdsft ----------------------------------------------------------------------

@pytest.mark.parametrize("args", [[], ["-a", "-c"], ["-a", "-init"], ["-c", "-init"], ["-a", "-c", "-init"]])
def test_rdsft_needs_exactly_one_mode(cli: Cli, mgr: Host, args: list[str]) -> None:
    fails(cli(mgr, "rdsft", *args), "rdsft", 1, "give exactly one of -a, -c and -init")


def test_rdsft_c_without_cabinet(cli: Cli, tree: Tree, mgr: Host) -> None:
    (tree.root / "src").mkdir()
    fails(cli(mgr, "rdsft", "-c", "-r", "APP", "-v", "1", "-i", "/opt/app", str(tree.root / "src")), "rdsft", 1,
          "-c needs -g")
    assert sorted(p.name for p in (mgr.path / "RDS").iterdir()) == [".partial"]


def test_rdsft_c_needs_everything(cli: Cli, mgr: Host) -> None:
    fails(cli(mgr, "rdsft", "-c"), "rdsft", 1, "-c needs -g, -r, -v, -i, SOURCE_DIR")


def test_rdsft_c_bad_cabinet(cli: Cli, tree: Tree, mgr: Host) -> None:
    (tree.root / "src").mkdir()
    fails(cli(mgr, "rdsft", "-c", "-g", "ABC", "-r", "APP", "-v", "1", "-i", "/opt/app", str(tree.root / "src")),
          "rdsft", 3, "bad cabinet 'ABC' (allowed: 1-2 letters or digits)")


def test_rdsft_c_missing_source(cli: Cli, tree: Tree, mgr: Host) -> None:
    src = tree.root / "nowhere"
    fails(cli(mgr, "rdsft", "-c", "-g", "AB", "-r", "APP", "-v", "1", "-i", "/opt/app", str(src)), "rdsft", 3,
          f"{src}: no such directory")


def test_rdsft_c_relative_install_dir(cli: Cli, tree: Tree, mgr: Host) -> None:
    (tree.root / "src").mkdir()
    fails(cli(mgr, "rdsft", "-c", "-g", "AB", "-r", "APP", "-v", "1", "-i", "opt/app", str(tree.root / "src")),
          "rdsft", 3, "install directory 'opt/app' must be an absolute path without '..'")


def test_rdsft_c_unreadable_script(cli: Cli, tree: Tree, mgr: Host) -> None:
    (tree.root / "src").mkdir()
    line = fails(cli(mgr, "rdsft", "-c", "-g", "AB", "-r", "APP", "-v", "1", "-i", "/opt/app", "--script",
                     str(tree.root / "no-script"), str(tree.root / "src")), "rdsft", 3)
    assert line.startswith(f"rdsft: {tree.root / 'no-script'}: cannot read the script")
    assert sorted(p.name for p in (mgr.path / "RDS").iterdir()) == [".partial"]


def test_rdsft_c_twice(cli: Cli, tree: Tree, mgr: Host, pid: str) -> None:
    (tree.root / "src").mkdir()
    fails(cli(mgr, "rdsft", "-c", "-g", "AB", "-r", "APP", "-v", "0100", "-i", "/opt/app", str(tree.root / "src")),
          "rdsft", 3, f"package {pid} is already registered")


def test_rdsft_a_options_of_c_are_refused(cli: Cli, mgr: Host) -> None:
    fails(cli(mgr, "rdsft", "-a", "-g", "AB"), "rdsft", 1,
          "-g, -r, -v, -G, -i, --script and SOURCE_DIR go with -c only")


def test_rdsft_a_on_the_managing_server(cli: Cli, mgr: Host) -> None:
    fails(cli(mgr, "rdsft", "-a"), "rdsft", 1,
          f"{mgr.path}: this host is the managing server (RDSSETFL has no ManagingHost)")


def test_rdsft_init_on_the_managing_server_keeps_its_packages(cli: Cli, mgr: Host, pid: str) -> None:
    fails(cli(mgr, "rdsft", "-init"), "rdsft", 1,
          "this is the managing server: -init would delete the registered packages")
    assert (mgr.path / "RDS" / pid / "manifest.json").is_file()
    for name, _, size, *_ in json.loads((mgr.path / "RDS" / pid / "manifest.json").read_text())["chunks"]:
        assert (mgr.path / "RDS" / ".chunks" / name[:2] / name).stat().st_size == size


def test_rdsft_unknown_option(cli: Cli, mgr: Host) -> None:
    line = fails(cli(mgr, "rdsft", "--bogus"), "rdsft", 1)
    assert "No such option" in line and "--bogus" in line and line.endswith("(see 'rdsft --help')")


# -- dcmstat --------------------------------------------------------------------

def test_dcmstat_unknown_job(cli: Cli, mgr: Host, pid: str) -> None:
    assert cli(mgr, "dcmjexe", "-r", pid, "-h", "c1").returncode == 0
    proc = cli(mgr, "dcmstat", "-n", "99")
    fails(proc, "dcmstat", 3, "no job 99")
    assert proc.stdout == ""


@pytest.mark.parametrize("job", ["0", "abc", "-1"])
def test_dcmstat_bad_job_number(cli: Cli, mgr: Host, job: str) -> None:
    line = fails(cli(mgr, "dcmstat", "-n", job), "dcmstat", 1)
    assert "'-n'" in line


def test_dcmstat_on_a_host_that_is_not_the_managing_server(cli: Cli, tree: Tree, mgr: Host) -> None:
    line = fails(cli(tree["c1"], "dcmstat"), "dcmstat", 1)
    assert line.startswith(f"dcmstat: {tree['c1'].path}: not the managing server")


def test_dcmstat_of_a_waiting_job_exits_31(cli: Cli, mgr: Host, pid: str) -> None:
    cli(mgr, "dcmjexe", "-r", pid, "-h", "c1")
    proc = cli(mgr, "dcmstat", "--json")
    assert (proc.returncode, proc.stderr) == (31, "")
    [row] = json.loads(proc.stdout)
    assert (row["job_no"], row["dest"], row["package"], row["status"], row["code"]) == (1, "c1", pid, "WAIT", "10")


# -- rdsgroupid -----------------------------------------------------------------

def test_rdsgroupid_lists_and_deletes(cli: Cli, mgr: Host, pid: str) -> None:
    assert cli(mgr, "rdsgroupid") == Ran(0, "no jobs\n", "")
    cli(mgr, "dcmjexe", "-r", pid, "-h", "c1", "c2")
    cli(mgr, "dcmjexe", "-r", pid, "-h", "c1")
    listing = cli(mgr, "rdsgroupid").stdout.splitlines()
    assert listing[0].split()[:4] == ["JOB", "DESTINATION", "PACKAGE", "STATE"]
    assert [line.split()[:4] for line in listing[1:]] == [["1", "c1", pid, "WAIT"], ["1", "c2", pid, "WAIT"],
                                                          ["2", "c1", pid, "WAIT"]]
    assert cli(mgr, "rdsgroupid", "-d", "1:c2") == Ran(0, "deleted 1 job(s)\n", "")
    assert cli(mgr, "rdsgroupid", "-d", "1", "2") == Ran(0, "deleted 2 job(s)\n", "")
    assert json.loads(cli(mgr, "rdsgroupid", "--json").stdout) == []
    assert cli(mgr, "rdsgroupid") == Ran(0, "no jobs\n", "")


def test_rdsgroupid_json(cli: Cli, mgr: Host, pid: str) -> None:
    cli(mgr, "dcmjexe", "-r", pid, "-h", "c1")
    [row] = json.loads(cli(mgr, "rdsgroupid", "--json").stdout)
    assert (row["job_no"], row["dest"], row["type"], row["package"], row["state"]) == (1, "c1", "INSTALL", pid, "WAIT")


@pytest.mark.parametrize("key", ["x", "1:", "-1", "1:c1 x"])
def test_rdsgroupid_bad_job_key(cli: Cli, mgr: Host, pid: str, key: str) -> None:
    cli(mgr, "dcmjexe", "-r", pid, "-h", "c1")
    fails(cli(mgr, "rdsgroupid", "-d", key), "rdsgroupid", 3, f"bad job {key!r} (expected JOB or JOB:HOST)")
    assert job_count(mgr) == 1  # nothing deleted


def test_rdsgroupid_job_keys_without_d(cli: Cli, mgr: Host) -> None:
    fails(cli(mgr, "rdsgroupid", "1"), "rdsgroupid", 3, "job arguments go with -d")


def test_rdsgroupid_deleting_an_unknown_job_says_why(cli: Cli, mgr: Host) -> None:
    """Regression: ``rdsgroupid -d 99`` failed (exit 3) silently: no line on stderr said there is no job 99."""
    fails(cli(mgr, "rdsgroupid", "-d", "99"), "rdsgroupid", 3)


# -- through the installed commands: real processes ---------------------------------

@pytest.mark.parametrize(("command", "args", "code", "message"), [
    ("dcmjexe", ["-r", "C.AB.NONE.0100", "-h", "c1"], 3, "unknown package C.AB.NONE.0100.0000 (register it with "
                                                         "rdsft -c)"),
    ("dcmjexe", ["-r", "C.AB.APP.0100", "-h", "bad_host!"], 3, "malformed host name 'bad_host!' (1-64 letters, "
                                                               "digits, '-' and '.'; no IP address)"),
    ("rdsft", [], 1, "give exactly one of -a, -c and -init"),
    ("dcmstat", ["-n", "99"], 3, "no job 99"),
    ("rdsgroupid", ["-d", "x"], 3, "bad job 'x' (expected JOB or JOB:HOST)"),
])
def test_installed_command_error(mgr: Host, command: str, args: list[str], code: int, message: str) -> None:
    fails(mgr.run(command, *args, check=False), command, code, message)


def test_rdsft_a_unreachable_upper(tree: Tree) -> None:
    gone = tree.root / "gone"
    c1 = tree.add("c1", settings=f"ManagingHost\t{gone}\n")
    proc = c1.run("rdsft", "-a", check=False)
    fails(proc, "rdsft", 253, f"upper system {gone}: no such directory")
    assert proc.stdout == ""
    assert "retry 1 of 1 in 0s, at " in (c1.path / "log" / "rds.log").read_text()  # RetryCount 1: tried twice
    assert not gone.exists()


def test_setup_cfg_lists_the_commands() -> None:
    assert {"rdsft", "rdsma", "rdsdlv", "rdsdlvse", "rdsdlvclr", "rdsclr", "rdsgroupid", "rdssnd", "dcmjexe",
            "dcmstat"} <= set(console_scripts())


@pytest.mark.parametrize("name", sorted(console_scripts()))
def test_help_of_every_command(name: str) -> None:
    exe = Path(sys.executable).parent / name
    if exe.exists():
        argv = [str(exe), "--help"]
    else:  # in setup.cfg but not installed yet: run its entry point
        module, func = console_scripts()[name].split(":")
        argv = [sys.executable, "-c", f"import sys; sys.argv[0] = {name!r}; from {module} import {func}; {func}()",
                "--help"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert (proc.returncode, proc.stderr) == (0, "")
    assert proc.stdout.startswith(f"Usage: {name} ")
    assert "--help" in proc.stdout
