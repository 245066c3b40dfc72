"""Reaching the upper system: ``ManagingHost`` picks the transport.

``ssh://...`` goes through the SSH transport (``transport.link``, which
connects with paramiko through ``transport.connection``); a path is a home on
this machine, reached by ``transport.local``.  Failures to connect are retried
``RetryCount`` times, ``RetryInterval`` apart (9 means for ever), then become
one CommunicationError naming the upper system; each wait is RetryInterval
give or take half, drawn at random (``retry_wait``), so hosts cut off together
do not all come back in the same second.  ``Kept`` is rdsma's session kept
open between its passes (KeepConnection YES).  ``serving`` makes the upper
side (rds.service) for both transports, with the way to its own upper system.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable

from rds import progress, trust
from rds.client import Link, UpperClient
from rds.errors import CommunicationError, IntegrityError, Refused, UsageError
from rds.home import Home
from rds.log import logger
from rds.packages import Manifest
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


class ManifestCheck:
    """Checks a manifest from the upper system with the managing server's key as this home believes it."""

    def __init__(self, home: Home) -> None:
        self.home = home
        self.key: str | None = None

    def __call__(self, m: Manifest) -> None:
        if self.key is None:
            from rds import database

            db = database.connect(self.home.db_path)
            try:
                self.key = trust.signer_key(self.home.settings, db)
            finally:
                db.close()
        if self.key is None:
            raise IntegrityError(f"package {m.id}: the managing server's key is not known on {self.home.host} "
                                 "yet (it is learnt at the first check-in, or set ManagerKey)")
        fault = trust.manifest_fault(self.key, m)
        if fault is not None:
            raise IntegrityError(f"{fault}; not used")


def retry_wait(interval: float, rand: Callable[[], float]) -> float:
    """The wait before the next attempt: RetryInterval give or take half, drawn at random (``rand``: 0 to 1),
    so that hosts that lost their upper system together do not all come back in the same second."""
    return interval * (0.5 + min(max(rand(), 0.0), 1.0))


def connect(home: Home, sleep: Callable[[float], None] = time.sleep,
            log: Callable[[str], None] | None = None, rand: Callable[[], float] = random.random) -> UpperClient:
    s = home.settings
    attempt = 0
    while True:
        attempt += 1
        try:
            link, where = open_link(home)
            client = UpperClient(link, s.host_name, where)
            client.verify = ManifestCheck(home)
            return client
        except Refused:
            raise  # a refusal (host key, authority) does not change by retrying
        except CommunicationError as e:
            if s.retry_count != 9 and attempt > s.retry_count:
                raise
            wait = round(retry_wait(s.retry_interval, rand), 1)
            # said on a terminal (and logged): when, and which attempt of how many
            said = progress.retrying(str(e), wait, attempt, None if s.retry_count == 9 else s.retry_count)
            if log:
                log(said)
            sleep(wait)


KEEP_SLACK = 60.0  # seconds asked beyond the poll interval: a pass's own length, a late wake


class Kept:
    """rdsma's session to its upper system, kept open between passes (KeepConnection YES, over SSH).

    At each check-in the session asks to be kept for the next pass
    (``UpperClient.keep``: the poll interval and some slack); the upper system
    says whether it keeps it (``UpperClient.kept``), and only then is it kept
    here.  The next pass takes it (``take``) if it is still open; one whose
    upper end went away (idle timeout, rds-serve or sshd ended, the upper
    system restarted) is closed, and that pass logs in afresh at once, with
    no retry wait and no failure counted (``again``), as it does when the
    first request of a kept session finds it cut (a NAT that dropped it).
    """

    def __init__(self, interval: float) -> None:
        self.keep = interval + KEEP_SLACK
        self.client: UpperClient | None = None
        self.reused = False  # the client ``take`` gave is the session kept since the last pass
        self.logins = 0  # sessions opened (for rdsma's log and the tests)

    def take(self, home: Home, sleep: Callable[[float], None], log: Callable[[str], None] | None) -> UpperClient:
        client, self.client = self.client, None
        link = client.link if client is not None else None
        if client is not None and getattr(link, "usable", lambda: False)():
            self.reused = True
            client.verify = ManifestCheck(home)  # the managing server's key read again, as a new session would
            return client
        if client is not None:
            client.link.close()
        return self.again(home, sleep, log)

    def again(self, home: Home, sleep: Callable[[float], None], log: Callable[[str], None] | None) -> UpperClient:
        """A new session (connect's retries apply to it as to any): the first attempt at once."""
        self.reused = False
        client = connect(home, sleep=sleep, log=log)
        self.logins += 1
        if hasattr(client.link, "usable"):  # over SSH; on this machine there is no login to save
            client.keep = self.keep
        return client

    def give_back(self, client: UpperClient, ok: bool) -> None:
        """After a pass: keep ``client``'s session if the pass ended well and the upper system keeps it."""
        if ok and client.kept and getattr(client.link, "usable", lambda: False)():
            self.client = client
        else:
            client.link.close()

    def close(self) -> None:
        client, self.client = self.client, None
        if client is not None:
            client.link.close()
