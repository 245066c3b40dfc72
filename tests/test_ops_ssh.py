"""Withdrawal (with its race against an install) and a wave's halt over real sshd (tests/sshd.py):
mgr > relay1 > client1, client2, client3, every link over SSH with the forced commands rdslink writes.

What ran is counted from the install script's own record (one line per run, with the job number);
what dcmstat says is read from its JSON.
"""

from __future__ import annotations

import json
import os
import random
import subprocess

import pytest
import sshd
from conftest import BIN, Host, Tree
from testkit import Fleet, fleet_fixture

pytestmark = pytest.mark.skipif(not sshd.have_sshd() and os.environ.get("CI") != "true",
                                reason="OpenSSH's sshd is not installed (bin/rds-test installs it)")

FLEET = [("relay1", "mgr"), ("client1", "relay1"), ("client2", "relay1"), ("fail3", "relay1")]
RECORD = ("#!/bin/sh\ncase \"$RDS_HOST\" in fail*) exit 3;; esac\n"
          "echo \"$RDS_JOB\" >> \"$RDS_INSTALL_DIR/../installs\"\n")


built = fleet_fixture(FLEET, ["client1", "client2", "fail3", "relay1"])


@pytest.fixture
def fleet(built: Fleet) -> Tree:
    return built.laid_out()


def runs(host: Host, job: int) -> int:
    f = host.installed("/opt/installs")
    return f.read_text().split().count(str(job)) if f.exists() else 0


def status(tree: Tree, job: int) -> dict[str, str]:
    rows = json.loads(tree["mgr"].run("dcmstat", "-n", str(job), "--json", check=False).stdout)
    return {r["dest"]: r["status"] for r in rows}


def rounds(tree: Tree, names: list[str]) -> None:
    for n in names:
        assert tree[n].run("rdsft", "-a", check=False).returncode in (0, 4)


def test_withdrawal_over_ssh_reaches_the_relay_and_the_client(fleet: Tree) -> None:
    tree = fleet
    pid = tree.package(script=RECORD)
    n = int(tree["mgr"].run("dcmjexe", "-r", pid, "-h", "client1", "client2").stdout)
    rounds(tree, ["relay1"])
    # client2 takes its job and stops before it begins (killed after the acknowledgement)
    tree["client2"].run("rdsft", "-a", check=False, env=tree["client2"].env(RDS_CRASH_AT="acked"))
    out = json.loads(tree["mgr"].run("dcmjbrm", "-n", str(n), "--json").stdout)
    assert out["sent_down"] == 2
    rounds(tree, ["relay1", "client1", "client2", "relay1"])
    assert (runs(tree["client1"], n), runs(tree["client2"], n)) == (0, 0)
    assert status(tree, n) == {"client1": "DELETE", "client2": "DELETE"}


def test_withdrawal_racing_installs_over_ssh_ends_with_exactly_one_each_time(fleet: Tree) -> None:
    """dcmjbrm at a random moment of the client's pass over SSH, several times: each job ends installed
    (COMPLETE) or withdrawn (DELETE), never both, never neither, and dcmstat agrees with the script's record."""
    tree = fleet
    pid = tree.package(script=RECORD)
    rng = random.Random(15)
    seen = set()
    for _ in range(6):
        n = int(tree["mgr"].run("dcmjexe", "-r", pid, "-h", "client1").stdout)
        rounds(tree, ["relay1"])
        client = subprocess.Popen([str(BIN / "rdsft"), "-a"], env=tree["client1"].env(),
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            # dcmjbrm runs while the pass checks in, acknowledges or installs (it starts in ~0.3-1 s)
            subprocess.run(["sleep", f"{rng.uniform(0.0, 1.2):.2f}"], check=True)
            tree["mgr"].run("dcmjbrm", "-n", str(n))
        finally:
            client.wait(timeout=60)
        rounds(tree, ["relay1", "client1", "relay1", "client1", "relay1"])
        ran, said = runs(tree["client1"], n), status(tree, n)["client1"]
        assert (ran, said) in ((1, "COMPLETE"), (0, "DELETE")), (n, ran, said)
        seen.add(said)
    assert seen  # which of the two won each time depends on the moment; both are right


def test_a_wave_halts_over_ssh_and_no_further_destination_receives_it(fleet: Tree) -> None:
    tree = fleet
    pid = tree.package(script=RECORD)
    n = int(tree["mgr"].run("dcmjexe", "-r", pid, "--waves", "1,2,3", "--fail-limit", "0",
                            "-h", "client1", "fail3", "client2").stdout)
    rounds(tree, ["relay1", "client1", "fail3", "client2", "relay1"])  # wave 1: client1
    rounds(tree, ["relay1", "client1", "fail3", "client2", "relay1"])  # wave 2: fail3 fails: halted
    rows = json.loads(tree["mgr"].run("dcmstat", "-n", str(n), "--json", check=False).stdout)
    by = {r["dest"]: r for r in rows}
    assert (by["client1"]["status"], by["fail3"]["status"], by["client2"]["status"]) == ("COMPLETE", "ERROR", "WAIT")
    assert by["client2"]["message"].startswith("suspended: halted in wave 2 of 3")
    rounds(tree, ["relay1", "client2", "relay1"])
    assert runs(tree["client2"], n) == 0
    assert "halted in wave 2 of 3" in (tree["mgr"].path / "log" / "rds.log").read_text()
