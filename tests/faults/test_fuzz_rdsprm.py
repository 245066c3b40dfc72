"""Fuzzing the files of rdsprm/: RDSSETFL and wuphosts.

Whatever they hold, reading them gives usable settings (or the hosts that may be started) or one
clear SettingsError naming the file and the line; never another exception.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from faults.hostile import clean_error, nasty_text, one_line
from rds import flags
from rds.errors import SettingsError
from rds.home import Home
from rds.settings import ATTRIBUTES, Settings, load_settings, parse_settings, valid_hostname

HOME = Path("/nonexistent/home")

plausible = st.sampled_from(["5", "0", "MANUAL", "30s", "2h", "1d", "512M", "9", "YES", "no", "JIT", "SNEAKERNET",
                             "/tmp/x", "relay1", "ssh://u@h:22/home", "ssh://h:99999", "ssh://", "1280", "1281",
                             "1.5m", "99", "100", "RESOURCE_DELETE", "10K", "1e3", "-5", "/", "a\x00b", "/x\x00"])
names = st.sampled_from(sorted(ATTRIBUTES)) | st.sampled_from(["hostname", "Host Name", "#HostName", ""]) | nasty_text
separators = st.sampled_from(["\t", " ", "  \t ", "", "=", "\t\t"])
lines = st.tuples(names, separators, plausible | nasty_text, st.sampled_from(["", " # note", "#", "\t"])).map(
    lambda t: "".join(t))
settings_text = st.lists(lines, max_size=8).map("\n".join) | nasty_text


def check_usable(s: Settings) -> None:
    """Accepted settings must be usable as they are: paths the OS can take, a host name, a managing host."""
    for field in ("delivery_status_file", "identity_file", "known_hosts_file", "install_root", "home"):
        value = getattr(s, field)
        assert value is None or "\x00" not in str(value), f"{field} holds a NUL: {value!r}"
    assert s.install_root.is_absolute()
    assert valid_hostname(s.host_name)
    assert s.managing_host is None or "\x00" not in s.managing_host


@given(settings_text)
def test_parse_settings(text: str) -> None:
    try:
        s = parse_settings(text, Path("/h/rdsprm/RDSSETFL"), HOME)
    except SettingsError as e:
        clean_error(e, limit=2000 + len(text))  # a bad value is quoted whole: it is the user's own line
        assert str(e).startswith("/h/rdsprm/RDSSETFL:"), "the error names the file"
        return
    check_usable(s)


@given(st.binary(max_size=300) | settings_text.map(lambda t: t.encode("utf-8", "surrogatepass")))
def test_load_settings(tmp_path: Path, data: bytes) -> None:
    home = tmp_path / "h"
    (home / "rdsprm").mkdir(parents=True, exist_ok=True)
    (home / "rdsprm" / "RDSSETFL").write_bytes(data)
    try:
        s = load_settings(home)
    except SettingsError as e:
        clean_error(e, limit=2000 + len(data))
        return
    check_usable(s)


def test_nul_in_a_path_setting_is_refused() -> None:
    """Bug found by fuzzing: a NUL in a path attribute (InstallRoot, KnownHostsFile...) was accepted, and the
    first use of the path (an install, an SSH connection) then failed with ValueError and a traceback."""
    for attribute in ("InstallRoot", "KnownHostsFile", "IdentityFile", "OutPutFileOfDeliveryStatus"):
        with pytest.raises(SettingsError, match=f"RDSSETFL:2: {attribute}: bad value"):
            parse_settings(f"HostName\th1\n{attribute}\t/a\x00b\n", Path("RDSSETFL"), HOME)


def test_unreadable_settings_file(tmp_path: Path) -> None:
    """A directory where RDSSETFL should be is one clear error, like an unreadable file."""
    (tmp_path / "rdsprm" / "RDSSETFL").mkdir(parents=True)
    with pytest.raises(SettingsError, match="RDSSETFL: cannot read") as e:
        load_settings(tmp_path)
    clean_error(e.value)


# -- wuphosts ---------------------------------------------------------------------------------------

BELOW = ["c1", "c2", "relay-b", "host.example", "C1"]
wup_lines = st.sampled_from([*BELOW, "me", "10.0.0.1", "::1", "fe80::1%eth0", " c1", "\tc2", "c1 c2", "unknown",
                             "c2\x00", "c1#x", ""]) | nasty_text
wup_text = st.lists(wup_lines, max_size=10).map("\n".join)


@given(wup_text.map(lambda t: t.encode("utf-8", "surrogatepass")) | st.binary(max_size=200))
def test_wuphosts(tmp_path: Path, data: bytes) -> None:
    home = Home.open(tmp_path / "relay")
    (home.prm / "RDSSETFL").write_text("HostName\tme\n")
    (home.prm / "wuphosts").write_bytes(data)
    (home.prm / ".cltwup_off").touch()
    warnings: list[str] = []
    allowed = flags.wuphosts(home, BELOW, warnings.append)
    assert allowed <= set(BELOW)
    assert "me" not in allowed
    for name in allowed:
        with pytest.raises(ValueError):
            ipaddress.ip_address(name)
        assert any(line.split()[:1] == [name] and line[:1] not in " \t"
                   for line in data.decode("utf-8", "replace").splitlines()), f"{name} is not the first name of a line"
    for w in warnings:
        one_line(w, limit=2000 + len(data))  # a warning quotes the line whole
    started = flags.startable(home, ["c1", "c2", "relay-b"], BELOW, warnings.append)
    assert set(started) == allowed & {"c1", "c2", "relay-b"}


def test_wuphosts_unreadable(tmp_path: Path) -> None:
    """Bug found by fuzzing: a wuphosts that could not be read (a directory, no permission) raised OSError out
    of the pass or out of dcmjexe after its job was created.  Now it allows no host, with a warning."""
    home = Home.open(tmp_path / "relay")
    (home.prm / "wuphosts").mkdir()
    warnings: list[str] = []
    assert flags.wuphosts(home, BELOW, warnings.append) == set()
    assert len(warnings) == 1 and "cannot read" in warnings[0]
    one_line(warnings[0])
