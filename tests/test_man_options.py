"""Every option of every command's man page against the click command's parameters, both ways.

The roff of ``man/*.1`` is read directly (no mandoc): the OPTIONS section's
``.TP`` tags name the options, and whether each takes a value (an italic
argument, or a choice of words); the SYNOPSIS names only options and
arguments that exist.  A page and its command that drift apart fail here.
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass
from pathlib import Path

import click
import pytest
from test_man import MAN, SCRIPTS, read, section

from rds import forced
from rds.cli import add_version_option

ROOT = Path(__file__).resolve().parent.parent


def command_of(name: str) -> click.Command:
    # a forced command's entry point reads its usual command line without click, and hands the click
    # command everything else (rds.forced, and rds.checkin for rdsft -a): that command is the one its
    # page describes
    module = forced.COMMANDS.get(name) or SCRIPTS[name].partition(":")[0]
    module = getattr(importlib.import_module(module), "CLICK", module)  # rdsft's entry (rds.checkin) likewise
    cmd = importlib.import_module(module).command
    assert isinstance(cmd, click.Command), f"{module}.command is not a click command"
    add_version_option(cmd)  # as rds.cli.run gives it to every command
    return cmd


def words(line: str) -> list[str]:
    """The words of a roff macro line, quotes honoured, escapes undone (``\\-`` is ``-``)."""
    line = re.sub(r"\\f(?:\[[^]]*\]|\(..|.)", "", line.replace("\\-", "-").replace("\\&", ""))
    return [m.group(1) if m.group(1) is not None else m.group(2) for m in re.finditer(r'"([^"]*)"|(\S+)', line)]


def rendered(roff: str) -> str:
    """The text of some roff, one line a macro line: font-alternating macros join their words."""
    out = []
    for line in roff.splitlines():
        if not line.startswith("."):
            out.append(" ".join(words(line)))
            continue
        macro, *rest = words(line) or [""]
        if macro in (".BR", ".RB", ".IR", ".RI", ".BI", ".IB"):
            out.append("".join(rest))
        elif macro in (".B", ".I"):
            out.append(" ".join(rest))
    return " ".join(out)


@dataclass
class Documented:
    """One option as a man page's OPTIONS section gives it."""

    names: list[str]
    value: str | None  # the argument it takes (its metavar), None for a flag
    choices: list[str] | None  # "-t install|transfer|delete"


def documented(roff: str) -> list[Documented]:
    """The options of an OPTIONS section: each ``.TP`` tag line that starts with an option."""
    out = []
    lines = section(roff, "OPTIONS").splitlines()
    for tp, tag in zip(lines, lines[1:], strict=False):
        if tp.strip() != ".TP" or not tag.startswith("."):
            continue
        macro, *rest = words(tag)
        if not rest or not rest[0].startswith("-"):
            continue
        names = [w.strip(",") for w in rest if re.fullmatch(r"-[\w-]+,?", w)]
        args = [w.strip() for w in rest if w.strip() and w.strip(",") not in names and w.strip() != ","]
        text = " ".join(args).replace("...", "").strip()
        if "|" in text:
            out.append(Documented(names, text, [c.strip() for c in text.split("|") if c.strip()]))
        else:
            out.append(Documented(names, text or None, None))
    return out


def option_params(cmd: click.Command) -> list[click.Option]:
    ctx = click.Context(cmd)
    return [p for p in cmd.get_params(ctx) if isinstance(p, click.Option)]


def metavar(cmd: click.Command, p: click.Parameter) -> str:
    ctx = click.Context(cmd)
    return re.sub(r"\.\.\.$", "", p.make_metavar(ctx) if _takes_ctx() else p.make_metavar())  # type: ignore[call-arg]


def _takes_ctx() -> bool:
    import inspect

    return "ctx" in inspect.signature(click.Parameter.make_metavar).parameters


COMMANDS = sorted(n for n in SCRIPTS if (MAN / f"{n}.1").is_file())


