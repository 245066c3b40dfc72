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

A damaged copy heals.  The ``.verified`` stamp cannot see silent disk
corruption, so a copy is also checked as it is served (a whole payload:
rds.service hashes what it reads, rds.storehouse.Served) and by every lower
system that downloads it (a chunked package: each chunk, as it comes).  A
copy found damaged, by either, is removed (``found_damaged``; the storehouse
notes why) and never served again: under JIT it is fetched
again when next needed; under SNEAKERNET, and on the managing server, the
jobs that need it end in ERROR saying it was damaged, until a good copy is
staged or registered.  The lower system that got a damaged download discards
it, tells the upper system (``damaged_download``; the upper checks its copy
again before it believes it, ``reported``), and its pass fails: the jobs that
waited for the package are LINE-DOWN at the managing server until a later
pass brings a good copy.  Each end logs one line.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable

from rds import crashpoints, jobs
from rds.client import UpperClient
from rds.errors import CommunicationError, IntegrityError, RdsError, Refused, UnableToCache
from rds.home import Home
from rds.packages import Manifest, PackageId
from rds.storehouse import Storehouse

JIT, SNEAKERNET = "JIT", "SNEAKERNET"

Upper = Callable[[], UpperClient]
Log = Callable[[str], None]


def unable(home: Home, store: Storehouse, pid: PackageId, why: str | None = None) -> UnableToCache:
    """Why ``pid`` cannot be had here: not staged (SNEAKERNET), or its copy was found damaged."""
    if why is None:
        damage = store.damage(pid)
        why = f"the copy here was damaged ({damage}) and removed" if damage else "it was not staged"
    if home.settings.is_managing_server:
        return UnableToCache(f"package {pid} cannot be served by the managing server {home.host}: {why}; "
                             f"register it again with 'rdsft -c', or stage a good copy with 'rdsstage -i PATH'")
    return UnableToCache(
        f"unable to cache package {pid} on {home.host}: CachingPolicy is {home.settings.caching_policy} "
        f"(manual update) and {why}; stage it there with 'rdsstage -i PATH' from a copy made on the managing "
        f"server with 'rdsstage -o PATH -r {pid}', or push it with 'dcmjexe -t transfer -r {pid} -h {home.host}'")


def current(home: Home, store: Storehouse, pid: PackageId, upper: Upper, log: Log, fetching: bool) -> Manifest:
    """The current manifest of ``pid`` as this host may know it (its upper's, or its own copy's)."""
    have = store.get(pid)
    if home.settings.is_managing_server or not fetching:
        if have is None:
            if home.settings.is_managing_server and store.damage(pid) is None:
                raise Refused(f"package {pid} is not kept on {home.host}")
            raise unable(home, store, pid)
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

    Raises UnableToCache when the policy forbids fetching a missing (or
    damaged) package, IntegrityError when the download came damaged (it was
    discarded and the upper system told), Refused and CommunicationError when
    the upper system does not deliver.
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
                _remove_damaged(store, have, str(e))  # never served or installed
                if not fetching:
                    raise unable(home, store, pid, f"the copy here was damaged ({e}) and removed") from None
                log(f"{e}; removed, fetching it again")
        elif have is not None:
            log(f"package {pid} here (SHA-256 {have.sha256[:16]}...) is not the current one "
                f"({cur.sha256[:16]}...); removed, fetching it again")
            store.remove(pid)
        if not fetching:  # SNEAKERNET: its own copy is authoritative, so it is current by definition
            raise unable(home, store, pid)
        client = upper()
        start = store.partial_size(cur)
        log(f"fetching package {pid} from {client.where} from byte {start}")
        try:
            client.fetch(store, cur)
        except IntegrityError as e:  # what came is not the package: discarded already
            raise damaged_download(client, cur, e, log) from None
        crashpoints.reach("fetched")
        log(f"fetched package {pid} ({cur.size} bytes) from {client.where}")
        return cur, True


def _remove_damaged(store: Storehouse, m: Manifest, why: str) -> None:
    store.chunks.purge(m.chunks)  # a chunk that other packages share too: fetched again with this one
    store.remove(m.id)
    store.note_damage(m.id, why)


def damaged_download(client: UpperClient, m: Manifest, e: IntegrityError, log: Log) -> IntegrityError:
    """A download of ``m`` did not match its manifest: tell the upper system that served it.

    Returns the error that ends this try (the pass retries: a JIT upper
    system fetches a good copy meanwhile); raises the upper system's
    UnableToCache when it cannot (SNEAKERNET, the managing server), which
    ends the jobs in ERROR.  Logs one line.
    """
    try:
        copy = client.damaged(m.id, m.sha256)
    except UnableToCache:
        raise
    except RdsError as told:  # cut, refused, or an upper system that does not know the request
        then = f"could not tell {client.where} ({told})"
    else:
        then = {"intact": f"{client.where} checked its copy again and finds it intact (damaged on the way?)",
                "removed": f"{client.where} removed its copy and fetches a good one when asked again"}.get(
                    copy, f"{client.where} holds no such copy any more")
    error = IntegrityError(f"{e} ({client.where} served a damaged copy); {then}; the next pass fetches it again")
    log(str(error))
    return error


def found_damaged(home: Home, store: Storehouse, m: Manifest, why: str, log: Log, fetching: bool,
                  ino: int | None = None) -> bool:
    """The copy of ``m`` here (the payload ``ino``, if given) is damaged: remove it, and say what follows.

    False when that copy had left already (replaced by a fetch meanwhile, or removed).
    """
    with store.fetch_lock(m.id):
        have = store.get(m.id)
        if have is None or have.sha256 != m.sha256 or (ino is not None and store.payload_inode(m.id) != ino):
            return False
        _remove_damaged(store, m, why)
    then = ("fetched again from the upper system when next needed" if fetching else
            "register it again" if home.settings.is_managing_server else "stage a good copy (SNEAKERNET)")
    log(f"package {m.id}: {why}; removed, {then}")
    return True


def reported(home: Home, store: Storehouse, pid: PackageId, sha256: str, lower: str, log: Log,
             fetching: bool) -> str:
    """``lower`` says the copy of ``pid`` (``sha256``) it got from here was damaged.

    Not believed as said: the copy here is hashed again, whatever its stamp.
    Returns "removed" (it was damaged: removed, or found so while served),
    "intact", or "gone" (no such copy here); raises UnableToCache when this
    host cannot fetch a good copy itself.
    """
    m = store.get(pid)
    if m is not None and m.sha256 == sha256:
        try:
            with store.fetch_lock(pid):
                store.verify(m, full=True)
        except IntegrityError:
            found_damaged(home, store, m, f"the copy here does not match its manifest, hashed again when {lower}, "
                          "which got it from here, reported it damaged", log, fetching)
        else:
            log(f"package {pid}: {lower} reports that the copy it got from here was damaged; the copy here "
                "is intact (hashed again), so the damage happened on the way or on " + lower)
            return "intact"
    if store.damage(pid) is None:
        return "gone"
    if not fetching:
        raise unable(home, store, pid)
    return "removed"
