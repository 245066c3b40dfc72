"""Fault runners: each drives real rds processes through one kind of fault.

A runner is ``run(work, trials, seed) -> Row``: it builds its homes under
``work`` (a fresh directory), injects ``trials`` faults and counts, from
records outside rds (faults/audit.py), the jobs it created that were lost
(installed or taken at the managing server no time) or doubled (more than
once):

- an install counts once per line its script appended to ``/opt/installs``
  under the host's install root (the script also checks that the files it
  was given are whole, and writes ``BAD`` when not);
- an outcome counts once per row that the managing server's database
  appended, through triggers of the runner's own, each time it took one.

``RUNNERS`` lists them for ``bench/faults``; a new fault is one more entry.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import random
import re
import signal
import socket
import sqlite3
import struct
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

from conftest import BIN, Host, Tree
from sshd import SSHD, CutProxy, Sshd, serve_command
from sshd import make_package as big_package

from faults import audit
from rds.storehouse import MANIFEST, PAYLOAD


@dataclasses.dataclass
class Row:
    fault: str
    trials: int = 0  # faults injected
    jobs: int = 0  # jobs created that were meant to install, each counted by audit.judge
    lost: int = 0
    doubled: int = 0
    notes: list[str] = dataclasses.field(default_factory=list)  # figures
    failed: list[str] = dataclasses.field(default_factory=list)  # what went wrong: jobs, and other promises
    crashed: str | None = None  # the runner itself broke: its counts are not known

    @property
    def ok(self) -> bool:
        return (self.crashed is None and self.lost == 0 and self.doubled == 0 and not self.failed
                and self.trials > 0 and self.jobs > 0)


Runner = Callable[[Path, int, int], Row]

# The install script of every test package: it checks the files it was given, then counts itself.
SCRIPT = """#!/bin/sh
cd "$RDS_INSTALL_DIR" && sha256sum -c --status data.sha256 && ok=ok || ok=BAD
echo "$RDS_JOB $RDS_HOST $ok" >> "$RDS_INSTALL_DIR/../installs"
"""


# The script of a package whose archive holds no checksums (the runner hashes the payload itself).
COUNTING_SCRIPT = '#!/bin/sh\necho "$RDS_JOB $RDS_HOST ok" >> "$RDS_INSTALL_DIR/../installs"\n'


def make_package(host: Host, work: Path, name: str, version: str, size: int, rng: random.Random) -> str:
    """Register a package of ``size`` random bytes on ``host`` with the counting script; returns its ID."""
    src = work / f"src-{name}-{version}"
    src.mkdir(parents=True)
    data = rng.randbytes(size)
    (src / "data.bin").write_bytes(data)
    (src / "data.sha256").write_text(f"{hashlib.sha256(data).hexdigest()}  data.bin\n")
    script = work / f"script-{name}-{version}"
    script.write_text(SCRIPT)
    return host.run("rdsft", "-c", "-g", "AB", "-r", name, "-v", version, "-i", f"/opt/{name}-{version}",
                    "--script", str(script), str(src)).stdout.strip()


def install_lines(host: Host) -> list[tuple[int, str, str]]:
    f = host.installed("/opt/installs")
    if not f.exists():
        return []
    out = []
    for line in f.read_text().splitlines():
        job, dest, ok = line.split()
        out.append((int(job), dest, ok))
    return out


def statuses(top: Host) -> dict[tuple[int, str], str]:
    proc = top.run("dcmstat", "--json", check=False)
    return {(r["job_no"], r["dest"]): r["status"] for r in json.loads(proc.stdout or "[]")}


def half_packages(hosts: list[Host], source: Host) -> list[str]:
    """Storehouse packages that are not whole, or whose payload is not byte for byte the one in the
    managing server's storehouse (``source``), hashed with hashlib (there must be none)."""
    bad = []
    for h in hosts:
        store = h.path / "RDS"
        if not store.is_dir():
            continue
        for d in store.iterdir():
            if d.name.startswith(".") or not d.is_dir():
                continue
            try:
                json.loads((d / MANIFEST).read_text())
                if audit.archive_sha256(d) != audit.archive_sha256(source.path / "RDS" / d.name):
                    bad.append(f"{h.name}:{d.name}: payload is not the managing server's")
            except FileNotFoundError as e:
                if d.exists():  # not removed while we looked
                    bad.append(f"{h.name}:{d.name}: {Path(e.filename or '').name} missing")
            except ValueError as e:
                bad.append(f"{h.name}:{d.name}: {e}")
    return bad


