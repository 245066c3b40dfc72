"""The upper system reads each byte of a package once per serve (issue 16, part 1).

A registered package was hashed as it was written; serving it for the first
time used to hash the whole archive again before sending it, reading it
twice.  Counted by the kernel (/proc/self/io, rchar), not by rds.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path

from conftest import Tree

from rds import transport
from rds.home import Home
from rds.packages import PackageId
from rds.storehouse import Storehouse


def read_bytes() -> int:
    """Bytes this process has read through read(2) and the like so far."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("no rchar in /proc/self/io")


def test_the_first_serve_of_a_registered_package_reads_it_once(tree: Tree) -> None:
    mgr = tree.add("mgr")
    tree.add("relay1", "mgr")
    tree.check_in_upward(["relay1"])
    noise = base64.b64encode(os.urandom(6 << 20)).decode()  # does not compress much
    pid = tree.package(files={"data.txt": noise})
    mgr.run("dcmjexe", "-t", "transfer", "-r", pid, "-h", "relay1")
    store = Storehouse(mgr.home().packages)
    size = store.payload(PackageId.parse(pid)).stat().st_size
    service = transport.serving(Home.open(mgr.path), "relay1")
    try:
        before = read_bytes()
        got = sum(len(block) for block in service.read(pid, 0, size))
        took = read_bytes() - before
    finally:
        service.close()
    assert got == size
    assert size <= took < size + size // 4, (took, size)  # once, plus the manifests and the database


def test_a_copy_whose_file_changed_is_hashed_again_before_it_is_served(tree: Tree) -> None:
    """The stamp holds only while the payload is the file that was hashed: a changed file is read twice."""
    mgr = tree.add("mgr")
    tree.add("relay1", "mgr")
    tree.check_in_upward(["relay1"])
    pid = tree.package(files={"data.txt": base64.b64encode(os.urandom(2 << 20)).decode()})
    mgr.run("dcmjexe", "-t", "transfer", "-r", pid, "-h", "relay1")
    payload = Storehouse(mgr.home().packages).payload(PackageId.parse(pid))
    size = payload.stat().st_size
    os.utime(payload, ns=(payload.stat().st_atime_ns, payload.stat().st_mtime_ns + 1))  # touched: not the same
    service = transport.serving(Home.open(mgr.path), "relay1")
    try:
        before = read_bytes()
        assert sum(len(block) for block in service.read(pid, 0, size)) == size
        took = read_bytes() - before
    finally:
        service.close()
    assert took >= 2 * size
