"""The layout's promises, checked on the source: no import cycle, the KD step written once, a short loop."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "unikd"


def _module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def import_graph() -> dict[str, set[str]]:
    """unikd module -> the unikd modules it imports anywhere in its file (function-local imports included)."""
    modules = {_module_name(p): p for p in SRC.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        edges = set()
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "unikd":
                targets = [
                    f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                    for a in node.names
                ]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names if a.name.split(".")[0] == "unikd"]
            edges |= {t for t in targets if t in modules and t != name}
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_in_unikd():
    graph = import_graph()
    assert {"unikd.config", "unikd.plan", "unikd.train.loop", "unikd.study.runner", "unikd.data.tasks"} <= set(graph)
    assert "unikd.initialization" in graph["unikd.config"]  # the graph sees real edges
    assert find_cycle(graph) is None


def test_the_kd_step_exists_once():
    """The trainer and the benchmark run ``Distiller.step``; nobody else wires captures to a plan by hand."""
    from unikd.train import loop as train

    bench = (ROOT / "benchmarks" / "kd_step.py").read_text()
    assert "distiller.step(batch)" in bench and "FeatureCapture(" not in bench
    loop = inspect.getsource(train.train_loop)
    assert "state.distiller.step(batch" in loop
    assert not [p.name for p in (SRC / "train").glob("*.py") if "FeatureCapture" in p.read_text()]
    hand_wired = [
        p.name
        for p in SRC.rglob("*.py")
        if "inline_consumer(" in p.read_text() and p.name not in ("plan.py", "distiller.py")
    ]
    assert hand_wired == []


def test_the_training_loop_and_its_setup_read_in_one_screen():
    from unikd.train import loop

    for fn in (loop.train_loop, loop.setup):
        lines = inspect.getsource(fn).splitlines()
        assert len(lines) <= 60, (fn.__name__, len(lines))
