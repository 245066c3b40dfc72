"""Hosts that sign as rds hosts do, for tests that speak the protocol by hand (an attacker, or a lower
system simulated without a home).  The keys are made here, apart from the code under test."""

from __future__ import annotations

import base64
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from rds.home import Home
from rds.identity import canonical
from rds.transport import serving
from rds.wire import VERSION


class Signer:
    """A host's key, as an attacker or a test holds it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.private = Ed25519PrivateKey.generate()
        raw = self.private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        self.public = base64.b64encode(raw).decode()

    def sign(self, obj: Any) -> str:
        return base64.b64encode(self.private.sign(canonical(obj))).decode()

    def statement(self, upper: str, n: int = 1, host: str | None = None) -> dict[str, Any]:
        body = {"kind": "route", "host": host or self.name, "upper": upper, "n": n, "key": self.public}
        return {**body, "sig": self.sign(body)}

    def result(self, job: int, dest: str, status: str = "COMPLETE", message: str = "installed",
               finished: str = "2026-12-01T10:00:00", by: str | None = None) -> dict[str, Any]:
        body = {"kind": "result", "job": job, "dest": dest, "status": status, "message": message,
                "finished": finished, "by": by or self.name}
        return {"job": job, "dest": dest, "status": status, "message": message, "finished": finished,
                "by": by or self.name, "sig": self.sign(body)}


def request(op: str, host: str, **fields: Any) -> dict[str, Any]:
    return {"op": op, "v": VERSION, "host": host, **fields}


def ask(home: Home, lower: str, op: str, **fields: Any) -> dict[str, Any]:
    """What ``home`` answers ``lower``'s one request, as rds-serve would hand it over."""
    s = serving(home, lower)
    try:
        return s.handle(request(op, lower, **fields))
    finally:
        s.close()
