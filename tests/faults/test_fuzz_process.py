"""Fuzzing at the process level: the real commands on homes whose files are corrupt or hostile.

A managing server ``mgr`` and a client ``c`` below it (homes on this machine) hold a job for c.
Then one or two of their files are broken (the state database, job records, manifests, payloads,
FORMAT, RDSSETFL...) and the real ``rdsft -a`` runs on c, ``rdsgroupid`` on c and ``dcmstat`` on
mgr.  Each exits with a code its man page lists, says at most one line on stderr, never a
traceback, and writes nothing outside the two homes.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

import chunkfiles
import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from faults.hostile import BIN, clean_stderr, documented_codes, json_values, snapshot

PACKAGE = "C.AB.APP.0100.0000"
JOB = 1  # the job for c that the pristine tree holds


def run(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "RDS_HOME": str(home), "RDS_LOCK_TIMEOUT": "3"}
    return subprocess.run([str(BIN / args[0]), *args[1:]], env=env, capture_output=True, text=True, timeout=120)


def settings_of(root: Path, name: str) -> str:
    lines = [f"HostName\t{name}", "RetryCount\t1", "RetryInterval\t0s", f"InstallRoot\t{root / name / 'root'}"]
    if name == "c":
        lines.append(f"ManagingHost\t{root / 'mgr'}")
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_pristine(tmp_path_factory.mktemp("pristine"))


def build_pristine(root: Path) -> Path:
    """mgr and c, c checked in, one package and one job for c waiting at mgr."""
    for name in ("mgr", "c"):
        (root / name / "rdsprm").mkdir(parents=True)
        (root / name / "rdsprm" / "RDSSETFL").write_text(settings_of(root, name))
        (root / name / "rdsprm" / ".cltwup_off").touch()
    (root / "src" / "bin").mkdir(parents=True)
    (root / "src" / "bin" / "app").write_text("echo app\n")
    (root / "script").write_text("#!/bin/sh\necho installed >> \"$RDS_INSTALL_DIR/../installs\"\n")
    for args in (("c", "rdsft", "-a"),
                 ("mgr", "rdsft", "-c", "-g", "AB", "-r", "APP", "-v", "0100", "-i", "/opt/app", "--script",
                  str(root / "script"), str(root / "src")),
                 ("mgr", "dcmjexe", "-r", PACKAGE, "-h", "c")):
        proc = run(root / args[0], *args[1:])
        assert proc.returncode == 0, proc.stderr
    return root


def done_once(root: Path) -> tuple[int, str | None, str | None]:
    """How many times the job's script ran on c (its own record), and the job's state and result in the
    managing server's database (read here with sqlite3, not through rds)."""
    record = root / "c" / "root" / "opt" / "installs"
    runs = len(record.read_text().splitlines()) if record.exists() else 0
    try:
        db = sqlite3.connect(f"file:{root / 'mgr' / 'GROUP' / 'rds.db'}?mode=ro", uri=True)
        try:
            job = db.execute("SELECT state FROM jobs WHERE job_no=? AND dest='c'", (JOB,)).fetchone()
            result = db.execute("SELECT status FROM results WHERE job_no=? AND dest='c'", (JOB,)).fetchone()
        finally:
            db.close()
    except (sqlite3.DatabaseError, UnicodeDecodeError) as e:  # a damaged schema may not even be UTF-8
        return runs, f"unreadable: {e}", None
    return runs, job[0] if job else None, result[0] if result else None


DELIVERABLE = ("WAIT", "HANDED", "INSTALLING", "DONE")  # the states of a job that the managing server hands out


def check_exit_zero(root: Path, broken: object) -> None:
    """``rdsft -a`` on c said it worked: the job, if the damage left it a job the managing server hands
    out, was installed exactly once and is COMPLETE there, or it ended in ERROR there (the damage made it
    impossible, and the managing server says so) without an install; if the damage erased it (an empty
    database, a state that is no state), it was never installed.  Never silently lost, never doubled."""
    runs, state, result = done_once(root)
    if state in DELIVERABLE:
        assert (runs, result) in ((1, "COMPLETE"), (0, "ERROR")), \
            f"rdsft -a exited 0 after {broken}: {(runs, state, result)}"
    else:
        assert runs == 0, f"rdsft -a exited 0 after {broken}: {(runs, state, result)}"


