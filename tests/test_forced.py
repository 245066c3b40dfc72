"""The forced commands' entry points (rds.forced): rds-serve and rds-wake start without click or rds.cli
for the command line sshd gives them, and behave as their click commands for every other one."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import Tree
from testkit import frames

from rds import log
from rds.forced import options

# runs an entry point, then says on stderr's last line which of click and rds.cli it imported
PROBE = ("import atexit, sys\n"
         "atexit.register(lambda: print('imported:', sorted(m for m in sys.modules if m.split('.')[0] == 'click'"
         " or m == 'rds.cli' or m.startswith('rds.cli.')), file=sys.stderr))\n"
         "sys.argv[0] = {name!r}\n"
         "from {module} import {func} as main\n"
         "main()\n")


def run(entry: str, args: list[str], stdin: bytes = b"", env: dict[str, str] | None = None,
        ) -> subprocess.CompletedProcess[bytes]:
    """``entry`` is 'fast' (setup.cfg's rds.forced entry point) or 'click' (the click command's module)."""
    name = args[0]
    module, func = ("rds.forced", name.removeprefix("rds-")) if entry == "fast" else \
        (f"rds.cli.{name.removeprefix('rds-')}", "main")
    code = PROBE.format(name=name, module=module, func=func)
    return subprocess.run([sys.executable, "-c", code, *args[1:]], input=stdin, capture_output=True, timeout=60,
                          env=env or os.environ.copy())


def imported(proc: subprocess.CompletedProcess[bytes]) -> str:
    return proc.stderr.decode().splitlines()[-1]


def without_probe(proc: subprocess.CompletedProcess[bytes]) -> tuple[int, bytes, list[str]]:
    return proc.returncode, proc.stdout, proc.stderr.decode().splitlines()[:-1]


def test_the_options_it_reads_itself() -> None:
    names = ("--lower", "--home")
    assert options(["--lower", "r1", "--home", "/h"], names) == {"--lower": "r1", "--home": "/h"}
    assert options(["--lower=r1", "--home=/h"], names) == {"--lower": "r1", "--home": "/h"}
    assert options([], names) == {}
    for other in (["--lower", "a", "--lower", "b"], ["--lower"], ["--lower", "--home", "/h"], ["--lower="],
                  ["--help"], ["--version"], ["-h"], ["--low", "r1"], ["r1"], ["--", "--lower", "r1"],
                  ["--lower", "-x"]):
        assert options(other, names) is None, other


def test_rds_serve_serves_without_click(tree: Tree) -> None:
    relay = tree.add("relay")
    relay.home()
    proc = run("fast", ["rds-serve", "--lower", "c1", "--home", str(relay.path)])
    assert proc.returncode == 0, proc.stderr
    assert imported(proc) == "imported: []"
    assert frames(proc.stdout) == [{"ok": True, "serve": frames(proc.stdout)[0]["serve"], "upper": "relay"}]
    assert run("fast", ["rds-serve", "--lower=c1", f"--home={relay.path}"]).stdout == proc.stdout
    # both sessions, idle, were counted in that home's log (said at most once an hour: rds.log.idle_session)
    log.idle_session(relay.home(), "c1", log.logger(relay.home()), now=time.time() + log.IDLE_SUMMARY)
    text = (relay.path / "log" / "rds.log").read_text()
    assert "served c1:" not in text and "served 3 idle session(s) from 1 host(s) since " in text


@pytest.mark.parametrize("args", [
    ["--help"], ["--version"], ["--lower", "bad name!"], ["--lower", "c1", "--home", "/etc/passwd"],
    ["--lower", "c1", "--bogus"], ["--home", "/nowhere"], [], ["--lower", "c1", "--lower", "c2", "--home", "/x"],
    ["--lower", "c1", "--home", "/nowhere"], ["--lower=c1", "--home=/nowhere"],
])
def test_rds_serve_says_what_its_click_command_says(args: list[str]) -> None:
    fast, slow = run("fast", ["rds-serve", *args]), run("click", ["rds-serve", *args])
    assert without_probe(fast) == without_probe(slow)
    if args and args[0] == "--lower" and "/nowhere" in args:  # the usual command line: answered without click
        assert imported(fast) == "imported: []" and frames(fast.stdout)[0]["ok"] is False


def test_a_bad_crash_hook_is_refused_alike() -> None:
    env = {**os.environ, "RDS_CRASH_AT": "nonsense"}
    args = ["rds-serve", "--lower", "c1", "--home", "/nowhere"]
    fast, slow = run("fast", args, env=env), run("click", args, env=env)
    assert fast.returncode == 2 and without_probe(fast) == without_probe(slow)
    assert imported(fast) == "imported: []"


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["--home", "/nowhere"], ["--home=/nowhere"],
                                  ["--home", "/etc/passwd"], ["--lower", "x"], []])
def test_rds_wake_says_what_its_click_command_says(args: list[str], tmp_path: Path) -> None:
    env = {**os.environ, "RDS_HOME": str(tmp_path / "none")}
    fast, slow = run("fast", ["rds-wake", *args], env=env), run("click", ["rds-wake", *args], env=env)
    assert without_probe(fast) == without_probe(slow)
    if args in (["--home", "/nowhere"], ["--home=/nowhere"], []):
        assert fast.returncode != 0 and imported(fast) == "imported: []"
