"""Setting up the SSH side of a link without hand-editing (rdslink).

On a lower system, ``keys`` makes what the link needs: the SSH key the lower
system logs in with (``IdentityFile``, else ``rdsprm/id_ed25519``) and the
home's host key (rds.identity), and ``offer`` prints them as one enrolment
line for the upper system's administrator::

    rdslink relay1 HOSTKEY ssh-ed25519 AAAAC3Nza... rds@relay1

On the upper system, ``authorize`` adds the lower system's line to the
``authorized_keys`` file the administrator names, with the forced command
docs/ssh.md documents (rds-serve --lower NAME --home HOME), and enrols its
host key (rds.trust); ``authorize_wake`` does the same on a lower system for
the upper system's startup-request key (rds-wake --home HOME).  Both are
idempotent; ``revoke`` removes a lower system's lines.  Every change
replaces the file atomically, keeping its mode.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import os
import re
import shlex
import shutil
import sys
from pathlib import Path

from rds import fsutil, identity
from rds.errors import InputError, SettingsError
from rds.home import Home
from rds.settings import valid_hostname

TAG = "rdslink"
_SSH_TYPES = ("ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521", "ssh-rsa")
_LOWER = re.compile(r"--lower\s+'?([A-Za-z0-9.-]+)'?")
_HOME = re.compile(r"--home\s+('[^']*'|\S+)")


@dataclasses.dataclass(frozen=True)
class Offer:
    """What a system gives the other end of a link: its name, host key and SSH public key."""

    host: str
    host_key: str
    ssh_type: str
    ssh_key: str
    comment: str

    @property
    def ssh_line(self) -> str:
        return f"{self.ssh_type} {self.ssh_key} {self.comment}".strip()

    def __str__(self) -> str:
        return f"{TAG} {self.host} {self.host_key} {self.ssh_line}"

    @classmethod
    def parse(cls, text: str) -> Offer:
        words = text.split()
        if len(words) < 5 or words[0] != TAG:
            raise InputError(f"not an enrolment line (expected '{TAG} NAME HOSTKEY SSH-TYPE SSH-KEY [COMMENT]', "
                             f"as 'rdslink -k' prints it): {text[:120]!r}")
        host, host_key, kind, key = words[1:5]
        if not valid_hostname(host):
            raise InputError(f"enrolment line: bad host name {host!r}")
        if not identity.valid_key(host_key):
            raise InputError(f"enrolment line: {host_key[:60]!r} is not an Ed25519 host key in base64")
        if kind not in _SSH_TYPES or not _ssh_blob(key):
            raise InputError(f"enrolment line: {kind} {key[:40]}... is not an SSH public key")
        comment = " ".join(words[5:])
        if any(c in comment for c in "\"\\") or len(comment) > 200:
            raise InputError("enrolment line: the key's comment holds quotes or backslashes")
        return cls(host, host_key, kind, key, comment)


def _ssh_blob(key: str) -> bytes | None:
    try:
        blob = base64.b64decode(key, validate=True)
    except (binascii.Error, ValueError):
        return None
    return blob if len(blob) > 16 else None


def ssh_fingerprint(key: str) -> str:
    blob = _ssh_blob(key) or b""
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def ssh_key_path(home: Home) -> Path:
    path = home.settings.identity_file or home.prm / "id_ed25519"
    return path if path.is_absolute() else home.path / path


def keys(home: Home) -> tuple[Offer, bool]:
    """This host's enrolment line, its SSH key made if missing; returns whether it was made now."""
    path = ssh_key_path(home)
    made = False
    if not path.exists():
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        key = Ed25519PrivateKey.generate()
        fsutil.atomic_write(path.with_name(path.name + ".pub"), key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH) + f" rds@{home.host}\n".encode())
        fsutil.atomic_write(path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                                    serialization.NoEncryption()), mode=0o600)
        made = True
    pub = path.with_name(path.name + ".pub")
    try:
        words = pub.read_text().split()
    except OSError as e:
        raise SettingsError(f"{pub}: cannot read the SSH public key ({e.strerror}); it belongs beside {path}") \
            from None
    if len(words) < 2:
        raise SettingsError(f"{pub}: not an SSH public key")
    return Offer(home.host, home.identity.public, words[0], words[1], " ".join(words[2:]) or f"rds@{home.host}"), made


def program(name: str, given: str | None) -> str:
    """The path of ``name`` (rds-serve, rds-wake) for a forced command: given, beside this rds, or on PATH."""
    if given:
        if not given.startswith("/"):
            raise InputError(f"--program {given!r}: give the absolute path of {name}")
        return given
    here = Path(os.path.abspath(sys.argv[0])).parent / name  # beside rdslink as invoked (a link too)
    if here.is_file():
        return str(here)
    found = shutil.which(name)
    if found is None:
        raise InputError(f"{name} is not installed beside rdslink nor on PATH; give its path with --program")
    return found