def copy_tree(pristine: Path, root: Path) -> None:
    for name in ("mgr", "c"):
        shutil.copytree(pristine / name, root / name, symlinks=True)
        (root / name / "rdsprm" / "RDSSETFL").write_text(settings_of(root, name))
    (root / "neighbour").mkdir()
    (root / "neighbour" / "file").write_text("must stay\n")


# -- what can be broken ------------------------------------------------------------------------------

def _sql(home: Path, *statements: tuple[str, tuple[Any, ...]]) -> None:
    db = sqlite3.connect(home / "GROUP" / "rds.db", isolation_level=None)
    try:
        for sql, args in statements:
            db.execute(sql, args)
    except sqlite3.DatabaseError:
        pass  # damaged already (an earlier damage of the same home): this one does not apply
    finally:
        db.close()


def _flip(path: Path, rng: random.Random, count: int) -> None:
    path.write_bytes(_flipped(bytearray(path.read_bytes()), rng, count))


def _flipped(data: bytearray, rng: random.Random, count: int) -> bytes:
    for _ in range(count if data else 0):
        i = rng.randrange(len(data))
        data[i] = rng.randrange(256)
    return bytes(data)


def corrupt(home: Path, kind: str, value: Any, seed: int) -> None:
    rng = random.Random(seed)
    text = value if isinstance(value, str) else json.dumps(value)
    pkg = home / "RDS" / PACKAGE
    if kind == "db-garbage":
        (home / "GROUP" / "rds.db").write_bytes(rng.randbytes(rng.choice([0, 10, 4096, 20000])))
    elif kind == "db-truncate":
        db = home / "GROUP" / "rds.db"
        with open(db, "r+b") as f:
            f.truncate(rng.randrange(db.stat().st_size + 1))
    elif kind == "db-flip":
        _flip(home / "GROUP" / "rds.db", rng, rng.choice([1, 10, 200]))
    elif kind == "job-record":
        _sql(home, ("UPDATE jobs SET record=?", (text,)))
    elif kind == "job-manifest":
        _sql(home, ("UPDATE jobs SET record=json_set(record, '$.manifest', json(?))", (json.dumps(value),)))
    elif kind == "job-columns":
        _sql(home, ("UPDATE jobs SET state=?, attempts=?, handed_to=?", (text[:20], value if isinstance(value, int)
                                                                        and abs(value) < 2**63 else text, text)))
    elif kind == "result-rows":
        _sql(home, ("INSERT OR REPLACE INTO results VALUES (1, ?, ?, ?, ?, NULL)", (text[:70], text, text, text)))
    elif kind == "route-rows":
        _sql(home, ("INSERT OR REPLACE INTO routes VALUES (?, ?, 0)", (text, text)),
             ("INSERT OR REPLACE INTO lowers VALUES (?, ?, 0)", (text, text)))
    elif kind == "schema":
        _sql(home, (rng.choice(["DROP TABLE jobs", "DROP TABLE routes", "PRAGMA user_version=99",
                                "PRAGMA user_version=1", "ALTER TABLE jobs RENAME COLUMN record TO r"]), ()))
    elif kind == "manifest" and pkg.is_dir():
        (pkg / "manifest.json").write_text(text)
    elif kind == "payload" and pkg.is_dir():  # the package's bytes: its payload, or one of its chunks
        listed = json.loads((pkg / "manifest.json").read_text()).get("chunks")
        name = rng.choice(listed)[0] if listed else None
        if name is None:
            _flip(pkg / "payload.tgz", rng, 3)
        else:  # a loose chunk file, or its place in a pack
            chunkfiles.change(home, name, lambda data: _flipped(data, rng, 3))
    elif kind == "package-dir" and pkg.is_dir():
        shutil.rmtree(pkg)
        pkg.write_text(text)  # a file where the package's directory was
    elif kind == "partial":
        (home / "RDS" / ".partial").mkdir(parents=True, exist_ok=True)
        (home / "RDS" / ".partial" / f"{PACKAGE}.{'0' * 16}.part").write_text(text * 100)
    elif kind == "format":
        (home / "FORMAT").write_text(text)
    elif kind == "settings":
        (home / "rdsprm" / "RDSSETFL").write_bytes(text.encode("utf-8", "surrogatepass"))
    elif kind == "lock-owner":
        (home / "run").mkdir(exist_ok=True)
        (home / "run" / "rdsft.owner").write_text(text)
    elif kind == "wuphosts":
        (home / "rdsprm" / "wuphosts").write_text(text)


