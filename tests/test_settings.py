"""RDSSETFL (rds/settings.py) and a host's home (rds/home.py)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
from conftest import Tree

from rds.errors import LockTimeout, SettingsError
from rds.home import FORMAT, Home, default_home
from rds.settings import ATTRIBUTES, Settings, load_settings, parse_settings


def parse(text: str, tmp_path: Path) -> Settings:
    return parse_settings(text, tmp_path / "rdsprm" / "RDSSETFL", tmp_path)


def refused(text: str, tmp_path: Path) -> str:
    with pytest.raises(SettingsError) as e:
        parse(text, tmp_path)
    return str(e.value)


# -- good values, every attribute ------------------------------------------

GOOD = [
    ("ManagingHost", "/srv/rds/mgr", "managing_host", "/srv/rds/mgr"),
    ("ManagingHost", "ssh://mgr.example.com", "managing_host", "ssh://mgr.example.com"),
    ("ManagingHost", "ssh://root@mgr:2222/NETMRDS", "managing_host", "ssh://root@mgr:2222/NETMRDS"),
    ("HostName", "relay-1", "host_name", "relay-1"),
    ("HostName", "client7.site.example", "host_name", "client7.site.example"),
    ("HostName", "a" * 64, "host_name", "a" * 64),
    ("WatchTimeofOrders", "5", "watch_orders", 300.0),
    ("WatchTimeofOrders", "0", "watch_orders", 0.0),
    ("WatchTimeofOrders", "1280", "watch_orders", 1280 * 60.0),
    ("WatchTimeofOrders", "30s", "watch_orders", 30.0),
    ("WatchTimeofOrders", "2h", "watch_orders", 7200.0),
    ("WatchTimeofOrders", "30S", "watch_orders", 30.0),
    ("WatchTimeofOrders", "MANUAL", "watch_orders", None),
    ("WatchTimeofOrders", "manual", "watch_orders", None),
    ("WatchTimeofStatus", "0", "watch_status", 0.0),
    ("WatchTimeofStatus", "2", "watch_status", 120.0),
    ("WatchTimeofStatus", "30s", "watch_status", 30.0),
    ("RetryCount", "1", "retry_count", 1),
    ("RetryCount", "9", "retry_count", 9),
    ("RetryInterval", "1", "retry_interval", 10.0),
    ("RetryInterval", "99", "retry_interval", 990.0),
    ("RetryInterval", "0s", "retry_interval", 0.0),
    ("RetryInterval", "2m", "retry_interval", 120.0),
    ("MaxConnectClients", "1", "max_connect_clients", 1),
    ("MaxConnectClients", "1024", "max_connect_clients", 1024),
    ("LifeofResource", "7", "life_of_resource", 7 * 86400.0),
    ("LifeofResource", "1d", "life_of_resource", 86400.0),
    ("LifeofResource", "12h", "life_of_resource", 12 * 3600.0),
    ("LifeofResource", "0", "life_of_resource", 0.0),
    ("OutPutFileOfDeliveryStatus", "/var/rds/status.db", "delivery_status_file", Path("/var/rds/status.db")),
    ("OrderOfDeliveryStatus", "500", "delivery_status_order", 500),
    ("IDCommandDeleteTiming", "RESOURCE_DELETE", "id_command_delete_timing", "RESOURCE_DELETE"),
    ("IDCommandDeleteTiming", "manual", "id_command_delete_timing", "MANUAL"),
    ("CommandDeletewithResource", "YES", "command_delete_with_resource", True),
    ("CommandDeletewithResource", "no", "command_delete_with_resource", False),
    ("CachingPolicy", "JIT", "caching_policy", "JIT"),
    ("CachingPolicy", "sneakernet", "caching_policy", "SNEAKERNET"),
    ("PackageFormat", "whole", "package_format", "WHOLE"),
    ("PackageFormat", "CHUNKS", "package_format", "CHUNKS"),
    ("ChecksumLifetime", "30", "checksum_lifetime", 1800.0),
    ("ChecksumLifetime", "30s", "checksum_lifetime", 30.0),
    ("ChecksumLifetime", "1d", "checksum_lifetime", 86400.0),
    ("CacheSizeLimit", "512M", "cache_size_limit", 512 << 20),
    ("CacheSizeLimit", "2G", "cache_size_limit", 2 << 30),
    ("CacheSizeLimit", "64k", "cache_size_limit", 64 << 10),
    ("CacheSizeLimit", "1T", "cache_size_limit", 1 << 40),
    ("CacheSizeLimit", "4096", "cache_size_limit", 4096),
    ("CacheSizeLimit", "0", "cache_size_limit", 0),
    ("CacheHighWaterMark", "80", "cache_high_water_mark", 80),
    ("CacheCleanupInterval", "12h", "cache_cleanup_interval", 12 * 3600.0),
    ("CacheCleanupInterval", "60", "cache_cleanup_interval", 3600.0),
    ("IdentityFile", "/root/.ssh/id_ed25519", "identity_file", Path("/root/.ssh/id_ed25519")),
    ("KnownHostsFile", "/etc/rds/known_hosts", "known_hosts_file", Path("/etc/rds/known_hosts")),
    ("ConnectTimeout", "30", "connect_timeout", 30.0),
    ("ConnectTimeout", "2m", "connect_timeout", 120.0),
    ("InstallRoot", "/srv/sandbox", "install_root", Path("/srv/sandbox")),
    ("StartupAddress", "ssh://rds@relay1.example.com:2222", "startup_address", "ssh://rds@relay1.example.com:2222"),
    ("StartupAddress", "/NETMRDS", "startup_address", "/NETMRDS"),
    ("ServeIdleTimeout", "300", "serve_idle_timeout", 300.0),
    ("ServeIdleTimeout", "2m", "serve_idle_timeout", 120.0),
    ("ResidentServer", "NO", "resident_server", False),
    ("KeepConnection", "YES", "keep_connection", True),
    ("MaxKeptSessions", "0", "max_kept_sessions", 0),
    ("MaxKeptSessions", "1024", "max_kept_sessions", 1024),
    ("KeepIdleTimeout", "600", "keep_idle_timeout", 600.0),
    ("KeepIdleTimeout", "15m", "keep_idle_timeout", 900.0),
    ("StartupInterval", "0", "startup_interval", 0.0),
    ("StartupInterval", "2m", "startup_interval", 120.0),
    ("KeyPinning", "strict", "key_pinning", "STRICT"),
    ("KeyPinning", "FIRST-USE", "key_pinning", "FIRST-USE"),
    ("ManagerKey", "q3uT4Eeq0QJ6CqGLhSzxN8Gf7yXmUQ+h8yFqd9GmYrE=", "manager_key",
     "q3uT4Eeq0QJ6CqGLhSzxN8Gf7yXmUQ+h8yFqd9GmYrE="),
    ("SystemLogOutputLevel", "0", "system_log_level", 0),
    ("SystemLogOutputLevel", "3", "system_log_level", 3),
    ("LogFile", "NO", "log_file", False),
    ("LogRetention", "7", "log_retention", 7 * 86400.0),
    ("LogRetention", "12h", "log_retention", 12 * 3600.0),
]


@pytest.mark.parametrize(("attr", "value", "field", "expected"), GOOD,
                         ids=[f"{a}={v[:20]}" for a, v, _, _ in GOOD])
def test_good_value(attr: str, value: str, field: str, expected: object, tmp_path: Path) -> None:
    s = parse(f"{attr}\t{value}\n", tmp_path)
    assert getattr(s, field) == expected


def test_every_attribute_has_a_good_value_tested() -> None:
    assert {a for a, _, _, _ in GOOD} == set(ATTRIBUTES)


# -- bad values ---------------------------------------------------------------

BAD = [
    ("KeepConnection", "sometimes"),
    ("MaxKeptSessions", "1025"),
    ("KeepIdleTimeout", "0"),
    ("StartupAddress", "ssh://relay1/NETMRDS"),
    ("ServeIdleTimeout", "0"),
    ("ResidentServer", "maybe"),
    ("ServeIdleTimeout", "2d"),
    ("StartupInterval", "2h"),
    ("StartupInterval", "soon"),
    ("KeyPinning", "SOMETIMES"),
    ("ManagerKey", "SHA256:abc"),
    ("ManagerKey", "q3uT4Eeq0QJ6CqGLhSzxN8Gf7yXmUQ+h8yFqd9GmYr=="),
    ("ManagingHost", "relative/home"),
    ("ManagingHost", "http://mgr"),
    ("ManagingHost", "ssh://"),
    ("ManagingHost", "ssh://mgr:port"),
    ("ManagingHost", "ssh://a@b@mgr"),
    ("HostName", "bad_host!"),
    ("HostName", "1.2.3.4"),
    ("HostName", "-leading"),
    ("HostName", "a" * 65),
    ("WatchTimeofOrders", "1281"),
    ("WatchTimeofOrders", "1d"),
    ("WatchTimeofOrders", "-1"),
    ("WatchTimeofOrders", "often"),
    ("WatchTimeofOrders", "5x"),
    ("WatchTimeofStatus", "1281"),
    ("WatchTimeofStatus", "x"),
    ("RetryCount", "0"),
    ("RetryCount", "10"),
    ("RetryCount", "three"),
    ("RetryInterval", "0"),
    ("RetryInterval", "100"),
    ("RetryInterval", "17m"),
    ("MaxConnectClients", "0"),
    ("MaxConnectClients", "1025"),
    ("LifeofResource", "-3"),
    ("LifeofResource", "36501"),
    ("OrderOfDeliveryStatus", "0"),
    ("IDCommandDeleteTiming", "NEVER"),
    ("CommandDeletewithResource", "maybe"),
    ("CachingPolicy", "LAZY"),
    ("PackageFormat", "ZIP"),
    ("ChecksumLifetime", "soon"),
    ("CacheSizeLimit", "1.5G"),
    ("CacheSizeLimit", "-1"),
    ("CacheSizeLimit", "10X"),
    ("CacheHighWaterMark", "0"),
    ("CacheHighWaterMark", "101"),
    ("CacheCleanupInterval", "0.5s"),
    ("CacheCleanupInterval", "0"),
    ("ConnectTimeout", "0"),
    ("ConnectTimeout", "2h"),
]


@pytest.mark.parametrize(("attr", "value"), BAD, ids=[f"{a}={v[:20]}" for a, v in BAD])
def test_bad_value_names_file_line_and_allowed_values(attr: str, value: str, tmp_path: Path) -> None:
    msg = refused(f"# settings\n\n{attr}\t{value}\nHostName\thost1\n", tmp_path)
    if attr == "HostName":  # line 4 gives it again: both lines are named, in one line (issue 14)
        assert msg.startswith(f"{tmp_path / 'rdsprm' / 'RDSSETFL'}: 2 bad lines: line 3: {attr}: bad value ")
        assert "line 4: HostName is given twice (first on line 3)" in msg
        return
    assert msg.startswith(f"{tmp_path / 'rdsprm' / 'RDSSETFL'}:3: {attr}")
    assert repr(value) in msg
    assert f"(allowed: {ATTRIBUTES[attr][2]})" in msg


def test_integer_with_underscore_is_refused(tmp_path: Path) -> None:
    """Regression: ``MaxConnectClients<TAB>1_0`` was read as 10 instead of being refused as a bad value."""
    msg = refused("MaxConnectClients\t1_0\n", tmp_path)
    assert ":1: MaxConnectClients" in msg


def test_unknown_attribute_names_file_line_and_allowed_attributes(tmp_path: Path) -> None:
    msg = refused("HostName\th1\n\nWatchTimeOfOrders\t5\n", tmp_path)  # wrong case of 'of'
    assert msg.startswith(f"{tmp_path / 'rdsprm' / 'RDSSETFL'}:3: unknown attribute 'WatchTimeOfOrders'")
    for name in ("ManagingHost", "WatchTimeofOrders", "CacheSizeLimit"):
        assert name in msg


def test_attribute_without_value(tmp_path: Path) -> None:
    msg = refused("RetryCount\n", tmp_path)
    assert msg == f"{tmp_path / 'rdsprm' / 'RDSSETFL'}:1: RetryCount has no value (allowed: an integer 1-9)"


def test_duplicate_attribute_names_both_lines(tmp_path: Path) -> None:
    msg = refused("HostName\ta\nRetryCount\t2\n\nHostName\tb\n", tmp_path)
    assert msg == f"{tmp_path / 'rdsprm' / 'RDSSETFL'}:4: HostName is given twice (first on line 1)"


def test_relative_install_root_names_its_line(tmp_path: Path) -> None:
    msg = refused("HostName\th\nInstallRoot\tsandbox\n", tmp_path)
    assert msg == f"{tmp_path / 'rdsprm' / 'RDSSETFL'}:2: InstallRoot must be an absolute path"


def test_comments_blank_lines_tabs_and_spaces(tmp_path: Path) -> None:
    text = ("# JP1 client settings\n"
            "\n"
            "   \t  \n"
            "HostName\trelay1   # this relay\n"
            "  RetryCount    4\n"
            "WatchTimeofOrders \t 10\r\n"
            "\tCachingPolicy\tSNEAKERNET\t\n"
            "#ManagingHost\t/nowhere\n")
    s = parse(text, tmp_path)
    assert (s.host_name, s.retry_count, s.watch_orders, s.caching_policy) == ("relay1", 4, 600.0, "SNEAKERNET")
    assert s.managing_host is None
    assert s.is_managing_server


def test_relative_delivery_status_file_is_in_the_home(tmp_path: Path) -> None:
    s = parse("OutPutFileOfDeliveryStatus\tstatus/dlv.db\n", tmp_path)
    assert s.delivery_status_file == tmp_path / "status" / "dlv.db"


def test_defaults(tmp_path: Path) -> None:
    s = load_settings(tmp_path)  # no RDSSETFL at all
    assert s == Settings(home=tmp_path)
    assert s.managing_host is None and s.is_managing_server
    assert s.host_name == socket.gethostname().split(".")[0]
    assert s.watch_orders == 300.0  # JP1: 5 minutes
    assert (s.retry_count, s.retry_interval) == (3, 10.0)
    assert s.life_of_resource == 30 * 86400.0
    assert s.id_command_delete_timing == "RESOURCE_DELETE"
    assert s.caching_policy == "JIT"
    assert s.cache_cleanup_interval == 12 * 3600.0  # seed 002
    assert s.cache_size_limit == 0
    assert s.install_root == Path("/")


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    assert parse("# nothing set\n\n", tmp_path) == Settings(home=tmp_path)


def test_a_relay_is_not_the_managing_server(tmp_path: Path) -> None:
    assert not parse("ManagingHost\t/srv/mgr\n", tmp_path).is_managing_server


def test_unreadable_settings_file(tmp_path: Path) -> None:
    (tmp_path / "rdsprm").mkdir()
    (tmp_path / "rdsprm" / "RDSSETFL").write_bytes(b"HostName\t\xff\xfe\n")
    with pytest.raises(SettingsError, match=r"RDSSETFL: cannot read"):
        load_settings(tmp_path)


# -- homes --------------------------------------------------------------------

def test_home_lays_itself_out(tmp_path: Path) -> None:
    home = Home.open(tmp_path / "h")
    for d in (home.prm, home.packages, home.partial, home.group, home.install_logs, home.run, home.work):
        assert d.is_dir()
    assert (tmp_path / "h" / "FORMAT").read_text() == FORMAT + "\n"
    Home.open(tmp_path / "h")  # and opens again


def test_home_of_another_format_is_refused(tmp_path: Path) -> None:
    (tmp_path / "h").mkdir()
    (tmp_path / "h" / "FORMAT").write_text("rds-home 2\n")
    with pytest.raises(SettingsError, match=r"FORMAT: this home has format 'rds-home 2'; this rds reads 'rds-home 1'"):
        Home.open(tmp_path / "h")
    assert not (tmp_path / "h" / "RDS").exists()  # nothing laid out in a home it cannot read


def test_rds_home_pointing_nowhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RDS_HOME", str(tmp_path / "missing"))
    with pytest.raises(SettingsError, match=r"RDS_HOME=.*missing: no such directory"):
        Home.open()
    assert not (tmp_path / "missing").exists()


def test_rds_home_naming_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("RDS_HOME", str(tmp_path / "file"))
    with pytest.raises(SettingsError, match="no such directory"):
        default_home()


def test_rds_home_is_used(tmp_path: Path) -> None:
    assert default_home() == (tmp_path / "default-home").resolve()


def test_home_settings_and_host(tmp_path: Path) -> None:
    (tmp_path / "h" / "rdsprm").mkdir(parents=True)
    (tmp_path / "h" / "rdsprm" / "RDSSETFL").write_text("HostName\tclient9\nManagingHost\t/srv/relay\n")
    home = Home.open(tmp_path / "h")
    assert home.host == "client9"
    assert home.settings.managing_host == "/srv/relay"


def test_lock_timeout_says_who_holds_it(tmp_path: Path) -> None:
    home = Home.open(tmp_path / "h")
    with home.lock("rdsft"), pytest.raises(LockTimeout) as e, home.lock("rdsft", timeout=0.1):
        pass
    assert f"rdsft.lock: pid {os.getpid()} (" in str(e.value)
    assert "gave up after 0.1s" in str(e.value)
    with home.lock("rdsft", timeout=0.1):  # released
        pass


# -- through the commands -----------------------------------------------------

def test_malformed_settings_make_rdsft_exit_2_with_one_line(tree: Tree) -> None:
    mgr = tree.add("mgr")
    client = tree.add("client", upper="mgr", settings="WatchTimeofOrders\toften\n")
    proc = client.run("rdsft", "-a", check=False)
    assert proc.returncode == 2
    settings = client.path / "rdsprm" / "RDSSETFL"
    assert proc.stderr == (f"rdsft: {settings}:7: WatchTimeofOrders: bad value 'often' "
                           "(allowed: 0-1280 minutes, a number with a unit s/m/h/d, or MANUAL)\n")
    assert proc.stdout == ""
    assert not (mgr.path / "GROUP" / "rds.db").exists()  # it never reached its upper system


def test_home_of_another_format_makes_commands_exit_2(tree: Tree) -> None:
    mgr = tree.add("mgr")
    (mgr.path / "FORMAT").write_text("rds-home 99\n")
    proc = mgr.run("dcmstat", check=False)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1
    assert proc.stderr.startswith(f"dcmstat: {mgr.path / 'FORMAT'}: this home has format 'rds-home 99'")


def test_rds_home_pointing_nowhere_makes_commands_exit_2(tree: Tree, tmp_path: Path) -> None:
    mgr = tree.add("mgr")
    proc = mgr.run("rdsgroupid", check=False, env=mgr.env(RDS_HOME=str(tmp_path / "nowhere")))
    assert proc.returncode == 2
    assert proc.stderr == (f"rdsgroupid: RDS_HOME={tmp_path / 'nowhere'}: no such directory "
                           "(create it, or unset RDS_HOME)\n")
    assert not (tmp_path / "nowhere").exists()


@pytest.mark.parametrize("system_name", ["", "bad_name", "-lead", "x" * 70])
def test_bad_system_host_name_without_hostname_is_a_settings_error(system_name: str, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression: the system's host name was taken as HostName without being checked."""
    monkeypatch.setattr(socket, "gethostname", lambda: system_name)
    with pytest.raises(SettingsError, match="set HostName"):
        load_settings(tmp_path)
    (tmp_path / "rdsprm").mkdir()
    (tmp_path / "rdsprm" / "RDSSETFL").write_text("WatchTimeofOrders\t5\n")
    with pytest.raises(SettingsError, match=r"RDSSETFL: the system's host name"):
        load_settings(tmp_path)
    (tmp_path / "rdsprm" / "RDSSETFL").write_text("HostName\tgood1\n")
    assert load_settings(tmp_path).host_name == "good1"


def test_startup_address_path_needs_an_upper_system_on_this_machine(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="StartupAddress: an upper system reached over SSH takes only ssh://"):
        parse("ManagingHost\tssh://mgr\nStartupAddress\t/NETMRDS\n", tmp_path)
    assert parse("ManagingHost\t/srv/mgr\nStartupAddress\t/NETMRDS\n", tmp_path).startup_address == "/NETMRDS"
