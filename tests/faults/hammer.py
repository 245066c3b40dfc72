"""Five commands hammering one home at once, while jobs keep arriving: tests/faults/test_hammer.py
checks what this returns, and bench/faults_rows_fuzz.py turns it into a row of bench/faults.

A managing server ``mgr`` and a client ``c`` below it (homes on this machine, the local transport).
For ``seconds``, each of these loops runs without pause, each in its own thread, all on c's home:

- ``rdsma`` resident (polling every second, woken by mgr's startup requests), stopped and started
  again every few seconds;
- ``rdsft -a``;
- ``rdsclr``;
- ``rdsgroupid --json``, then ``rdsgroupid -d`` of jobs it listed as DONE (and of a job that does not
  exist);
- ``rdsdlv`` (with ``rdsdlvse`` started for it);

and at mgr ``dcmjexe`` creates an install job for c every few tenths of a second, for one of three
packages whose script appends the job number to ``/opt/installs`` under c's install root, while
``rdsft -c`` publishes a new version of the three every second or so.  c's CacheSizeLimit holds a few
versions, not all: rdsclr evicts the old ones while passes fetch and install the new ones.  A new
version comes only once every job of the versions before the current one has its outcome, so the
packages that pending jobs need always fit under the limit's high-water mark: no job may end ERROR
as invalid (rdssetfl(5)), and every job created must be installed exactly once and taken as COMPLETE
exactly once at mgr, counted outside rds (faults/audit.py: the script's own record, and mgr's
database through triggers of the test's own).
Commands still placeholders (``Not built`` in their --help) are run all the same; their exit 255
is expected only while they are.  Afterwards the loops stop, ``rdsft -a`` drains what is left, and
``check`` says what went wrong: exit codes, stderr, processes that did not end in their bound,
jobs not done exactly once, the integrity of both state databases and of every package in c's
storehouse (hashed with hashlib against mgr's copy).
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import re
import sqlite3
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from faults import audit
from faults.hostile import BIN, not_built

BOUND = 120.0  # seconds any one command may take; longer is a deadlock
PACKAGES = ("APP", "TOOL", "LIB")
SCRIPT = "#!/bin/sh\necho \"$RDS_JOB\" >> \"$RDS_INSTALL_DIR/../installs\"\n"


@dataclasses.dataclass
class Call:
    host: str
    args: list[str]
    code: int | None  # None: killed after BOUND seconds
    stderr: str
    seconds: float
    stdout: str = ""

    def __str__(self) -> str:
        what = " ".join(self.args)
        return f"{what} on {self.host}: exit {self.code} after {self.seconds:.1f}s: {self.stderr.strip()}"


@dataclasses.dataclass
class Outcome:
    root: Path
    seconds: float
    calls: list[Call]
    created: list[int]  # job numbers dcmjexe printed
    installs: Counter[int]  # job number -> times its script ran (its own record)
    outcomes: dict[int, list[str]]  # job number -> every outcome mgr took (mgr's database, by trigger)
    statuses: dict[int, tuple[str, str]]  # job number -> (status, message) at mgr, as dcmstat says
    integrity: dict[str, str]  # host -> PRAGMA integrity_check
    bad_packages: list[str]
    placeholders: set[str]
    logs_with_traceback: list[str]

    @property
    def lost(self) -> list[int]:
        return [j for j in self.created if audit.judge((j, "c"), self.installs[j], self.outcomes.get(j, []))[0]]

    @property
    def doubled(self) -> list[int]:
        return [j for j in self.created if audit.judge((j, "c"), self.installs[j], self.outcomes.get(j, []))[1]]

    @property
    def evictions(self) -> int:
        """Packages rdsclr said it removed (not a check: shows that the evictions happened)."""
        return sum(int(m.group(1)) for c in self.calls if c.args[0] == "rdsclr" and c.code == 0
                   for m in [re.search(r"^removed (\d+) of", c.stdout, re.M)] if m)

    def allowed(self, call: Call) -> set[int]:
        name, args = call.args[0], call.args[1:]
        if name in self.placeholders:
            return {255}
        if name == "rdsma":
            return {0, 8} if "-q" in args else {0, 7}
        if name == "rdsgroupid":
            return {0, 3, 5} if "-d" in args else {0, 5}
        if name == "rdsdlv":
            return {0, 5, 8}
        if name == "rdsdlvse":
            return {0, 7, 8}
        return {0, 5}

    def problems(self) -> list[str]:
        """Everything that went wrong, one line each; empty when the home came through whole."""
        out = []
        for call in self.calls:
            if call.code is None:
                out.append(f"did not end within {BOUND:g}s (deadlock?): {call}")
                continue
            if call.code not in self.allowed(call):
                out.append(f"unexpected exit: {call}")
            if "Traceback" in call.stderr or len(call.stderr.strip().splitlines()) > 1:
                out.append(f"stderr not one line: {call}")
            if call.code == 5 and "holds it" not in call.stderr:
                out.append(f"a lock timeout that does not name the holder: {call}")
            if call.code == 255 and call.args[0] in self.placeholders and "not built" not in call.stderr:
                out.append(f"a placeholder that does not say so: {call}")
        for j in self.created:
            if what := audit.judge((j, "c"), self.installs[j], self.outcomes.get(j, []))[2]:
                out.append(f"{what}; at mgr: {': '.join(self.statuses.get(j, ('no status', '')))}")
        out += [f"install of job {j}, which was never created" for j in self.installs if j not in self.created]
        out += [f"{host}: integrity_check says {r}" for host, r in self.integrity.items() if r != "ok"]
        out += [f"package in c's storehouse: {p}" for p in self.bad_packages]
        out += [f"traceback in {log}" for log in self.logs_with_traceback]
        if not self.created:
            out.append("dcmjexe created no job")
        return out


class Hammer:
    def __init__(self, root: Path, seconds: float, seed: int = 0) -> None:
        self.root = root
        self.seconds = seconds
        self.rng = random.Random(seed)
        self.calls: list[Call] = []
        self.created: list[int] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.placeholders = {c for c in ("rdsclr", "rdsdlv", "rdsdlvse") if not_built(c)}
        self.version = 100  # of the packages that new jobs install
        self.version_of: dict[int, int] = {}  # job number -> the version it installs
        self.published: set[int] = set()
        self.creating = threading.Lock()

    # -- running commands

    def run(self, host: str, *args: str) -> Call:
        env = {**os.environ, "RDS_HOME": str(self.root / host), "RDS_LOCK_TIMEOUT": "20"}
        env.pop("RDS_CRASH_AT", None)
        start = time.monotonic()
        try:
            proc = subprocess.run([str(BIN / args[0]), *args[1:]], env=env, capture_output=True, text=True,
                                  timeout=BOUND)
            call = Call(host, list(args), proc.returncode, proc.stderr, time.monotonic() - start, proc.stdout)
        except subprocess.TimeoutExpired as e:  # subprocess.run has killed it
            call = Call(host, list(args), None, str(e.stderr or ""), time.monotonic() - start)
        with self.lock:
            self.calls.append(call)
        return call

    def must(self, host: str, *args: str) -> str:
        call = self.run(host, *args)
        if call.code != 0:
            raise RuntimeError(f"setting up: {call}")
        return call.stdout

    # -- the tree

    def build(self) -> None:
        for name in ("mgr", "c"):
            prm = self.root / name / "rdsprm"
            prm.mkdir(parents=True)
            lines = [f"HostName\t{name}", "RetryCount\t1", "RetryInterval\t0s",
                     f"InstallRoot\t{self.root / name / 'root'}"]
            if name == "c":
                lines += [f"ManagingHost\t{self.root / 'mgr'}", "WatchTimeofOrders\t1s", "CacheSizeLimit\t144K"]
            (prm / "RDSSETFL").write_text("\n".join(lines) + "\n")
        self.must("c", "rdsft", "-a")  # c checks in: mgr learns the route and where to wake it
        audit.watch(self.root / "mgr")
        (self.root / "script").write_text(SCRIPT)
        for version in range(100, 103):  # three versions installed one after the other: c's cache is over its
            self.publish(version)       # limit from the start, and the first rdsclr evicts
            self.published.add(version)
            for name in PACKAGES:
                job = int(self.must("mgr", "dcmjexe", "-r", f"C.AB.{name}.{version:04d}", "-h", "c").strip())
                self.created.append(job)
                self.version_of[job] = version
            self.must("c", "rdsft", "-a")
        self.version = 102

    def publish(self, version: int) -> bool:
        """Register ``version`` of the three packages at mgr (8, 16, 32 KiB: 56 KiB a version)."""
        for i, name in enumerate(PACKAGES):
            src = self.root / f"src-{name}-{version}"
            (src / "bin").mkdir(parents=True)
            (src / "bin" / name.lower()).write_bytes(os.urandom(8 << 10 << i))
            call = self.run("mgr", "rdsft", "-c", "-g", "AB", "-r", name, "-v", f"{version:04d}", "-i",
                            f"/opt/{name.lower()}", "--script", str(self.root / "script"), str(src))
            if call.code != 0:
                if not self.created:
                    raise RuntimeError(f"setting up: {call}")
                return False
        return True

    # -- the loops

    def loop(self, step: Callable[[], object]) -> threading.Thread:
        def body() -> None:
            while not self.stop.is_set():
                step()

        t = threading.Thread(target=body, daemon=True)
        t.start()
        return t

    def dcmjexe(self) -> None:
        with self.creating:  # the version cannot move on while a job for it is being created
            pkg, version = self.rng.choice(PACKAGES), self.version
            call = self.run("mgr", "dcmjexe", "-r", f"C.AB.{pkg}.{version:04d}", "-h", "c")
            if call.code == 0:
                with self.lock:
                    job = int(call.stdout.strip())
                    self.created.append(job)
                    self.version_of[job] = version
        time.sleep(self.rng.uniform(0.1, 0.5))

    def publisher(self) -> None:
        """A new version once every job of the versions before the current one has its outcome at mgr: the
        packages of pending jobs (two versions at most, 112 KiB) stay under c's limit (144 KiB, 90%: 129 KiB)."""
        self.stop.wait(1)
        if self.version + 1 not in self.published and not self.stop.is_set():
            if not self.publish(self.version + 1):
                return
            self.published.add(self.version + 1)
        with self.creating:
            older = [(j, "c") for j, v in self.version_of.items() if v < self.version]
            taken = audit.outcomes(self.root / "mgr")
            if all(key in taken for key in older):
                self.version += 1

    def rdsgroupid(self) -> None:
        call = self.run("c", "rdsgroupid", "--json")
        if call.code != 0:
            return
        done = [f"{r['job_no']}:{r['dest']}" for r in json.loads(call.stdout) if r["state"] == "DONE"]
        if done:
            self.run("c", "rdsgroupid", "-d", *self.rng.sample(done, min(len(done), 3)))
        if self.rng.random() < 0.2:
            self.run("c", "rdsgroupid", "-d", "999999")  # no such job: exit 3

    def rdsma(self) -> None:
        self.stop.wait(self.rng.uniform(2, 5))
        self.run("c", "rdsma", "-q")
        self.run("c", "rdsma")

    def go(self) -> Outcome:
        self.build()
        if "rdsdlvse" not in self.placeholders:
            self.run("c", "rdsdlvse")
        self.run("c", "rdsma")
        threads = [self.loop(self.dcmjexe), self.loop(self.publisher), self.loop(lambda: self.run("c", "rdsft", "-a")),
                   self.loop(lambda: self.run("c", "rdsclr")), self.loop(self.rdsgroupid),
                   self.loop(lambda: self.run("c", "rdsdlv")), self.loop(self.rdsma)]
        time.sleep(self.seconds)
        self.stop.set()
        for t in threads:
            t.join(BOUND + 10)
        self.run("c", "rdsma", "-q")
        if "rdsdlvse" not in self.placeholders:
            self.run("c", "rdsdlvse", "-p")
        return self.drain()

    # -- afterwards

    def drain(self) -> Outcome:
        for _ in range(10):  # every job created has reached c by now; a few passes finish them
            self.run("c", "rdsft", "-a")
            statuses = self.statuses()
            if all(statuses.get(j, ("WAIT", ""))[0] not in ("WAIT", "EXEC") for j in self.created):
                break
        taken = audit.outcomes(self.root / "mgr")
        return Outcome(self.root, self.seconds, self.calls, sorted(self.created), self.installs(),
                       {j: taken[(j, d)] for j, d in taken if d == "c"}, self.statuses(),
                       {h: integrity(self.root / h / "GROUP" / "rds.db") for h in ("mgr", "c")},
                       bad_packages(self.root / "c" / "RDS", self.root / "mgr" / "RDS"), self.placeholders,
                       self.tracebacks())

    def statuses(self) -> dict[int, tuple[str, str]]:
        call = self.run("mgr", "dcmstat", "--json")
        rows = json.loads(call.stdout or "[]")
        return {r["job_no"]: (r["status"], r["message"]) for r in rows if r["dest"] == "c"}

    def installs(self) -> Counter[int]:
        path = self.root / "c" / "root" / "opt" / "installs"
        return Counter(int(n) for n in path.read_text().split()) if path.exists() else Counter()

    def tracebacks(self) -> list[str]:
        logs = [p for p in (self.root / "c" / "log").glob("*") if p.is_file()]
        return [str(p) for p in logs if "Traceback" in p.read_text(errors="replace")]


def integrity(db_path: Path) -> str:
    db = sqlite3.connect(db_path)
    try:
        return "; ".join(r[0] for r in db.execute("PRAGMA integrity_check"))
    finally:
        db.close()


def bad_packages(root: Path, source: Path) -> list[str]:
    """Packages in ``root`` that are not whole, or whose payload is not byte for byte the one in
    ``source`` (mgr's storehouse), hashed with hashlib."""
    bad = []
    for d in root.iterdir():
        if d.name.startswith(".") or not d.is_dir():
            continue
        try:
            if audit.archive_sha256(d) != audit.archive_sha256(source / d.name):
                bad.append(f"{d.name}: its archive (payload or chunks) is not the one mgr holds")
        except FileNotFoundError:
            bad.append(f"{d.name}: half a package is visible")
    return bad


def hammer(root: Path, seconds: float, seed: int = 0) -> Outcome:
    return Hammer(root, seconds, seed).go()
