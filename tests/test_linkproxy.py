"""The slow-link emulator itself (tests/linkproxy.py): bytes intact, the delay and the rate never beaten.

Only lower bounds are asserted: the proxy holds each piece at least its
serialization time and half the round trip, whatever the machine's load.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import threading
import time
from collections.abc import Iterator

import pytest
from linkproxy import LinkProxy


@pytest.fixture
def echo() -> Iterator[int]:
    """A server on 127.0.0.1 that sends back everything it gets."""
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=_echo, args=(conn,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    yield int(listener.getsockname()[1])
    listener.close()


def _echo(conn: socket.socket) -> None:
    with conn, contextlib.suppress(OSError):  # a cut (the proxy resets the connection) ends it
        while data := conn.recv(1 << 16):
            conn.sendall(data)


def _exchange(port: int, payload: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port)) as s:
        got = bytearray()
        sender = threading.Thread(target=s.sendall, args=(payload,))
        sender.start()
        while len(got) < len(payload):
            piece = s.recv(1 << 16)
            if not piece:
                break
            got += piece
        sender.join()
        return bytes(got)


def test_bytes_arrive_intact_and_counted(echo: int) -> None:
    proxy = LinkProxy(echo, rtt=0.01, rate=50e6)
    try:
        payload = os.urandom(3 << 20)
        got = _exchange(proxy.port, payload)
        assert hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()
        assert (proxy.up, proxy.down, proxy.connections) == (len(payload), len(payload), 1)
    finally:
        proxy.close()


def test_a_round_trip_costs_at_least_the_rtt(echo: int) -> None:
    proxy = LinkProxy(echo, rtt=0.2)
    try:
        with socket.create_connection(("127.0.0.1", proxy.port)) as s:
            for _ in range(3):
                start = time.monotonic()
                s.sendall(b"ping")
                assert s.recv(16) == b"ping"
                assert time.monotonic() - start >= 0.2
    finally:
        proxy.close()


def test_the_rate_limit_is_never_beaten(echo: int) -> None:
    rate = 2e6  # bytes a second, each way
    proxy = LinkProxy(echo, rate=rate)
    try:
        payload = os.urandom(1 << 20)
        start = time.monotonic()
        assert _exchange(proxy.port, payload) == payload
        assert time.monotonic() - start >= len(payload) / rate
    finally:
        proxy.close()


def test_cut_after_ends_the_first_connection_only(echo: int) -> None:
    proxy = LinkProxy(echo, cut_after=100_000)
    try:
        got = _exchange(proxy.port, os.urandom(1 << 20))
        assert len(got) == 100_000 and proxy.cuts == 1
        payload = os.urandom(1 << 20)
        assert _exchange(proxy.port, payload) == payload
    finally:
        proxy.close()
