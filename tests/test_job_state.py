"""A job row whose state is outside the vocabulary (a damaged or hand-edited database) at the managing
server: it is said, bounded, in the log and in dcmstat, and every other job goes on."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from conftest import Tree, installs

GARBAGE = "W\x1b[2KAIT" + "x" * 5000  # a control sequence and far more than a line


def test_a_job_with_an_unknown_state_is_said_and_the_others_go_on(tmp_path: Path) -> None:
    tree = Tree(tmp_path / "hosts")
    mgr = tree.add("mgr")
    c1 = tree.add("c1", "mgr")
    c2 = tree.add("c2", "mgr")
    tree.check_in_upward(["c1", "c2"])
    first = tree.package(name="APP")
    second = tree.package(name="TOOL", install_dir="/opt/tool")
    mgr.run("dcmjexe", "-r", first, "-h", "c1", "-h", "c2")  # job 1
    mgr.run("dcmjexe", "-r", second, "-h", "c1")  # job 2
    db = sqlite3.connect(mgr.path / "GROUP" / "rds.db")
    with db:
        db.execute("UPDATE jobs SET state=? WHERE job_no=1 AND dest='c1'", (GARBAGE,))
    db.close()

    for host in (c1, c2, c1):
        host.run("rdsft", "-a")
    assert installs(c2) == 1  # the other destination of the same job
    assert (c1.installed("/opt/installs")).read_text().count("run") == 1  # job 2's script, once; job 1 not
    assert (c1.installed("/opt/tool") / "bin" / "app.sh").exists() and not c1.installed("/opt/app").exists()

    lines = [line for line in (mgr.home().log_dir / "rds.log").read_text().splitlines() if "job 1:c1" in line]
    assert lines and all("not a job state" in line and "rdsgroupid -d 1:c1" in line for line in lines)
    assert all("\x1b" not in line and len(line) < 400 for line in lines)
    assert len(lines) == 2  # once a check-in of c1: the two passes of c1

    proc = mgr.run("dcmstat", "-n", "1", "--json", check=False)
    assert proc.returncode == 31  # still running: nothing ended it
    rows = {r["dest"]: r for r in json.loads(proc.stdout)}
    assert rows["c2"]["status"] == "COMPLETE"
    assert rows["c1"]["status"] == "WAIT" and "not a job state" in rows["c1"]["message"]
    assert len(rows["c1"]["message"]) < 300 and "rdsgroupid -d 1:c1" in rows["c1"]["message"]
    table = mgr.run("dcmstat", "-n", "1", check=False).stdout
    assert "not a job state" in table and "\x1b" not in table
