"""The import direction holds: api, web -> engine -> engine.store -> SpiffWorkflow; engine knows no HTTP."""
from __future__ import annotations

import ast
from pathlib import Path

ENGINE = Path(__file__).resolve().parent.parent / "engine"
FORBIDDEN = ("fastapi", "starlette", "uvicorn", "api", "web", "prometheus_client")


def test_engine_imports_nothing_from_the_edges():
    offenders = []
    for path in ENGINE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] in FORBIDDEN]
    assert offenders == []


def test_spiffworkflow_is_only_touched_inside_engine():
    api = ENGINE.parent / "api"
    touching = [p.name for p in api.rglob("*.py") if "SpiffWorkflow" in p.read_text()]
    assert touching == []
