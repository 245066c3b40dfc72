"""A host's home: where it lives, its layout, its format version and locks.

::

    RDS_HOME/                 /NETMRDS for root when RDS_HOME is unset
      FORMAT                  "rds-home 1"; checked on every open
      rdsprm/                 RDSSETFL and the flag files .cltwup_off, wuphosts, .cltstsud;
                              host_key, this host's Ed25519 key (0600, rds.identity), and
                              host_key.pub
      RDS/                    temporary package storehouse (on the managing server: the
        C.CAB.PKG.VER.GEN/    registered packages), one directory a package:
          payload.tgz           the archive of an old-format package, written and flushed first
                                (a chunked package has none: its chunks are in .chunks/)
          manifest.json         size, SHA-256, install directory...; written last (its mtime:
                                when the package was stored)
          .accessed             empty; its mtime is the last access (stored, installed, served)
          .verified             the payload as last checked against the manifest
        .chunks/XX/SHA256     the chunks of chunked packages, each once, a gzip member (rds.chunks)
        .partial/             downloads in progress, resumed from their size; *.chunks: the chunks
                              a download or a packing in progress uses; *.claim: the chunks a
                              download is bringing now (flock held), which others wait for
        .checksums/           the upper system's manifests and when they were asked (rds.storehouse)
        .damaged/             why a copy found damaged was removed, until a good one comes (rds.cache)
      GROUP/rds.db            temporary job storehouse, results, routes (SQLite)
      GROUP/delivery.db       distribution situation file (rds.delivery), unless OutPutFileOfDeliveryStatus
      log/rds.log             what the commands did
      log/install/            the output of each install script
      run/                    locks (*.lock, with *.owner saying who holds them), pid files,
                              boot_id (the boot this home last started in: retention once a boot)
      work/                   install scripts and their exit-status files

The directories are made owner-only (0700): nothing but the home's owner
needs them, and a directory another user can write lets that user plant a
link where rds writes (an install script, as root).  Like sshd's StrictModes,
``check_private`` refuses a home, its directories, RDSSETFL and the state
database (and transport.connection the identity and known_hosts files) when
another user owns or can write them, with one line naming the file and the
mode to set.  Every command sets its own umask (022, rds.cli.run): what it
makes is never writable by others, whatever umask it was started with.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from rds import fsutil, identity
from rds.errors import LockTimeout, NotPermitted, SettingsError
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


def check_private(path: Path, what: str, missing_ok: bool = False, secret: bool = False) -> None:
    """Refuse ``path`` if a user other than its owner (this user or root) can write it, as sshd's StrictModes;
    a ``secret`` (a private key) also if another can read it, as ssh does."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if missing_ok:
            return
        raise
    if st.st_uid not in (os.geteuid(), 0):
        raise SettingsError(f"{path}: {what} belongs to uid {st.st_uid}, neither this user ({os.geteuid()}) "
                            f"nor root; refused (chown it)")
    mode = stat.S_IMODE(st.st_mode)
    mask = 0o077 if secret else 0o022
    if mode & mask:
        how = "readable or writable" if secret else "writable"
        raise SettingsError(f"{path}: {what} is {how} by others (mode {mode:04o}); refused: set mode "
                            f"{mode & ~mask:04o} (chmod {'go-rwx' if secret else 'go-w'} {path})")


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
    def open(cls, path: Path | None = None, create: bool = True) -> Home:
        """Open (and on first use, lay out) the home at ``path`` or the default one; without ``create``,
        a home directory that is not there is an error, never made (another system's home, which may
        have been moved away just now)."""
        home = cls(path if path is not None else default_home())
        try:
            home._layout(create)
        except FileNotFoundError:
            raise SettingsError(f"{home.path}: no rds home here") from None
        return home

    def _layout(self, create: bool) -> None:
        fmt = self.path / "FORMAT"
        try:
            if fmt.exists():
                found = fmt.read_text().strip()
                if found != FORMAT:
                    raise SettingsError(f"{fmt}: this home has format {found!r}; this rds reads {FORMAT!r}")
            if create:
                self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
            check_private(self.path, "the home")
            for d in (self.prm, self.packages, self.partial, self.group, self.log_dir, self.install_logs, self.run,
                      self.work):
                d.mkdir(mode=0o700, exist_ok=True)
                check_private(d, "a directory of the home")
            if not fmt.exists():
                fsutil.atomic_write(fmt, (FORMAT + "\n").encode())
            check_private(self.prm / "RDSSETFL", "the settings file", missing_ok=True)
            check_private(self.db_path, "the state database", missing_ok=True)
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
            _note(owner, json.dumps(info).encode())
            yield
        finally:
            lock.release()


def _note(owner: Path, data: bytes) -> None:
    """Say who holds a lock: replaced at once, whole, but not flushed to disk (after a crash no one
    holds the lock, and the note only names a holder): no fsync for every pass and every lock."""
    tmp = owner.with_name(f"{fsutil.tmp_prefix()}{owner.name}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, owner)


def describe_owner(owner: Path) -> str:
    try:
        info = json.loads(owner.read_text())
        return f"pid {info['pid']} ({info['command']}, since {info['since']})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


def open_home() -> Home:
    """The home a command works on: RDS_HOME, else /NETMRDS for root, else the user's own.

    It must be one already (``rdsprm/RDSSETFL``: nothing else turns a directory into a home), the
    caller must be allowed to use it, and its settings are read and checked here, for every command.
    """
    env = os.environ.get("RDS_HOME")
    if env is not None and not env.strip():
        raise SettingsError("RDS_HOME is set but empty: set it to a home (RDS_HOME=/srv/rds/relay1), or unset "
                            "it for the default home (/NETMRDS for root)")
    try:
        path = default_home()
    except PermissionError as e:  # RDS_HOME lies beyond a directory this user may not enter
        raise NotPermitted(not_permitted(Path(e.filename or env or "RDS_HOME"))) from None
    check_may_use(path)
    settings_file = path / "rdsprm" / "RDSSETFL"
    if not settings_file.is_file():
        raise SettingsError(f"{path}: not an rds home (no rdsprm/RDSSETFL); make one with: mkdir -p {path}/rdsprm "
                            f"&& touch {settings_file} (a managing server; see rdssetfl(5) and RDSSETFL.sample)")
    home = Home.open(path)
    home.settings  # noqa: B018 - every command reads and checks RDSSETFL, whatever it goes on to do
    return home


def check_may_use(path: Path) -> None:
    """Root may use any home; another user one they own or may write (the one error for all others)."""
    if os.geteuid() == 0:
        return
    try:
        st = path.stat()
    except FileNotFoundError:
        return  # said next: not a home
    except PermissionError:
        raise NotPermitted(not_permitted(path)) from None
    if st.st_uid == os.geteuid():
        return
    if not os.access(path, os.R_OK | os.W_OK | os.X_OK):  # an owner-only home (rds.home): nothing inside to see
        raise NotPermitted(not_permitted(path))
    parts = [path, *(p for p in (path / "rdsprm", path / "GROUP", path / "log", path / "run") if p.exists())]
    if not all(os.access(p, os.R_OK | os.W_OK | os.X_OK) for p in parts):
        raise NotPermitted(not_permitted(path))


def not_permitted(path: Path) -> str:
    """The one error for a user who may not use a home or run a command on it (exit 1)."""
    return f"{path}: permission denied: only root or the owner of this home may use it"