def serve_line(offer: Offer, home: Home, serve: str, source: str | None = None) -> str:
    """The authorized_keys line docs/ssh.md documents for a lower system."""
    command = f"{shlex.quote(serve)} --lower {offer.host} --home {shlex.quote(str(home.path))}"
    return f'{_options(source)},command="{command}" {offer.ssh_line}'


def wake_line(offer: Offer, home: Home, wake: str, source: str | None = None) -> str:
    command = f"{shlex.quote(wake)} --home {shlex.quote(str(home.path))}"
    return f'{_options(source)},command="{command}" {offer.ssh_line}'


def _options(source: str | None) -> str:
    if source is None:
        return "restrict"
    if not re.fullmatch(r"[A-Za-z0-9.:/*?,!\[\]-]{1,200}", source):
        raise InputError(f"--from {source!r}: not an address pattern")
    return f'restrict,from="{source}"'


@dataclasses.dataclass(frozen=True)
class Entry:
    """One line of authorized_keys that rds put there (or one like it)."""

    line: str
    lower: str | None  # the --lower of an rds-serve forced command
    wake: bool  # an rds-wake forced command
    ssh_key: str
    home: str | None = None  # its --home


def read(path: Path) -> list[str]:
    try:
        return path.read_text().splitlines()
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: cannot read ({getattr(e, 'strerror', None) or e})") from None


def entry(line: str) -> Entry | None:
    """What an authorized_keys line is to rds, or None for a line that is not an rds forced command."""
    m = re.match(r'^\s*(\S*?)command="([^"]*)"\S*\s+(\S+)\s+(\S+)', line)
    if m is None:
        return None
    command, key = m.group(2), m.group(4)
    words = command.split()
    if not words:
        return None
    name = os.path.basename(words[0].strip("'"))
    home = _HOME.search(command)
    where = shlex.split(home.group(1))[0] if home else None
    if name == "rds-serve":
        found = _LOWER.search(command)
        return Entry(line, found.group(1) if found else None, False, key, where)
    if name == "rds-wake":
        return Entry(line, None, True, key, where)
    return None


def _write(path: Path, lines: list[str]) -> None:
    mode = path.stat().st_mode & 0o777 if path.exists() else 0o600
    fsutil.atomic_write(path, ("\n".join(lines) + "\n").encode() if lines else b"", mode=mode)


def authorize(path: Path, line: str, offer: Offer, lower: str | None, home: Home) -> str:
    """Put ``line`` in ``path`` for ``offer``'s key; returns added, replaced or unchanged.

    A line for the same lower system of the same home (or, for ``lower``
    None, the same key's rds-wake line for the home) is replaced; a key
    already in another line is refused: sshd would only ever use the first.
    """
    lines = read(path)
    out, state = [], "added"
    for old in lines:
        e = entry(old)
        if e is None:
            if offer.ssh_key in old.split():
                raise InputError(f"{path}: the key {ssh_fingerprint(offer.ssh_key)} is already there for "
                                 "something else; remove that line first")
            out.append(old)
            continue
        here = e.home is not None and Path(e.home) == home.path
        same_target = here and ((e.lower == lower) if lower is not None else e.wake)
        if e.ssh_key == offer.ssh_key and not same_target:
            raise InputError(f"{path}: the key {ssh_fingerprint(offer.ssh_key)} is already in the line for "
                             f"{e.lower or 'startup requests'} of {e.home}; sshd would use only the first")
        if same_target:
            if old == line:
                state = "unchanged"
                out.append(old)
            else:
                state = "replaced"
            continue
        out.append(old)
    if state != "unchanged":
        out.append(line)
        _write(path, out)
    return state


def revoke(path: Path, lower: str, home: Home) -> int:
    """Remove ``lower``'s rds-serve lines for ``home`` from ``path``; returns how many."""
    lines = read(path)
    keep = [line for line in lines if (e := entry(line)) is None or e.lower != lower
            or e.home is None or Path(e.home) != home.path]
    if len(keep) != len(lines):
        _write(path, keep)
    return len(lines) - len(keep)


def lowers(path: Path | None, home: Home) -> dict[str, list[str]]:
    """The lower systems ``path`` lets in to ``home``: name -> fingerprints of their SSH keys."""
    out: dict[str, list[str]] = {}
    for line in read(path) if path is not None else []:
        e = entry(line)
        if e is not None and e.lower is not None and e.home is not None and Path(e.home) == home.path:
            out.setdefault(e.lower, []).append(ssh_fingerprint(e.ssh_key))
    return out
