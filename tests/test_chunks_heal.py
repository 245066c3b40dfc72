"""Issue 19's promises for chunked packages (issue 17): a damaged chunk is caught, never stored or used,
its copy removed with the bad chunk, and a good copy fetched again."""

from __future__ import annotations

import hashlib
import os

import chunkfiles
from conftest import Tree, installs
from test_heal import chain, damage_lines, deliver, log_of, manifest


def whole(host, pid: str) -> str:  # type: ignore[no-untyped-def]
    """The SHA-256 of a host's chunks of ``pid`` in the manifest's order (hashlib, not rds)."""
    h = hashlib.sha256()
    for name, *_ in manifest(host, pid)["chunks"]:
        h.update(chunkfiles.read(host.path, name))
    return h.hexdigest()


def test_a_damaged_chunk_on_a_relay_is_caught_removed_and_fetched_again(tree: Tree) -> None:
    mgr, ra, rb, (c1, c2) = chain(tree)
    pid = tree.package(files={"bin/app.sh": "#!/bin/sh\necho app\n", "data.bin": os.urandom(600_000).hex()})
    good = manifest(mgr, pid)["sha256"]
    assert len(manifest(mgr, pid)["chunks"]) > 4
    deliver(tree, pid, "c1 c2")
    c1.run("rdsft", "-a")
    assert whole(rb, pid) == good
    bad = manifest(rb, pid)["chunks"][2][0]
    chunkfiles.change(rb.path, bad, lambda b: bytes(b[:len(b) // 2]) + bytes([b[len(b) // 2] ^ 0xFF])
                      + bytes(b[len(b) // 2 + 1:]))  # one byte flipped in place, as a disk rots

    proc = c2.run("rdsft", "-a", check=False)
    assert proc.returncode == 6, proc.stderr
    assert proc.stderr.startswith("rdsft: 1 download(s) came damaged and were discarded: ")
    assert "sent a damaged chunk" in proc.stderr
    assert installs(c2) == 0 and not (c2.path / "RDS" / pid).exists()
    assert not chunkfiles.has(c2.path, bad)  # never stored below
    # relayB found it as it served it (the whole hashed as it went): the copy and the bad chunk are gone
    assert not (rb.path / "RDS" / pid).exists()
    assert not chunkfiles.has(rb.path, bad)
    assert damage_lines(rb, pid) and damage_lines(c2, pid)

    c2.run("rdsft", "-a")  # healed: relayB fetches what it lacks from relayA, c2 installs
    assert installs(c2) == 1
    assert whole(rb, pid) == good and whole(c2, pid) == good
    assert log_of(rb).count(f"fetched package {pid}") == 2
