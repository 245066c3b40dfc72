"""Installing a package on this host: extract it, then run its script.

The archive is checked whole before anything is written (absolute paths,
``..``, links pointing out and device files are refused), then extracted with
a filter stricter than tarfile's ``data`` (rds.archive).  Extraction can be
repeated safely.

The script runs under a small ``sh`` wrapper that holds a lock on
``work/<job>.lock`` for its whole life and writes the script's exit status to
``work/<job>.status``.  The lock is taken before the wrapper is started and
passed to it, so if ``rdsft`` is killed, the next run waits for a wrapper that
still runs and takes its status instead of running the script a second time.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from rds import archive, codes, crashpoints
from rds.clock import now_text
from rds.errors import IntegrityError, RdsError
from rds.home import Home
from rds.jobs import Job
from rds.packages import Manifest
from rds.results import Result
from rds.storehouse import Storehouse


def target_dir(home: Home, manifest: Manifest) -> Path:
    return home.settings.install_root / manifest.install_dir.lstrip("/")


def _paths(home: Home, job: Job) -> tuple[Path, Path, Path, Path]:
    stem = f"{job.job_no}.{job.dest}"
    return (home.work / f"{stem}.lock", home.work / f"{stem}.status", home.work / f"{stem}.sh",
            home.install_logs / f"{stem}.log")


# Holds the inherited lock while the script runs (the script itself does not
# inherit it), then records the exit status durably.
WRAPPER = """
import os, subprocess, sys
dest, status, log, *argv = sys.argv[1:]
with open(log, "ab") as out:
    try:
        rc = subprocess.call(argv, cwd=dest, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    except OSError as e:
        out.write(f"cannot run the script: {e}\\n".encode())
        rc = 126
with open(status + ".tmp", "w") as f:
    f.write(str(rc))
    f.flush()
    os.fsync(f.fileno())
os.replace(status + ".tmp", status)
"""


def run_script(home: Home, job: Job, manifest: Manifest, dest: Path) -> int | None:
    """Run the package's script in ``dest``; returns its exit status."""
    lock_path, status_path, script_path, log_path = _paths(home, job)
    script = manifest.script or ""
    script_path.write_text(script)
    script_path.chmod(0o700)
    argv = [str(script_path)] if script.startswith("#!") else ["/bin/sh", str(script_path)]
    with contextlib.suppress(FileNotFoundError):
        status_path.unlink()
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        env = crashpoints.child_env(RDS_PACKAGE=str(manifest.id), RDS_INSTALL_DIR=str(dest),
                   RDS_JOB=str(job.job_no), RDS_HOST=job.dest)
        with open(log_path, "ab") as log:
            log.write(f"--- {now_text()} job {job.job_no} {manifest.id} in {dest}\n".encode())
        proc = subprocess.Popen([sys.executable, "-I", "-S", "-c", WRAPPER, str(dest), str(status_path),
                                 str(log_path), *argv], pass_fds=(fd,), start_new_session=True, env=env,
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    finally:
        os.close(fd)  # the wrapper holds the lock now
    crashpoints.reach("script-started")
    proc.wait()
    return wait_status(home, job)


def wait_status(home: Home, job: Job) -> int | None:
    """Wait until no wrapper runs the job's script; its exit status, or None if it left none."""
    lock_path, status_path, _, _ = _paths(home, job)
    if not lock_path.exists():
        return None
    fd = os.open(lock_path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # released when the wrapper ends
    finally:
        os.close(fd)
    try:
        return int(status_path.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def forget(home: Home, job: Job) -> None:
    for p in _paths(home, job)[:3]:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


def last_line(log: Path) -> str:
    try:
        with open(log, "rb") as f:
            f.seek(max(0, log.stat().st_size - 4096))
            lines = [ln for ln in f.read().decode(errors="replace").splitlines() if ln.strip()]
        return lines[-1].strip()[:300] if lines and not lines[-1].startswith("--- ") else ""
    except OSError:
        return ""


def install(home: Home, store: Storehouse, job: Job, manifest: Manifest, resumed: bool,
            log: Callable[[str], None]) -> Result:
    """Install ``job``; every failure becomes an ERROR result for this job only."""
    _, _, _, log_path = _paths(home, job)
    try:
        rc = wait_status(home, job) if resumed else None
        if rc is None:
            store.touch(manifest.id)  # used: an access, for the cache's least-recently-accessed order
            store.verify(manifest)
            dest = target_dir(home, manifest)
            n = archive.extract(store.payload(manifest.id), dest)
            log(f"job {job.job_no}: extracted {n} members of {manifest.id} into {dest}")
            crashpoints.reach("extracted")
            if not manifest.script:
                return _result(job, codes.COMPLETE, f"installed in {dest}")
            rc = run_script(home, job, manifest, dest)
        if rc is None:
            return _result(job, codes.ERROR, "the install script left no exit status")
        if rc == 0:
            return _result(job, codes.COMPLETE, f"installed in {target_dir(home, manifest)}; script exited 0")
        detail = last_line(log_path)
        how = f"script killed by signal {-rc}" if rc < 0 else f"script exited {rc}"
        return _result(job, codes.ERROR, how + (f": {detail}" if detail else ""))
    except IntegrityError as e:
        store.remove(manifest.id)
        return _result(job, codes.ERROR, str(e))
    except RdsError as e:
        return _result(job, codes.ERROR, f"{manifest.id}: {e}")
    except OSError as e:
        where = f"{e.filename}: " if e.filename else ""
        return _result(job, codes.ERROR, f"{manifest.id}: {where}{_strerror(e)}")


def _strerror(e: OSError) -> str:
    return "disk full" if e.errno in (errno.ENOSPC, errno.EDQUOT) else e.strerror or str(e)


def _result(job: Job, status: str, message: str) -> Result:
    return Result(job.job_no, job.dest, status, message, now_text(time.time()))
