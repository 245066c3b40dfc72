"""The upper system's side of the protocol (rds.wire): it answers one lower system's requests.

A transport hands each request to ``UpperService``: ``transport.local``
directly, ``transport.serve`` (rds-serve under sshd) from the SSH channel.
The service checks that the request is the lower system's own, answers it from
this home (its jobs, routes, results and storehouse) and, for a package that
is missing or not current here, asks this home's own upper system, which the
transport passes in.  The lower system's side is rds.client.
"""

from __future__ import annotations

import re
import sqlite3
import threading
from collections.abc import Callable, Iterator
from typing import Any

from rds import cache, control, daemon, database, events, hosts, identity, jobs, results, session, trust, wire
from rds.client import UpperClient
from rds.errors import (
    CommunicationError,
    IntegrityError,
    LockTimeout,
    ProtocolError,
    RdsError,
    Refused,
    UnableToCache,
)
from rds.home import Home
from rds.log import logger
from rds.packages import Manifest, PackageId
from rds.results import Result
from rds.settings import startup_address
from rds.storehouse import Block, Served, Storehouse


class UpperService:
    """The upper system's side, for one lower system whose name is trusted.

    ``lower`` comes from the transport (the forced command of the lower
    system's SSH key, or the lower home's own settings on this machine).  A
    request that claims another host is refused.  ``upper`` reaches this
    home's own upper system (rds.transport.serving passes connect), once,
    when a lower system needs what is not here.
    """

    def __init__(self, home: Home, lower: str, upper: Callable[[], UpperClient], remote: bool = False) -> None:
        self.home = home
        self.lower = lower
        self.remote = remote  # over SSH: a lower system on another machine names no home on this one
        self.store = Storehouse.of(home)
        self._db: sqlite3.Connection | None = None
        self._connect = upper
        self._upper: UpperClient | None = None
        self._warming: threading.Thread | None = None  # logging in to the upper system ahead (warm_upper)
        self._warm_error: RdsError | None = None
        self._served: dict[PackageId, Served] = {}  # each package's SHA-256 as served, read after read
        self._manifests: dict[PackageId, tuple[tuple[int, int, int], Manifest]] = {}

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            self._db = session.open_database(self.home)
        return self._db

    def close(self) -> None:
        # a login ahead still under way (warm_upper) is not waited for: it ends with the process
        if self._upper is not None:
            self._upper.link.close()
            self._upper = None
        if self._db is not None:
            self._db.close()
            self._db = None

    def upper(self) -> UpperClient:
        """This home's own upper system, reached when a lower system needs what is not here."""
        if self._warming is not None:
            self._warming.join()
            self._warming = None
            if self._warm_error is not None:
                error, self._warm_error = self._warm_error, None
                raise error
        if self._upper is None:
            self._upper = self._connect()
        return self._upper

    def warm_upper(self, packages: set[PackageId]) -> None:
        """Log in to this home's upper system now, in the background, if any of ``packages`` is missing here:
        the lower system that was just handed their jobs asks to read them next, and a JIT relay fetches
        them from its upper then (issue 16: the SSH login is then off that path).  A failure is raised by
        ``upper``, when a request needs the upper system."""
        if self._upper is not None or self._warming is not None or self.home.settings.is_managing_server \
                or self.home.settings.caching_policy != cache.JIT or all(self.store.has(p) for p in packages):
            return

        def connect() -> None:
            try:
                self._upper = self._connect()
            except RdsError as e:  # said by ``upper`` when the read needs the upper system
                self._warm_error = e

        self._warming = threading.Thread(target=connect, name="warm-upper", daemon=True)
        self._warming.start()

    def handle(self, msg: Any) -> dict[str, Any]:
        """Answer one request; errors become error answers, never exceptions."""
        try:
            op = wire.check(msg, self.lower)
            if op == "checkin":
                answer = self.checkin(msg.get("statements"), msg.get("below", []), msg.get("wake"),
                                      msg.get("controls"), msg.get("hosts"))
                return {**answer, "signed": self.signed_copies(msg["unsigned"])} if msg.get("unsigned") else answer
            if op == "ack":
                return self.ack(msg.get("jobs", []))
            if op == "report":
                return self.report(msg.get("results", []))
            if op == "stat":
                return {"ok": True, "manifest": self.stat(msg.get("package")).to_json()}
            if op == "forget":
                return self.forget()
            if op == "damaged":
                return {"ok": True, "copy": self.damaged(msg.get("package"), msg.get("sha256"))}
            raise ProtocolError(f"unknown request {op!r}")
        except wire.ANSWERED as e:
            return wire.error_answer(e)

    def checkin(self, statements: Any, below: Any, wake: Any = None, held: Any = None,
                reported: Any = None) -> dict[str, Any]:
        if wake is not None:
            try:
                wake = startup_address(wake)
            except (TypeError, ValueError, AttributeError):
                raise ProtocolError("'wake' must be ssh://[user@]host[:port] or the absolute path of a home") from None
            if self.remote and not wake.startswith("ssh://"):
                raise ProtocolError("'wake' over SSH must be ssh://[user@]host[:port], not a path on this machine")
        log = logger(self.home)
        proven, unproven = trust.prove(self.db, self.home.settings, self.home.host, self.lower, statements, below,
                                       log.warning)
        with database.Transaction(self.db):  # what the check-in tells of the routes and hosts: one commit
            moved = jobs.record_checkin(self.db, self.lower, proven[1:], self.home.host, wake=wake)
            hosts.observe(self.db, proven, reported)
            followed = jobs.follow(self.db, moved)  # the jobs follow their host
        for host, was in sorted(moved.items()):
            log.info(f"route to {host} moved from {was} to {self.lower} (proven by {host}'s signed statement)"
                     + (f"; its {followed[host]} job(s) handed to {was} go through {self.lower} now"
                        if host in followed else ""))
        theirs = control.parse_held(held)
        for job_no, dest, state in jobs.unknown_state(self.db):
            if dest == self.lower or jobs.route(self.db, dest) == self.lower:
                log.warning(f"job {job_no}:{dest} is not handed to {self.lower}: its state here is {state!r}, not a "
                            f"job state (a damaged database?); delete it with 'rdsgroupid -d {job_no}:{dest}'")
        managing = self.home.settings.is_managing_server
        if managing:  # a wave that waits too long says so; one whose time came is released
            from rds import manager  # the managing server's alone: a relay's rds-serve never imports it

            manager.advance(self.db, self.home, log.warning)
        ready: list[dict[str, Any]] = []
        manifests: dict[str, Manifest] = {}
        stand_ins: set[str] = set()  # packages whose manifest in the answer is a DELETE job's
        signed: list[tuple[jobs.Job, Manifest]] = []
        found = self.one_manifest_each(jobs.for_lower(self.db, self.lower))
        read: dict[tuple[int, str], Manifest] = {}  # manifests read from job records already
        if managing:  # signed the first time they are handed out, all at once (rds.manager.signed)
            from rds import manager

            found = manager.signed(self.db, self.home, found, read)
        for job in found:
            # handed out whether the package is here or not: the record carries its manifest (read once
            # a package), and a read of a package not here fetches it (rds.cache); a DELETE job's stands in last
            if not managing and not job.sig:  # came before signatures: held until signed (signed_copies)
                continue
            key = str(job.package)
            if key not in manifests or (key in stand_ins and job.type != jobs.DELETE):
                manifests[key] = read.get((job.job_no, job.dest)) or jobs.manifest(self.db, job)
                if job.type == jobs.DELETE:
                    stand_ins.add(key)
                else:
                    stand_ins.discard(key)
            if managing and (not job.sig or not manifests[key].signature):  # made before signatures
                if not manifests[key].signature:
                    manifests[key] = trust.sign_manifest(self.home.identity, manifests[key])
                job = trust.sign_job(self.home.identity, job, manifests[key])
                signed.append((job, manifests[key]))
            ready.append(job.to_json())
        if signed:  # signed once, and kept so
            jobs.keep_signed(self.db, signed)
            log.info(f"signed {len(signed)} job(s) made before signatures, handed to {self.lower}")
        if ready and self.remote:  # over SSH, rds-serve: its read of a package not here comes next
            self.warm_upper({PackageId.parse(k) for k in manifests})
        answer = {"ok": True, "upper": self.home.host, "jobs": ready,
                  "manifests": {k: m.to_json() for k, m in manifests.items()},
                  "invalid": jobs.invalid_handed_to(self.db, self.lower), "unproven": unproven}
        if unproven and (gone := trust.elsewhere(self.db, unproven, self.lower)):  # hosts that moved away
            answer["moved"] = gone
        if said := control.for_lower(self.db, self.lower, theirs):
            answer["controls"] = said
        if not managing and (held := results.held(self.db, self.home.host, self.lower, wire.RESEND_MAX)):
            answer["resend"] = [list(k) for k in held]  # unsigned from before protocol 2: signed copies, please
            log.info(f"asked {self.lower} to send again {len(held)} result(s) held here unsigned since the upgrade "
                     f"to protocol 2: {', '.join(f'{j}:{d}' for j, d in held[:10])}{' ...' if len(held) > 10 else ''}")
        signer = identity.public(self.home.prm) if managing else trust.signer_key(self.home.settings, self.db)
        if signer is not None:
            answer["signer"] = {"host": self.home.host if managing else trust.signer_name(self.db), "key": signer}
        return answer

    def one_manifest_each(self, found: list[tuple[jobs.Job, str]]) -> list[jobs.Job]:
        """The jobs to hand out now: an answer carries one manifest a package, and each job's signature
        covers its own, so the jobs of a package whose record carries another manifest (the package removed
        and registered again, or a DELETE job's stand-in made while it was gone) wait for a later check-in,
        when those handed now have left the waiting state.  The manifest handed out is the first job's that
        is not a DELETE, else the first DELETE job's."""
        chosen: dict[str, str] = {}
        for job, mark in found:
            if job.type != jobs.DELETE:
                chosen.setdefault(str(job.package), mark)
        for job, mark in found:
            chosen.setdefault(str(job.package), mark)
        now = [job for job, mark in found if chosen[str(job.package)] == mark]
        if len(now) < len(found):
            later = [job.key for job, mark in found if chosen[str(job.package)] != mark]
            logger(self.home).info(f"{len(later)} job(s) for {self.lower} wait for a later check-in: their package's "
                                   f"manifest differs from the one handed out now (registered again?): "
                                   f"{', '.join(later[:10])}{' ...' if len(later) > 10 else ''}")
        return now

    def signed_copies(self, keys: Any) -> list[dict[str, Any]]:
        """Signed copies of the jobs handed to the lower system that it holds unsigned, from before protocol 2
        (the managing server signs and keeps them now; a relay gives those it has signed)."""
        try:
            pairs = [(int(j), str(d)) for j, d in keys]
            if len(pairs) > wire.RESEND_MAX or any(not 0 < j < 2**63 for j, _ in pairs):
                raise ValueError("job number")
        except (TypeError, ValueError, OverflowError):
            raise ProtocolError(f"'unsigned' must be a list of at most {wire.RESEND_MAX} [job, dest] pairs") from None
        held = jobs.handed_copies(self.db, self.lower, pairs)
        if self.home.settings.is_managing_server:
            me = self.home.identity
            resigned = []
            for i, (job, m) in enumerate(held):
                if not job.sig or not m.signature:
                    m = m if m.signature else trust.sign_manifest(me, m)
                    held[i] = (trust.sign_job(me, job, m), m)
                    resigned.append(held[i])
            if resigned:
                jobs.keep_signed(self.db, resigned)
                logger(self.home).info(f"signed {len(resigned)} job(s) handed to {self.lower} before signatures")
        return [{**job.to_json(), "manifest": m.to_json()} for job, m in held if job.sig and m.signature]

    def ack(self, keys: Any) -> dict[str, Any]:
        try:
            pairs = [(int(j), str(d)) for j, d in keys]
            if any(not 0 < j < 2**63 for j, _ in pairs):
                raise ValueError("job number")
        except (TypeError, ValueError, OverflowError):  # int(Infinity) overflows
            raise ProtocolError("'jobs' must be a list of [job, dest] pairs") from None
        taken = jobs.hand_over(self.db, self.lower, pairs)
        said = control.of_jobs(self.db, {j for j, _ in pairs})
        return {"ok": True, "taken": taken, **({"controls": said} if said else {})}

    def forget(self) -> dict[str, Any]:
        """rdssys -u: the lower system leaves; only it is forgotten (not the hosts below a relay)."""
        gone = hosts.remove(self.db, self.lower, only_itself=True)
        logger(self.home).info(f"{self.lower} asked to be forgotten (rdssys -u): its route, {gone['jobs']} held "
                               f"job(s) and its key removed")
        return {"ok": True, **gone}

    def report(self, items: Any) -> dict[str, Any]:
        if not isinstance(items, list):
            raise ProtocolError("'results' must be a list")
        parsed = [Result.from_json(r) for r in items]
        kept: list[Result] = []
        log = logger(self.home)
        believed = []
        later: list[list[Any]] = []  # refused for a reason that may pass: the lower system sends them again
        faults = trust.result_faults(self.db, self.lower, parsed, self.home.host, lambda h: jobs.route(self.db, h),
                                     passes_up=not self.home.settings.is_managing_server)
        for r, fault in zip(parsed, faults, strict=True):  # each on its own: a forged one holds back no other
            if fault is None:
                believed.append(r)
            elif fault.lasting:
                log.warning(f"result refused: {fault}")
            else:
                later.append([r.job_no, r.dest])
                log.info(f"result refused for now: {fault}; {self.lower} keeps it to send again")
        n = results.accept(self.db, self.lower, believed, self.home.host, kept)
        for r in kept:  # once per result and status: a resent batch logs nothing
            log.info(f"result of job {r.job_no} for {r.dest} from {self.lower}: {r.status}")
        if kept and self.home.settings.is_managing_server:  # results decide the waves
            from rds import manager

            manager.advance(self.db, self.home, log.warning)
        if n and not self.home.settings.is_managing_server:
            daemon.wake(self.home, "rdssnd")  # a resident sender forwards them at once
        answer: dict[str, Any] = {"ok": True, "accepted": n, "refused": len(parsed) - len(believed)}
        if later:
            answer["later"] = later
        return answer

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
            m = cache.current(self.home, self.store, pid, self.upper, log, cache.may_fetch(self.home, self.db, pid))
            if self.home.settings.is_managing_server:  # it signs what it hands out (registered before, too)
                m = trust.sign_manifest(self.home.identity, m)
            return m
        except Refused:
            raise
        except CommunicationError as e:
            raise Refused(f"{self.home.host} cannot ask its upper system about {pid}: {e}; ask again later") \
                from None

    def damaged(self, package: Any, sha256: Any) -> str:
        """The lower system's download of ``package`` did not match ``sha256`` (rds.cache.reported)."""
        pid = self.authorize(package)
        if not isinstance(sha256, str) or not re.fullmatch(r"[0-9a-f]{64}", sha256):
            raise ProtocolError("'sha256' must be 64 lowercase hex digits")
        try:
            return cache.reported(self.home, self.store, pid, sha256, self.lower, logger(self.home).info,
                                  cache.may_fetch(self.home, self.db, pid))
        except LockTimeout as e:
            raise Refused(f"{self.home.host} is busy with {pid} ({e}); tell it again later") from None

    def obtain(self, pid: PackageId) -> Manifest:
        """A current, verified copy of ``pid`` here, fetched from this home's upper system if need be."""
        log = logger(self.home).info
        try:
            return cache.obtain(self.home, self.store, self.db, pid, self.upper, log)[0]
        except UnableToCache as e:
            log(str(e))  # this end's line; the lower system's jobs end in ERROR with it
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

    def read(self, package: Any, offset: Any, length: Any, pieces: bool = False) -> Iterator[Block]:
        """Check the request now (fetching the package first if need be); the blocks come from the iterator."""
        return self.read_ranges(package, [[offset, length]], pieces)

    def read_ranges(self, package: Any, ranges: Any, pieces: bool = False) -> Iterator[Block]:
        """Several byte ranges of the package's archive, back to back (``read``'s, for the chunks a lower
        system lacks): checked, authorized and prepared once for all of them.  With ``pieces``, a chunked
        package's blocks come as chunks.Pieces, for rds-serve to hand to sshd without reading them."""
        if not isinstance(ranges, list) or not 0 < len(ranges) <= wire.MAX_RANGES:
            raise ProtocolError(f"'ranges' must be a list of 1 to {wire.MAX_RANGES} [offset, length] pairs")
        for r in ranges:
            if not isinstance(r, list) or len(r) != 2 or not all(type(x) is int and x >= 0 for x in r):
                raise ProtocolError("'offset' and 'length' must be non-negative integers")
        if len(ranges) > 1 and sum(r[1] for r in ranges) > wire.READ_MAX:
            raise ProtocolError(f"the ranges of one request may hold {wire.READ_MAX} bytes at most")
        pid = self.authorize(package)
        offset = ranges[0][0]
        m = self._manifest(pid)
        if offset == 0 or m is None:  # a download begins: only a current, verified copy is served
            m = self.obtain(pid)
        if any(o > m.size for o, _ in ranges):  # a hostile offset would overflow the seek
            raise ProtocolError(f"offset {max(o for o, _ in ranges)} is beyond the end of package {m.id} "
                                f"({m.size} bytes)")
        self.store.touch(m.id)  # served: an access, for the cache's least-recently-accessed order
        database.announce(self.db, events.Reading(self.lower, jobs.being_read(self.db, self.lower, m.id)))
        spans = [(o, min(n, m.size - o)) for o, n in ranges]
        if m.chunked:  # each chunk is verified by whoever receives it, which reports a damaged one
            # (``damaged``: checked again here, removed): hashing it here as well cost the upper system
            # a second SHA-256 of every byte it serves (issue 16: read once, verified once)
            return self._counted(self.store.spans(m, spans, pieces=pieces), m, None, offset)
        if offset == 0 or pid not in self._served or self._served[pid].manifest != m:
            self._served[pid] = Served(m)  # a read that does not go on from the last one is not hashed
        check = self._served[pid]
        return self._counted(self.store.spans(m, spans, check), m, check, offset)

    def _manifest(self, pid: PackageId) -> Manifest | None:
        """The manifest here, read once a conversation while it stays the same file (a chunked package's
        lists thousands of chunks, and a download asks many ranges)."""
        try:
            st = (self.store.dir(pid) / "manifest.json").stat()
        except FileNotFoundError:
            return None
        key = (st.st_ino, st.st_mtime_ns, st.st_size)
        cached = self._manifests.get(pid)
        if cached is not None and cached[0] == key:
            return cached[1]
        m = self.store.get(pid)
        if m is not None:
            self._manifests = {pid: (key, m)}
        return m

    def _counted(self, blocks: Iterator[Block], m: Manifest, check: Served | None, offset: int) -> Iterator[Block]:
        """Pass the blocks on; say how many bytes went (the fan-out benchmark and tests count them), and
        once the whole payload went, whether it was the package (``check``: hashed as it was served)."""
        n = 0
        for block in blocks:
            n += len(block)
            yield block
        log = logger(self.home).info
        log(f"sent {n} byte(s) of {m.id} to {self.lower}, starting at byte {offset}")
        if check is None or not check.complete:
            return
        self._served.pop(m.id, None)
        if check.matches:
            return
        try:
            cache.found_damaged(self.home, self.store, m, f"SHA-256 of the copy served to {self.lower} does not "
                                f"match its manifest ({check.sha.hexdigest()[:16]}..., expected "
                                f"{m.sha256[:16]}...)", log, cache.may_fetch(self.home, self.db, m.id), check.ino)
        except RdsError as e:  # the lower system's own check and report still catch it
            logger(self.home).warning(f"package {m.id}: served damaged to {self.lower}, and could not remove "
                                      f"it: {e}")

