"""SNEAKERNET with chunks (issue 17, part 3): a medium that carries only the chunks a target lacks."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import chunkfiles
from conftest import Tree
from test_chunks import make_tree, manifest_of, write_tree


def test_a_medium_of_the_chunks_a_relay_lacks_stages_version_2(tree: Tree, tmp_path: Path) -> None:
    mgr = tree.add("mgr")
    relay = tree.add("relay", "mgr", settings="CachingPolicy\tSNEAKERNET\n")
    tree.check_in_upward(["relay"])  # the relay learns the managing server's key
    files = make_tree(tmp_path / "v1", 11, n=60)
    v1 = mgr.run("rdsft", "-c", "-g", "AB", "-r", "APP", "-v", "0100", "-i", "/opt/app",
                 str(tmp_path / "v1")).stdout.strip()
    files["lib/m010.bin"] = files["lib/m010.bin"][:999] + b"new" + files["lib/m010.bin"][1002:]
    write_tree(tmp_path / "v2", files)
    v2 = mgr.run("rdsft", "-c", "-g", "AB", "-r", "APP", "-v", "0200", "-i", "/opt/app",
                 str(tmp_path / "v2")).stdout.strip()
    mgr.run("rdsstage", "-o", str(tmp_path / "full"), "-r", v1)
    relay.run("rdsstage", "-i", str(tmp_path / "full"))
    (tmp_path / "have.txt").write_text(relay.run("rdsstage", "--chunks").stdout)

    mgr.run("rdsstage", "-o", str(tmp_path / "delta"), "-r", v2, "--have", str(tmp_path / "have.txt"))
    carried = (tmp_path / "delta" / v2 / "chunks.bin").stat().st_size
    size2 = manifest_of(mgr.path, v2)["size"]
    assert 0 < carried <= 0.1 * size2, (carried, size2)
    assert not (tmp_path / "delta" / v2 / "payload.tgz").exists()
    out = relay.run("rdsstage", "-i", str(tmp_path / "delta"), "--json").stdout
    assert [o["action"] for o in json.loads(out)] == ["staged"]
    held = chunkfiles.stored(relay.path)
    whole = b"".join(held[c[0]] for c in manifest_of(relay.path, v2)["chunks"])
    assert hashlib.sha256(whole).hexdigest() == manifest_of(mgr.path, v2)["sha256"]

    # --since: the same, into an archive; a host that lacks the older version is told what to do
    mgr.run("rdsstage", "-o", str(tmp_path / "since.tar"), "-r", v2, "--since", v1)
    other = tree.add("other", "mgr", settings="CachingPolicy\tSNEAKERNET\n")
    tree.check_in_upward(["other"])
    proc = other.run("rdsstage", "-i", str(tmp_path / "since.tar"), check=False)
    assert proc.returncode == 6 and "neither on the medium nor here" in proc.stderr
    assert not (other.path / "RDS" / v2).exists()
    assert len(list((other.path / "RDS" / ".chunks").rglob("*"))) > 0  # what it carried is kept
    other.run("rdsstage", "-i", str(tmp_path / "full"))
    assert "staged" in other.run("rdsstage", "-i", str(tmp_path / "since.tar")).stdout
    assert (other.path / "RDS" / v2 / "manifest.json").exists()
