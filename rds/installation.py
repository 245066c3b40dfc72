"""What identifies the installed rds: a resident process compares it with what it started on, so that an
upgrade reaches it (rds.resident retires, rds.daemon starts its loop again).  Only the standard library:
the thin forced commands (rds.forced) compute it too, and must start fast."""

from __future__ import annotations

import os


def identity() -> bytes:
    """rds's version and what identifies the installed code: how many ``.py`` files the package has, their
    total size and the sum of their modification times (ns).  Any file patched, replaced, added or removed
    changes it; it costs a directory read and a stat per file."""
    from rds import __version__

    n = size = mtime = 0
    dirs = [os.path.dirname(os.path.abspath(__file__))]
    while dirs:
        with os.scandir(dirs.pop()) as entries:
            for e in entries:
                if e.name.endswith(".py"):
                    st = e.stat()
                    n, size, mtime = n + 1, size + st.st_size, mtime + st.st_mtime_ns
                elif e.name != "__pycache__" and e.is_dir():
                    dirs.append(e.path)
    return f"{__version__}+{n}.{size}.{mtime}".encode()
