"""Cleanup of the package storehouse: retention, the cache size limit, and the jobs of packages that leave.

The policy lives here; the files are the storehouse's (rds.storehouse, which
also explains the access stamps that the size limit orders packages by).

A package leaves the storehouse by retention (past its storage period), by
the size limit, by ``rdsft -init`` or by a DELETE job; ``remove`` does all
four the same way: it settles the jobs that needed the package
(``invalidate``, one transaction: the commit point), then has the storehouse
rename the package's directory out of sight and delete the files.  One
exception: under JIT the size limit only makes room.  A package it evicts
is fetched again when it is next needed (seed 002: "If the software is not
present locally ... the Software Repository Cache attempts to download the
file"), so its jobs are not settled; they stay and wait for it.  Retention,
``rdsft -init``, a DELETE job, and the size limit under SNEAKERNET (where
nothing is fetched) invalidate them as seed 003 says.  A package
that a lower system is reading right now is not removed under the reader
(``Storehouse.hold``), but kept and named "busy".  Passes on this home (which
install) are kept out by the caller holding the home's pass lock (``PASS_LOCK``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import sqlite3
import time
from collections.abc import Iterable
from pathlib import Path

from rds import cache, codes, crashpoints, fsutil, jobs, results, session
from rds.clock import now_text
from rds.database import Transaction
from rds.errors import LockTimeout
from rds.home import PASS_LOCK, Home, lock_timeout
from rds.log import logger
from rds.packages import PackageId
from rds.results import Result
from rds.settings import Settings
from rds.storehouse import Stored, Storehouse, reap

EXPIRED, OVER_LIMIT, INIT, DELETE_JOB = "expired", "over size limit", "rdsft -init", "DELETE job"
BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


@dataclasses.dataclass
class Removal:
    package: str
    size: int
    reason: str
    accessed: float
    busy: bool = False  # being served: kept, tried again at the next cleanup

    def to_json(self) -> dict[str, object]:
        return {"package": self.package, "size": self.size, "reason": self.reason,
                "accessed": now_text(self.accessed), "removed": not self.busy}


@dataclasses.dataclass
class Report:
    removed: list[Removal] = dataclasses.field(default_factory=list)
    busy: list[Removal] = dataclasses.field(default_factory=list)
    packages: int = 0  # in the storehouse before
    use_before: int = 0
    use_after: int = 0
    limit: int = 0
    target: int = 0
    invalidated: int = 0
    deleted_jobs: int = 0
    dry_run: bool = False
    doomed: list[Path] = dataclasses.field(default_factory=list)  # out of sight, files not yet deleted

    def to_json(self) -> dict[str, object]:
        return {"dry_run": self.dry_run, "removed": [r.to_json() for r in self.removed],
                "busy": [r.to_json() for r in self.busy], "packages_before": self.packages,
                "bytes_before": self.use_before, "bytes_after": self.use_after, "limit": self.limit,
                "high_water": self.target, "jobs_invalidated": self.invalidated, "jobs_deleted": self.deleted_jobs}

    def summary(self) -> str:
        what = "would remove" if self.dry_run else "removed"
        line = (f"{what} {len(self.removed)} of {self.packages} package(s), "
                f"{sum(r.size for r in self.removed)} bytes; {self.use_after} bytes kept")
        if self.limit:
            line += f" (limit {self.limit}, high-water mark {self.target})"
        if self.invalidated or self.deleted_jobs:
            line += f"; {self.invalidated} job(s) invalidated, {self.deleted_jobs} deleted"
        if self.busy:
            line += f"; {len(self.busy)} busy package(s) kept"
        return line


def storage_period(entry: Stored, settings: Settings) -> float:
    """Seconds a package stays after it was stored; 0 keeps it without limit."""
    if entry.expire_days is not None:
        return entry.expire_days * 86400.0
    return settings.life_of_resource


def clean(home: Home, now: float | None = None, dry_run: bool = False, retention: bool = True,
          size: bool = True, defer: bool = False) -> Report:
    """Delete expired packages, then enforce the size limit; the caller holds the pass lock.

    With ``defer`` the removed packages' files are left, out of sight, in
    ``report.doomed`` for the caller to reap.
    """
    now = time.time() if now is None else now
    settings = home.settings
    store = Storehouse.of(home)
    entries = store.scan()
    report = Report(packages=len(entries), dry_run=dry_run, limit=settings.cache_size_limit)
    report.use_before = sum(e.size for e in entries)
    db = session.open_database(home)
    try:
        pending = jobs.pending_packages(db)
        doomed: list[tuple[Stored, str]] = []
        keep = []
        for e in entries:
            period = storage_period(e, settings)
            if retention and period > 0 and now - e.stored >= period:
                doomed.append((e, EXPIRED))
            else:
                keep.append(e)
        remove(home, db, store, doomed, dry_run=dry_run, wait=0.0, report=report, defer=defer)
        use = sum(e.size for e in keep) + sum(r.size for r in report.busy)  # busy ones still take room
        over: list[tuple[Stored, str]] = []
        if size and settings.cache_size_limit:
            report.target = settings.cache_size_limit * settings.cache_high_water_mark // 100
            if use > settings.cache_size_limit:
                # least recently accessed first; packages that pending jobs need go last
                for e in sorted(keep, key=lambda e: (e.id in pending, e.accessed, e.id)):
                    over.append((e, OVER_LIMIT))
        if over:
            # the size pass stops once use is down to the mark; a busy package stays counted.
            # Under JIT an evicted package comes back when needed: its jobs wait for it, still valid.
            remove(home, db, store, over, dry_run=dry_run, wait=0.0, report=report, use=use, defer=defer,
                   settle=settings.caching_policy != cache.JIT)
        report.use_after = report.use_before - sum(r.size for r in report.removed)
    finally:
        db.close()
    if not dry_run:
        store.forget_checksums()
    if report.removed and not dry_run:
        log = logger(home)
        for r in report.removed:
            log.info(f"cleanup: removed {r.package} ({r.size} bytes, {r.reason}, last accessed {now_text(r.accessed)})")
        log.info(f"cleanup: {report.summary()}")
    return report


CHUNK = 256  # packages held (one open file each) and settled per transaction


def remove(home: Home, db: sqlite3.Connection, store: Storehouse, todo: Iterable[tuple[Stored, str]],
           dry_run: bool = False, wait: float = 0.0, report: Report | None = None,
           use: int | None = None, defer: bool = False, settle: bool = True) -> Report:
    """Remove packages and settle their jobs (unless not ``settle``: JIT's eviction for room); with
    ``use`` stop once it is at the high-water mark.

    By chunks: hold each package against readers, settle the jobs of the
    held ones in one transaction (the commit point), rename their directories
    out of sight and flush the storehouse directory once, then delete the
    files.  Killed after the commit, the packages are still there and the
    next cleanup (or DELETE job, or rdsft -init) removes them; killed after
    the renames, the next pass removes the leftovers.  Jobs are never left
    waiting for a package that is gone, but under JIT, which fetches it again.
    """
    report = report if report is not None else Report(dry_run=dry_run)
    todo = iter(todo)
    full = False
    while not full:
        held: list[Removal] = []
        with contextlib.ExitStack() as holding:
            for e, reason in todo:
                if use is not None and use <= report.target:
                    full = True
                    break
                r = Removal(e.id, e.size, reason, e.accessed)
                use = None if use is None else use - e.size
                if dry_run:
                    report.removed.append(r)
                    continue
                if not holding.enter_context(store.hold(e.id, wait)):
                    use = None if use is None else use + e.size  # a busy package stays, and counts
                    r.busy = True
                    report.busy.append(r)
                    continue
                held.append(r)
                if len(held) >= CHUNK:
                    break
            else:
                full = True
            if not held:
                break
            if settle:
                inv, deleted = invalidate(db, home.settings, {r.package: _why(home, r) for r in held})
                report.invalidated += inv
                report.deleted_jobs += deleted
            crashpoints.reach("cleanup-settled")
            hidden = store.hide(r.package for r in held)
            report.removed += [r for r in held if r.package in hidden]
            doomed = list(hidden.values())
        if defer:
            report.doomed += doomed  # the caller deletes them (reap); a pass removes what it leaves
        else:
            reap(doomed)
    return report


def _why(home: Home, r: Removal) -> str:
    return {EXPIRED: "its storage period ended", OVER_LIMIT: "the cache size limit",
            INIT: "rdsft -init", DELETE_JOB: "a DELETE job"}.get(r.reason, r.reason) + \
        f" removed package {r.package} from the package storehouse of {home.host}"


def invalidate(db: sqlite3.Connection, settings: Settings, gone: dict[str, str],
               only: set[tuple[int, str]] | None = None) -> tuple[int, int]:
    """Settle the jobs of packages that left (package -> why); returns (invalidated, deleted).

    - A job not ended here (WAIT, INSTALLING) becomes invalid: its result is
      ERROR with the reason, sent upward like any result.
    - A job handed to a lower system becomes INVALID and stays until the
      lower system's result comes back: the lower system hears of it at its
      next check-in and, if it had not fetched the package yet, ends the job
      in ERROR itself (if it had, it installs and reports as usual).
    - IDCommandDeleteTiming RESOURCE_DELETE deletes the invalid jobs at once,
      and with CommandDeletewithResource YES the ended (DONE) jobs of the
      package too; MANUAL keeps them all, the invalid ones as INVALID, for
      rdsgroupid -d.
    """
    auto = settings.id_command_delete_timing == "RESOURCE_DELETE"
    with_done = auto and settings.command_delete_with_resource
    invalid = deleted = 0
    finished = now_text()
    with Transaction(db):
        for key, type_, st, package in jobs.of_packages(db, gone):
            if type_ == jobs.DELETE or (only is not None and key not in only):
                continue
            if st in (jobs.WAIT, jobs.INSTALLING):
                # about a host below, a relay may say only EXEC-ERROR (rds.trust): it signs what it reports
                status = codes.ERROR if key[1] == settings.host_name else codes.EXEC_ERROR
                results.keep(db, Result(*key, status, gone[package] + "; the job is invalid", finished))
                invalid += 1
                if auto:
                    deleted += jobs.drop(db, key)
                else:
                    jobs.invalidate(db, key)
            elif st == jobs.HANDED:
                jobs.invalidate(db, key)
                invalid += 1
            elif st == jobs.DONE and with_done:
                deleted += jobs.drop(db, key)
    return invalid, deleted


def partial_downloads(home: Home, db: sqlite3.Connection, store: Storehouse) -> int:
    """Remove the partial downloads that no one will resume; returns how many went.

    Those are the empty ones (a pass killed before the first byte came), and
    those of packages that no job here needs any more.  One that a process
    is downloading right now is left: it holds the package's fetch lock.
    """
    fsutil.remove_strays(store.partial)  # what a killed rdsstage -i left
    needed = jobs.pending_packages(db)
    n = 0
    for path, pid, size in store.partials():
        if pid is None or (size and str(pid) in needed):
            continue
        try:
            with store.fetch_lock(pid, timeout=0), contextlib.suppress(FileNotFoundError):
                if path.stat().st_size == size:  # not grown since: no one appends to it
                    path.unlink()
                    n += 1
        except LockTimeout:
            continue  # being downloaded: its process resumes or removes it
    return n


def upper_invalidated(db: sqlite3.Connection, store: Storehouse, keys: Iterable[tuple[int, str]], upper: str,
                      settings: Settings) -> int:
    """The upper system lost the package of jobs it handed here: end those that cannot run."""
    gone: dict[str, str] = {}
    wanted = set(keys)
    for job in jobs.in_state(db, jobs.WAIT):
        if (job.job_no, job.dest) in wanted and not store.has(job.package):
            gone[str(job.package)] = (f"package {job.package} was removed from the package storehouse of "
                                      f"{upper} before it was fetched")
    if not gone:
        return 0
    return invalidate(db, settings, gone, only=wanted)[0]


def remove_all(home: Home, db: sqlite3.Connection, reason: str = INIT, wait: float = 0.0) -> Report:
    """``rdsft -init``: every package leaves, with its jobs settled; partial downloads go too."""
    store = Storehouse.of(home)
    entries = store.scan()
    report = Report(packages=len(entries), use_before=sum(e.size for e in entries))
    remove(home, db, store, [(e, reason) for e in sorted(entries, key=lambda e: e.id)], wait=wait, report=report)
    store.clear_partial()
    store.forget_damage()  # a good copy may be fetched or staged again, whatever happened to the old one
    report.use_after = report.use_before - sum(r.size for r in report.removed)
    return report


def remove_one(home: Home, db: sqlite3.Connection, pid: PackageId, reason: str, wait: float = 0.0) -> Report:
    """Remove one package (a DELETE job), its jobs settled; an absent package removes nothing."""
    store = Storehouse.of(home)
    report = Report()
    entry = next((e for e in store.scan() if e.id == str(pid)), None)
    if entry is not None:
        report.packages = 1
        remove(home, db, store, [(entry, reason)], wait=wait, report=report)
    return report


# -- the first start after boot ----------------------------------------------

def boot_id() -> str:
    try:
        return BOOT_ID.read_text().strip()
    except OSError:
        return ""


def first_start_after_boot(home: Home) -> bool:
    """True once per boot: ``run/boot_id`` remembers the boot this home last started in."""
    current = boot_id()
    mark = home.run / "boot_id"
    try:
        if mark.read_text().strip() == current:
            return False
    except FileNotFoundError:
        pass
    return bool(current)


def retention_after_boot(home: Home) -> Report | None:
    """At the first start after boot, delete expired packages (JP1: when the power is first turned on)."""
    if home.settings.is_managing_server or not first_start_after_boot(home):
        return None
    report = clean(home, size=False)
    fsutil.atomic_write(home.run / "boot_id", (boot_id() + "\n").encode())  # after: a crash runs it again
    return report


def delete_job(home: Home, db: sqlite3.Connection, job: jobs.Job) -> Result:
    """Run a DELETE job for this host: the package leaves this storehouse; COMPLETE either way."""
    report = remove_one(home, db, job.package, DELETE_JOB, wait=lock_timeout())
    if report.busy:
        return Result(job.job_no, job.dest, codes.ERROR,
                      f"package {job.package} is being read by a lower system; not deleted", now_text())
    if not report.removed:
        return Result(job.job_no, job.dest, codes.COMPLETE,
                      f"package {job.package} was not in the package storehouse of {home.host}", now_text())
    return Result(job.job_no, job.dest, codes.COMPLETE,
                  f"deleted package {job.package} from the package storehouse of {home.host}; "
                  f"{report.invalidated} job(s) invalidated", now_text())


def between_passes(home: Home) -> Report:
    """rdsma's cleanup every CacheCleanupInterval: ``clean`` under the pass lock."""
    with home.lock(PASS_LOCK):
        return clean(home)
