"""A slow link on loopback: a TCP proxy that adds delay and a rate limit (the kernel's netem is not here).

``LinkProxy(port, rtt=0.1, rate=20e6 / 8)`` listens on a free 127.0.0.1 port
and relays every connection to ``port``.  Each direction is a line of its own:
a piece of data leaves after the pieces before it, at ``rate`` bytes a second
(its serialization time), and arrives ``rtt / 2`` later.  What the line holds
is bounded (its bandwidth-delay product, plus a little), so the sender's TCP
sees a full line and waits, as on a real link: no more can be in flight than
the line carries, and a protocol that waits for an answer before asking
again pays a round trip each time.

``cut_after``: end the first connection once that many bytes went from the
server to the client (later connections go through).  ``down``/``up``: bytes
relayed each way over all connections; ``connections``: how many were made.
Used by the tests (tests/test_linkproxy.py, tests/test_speed*.py) and by the
benches (bench/slowlink); run as a script it relays until interrupted::

    python tests/linkproxy.py PORT --rtt-ms 100 --mbit 20
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import socket
import threading
import time

PIECE = 16 << 10  # received and sent at most this much at once: the line's granularity
SLACK = 64 << 10  # what the line holds beyond its bandwidth-delay product (a router's queue)


class _Line:
    """One direction of one connection: pieces queued with the time each arrives at the far end."""

    def __init__(self, delay: float, rate: float | None) -> None:
        self.delay = delay
        self.rate = rate
        self.capacity = SLACK + (int(rate * 2 * delay) if rate else 1 << 20)
        self.held = 0
        self.pieces: collections.deque[tuple[float, bytes]] = collections.deque()
        self.free_at = 0.0  # when the line has finished sending what it took so far
        self.closed = False
        self.cond = threading.Condition()

    def put(self, data: bytes) -> None:
        with self.cond:
            while self.held + len(data) > self.capacity and self.pieces and not self.closed:
                self.cond.wait()
            now = time.monotonic()
            self.free_at = max(now, self.free_at) + (len(data) / self.rate if self.rate else 0.0)
            self.pieces.append((self.free_at + self.delay, data))
            self.held += len(data)
            self.cond.notify_all()

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify_all()

    def take(self) -> bytes | None:
        """The next piece once it has arrived; None when the line is closed and empty."""
        with self.cond:
            while not self.pieces:
                if self.closed:
                    return None
                self.cond.wait()
            due, data = self.pieces[0]
        wait = due - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        with self.cond:
            self.pieces.popleft()
            self.held -= len(data)
            self.cond.notify_all()
        return data


class Listener:
    """Listens on a free 127.0.0.1 port (``port``) for connections to relay to ``target``, each handed to
    ``accepted`` on the listening thread, until ``close``.  A subclass sets its own state first, then calls
    this ``__init__``: the thread starts at once."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self._stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True, name=type(self).__name__).start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.accepted(conn)

    def accepted(self, conn: socket.socket) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self._stop.set()
        self.listener.close()


class LinkProxy(Listener):
    """A TCP relay on 127.0.0.1 to ``port`` with ``rtt`` seconds of round trip and ``rate`` bytes a second."""

    def __init__(self, port: int, rtt: float = 0.0, rate: float | None = None, cut_after: int | None = None) -> None:
        self.delay = rtt / 2
        self.rate = rate
        self.cut_after = cut_after
        self.down = self.up = 0
        self.connections = 0
        self.cuts = 0
        self._lock = threading.Lock()
        self._socks: list[socket.socket] = []
        super().__init__(port)

    def accepted(self, conn: socket.socket) -> None:
        try:
            server = socket.create_connection(("127.0.0.1", self.target))
        except OSError:
            conn.close()
            return
        with self._lock:
            self.connections += 1
            self._socks += [conn, server]
        for s in (conn, server):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._pair(conn, server, down=False)
        self._pair(server, conn, down=True)

    def _pair(self, src: socket.socket, dst: socket.socket, down: bool) -> None:
        line = _Line(self.delay, self.rate)
        threading.Thread(target=self._receive, args=(src, dst, line, down), daemon=True).start()
        threading.Thread(target=self._deliver, args=(src, dst, line), daemon=True).start()

    def _receive(self, src: socket.socket, dst: socket.socket, line: _Line, down: bool) -> None:
        try:
            while True:
                data = src.recv(PIECE)
                if not data:
                    break
                if down and self.cut_after is not None:
                    with self._lock:
                        cut, left = self.cut_after is not None and self.down + len(data) >= self.cut_after, 0
                        if cut:
                            assert self.cut_after is not None
                            left = max(0, self.cut_after - self.down)
                            self.cut_after = None  # one cut; the next connection goes through
                            self.cuts += 1
                    if cut:
                        line.put(data[:left])
                        self._count(left, down)
                        break
                line.put(data)
                self._count(len(data), down)
        except OSError:
            pass
        line.close()

    def _count(self, n: int, down: bool) -> None:
        with self._lock:
            if down:
                self.down += n
            else:
                self.up += n

    def _deliver(self, src: socket.socket, dst: socket.socket, line: _Line) -> None:
        try:
            while (data := line.take()) is not None:
                dst.sendall(data)
        except OSError:
            pass
        # the line ended (or was cut): the far end sees the stream end, and so does the near one
        for s in (dst, src):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        super().close()
        with self._lock:
            for s in self._socks:
                with contextlib.suppress(OSError):
                    s.close()


def main() -> None:
    p = argparse.ArgumentParser(description="relay 127.0.0.1:PORT through a slow link until interrupted")
    p.add_argument("port", type=int)
    p.add_argument("--rtt-ms", type=float, default=100.0)
    p.add_argument("--mbit", type=float, default=20.0)
    a = p.parse_args()
    proxy = LinkProxy(a.port, a.rtt_ms / 1000, a.mbit * 1e6 / 8)
    print(proxy.port, flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        threading.Event().wait()


if __name__ == "__main__":
    main()
