"""Import arrows point one way: worker/ never imports engine/; core/ never imports torch; the
engine reaches the executor only through the Executor protocol (no duck-typed probing)."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "pagedllm"


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_worker_imports_nothing_from_engine():
    for path in (SRC / "worker").glob("*.py"):
        bad = {n for n in _imports(path) if n.startswith("pagedllm.engine")}
        assert not bad, f"{path.name} imports {bad}"


def test_core_imports_no_torch():
    for path in (SRC / "core").glob("*.py"):
        assert not {n for n in _imports(path) if n.split(".")[0] == "torch"}, path.name


def test_engine_does_not_probe_the_executor():
    text = (SRC / "engine" / "llm_engine.py").read_text()
    for probe in ("getattr(self.runner", "hasattr(self.runner", "supports_async"):
        assert probe not in text
