"""The protocol between two homes on one machine, without SSH.

``LocalLink`` is the Link (rds.client) that ``ManagingHost PATH`` gives: it
hands each request to an UpperService (rds.service) of the upper home, which
rds.transport makes.  Each request is encoded to JSON and decoded again on
the way in and out, so that the local path carries exactly what the SSH path
carries.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from rds import wire
from rds.errors import CommunicationError, RdsError, Refused
from rds.home import Home
from rds.service import UpperService
from rds.storehouse import Block


def upper_home(target: str) -> Home:
    """The upper system's home at ``target``, a path on this machine."""
    path = Path(target)
    if not path.is_dir():
        raise CommunicationError(f"upper system {target}: no such directory")
    try:
        return Home.open(path, create=False)  # never made here: it may have been moved away just now
    except RdsError as e:
        raise CommunicationError(f"upper system {target}: {e}") from None


class LocalLink:
    def __init__(self, service: UpperService, where: str) -> None:
        self.service = service
        self.where = where
        self._sent: list[dict[str, Any]] = []

    def hello(self) -> str:
        """The upper system's name (the same rds on both sides: no protocol to compare)."""
        return self.service.home.host

    def send(self, msg: dict[str, Any]) -> None:
        self._sent.append(msg)  # answered when its answer is read, as rds-serve answers in turn

    def receive(self) -> dict[str, Any]:
        return self.call(self._sent.pop(0))

    def call(self, msg: dict[str, Any]) -> dict[str, Any]:
        try:
            reply = self.service.handle(json.loads(json.dumps(msg)))
        except RdsError as e:  # the upper home itself is broken
            raise CommunicationError(f"upper system {self.where}: {e}") from None
        return json.loads(json.dumps(reply))  # type: ignore[no-any-return]

    def read(self, package: str, offset: int, length: int, out: BinaryIO) -> None:
        self._blocks(package, "read", lambda: self.service.read(package, offset, length), out)

    def _blocks(self, package: str, op: str, ask: Callable[[], Iterator[Block]], out: BinaryIO) -> None:
        try:
            blocks = ask()
        except Refused as e:
            raise Refused(f"{self.where} refused {op}: {e}") from None
        while True:
            try:
                block = next(blocks, None)
            except OSError as e:
                raise CommunicationError(f"upper system {self.where}: reading {package}: {e.strerror}") from None
            if block is None:
                return
            out.write(block if isinstance(block, bytes) else block.read())  # an error here is this host's own

    def read_ranges(self, package: str, ranges: list[tuple[int, int]], out: BinaryIO) -> None:
        """Several byte ranges of ``package``, back to back (a chunked package's lacking chunks), in
        requests as rds.transport.link sends them."""
        todo = [[o + k, min(wire.READ_MAX, n - k)] for o, n in ranges for k in range(0, n, wire.READ_MAX)]
        i = 0
        while i < len(todo):
            batch: list[list[int]] = []
            total = 0
            while i < len(todo) and len(batch) < wire.MAX_RANGES and (not batch or total + todo[i][1] <= wire.READ_MAX):
                total += todo[i][1]
                batch.append(todo[i])
                i += 1
            self._blocks(package, "ranges", lambda b=batch: self.service.read_ranges(package, b), out)  # type: ignore[misc]

    def close(self) -> None:
        self.service.close()
