"""The home's log, ``log/rds.log``: one line per thing a command did."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from rds.home import Home


def logger(home: Home) -> logging.Logger:
    name = f"rds.{home.path}"
    log = logging.getLogger(name)
    if not log.handlers:
        handler = logging.FileHandler(home.log_dir / "rds.log", encoding="utf-8")
        prog = Path(sys.argv[0]).name or "rds"
        handler.setFormatter(logging.Formatter(f"%(asctime)s {prog}[{os.getpid()}] %(levelname)s %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False
    return log
