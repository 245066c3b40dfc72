"""bench/faults itself: a runner that crashes is a failed row, not a row of zeros; the definition is printed."""

from __future__ import annotations

import importlib.machinery
import importlib.util
from pathlib import Path
from types import ModuleType

import pytest
from conftest import Tree

from faults import audit
from faults.runners import Row

BENCH = Path(__file__).resolve().parents[2] / "bench" / "faults"


def bench() -> ModuleType:
    loader = importlib.machinery.SourceFileLoader("bench_faults", str(BENCH))
    spec = importlib.util.spec_from_loader("bench_faults", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def broken(work: Path, trials: int, seed: int) -> Row:
    """A deliberately broken runner: it sets up real homes, then fails before it has counted anything."""
    tree = Tree(work / "hosts")
    tree.add("mgr")
    audit.watch(tree["mgr"].path)
    raise RuntimeError("deliberately broken")


def held(work: Path, trials: int, seed: int) -> Row:
    return Row("a fault that held", trials=trials, jobs=2 * trials)


def lost_one(work: Path, trials: int, seed: int) -> Row:
    return Row("a fault that lost a job", trials=trials, jobs=trials, lost=1, failed=["job 1 for c: installed 0x"])


def nothing(work: Path, trials: int, seed: int) -> Row:
    return Row("a fault that counted no job", trials=trials)


def rows_of(out: str) -> dict[str, list[str]]:
    table = out.split("\n\n")[1].splitlines()[2:]  # under the header and its rule
    return {line.split("  ")[0]: line.split() for line in table}


def test_a_crashed_runner_is_a_failed_row(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    b = bench()
    code = b.main(["--seed", "1"], [("held", held, 3), ("broken", broken, 3)])
    out = capsys.readouterr().out
    assert code == 1
    rows = rows_of(out)
    assert rows["a fault that held"][-5:] == ["3", "6", "0", "0", "ok"]
    assert rows["broken"] == ["broken", "?", "?", "?", "?", "CRASHED"]  # not lost 0 / doubled 0
    assert audit.DEFINITION in out
    assert "broken: CRASHED\n  the runner crashed: RuntimeError: deliberately broken" in out


def test_a_lost_job_fails_the_row_and_every_row_that_held_passes(capsys: pytest.CaptureFixture[str],
                                                                   tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    b = bench()
    assert b.main(["--seed", "1"], [("held", held, 2), ("lost", lost_one, 2)]) == 1
    out = capsys.readouterr().out
    assert rows_of(out)["a fault that lost a job"][-5:] == ["2", "2", "1", "0", "FAILED"]
    assert "a fault that lost a job: FAILED\n  job 1 for c: installed 0x" in out
    assert b.main(["--seed", "1"], [("held", held, 1), ("nothing", nothing, 4)]) == 1
    assert rows_of(capsys.readouterr().out)["a fault that counted no job"][-6:] == ["4", "0", "0", "0", "NO", "JOBS"]
    assert b.main(["--seed", "1", "--quick"], [("held", held, 100)]) == 0
    out = capsys.readouterr().out
    assert rows_of(out)["a fault that held"][-5:] == ["5", "10", "0", "0", "ok"]  # --quick: a twentieth
    assert "load average" in out and out.startswith("started ")
