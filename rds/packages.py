"""Packages as values: their IDs and manifests.

A package is a manifest that gives its size, SHA-256, install directory and
chunks (rds.chunks), and an archive: the chunks' packed bytes concatenated,
or, in the old format, one file ``payload.tgz``; rds.storehouse keeps them on
disk and rds.archive reads and writes the archive.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
import threading
from operator import itemgetter
from pathlib import PurePosixPath
from typing import Any

from rds.errors import InputError
from rds.identity import canonical

MANIFEST_FORMAT = 1

_FIELDS = {
    "packager": (r"[CD]", "C (UNIX) or D (Windows)"),
    "cabinet": (r"[A-Za-z0-9]{1,2}", "1-2 letters or digits"),
    "package": (r"[A-Za-z0-9_-]{1,44}", "1-44 letters, digits, '_' or '-'"),
    "version": (r"[A-Za-z0-9]{1,6}", "1-6 letters or digits"),
    "generation": (r"[0-9]{1,4}", "0-9999"),
}


def check_field(name: str, value: str) -> str:
    pattern, allowed = _FIELDS[name]
    if not re.fullmatch(pattern, value):
        raise InputError(f"bad {name} {value!r} (allowed: {allowed})")
    return value


@dataclasses.dataclass(frozen=True, order=True)
class PackageId:
    """A full package ID in JP1's form ``C.CABINET.PACKAGE.VERSION.GENERATION``."""

    packager: str
    cabinet: str
    package: str
    version: str
    generation: str = "0000"

    @classmethod
    def make(cls, cabinet: str, package: str, version: str, generation: str | int = 0,
             packager: str = "C") -> PackageId:
        gen = check_field("generation", str(generation))
        return cls(
            check_field("packager", packager),
            check_field("cabinet", cabinet),
            check_field("package", package),
            check_field("version", version),
            f"{int(gen):04d}",
        )

    @classmethod
    def parse(cls, text: str) -> PackageId:
        parts = text.split(".")
        if len(parts) not in (4, 5):
            raise InputError(f"bad package ID {text!r} (expected C.CABINET.PACKAGE.VERSION[.GENERATION])")
        return cls.make(parts[1], parts[2], parts[3], parts[4] if len(parts) == 5 else 0, packager=parts[0])

    def __str__(self) -> str:
        return f"{self.packager}.{self.cabinet}.{self.package}.{self.version}.{self.generation}"


