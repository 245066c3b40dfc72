"""A home's host key: who this host is, and how anything it says is signed and checked.

Every home has one Ed25519 key, ``rdsprm/host_key`` (PKCS#8 PEM, mode 0600),
created on first use; its public half (32 bytes, written in base64, also in
``host_key.pub``) is the host's identity, which upper systems pin (rds.trust).  What is signed is
always an object in one canonical byte form (``canonical``), so both sides
sign and check the same bytes whatever order the fields came in.
Fingerprints are written as OpenSSH writes them: ``SHA256:`` and the
unpadded base64 of the SHA-256 of the public key.

``cryptography`` is imported here only when a key is used, so that commands
which sign nothing start without it.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

from rds import fsutil
from rds.errors import SettingsError

KEY_FILE = "host_key"
KEY_CHARS = 44  # a 32-byte public key in base64
SIG_CHARS = 88  # a 64-byte signature in base64


def canonical(obj: Any) -> bytes:
    """The bytes that are signed for ``obj``: sorted keys, no spaces, UTF-8."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def fingerprint(key: str) -> str:
    """``SHA256:...`` of a public key given in base64, as ssh-keygen -l prints it."""
    try:
        raw = base64.b64decode(key, validate=True)
    except (binascii.Error, ValueError):
        return "SHA256:(not a key)"
    return "SHA256:" + base64.b64encode(hashlib.sha256(raw).digest()).decode().rstrip("=")


def valid_key(key: Any) -> bool:
    """Whether ``key`` has the form of an Ed25519 public key in base64."""
    if not isinstance(key, str) or len(key) != KEY_CHARS:
        return False
    try:
        return len(base64.b64decode(key, validate=True)) == 32
    except (binascii.Error, ValueError):
        return False


class Identity:
    """This host's key pair."""

    def __init__(self, private: Any) -> None:
        from cryptography.hazmat.primitives import serialization

        self._private = private
        raw = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        self.public = base64.b64encode(raw).decode()

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.public)

    def sign(self, obj: Any) -> str:
        """The base64 signature of ``obj``'s canonical form."""
        return base64.b64encode(self._private.sign(canonical(obj))).decode()

    def sign_many(self, objs: Sequence[Any]) -> list[str]:
        """``sign`` of each; a large batch (dcmjexe to 100,000 hosts) on every CPU, as cryptography lets
        go of the GIL while it signs."""
        workers = min(4, os.cpu_count() or 1)
        if len(objs) < 256 or workers < 2:
            return [self.sign(o) for o in objs]
        from concurrent.futures import ThreadPoolExecutor

        size = -(-len(objs) // workers)
        parts = [objs[i:i + size] for i in range(0, len(objs), size)]
        with ThreadPoolExecutor(workers) as pool:
            return [sig for part in pool.map(lambda part: [self.sign(o) for o in part], parts) for sig in part]


def key_path(prm: Path) -> Path:
    return prm / KEY_FILE


def load(prm: Path) -> Identity:
    """The host key of the home whose ``rdsprm`` is ``prm``; made on first use, private part owner-only.

    Two processes that both find no key make one each, and the first one
    linked into place wins: the other reads it, so a host never signs with
    two keys.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    path = key_path(prm)
    if not path.exists():
        pem = Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        fd, tmp = tempfile.mkstemp(prefix=fsutil.tmp_prefix(), dir=prm)  # mode 0600
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(pem)
                f.flush()
                os.fsync(f.fileno())
            with contextlib.suppress(FileExistsError):  # another process made one first: it is the one
                os.link(tmp, path)
                fsutil.fsync_dir(prm)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
    try:
        if path.stat().st_mode & 0o077:
            raise SettingsError(f"{path}: the host key is readable by others; chmod 600 it")
        private = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError) as e:
        raise SettingsError(f"{path}: cannot read the host key: {getattr(e, 'strerror', None) or e}") from None
    if not isinstance(private, Ed25519PrivateKey):
        raise SettingsError(f"{path}: not an Ed25519 key")
    return Identity(private)


def public(prm: Path) -> str:
    """This home's public key, read from ``host_key.pub`` without loading cryptography (rds-serve answers
    every check-in with it); written from the private key when missing."""
    pub = prm / (KEY_FILE + ".pub")
    with contextlib.suppress(OSError, UnicodeDecodeError):
        text = pub.read_text().strip()
        if valid_key(text):
            return text
    key = load(prm).public
    fsutil.atomic_write(pub, (key + "\n").encode())
    return key


@lru_cache(maxsize=4096)
def _public(key: str) -> Any:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    return Ed25519PublicKey.from_public_bytes(base64.b64decode(key, validate=True))


def verify(key: str, obj: Any, signature: Any) -> bool:
    """Whether ``signature`` (base64) is ``key``'s signature of ``obj``."""
    return verify_bytes(key, canonical(obj), signature)


def verify_many(items: Sequence[tuple[str, Any, Any]]) -> list[bool]:
    """``verify`` of each (key, obj, signature); a large batch (a relay's report) on every CPU, as
    cryptography lets go of the GIL while it checks."""
    workers = min(4, os.cpu_count() or 1)
    if len(items) < 256 or workers < 2:
        return [verify(k, o, s) for k, o, s in items]
    from concurrent.futures import ThreadPoolExecutor

    size = -(-len(items) // workers)
    parts = [items[i:i + size] for i in range(0, len(items), size)]
    with ThreadPoolExecutor(workers) as pool:
        done = pool.map(lambda part: [verify(k, o, s) for k, o, s in part], parts)
        return [ok for part in done for ok in part]


def verify_bytes(key: str, data: bytes, signature: Any) -> bool:
    from cryptography.exceptions import InvalidSignature

    if not isinstance(signature, str) or len(signature) != SIG_CHARS or not valid_key(key):
        return False
    try:
        _public(key).verify(base64.b64decode(signature, validate=True), data)
    except (InvalidSignature, binascii.Error, ValueError):
        return False
    return True
