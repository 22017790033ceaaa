"""The import graph between saev-ops' packages (every import, function-local ones included): no package may import
one that imports it back, directly or through others."""

from __future__ import annotations

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1] / "saev_ops"


def _unit(module: str) -> str:
    """``saev_ops.x`` for any module of package or module ``x``."""
    return ".".join(module.split(".")[:2])


def package_graph() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {}
    for path in ROOT.rglob("*.py"):
        module = ".".join(path.relative_to(ROOT.parent).with_suffix("").parts).removesuffix(".__init__")
        src = _unit(module)
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            for t in targets:
                if t.startswith("saev_ops.") and _unit(t) != src:
                    edges.setdefault(src, set()).add(_unit(t))
    return edges


def cycles(edges: dict[str, set[str]]) -> list[set[str]]:
    """The strongly connected components of more than one package (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(comp)

    for v in list(edges):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycle() -> None:
    assert cycles(package_graph()) == []


def test_job_classes_live_beside_their_work() -> None:
    graph = package_graph()
    assert graph["saev_ops.jobs"] <= {"saev_ops.errors", "saev_ops.schema", "saev_ops.logs", "saev_ops.paths"}, \
        graph["saev_ops.jobs"]  # the launch layer: executors, the Slurm schema, submit; no job kind's work
    assert "saev_ops.cli" not in graph["saev_ops.serve"] and "saev_ops.cli" not in graph["saev_ops.explore"]
    # sae/ is the neural network and its files: registry-aware operations (compare, transfer) live above it
    assert not graph.get("saev_ops.sae", set()) & {"saev_ops.registry", "saev_ops.infer", "saev_ops.train"}
    # the registry learns a run config's shape from below it (runconfig, sae.config), never from the trainer
    assert not graph["saev_ops.registry"] & {"saev_ops.train", "saev_ops.sweeps", "saev_ops.infer"}


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [{"a", "b", "c"}]
    assert cycles({"a": {"b"}, "b": set()}) == []
