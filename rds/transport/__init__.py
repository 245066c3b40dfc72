"""Reaching the upper system: ``ManagingHost`` picks the transport.

``ssh://...`` goes through the SSH transport (``transport.link``, which
connects with paramiko through ``transport.connection``); a path is a home on
this machine, reached by ``transport.local``.  Failures to connect are retried
``RetryCount`` times, ``RetryInterval`` apart (9 means for ever), then become
one CommunicationError naming the upper system.  ``serving`` makes the upper
side (rds.service) for both transports, with the way to its own upper system.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from rds import progress
from rds.client import Link, UpperClient
from rds.errors import CommunicationError, Refused, UsageError
from rds.home import Home
from rds.log import logger
from rds.service import UpperService


def open_link(home: Home) -> tuple[Link, str]:
    target = home.settings.managing_host
    if target is None:
        raise UsageError(f"{home.path}: this host is the managing server (RDSSETFL has no ManagingHost)")
    if target.startswith("ssh://"):
        from rds.transport.link import SSHLink

        return SSHLink.open(home.settings, target), target
    from rds.transport.local import LocalLink, upper_home

    return LocalLink(serving(upper_home(target), home.host), target), target


def serving(home: Home, lower: str, remote: bool = False) -> UpperService:
    """``home``'s side for ``lower``, which reaches ``home``'s own upper system when a lower system needs it."""
    return UpperService(home, lower, upper=lambda: connect(home, log=logger(home).warning), remote=remote)


def connect(home: Home, sleep: Callable[[float], None] = time.sleep,
            log: Callable[[str], None] | None = None) -> UpperClient:
    s = home.settings
    attempt = 0
    while True:
        attempt += 1
        try:
            link, where = open_link(home)
            return UpperClient(link, s.host_name, where)
        except Refused:
            raise  # a refusal (host key, authority) does not change by retrying
        except CommunicationError as e:
            if s.retry_count != 9 and attempt > s.retry_count:
                raise
            # said on a terminal (and logged): when, and which attempt of how many
            said = progress.retrying(str(e), s.retry_interval, attempt, None if s.retry_count == 9 else s.retry_count)
            if log:
                log(said)
            sleep(s.retry_interval)
