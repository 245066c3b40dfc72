"""The messages between a lower system and its upper system.

The lower system always asks; the upper system answers.  Every request is a
JSON object with ``op``, the protocol version ``v`` and the asking ``host``:

``checkin``  ``below``: every host under the asking one; ``wake``: where a
             startup request reaches the asker (optional): ``ssh://[user@]host[:port]``
             or the absolute path of its home (rds.startup).  The upper system
             learns its routes from it and answers with the jobs waiting for
             the asker's whole subtree and the manifests of their packages,
             and ``invalid``: the jobs it handed the asker whose package has
             left its storehouse since (rds.cleanup).
``ack``      ``jobs``: ``[job, dest]`` pairs now safely stored below; the upper
             system will not hand them out again.
``report``   ``results``: how jobs ended in the asker's subtree.
``read``     ``package``, ``offset``, ``length``: bytes of a package's archive
             (only a package that a job of the asker's subtree needs).  A relay
             that lacks the package, or whose copy is not current, fetches it
             from its own upper system first (rds.cache) while the asker waits.
``stat``     ``package``: the upper system's current ``manifest`` of a package
             (SHA-256 and size; authorized like ``read``).

An answer is ``{"ok": true, ...}`` or ``{"ok": false, "error": KIND,
"message": ...}`` where KIND is ``refused``, ``protocol`` or ``uncacheable``
(the caching policy of a system on the way forbids fetching the package: the
jobs that need it end in ERROR).  A transport
carries these messages: ``transport.local`` calls the upper home directly,
``transport.ssh`` runs ``rds-serve`` on the upper system.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from rds import cache, crashpoints, daemon, database, events, fsutil, jobs, results, session
from rds.errors import (
    CommunicationError,
    InputError,
    IntegrityError,
    LockTimeout,
    ProtocolError,
    RdsError,
    Refused,
    SystemError_,
    UnableToCache,
)
from rds.home import Home
from rds.jobs import Job
from rds.log import logger
from rds.packages import Manifest, PackageId
from rds.results import Result
from rds.settings import startup_address, valid_hostname
from rds.storehouse import Storehouse

VERSION = 1
MAX_BELOW = 1_000_000
READ_MAX = 64 << 20


# the errors a lower system is told of in an answer (rds-serve turns any other into "upper")
ANSWERED = (UnableToCache, Refused, ProtocolError, InputError)


def error_answer(e: Exception) -> dict[str, Any]:
    """The answer that tells the lower system of ``e``, one of ANSWERED."""
    kind = "uncacheable" if isinstance(e, UnableToCache) else "refused" if isinstance(e, Refused) else "protocol"
    return {"ok": False, "error": kind, "message": str(e)}


class UpperService:
    """The upper system's side, for one lower system whose name is trusted.

    ``lower`` comes from the transport (the forced command of the lower
    system's SSH key, or the lower home's own settings on this machine).  A
    request that claims another host is refused.
    """

    def __init__(self, home: Home, lower: str, remote: bool = False) -> None:
        self.home = home
        self.lower = lower
        self.remote = remote  # over SSH: a lower system on another machine names no home on this one
        self.store = Storehouse.of(home)
        self._db: sqlite3.Connection | None = None
        self._upper: UpperClient | None = None

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            self._db = session.open_database(self.home)
        return self._db

    def close(self) -> None:
        if self._upper is not None:
            self._upper.link.close()
            self._upper = None
        if self._db is not None:
            self._db.close()
            self._db = None

    def upper(self) -> UpperClient:
        """This home's own upper system, reached when a lower system needs what is not here."""
        if self._upper is None:
            from rds.log import logger
            from rds.transport import connect

            self._upper = connect(self.home, log=logger(self.home).warning)
        return self._upper

    def handle(self, msg: Any) -> dict[str, Any]:
        """Answer one request; errors become error answers, never exceptions."""
        try:
            op = self.check(msg)
            if op == "checkin":
                return self.checkin(msg.get("below", []), msg.get("wake"))
            if op == "ack":
                return self.ack(msg.get("jobs", []))
            if op == "report":
                return self.report(msg.get("results", []))
            if op == "stat":
                return {"ok": True, "manifest": self.stat(msg.get("package")).to_json()}
            raise ProtocolError(f"unknown request {op!r}")
        except ANSWERED as e:
            return error_answer(e)

    def check(self, msg: Any) -> str:
        """The request's op, once its form, version and asking host are checked."""
        if not isinstance(msg, dict):
            raise ProtocolError("a request must be a JSON object")
        if msg.get("v") != VERSION:
            raise ProtocolError(f"protocol version {msg.get('v')!r} is not supported (this side speaks {VERSION})")
        host = msg.get("host")
        if host != self.lower:
            raise Refused(f"{self.lower} may not act as {host!r}")
        op = msg.get("op")
        if not isinstance(op, str):
            raise ProtocolError("a request needs an op")
        return op

    def checkin(self, below: Any, wake: Any = None) -> dict[str, Any]:
        if not isinstance(below, list) or len(below) > MAX_BELOW:
            raise ProtocolError("'below' must be a list of host names")
        for h in below:
            if not isinstance(h, str) or not valid_hostname(h):
                raise ProtocolError(f"'below' holds a bad host name: {h!r}")
        if wake is not None:
            try:
                wake = startup_address(wake)
            except (TypeError, ValueError, AttributeError):
                raise ProtocolError("'wake' must be ssh://[user@]host[:port] or the absolute path of a home") from None
            if self.remote and not wake.startswith("ssh://"):
                raise ProtocolError("'wake' over SSH must be ssh://[user@]host[:port], not a path on this machine")
        jobs.record_checkin(self.db, self.lower, below, self.home.host, wake=wake)
        ready: list[dict[str, Any]] = []
        manifests: dict[str, dict[str, Any]] = {}
        for job in jobs.for_lower(self.db, self.lower):
            # handed out whether the package is here or not: the record carries its manifest,
            # and a read of a package not here fetches it (rds.cache); a DELETE job's stands in last
            key = str(job.package)
            if key not in manifests or job.type != jobs.DELETE:
                manifests[key] = jobs.manifest(self.db, job).to_json()
            ready.append(job.to_json())
        return {"ok": True, "upper": self.home.host, "jobs": ready, "manifests": manifests,
                "invalid": jobs.invalid_handed_to(self.db, self.lower)}

    def ack(self, keys: Any) -> dict[str, Any]:
        try:
            pairs = [(int(j), str(d)) for j, d in keys]
            if any(not 0 < j < 2**63 for j, _ in pairs):
                raise ValueError("job number")
        except (TypeError, ValueError, OverflowError):  # int(Infinity) overflows
            raise ProtocolError("'jobs' must be a list of [job, dest] pairs") from None
        taken = jobs.hand_over(self.db, self.lower, pairs)
        return {"ok": True, "taken": taken}

    def report(self, items: Any) -> dict[str, Any]:
        if not isinstance(items, list):
            raise ProtocolError("'results' must be a list")
        parsed = [Result.from_json(r) for r in items]
        kept: list[Result] = []
        try:
            n = results.accept(self.db, self.lower, parsed, self.home.host, kept)
        except ProtocolError as e:
            raise Refused(str(e)) from None
        log = logger(self.home)
        for r in kept:  # once per result and status: a resent batch logs nothing
            log.info(f"result of job {r.job_no} for {r.dest} from {self.lower}: {r.status}")
        if n and not self.home.settings.is_managing_server:
            daemon.wake(self.home, "rdssnd")  # a resident sender forwards them at once
        return {"ok": True, "accepted": n}

    def authorize(self, package: Any) -> PackageId:
        """A package that a job of the lower system's subtree needs; any other is refused."""
        if not isinstance(package, str):
            raise ProtocolError("'package' must be a package ID")
        pid = PackageId.parse(package)
        if not jobs.needed_below(self.db, self.lower, pid):
            raise Refused(f"no job for {self.lower} or the hosts below it needs package {pid}")
        return pid

    def stat(self, package: Any) -> Manifest:
        pid = self.authorize(package)
        log = logger(self.home).info
        log(f"stat of {pid} asked by {self.lower}")
        try:
            return cache.current(self.home, self.store, pid, self.upper, log,
                                 cache.may_fetch(self.home, self.db, pid))
        except Refused:
            raise
        except CommunicationError as e:
            raise Refused(f"{self.home.host} cannot ask its upper system about {pid}: {e}; ask again later") \
                from None

    def obtain(self, pid: PackageId) -> Manifest:
        """A current, verified copy of ``pid`` here, fetched from this home's upper system if need be."""
        log = logger(self.home).info
        try:
            return cache.obtain(self.home, self.store, self.db, pid, self.upper, log)[0]
        except UnableToCache:
            raise
        except IntegrityError as e:
            raise Refused(str(e)) from None
        except Refused as e:
            if self.home.settings.is_managing_server:
                raise
            raise Refused(f"{self.home.host} could not get {pid} from its upper system: {e}") from None
        except CommunicationError as e:
            raise Refused(f"{self.home.host} could not get {pid} from its upper system: {e}; "
                          f"ask again later") from None
        except LockTimeout as e:
            raise Refused(f"{self.home.host} is still fetching {pid} for another system ({e}); "
                          f"ask again later") from None

    def read(self, package: Any, offset: Any, length: Any) -> Iterator[bytes]:
        """Check the request now (fetching the package first if need be); the blocks come from the iterator."""
        pid = self.authorize(package)
        if not isinstance(offset, int) or not isinstance(length, int) or offset < 0 or length < 0:
            raise ProtocolError("'offset' and 'length' must be non-negative integers")
        m = self.store.get(pid)
        if offset == 0 or m is None:  # a download begins: only a current, verified copy is served
            m = self.obtain(pid)
        if offset > m.size:  # a hostile offset would overflow the seek
            raise ProtocolError(f"offset {offset} is beyond the end of package {m.id} ({m.size} bytes)")
        self.store.touch(m.id)  # served: an access, for the cache's least-recently-accessed order
        database.announce(self.db, events.Reading(self.lower, jobs.being_read(self.db, self.lower, m.id)))
        path = self.store.payload(pid)
        return _counted(_blocks(path, offset, min(length, max(0, m.size - offset))),
                        lambda n: logger(self.home).info(f"sent {n} byte(s) of {pid} to {self.lower}, "
                                                         f"starting at byte {offset}"))


