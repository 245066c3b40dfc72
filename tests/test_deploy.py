"""Issue 14, deployable: --version, homes and settings checked by every command, one error for a user who
may not use a home, resident status, the journal and rotation, pruning, dcmstat's summaries and codes,
dcmjexe's one line, times with their offset, progress on a terminal."""

from __future__ import annotations

import collections
import io
import json
import logging
import os
import shutil
import sqlite3
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path

import pytest
from conftest import BIN, Host, Tree, wait_for
from test_man import console_scripts

from rds import archive, clock, log, progress
from rds.home import Home


def run(cmd: str, *args: str, home: Path | str | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    e = {**os.environ, **env}
    if home is not None:
        e["RDS_HOME"] = str(home)
    return subprocess.run([str(BIN / cmd), *args], env=e, capture_output=True, text=True, timeout=60)


def make_home(path: Path, settings: str = "") -> Path:
    (path / "rdsprm").mkdir(parents=True)
    (path / "rdsprm" / "RDSSETFL").write_text(settings)
    return path


# -- --version ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(console_scripts()))
def test_every_command_answers_version(name: str, tmp_path: Path) -> None:
    from rds import __version__

    proc = run(name, "--version", home=tmp_path / "nowhere")  # before any home is looked at
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, f"{name} (rds) {__version__}\n", "")


# -- homes and settings -----------------------------------------------------------------------------

def test_a_directory_without_rdsprm_is_not_made_a_home(tmp_path: Path) -> None:
    """RDS_HOME=/tmp/x dcmstat made seven entries there."""
    bare = tmp_path / "x"
    bare.mkdir()
    proc = run("dcmstat", home=bare)
    assert proc.returncode == 2
    assert proc.stderr == (f"dcmstat: {bare}: not an rds home (no rdsprm/RDSSETFL); make one with: mkdir -p "
                           f"{bare}/rdsprm && touch {bare}/rdsprm/RDSSETFL (a managing server; see rdssetfl(5) and "
                           "RDSSETFL.sample)\n")
    assert list(bare.iterdir()) == []


def test_empty_rds_home_is_an_error() -> None:
    for cmd in ("dcmstat", "rdsft"):
        proc = run(cmd, *(["-a"] if cmd == "rdsft" else []), home="")
        assert proc.returncode == 2 and proc.stderr.startswith(f"{cmd}: RDS_HOME is set but empty"), proc.stderr


BAD = "HostName\tok\nWatchTimeofOrders\tsoon\nNoSuchThing\t1\nRetryCount\t12\nHostName\tagain\n"


def test_every_bad_line_is_reported_at_once(tmp_path: Path) -> None:
    """A pasted JP1 RDSSETFL showed one error per run."""
    home = make_home(tmp_path / "h", BAD)
    proc = run("dcmstat", home=home)
    assert proc.returncode == 2
    assert proc.stderr == (f"dcmstat: {home}/rdsprm/RDSSETFL: 4 bad lines: line 2: WatchTimeofOrders: bad value "
                           "'soon'; line 3: unknown attribute 'NoSuchThing'; line 4: RetryCount: bad value '12'; "
                           "line 5: HostName is given twice (first on line 1) (the attributes and their values: "
                           "rdssetfl(5))\n")
    many = make_home(tmp_path / "many", "".join(f"Bad{i}\t1\n" for i in range(12)))
    proc = run("dcmstat", home=many)
    assert proc.stderr.count("\n") == 1 and "12 bad lines: line 1: unknown attribute 'Bad0'; " in proc.stderr
    assert "; and 4 more on lines 9, 10, 11, 12 (" in proc.stderr
    one = make_home(tmp_path / "one", "RetryCount\t12\n")
    assert run("dcmstat", home=one).stderr == (f"dcmstat: {one}/rdsprm/RDSSETFL:1: RetryCount: bad value '12' "
                                               "(allowed: an integer 1-9)\n")