@dataclasses.dataclass(frozen=True)
class Manifest:
    id: PackageId
    size: int
    sha256: str
    install_dir: str
    expire_days: int | None = None  # storage period in a relay's storehouse
    script: str | None = None
    packaged: str = ""
    # the archive's tar stream in bytes, recorded at rdsft -c: extraction stops there (rds.archive);
    # None in a manifest made before it was recorded (extraction is then bounded by the ratio alone)
    unpacked: int | None = None
    # a chunked package (rds.chunks): its chunks in order, [SHA-256, size, packed size, SHA-256 of the
    # packed bytes] (the last since issue 16; older manifests have three); size and sha256 are then their
    # packed bytes' total and SHA-256, concatenated.  () in the old format (payload.tgz)
    chunks: tuple[tuple[str, int, int] | tuple[str, int, int, str], ...] = ()
    signature: str = ""  # the managing server's, over every other field (rds.trust)

    def to_json(self, chunks: Any = None) -> dict[str, Any]:
        """The manifest as JSON holds it; with ``chunks``, that in the place of the chunk list (if any)."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}  # not asdict: it deep-copies
        d["id"] = str(self.id)  # every chunk entry, 0.06 s a call for a 200 MiB package
        d["format"] = MANIFEST_FORMAT
        if self.unpacked is None:  # an old manifest reads back as it was
            del d["unpacked"]
        if self.chunks:
            d["chunks"] = [list(c) for c in self.chunks] if chunks is None else chunks
        else:  # an old-format manifest reads back (and is signed) as it was
            del d["chunks"]
        if not self.signature:
            del d["signature"]
        return d

    def body(self) -> dict[str, Any]:
        """What the managing server signs: every field but the signature."""
        d = self.to_json()
        d.pop("signature", None)
        return d

    @functools.cached_property
    def signed_bytes(self) -> bytes:
        """``body()`` in the canonical form that is signed (rds.identity), made once a manifest: a pass
        verifies a job's manifest and digests it for the job's signature (4 ms each for 3,318 chunks)."""
        if not self.chunks:
            return canonical(self.body())
        d = self.to_json(chunks=0)
        d.pop("signature", None)
        return _spliced(canonical(d), b'"chunks":0', self._chunks_text.encode())

    @functools.cached_property
    def json_text(self) -> str:
        """``to_json()`` in JSON (the chunk list without spaces), made once a manifest: a job record carries
        its manifest (rds.jobs), and a package's jobs are kept, signed and handed out many at a time."""
        if not self.chunks:
            return json.dumps(self.to_json())
        text = json.dumps(self.to_json(chunks=0)).encode()
        return _spliced(text, b'"chunks": 0', self._chunks_text.encode()).decode()

    @functools.cached_property
    def _chunks_text(self) -> str:
        """The chunk list in JSON as the canonical form writes it: most of a big manifest's bytes, encoded
        once for both its texts (a pass verifies the manifest and keeps it in its job's record)."""
        return json.dumps([list(c) for c in self.chunks], separators=(",", ":"))

    @classmethod
    def parse(cls, text: str) -> Manifest:
        """``from_json`` of a manifest's JSON text (json's ValueError or RecursionError raised as they come).

        A text parsed already in this process gives the same Manifest again (an upper's session reads one
        manifest from its storehouse three times, 8 ms each for 3,318 chunks): keyed by the whole text, so
        a manifest that differs in any byte (replaced on disk, another record) is read and checked afresh.
        """
        with _parsed_lock:
            m = _parsed.pop(text, None)
        if m is None:
            m = cls.from_json(json.loads(text))
        with _parsed_lock:  # the most recent last; the oldest goes
            _parsed[text] = m
            while len(_parsed) > _PARSED_MAX:
                del _parsed[next(iter(_parsed))]
        return m

    @classmethod
    def from_json(cls, d: Any) -> Manifest:
        try:
            if d.get("format") != MANIFEST_FORMAT:
                raise ValueError("format")
            m = cls(
                id=PackageId.parse(d["id"]),
                size=int(d["size"]),
                sha256=str(d["sha256"]),
                install_dir=str(d["install_dir"]),
                expire_days=None if d.get("expire_days") is None else int(d["expire_days"]),
                script=d.get("script"),
                packaged=str(d.get("packaged", "")),
                unpacked=None if d.get("unpacked") is None else int(d["unpacked"]),
                chunks=_chunk_list(d.get("chunks", [])),
                signature=d.get("signature", ""),
            )
            if m.chunks and (m.unpacked is None or sum(map(itemgetter(2), m.chunks)) != m.size
                             or sum(map(itemgetter(1), m.chunks)) != m.unpacked):
                raise ValueError("chunks do not add up to the sizes")
            if not isinstance(m.signature, str) or len(m.signature) > 200:
                raise ValueError("signature")
            if not re.fullmatch(r"[0-9a-f]{64}", m.sha256) or m.size < 0 or (m.unpacked or 0) < 0 \
                    or not m.install_dir.startswith("/") \
                    or ".." in PurePosixPath(m.install_dir).parts or "\x00" in m.install_dir:
                raise ValueError("field")
            if m.script is not None and not isinstance(m.script, str):
                raise ValueError("script")
            return m
        except (AttributeError, KeyError, TypeError, ValueError, OverflowError, InputError) as e:  # json reads Infinity
            raise InputError(f"not a valid package manifest ({str(e)[:300]})") from None

    @property
    def chunked(self) -> bool:
        return bool(self.chunks)


def _spliced(text: bytes, placeholder: bytes, value: bytes) -> bytes:
    """``text`` with ``value`` in the place of the JSON member ``placeholder`` (a quoted key and 0): a quote
    inside a JSON string is escaped, so the placeholder's only match is the member itself."""
    head, found, tail = text.partition(placeholder)
    assert found and placeholder not in tail
    return head + placeholder[:-1] + value + tail


_PARSED_MAX = 4  # a few packages at a time (a pass, a session); their texts are up to a few MiB
_parsed: dict[str, Manifest] = {}
_parsed_lock = threading.Lock()

MAX_CHUNK = 2 << 20  # rds.chunks.BIG_MAX: a chunk's bytes; packed, a gzip member adds at most a little


def _chunk_list(raw: Any) -> tuple[tuple[str, int, int] | tuple[str, int, int, str], ...]:
    """The chunk list of a manifest from another system, every entry checked (issue 18: column by column, in
    C, not entry by entry: a check-in that carries 3,318 chunks spent 20 ms a parse on it)."""
    if not isinstance(raw, list):
        raise ValueError("chunks")
    if not raw:
        return ()
    widths = set(map(len, raw)) if set(map(type, raw)) == {list} else set()
    if len(widths) != 1 or (width := widths.pop()) not in (3, 4):
        raise ValueError("chunk entry")
    columns = list(zip(*raw, strict=True))
    sizes, packed = columns[1], columns[2]
    if not _hex_column(columns[0]) or (width == 4 and not _hex_column(columns[3])) \
            or not set(map(type, sizes)) == set(map(type, packed)) == {int} \
            or not 0 < min(sizes) <= max(sizes) <= MAX_CHUNK \
            or not 0 < min(packed) <= max(packed) <= MAX_CHUNK + (MAX_CHUNK >> 6) + 64:
        raise ValueError("chunk entry")
    return tuple(map(tuple, raw))  # type: ignore[arg-type]


def _hex_column(column: tuple[Any, ...]) -> bool:
    """Whether every item is a str of 64 lowercase hex digits (what deleting the hex digits leaves is none)."""
    if set(map(type, column)) != {str} or set(map(len, column)) != {64}:
        return False
    joined = "".join(column)
    return joined.isascii() and not joined.encode().translate(None, b"0123456789abcdef")
