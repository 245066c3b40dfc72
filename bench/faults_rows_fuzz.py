#!/usr/bin/env python3
"""Rows of bench/faults for issue 7's points 5 and 6: concurrency and hostile input.

Each function returns one ``Row`` of tests/faults/runners.py, its jobs counted as in every other row
(tests/faults/audit.py: the install script's own record and the managing server's database, both
read outside rds):

- ``hammer_row``: rdsma, rdsft -a, rdsclr, rdsgroupid -d and rdsdlv on one home for 60 s while
  dcmjexe keeps creating jobs and rdsft -c new versions (tests/faults/hammer.py).  Trials are the
  seconds; jobs, those dcmjexe created: each must be installed once and taken as COMPLETE once (no
  eviction is legitimate there: a job ended as invalid is lost).  A problem that is not about one job
  (a deadlock, a traceback, a corrupt database) is a failure of the row.
- ``broken_homes_row``: the real commands on homes with random damage
  (tests/faults/test_fuzz_process.py).  Trials are the damaged homes.  Each home holds one job for c;
  it is one of the row's jobs when ``rdsft -a`` on c said it worked (exit 0) and the damage left it a
  job the managing server hands out and did not end it in ERROR there: then it must be installed once
  and taken as COMPLETE once.
  Every command must exit with a documented code and one line on stderr, and write nothing outside
  the homes; what does not is a failure of the row.

``RUNNERS`` offers both as runners of tests/faults/runners.py (``run(work, trials, seed) -> Row``), so
that bench/faults takes them with ``RUNNERS = runners.RUNNERS + faults_rows_fuzz.RUNNERS``.

Run alone it prints both rows:  .venv/bin/python bench/faults_rows_fuzz.py [--seconds S] [--homes N]
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from faults import audit  # noqa: E402
from faults.runners import Row  # noqa: E402


def hammer_row(work: Path, seconds: float, seed: int = 0) -> Row:
    from faults.hammer import hammer

    outcome = hammer(work / "hammer", seconds, seed)
    row = Row(f"concurrency: 5 commands on one home, {seconds:g}s", trials=round(seconds))
    row.jobs = len(outcome.created)
    row.lost, row.doubled = len(outcome.lost), len(outcome.doubled)
    row.failed += outcome.problems()
    row.notes.append(f"{row.jobs} jobs, {outcome.evictions} package(s) evicted by rdsclr while they ran")
    return row


def broken_homes_row(work: Path, homes: int, seed: int = 0) -> Row:
    from faults import test_fuzz_process as fuzz
    from faults.hostile import clean_stderr, documented_codes, snapshot

    rng = random.Random(seed)
    row = Row("hostile input: randomly broken homes", trials=homes)
    pristine = fuzz.build_pristine(work / "pristine")
    audit.watch(pristine / "mgr")
    refused = 0
    for n in range(homes):
        root = work / f"broken{n}"
        fuzz.copy_tree(pristine, root)
        damage = [(rng.choice(["mgr", "c"]), rng.choice(fuzz.KINDS),
                   rng.choice(["", "{}", "x" * 70, "\x00", "[" * 3000, '{"job": 1}', 5]), rng.randrange(2**32))
                  for _ in range(rng.choice([1, 2]))]
        for host, kind, value, s in damage:
            fuzz.corrupt(root / host, kind, value, s)
        outside = snapshot(root, skip=(root / "mgr", root / "c"))
        said_done = False
        for host, *args in (("c", "rdsft", "-a"), ("c", "rdsft", "-a"), ("c", "rdsgroupid", "--json"),
                            ("mgr", "dcmstat", "--json")):
            proc = fuzz.run(root / host, *args)
            said_done |= args == ["rdsft", "-a"] and proc.returncode == 0
            try:
                assert proc.returncode in documented_codes(args[0])
                clean_stderr(proc.stderr)
            except AssertionError:
                row.failed.append(f"{damage}: {' '.join(args)} exit {proc.returncode}: {proc.stderr.strip()[-300:]}")
        if snapshot(root, skip=(root / "mgr", root / "c")) != outside:
            row.failed.append(f"{damage}: something was written outside the homes")
        runs, state, result = fuzz.done_once(root)
        if said_done and state in fuzz.DELIVERABLE and (runs, result) != (0, "ERROR"):
            row.jobs += 1
            try:
                taken = audit.outcomes(root / "mgr").get((fuzz.JOB, "c"), [])
            except Exception as e:  # noqa: BLE001 - the audit table went with the damage: no outcome known
                taken = []
                row.notes.append(f"{damage}: the managing server's outcomes cannot be read: {e}")
            lost, doubled, what = audit.judge((fuzz.JOB, "c"), runs, taken)
            row.lost += lost
            row.doubled += doubled
            if what:
                row.failed.append(f"{damage}: rdsft -a exited 0, but {what}")
        elif runs > 1:
            row.doubled += 1
            row.failed.append(f"{damage}: installed {runs} times")
        else:
            refused += 1
        shutil.rmtree(root)
    row.notes.append(f"{row.jobs} home(s) where rdsft -a said it worked on a job the managing server hands out; "
                     f"{refused} where the damage stopped the job (the commands or the managing server said so, "
                     f"or it erased the job)")
    return row


# (name, runner, full count): the hammer's count is its seconds, the broken homes' the homes
RUNNERS = [("hammer", hammer_row, 60), ("broken-homes", broken_homes_row, 30)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="how long the hammer runs (default 60)")
    parser.add_argument("--homes", type=int, default=30, help="how many broken homes (default 30)")
    a = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for row in (broken_homes_row(Path(tmp) / "homes", a.homes), hammer_row(Path(tmp) / "hammer", a.seconds)):
            print(f"{row.fault}: trials {row.trials}, jobs {row.jobs}, lost {row.lost}, doubled {row.doubled}",
                  *(f"  {x}" for x in row.notes + row.failed[:20]), sep="\n")


if __name__ == "__main__":
    main()