@pytest.mark.parametrize("args", [["rdsgroupid"], ["rdsdlv"], ["rdsdlvse", "-p"], ["rdssnd", "-q"],
                                  ["rdsstage", "-o", "OUT"], ["rdsma", "--status"], ["dcmjexe", "-r",
                                                                                    "C.AB.X.0100", "-h", "h"]])
def test_commands_refuse_a_bad_settings_file(args: list[str], tmp_path: Path) -> None:
    """Five commands ran despite a bad RDSSETFL."""
    home = make_home(tmp_path / "h", "WatchTimeofOrders\tsoon\n")
    args = [a.replace("OUT", str(tmp_path / "out")) for a in args]
    proc = run(*args, home=home)
    assert proc.returncode == 2, proc.stderr
    assert "RDSSETFL:1: WatchTimeofOrders: bad value 'soon'" in proc.stderr
    assert not (tmp_path / "out").exists()


def as_nobody(args: list[str], home: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", str(BIN / args[0]),
                           *args[1:]], env={**os.environ, "RDS_HOME": str(home)}, capture_output=True, text=True,
                          timeout=60)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch to another user")
def test_one_error_for_a_user_who_may_not_use_the_home() -> None:
    """rds.log: Permission denied (254), a readonly database (2) and rdsdlv's line (1) were three errors."""
    with tempfile.TemporaryDirectory() as d:
        os.chmod(d, 0o755)
        home = make_home(Path(d) / "h")
        run("dcmstat", home=home)  # the state database and the log exist, as root left them
        expected = f"{home}: permission denied: only root or the owner of this home may use it"
        for args in (["dcmstat"], ["rdsft", "-a"], ["rdsdlv"], ["rdsgroupid"],
                     ["dcmjexe", "-r", "C.AB.X.0100", "-h", "h"]):
            proc = as_nobody(args, home)
            assert (proc.returncode, proc.stderr) == (1, f"{args[0]}: {expected}\n"), args
        os.chmod(d, 0o700)  # beyond a directory this user may not enter: the same error
        proc = as_nobody(["dcmstat"], home)
        assert (proc.returncode, proc.stderr) == (1, f"dcmstat: {expected}\n")
        os.chmod(d, 0o755)
        for p in [home, *home.rglob("*")]:
            os.chown(p, 65534, 65534)
        assert as_nobody(["dcmstat"], home).returncode == 0  # the owner may


# -- residents ----------------------------------------------------------------------------------------

def test_residents_on_a_managing_server_have_nothing_to_do(tmp_path: Path) -> None:
    """They exited 1, and units with Restart=on-failure looped.  rdsma now runs there (issue 16): it serves
    the relays' check-ins through its resident server and takes dcmjexe's startup requests; rdssnd still
    has nothing to do."""
    home = make_home(tmp_path / "mgr", "HostName\tmgr\n")
    for args in ([], ["--foreground"]):
        proc = run("rdssnd", *args, home=home)
        assert proc.returncode == 0 and "is the managing server" in proc.stdout, proc.stderr
    proc = run("rdsma", home=home)
    assert proc.returncode == 0 and proc.stdout.startswith("rdsma: started (pid "), proc.stderr
    wait_for(lambda: (home / "run" / "resident.sock").exists())
    assert run("rdsma", "-q", home=home).returncode == 0
    assert not list((home / "run").glob("*.pid"))



def test_status_of_a_resident(tree: Tree) -> None:
    mgr = tree.add("mgr")
    c1 = tree.add("c1", "mgr", settings="WatchTimeofOrders\t1s\n")
    proc = c1.run("rdsma", "--status", check=False)
    assert (proc.returncode, proc.stdout) == (8, "rdsma: not running; no pass yet\n")
    started = int(c1.run("rdsma").stdout.split("pid ")[1].rstrip(")\n"))
    try:
        wait_for(lambda: "last pass" in c1.run("rdsma", "--status", check=False).stdout)
        proc = c1.run("rdsma", "--status", check=False)
        pid = int((c1.path / "run" / "rdsma.pid").read_text())
        assert proc.returncode == 0 and pid == started
        assert proc.stdout.startswith(f"rdsma: running (pid {pid}, since 20")
        assert "; last pass ended 20" in proc.stdout and ": ok" in proc.stdout
        mgr.path.rename(mgr.path.with_name("gone"))  # the upper system disappears: the next pass fails
        wait_for(lambda: ": warning: " in c1.run("rdsma", "--status", check=False).stdout)
    finally:
        c1.run("rdsma", "-q")
    proc = c1.run("rdsma", "--status", check=False)
    assert proc.returncode == 8 and proc.stdout.startswith("rdsma: not running; last pass ended ")
    assert c1.run("rdssnd", "--status", check=False).returncode == 8


