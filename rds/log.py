"""The home's log, ``log/rds.log``: one line per thing a command did."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from rds import text
from rds.home import Home


class Shown(logging.Formatter):
    """One line a message, with what other systems said in it escaped (rds.text): ``tail -f`` stays safe."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        record.message = text.shown(record.message)
        return super().formatMessage(record)


def logger(home: Home) -> logging.Logger:
    name = f"rds.{home.path}"
    log = logging.getLogger(name)
    if not log.handlers:
        handler = logging.FileHandler(home.log_dir / "rds.log", encoding="utf-8")
        prog = Path(sys.argv[0]).name or "rds"
        handler.setFormatter(Shown(f"%(asctime)s {prog}[{os.getpid()}] %(levelname)s %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False
    return log
