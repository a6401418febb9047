"""The architecture as the import graph sees it: no circles, no layer importing a higher one,
and no source file a reader cannot take in at once."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("features", "export", "feature_service", "gateway", "online_metrics", "refresh", "stack",
            "perf")
# What each stage may import from the project (itself included). features/ is the layer training
# and serving share; the gateway reaches the feature store through feature_service/ and the
# serving contract through features/, never through the offline package.
ALLOWED = {
    "features": {"features"},
    "export": {"features", "export"},
    "feature_service": {"features", "feature_service"},
    "gateway": {"features", "feature_service", "gateway"},
    "online_metrics": {"features", "online_metrics"},
    "refresh": {"features", "export", "refresh"},
    "stack": {"features", "export", "feature_service", "gateway", "online_metrics", "refresh", "stack"},
    "perf": {"features", "export", "feature_service", "gateway", "online_metrics", "refresh", "stack",
             "perf"},
}
MAX_LINES = 450
GENERATED = ("gateway/proto/recsys_pb2.py", "gateway/proto/recsys_pb2.pyi",
             "gateway/proto/recsys_pb2_grpc.py")


def _modules() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = path
    return out


MODULES = _modules()


def _resolve(name: str) -> str | None:
    """The project module an import names (``a.b.c`` may be module ``a.b`` with attribute c)."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def _imports(module: str, path: Path) -> set[str]:
    """Project modules imported anywhere in the file, function-level imports included: a circle
    hidden inside a function is still a circle."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            names = [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        found |= {m for m in map(_resolve, names) if m is not None and m != module}
    return found


GRAPH = {module: _imports(module, path) for module, path in MODULES.items()}


def test_the_graph_sees_the_project():
    assert {"features.contract", "features.model_inputs", "export.triton.rollout",
            "gateway.app"} <= set(MODULES)
    assert "features.contract" in GRAPH["gateway.triton_client"]


def test_no_stage_imports_a_stage_it_must_not():
    wrong = [f"{module} imports {target}" for module, targets in GRAPH.items()
             for target in sorted(targets)
             if target.split(".")[0] not in ALLOWED[module.split(".")[0]]]
    assert wrong == []


def _cycle() -> list[str] | None:
    """One import circle, if any (depth-first search over the module graph)."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(GRAPH[node]):
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state and (found := visit(target)):
                return found
        path.pop()
        state[node] = 2
        return None

    for module in sorted(GRAPH):
        if module not in state and (found := visit(module)):
            return found
    return None


def test_no_import_circles():
    cycle = _cycle()
    assert cycle is None, " -> ".join(cycle)


def test_a_circle_would_be_found(monkeypatch):
    monkeypatch.setitem(GRAPH, "features.catalog", GRAPH["features.catalog"] | {"features.sequence"})
    assert _cycle() is not None


@pytest.mark.parametrize("package", [p for p in PACKAGES if p != "perf"])
def test_source_files_stay_readable(package):
    long = {str(p.relative_to(REPO)): n for p in (REPO / package).rglob("*.py")
            if str(p.relative_to(REPO)) not in GENERATED
            and (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}, f"split these by concept (over {MAX_LINES} lines): {long}"
