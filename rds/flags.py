"""The flag files of ``rdsprm/`` (seed 003, section 6).

- ``.cltwup_off``: send no startup request to lower systems, except those
  named in ``wuphosts``; the others get their jobs when they poll.
- ``wuphosts``: one host name a line; only the first name of a line counts;
  no IP addresses; no blank before the name; case-sensitive; only hosts
  below this relay.  Ignored unless ``.cltwup_off`` exists.
- ``.cltstsud``: when a startup request fails, report EXEC-ERROR upward.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable

from rds.home import Home

CLTWUP_OFF, CLTSTSUD, WUPHOSTS = ".cltwup_off", ".cltstsud", "wuphosts"


def is_set(home: Home, name: str) -> bool:
    """``name`` is ``cltwup_off`` or ``cltstsud``."""
    return (home.prm / f".{name}").exists()


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name.split("%")[0])
        return True
    except ValueError:
        return False


def wuphosts(home: Home, below: Iterable[str], warn: Callable[[str], None]) -> set[str]:
    """The hosts that ``wuphosts`` allows to be started; each ignored line gets a warning."""
    path = home.prm / WUPHOSTS
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return set()
    except OSError as e:  # startup requests only hurry things up: the lower systems still poll
        warn(f"{path}: cannot read ({e.strerror}); no lower system is started")
        return set()
    known = set(below)
    allowed = set()
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        if line[0] in " \t":
            warn(f"{path}:{lineno}: starts with a blank; ignored")
            continue
        name = line.split()[0]
        if _is_ip(name):
            warn(f"{path}:{lineno}: {name} is an IP address, not a host name; ignored")
        elif name == home.host:
            warn(f"{path}:{lineno}: {name} is this relay itself; ignored")
        elif name not in known:
            warn(f"{path}:{lineno}: {name} is not below this relay; ignored")
        else:
            allowed.add(name)
    return allowed


def startable(home: Home, lowers: Iterable[str], below: Iterable[str], log: Callable[[str], None]) -> list[str]:
    """The lower systems that may get a startup request now."""
    lowers = sorted(set(lowers))
    if not is_set(home, "cltwup_off"):
        return lowers
    allowed = wuphosts(home, below, log)
    held = [h for h in lowers if h not in allowed]
    if held:
        log(f"{home.prm / CLTWUP_OFF} exists: no startup request to {', '.join(held)}; they get their jobs by polling")
    return [h for h in lowers if h in allowed]