def _counted(blocks: Iterator[bytes], done: Any) -> Iterator[bytes]:
    """Pass the blocks on and say how many bytes went (the fan-out benchmark and tests count them)."""
    n = 0
    for block in blocks:
        n += len(block)
        yield block
    done(n)


def _blocks(path: Path, offset: int, length: int) -> Iterator[bytes]:
    with open(path, "rb") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_SH)  # cleanup does not remove a package while it is read
        f.seek(offset)
        while length > 0:
            block = f.read(min(length, 1 << 20))
            if not block:
                break
            length -= len(block)
            yield block


class _Progress:
    """The file a download is written to; a crash point per block, for tests."""

    def __init__(self, out: BinaryIO, sha: Any) -> None:
        self.out = out
        self.sha = sha

    def write(self, data: bytes) -> int:
        n = self.out.write(data)
        self.sha.update(data)
        crashpoints.reach("downloading")
        return n


class Link(Protocol):
    """What a transport gives the lower system: one conversation with its upper."""

    def call(self, msg: dict[str, Any]) -> dict[str, Any]: ...

    def read(self, package: str, offset: int, length: int, out: Any) -> None: ...

    def close(self) -> None: ...


def said(message: Any) -> str:
    """What the other system said, as one line of at most 500 characters: it may be hostile."""
    return " ".join(str(message).splitlines())[:500]


