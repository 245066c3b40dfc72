"""Counting jobs from outside rds, for the fault runners and bench/faults.

Two records that rds does not keep and cannot rewrite:

- installs: every test package's install script appends a line to a file of
  its own (``installs`` beside its install directory), once per run;
- outcomes: ``watch`` gives the managing server's state database a table and
  two triggers of the benchmark's own, so that SQLite itself appends a row
  each time the managing server takes an outcome (COMPLETE or ERROR) for a
  job and destination, a first one or a changed one; ``outcomes`` reads it
  with sqlite3, not through rds.

A job is done exactly once when it was installed once and its outcome was
taken once, and that outcome is COMPLETE.  ``DEFINITION`` says so under the
table of bench/faults.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections import defaultdict
from pathlib import Path

import chunkfiles
from testkit import sha256_of as sha256_of  # the runners and bench/faults hash through audit

DEFINITION = (
    "jobs: the jobs created at the managing server that the row meant to install.  A job is lost when its\n"
    "install script's own append-only record shows no run, or the managing server's database (a table that\n"
    "SQLite triggers fill with every outcome taken, read with sqlite3) shows no outcome; doubled when either\n"
    "shows more than one (a job can be both).  Neither count comes from rds.  A row is FAILED when a job is\n"
    "lost or doubled, when another promise broke (listed below the table), when its runner crashed\n"
    "(CRASHED: its counts are not known), or when it counted no job (NO JOBS: it proves nothing).")

OUTCOMES = ("COMPLETE", "ERROR")
WATCH = f"""
CREATE TABLE IF NOT EXISTS audit_outcomes (job_no INTEGER NOT NULL, dest TEXT NOT NULL, status TEXT NOT NULL);
CREATE TRIGGER IF NOT EXISTS audit_outcome_new AFTER INSERT ON results WHEN NEW.status IN {OUTCOMES}
BEGIN INSERT INTO audit_outcomes VALUES (NEW.job_no, NEW.dest, NEW.status); END;
CREATE TRIGGER IF NOT EXISTS audit_outcome_set AFTER UPDATE OF status ON results WHEN NEW.status IN {OUTCOMES}
BEGIN INSERT INTO audit_outcomes VALUES (NEW.job_no, NEW.dest, NEW.status); END;
"""


def watch(home: Path) -> None:
    """Make the managing server's database at ``home`` record every outcome it takes (its schema is
    laid out first, by rds, if the home is new)."""
    from rds import database
    from rds.home import Home

    database.connect(Home.open(home).db_path).close()
    db = sqlite3.connect(home / "GROUP" / "rds.db", timeout=60)
    try:
        db.executescript(WATCH)
    finally:
        db.close()


def outcomes(home: Path) -> dict[tuple[int, str], list[str]]:
    """(job, destination) -> every outcome the managing server at ``home`` took, in order."""
    db = sqlite3.connect(f"file:{home / 'GROUP' / 'rds.db'}?mode=ro", uri=True, timeout=60)
    try:
        rows = db.execute("SELECT job_no, dest, status FROM audit_outcomes ORDER BY rowid").fetchall()
    finally:
        db.close()
    out: dict[tuple[int, str], list[str]] = defaultdict(list)
    for job, dest, status in rows:
        out[(job, dest)].append(status)
    return out


def archive_sha256(package: Path) -> str:
    """hashlib over a stored package's archive: its payload.tgz, or its chunk files (in the storehouse's
    .chunks/) back to back in its manifest's order; FileNotFoundError when any is missing."""
    if (package / "payload.tgz").exists():
        return sha256_of(package / "payload.tgz")
    h = hashlib.sha256()
    listed = json.loads((package / "manifest.json").read_text()).get("chunks") or []
    held = chunkfiles.stored(package.parent / ".chunks", [c[0] for c in listed])
    for name, *_ in listed:
        if name not in held:
            raise FileNotFoundError(f"chunk {name} of {package.name} is not held")
        h.update(held[name])
    return h.hexdigest()


def judge(key: tuple[int, str], installed: int, taken: list[str]) -> tuple[bool, bool, str]:
    """(lost, doubled, what went wrong) for one job that was meant to install."""
    lost, doubled = installed == 0 or not taken, installed > 1 or len(taken) > 1
    what = ""
    if lost or doubled:
        what = f"job {key[0]} for {key[1]}: installed {installed}x, outcome taken {len(taken)}x {taken}"
    elif taken != ["COMPLETE"]:
        what = f"job {key[0]} for {key[1]}: installed once, but the managing server took {taken[0]}"
    return lost, doubled, what
