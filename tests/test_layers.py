"""The house's shape (issue 8): no import cycle in ``rds/``, counting every import wherever it is
written (inside a function or under TYPE_CHECKING too), and the distribution status recorded
through one listener rather than called from the modules that change jobs."""

from __future__ import annotations

import ast
from pathlib import Path

RDS = Path(__file__).resolve().parent.parent / "rds"


def module_name(path: Path) -> str:
    parts = path.relative_to(RDS.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports() -> dict[str, set[str]]:
    """Module -> the rds modules it imports (``from rds.x import y`` names rds.x.y when that is a module)."""
    modules = {module_name(p): p for p in RDS.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                assert not node.level, f"{path}: a relative import"  # rds imports absolutely
                base = node.module or ""
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            for t in targets:
                if t in modules and t != name:
                    graph[name].add(t)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycle_in_rds() -> None:
    assert cycles(imports()) == []


def test_the_checker_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_distribution_status_is_fed_by_one_listener() -> None:
    """Before issue 8, 10 call sites in poller, protocol and startup fed it; now the session attaches
    its listener and only the facility's own commands (rdsdlv, rdsdlvse, rdsdlvclr) use it besides."""
    users = {m for m, deps in imports().items() if "rds.delivery" in deps}
    assert users - {"rds.cli.rdsdlv", "rds.cli.rdsdlvse", "rds.cli.rdsdlvclr"} == {"rds.session"}
    assert "delivery.Listener(" in (RDS / "session.py").read_text()