class UpperClient:
    """The lower system's side: builds requests and checks answers."""

    def __init__(self, link: Link, host: str, where: str) -> None:
        self.link = link
        self.host = host
        self.where = where
        self.invalid: list[tuple[int, str]] = []

    def _call(self, op: str, **fields: Any) -> dict[str, Any]:
        reply = self.link.call({"op": op, "v": VERSION, "host": self.host, **fields})
        if not isinstance(reply, dict) or "ok" not in reply:
            raise ProtocolError(f"{self.where}: answered {op} with something that is not a reply")
        if not reply["ok"]:
            kind, message = reply.get("error"), said(reply.get("message", ""))
            if kind == "refused":
                raise Refused(f"{self.where} refused {op}: {message}")
            if kind == "uncacheable":
                raise UnableToCache(message)
            raise ProtocolError(f"{self.where} rejected {op}: {message}")
        return reply

    def checkin(self, below: list[str], wake: str | None = None) -> tuple[list[Job], dict[str, Manifest]]:
        fields: dict[str, Any] = {"below": below}
        if wake is not None:
            fields["wake"] = wake
        reply = self._call("checkin", **fields)
        try:
            found = [Job.from_json(j) for j in reply.get("jobs", [])]
            manifests = {k: Manifest.from_json(v) for k, v in reply.get("manifests", {}).items()}
        except (RdsError, AttributeError, TypeError) as e:
            raise ProtocolError(f"{self.where}: bad check-in answer: {e}") from None
        for job in found:
            m = manifests.get(str(job.package))
            if m is None or m.id != job.package:
                raise ProtocolError(f"{self.where}: job {job.key} came without the manifest of {job.package}")
        try:  # jobs handed here whose package left the upper's storehouse (an older upper sends none)
            self.invalid = [(int(j), str(d)) for j, d in reply.get("invalid", [])]
        except (TypeError, ValueError, OverflowError):  # int(Infinity) overflows
            raise ProtocolError(f"{self.where}: bad check-in answer: 'invalid' is not a list of jobs") from None
        return found, manifests

    def ack(self, taken: list[Job]) -> None:
        if taken:
            self._call("ack", jobs=[[j.job_no, j.dest] for j in taken])

    def report(self, items: list[Result]) -> int:
        reply = self._call("report", results=[r.to_json() for r in items])
        accepted = reply.get("accepted", 0)
        if not isinstance(accepted, int) or isinstance(accepted, bool) or accepted < 0:
            raise ProtocolError(f"{self.where}: answered report with a bad count {str(accepted)[:40]!r}")
        return accepted

    def stat(self, pid: PackageId) -> Manifest:
        """The upper system's current manifest of ``pid``."""
        reply = self._call("stat", package=str(pid))
        try:
            m = Manifest.from_json(reply.get("manifest"))
        except RdsError as e:
            raise ProtocolError(f"{self.where}: bad stat answer: {e}") from None
        if m.id != pid:
            raise ProtocolError(f"{self.where}: asked about {pid}, answered about {m.id}")
        return m

    def fetch(self, store: Storehouse, manifest: Manifest) -> None:
        """Download a package into ``store``, resuming a partial download; verify it."""
        part = store.partial_path(manifest.id, manifest.sha256)
        have = part.stat().st_size if part.exists() else 0
        if have > manifest.size:
            part.unlink()
            have = 0
        sha = fsutil.sha256_of(part) if have else hashlib.sha256()  # hashed as it arrives
        if have < manifest.size:
            try:
                with open(part, "ab") as out:
                    self.link.read(str(manifest.id), have, manifest.size - have, _Progress(out, sha))
                    out.flush()
                    os.fsync(out.fileno())
            except OSError as e:
                if e.errno not in (errno.ENOSPC, errno.EDQUOT):
                    raise
                kept = part.stat().st_size if part.exists() else 0
                raise SystemError_(f"{part}: disk full; the {kept} bytes of package {manifest.id} received "
                                   "are kept and the next run resumes after them") from None
            finally:
                if part.exists() and part.stat().st_size == 0:
                    part.unlink()  # nothing came: leave no empty partial download
        got = part.stat().st_size if part.exists() else 0  # nothing came: no partial file was left
        if got != manifest.size:
            raise ProtocolError(f"{self.where}: package {manifest.id} came "
                                f"{'short' if got < manifest.size else 'too long'} ({got} of {manifest.size} bytes)")
        store.add_downloaded(manifest, part, sha.hexdigest())
