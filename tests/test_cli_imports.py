"""What a command imports before it does anything (issue 16: commands start fast).

An administrator runs the commands all day, and ``--help`` or a usage error
must not pay for the library: each command module imports click, rds.cli and
rds.errors, and the library where a command uses it.  The import set is
asserted here, in a fresh interpreter a command, rather than a time.
"""

from __future__ import annotations

import configparser
import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import click
import pytest

from rds import cli
from rds.errors import SystemError_
from rds.forced import COMMANDS

ROOT = Path(__file__).resolve().parent.parent

# the forced commands import more at start (their in-process fallback); each still keeps the heavy libraries out
WIDER = {"rds-serve", "rds-wake"}
# never imported by a command before it works: the SSH stack, the table printer, the chunker
HEAVY = {"paramiko", "cryptography", "nacl", "bcrypt", "tabulate", "pyfastcdc"}
# nor the standard library's heavier parts that only the work needs
WORK = {"sqlite3", "json", "hashlib", "tarfile", "logging", "subprocess", "socket", "concurrent", "dataclasses"}

# json is imported after the modules are counted
PROBE = """
import sys
sys.argv[0] = {name!r}
from {module} import {func} as main
imported = sorted(sys.modules)
try:
    main()
except SystemExit as e:
    code = e.code
after_help = sorted(sys.modules)
import json
print(json.dumps({{"imported": imported, "after_help": after_help, "code": code}}))
"""


def commands() -> list[tuple[str, str, str]]:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg", encoding="utf-8")
    out = []
    for line in cfg["options.entry_points"]["console_scripts"].strip().splitlines():
        name, _, target = line.partition("=")
        module, _, func = target.strip().partition(":")
        out.append((name.strip(), module, func))
    return out


def probe(name: str, module: str, func: str) -> dict[str, object]:
    proc = subprocess.run([sys.executable, "-c", PROBE.format(name=name, module=module, func=func), "--help"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.splitlines()[-1])  # type: ignore[no-any-return]


def tops(modules: object) -> set[str]:
    assert isinstance(modules, list)
    return {m.split(".")[0] for m in modules}


@pytest.mark.parametrize(("name", "module", "func"), commands(), ids=[c[0] for c in commands()])
def test_a_command_imports_no_more_than_it_needs_to_start(name: str, module: str, func: str) -> None:
    found = probe(name, module, func)
    assert found["code"] == 0
    for key in ("imported", "after_help"):
        assert not tops(found[key]) & HEAVY, f"{name} ({key}): {sorted(tops(found[key]) & HEAVY)}"
    if name in WIDER:
        return
    ours = {m for m in found["imported"] if m.split(".")[0] == "rds"}  # type: ignore[attr-defined]
    assert ours <= {"rds", "rds.cli", module, "rds.errors", "rds.codes"}, f"{name} imports {sorted(ours)}"
    assert not tops(found["after_help"]) & WORK, f"{name} --help: {sorted(tops(found['after_help']) & WORK)}"
    assert "rds.home" not in found["after_help"]  # type: ignore[operator]


def test_the_setup_lists_every_command_module() -> None:
    """The probe above runs what setup.cfg lists: every module of rds/cli is one of them, or the click command
    that a forced command's entry point (rds.forced) or rdsft's (rds.checkin) hands --help to."""
    import importlib

    listed = {module for _, module, _ in commands()} | set(COMMANDS.values())
    listed |= {getattr(importlib.import_module(m), "CLICK", m) for _, m, _ in commands()}  # rdsft: rds.checkin
    modules = {f"rds.cli.{p.stem}" for p in (ROOT / "rds" / "cli").glob("*.py") if p.stem != "__init__"}
    assert modules <= listed


def _raising(e: BaseException) -> click.Command:
    @click.command(name="probe")
    def command() -> int:
        raise e
    return command


def test_a_database_error_is_one_line_and_the_system_exit_code(capsys: pytest.CaptureFixture[str]) -> None:
    """run looks sqlite3 up only when something ends a command; it says a database error as before."""
    with pytest.raises(SystemExit) as ended:
        cli.run(_raising(sqlite3.OperationalError("database is locked")), [])
    assert ended.value.code == SystemError_.exit_code
    assert capsys.readouterr().err == "probe: state database: database is locked\n"


def test_an_unexpected_error_still_shows_its_traceback() -> None:
    with pytest.raises(ValueError, match="a bug"):
        cli.run(_raising(ValueError("a bug")), [])