@pytest.mark.parametrize("name", COMMANDS)
def test_the_man_page_and_the_command_have_the_same_options(name: str) -> None:
    cmd = command_of(name)
    page = {n: d for d in documented(read(MAN / f"{name}.1")) for n in d.names}
    code = {n: p for p in option_params(cmd) for n in [*p.opts, *p.secondary_opts]}
    assert "--help" in page, f"{name}.1: could not read its OPTIONS section"
    assert not set(page) - set(code), f"{name}.1 documents {sorted(set(page) - set(code))}, which {name} lacks"
    assert not set(code) - set(page), f"{name} takes {sorted(set(code) - set(page))}, which {name}.1 lacks"
    for opt, d in page.items():
        p = code[opt]
        assert sorted(d.names) == sorted([*p.opts, *p.secondary_opts]), \
            f"{name}.1 gives {opt} as {d.names}, {name} as {[*p.opts, *p.secondary_opts]}"
        if p.is_flag or p.count:
            assert d.value is None, f"{name}.1: {opt} takes {d.value!r}, but it is a flag"
            continue
        assert d.value is not None, f"{name}.1: {opt} is shown as a flag, but it takes a value"
        if isinstance(p.type, click.Choice):
            assert d.choices == list(p.type.choices), f"{name}.1: {opt} {d.choices} vs {list(p.type.choices)}"
        else:
            assert d.value == metavar(cmd, p), f"{name}.1: {opt} takes {d.value!r}, {name} {metavar(cmd, p)!r}"


@pytest.mark.parametrize("name", COMMANDS)
def test_the_synopsis_names_only_what_the_command_takes(name: str) -> None:
    cmd = command_of(name)
    synopsis = rendered(section(read(MAN / f"{name}.1"), "SYNOPSIS"))
    known = {n for p in option_params(cmd) for n in [*p.opts, *p.secondary_opts]}
    shown = set(re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", synopsis))
    assert not shown - known, f"{name}.1 SYNOPSIS shows {sorted(shown - known)}, which {name} lacks"
    for p in cmd.get_params(click.Context(cmd)):
        if isinstance(p, click.Argument):
            word = metavar(cmd, p).strip("[]").removesuffix("...")
            assert word in synopsis, f"{name}.1 SYNOPSIS does not show the argument {word}"


def test_the_roff_reader() -> None:
    roff = """.SH OPTIONS
.TP
.BR \\-n ", " \\-\\-dry\\-run
Say.
.TP
.BI \\-a " DESTINATION" \\fR...\\fP
Hosts.
.TP
.BR \\-t " install" | transfer | delete
Type.
.TP
.B \\-\\-help
Help.
.SH EXIT STATUS
"""
    got = [(d.names, d.value, d.choices) for d in documented(roff)]
    assert got == [(["-n", "--dry-run"], None, None), (["-a"], "DESTINATION", None),
                   (["-t"], "install | transfer | delete", ["install", "transfer", "delete"]),
                   (["--help"], None, None)]


def test_watch_manual_is_described_as_the_code_does_it() -> None:
    """Regression: rdsma(1) and rdssetfl(5) said MANUAL makes one pass at start; the code (and JP1) make
    none: a pass comes only on request (tests/test_resident.py checks the code)."""
    rdsma = rendered(section(read(MAN / "rdsma.1"), "DESCRIPTION"))
    manual = rdsma[rdsma.index("MANUAL never"):].split("Jobs that arrive")[0]
    assert "not even at start" in manual and "startup request" in manual
    setfl = rendered(section(read(MAN / "rdssetfl.5"), "ATTRIBUTES"))
    watch = setfl[setfl.index("WatchTimeofOrders minutes"):setfl.index("WatchTimeofStatus minutes")]
    assert "never polls, not even when rdsma starts" in watch
    for text in (rdsma, watch):
        assert "pass at start, then only when" not in text and "one pass when it starts" not in text
