"""Progress of long operations on stderr, only when stderr is a terminal.

A download, packaging (``rdsft -c``) and staging (``rdsstage``) redraw one line
at most a few times a second: what, bytes so far (of how many), the rate and
the time left.  Retries say when they will try again.  When stderr is not a
terminal (cron, a pipe, a resident's log, rds-serve's channel) nothing is drawn
and nothing is said: the log has what matters.
"""

from __future__ import annotations

import contextlib
import os
import stat
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import IO, Any

REDRAW = 0.2  # seconds between two drawings


def on_terminal(stream: IO[str] | None = None) -> bool:
    stream = sys.stderr if stream is None else stream
    try:
        return stream.isatty()
    except (AttributeError, ValueError, OSError):
        return False


def size_text(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def duration_text(seconds: float) -> str:
    s = int(seconds + 0.5)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def tree_size(top: Path) -> int | None:
    """The bytes of the regular files under ``top`` (packaging's total), or None when not on a terminal."""
    if not on_terminal():
        return None  # nothing will be drawn: do not walk the tree for it
    total = 0
    for dirpath, _dirs, files in os.walk(top):
        for name in files:
            with contextlib.suppress(OSError):
                st = os.lstat(os.path.join(dirpath, name))
                if stat.S_ISREG(st.st_mode):
                    total += st.st_size
    return total


class Progress:
    """One operation's line: ``with Progress("fetching X", total) as p: p.add(n)``."""

    def __init__(self, what: str, total: int | None = None, done: int = 0, stream: IO[str] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.what = what
        self.total = total
        self.done = done
        self.start_done = done  # bytes already there (a resumed download): not part of the rate
        self.stream = sys.stderr if stream is None else stream
        self.enabled = on_terminal(self.stream)
        self.clock = clock
        self.started = clock()
        self.drawn_at = 0.0
        self.drawn = False

    def add(self, n: int) -> None:
        self.done += n
        if self.enabled and self.clock() - self.drawn_at >= REDRAW:
            self.draw()

    def line(self) -> str:
        elapsed = max(self.clock() - self.started, 1e-6)
        rate = (self.done - self.start_done) / elapsed
        parts = [f"{self.what}: {size_text(self.done)}"]
        if self.total:
            parts[0] += f" of {size_text(self.total)} ({100 * self.done // self.total}%)"
        parts.append(f"{size_text(rate)}/s")
        if self.total and rate > 0 and self.done < self.total:
            parts.append(f"{duration_text((self.total - self.done) / rate)} left")
        return "  ".join(parts)

    def draw(self) -> None:
        self.drawn_at = self.clock()
        self.drawn = True
        self.stream.write(f"\r\033[K{self.line()}")
        self.stream.flush()

    def close(self) -> None:
        """Clear the line: what follows (the command's own output) starts clean."""
        if self.enabled and self.drawn:
            self.stream.write("\r\033[K")
            self.stream.flush()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


class Writer:
    """A file to write to that counts what passes into ``progress``."""

    def __init__(self, raw: Any, progress: Progress) -> None:
        self.raw = raw
        self.progress = progress

    def write(self, data: bytes) -> int:
        n: int = self.raw.write(data)
        self.progress.add(len(data))
        return n

    def flush(self) -> None:
        self.raw.flush()


class Reader:
    """A file to read from that counts what is read into ``progress``."""

    def __init__(self, raw: Any, progress: Progress) -> None:
        self.raw = raw
        self.progress = progress

    def read(self, n: int = -1) -> bytes:
        data: bytes = self.raw.read(n)
        self.progress.add(len(data))
        return data


def retrying(message: str, delay: float, retry: int, retries: int | None,
             stream: IO[str] | None = None, now: float | None = None) -> str:
    """What retry number ``retry`` (of ``retries``; None: for ever) says: the failure, when it tries
    again; written to stderr on a terminal, returned for the log."""
    at = time.strftime("%H:%M:%S", time.localtime((time.time() if now is None else now) + delay))
    of = f" of {retries}" if retries is not None else ", for ever (RetryCount 9)"
    text = f"{message}; retry {retry}{of} in {delay:g}s, at {at}"
    stream = sys.stderr if stream is None else stream
    if on_terminal(stream):
        prog = sys.argv[0].rsplit("/", 1)[-1] or "rds"
        stream.write(f"{prog}: {text}\n")
        stream.flush()
    return text
