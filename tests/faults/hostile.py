"""Shared by the fuzz and hammer tests: the hypothesis profiles, values as they come off the wire,
and the checks that a failure is clean and that nothing was written where it must not be.

Profiles (``RDS_FUZZ_PROFILE``): ``ci`` (the default) runs a fixed, bounded number of examples
in a fixed order, with no deadline and no example database, so a run takes the same time and
finds the same things every time; ``deep`` runs many more random examples, for hunting by hand.
``RDS_FUZZ_EXAMPLES`` overrides the number of examples of either.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from rds.errors import RdsError

_examples = os.environ.get("RDS_FUZZ_EXAMPLES")
settings.register_profile("ci", max_examples=int(_examples or 60), deadline=None, derandomize=True, database=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
settings.register_profile("deep", max_examples=int(_examples or 3000), deadline=None, database=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
settings.load_profile(os.environ.get("RDS_FUZZ_PROFILE", "ci"))

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[2]

# -- values ---------------------------------------------------------------------------------------

# Text that includes what breaks parsers: NUL, line breaks of every kind, surrogates, wide characters.
nasty_text = st.text(alphabet=st.characters(codec=None, exclude_categories=()), max_size=40) | st.sampled_from(
    ["", " ", "\x00", "\n", "\r\n", "\u2028", "\x85", "..", "../..", "/", "/etc/passwd", "-1", "1e400",
     "Infinity", "NaN", "9" * 30, "9" * 5000, "a" * 300, "C.AB.APP.0100.0000", "MANUAL", "0x10", "１２"])
json_scalars = (st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
                | st.floats(allow_nan=True, allow_infinity=True) | nasty_text)


def json_values(extra: Any = None) -> Any:
    """Any value a JSON message can carry (NaN and Infinity too: Python's json reads them)."""
    leaves = json_scalars if extra is None else json_scalars | extra
    return st.recursive(leaves, lambda inner: st.lists(inner, max_size=4)
                        | st.dictionaries(st.text(max_size=8) | st.sampled_from(["job", "dest", "ok"]),
                                          inner, max_size=4), max_leaves=12)


def wire(value: Any) -> Any:
    """``value`` as the other side receives it: encoded to JSON and decoded again."""
    return json.loads(json.dumps(value))


# -- checks ---------------------------------------------------------------------------------------

def one_line(message: str, limit: int = 2000) -> None:
    assert message.strip(), "an empty error message"
    assert len(message.splitlines()) == 1, f"an error message of several lines: {message!r}"
    assert len(message) <= limit, f"an error message of {len(message)} characters: {message[:200]!r}..."


def clean_error(e: BaseException, limit: int = 2000) -> None:
    """The error the user sees: an RdsError subclass with a one-line message."""
    assert isinstance(e, RdsError), f"{type(e).__name__} is not an RdsError: {e!r}"
    one_line(str(e), limit)


def clean_stderr(stderr: str) -> None:
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) <= 1, f"stderr of {len(lines)} lines:\n{stderr}"


def snapshot(root: Path, skip: tuple[Path, ...] = ()) -> dict[str, tuple[str, str]]:
    """Every entry under ``root`` (but those under ``skip``): its kind and content or link target."""
    out: dict[str, tuple[str, str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        d = Path(dirpath)
        dirnames[:] = [n for n in dirnames if d / n not in skip]
        for name in dirnames + filenames:
            p = d / name
            if p in skip:
                continue
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = ("link", os.readlink(p))
            elif p.is_dir():
                out[rel] = ("dir", oct(p.stat().st_mode))
            elif p.is_file():
                out[rel] = ("file", hashlib.sha256(p.read_bytes()).hexdigest() + oct(p.stat().st_mode))
            else:
                out[rel] = ("special", oct(p.lstat().st_mode))
    return out


def documented_codes(command: str) -> set[int]:
    """The exit codes that the command's man page lists under EXIT STATUS."""
    roff = (ROOT / "man" / f"{command}.1").read_text()
    section = roff.split(".SH EXIT STATUS", 1)[1].split("\n.SH ", 1)[0]
    return {int(c) for c in re.findall(r"^\.TP\n\.B (\d+)\s*$", section, re.M)}


def not_built(command: str) -> bool:
    """The command is still a placeholder of rds/cli/pending.py (it says so in its --help)."""
    proc = subprocess.run([str(BIN / command), "--help"], capture_output=True, text=True, timeout=60)
    return "Not built" in proc.stdout