KINDS = ["db-garbage", "db-truncate", "db-flip", "job-record", "job-manifest", "job-columns", "result-rows",
         "route-rows", "schema", "manifest", "payload", "package-dir", "partial", "format", "settings",
         "lock-owner", "wuphosts"]
hostile_values = st.sampled_from(["", "{}", "[]", "null", "x" * 70, '{"job": 1}', "\x00", "Infinity", "[" * 3000,
                                  json.dumps({"format": 1, "id": PACKAGE, "size": 1e400, "sha256": "a" * 64,
                                              "install_dir": "/opt/app"})]) | json_values()
damage = st.lists(st.tuples(st.sampled_from(["mgr", "c"]), st.sampled_from(KINDS), hostile_values,
                            st.integers(0, 2**32)), min_size=1, max_size=2)


@hsettings(max_examples=int(os.environ.get("RDS_FUZZ_PROCESS_EXAMPLES", 12)))
@given(damage)
def test_commands_on_broken_homes(tmp_path_factory: pytest.TempPathFactory, pristine: Path,
                                  broken: list[tuple[str, str, Any, int]]) -> None:
    root = tmp_path_factory.mktemp("broken")
    copy_tree(pristine, root)
    for host, kind, value, seed in broken:
        corrupt(root / host, kind, value, seed)
    outside = snapshot(root, skip=(root / "mgr", root / "c"))
    for host, *args in (("c", "rdsft", "-a"), ("c", "rdsft", "-a"), ("c", "rdsgroupid", "--json"),
                        ("mgr", "dcmstat", "--json")):
        proc = run(root / host, *args)
        assert proc.returncode in documented_codes(args[0]), \
            f"{' '.join(args)} on {host} after {broken}: exit {proc.returncode}\n{proc.stderr}"
        try:
            clean_stderr(proc.stderr)
        except AssertionError as e:
            raise AssertionError(f"{' '.join(args)} on {host} after {broken}: {e}") from None
        if args == ["rdsft", "-a"] and proc.returncode == 0:  # a pass that says it worked did the job
            check_exit_zero(root, broken)
    assert snapshot(root, skip=(root / "mgr", root / "c")) == outside
    shutil.rmtree(root)


def test_the_pristine_tree_installs(tmp_path: Path, pristine: Path) -> None:
    """The copy works as the original: unbroken, the job installs once (so the damage is what fails)."""
    copy_tree(pristine, tmp_path)
    assert run(tmp_path / "c", "rdsft", "-a").returncode == 0
    assert (tmp_path / "c" / "root" / "opt" / "installs").read_text() == "installed\n"
    assert done_once(tmp_path) == (1, "DONE", "COMPLETE")  # job JOB is the pristine tree's job



def broken_copy(tmp_path: Path, pristine: Path, host: str, kind: str, value: Any) -> Path:
    copy_tree(pristine, tmp_path)
    corrupt(tmp_path / host, kind, value, 0)
    return tmp_path