# -- logs -----------------------------------------------------------------------------------------------

@pytest.fixture
def fresh_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    def make(settings: str = "") -> tuple[Home, logging.Logger]:
        home = Home.open(make_home(tmp_path / f"h{len(list(tmp_path.iterdir()))}", settings))
        logging.getLogger(f"rds.{home.path}").handlers.clear()
        return home, log.logger(home)
    return make


def test_the_journal_gets_lines_with_their_level(fresh_log, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    stream = open(tmp_path / "journal", "w+")  # noqa: SIM115 - stands for the journal's socket
    st = os.fstat(stream.fileno())
    monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
    monkeypatch.setattr("sys.stderr", stream)
    home, lg = fresh_log()
    lg.info("a pass")
    lg.warning("upper system unreachable")
    lg.error("disk full")
    stream.flush()
    assert (tmp_path / "journal").read_text() == "<6>a pass\n<4>upper system unreachable\n<3>disk full\n"
    assert "INFO a pass" in (home.log_dir / "rds.log").read_text()
    stream.close()


def test_not_the_journal_when_stderr_is_something_else(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with open(tmp_path / "other", "w") as other:
        monkeypatch.setenv("JOURNAL_STREAM", "1:2")
        assert not log.under_journal(other)
        monkeypatch.delenv("JOURNAL_STREAM")
        assert not log.under_journal(other)


def test_system_log_output_level_and_no_file(fresh_log) -> None:  # type: ignore[no-untyped-def]
    home, lg = fresh_log("SystemLogOutputLevel\t1\n")
    lg.info("said")
    lg.warning("warned")
    lg.error("failed")
    for h in lg.handlers:
        h.flush()
    text = (home.log_dir / "rds.log").read_text()
    assert "failed" in text and "warned" not in text and "said" not in text
    home, lg = fresh_log("SystemLogOutputLevel\t0\n")
    lg.error("nothing")
    assert not (home.log_dir / "rds.log").exists() or "nothing" not in (home.log_dir / "rds.log").read_text()
    home, lg = fresh_log("LogFile\tNO\n")
    lg.error("nowhere")
    assert not (home.log_dir / "rds.log").exists()


def test_the_file_log_is_reopened_when_moved(fresh_log) -> None:  # type: ignore[no-untyped-def]
    """After mv rds.log rds.log.1 a running rdsma kept writing to the moved file."""
    home, lg = fresh_log()
    lg.info("before")
    (home.log_dir / "rds.log").rename(home.log_dir / "rds.log.1")
    lg.info("after")
    assert "after" in (home.log_dir / "rds.log").read_text()
    assert "after" not in (home.log_dir / "rds.log.1").read_text()


def test_old_install_logs_and_out_files_are_pruned(tmp_path: Path) -> None:
    home = Home.open(make_home(tmp_path / "h", "LogRetention\t7\n"))
    now = time.time()
    files = {name: home.log_dir / name for name in ("rdsma.out", "rdssnd.out", "startup.out", "rds.log")}
    files.update({name: home.install_logs / name for name in ("old.log", "new.log")})
    for p in files.values():
        p.write_text("x")
    old = now - 8 * 86400
    for name in ("rdsma.out", "rdssnd.out", "startup.out", "rds.log", "old.log"):
        os.utime(files[name], (old, old))
    removed = log.prune(home, now, keep=["rdssnd"])
    assert sorted(p.name for p in removed) == ["old.log", "rdsma.out", "startup.out"]
    assert sorted(n for n, p in files.items() if p.exists()) == ["new.log", "rds.log", "rdssnd.out"]
    assert log.prune(Home.open(make_home(tmp_path / "k", "LogRetention\t0\n")), now + 1e9) == []


def test_rdsclr_prunes_logs(tree: Tree) -> None:
    tree.add("mgr")
    c1 = tree.add("c1", "mgr", settings="LogRetention\t1\n")
    c1.run("rdsft", "-a")
    stale = c1.path / "log" / "install" / "1-c1.log"
    stale.write_text("old")
    os.utime(stale, (time.time() - 2 * 86400,) * 2)
    out = json.loads(c1.run("rdsclr", "--json").stdout)
    assert out["logs_removed"] == 1 and not stale.exists()


# -- dcmstat and dcmjexe ----------------------------------------------------------------------------------

def test_dcmjexe_unknown_hosts_in_one_line(tree: Tree) -> None:
    tree.add("mgr")
    pid = tree.package()
    hosts = [f"h{i:02d}" for i in range(25)]
    proc = tree["mgr"].run("dcmjexe", "-r", pid, "-h", *hosts)
    assert proc.stderr == ("dcmjexe: 25 hosts have not reported in yet (h00, h01, h02, h03, h04, h05, h06, h07, h08, "
                           "h09 and 15 more); their jobs are held until they do\n")
    proc = tree["mgr"].run("dcmjexe", "-r", pid, "-h", "solo")
    assert proc.stderr == "dcmjexe: solo has not reported in yet; its job is held until it does\n"


def db_of(home: Path) -> sqlite3.Connection:
    return sqlite3.connect(home / "GROUP" / "rds.db")


def test_summary_counts_each_job_and_status(tree: Tree) -> None:
    mgr = tree.add("mgr")
    c1 = tree.add("c1", "mgr")
    c1.run("rdsft", "-a")
    pid = tree.package()
    mgr.run("dcmjexe", "-r", pid, "-h", "c1", "x1", "x2", "x3")
    mgr.run("dcmjexe", "-r", pid, "-h", "x1")
    c1.run("rdsft", "-a")
    rows = json.loads(mgr.run("dcmstat", "--json", check=False).stdout)
    expected = collections.Counter((r["job_no"], r["status"]) for r in rows)  # counted from the full listing
    assert expected == {(1, "COMPLETE"): 1, (1, "WAIT"): 3, (2, "WAIT"): 1}
    proc = mgr.run("dcmstat", "-s", "--json", check=False)
    found = json.loads(proc.stdout)
    assert proc.returncode == 31
    assert {(s["job_no"], st): n for s in found for st, n in s["counts"].items()} == expected
    assert [(s["job_no"], s["total"], s["ended"], s["package"], s["type"]) for s in found] == \
        [(1, 4, 1, pid, "INSTALL"), (2, 1, 0, pid, "INSTALL")]
    table = mgr.run("dcmstat", "-s", "-n", "1", check=False).stdout.splitlines()
    assert table[0].split() == ["JOB", "PACKAGE", "TYPE", "DESTINATIONS", "WAIT", "EXEC", "ERROR", "EXEC-ERROR",
                                "LINE-DOWN", "COMPLETE", "SETUP-ERROR", "DELETE", "ID-INVALID"]
    assert table[1].split() == ["1", pid, "INSTALL", "4", "3", "0", "0", "0", "0", "1", "0", "0", "0"]


def one_job(tree: Tree) -> tuple[Host, Host, str]:
    """A managing server, a client c1 under it that has checked in, and job 1 of a package (its ID) for c1."""
    mgr = tree.add("mgr")
    c1 = tree.add("c1", "mgr")
    c1.run("rdsft", "-a")
    pid = tree.package()
    mgr.run("dcmjexe", "-r", pid, "-h", "c1")
    return mgr, c1, pid


def test_an_interim_exec_error_is_running_with_failures(tree: Tree) -> None:
    """An EXEC-ERROR that can still change made dcmstat exit 30, and the wait loop of dcmstat(1) stopped."""
    mgr, c1, _ = one_job(tree)
    with db_of(mgr.path) as db:  # the startup request failed: the managing server's own interim result
        db.execute("INSERT INTO results (job_no, dest, status, message, finished) VALUES (1, 'c1', 'EXEC-ERROR', "
                   "'startup request to c1 failed', ?)", (clock.now_text(),))
    db.close()
    assert mgr.run("dcmstat", check=False).returncode == 32
    assert mgr.run("dcmstat", "-s", check=False).returncode == 32
    c1.run("rdsft", "-a")  # c1 polls, installs and reports
    proc = mgr.run("dcmstat", "--json", check=False)
    assert proc.returncode == 0 and json.loads(proc.stdout)[0]["status"] == "COMPLETE"


def test_watch_prints_changes_until_the_job_ends(tree: Tree) -> None:
    mgr, c1, pid = one_job(tree)
    with subprocess.Popen([str(BIN / "dcmstat"), "-w", "-n", "1", "--interval", "0.1"], env=mgr.env(),
                          stdout=subprocess.PIPE, text=True) as watch:
        assert watch.stdout is not None
        first = watch.stdout.readline()
        c1.run("rdsft", "-a")
        assert watch.wait(timeout=60) == 0
        rest = watch.stdout.read().splitlines()  # EXEC may be seen between, once
    assert first == f"job 1 {pid}: 0/1 ended; WAIT 1\n"
    assert rest[-1] == f"job 1 {pid}: 1/1 ended; COMPLETE 1" and len(rest) == len(set(rest)) <= 2
    assert mgr.run("dcmstat", "-w", check=False).returncode == 1  # -w needs -n


def test_times_are_stored_in_utc_and_shown_with_the_offset(tree: Tree) -> None:
    """dcmstat mixed time zones: rows written by a client in another zone."""
    mgr = tree.add("mgr")
    c1 = tree.add("c1", "mgr")
    c1.run("rdsft", "-a", env=c1.env(TZ="America/New_York"))
    pid = tree.package()
    mgr.run("dcmjexe", "-r", pid, "-h", "c1")
    c1.run("rdsft", "-a", env=c1.env(TZ="America/New_York"))
    with db_of(mgr.path) as db:
        [(finished,)] = db.execute("SELECT finished FROM results").fetchall()
    db.close()
    assert finished.endswith("+00:00")
    tokyo = json.loads(mgr.run("dcmstat", "--json", env=mgr.env(TZ="Asia/Tokyo"), check=False).stdout)[0]
    assert tokyo["updated"].endswith("+09:00")
    assert clock.shown(finished) != finished or time.localtime().tm_gmtoff == 0


# -- progress ---------------------------------------------------------------------------------------------

class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_on_a_terminal_and_nothing_elsewhere() -> None:
    now = [0.0]
    term = Terminal()
    with progress.Progress("fetching C.AB.APP.0100.0000", 100 << 20, stream=term, clock=lambda: now[0]) as p:
        now[0] = 2.0
        p.add(20 << 20)
    assert "fetching C.AB.APP.0100.0000: 20.0 MiB of 100.0 MiB (20%)  10.0 MiB/s  0:08 left" in term.getvalue()
    assert term.getvalue().endswith("\r\033[K")  # the line is cleared for what follows
    piped = io.StringIO()
    with progress.Progress("x", 10, stream=piped) as p:
        p.add(10)
    assert piped.getvalue() == ""


def test_a_retry_says_when_it_tries_again() -> None:
    term = Terminal()
    text = progress.retrying("cannot reach mgr", 10, 2, 3, stream=term, now=0)
    at = time.strftime("%H:%M:%S", time.localtime(10))
    assert text == f"cannot reach mgr; retry 2 of 3 in 10s, at {at}"
    assert term.getvalue().endswith(f": {text}\n")
    piped = io.StringIO()
    progress.retrying("x", 1, 2, None, stream=piped)
    assert piped.getvalue() == ""


def test_packaging_shows_progress_on_a_terminal(tmp_path: Path) -> None:
    home = make_home(tmp_path / "mgr")
    src = tmp_path / "src"
    src.mkdir()
    (src / "data").write_bytes(os.urandom(1 << 20))
    cmd = f"{BIN / 'rdsft'} -c -g AB -r APP -v 0100 -i /opt/app {src}"
    proc = subprocess.run(["script", "-qec", cmd, "/dev/null"], env={**os.environ, "RDS_HOME": str(home)},
                          capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stdout
    assert f"packing {src}: ".encode() in proc.stdout and b"\r\033[K" in proc.stdout
    plain = run("rdsft", "-c", "-g", "AB", "-r", "APP", "-v", "0200", "-i", "/opt/app", str(src), home=home)
    assert (plain.stdout, plain.stderr) == ("C.AB.APP.0200.0000\n", "")


# -- Debian 12's python (3.11.2) has no tarfile filters ---------------------------------------------------

def test_extraction_without_tarfile_filters(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(archive, "HAS_FILTERS", False)
    payload = tmp_path / "p.tgz"
    with tarfile.open(payload, "w:gz") as tar:
        for name, mode in (("bin/tool", 0o6777), ("etc/conf", 0o666)):
            info = tarfile.TarInfo(name)
            info.mode, info.uid, info.gid, info.size = mode, 1234, 1234, 2
            tar.addfile(info, io.BytesIO(b"hi"))
    dest = tmp_path / "dest"
    archive.extract(payload, dest)
    assert (dest / "bin/tool").stat().st_mode & 0o7777 == 0o755
    assert (dest / "etc/conf").stat().st_mode & 0o7777 == 0o644
    if os.geteuid() == 0:
        assert (dest / "bin/tool").stat().st_uid == 0
    bad = tmp_path / "bad.tgz"
    with tarfile.open(bad, "w:gz") as tar:
        info = tarfile.TarInfo("../escape")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"hi"))
    from rds.errors import UnsafeArchive

    with pytest.raises(UnsafeArchive):
        archive.extract(bad, tmp_path / "dest2")
    assert not (tmp_path / "escape").exists()


def test_a_download_shows_progress_on_a_terminal(tree: Tree) -> None:
    mgr = tree.add("mgr")
    c1 = tree.add("c1", "mgr")
    c1.run("rdsft", "-a")
    pid = tree.package(files={"data": os.urandom(1 << 20).hex()})
    mgr.run("dcmjexe", "-r", pid, "-h", "c1")
    proc = subprocess.run(["script", "-qec", f"{BIN / 'rdsft'} -a", "/dev/null"], env=c1.env(), capture_output=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stdout
    assert f"\r\033[K{pid} from {mgr.path}: ".encode() in proc.stdout
    size = json.loads((mgr.path / "RDS" / pid / "manifest.json").read_text())["size"]
    assert f" of {progress.size_text(size)} (".encode() in proc.stdout


def test_the_shipped_logrotate_file_rotates_a_running_log(tmp_path: Path) -> None:
    """Nothing rotated, and after mv rds.log rds.log.1 a running rdsma kept writing to the moved file."""
    if shutil.which("logrotate") is None:
        assert os.environ.get("CI") != "true", "logrotate is not installed (bin/rds-test installs it)"
        pytest.skip("logrotate is not installed")
    home = Home.open(make_home(tmp_path / "NETMRDS"))
    logging.getLogger(f"rds.{home.path}").handlers.clear()
    lg = log.logger(home)
    lg.info("before rotation")
    (home.log_dir / "rdsma.out").write_text("resident output\n")
    conf = tmp_path / "rds.logrotate"
    shipped = (Path(__file__).resolve().parent.parent / "etc" / "rds.logrotate").read_text()
    conf.write_text(shipped.replace("/NETMRDS", str(home.path)))
    proc = subprocess.run(["logrotate", "-f", "-s", str(tmp_path / "state"), str(conf)], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    lg.info("after rotation")
    assert (home.log_dir / "rds.log.1").read_text().count("rotation") == 1  # delaycompress: .1 stays plain
    assert "after rotation" in (home.log_dir / "rds.log").read_text()
    assert (home.log_dir / "rdsma.out").read_text() == ""  # copytruncate: the writer's file stays
