"""A link cut 20 times during one 256 MiB transfer over SSH (issue 7, point 2).

By default 10 cuts of a 128 MiB package (the same density of cuts);
RDS_FAULT_TRIALS=full runs bench/faults' 20 cuts of 256 MiB.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import sshd

from faults.conftest import trials
from faults.runners import network

pytestmark = pytest.mark.skipif(not sshd.have_sshd() and os.environ.get("CI") != "true",
                                reason="OpenSSH's sshd is not installed (bin/rds-test installs it)")


def test_cut_link_resumes_and_moves_at_most_1_1_times_the_package(tmp_path: Path) -> None:
    n = trials(10, 20)
    row = network(tmp_path, n, seed=13, size=(256 << 20) * n // 20)
    assert row.failed == [], row
    assert (row.trials, row.lost, row.doubled) == (n, 0, 0) and row.ok, row


def cuts(tmp_path: Path, reset: bool, n: int) -> list[tuple[int, int]]:
    """Cut ``rdsft -a`` ``n`` times at random points of a 32 MiB package; for each cut run:
    (bytes the proxy passed down, bytes that run kept)."""
    import random

    from sshd import make_package

    from faults.runners import cut_link

    rng = random.Random(17)
    with cut_link(tmp_path) as (_, mgr, relay, proxy):
        relay.run("rdsft", "-a")
        m = make_package(mgr.path, 32 << 20)
        mgr.run("dcmjexe", "-r", str(m.id), "-h", "relay1")
        part = relay.path / "RDS" / ".partial" / f"{m.id}.{m.sha256[:16]}.part"
        out = []
        for _ in range(n):
            have, down = part.stat().st_size if part.exists() else 0, proxy.down
            proxy.reset = reset
            proxy.cut_after = down + rng.randint(64 << 10, (m.size - have) // 2)
            proc = relay.run("rdsft", "-a", check=False)
            assert proc.returncode == 253, proc.stderr
            out.append((proxy.down - down, part.stat().st_size - have))
        return out


def test_hang_ups_lose_at_most_the_last_packet(tmp_path: Path) -> None:
    """Each hang-up costs at most the SSH packet it fell in (and the next run's check-in)."""
    for down, kept in cuts(tmp_path, reset=False, n=4):
        assert down - kept < 512 << 10, (down, kept)


def test_resets_of_a_resumed_download_lose_at_most_what_was_in_flight(tmp_path: Path) -> None:
    """Bug: a reset link loses what sat in the lower system's socket buffer (up to several MiB on
    loopback, depending on how far the reader lags): 20 resets of a 64 MiB transfer moved 1.35x
    the package (the network row of bench/faults).  A resumed download now asks for RESUME_READ
    bytes at a time, and keeps only as many requests in flight as fill the link (issue 16): two on
    loopback, whose round trip is short, so after the first cut a reset loses at most that much;
    this test holds each cut to that bound (a single run shows the old loss only when the reader
    lags)."""
    from rds.transport.link import RESUME_READ

    first, *resumed = cuts(tmp_path, reset=True, n=8)
    for down, kept in resumed:
        assert down - kept < 2 * RESUME_READ + (256 << 10), (down, kept)


def test_window_adjustment_on_a_dead_link_does_not_raise() -> None:
    """Bug: Channel.recv takes the data from its buffer, then sends a window adjustment; on a
    link that had just ended that send raised EOFError and the data taken was lost (see above).
    The transport now drops a message it cannot send, as paramiko does once it knows the link is
    dead, and the next receive reports the end.  paramiko's own Transport, in the same state,
    raises (so the state is the one of the bug); rds's returns, having sent nothing."""
    import socket

    import paramiko

    from rds.transport import connection

    def send_on_dead_link(cls: type[paramiko.Transport]) -> tuple[BaseException | None, int]:
        a, b = socket.socketpair()
        b.close()
        t = cls(a)
        sent = 0
        real = t.packetizer.send_message

        def counting(m: paramiko.Message) -> None:
            nonlocal sent
            sent += 1
            real(m)

        t.packetizer.send_message = counting  # type: ignore[method-assign]
        try:
            t.active = True  # as between the peer's hang-up and the transport thread noticing it
            t.clear_to_send.set()
            m = paramiko.Message()
            m.add_byte(bytes([paramiko.common.MSG_IGNORE]))
            t._send_user_message(m)
            return None, sent
        except (EOFError, OSError) as e:
            return e, sent
        finally:
            t.active = False
            a.close()

    raised, tried = send_on_dead_link(paramiko.Transport)
    assert isinstance(raised, (EOFError, OSError)) and tried == 1, (raised, tried)
    assert send_on_dead_link(connection.transport_class()) == (None, 1)  # tried once, and dropped it
