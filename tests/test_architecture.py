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


#: the core of the framework: what a KD step is made of; it knows nothing of runs, configs of runs or studies
CORE = (
    "unikd.distiller",
    "unikd.plan",
    "unikd.knowledge",
    "unikd.capture",
    "unikd.inline_attention",
    "unikd.losses",
    "unikd.divergences",
    "unikd.chunked",
    "unikd.matching",
)
#: files allowed over MAX_FILE_LINES, each with its reason (none today)
LONG_FILES: dict[str, str] = {}
#: functions allowed over MAX_FUNCTION_LINES, each with its reason (none today)
LONG_FUNCTIONS: dict[str, str] = {}
MAX_FILE_LINES, MAX_FUNCTION_LINES = 600, 80


def _in(module: str, rooms) -> bool:
    return any(module == r or module.startswith(r + ".") for r in rooms)


def test_the_core_never_imports_a_run_a_run_config_or_a_study():
    graph = import_graph()
    core = [m for m in graph if _in(m, CORE)]
    assert "unikd.knowledge.attention" in core and "unikd.plan" in core
    bad = {
        m: sorted(t for t in graph[m] if _in(t, ("unikd.train", "unikd.config", "unikd.study", "unikd.cli")))
        for m in core
    }
    assert {m: t for m, t in bad.items() if t} == {}


def test_training_never_imports_a_study_or_the_cli():
    graph = import_graph()
    train = [m for m in graph if _in(m, ("unikd.train",))]
    assert "unikd.train.loop" in train and "unikd.train.checkpoint" in train
    bad = {m: sorted(t for t in graph[m] if _in(t, ("unikd.study", "unikd.cli", "unikd.quickstart"))) for m in train}
    assert {m: t for m, t in bad.items() if t} == {}


def test_the_generative_rooms_never_import_a_run_a_study_or_the_cli():
    graph = import_graph()
    rooms = (
        "unikd.generation",
        "unikd.sequence_kd",
        "unikd.gguf",
        "unikd.scratch",
        "unikd.data.causal",
        "unikd.divergences",
    )
    assert all(r in graph for r in rooms)
    forbidden = ("unikd.train", "unikd.study", "unikd.cli", "unikd.quickstart")
    bad = {m: sorted(t for t in graph[m] if _in(t, forbidden)) for m in rooms}
    assert {m: t for m, t in bad.items() if t} == {}


def test_the_task_form_rooms_never_import_a_run_a_study_or_the_cli():
    graph = import_graph()
    rooms = ("unikd.ensemble", "unikd.data.qa")  # several teachers as one; extractive QA's windows and answers
    assert all(r in graph for r in rooms)
    forbidden = ("unikd.train", "unikd.study", "unikd.cli", "unikd.quickstart")
    bad = {m: sorted(t for t in graph[m] if _in(t, forbidden)) for m in rooms}
    assert {m: t for m, t in bad.items() if t} == {}


def test_no_file_and_no_function_is_too_long_to_read():
    long_files, long_functions = {}, {}
    for path in sorted(SRC.rglob("*.py")):
        name = str(path.relative_to(SRC.parent))
        text = path.read_text()
        if len(text.splitlines()) > MAX_FILE_LINES and name not in LONG_FILES:
            long_files[name] = len(text.splitlines())
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                key = f"{name}:{node.name}"
                if lines > MAX_FUNCTION_LINES and key not in LONG_FUNCTIONS:
                    long_functions[key] = lines
    assert long_files == {}, f"over {MAX_FILE_LINES} lines: split them, or list them in LONG_FILES with the reason"
    assert long_functions == {}, f"over {MAX_FUNCTION_LINES} lines: name their steps, or list them with the reason"
