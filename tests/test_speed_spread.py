"""rdsma spreads its polls and connection retries carry jitter (issue 16): bounds checked with seeded
random numbers, and the loop itself driven without waiting for a clock."""

from __future__ import annotations

import random
import time

import pytest
from conftest import Tree
from sshd import free_port

from rds import daemon, transport
from rds.errors import CommunicationError
from rds.home import Home


def test_the_second_poll_falls_anywhere_within_the_interval() -> None:
    rng = random.Random(16)
    waits = [daemon.first_wait(300.0, rng.random) for _ in range(1000)]
    assert all(0.0 <= w <= 300.0 for w in waits)
    # a thousand hosts started together: no 30-second slice of the interval gets more than 15% of them
    counts = [sum(1 for w in waits if i * 30 <= w < (i + 1) * 30) for i in range(10)]
    assert max(counts) <= 150 and min(counts) >= 50, counts
    assert daemon.first_wait(300.0, lambda: 2.0) == 300.0 and daemon.first_wait(300.0, lambda: -1.0) == 0.0


def test_retry_waits_are_the_interval_give_or_take_half() -> None:
    rng = random.Random(7)
    waits = [transport.retry_wait(10.0, rng.random) for _ in range(1000)]
    assert all(5.0 <= w <= 15.0 for w in waits)
    assert len({round(w, 1) for w in waits}) > 50  # not one value: hosts do not retry in step
    assert transport.retry_wait(10.0, lambda: 0.0) == 5.0 and transport.retry_wait(10.0, lambda: 1.0) == 15.0


def test_connect_retries_with_jittered_waits_and_says_them(tree: Tree) -> None:
    tree.add("mgr")
    port = free_port()  # nothing listens there
    c = tree.add("c", settings=f"ManagingHost\tssh://127.0.0.1:{port}\n")
    rdssetfl = c.path / "rdsprm" / "RDSSETFL"
    rdssetfl.write_text(rdssetfl.read_text().replace("RetryCount\t1", "RetryCount\t3")
                        .replace("RetryInterval\t0s", "RetryInterval\t2"))
    slept: list[float] = []
    said: list[str] = []
    draws = iter([0.0, 0.5, 1.0])
    with pytest.raises(CommunicationError):
        transport.connect(Home.open(c.path), sleep=slept.append, log=said.append, rand=lambda: next(draws))
    assert slept == [10.0, 20.0, 30.0]  # RetryInterval 2 = 20 s, give or take half
    assert [s.split("; ")[-1].split(", at")[0] for s in said] == \
        ["retry 1 of 3 in 10s", "retry 2 of 3 in 20s", "retry 3 of 3 in 30s"]


def test_rdsma_polls_again_after_the_part_of_the_interval_drawn(tree: Tree) -> None:
    """An hour's interval and a draw of 0: the second pass comes at once (without the spread, in an hour)."""
    home = Home.open(tree.add("c").path)
    passes: list[float] = []

    def one_pass() -> str:
        passes.append(time.monotonic())
        return ""

    resident = daemon.Resident(home, "rdsma", one_pass, 3600.0, spread=lambda: 0.0)
    assert resident.run(max_passes=2) == 2 and len(passes) == 2