def test_a_job_record_that_is_not_json(tmp_path: Path, pristine: Path) -> None:
    """Bug found by fuzzing: a job record in the state database that was not JSON (or nested too deep) made
    every command that reads the jobs fail with JSONDecodeError (RecursionError) and a traceback: rdsft -a on
    the host itself, and the check-in of a lower system at the upper.  It is a JobRecordError now."""
    root = broken_copy(tmp_path / "a", pristine, "mgr", "job-record", "[" * 3000)
    proc = run(root / "c", "rdsft", "-a")
    assert proc.returncode == 252 and "rejected checkin: not a valid job record: not JSON" in proc.stderr
    clean_stderr(proc.stderr)
    root = broken_copy(tmp_path / "b", pristine, "c", "job-record", "")
    assert run(root / "c", "rdsft", "-a").returncode == 0  # the job comes from mgr...
    _sql(root / "c", ("UPDATE jobs SET state='WAIT', record='not json'", ()))  # ...and its record here breaks
    proc = run(root / "c", "rdsft", "-a")
    assert proc.returncode == 3 and "not a valid job record: not JSON: 'not json'" in proc.stderr
    clean_stderr(proc.stderr)


def test_a_corrupt_payload_at_the_managing_server_settles_the_job(tmp_path: Path, pristine: Path) -> None:
    """Found by the exit-0 check: the managing server removed a corrupt payload but left its job handed out;
    the client's pass exited 0 and the job waited for ever.  Now the job ends in ERROR, reported once."""
    root = broken_copy(tmp_path, pristine, "mgr", "payload", "")
    codes = [run(root / "c", "rdsft", "-a").returncode for _ in range(2)]
    runs, state, result = done_once(root)
    assert runs == 0 and result == "ERROR", (codes, runs, state, result)  # settled: not waiting for ever


def test_a_job_record_without_its_manifest(tmp_path: Path, pristine: Path) -> None:
    """Bug found by fuzzing: a job record whose manifest was missing made the check-in at the upper system
    fail with KeyError: a traceback in the lower system's rdsft -a."""
    copy_tree(pristine, tmp_path)
    _sql(tmp_path / "mgr", ("UPDATE jobs SET record=json_remove(record, '$.manifest')", ()))
    root = tmp_path
    proc = run(root / "c", "rdsft", "-a")
    assert proc.returncode == 252 and "its record holds no valid manifest" in proc.stderr
    clean_stderr(proc.stderr)


def test_a_manifest_nested_too_deep(tmp_path: Path, pristine: Path) -> None:
    """Bug found by fuzzing: a manifest.json in the upper's storehouse nested too deep for json made the
    check-in raise RecursionError: a traceback in the lower system's rdsft -a."""
    root = broken_copy(tmp_path, pristine, "mgr", "manifest", "[" * 3000)
    proc = run(root / "c", "rdsft", "-a")
    assert proc.returncode == 252 and "unreadable manifest" in proc.stderr
    clean_stderr(proc.stderr)


def test_a_schema_that_is_not_utf8(tmp_path: Path, pristine: Path) -> None:
    """Bug found by fuzzing (flipped bytes in rds.db): sqlite's error for a damaged schema quoted bytes that
    are not UTF-8, so reading the message raised UnicodeDecodeError, and every command printed a traceback."""
    root = broken_copy(tmp_path, pristine, "mgr", "job-record", "")
    _sql(root / "mgr", ("PRAGMA writable_schema=ON", ()),
         ("UPDATE sqlite_master SET name = CAST(x'c6' AS TEXT), sql = 'CREATE TABLE jobs (a,' WHERE name='jobs'", ()))
    for host, args, code in (("mgr", ("dcmstat", "--json"), 2), ("c", ("rdsft", "-a"), 253)):
        proc = run(root / host, *args)
        assert proc.returncode == code and "its schema is damaged" in proc.stderr, proc.stderr
        clean_stderr(proc.stderr)


def test_text_that_is_not_utf8_in_a_row(tmp_path: Path, pristine: Path) -> None:
    """A row whose text is not UTF-8 is sqlite3's one-line error, exit 254."""
    root = broken_copy(tmp_path, pristine, "mgr", "job-record", "")
    _sql(root / "mgr", ("UPDATE jobs SET package = CAST(x'41c6' AS TEXT)", ()))
    proc = run(root / "mgr", "dcmstat", "--json")
    assert proc.returncode == 254 and "Could not decode to UTF-8" in proc.stderr
    clean_stderr(proc.stderr)