def unsent(hosts: list[Host]) -> list[str]:
    """Results still waiting to go up once every job has ended (there must be none)."""
    out = []
    for h in hosts:
        db = sqlite3.connect(f"file:{h.path / 'GROUP' / 'rds.db'}?mode=ro", uri=True)
        try:
            n = db.execute("SELECT count(*) FROM results WHERE sent IS NULL").fetchone()[0]
        finally:
            db.close()
        if n:
            out.append(f"{h.name}: {n} result(s) never acknowledged by the upper system")
    return out


def wait_until(cond: Callable[[], bool], timeout: float, step: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(step)
    return cond()


def tally(row: Row, top: Host, hosts: list[Host], keys: list[tuple[int, str]]) -> bool:
    """Count each (job, destination) of ``keys`` into ``row`` (audit.judge); True if all were done once."""
    took = audit.outcomes(top.path)
    ran: Counter[tuple[int, str]] = Counter()
    for h in hosts:
        for job, dest, ok in install_lines(h):
            ran[(job, dest)] += 1
            if ok != "ok" and (job, dest) in keys:
                row.failed.append(f"job {job} on {dest}: the install script saw a half package")
    good = True
    status = statuses(top)
    for key in keys:
        row.jobs += 1
        lost, doubled, what = audit.judge(key, ran[key], took.get(key, []))
        row.lost += lost
        row.doubled += doubled
        if what:
            good = False
            row.failed.append(f"{what}; dcmstat says {status.get(key)}")
    return good


class Resident:
    """One resident command (``rdsma``/``rdssnd --foreground``) of a host, a child of this process."""

    def __init__(self, host: Host, command: str) -> None:
        self.host = host
        self.command = command
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, **env: str) -> None:
        self.proc = subprocess.Popen([str(BIN / self.command), "--foreground"], env=self.host.env(**env),
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> bool:
        """kill -9; True if it was running."""
        if not self.alive():
            return False
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()
        return True

    def stop(self) -> None:
        if self.alive():
            assert self.proc is not None
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# -- 1. kill -9 ---------------------------------------------------------------

# Crash points (rds/crashpoints.py) reached only when there is work: a download, an install, a result.
RELAY_POINTS = ["downloading", "downloading@2", "downloading@3", "fetched", "reported"]
INSTALL_POINTS = ["installing", "extracted", "script-started", "installed"]
SEND_POINTS = ["reported"]


def crash(work: Path, trials: int, seed: int) -> Row:
    """kill -9 of rdsft -a, rdsma and rdssnd in a four-level tree, at crash points or after random delays.

    mgr -> r1 -> r2 -> {c1, c2}; rdsma and rdssnd run on every lower host,
    polling every second.  Each trial registers a new package of 1-4 MiB, makes
    one or two jobs for some of r2, c1 and c2, and kills one process of a host
    on their way (as it runs: at a random crash point or after a random
    delay); the killed one is started again and the trial waits for every job
    to end at the managing server.
    """
    rng = random.Random(seed)
    row = Row("kill -9 (rdsft -a, rdsma, rdssnd)")
    fast = "WatchTimeofOrders\t1s\nWatchTimeofStatus\t1s\n"
    tree = Tree(work / "hosts")
    mgr = tree.add("mgr")
    tree.add("r1", "mgr", settings=fast)
    tree.add("r2", "r1", settings=fast)
    tree.add("c1", "r2", settings=fast)
    tree.add("c2", "r2", settings=fast)
    tree.check_in_upward(["c1", "c2", "r2", "r1"])
    audit.watch(mgr.path)
    lowers = [tree[n] for n in ("r1", "r2", "c1", "c2")]
    everyone = [mgr, *lowers]
    residents = {(h.name, c): Resident(h, c) for h in lowers for c in ("rdsma", "rdssnd")}
    for r in residents.values():
        r.start()
    packages: list[str] = []
    created: list[tuple[int, str]] = []
    kinds: Counter[str] = Counter()
    at_points: Counter[str] = Counter()
    try:
        trial = 0
        attempts = 0
        while trial < trials and attempts < trials * 3:
            attempts += 1
            dests = rng.sample(["r2", "c1", "c2"], rng.randint(1, 3))
            victim = tree[rng.choice(["r1", "r2", *dests])]
            kind = rng.choice(["rdsft", "rdsma", "rdssnd"])
            how = rng.choice(["point", "delay"])
            if kind == "rdssnd" and victim.name in dests and victim.name != "r2":
                kind = "rdsma"  # a client's rdssnd has little to do: its passes send its results themselves
            points = SEND_POINTS if kind == "rdssnd" else RELAY_POINTS + (INSTALL_POINTS if victim.name in dests
                                                                          else [])
            point = rng.choice(points)
            env = {"RDS_CRASH_AT": point} if how == "point" else {}
            res = residents[(victim.name, "rdssnd" if kind == "rdssnd" else "rdsma")]
            res.stop()
            if kind != "rdsft":
                res.start(**env)

            version = f"{attempts:04d}"
            pkg = make_package(mgr, work / "src", "P", version, rng.randint(1 << 20, 4 << 20), rng)
            packages.append(pkg)
            keys = []
            job = int(mgr.run("dcmjexe", "-r", pkg, "-h", *dests).stdout.split()[-1])
            keys += [(job, d) for d in dests]
            if len(packages) > 1 and rng.random() < 0.5:  # an older package to a host that lacks it
                older = rng.choice(packages[:-1])
                d = rng.choice(["r2", "c1", "c2"])
                job2 = int(mgr.run("dcmjexe", "-r", older, "-h", d).stdout.split()[-1])
                keys.append((job2, d))

            if kind == "rdsft":
                killed = _kill_oneoff(victim, env, how, rng)
            else:
                assert res.proc is not None
                killed = _kill(res.proc, how, rng)
            bad = half_packages(everyone, mgr)
            row.failed += bad
            res.stop()
            res.start()
            converged = wait_until(lambda k=keys: all(statuses(mgr).get(x) in ("COMPLETE", "ERROR") for x in k), 90)
            created += keys  # every job counts, killed or not: a job created must be done once
            if not killed:
                if not tally(Row(""), mgr, everyone, keys):
                    row.notes.append(f"attempt {attempts}: jobs {keys} went wrong without a kill")
                continue
            trial += 1
            kinds[f"{kind}/{how}"] += 1
            if how == "point":
                at_points[point] += 1
            if not converged:
                row.notes.append(f"trial {trial}: not all jobs ended in 90s")
        row.trials = trial
        tally(row, mgr, everyone, created)  # at the end: a job done again later counts too
        row.failed += half_packages(everyone, mgr)
        if not wait_until(lambda: not unsent(lowers), 15):  # the last acknowledgement may be under way
            row.failed += unsent(lowers)
    finally:
        for r in residents.values():
            r.stop()
    row.notes.append("kills: " + ", ".join(f"{k} {n}" for k, n in sorted(kinds.items())))
    row.notes.append("at points: " + ", ".join(f"{k} {n}" for k, n in sorted(at_points.items())))
    row.notes.append(f"{attempts - trial} attempt(s) not killed (their jobs counted too)")
    return row


def _kill(proc: subprocess.Popen[bytes], how: str, rng: random.Random) -> bool:
    """Let ``proc`` die at its crash point, or kill -9 it after a random delay; True if it died so."""
    if how == "delay":
        try:
            proc.wait(rng.uniform(0.0, 3.0))
            return False
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            return True
    try:
        return proc.wait(30) == -signal.SIGKILL
    except subprocess.TimeoutExpired:  # the point was not reached while there was work
        return False


def _kill_oneoff(host: Host, env: dict[str, str], how: str, rng: random.Random) -> bool:
    """``rdsft -a`` run again and again (as from cron) until one run is killed, for 30s at most."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        proc = subprocess.Popen([str(BIN / "rdsft"), "-a"], env=host.env(**env),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if how == "delay":
            try:
                proc.wait(rng.uniform(0.0, 1.5))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                return True
        elif proc.wait(120) == -signal.SIGKILL:
            return True
        time.sleep(0.3)
    return False


# -- 2. cut connections ---------------------------------------------------------


class ResetProxy(CutProxy):
    """CutProxy whose cut is, when ``reset`` is set, a TCP reset rather than a hang-up."""

    reset = False

    def _hang_up(self, client: socket.socket) -> None:  # type: ignore[override]
        if self.reset:  # what the lower system's kernel had not handed to rds yet is gone with it
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            client.close()
        else:
            CutProxy._hang_up(client)


def network(work: Path, trials: int, seed: int, size: int = 256 << 20, resets: float = 0.5) -> Row:
    """One package of ``size`` bytes over SSH through a proxy that cuts the link ``trials`` times.

    The cuts fall at random points of the transfer; each is, at random, a
    hang-up (FIN) or a reset (RST).  Every ``rdsft -a`` that is cut must fail
    with exit 253 and keep what it received; the next one resumes.  The job
    installs the package on the relay once it is whole (its script counts
    itself), and the relay's payload must be the managing server's, byte for
    byte.  The row notes the bytes the proxy passed from the upper to the
    lower system per byte of package; the promise is at most 1.1.
    """
    rng = random.Random(seed)
    row = Row(f"cut link x{trials} in one {size >> 20} MiB transfer", trials=trials)
    with cut_link(work) as (tree, mgr, relay, proxy):
        tree.add("client1", "relay1")
        tree.check_in_upward(["client1", "relay1"])
        audit.watch(mgr.path)
        m = big_package(mgr.path, size)
        m = dataclasses.replace(m, script=COUNTING_SCRIPT)  # the archive holds no checksums: the runner hashes
        (mgr.path / "RDS" / str(m.id) / MANIFEST).write_text(json.dumps(m.to_json()))
        # the relay's own install job: it fetches the package in its own pass
        job = int(mgr.run("dcmjexe", "-r", str(m.id), "-h", "relay1").stdout.split()[-1])
        start_down = proxy.down
        part = relay.path / "RDS" / ".partial" / f"{m.id}.{m.sha256[:16]}.part"
        runs = cut = 0
        waste: list[tuple[int, bool]] = []  # bytes that came down but were not kept, per cut
        started = time.monotonic()
        while True:
            runs += 1
            if cut < trials:
                have = part.stat().st_size if part.exists() else 0
                left = m.size - have
                # a random point of what is left, so that the cuts spread over the whole transfer
                proxy.cut_after = proxy.down + int(rng.uniform(0.2, 1.8) * left / (trials - cut + 1)) + 4096
                proxy.reset = rng.random() < resets
            down0, have0 = proxy.down, part.stat().st_size if part.exists() else 0
            proc = relay.run("rdsft", "-a", check=False, timeout=600)
            if proxy.cut_after is None and cut < trials:
                cut += 1
                kept = (part.stat().st_size if part.exists() else 0) - have0
                waste.append((proxy.down - down0 - kept, proxy.reset))
                lines = proc.stderr.strip().splitlines()
                if proc.returncode != 253 or len(lines) != 1:
                    row.failed.append(f"cut {cut}: exit {proc.returncode}, stderr {proc.stderr.strip()!r}")
                if half_packages([relay], mgr):
                    row.failed.append(f"cut {cut}: a half package is visible")
                continue
            proxy.cut_after = None
            if proc.returncode != 0:
                row.failed.append(f"run {runs}: exit {proc.returncode}: {proc.stderr.strip()}")
                if runs > trials * 3:
                    break
                continue
            break
        took = time.monotonic() - started
        ratio = (proxy.down - start_down) / m.size
        for kind in (False, True):
            lost = sorted(w for w, r in waste if r == kind)
            if lost:
                row.notes.append(f"{'reset' if kind else 'hang-up'}: {len(lost)} cuts lost "
                                 f"{lost[len(lost) // 2] >> 10} KiB (median), {lost[-1] >> 10} KiB (most) each")
        row.notes.append(f"{cut} cuts, {runs} runs, {proxy.down - start_down} bytes down for {m.size} "
                         f"= {ratio:.3f}x, {took:.1f}s")
        whole = (relay.path / "RDS" / str(m.id) / PAYLOAD)
        if cut < trials:
            row.failed.append(f"only {cut} of {trials} cuts fell inside the transfer")
        if not whole.exists() or audit.sha256_of(whole) != audit.sha256_of(mgr.path / "RDS" / str(m.id) / PAYLOAD):
            row.failed.append("the relay's payload is not the managing server's")
        if ratio > 1.1:
            row.failed.append(f"{ratio:.3f}x the package's size moved (promise: at most 1.1x)")
        tally(row, mgr, [relay], [(job, "relay1")])
        row.trials = cut
    return row


@contextlib.contextmanager
def cut_link(work: Path) -> Iterator[tuple[Tree, Host, Host, ResetProxy]]:
    """A managing server and relay1, whose SSH link to it runs through a proxy that can cut it."""
    tree = Tree(work / "hosts")
    mgr = tree.add("mgr")
    mgr.home()
    server = Sshd(work / "sshd")
    key = server.add_key("relay1", command=serve_command("relay1", mgr.path))
    server.start()
    proxy = ResetProxy(server.port)
    try:
        known = work / "known_hosts"
        known.write_text(f"[127.0.0.1]:{proxy.port} {server.host_key_line()}\n")
        url = server.url(mgr.path).replace(f":{server.port}", f":{proxy.port}")
        relay = tree.add("relay1", settings=f"ManagingHost\t{url}\nIdentityFile\t{key}\n"
                                            f"KnownHostsFile\t{known}\nConnectTimeout\t10s\n")
        yield tree, mgr, relay, proxy
    finally:
        proxy.close()
        server.stop()


# -- 3. disk full -----------------------------------------------------------------


class NeedsRoot(Exception):
    """Mounting a small file system needs root."""


@contextlib.contextmanager
def small_fs(path: Path, size: int) -> Iterator[Path]:
    """A tmpfs of ``size`` bytes mounted over ``path`` for the block; unmounted after."""
    if os.geteuid() != 0:
        raise NeedsRoot(f"mounting a tmpfs over {path} needs root")
    path.mkdir(parents=True, exist_ok=True)
    # mode: a tmpfs is 1777 by default, and rds refuses a home directory that others can write
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)], check=True,
                   capture_output=True)
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)
        if os.path.ismount(path):
            raise AssertionError(f"{path} is still mounted after umount and umount -l")


def fill(fs: Path, leave: int) -> Path:
    """Take all but ``leave`` bytes of the file system at ``fs`` with a ballast file."""
    ballast = fs / ".ballast"
    st = os.statvfs(fs)
    free = st.f_bavail * st.f_frsize
    with open(ballast, "wb") as f:
        f.write(b"\0" * max(0, free - leave))
    return ballast


def _one_line(proc: subprocess.CompletedProcess[str]) -> str:
    lines = proc.stderr.strip().splitlines()
    return lines[0] if len(lines) == 1 else f"({len(lines)} lines) {proc.stderr.strip()[:300]}"


def _disk_full_error(row: Row, what: str, proc: subprocess.CompletedProcess[str]) -> None:
    """The run must fail with exit 254 and one line that says the disk is full."""
    line = _one_line(proc)
    row.notes.append(f"{what}: exit {proc.returncode}: {line}")
    if proc.returncode != 254 or not re.search(r"disk (is )?full", line) or line.startswith("("):
        row.failed.append(f"{what}: expected exit 254 and one line saying 'disk full', got {proc.returncode}: {line}")


def disk_full(work: Path, trials: int, seed: int) -> Row:
    """A full disk under the storehouse, the install directory and the state database, in turn.

    Each case: a relay or client runs out of space in the middle of its work;
    the run fails with one line and exit 254; no half package is visible and
    nothing is lost; once the space is freed the next run completes.  A case
    counts as a trial only if the disk did fill (a run that happened to fit
    is noted, not counted).
    """
    rng = random.Random(seed)
    row = Row("disk full (storehouse, install dir, state db)")
    cases = [_full_storehouse, _full_install_dir, _full_state_db]
    for i in range(trials):
        case = cases[i % len(cases)]
        if case(work / f"{i}-{case.__name__.strip('_')}", rng, row):
            row.trials += 1
        else:
            row.notes.append(f"case {i} ({case.__name__.strip('_')}): the disk did not fill; not a trial")
    return row


def _three(work: Path, **settings: str) -> tuple[Tree, Host, Host, Host]:
    tree = Tree(work / "hosts")
    mgr = tree.add("mgr")
    audit.watch(mgr.path)
    relay = tree.add("relay", "mgr", settings=settings.get("relay", ""))
    c = tree.add("c", "relay", settings=settings.get("c", ""))
    return tree, mgr, relay, c


def _finish(mgr: Host, relay: Host, c: Host) -> None:
    relay.run("rdsft", "-a")
    c.run("rdsft", "-a", check=False)
    relay.run("rdssnd", "--once")


def _full_storehouse(work: Path, rng: random.Random, row: Row) -> bool:
    # The relay fetches into its storehouse for its own job in its pass, and on demand when the
    # client asks for the package of the client's job (JIT): both meet the full disk.
    tree, mgr, relay, c = _three(work)
    tree.check_in_upward(["c", "relay"])
    pkg = make_package(mgr, work, "FULL", "1", 4 << 20, rng)
    job = int(mgr.run("dcmjexe", "-r", pkg, "-h", "relay", "c").stdout.split()[-1])
    relay.home()
    with small_fs(relay.path / "RDS", 8 << 20) as fs:
        ballast = fill(fs, 2 << 20)
        proc = relay.run("rdsft", "-a", check=False)
        _disk_full_error(row, "storehouse", proc)
        row.failed += half_packages([relay], mgr)
        if (relay.path / "RDS" / pkg).exists():
            row.failed.append("storehouse: the package is visible though it did not fit")
        got = c.run("rdsft", "-a", check=False)
        if install_lines(c) or (c.path / "RDS" / pkg).exists():
            row.failed.append(f"storehouse: the client used a package the relay could not hold: {got.stdout}")
        row.failed += half_packages([relay, c], mgr)
        ballast.unlink()
        _finish(mgr, relay, c)
        row.failed += half_packages([relay, c], mgr)
        log = (relay.path / "log" / "rds.log").read_text()
        if not re.search(rf"fetching package {re.escape(pkg)} .* from byte [1-9]", log):
            row.notes.append("storehouse: the download started again from byte 0")
    tally(row, mgr, [mgr, relay, c], [(job, "relay"), (job, "c")])
    return proc.returncode != 0


def _full_install_dir(work: Path, rng: random.Random, row: Row) -> bool:
    tree, mgr, relay, c = _three(work)
    tree.check_in_upward(["c", "relay"])
    pkg = make_package(mgr, work, "FULL", "1", 4 << 20, rng)
    job = int(mgr.run("dcmjexe", "-r", pkg, "-h", "c").stdout.split()[-1])
    with small_fs(c.path / "root", 8 << 20) as fs:
        ballast = fill(fs, 2 << 20)
        relay.run("rdsft", "-a")
        proc = c.run("rdsft", "-a", check=False)
        relay.run("rdssnd", "--once")
        st = statuses(mgr).get((job, "c"))
        msg = next((r["message"] for r in json.loads(mgr.run("dcmstat", "--json", check=False).stdout)
                    if r["job_no"] == job), "")
        row.notes.append(f"install dir: exit {proc.returncode}, {st}: {msg}")
        # an install that does not fit is that job's ERROR, taken once at the managing server; the
        # script never ran.  This job fails on purpose: it is checked here, not counted among the jobs.
        taken = audit.outcomes(mgr.path).get((job, "c"), [])
        if proc.returncode != 4 or taken != ["ERROR"] or "disk full" not in msg:
            row.failed.append(f"install dir: expected exit 4 and one ERROR for lack of space, got "
                              f"{proc.returncode}, outcomes taken {taken}: {msg}")
        if install_lines(c):
            row.failed.append("install dir: the script ran on a half-extracted package")
        ballast.unlink()
        again = int(mgr.run("dcmjexe", "-r", pkg, "-h", "c").stdout.split()[-1])  # the administrator retries
        _finish(mgr, relay, c)
        tally(row, mgr, [mgr, relay, c], [(again, "c")])
    return proc.returncode != 0


def _full_state_db(work: Path, rng: random.Random, row: Row) -> bool:
    tree, mgr, relay, c = _three(work)
    filled = False
    with small_fs(relay.path / "GROUP", 4 << 20) as fs:
        tree.check_in_upward(["c", "relay"])
        pkg = make_package(mgr, work, "FULL", "1", 1 << 20, rng)
        keys = [(int(mgr.run("dcmjexe", "-r", pkg, "-h", h).stdout.split()[-1]), h) for h in ("c", "relay")]
        ballast = fill(fs, 0)  # SQLite cannot even open the database
        proc = relay.run("rdsft", "-a", check=False)
        _disk_full_error(row, "state db", proc)
        filled = proc.returncode != 0
        ballast.unlink()
        # it opens, and the jobs received do not fit: how much SQLite needs varies a little, so with
        # less and less room (a new job each time) until a run does not fit
        for leave in (32 << 10, 16 << 10, 8 << 10, 4 << 10):
            keys.append((int(mgr.run("dcmjexe", "-r", pkg, "-h", "c").stdout.split()[-1]), "c"))
            ballast = fill(fs, leave)
            proc = relay.run("rdsft", "-a", check=False)
            ballast.unlink()
            if proc.returncode != 0:
                _disk_full_error(row, f"state db while storing jobs ({leave >> 10} KiB left)", proc)
                break
        else:
            filled = False
            row.notes.append("state db: storing jobs always fitted")
        _finish(mgr, relay, c)
        relay.run("rdsft", "-a")
        relay.run("rdssnd", "--once")
    tally(row, mgr, [mgr, relay, c], keys)
    return filled


# -- 4. the upper system unreachable ----------------------------------------------------


def outage(work: Path, trials: int, seed: int, polls: int = 10) -> Row:
    """The managing server unreachable for ``polls`` polls of a relay, ``trials`` times.

    mgr -> relay -> c, rdsma and rdssnd resident on relay and c, polling every
    second.  Before the outage a job is taken by the relay (its result comes
    during the outage); during it another job is made at the managing server.
    The outages take turns: on this machine the managing server's home is
    moved away (the local transport then finds no upper system), then back;
    over SSH its sshd is stopped, then started again on the same port.  Both
    jobs must end once; the relay's log must say why each poll failed, and
    polling must go on.
    """
    rng = random.Random(seed)
    row = Row(f"managing server unreachable for {polls} polls")
    for episode in range(trials):
        how = ("local", "ssh")[episode % 2]
        _outage(work / f"{episode}-{how}", how, polls, rng, row)
        row.trials += 1
    return row


def _outage(work: Path, how: str, polls: int, rng: random.Random, row: Row) -> None:
    fast = "WatchTimeofOrders\t1s\nWatchTimeofStatus\t1s\n"
    tree = Tree(work / "hosts")
    mgr = tree.add("mgr")
    server = None
    to_mgr = ""
    if how == "ssh":
        mgr.home()
        server = Sshd(work / "sshd")
        key = server.add_key("relay", command=serve_command("relay", mgr.path))
        server.start()
        to_mgr = (f"ManagingHost\t{server.url(mgr.path)}\nIdentityFile\t{key}\n"
                  f"KnownHostsFile\t{server.known_hosts}\nConnectTimeout\t2s\n")
    relay = tree.add("relay", None if server else "mgr", settings=fast + to_mgr)
    c = tree.add("c", "relay", settings=fast)
    tree.check_in_upward(["c", "relay"])
    audit.watch(mgr.path)
    away = mgr.path.with_name("mgr.away")
    mgr_home = mgr.path
    residents = [Resident(h, cmd) for h in (relay, c) for cmd in ("rdsma", "rdssnd")]
    relay_log = relay.path / "log" / "rds.log"
    for r in residents:
        r.start()
    try:
        pkg = make_package(mgr, work / "src", "OUT", "1", rng.randint(1 << 20, 2 << 20), rng)
        first = int(mgr.run("dcmjexe", "-r", pkg, "-h", "c").stdout.split()[-1])
        if not wait_until(lambda: statuses(mgr).get((first, "c")) != "WAIT", 30, 0.05):
            row.failed.append(f"{how}: the relay did not take job {first}")
        failed_before = len(_poll_failures(relay_log))
        if server:
            server.stop()
        else:
            os.rename(mgr.path, away)
            mgr_home = away
        try:
            during = int(subprocess.run([str(BIN / "dcmjexe"), "-r", pkg, "-h", "c"], check=True,
                                        env={**os.environ, "RDS_HOME": str(mgr_home)}, capture_output=True,
                                        text=True).stdout.split()[-1])
            if not wait_until(lambda: len(_poll_failures(relay_log)) - failed_before >= polls, polls * 6):
                row.failed.append(f"{how}: fewer than {polls} failed polls were logged")
        finally:
            if server:
                _restart(server)
            else:
                os.rename(away, mgr.path)
        reasons = _poll_failures(relay_log)[failed_before:]
        row.notes.append(f"{how}: {len(reasons)} failed polls logged, saying: {'; '.join(sorted(set(reasons)))}")
        if any(not why.strip() for why in reasons):
            row.failed.append(f"{how}: a failed poll was logged without its reason")
        keys = [(first, "c"), (during, "c")]
        if not wait_until(lambda: all(statuses(mgr).get(x) == "COMPLETE" for x in keys), 60):
            row.notes.append(f"{how}: not all jobs ended within 60s after the upper system came back")
        tally(row, mgr, [mgr, relay, c], keys)
    finally:
        if away.exists() and not mgr.path.exists():
            os.rename(away, mgr.path)
        for r in residents:
            r.stop()
        if server:
            server.stop()


def _restart(server: Sshd) -> None:
    """Start a stopped sshd again on the port it had, as a rebooted upper system would."""
    subprocess.run([str(SSHD), "-f", str(server.config), "-E", str(server.log_file)], check=True,
                   capture_output=True)
    if not server._wait_listening(10):
        raise RuntimeError(f"sshd did not come back on port {server.port}")


POLL_FAILED = re.compile(r"WARNING rdsma: upper system \S+: (.*)$")


def _poll_failures(log: Path) -> list[str]:
    """Why each failed pass of rdsma failed, as the relay's log says."""
    if not log.exists():
        return []
    return [m.group(1) for ln in log.read_text(errors="replace").splitlines() if (m := POLL_FAILED.search(ln))]


RUNNERS: list[tuple[str, Runner, int]] = [
    ("crash", crash, 100),
    ("network", network, 20),
    ("diskfull", disk_full, 3),
    ("outage", outage, 3),
]
