"""A host's home: where it lives, its layout, its format version and locks.

::

    RDS_HOME/                 /NETMRDS for root when RDS_HOME is unset
      FORMAT                  "rds-home 1"; checked on every open
      rdsprm/                 RDSSETFL and the flag files .cltwup_off, wuphosts, .cltstsud;
                              host_key, this host's Ed25519 key (0600, rds.identity), and
                              host_key.pub
      RDS/                    temporary package storehouse (on the managing server: the
        C.CAB.PKG.VER.GEN/    registered packages), one directory a package:
          payload.tgz           the archive, written and flushed first
          manifest.json         size, SHA-256, install directory...; written last (its mtime:
                                when the package was stored)
          .accessed             empty; its mtime is the last access (stored, installed, served)
          .verified             the payload as last checked against the manifest
        .partial/             downloads in progress, resumed from their size
        .checksums/           the upper system's manifests and when they were asked (rds.storehouse)
        .damaged/             why a copy found damaged was removed, until a good one comes (rds.cache)
      GROUP/rds.db            temporary job storehouse, results, routes (SQLite)
      GROUP/delivery.db       distribution situation file (rds.delivery), unless OutPutFileOfDeliveryStatus
      log/rds.log             what the commands did
      log/install/            the output of each install script
      run/                    locks (*.lock, with *.owner saying who holds them), pid files,
                              boot_id (the boot this home last started in: retention once a boot)
      work/                   exit-status files of install scripts
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from rds import fsutil, identity
from rds.errors import LockTimeout, SettingsError
from rds.settings import Settings, load_settings

FORMAT = "rds-home 1"
ROOT_HOME = Path("/NETMRDS")
DEFAULT_LOCK_TIMEOUT = 60.0
# The pass lock: held by a pass (rdsft -a, rdsma) and by whatever removes packages under it
# (rdsclr, rdsft -init, rdsma's cleanup).  Its file, run/rdsft.lock, keeps the name of the
# command administrators know, so that a lock timeout names something they recognise.
PASS_LOCK = "rdsft"


def default_home() -> Path:
    env = os.environ.get("RDS_HOME")
    if env:
        path = Path(env)
        if not path.is_dir():
            raise SettingsError(f"RDS_HOME={env}: no such directory (create it, or unset RDS_HOME)")
        return path.resolve()
    if os.geteuid() == 0:
        return ROOT_HOME
    import platformdirs

    return Path(platformdirs.user_data_dir("rds"))


def lock_timeout() -> float:
    try:
        return float(os.environ.get("RDS_LOCK_TIMEOUT", DEFAULT_LOCK_TIMEOUT))
    except ValueError:
        raise SettingsError(f"RDS_LOCK_TIMEOUT={os.environ['RDS_LOCK_TIMEOUT']!r}: not a number of seconds") from None


class Home:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.prm = path / "rdsprm"
        self.packages = path / "RDS"
        self.partial = self.packages / ".partial"
        self.group = path / "GROUP"
        self.db_path = self.group / "rds.db"
        self.log_dir = path / "log"
        self.install_logs = self.log_dir / "install"
        self.run = path / "run"
        self.work = path / "work"
        self._settings: Settings | None = None
        self._identity: identity.Identity | None = None

    @classmethod
    def open(cls, path: Path | None = None) -> Home:
        """Open (and on first use, lay out) the home at ``path`` or the default one."""
        home = cls(path if path is not None else default_home())
        home._layout()
        return home

    def _layout(self) -> None:
        fmt = self.path / "FORMAT"
        try:
            if fmt.exists():
                found = fmt.read_text().strip()
                if found != FORMAT:
                    raise SettingsError(f"{fmt}: this home has format {found!r}; this rds reads {FORMAT!r}")
            for d in (self.prm, self.packages, self.partial, self.group, self.install_logs, self.run, self.work):
                d.mkdir(parents=True, exist_ok=True)
            if not fmt.exists():
                fsutil.atomic_write(fmt, (FORMAT + "\n").encode())
        except PermissionError as e:
            raise SettingsError(f"{self.path}: cannot use this home: {e.strerror}") from None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = load_settings(self.path)
        return self._settings

    @property
    def identity(self) -> identity.Identity:
        """This host's key (rds.identity), made on first use."""
        if self._identity is None:
            self._identity = identity.load(self.prm)
        return self._identity

    @property
    def host(self) -> str:
        return self.settings.host_name

    @contextlib.contextmanager
    def lock(self, name: str, timeout: float | None = None) -> Iterator[None]:
        """Hold the named lock of this home; a timeout says who holds it."""
        wait = lock_timeout() if timeout is None else timeout
        path = self.run / f"{name}.lock"
        owner = self.run / f"{name}.owner"
        import filelock  # here: it costs 30 ms to import, and rds-serve and rds-wake start for every request

        lock = filelock.FileLock(str(path))
        try:
            lock.acquire(timeout=wait)
        except filelock.Timeout:
            raise LockTimeout(f"{path}: {describe_owner(owner)} holds it; gave up after {wait:g}s") from None
        try:
            info = {"pid": os.getpid(), "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])[:200],
                    "since": time.strftime("%Y-%m-%d %H:%M:%S")}
            fsutil.atomic_write(owner, json.dumps(info).encode())
            yield
        finally:
            lock.release()


def describe_owner(owner: Path) -> str:
    try:
        info = json.loads(owner.read_text())
        return f"pid {info['pid']} ({info['command']}, since {info['since']})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"
