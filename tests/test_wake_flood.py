"""Startup requests are rate-limited (issue 13, part 7).

200 startup requests in a loop through the rds-wake forced command, with no
rdsma running, started 200 full ``rdsft -a`` passes (50 at a time: 164
passes at once, 4 GiB RSS, 61 lock timeouts).  A wake while a pass runs, is
starting or began less than StartupInterval ago now only marks "run again
once".
"""

from __future__ import annotations

import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

from conftest import BIN, Host, Tree, wait_for

from rds import startup


def passes(host: Host) -> int:
    """Passes that ran, by their own output (each rdsft -a prints one summary line)."""
    out = host.path / "log" / "startup.out"
    return out.read_text().count("jobs received:") if out.exists() else 0


def idle(host: Host) -> bool:
    """No pass started by a wake runs or is starting (rds.startup's lock is free)."""
    import fcntl
    import os

    fd = os.open(host.path / "run" / startup.WAKE_LOCK, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


MARKED = "rds-wake: a pass runs or ran just now: marked to run again once"


def wake(host: Host) -> str:
    proc = subprocess.run([str(BIN / "rds-wake"), "--home", str(host.path)], input="\n", capture_output=True,
                          text=True, env={**host.env(), "SSH_ORIGINAL_COMMAND": "rds-wake; reboot"}, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def flood(host: Host, n: int, at_once: int) -> list[str]:
    with ThreadPoolExecutor(at_once) as pool:
        return list(pool.map(lambda _: wake(host), range(n)))


def test_a_flood_of_wakes_starts_at_most_two_passes(tree: Tree) -> None:
    tree.add("mgr")
    relay = tree.add("relay", "mgr", "StartupInterval\t20s\n", push=True)
    relay.run("rdsft", "-a")
    began = time.monotonic()
    said = flood(relay, 200, 50)
    took = time.monotonic() - began
    wait_for(lambda: idle(relay) and passes(relay) >= 1, timeout=120)
    assert said.count("rds-wake: started rdsft -a") >= 1
    assert said.count("rds-wake: started rdsft -a") + said.count(MARKED) == 200
    # one pass, and one run again StartupInterval after it began; one more per interval the flood lasted
    assert passes(relay) <= 2 + int(took // 20), (passes(relay), took)
    assert "Lock" not in (relay.path / "log" / "startup.out").read_text()


def test_a_wake_after_the_interval_starts_a_new_pass_at_once(tree: Tree) -> None:
    tree.add("mgr")
    relay = tree.add("relay", "mgr", "StartupInterval\t0s\n", push=True)
    relay.run("rdsft", "-a")
    assert wake(relay) == "rds-wake: started rdsft -a"
    wait_for(lambda: idle(relay) and passes(relay) == 1)
    assert wake(relay) == "rds-wake: started rdsft -a"
    wait_for(lambda: idle(relay) and passes(relay) == 2)


def test_a_wake_within_the_interval_is_served_by_one_pass_at_its_end(tree: Tree) -> None:
    tree.add("mgr")
    relay = tree.add("relay", "mgr", "StartupInterval\t10s\n", push=True)
    relay.run("rdsft", "-a")
    assert wake(relay) == "rds-wake: started rdsft -a"
    wait_for(lambda: idle(relay) and passes(relay) == 1)  # a lone wake: one pass, and its process ends
    first = (relay.path / "run" / startup.WAKE_LAST).stat().st_mtime
    said = [wake(relay) for _ in range(5)]
    assert said[0] == "rds-wake: started rdsft -a" and said[1:] == [MARKED] * 4  # it waits for the interval
    wait_for(lambda: idle(relay) and passes(relay) == 2, timeout=60)
    assert (relay.path / "run" / startup.WAKE_LAST).stat().st_mtime - first >= 9.9


def test_the_mark_left_as_a_pass_ends_is_not_lost(tree: Tree, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A wake that finds the lock held just before the pass releases it leaves a mark the pass takes up."""
    import fcntl
    import os

    relay = tree.add("relay")
    home = relay.home()
    fd = os.open(home.run / startup.WAKE_LOCK, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    monkeypatch.setenv(startup.WAKE_FD, str(fd))
    ran: list[int] = []
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)

    def one_pass() -> int:
        ran.append(len(ran))
        if len(ran) == 1:
            (home.run / startup.WAKE_AGAIN).touch()  # a wake during the first pass
        return len(ran)

    assert startup.woken_passes(home, one_pass, sleep=sleep) == 2
    interval = home.settings.startup_interval
    assert ran == [0, 1] and len(slept) == 2 and slept[0] == 0 and interval - 5 < slept[1] <= interval
    assert not (home.run / startup.WAKE_AGAIN).exists()
    assert idle(relay)

