"""dcmjbrm and dcmrtry take a job's destinations the same way (rds.cli.job_destinations)."""

from __future__ import annotations

import json

import pytest
from conftest import Tree


@pytest.mark.parametrize("command", ["dcmjbrm", "dcmrtry"])
def test_hosts_without_h_are_a_usage_error_not_every_destination(tree: Tree, command: str) -> None:
    """Regression: ``dcmjbrm -n 1 web01`` (the -h forgotten) withdrew the whole job; now nothing changes."""
    mgr = tree.add("mgr")
    mgr.run("dcmjexe", "-r", tree.package(), "-h", "web01", "web02")
    proc = mgr.run(command, "-n", "1", "web01", check=False)
    assert (proc.returncode, proc.stdout) == (1, "")
    assert proc.stderr == f"{command}: unexpected argument 'web01' (hosts go after -h)\n"
    rows = json.loads(mgr.run("dcmstat", "--json", check=False).stdout)
    assert sorted((r["dest"], r["status"]) for r in rows) == [("web01", "WAIT"), ("web02", "WAIT")]


def test_several_hosts_after_h_are_those_destinations(tree: Tree) -> None:
    mgr = tree.add("mgr")
    mgr.run("dcmjexe", "-r", tree.package(), "-h", "web01", "web02", "web03")
    out = json.loads(mgr.run("dcmjbrm", "-n", "1", "-h", "web01", "web03", "--json").stdout)
    assert out["withdrawn"] == 2
    rows = json.loads(mgr.run("dcmstat", "--json", check=False).stdout)
    assert sorted((r["dest"], r["status"]) for r in rows) == [("web01", "DELETE"), ("web02", "WAIT"),
                                                               ("web03", "DELETE")]
