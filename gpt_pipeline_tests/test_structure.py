"""The package's layers, read from its source: the core never imports Dagster or MLflow, no
import cycle (imports inside functions count), no module past 400 lines, few loose modules.

``problems(root)`` does the reading; the tests run it on ``gpt_pipeline`` and, to show that it
finds what it looks for, on small packages planted in ``tmp_path``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "gpt_pipeline"
ORCHESTRATION = ("dagster", "dagster_graphql", "dagster_pipes", "dagster_k8s", "dagster_postgres", "mlflow")
# where orchestration may be imported: the Dagster and MLflow layers, and the entry points
ALLOWED = ("defs", "tracking", "cli", "definitions", "__main__")
LAYERS = ("model", "tokenizer", "data", "training", "tracking", "defs", "interop", "evaluation")
MAX_LINES = 400
MAX_LOOSE = 10


def modules(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package at ``root``."""
    found = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def parse(source: str) -> ast.Module:
    """``ast.parse``, again when CPython 3.11 raises "AST constructor recursion depth mismatch":
    its AST conversion keeps one recursion counter for all threads (python/cpython#106905), so a
    thread an earlier test left compiling at the same moment can throw it off. The parse itself
    is deterministic: any other error, or the same one three times, is raised."""
    for attempt in range(3):
        try:
            return ast.parse(source)
        except SystemError as error:
            if "recursion depth mismatch" not in str(error) or attempt == 2:
                raise
    raise AssertionError("unreachable")


def imports(name: str, path: Path, known: dict[str, Path]) -> tuple[set[str], set[str]]:
    """(modules of the package that ``name`` imports, top-level names of the others)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    ours, others = set(), set()
    for node in ast.walk(parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package, ``level - 1`` folders up
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:  # gpt_pipeline.model.gpt.GPT -> gpt_pipeline.model.gpt
                target = target.rpartition(".")[0]
            if target and target != name:
                ours.add(target)
        others.update(t.split(".")[0] for t in targets if t and t.split(".")[0] != root_name(known))
    return ours, others


def root_name(known: dict[str, Path]) -> str:
    return min(known, key=len)


def cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` (a list of modules, the first repeated at the end), if any.
    A package's ``__init__`` importing its own modules is no cycle of ideas: its edges into the
    package are left out."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if nxt.startswith(node + "."):
                continue  # an __init__ re-exporting its own modules
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


def problems(root: Path) -> list[str]:
    known = modules(root)
    top = root_name(known)
    graph, found = {}, []
    for name, path in known.items():
        graph[name], others = imports(name, path, known)
        room = name.split(".")[1] if "." in name else ""
        leaked = sorted(others & set(ORCHESTRATION))
        if leaked and room not in ALLOWED:
            found.append(f"{name} imports {', '.join(leaked)} outside {', '.join(ALLOWED)}")
        lines = len(path.read_text().splitlines())
        if lines > MAX_LINES:
            found.append(f"{name} has {lines} lines (more than {MAX_LINES})")
    if loop := cycle(graph):
        found.append("import cycle: " + " -> ".join(loop))
    loose = [p for p in root.glob("*.py")]
    if len(loose) > MAX_LOOSE:
        found.append(f"{len(loose)} modules loose in {top}/ (at most {MAX_LOOSE})")
    return found


def test_the_package_keeps_its_layers():
    assert problems(PACKAGE) == []
    present = {p.parent.name for p in PACKAGE.glob("*/__init__.py")}
    assert set(LAYERS) <= present, sorted(set(LAYERS) - present)


def _plant(root: Path, files: dict[str, str]) -> Path:
    package = root / "pkg"
    for name, text in files.items():
        path = package / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return package


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"__init__.py": "", "a.py": "def f():\n    from pkg import b\n", "b.py": "from pkg.a import f\n"},
         "import cycle: pkg.a -> pkg.b -> pkg.a"),
        ({"__init__.py": "", "core/__init__.py": "", "core/m.py": "import mlflow.tracking\n"},
         "pkg.core.m imports mlflow outside"),
        ({"__init__.py": "", "core/__init__.py": "", "core/m.py": "from dagster import asset\n"},
         "pkg.core.m imports dagster outside"),
        ({"__init__.py": "", "big.py": "x = 1\n" * 401}, "pkg.big has 401 lines"),
        ({"__init__.py": "", **{f"m{i}.py": "" for i in range(10)}}, "11 modules loose in pkg/"),
        ({"__init__.py": "", "sub/__init__.py": "", "sub/a.py": "from .b import y\n",
          "sub/b.py": "from . import a\ny = 1\n"},
         "import cycle: pkg.sub.a -> pkg.sub.b -> pkg.sub.a"),
    ],
    ids=["lazy_cycle", "mlflow_in_core", "dagster_in_core", "long_module", "too_many_loose", "relative_cycle"],
)
def test_the_reader_finds_each_kind_of_problem(tmp_path, files, expected):
    found = problems(_plant(tmp_path, files))
    assert any(line.startswith(expected) for line in found), found


def test_orchestration_is_allowed_in_its_own_rooms_and_reexports_are_no_cycle(tmp_path):
    files = {"__init__.py": "", "defs/__init__.py": "from pkg.defs.a import x\n", "defs/a.py": "import dagster\nx = 1\n",
             "tracking/__init__.py": "", "tracking/t.py": "import mlflow\n", "cli.py": "import dagster\n"}
    assert problems(_plant(tmp_path, files)) == []
