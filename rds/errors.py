"""One exception tree: each class is its message and its exit code.

The library only raises these; ``rds.cli.main`` turns them into one line on
stderr and the exit code.  The codes are documented in rds(7).
"""

from __future__ import annotations


class RdsError(Exception):
    """Something went wrong that is not a bug in rds."""

    exit_code = 255

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class UsageError(RdsError):
    """Bad options or arguments, or the caller may not run this command."""

    exit_code = 1


class NotPermitted(UsageError):
    """The caller may not use this home, or run this command on it (only root or the home's owner)."""


class SettingsError(RdsError):
    """RDSSETFL is malformed, or RDS_HOME does not name a usable home."""

    exit_code = 2


class InputError(RdsError):
    """Bad input: a source directory, package ID, host name or package."""

    exit_code = 3


class UnsafeArchive(InputError):
    """A package archive holds members that must not be extracted."""


class JobRecordError(InputError):
    """A job record is not valid."""


class UnableToCache(RdsError):
    """A package is needed that this host's caching policy does not let it fetch (seed 002's
    ``wordbot.unableToCacheFile``); the jobs that need it end in ERROR."""

    exit_code = 3


class JobsFailed(RdsError):
    """Some jobs ended in error; the others were done."""

    exit_code = 4


class LockTimeout(RdsError):
    """Another process holds a lock of this home for too long."""

    exit_code = 5


class IntegrityError(RdsError):
    """A package's SHA-256 does not match its manifest."""

    exit_code = 6


class AlreadyRunning(RdsError):
    """A resident process of this kind already runs for this home."""

    exit_code = 7


class NotRunning(RdsError):
    """The resident process to stop or to use does not run."""

    exit_code = 8


class ProtocolError(RdsError):
    """The other system sent something that is not a valid message."""

    exit_code = 252


class CommunicationError(RdsError):
    """The upper (or lower) system could not be reached or cut the link."""

    exit_code = 253


class Refused(CommunicationError):
    """The upper system refused the request (authority, unknown package...)."""


class SystemError_(RdsError):
    """The operating system refused: disk full, permissions, I/O."""

    exit_code = 254


def said(name: str, e: RdsError | KeyboardInterrupt | OSError | Exception) -> tuple[str, int]:
    """The one line on stderr (shown safely and cut, rds.text) and the exit code (rds(7)) for what ends
    command ``name``: an RdsError, an interrupt, the state database's error (sqlite3.Error) or the
    system's (OSError).  rds.cli.run and the forced commands' entry points (rds.forced) both say them so."""
    import errno
    import sqlite3

    from rds import text

    if isinstance(e, RdsError):
        line, code = f"{name}: {e}", e.exit_code
    elif isinstance(e, KeyboardInterrupt):
        return f"{name}: interrupted", 130
    elif isinstance(e, sqlite3.Error):
        full = getattr(e, "sqlite_errorcode", None) == 13  # SQLITE_FULL: say it as for any other file
        line, code = f"{name}: state database: {'disk full' if full else e}", SystemError_.exit_code
    else:
        filename, number = getattr(e, "filename", None), getattr(e, "errno", None)
        where = f"{filename}: " if filename else ""
        what = "disk full" if number in (errno.ENOSPC, errno.EDQUOT) else (getattr(e, "strerror", None) or str(e))
        line, code = f"{name}: {where}{what}", SystemError_.exit_code
    return text.cut(text.shown(line), text.LINE), code
