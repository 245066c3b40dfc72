"""Installing a package on this host: extract it, then run its script.

The archive is checked whole before anything is written (absolute paths,
``..``, links leading out once the whole archive is in place, device files
and archives that expand past their manifest's unpacked size are refused),
then extracted into a fresh directory that is moved into place only when
complete, with a filter stricter than tarfile's ``data`` (rds.archive).
Extraction can be repeated safely; a refused or failed one leaves the
previous install as it was.

The script runs under a small ``sh`` wrapper that holds a lock on
``work/<job>.lock`` for its whole life and writes the script's exit status to
``work/<job>.status``.  The lock is taken before the wrapper is started and
passed to it, so if ``rdsft`` is killed, the next run waits for a wrapper that
still runs and takes its status instead of running the script a second time.

The script is written in ``work/`` (owner-only, rds.home) as a new file,
never through a link, and runs with a fixed environment (``script_env``:
PATH, HOME, LANG=C, LC_ALL=C, SHELL and the RDS_* variables that describe the
job; nothing of the caller's, so nothing an SSH client sent), umask 022,
standard input from /dev/null, in the install directory.
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
with os.fdopen(os.open(log, os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW), "ab") as out:
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


# The environment of an install script: fixed, whatever the caller's (rds-wake's carried the
# attacker's SSH_ORIGINAL_COMMAND and the SSH client's LC_* variables); rdsft(1) lists it.
SCRIPT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
SCRIPT_UMASK = 0o022


def script_env(home: Home, job: Job, manifest: Manifest, dest: Path) -> dict[str, str]:
    """The whole environment an install script gets."""
    import pwd

    try:
        user_home = pwd.getpwuid(os.geteuid()).pw_dir
    except KeyError:
        user_home = "/"
    return {"PATH": SCRIPT_PATH, "HOME": user_home, "LANG": "C", "LC_ALL": "C", "SHELL": "/bin/sh",
            "RDS_PACKAGE": str(manifest.id), "RDS_INSTALL_DIR": str(dest), "RDS_JOB": str(job.job_no),
            "RDS_HOST": job.dest, "RDS_HOME": str(home.path)}


def _write_script(path: Path, script: str) -> None:
    """Write the script where only the home's owner can write (work/, checked by rds.home), as a new
    file: whatever was at its name (a planted link) is removed first, and no link is followed."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o700)
    with os.fdopen(fd, "w") as f:
        f.write(script)


def run_script(home: Home, job: Job, manifest: Manifest, dest: Path) -> int | None:
    """Run the package's script in ``dest`` with a fixed environment (``script_env``); returns its exit status."""
    lock_path, status_path, script_path, log_path = _paths(home, job)
    script = manifest.script or ""
    _write_script(script_path, script)
    argv = [str(script_path)] if script.startswith("#!") else ["/bin/sh", str(script_path)]
    with contextlib.suppress(FileNotFoundError):
        status_path.unlink()
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        log_fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        with os.fdopen(log_fd, "ab") as log:
            log.write(f"--- {now_text()} job {job.job_no} {manifest.id} in {dest}\n".encode())
        proc = subprocess.Popen([sys.executable, "-I", "-S", "-c", WRAPPER, str(dest), str(status_path),
                                 str(log_path), *argv], pass_fds=(fd,), start_new_session=True,
                                env=script_env(home, job, manifest, dest), cwd=dest, umask=SCRIPT_UMASK,
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
            n = archive.extract(store.source(manifest), dest, manifest.unpacked)  # a chunked one checked whole as read
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
        store.chunks.purge(manifest.chunks)  # the chunks that are not what their names say, if it is chunked
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
