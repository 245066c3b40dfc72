"""rds-serve against a hostile lower system (issue 13, part 1): what one session may cost it.

The attacks (tests/attacks.py) go straight into rds-serve's standard input,
as sshd hands it the forced command's channel; its peak memory is the
kernel's (wait4's ru_maxrss).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from attacks import MiB, body, serve_attack

from rds import wire
from rds.home import Home
from rds.transport import frames


@pytest.fixture
def upper(tmp_path: Path) -> Path:
    path = tmp_path / "mgr"
    (path / "rdsprm").mkdir(parents=True)
    (path / "rdsprm" / "RDSSETFL").write_text("HostName\tmgr\nServeIdleTimeout\t2s\n")
    Home.open(path)
    return path


def test_value_bomb_under_the_cap_is_refused_before_parsing(upper: Path) -> None:
    """40 MiB of ``[],[],...``: a 64 MiB frame took rds-serve to 1.7 GiB; now refused before it is parsed."""
    got = serve_attack("values", upper)
    assert got["answer"]["ok"] is False and "JSON values" in got["answer"]["message"]
    assert got["code"] == 1
    assert got["rss"] <= 256 * MiB, f"rds-serve peaked at {got['rss'] / MiB:.0f} MiB"


def test_values_in_strings_are_not_counted(upper: Path) -> None:
    """Commas and brackets inside strings (a result message) do not make a request too large."""
    assert frames.values(body("strings")) < 20
    got = serve_attack("strings", upper)
    assert got["answer"]["ok"] is True, got


def test_largest_legitimate_request_is_served(upper: Path) -> None:
    """A check-in from a host with 100,000 hosts below, with a 300-byte signed statement each, fits the bounds."""
    data = body("largest")
    assert len(data) <= wire.MAX_REQUEST and frames.values(data) <= wire.MAX_REQUEST_VALUES
    got = serve_attack("largest", upper)
    # taken in and parsed (its made-up statements are then judged by rds.service, not by the bounds)
    said = str(got["answer"].get("message", ""))
    assert "too large" not in said and "JSON values" not in said and "ASCII" not in said, got
    assert got["rss"] <= 256 * MiB, f"rds-serve peaked at {got['rss'] / MiB:.0f} MiB"


def test_request_at_both_limits_costs_under_256_mib(upper: Path) -> None:
    """The cap's bytes and the most values allowed, of the costliest kind (short strings): parsed, bounded."""
    data = body("heaviest")
    assert len(data) == wire.MAX_REQUEST and frames.values(data) == wire.MAX_REQUEST_VALUES
    got = serve_attack("heaviest", upper)
    assert "JSON values" not in got["answer"].get("message", "") and "too large" not in str(got["answer"])
    assert got["rss"] <= 256 * MiB, f"rds-serve peaked at {got['rss'] / MiB:.0f} MiB"


def test_request_over_the_cap_is_refused_from_its_header(upper: Path) -> None:
    """255 MiB announced, nothing sent: refused at once."""
    got = serve_attack("header", upper)
    assert got["answer"]["ok"] is False and "too large" in got["answer"]["message"]
    assert got["code"] == 1 and got["rss"] <= 64 * MiB and got["seconds"] < 1.5


def test_non_ascii_request_is_refused(upper: Path) -> None:
    got = serve_attack("wide", upper)
    assert got["answer"]["ok"] is False and "ASCII" in got["answer"]["message"] and got["code"] == 1


def test_idle_session_is_closed_after_the_timeout(upper: Path) -> None:
    """A session that sends nothing (not even a whole header) is told so and closed after ServeIdleTimeout."""
    got = serve_attack("idle", upper)
    assert got["answer"]["ok"] is False and "nothing received for 2s" in got["answer"]["message"]
    assert 1.5 < got["seconds"] < 30 and got["code"] == 0
    assert "closing the session" in (upper / "log" / "rds.log").read_text()


def test_a_header_that_promises_much_and_sends_little_costs_little(upper: Path) -> None:
    got = serve_attack("promise", upper)
    assert "nothing received" in got["answer"]["message"]
    assert got["rss"] <= 64 * MiB


def test_idle_sessions_of_one_lower_are_bounded(upper: Path) -> None:
    """More sessions than MAX_SESSIONS from one key: the rest are refused at once; another lower is not."""
    import json
    import os
    import subprocess

    from attacks import BIN

    from rds.transport import serve

    def start(lower: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen([str(BIN / "rds-serve"), "--lower", lower, "--home", str(upper)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                env={**os.environ, "SSH_ORIGINAL_COMMAND": ""})

    def hello(p: subprocess.Popen[bytes]) -> dict:  # type: ignore[type-arg]
        assert p.stdout is not None
        return json.loads(p.stdout.read(int.from_bytes(p.stdout.read(4), "big")))  # type: ignore[no-any-return]

    (upper / "rdsprm" / "RDSSETFL").write_text("HostName\tmgr\nServeIdleTimeout\t60s\n")
    procs: list[subprocess.Popen[bytes]] = [start("relay1") for _ in range(serve.MAX_SESSIONS + 3)]
    try:
        said = [hello(p) for p in procs]
        assert sum(h["ok"] is True for h in said) == serve.MAX_SESSIONS
        refused = [h for h in said if not h["ok"]]
        assert len(refused) == 3 and all("relay1 already has 16 sessions open here" in h["message"] for h in refused)
        other = start("relay2")
        procs.append(other)
        assert hello(other)["ok"] is True
    finally:
        for p in procs:
            p.kill()
            p.wait()
            for f in (p.stdin, p.stdout):
                if f is not None:
                    f.close()
    again = start("relay1")  # the slots are free again once the sessions ended
    try:
        assert hello(again)["ok"] is True
    finally:
        again.kill()
        again.wait()
        for f in (again.stdin, again.stdout):
            if f is not None:
                f.close()
