"""rds-serve's idle timeout over real sshd (issue 13, part 1): a pass whose scripts outlast it still reports.

rds-serve closes a session that sends no request for ServeIdleTimeout; a pass
holds its session while its own install scripts run, so it sends its results
on a new session when the old one was closed meanwhile.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest
import sshd
from conftest import Tree
from sshd import Sshd, serve_command
from test_ssh import laid_out, ssh_settings

pytestmark = pytest.mark.skipif(not sshd.have_sshd() and os.environ.get("CI") != "true",
                                reason="OpenSSH's sshd is not installed (bin/rds-test installs it)")

sshd_factory = sshd.sshd_factory
Factory = Callable[..., Sshd]


def test_results_are_sent_after_scripts_outlasted_the_idle_timeout(tree: Tree, sshd_factory: Factory) -> None:
    server = sshd_factory()
    mgr = laid_out(tree.add("mgr", settings="ServeIdleTimeout\t1s\n"))
    key = server.add_key("relay1", command=serve_command("relay1", mgr.path))
    server.start()
    relay = tree.add("relay1", settings=ssh_settings(server, key))
    relay.run("rdsft", "-a")
    mgr.run("dcmjexe", "-r", tree.package(script="#!/bin/sh\nsleep 3\n"), "-h", "relay1")
    out = relay.run("rdsft", "-a").stdout
    assert "results sent: 1" in out
    assert "nothing received for 1s; closing the session" in (mgr.path / "log" / "rds.log").read_text()
    assert "COMPLETE" in mgr.run("dcmstat").stdout
