"""Terminal safety (issue 13, part 2): other systems' text is shown with its control characters escaped.

A lower system reported a result message holding ESC[2K, cursor movement and
an OSC window-title sequence; dcmstat printed it raw, erasing the ERROR row,
showing a fake COMPLETE row and retitling the window.
"""

from __future__ import annotations

import json
import re

import click
import pytest
from conftest import Tree
from test_status import facility

from rds import cli, text
from rds.errors import RdsError

HOSTILE = "\x1b[2K\x1b[1A\x1b[32mCOMPLETE all good\x1b[0m\x1b]0;pwned\x07\x08\u202eevil"
SCRIPT = "#!/bin/sh\nprintf '%s\\n' \"$(printf '" + \
    HOSTILE.replace("\x1b", "\\033").replace("\x07", "\\007").replace("\x08", "\\010")\
    .replace("\u202e", "\\342\\200\\256") + "')\"\nexit 1\n"
RAW = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f\u202e]")  # any control character but the newline


def test_shown_escapes_controls_and_invisible_characters() -> None:
    assert text.shown("a\x1b[2Kb\n\t\x07\x7f\x9b\u202e\u200b é 日本") == \
        "a\\x1b[2Kb\\n\\t\\x07\\x7f\\x9b\\u202e\\u200b é 日本"
    assert text.shown("plain text, [brackets]") == "plain text, [brackets]"
    assert text.cell("x" * 500) == "x" * 117 + "..."


def test_hostile_result_message_is_escaped_in_every_table_and_exact_in_json(tree: Tree) -> None:
    mgr, relay = tree.add("mgr"), tree.add("relay", "mgr")
    relay.run("rdsft", "-a")
    with facility(relay):
        mgr.run("dcmjexe", "-r", tree.package(name="EVIL", script=SCRIPT), "-h", "relay")
        proc = relay.run("rdsft", "-a", check=False)
        assert proc.returncode == 4
        outputs = {"rdsft -a": proc.stdout + proc.stderr}
        for name, host, args in (("dcmstat", mgr, ["dcmstat"]), ("rdsgroupid", mgr, ["rdsgroupid"]),
                                 ("rdsgroupid relay", relay, ["rdsgroupid"]), ("rdsdlv", relay, ["rdsdlv"]),
                                 ("rdsdlv -l", relay, ["rdsdlv", "-l"])):
            p = host.run(*args, check=False)
            outputs[name] = p.stdout + p.stderr
        dcm = json.loads(mgr.run("dcmstat", "--json", check=False).stdout)
        dlv = json.loads(relay.run("rdsdlv", "--json").stdout)
    for name, out in outputs.items():
        assert not RAW.search(out), f"{name} printed a raw control character: {out!r}"
    assert "\\x1b[2K\\x1b[1A\\x1b[32mCOMPLETE" in outputs["dcmstat"]
    assert "ERROR" in outputs["dcmstat"].splitlines()[1]
    assert dcm[0]["status"] == "ERROR" and HOSTILE in dcm[0]["message"]  # --json stays exact
    assert HOSTILE in dlv[0]["message"]
    log = (relay.path / "log" / "rds.log").read_text() + (mgr.path / "log" / "rds.log").read_text()
    assert not RAW.search(log) and "\\x1b[2K" in log


def test_long_message_is_cut_in_tables_whole_in_json(tree: Tree) -> None:
    mgr, relay = tree.add("mgr"), tree.add("relay", "mgr")
    relay.run("rdsft", "-a")
    long = "word " * 50
    mgr.run("dcmjexe", "-r", tree.package(name="LONG", script=f"#!/bin/sh\necho '{long}'\nexit 2\n"),
            "-h", "relay")
    relay.run("rdsft", "-a", check=False)
    shown = mgr.run("dcmstat", check=False).stdout
    assert long.strip()[:100] in shown and long.strip() not in shown and shown.splitlines()[1].endswith("...")
    assert long.strip() in json.loads(mgr.run("dcmstat", "--json", check=False).stdout)[0]["message"]


def test_error_lines_are_escaped(capsys: pytest.CaptureFixture[str]) -> None:
    @click.command()
    def hostile() -> int:
        raise RdsError("upper system said: " + HOSTILE + "\nsecond line")

    with pytest.raises(SystemExit) as e:
        cli.run(hostile, [])
    assert e.value.code == RdsError.exit_code
    err = capsys.readouterr().err
    assert not RAW.search(err) and err.count("\n") == 1 and "\\x1b]0;pwned\\x07" in err
