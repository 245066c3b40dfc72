"""RDSSETFL, the settings file of a home: ``Attribute<TAB>value`` a line.

Attribute names are JP1's where JP1 has them.  Times take JP1's unit (minutes
or days) when written as a bare number, and any unit when a suffix is given
(``30s``, ``2h``, ``1d``); sizes take ``K``, ``M``, ``G`` or ``T``.
"""

from __future__ import annotations

import dataclasses
import re
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rds.errors import SettingsError

UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
HOSTNAME_RE = re.compile(rf"^(?=.{{1,64}}$){_LABEL}(?:\.{_LABEL})*$")
IPV4_RE = re.compile(r"^\d{1,3}(\.\d{1,3}){3}$")


def valid_hostname(name: str) -> bool:
    """A host name as JP1 takes it: 1-64 characters, DNS labels, not an IP address."""
    return bool(HOSTNAME_RE.fullmatch(name)) and not IPV4_RE.fullmatch(name)


def parse_duration(text: str, base: str, low: float, high: float) -> float:
    """Seconds from ``text``: a bare number is in ``base`` units."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([smhd]?)", text.strip().lower())
    if not m:
        raise ValueError(text)
    seconds = float(m.group(1)) * UNITS[m.group(2) or base]
    if not low <= seconds <= high:
        raise ValueError(text)
    return seconds


def parse_size(text: str) -> int:
    m = re.fullmatch(r"(\d+)\s*([kmgt]?)i?b?", text.strip().lower())
    if not m:
        raise ValueError(text)
    return int(m.group(1)) * SIZE_UNITS[m.group(2)]


@dataclasses.dataclass(frozen=True)
class Settings:
    """A home's settings; every field has the default that applies when absent."""

    home: Path
    managing_host: str | None = None
    host_name: str = dataclasses.field(default_factory=lambda: socket.gethostname().split(".")[0])
    watch_orders: float | None = 300.0  # seconds; None = MANUAL
    watch_status: float = 60.0  # seconds; 0 = results are not sent
    retry_count: int = 3  # 9 = forever
    retry_interval: float = 10.0  # seconds
    max_connect_clients: int = 10
    life_of_resource: float = 30 * 86400.0  # seconds; 0 = no limit
    delivery_status_file: Path | None = None
    delivery_status_order: int = 10000
    id_command_delete_timing: str = "RESOURCE_DELETE"
    command_delete_with_resource: bool = True
    caching_policy: str = "JIT"
    package_format: str = "CHUNKS"  # rdsft -c: CHUNKS (issue 17) or WHOLE (one payload.tgz, as before)
    checksum_lifetime: float = 3600.0
    cache_size_limit: int = 0  # bytes; 0 = no limit
    cache_high_water_mark: int = 90  # percent of the limit
    cache_cleanup_interval: float = 12 * 3600.0
    identity_file: Path | None = None
    known_hosts_file: Path | None = None
    connect_timeout: float = 30.0
    install_root: Path = Path("/")
    startup_address: str | None = None  # where the upper system sends startup requests (see rds.startup)
    serve_idle_timeout: float = 300.0  # seconds rds-serve waits for a lower system's next request
    resident_server: bool = True  # rdsma runs the home's resident server for rds-serve and rds-wake (rds.resident)
    keep_connection: bool = False  # rdsma keeps its SSH session to the upper system open between polls
    max_kept_sessions: int = 128  # an upper system keeps at most this many lower systems' sessions between polls
    keep_idle_timeout: float = 600.0  # seconds an upper system keeps a lower system's session idle between polls
    startup_interval: float = 60.0  # seconds at least between the starts of passes startup requests cause
    key_pinning: str = "FIRST-USE"  # STRICT: only host keys enrolled beforehand (rdslink) are accepted
    manager_key: str | None = None  # the managing server's public key; else pinned at the first check-in
    system_log_level: int = 3  # JP1's SystemLogOutputLevel: 0 nothing, 1 errors, 2 and warnings, 3 and information
    log_file: bool = True  # log/rds.log besides the journal (rds.log)
    log_retention: float = 30 * 86400.0  # seconds an install log or a resident's .out file is kept; 0 = for ever

    @property
    def is_managing_server(self) -> bool:
        return self.managing_host is None


def _choice(*allowed: str) -> tuple[Callable[[str], Any], str]:
    def parse(v: str) -> str:
        if v.upper() not in allowed:
            raise ValueError(v)
        return v.upper()

    return parse, "|".join(allowed)


def _int_range(low: int, high: int) -> tuple[Callable[[str], Any], str]:
    def parse(v: str) -> int:
        if not re.fullmatch(r"\d+", v):
            raise ValueError(v)
        n = int(v)
        if not low <= n <= high:
            raise ValueError(v)
        return n

    return parse, f"an integer {low}-{high}"


def _duration(base: str, low: float, high: float, unit_name: str) -> tuple[Callable[[str], Any], str]:
    return (lambda v: parse_duration(v, base, low, high)), (
        f"{low / UNITS[base]:g}-{high / UNITS[base]:g} {unit_name}, or a number with a unit s/m/h/d"
    )


