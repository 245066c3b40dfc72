"""The package cache of a relay or client: caching policy, currency, one transfer at a time.

Seed 002's two policies (``CachingPolicy``):

- JIT: a package that is needed (by an install here, or by a lower system
  asking to read it) and is missing or not current is fetched from the upper
  system, which does the same in turn, up to the managing server.  Before a
  cached copy is installed or served, its SHA-256 is compared with the upper
  system's current one (the ``stat`` request); an answer is trusted for
  ``ChecksumLifetime`` (0: asked every time).  A copy that does not match is
  removed and fetched again, never used.  When the upper system cannot be
  reached, a copy verified against its own manifest is still used, and the
  log says so: a relay cut off from its upper keeps serving what it has.
- SNEAKERNET: the host never asks its upper system for packages: its own
  copies (staged by hand with ``rdsstage -i``) are authoritative.  A package
  that is needed but not here is ``UnableToCache``, which ends the jobs that
  need it in ERROR.  A Transfer job (``dcmjexe -t transfer``) is the
  managing server's emergency push: the package it names is fetched whatever
  the policy, by the relay it is for and by every relay it passes through.

The managing server is authoritative and asks no one.  A fetch holds the
home's fetch lock of the package for its whole length
(``Storehouse.fetch_lock``), so that several lower systems or passes needing
one package cause one transfer from upstream: the second one finds the
package there once it has the lock.

The storehouse remembers the upper system's answers
(``Storehouse.remember``, in ``RDS/.checksums/``).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable

from rds import crashpoints, jobs
from rds.client import UpperClient
from rds.errors import CommunicationError, IntegrityError, Refused, UnableToCache
from rds.home import Home
from rds.packages import Manifest, PackageId
from rds.storehouse import Storehouse

JIT, SNEAKERNET = "JIT", "SNEAKERNET"

Upper = Callable[[], UpperClient]
Log = Callable[[str], None]


def unable(home: Home, pid: PackageId, why: str = "it was not staged") -> UnableToCache:
    return UnableToCache(
        f"unable to cache package {pid} on {home.host}: CachingPolicy is {home.settings.caching_policy} "
        f"(manual update) and {why}; stage it there with 'rdsstage -i PATH' from a copy made on the managing "
        f"server with 'rdsstage -o PATH -r {pid}', or push it with 'dcmjexe -t transfer -r {pid} -h {home.host}'")


def current(home: Home, store: Storehouse, pid: PackageId, upper: Upper, log: Log, fetching: bool) -> Manifest:
    """The current manifest of ``pid`` as this host may know it (its upper's, or its own copy's)."""
    have = store.get(pid)
    if home.settings.is_managing_server or not fetching:
        if have is None:
            if home.settings.is_managing_server:
                raise Refused(f"package {pid} is not kept on {home.host}")
            raise unable(home, pid)
        return have
    now = time.time()
    m = store.remembered(pid, now, home.settings.checksum_lifetime)
    if m is not None:
        return m
    try:
        m = upper().stat(pid)
    except Refused:
        raise
    except CommunicationError as e:
        if have is None:
            raise
        log(f"package {pid}: cannot ask the upper system whether the copy here is current ({e}); "
            f"using the copy here, verified against its manifest")
        return have
    store.remember(m, now)
    return m


def may_fetch(home: Home, db: sqlite3.Connection, pid: PackageId, force: bool = False) -> bool:
    """Whether this host may ask its upper system for ``pid``."""
    if home.settings.is_managing_server:
        return False
    return force or home.settings.caching_policy == JIT or jobs.transfer_pending(db, pid)


def obtain(home: Home, store: Storehouse, db: sqlite3.Connection, pid: PackageId, upper: Upper, log: Log,
           force: bool = False) -> tuple[Manifest, bool]:
    """Make sure a current, verified copy of ``pid`` is here; returns its manifest and whether it was fetched.

    Raises UnableToCache when the policy forbids fetching a missing package,
    IntegrityError when a copy that may not be replaced is damaged, Refused and
    CommunicationError when the upper system does not deliver.
    """
    fetching = may_fetch(home, db, pid, force)
    with store.fetch_lock(pid):  # one transfer per package; a waiter finds it here afterwards
        have = store.get(pid)
        cur = current(home, store, pid, upper, log, fetching)
        if have is not None and have.sha256 == cur.sha256:
            try:
                store.verify(have)
                return have, False
            except IntegrityError as e:
                store.remove(pid)  # never served or installed
                if home.settings.is_managing_server:
                    raise IntegrityError(f"{e}; the copy on {home.host} was removed") from None
                if not fetching:
                    raise unable(home, pid, f"the copy here was damaged ({e}) and removed") from None
                log(f"{e}; removed, fetching it again")
        elif have is not None:
            log(f"package {pid} here (SHA-256 {have.sha256[:16]}...) is not the current one "
                f"({cur.sha256[:16]}...); removed, fetching it again")
            store.remove(pid)
        if not fetching:  # SNEAKERNET: its own copy is authoritative, so it is current by definition
            raise unable(home, pid)
        client = upper()
        start = store.partial_size(cur)
        log(f"fetching package {pid} from {client.where} from byte {start}")
        client.fetch(store, cur)
        crashpoints.reach("fetched")
        log(f"fetched package {pid} ({cur.size} bytes) from {client.where}")
        return cur, True
