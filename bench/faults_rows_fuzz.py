#!/usr/bin/env python3
"""Rows of bench/faults for issue 7's points 5 and 6: hostile input and concurrency.

Each function returns one row ``(fault, trials, survived, lost, doubled)``:

- ``hammer_row``: rdsma, rdsft -a, rdsclr, rdsgroupid -d and rdsdlv on one home for 60 s while
  dcmjexe keeps creating jobs (tests/faults/hammer.py).  Trials are the jobs created; survived,
  those that ended exactly once with every check passing (installed once, or never installed and
  ERROR as invalid because rdsclr evicted their package: the cache holds two of three packages);
  lost, never installed nor invalidated; doubled, installed more than once.  A problem that is
  not about one job (a deadlock, a traceback, a corrupt database) counts every job as not survived.
- ``broken_homes_row``: the real commands on homes with random damage
  (tests/faults/test_fuzz_process.py).  Trials are the damaged homes; survived, those where every
  command exited with a documented code, one line on stderr and nothing written outside the homes;
  lost, the others (a failure that was not clean); doubled does not apply and is 0.

``RUNNERS`` offers both as runners of tests/faults/runners.py (``run(work, trials, seed) -> Row``, with
every problem in ``Row.failed``), so that bench/faults takes them with
``RUNNERS = runners.RUNNERS + faults_rows_fuzz.RUNNERS`` (bench/ on sys.path).

Run alone it prints both rows:  .venv/bin/python bench/faults_rows_fuzz.py [--seconds S] [--homes N]
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

Row = tuple[str, int, int, int, int]


def hammer_row(seconds: float = 60.0, seed: int = 0, problems: list[str] | None = None) -> Row:
    """The hammer's row; what went wrong is appended to ``problems`` (else printed on stderr)."""
    from faults.hammer import hammer

    with tempfile.TemporaryDirectory() as tmp:
        outcome = hammer(Path(tmp) / "hammer", seconds, seed)
        found = outcome.problems()
        per_job = {p for p in found if p.startswith("job ")}
        lost, doubled = len(outcome.lost), len(outcome.doubled)
        if found and len(per_job) < len(found):  # a problem of the whole home spoils every job
            survived = 0
        else:
            survived = len(outcome.created) - len({int(p.split()[1]) for p in per_job})
        report(found, problems, "hammer")
    return (f"concurrency: 5 commands on one home, {seconds:g}s", len(outcome.created), survived, lost, doubled)


def report(found: list[str], problems: list[str] | None, what: str) -> None:
    if problems is not None:
        problems += found
    else:
        for p in found[:20]:
            print(f"{what}: {p}", file=sys.stderr)


def broken_homes_row(homes: int = 30, seed: int = 0, problems: list[str] | None = None) -> Row:
    """The broken homes' row; what went wrong is appended to ``problems`` (else printed on stderr)."""
    from faults import test_fuzz_process as fuzz
    from faults.hostile import clean_stderr, documented_codes, snapshot

    rng = random.Random(seed)
    survived = 0
    found: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        pristine = fuzz.build_pristine(Path(tmp) / "pristine")
        for n in range(homes):
            root = Path(tmp) / f"broken{n}"
            fuzz.copy_tree(pristine, root)
            damage = [(rng.choice(["mgr", "c"]), rng.choice(fuzz.KINDS),
                       rng.choice(["", "{}", "x" * 70, "\x00", "[" * 3000, '{"job": 1}', 5]), rng.randrange(2**32))
                      for _ in range(rng.choice([1, 2]))]
            for host, kind, value, s in damage:
                fuzz.corrupt(root / host, kind, value, s)
            outside = snapshot(root, skip=(root / "mgr", root / "c"))
            clean = True
            for host, *args in (("c", "rdsft", "-a"), ("c", "rdsgroupid", "--json"), ("mgr", "dcmstat", "--json")):
                proc = fuzz.run(root / host, *args)
                try:
                    assert proc.returncode in documented_codes(args[0])
                    clean_stderr(proc.stderr)
                except AssertionError:
                    clean = False
                    found.append(f"{damage}: {' '.join(args)} exit {proc.returncode}: {proc.stderr.strip()[-300:]}")
            if snapshot(root, skip=(root / "mgr", root / "c")) != outside:
                clean = False
                found.append(f"{damage}: something was written outside the homes")
            survived += clean
            shutil.rmtree(root)
    report(found, problems, "broken homes")
    return ("hostile input: randomly broken homes", homes, survived, homes - survived, 0)


def _runner(row: Callable[..., Row]) -> Callable[[Path, int, int], Any]:
    def run(work: Path, trials: int, seed: int) -> Any:
        from faults.runners import Row as RunnerRow

        problems: list[str] = []
        fault, n, survived, lost, doubled = row(trials, seed, problems)
        return RunnerRow(fault, n, survived, lost, doubled, failed=problems)

    return run


# (name, runner, full count): the hammer's count is its seconds, the broken homes' the homes
RUNNERS = [("hammer", _runner(hammer_row), 60), ("broken-homes", _runner(broken_homes_row), 30)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="how long the hammer runs (default 60)")
    parser.add_argument("--homes", type=int, default=30, help="how many broken homes (default 30)")
    a = parser.parse_args()
    from tabulate import tabulate

    rows = [broken_homes_row(a.homes), hammer_row(a.seconds)]
    print(tabulate(rows, headers=["fault", "trials", "survived", "lost", "doubled"], tablefmt="plain"))


if __name__ == "__main__":
    main()