def _watch_orders(v: str) -> float | None:
    if v.upper() == "MANUAL":
        return None
    return parse_duration(v, "m", 0, 1280 * 60)


def _managing_host(v: str) -> str:
    if v.startswith("ssh://"):
        if not re.fullmatch(r"ssh://(?:[^@/\s]+@)?[^@/:\s]+(?::\d{1,5})?(?:/\S*)?", v):
            raise ValueError(v)
        return v
    if not v.startswith("/"):
        raise ValueError(v)
    return v


_SSH_ADDRESS_RE = re.compile(r"ssh://(?:(?P<user>[A-Za-z_][A-Za-z0-9._-]{0,31})@)?"
                             r"(?P<host>\[[0-9A-Fa-f:.]{2,45}\]|[A-Za-z0-9.-]{1,253})(?::(?P<port>\d{1,5}))?")


def startup_address(v: str) -> str:
    """``ssh://[user@]host[:port]`` or the absolute path of a home; anything else is a ValueError.

    Strict, because the upper system takes it from a lower system's check-in
    and connects there: no path, query, options or odd characters.
    """
    if v.startswith("/"):
        if len(v) > 4096 or any(c in v for c in "\0\n\r"):
            raise ValueError(v)
        return v
    m = _SSH_ADDRESS_RE.fullmatch(v)
    if not m:
        raise ValueError(v)
    host, port = m.group("host"), m.group("port")
    if host.startswith("["):
        import ipaddress

        if not isinstance(ipaddress.ip_address(host[1:-1]), ipaddress.IPv6Address):
            raise ValueError(v)
    elif IPV4_RE.fullmatch(host):
        if any(int(b) > 255 for b in host.split(".")):
            raise ValueError(v)
    elif not re.fullmatch(rf"{_LABEL}(?:\.{_LABEL})*", host):
        raise ValueError(v)
    if port is not None and not 1 <= int(port) <= 65535:
        raise ValueError(v)
    return v


def _public_key(v: str) -> str:
    from rds.identity import valid_key

    if not valid_key(v):
        raise ValueError(v)
    return v


def _hostname(v: str) -> str:
    if not valid_hostname(v):
        raise ValueError(v)
    return v


def _path(v: str) -> Path:
    if "\x00" in v:  # no system call takes it: refused here, not at the first use
        raise ValueError(v)
    return Path(v)


def _yes_no(v: str) -> bool:
    if v.upper() in ("YES", "Y", "TRUE", "ON", "1"):
        return True
    if v.upper() in ("NO", "N", "FALSE", "OFF", "0"):
        return False
    raise ValueError(v)


def _retry_interval(v: str) -> float:
    if re.fullmatch(r"\d+", v.strip()):
        n = int(v)
        if not 1 <= n <= 99:
            raise ValueError(v)
        return n * 10.0
    return parse_duration(v, "s", 0, 990)


# attribute -> (field, parser, what is allowed)
ATTRIBUTES: dict[str, tuple[str, Callable[[str], Any], str]] = {
    "ManagingHost": ("managing_host", _managing_host, "ssh://[user@]host[:port][/home] or the absolute path of a home"),
    "HostName": ("host_name", _hostname, "a host name of 1-64 letters, digits, '-' and '.', not an IP address"),
    "WatchTimeofOrders": ("watch_orders", _watch_orders, "0-1280 minutes, a number with a unit s/m/h/d, or MANUAL"),
    "WatchTimeofStatus": ("watch_status", *_duration("m", 0, 1280 * 60, "minutes")),
    "RetryCount": ("retry_count", *_int_range(1, 9)),
    "RetryInterval": ("retry_interval", _retry_interval, "1-99 (units of 10 seconds), or a number with a unit s/m"),
    "MaxConnectClients": ("max_connect_clients", *_int_range(1, 1024)),
    "LifeofResource": ("life_of_resource", *_duration("d", 0, 36500 * 86400, "days")),
    "OutPutFileOfDeliveryStatus": ("delivery_status_file", _path, "a path"),
    "OrderOfDeliveryStatus": ("delivery_status_order", *_int_range(1, 10_000_000)),
    "IDCommandDeleteTiming": ("id_command_delete_timing", *_choice("RESOURCE_DELETE", "MANUAL")),
    "CommandDeletewithResource": ("command_delete_with_resource", _yes_no, "YES or NO"),
    "CachingPolicy": ("caching_policy", *_choice("JIT", "SNEAKERNET")),
    "PackageFormat": ("package_format", *_choice("CHUNKS", "WHOLE")),
    "ChecksumLifetime": ("checksum_lifetime", *_duration("m", 0, 365 * 86400, "minutes")),
    "CacheSizeLimit": ("cache_size_limit", parse_size, "a size in bytes, or with a unit K/M/G/T (0: no limit)"),
    "CacheHighWaterMark": ("cache_high_water_mark", *_int_range(1, 100)),
    "CacheCleanupInterval": ("cache_cleanup_interval", lambda v: parse_duration(v, "m", 1, 365 * 86400),
                             "1-525600 minutes, or a time with a unit s/m/h/d (at least 1s)"),
    "IdentityFile": ("identity_file", _path, "a path"),
    "KnownHostsFile": ("known_hosts_file", _path, "a path"),
    "ConnectTimeout": ("connect_timeout", *_duration("s", 1, 3600, "seconds")),
    "InstallRoot": ("install_root", _path, "an absolute path prefixed to every install directory (default /)"),
    "StartupAddress": ("startup_address", startup_address,
                       "ssh://[user@]host[:port] (this host's sshd, where rds-wake is the upper system's forced "
                       "command) or the absolute path of this home"),
    "ServeIdleTimeout": ("serve_idle_timeout", *_duration("s", 1, 86400, "seconds")),
    "ResidentServer": ("resident_server", _yes_no, "YES or NO"),
    "KeepConnection": ("keep_connection", _yes_no, "YES or NO"),
    "MaxKeptSessions": ("max_kept_sessions", *_int_range(0, 1024)),
    "KeepIdleTimeout": ("keep_idle_timeout", *_duration("s", 1, 86400, "seconds")),
    "StartupInterval": ("startup_interval", *_duration("s", 0, 3600, "seconds")),
    "KeyPinning": ("key_pinning", *_choice("FIRST-USE", "STRICT")),
    "ManagerKey": ("manager_key", _public_key, "the managing server's host key in base64, as 'rdslink -k' prints it"),
    "SystemLogOutputLevel": ("system_log_level", *_int_range(0, 3)),
    "LogFile": ("log_file", _yes_no, "YES or NO"),
    "LogRetention": ("log_retention", *_duration("d", 0, 36500 * 86400, "days")),
}


