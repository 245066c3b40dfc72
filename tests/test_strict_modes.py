"""Strict modes and clean install scripts (issue 13, parts 3 and 4).

Under umask 000 a new home got log/, work/, RDS/, GROUP/, run/ at 0777; a
local user planted a symlink at work/JOB.HOST.sh and root's install
overwrote the file it pointed to.  A script started through a startup request
received SSH_ORIGINAL_COMMAND and the SSH client's LC_* variables.
"""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest
from conftest import BIN, Tree

from rds.errors import SettingsError

NOBODY = 65534


def mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_new_home_under_umask_000_is_owner_only(tree: Tree) -> None:
    mgr = tree.add("mgr")
    proc = subprocess.run([str(BIN / "rdsgroupid")], env=mgr.env(), capture_output=True, text=True, umask=0)
    assert proc.returncode == 0, proc.stderr
    for d in ("", "rdsprm", "log", "log/install", "work", "RDS", "RDS/.partial", "GROUP", "run"):
        assert mode(mgr.path / d) & 0o077 == 0 or d in ("", "rdsprm"), (d, oct(mode(mgr.path / d)))
    for f in mgr.path.rglob("*"):
        assert mode(f) & 0o022 == 0, f"{f} is writable by others ({mode(f):o})"


def test_fresh_home_directory_is_made_0700(tmp_path: Path) -> None:
    from rds.home import Home

    home = tmp_path / "fresh" / "home"
    old = os.umask(0)
    try:
        Home.open(home)
    finally:
        os.umask(old)
    assert mode(home) == 0o700 and mode(home / "work") == 0o700


@pytest.mark.parametrize("rel, what, fix", [
    ("", "the home", "chmod go-w"),
    ("work", "a directory of the home", "chmod go-w"),
    ("log", "a directory of the home", "chmod go-w"),
    ("rdsprm/RDSSETFL", "the settings file", "chmod go-w"),
    ("GROUP/rds.db", "the state database", "chmod go-w"),
])
def test_writable_by_others_is_refused_with_one_line(tree: Tree, rel: str, what: str, fix: str) -> None:
    mgr = tree.add("mgr")
    mgr.run("rdsgroupid")
    target = mgr.path / rel
    target.chmod(mode(target) | 0o002)
    proc = mgr.run("rdsgroupid", check=False)
    assert proc.returncode == SettingsError.exit_code
    assert proc.stderr.count("\n") == 1 and proc.stdout == ""
    assert f"{target}: {what} is writable by others" in proc.stderr and f"{fix} {target}" in proc.stderr
    target.chmod(mode(target) & ~0o022)
    mgr.run("rdsgroupid")


def test_a_file_of_another_user_is_refused(tree: Tree) -> None:
    mgr = tree.add("mgr")
    os.chown(mgr.path / "rdsprm" / "RDSSETFL", NOBODY, NOBODY)
    proc = mgr.run("rdsgroupid", check=False)
    assert proc.returncode == SettingsError.exit_code and "belongs to uid 65534" in proc.stderr


@pytest.mark.parametrize("which", ["IdentityFile", "KnownHostsFile"])
def test_identity_and_known_hosts_open_to_others_are_refused(tree: Tree, tmp_path: Path, which: str) -> None:
    key, known = tmp_path / "id", tmp_path / "known"
    key.write_text("not read: refused first\n")
    known.write_text("")
    key.chmod(0o644 if which == "IdentityFile" else 0o600)
    known.chmod(0o666 if which == "KnownHostsFile" else 0o644)
    relay = tree.add("relay", settings=f"ManagingHost\tssh://127.0.0.1:1\nIdentityFile\t{key}\n"
                                         f"KnownHostsFile\t{known}\n")
    proc = relay.run("rdsft", "-a", check=False)
    assert proc.returncode == SettingsError.exit_code, proc.stderr
    path = key if which == "IdentityFile" else known
    assert proc.stderr.startswith(f"rdsft: {path}: ") and "by others" in proc.stderr
    assert ("chmod go-rwx" if which == "IdentityFile" else "chmod go-w") in proc.stderr


def test_another_user_cannot_plant_a_link_in_work(tree: Tree) -> None:
    relay = tree.add("relay")
    relay.run("rdsgroupid")
    plant = subprocess.run(["ln", "-s", "/etc/passwd", str(relay.path / "work" / "1.relay.sh")],
                           user=NOBODY, capture_output=True, text=True)
    assert plant.returncode != 0 and "Permission denied" in plant.stderr
    assert not (relay.path / "work" / "1.relay.sh").is_symlink()


def test_a_link_at_the_script_path_is_not_followed(tree: Tree, tmp_path: Path) -> None:
    """The link planted earlier (when work/ was open to all) is replaced, not written through."""
    mgr, relay = tree.add("mgr"), tree.add("relay", "mgr")
    relay.run("rdsft", "-a")
    mgr.run("dcmjexe", "-r", tree.package(), "-h", "relay")
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    (relay.path / "work" / "1.relay.sh").symlink_to(victim)
    relay.run("rdsft", "-a")
    assert victim.read_text() == "precious\n"
    assert (relay.installed("/opt/installs")).read_text() == "run\n"


def test_install_script_gets_a_clean_fixed_environment(tree: Tree) -> None:
    mgr, relay = tree.add("mgr"), tree.add("relay", "mgr")
    relay.run("rdsft", "-a")
    script = ("#!/bin/sh\nenv | sort > \"$RDS_INSTALL_DIR/../env\"\numask > \"$RDS_INSTALL_DIR/../umask\"\n"
              "pwd > \"$RDS_INSTALL_DIR/../cwd\"\nwc -c > \"$RDS_INSTALL_DIR/../stdin\"\n")
    pkg = tree.package(script=script)
    mgr.run("dcmjexe", "-r", pkg, "-h", "relay")
    hostile = relay.env(SSH_ORIGINAL_COMMAND="rm -rf / # attacker", LC_EVIL="$(reboot)", LD_PRELOAD="/tmp/x.so",
                        PYTHONPATH="/tmp/evil", IFS="x")
    proc = subprocess.run([str(BIN / "rdsft"), "-a"], env=hostile, capture_output=True, text=True, umask=0)
    assert proc.returncode == 0, proc.stderr
    out = relay.installed("/opt")
    env = dict(line.split("=", 1) for line in (out / "env").read_text().splitlines())
    dest = relay.installed("/opt/app")
    expected = {"PATH", "HOME", "LANG", "LC_ALL", "SHELL", "RDS_PACKAGE", "RDS_INSTALL_DIR", "RDS_JOB", "RDS_HOST",
                "RDS_HOME"}
    assert set(env) - {"PWD", "SHLVL", "_", "OLDPWD"} == expected, env
    assert env["LANG"] == "C" and env["RDS_PACKAGE"] == pkg and env["RDS_INSTALL_DIR"] == str(dest)
    assert env["RDS_JOB"] == "1" and env["RDS_HOST"] == "relay" and env["PATH"].startswith("/usr/local/sbin")
    assert (out / "umask").read_text().strip() == "0022"
    assert (out / "cwd").read_text().strip() == str(dest)
    assert (out / "stdin").read_text().strip() == "0"