def parse_settings(text: str, source: Path, home: Path) -> Settings:
    """The settings ``text`` says; every bad line is named at once, in one line of error."""
    values: dict[str, Any] = {}
    seen: dict[str, int] = {}
    errors: list[tuple[int, str, str]] = []  # line, what is wrong, what is allowed
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split(None, 1)
        name = parts[0]
        value = parts[1].strip() if len(parts) > 1 else ""
        if name not in ATTRIBUTES:
            errors.append((lineno, f"unknown attribute {name!r}", ", ".join(sorted(ATTRIBUTES))))
            continue
        field, parser, allowed = ATTRIBUTES[name]
        if name in seen:
            errors.append((lineno, f"{name} is given twice (first on line {seen[name]})", ""))
            continue
        seen[name] = lineno
        if not value:
            errors.append((lineno, f"{name} has no value", allowed))
            continue
        try:
            values[field] = parser(value)
        except ValueError:
            errors.append((lineno, f"{name}: bad value {value!r}", allowed))
    if not values.get("install_root", Path("/")).is_absolute():
        errors.append((seen["InstallRoot"], "InstallRoot must be an absolute path", ""))
    if "delivery_status_file" in values and not values["delivery_status_file"].is_absolute():
        values["delivery_status_file"] = home / values["delivery_status_file"]
    if values.get("startup_address", "ssh:").startswith("/") and values.get("managing_host", "/").startswith("ssh:"):
        errors.append((seen["StartupAddress"], "StartupAddress: an upper system reached over SSH takes only "
                       "ssh://[user@]host[:port] (a path names a home on the upper system's machine)", ""))
    if errors:
        raise SettingsError(describe_errors(source, sorted(errors)))
    return _named(Settings(home=home, **values), source)


SHOWN_ERRORS = 8  # bad lines described in full; the others are named by their number


def describe_errors(source: Path, errors: list[tuple[int, str, str]]) -> str:
    """One line: a single error with what is allowed; several (a pasted JP1 file) each by line number,
    the first few described, so that one run names every bad line."""
    if len(errors) == 1:
        lineno, what, allowed = errors[0]
        return f"{source}:{lineno}: {what}" + (f" (allowed: {allowed})" if allowed else "")
    said = "; ".join(f"line {n}: {what}" for n, what, _ in errors[:SHOWN_ERRORS])
    rest = errors[SHOWN_ERRORS:]
    if rest:
        said += f"; and {len(rest)} more on lines {', '.join(str(n) for n, _, _ in rest)}"
    return f"{source}: {len(errors)} bad lines: {said} (the attributes and their values: rdssetfl(5))"


def _named(settings: Settings, source: Path) -> Settings:
    """Without HostName the system's host name is this host's name: it must be a valid one."""
    if not valid_hostname(settings.host_name):
        raise SettingsError(f"{source}: the system's host name {settings.host_name!r} cannot name this host"
                            " in the hierarchy; set HostName")
    return settings


def load_settings(home: Path) -> Settings:
    path = home / "rdsprm" / "RDSSETFL"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return _named(Settings(home=home), path)
    except (OSError, UnicodeDecodeError) as e:
        raise SettingsError(f"{path}: cannot read: {getattr(e, 'strerror', None) or e}") from None
    return parse_settings(text, path, home)
