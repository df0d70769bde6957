"""The benchmark scripts start as documented (``.venv/bin/python bench/<name>.py``).

Run as a script, a file's own folder comes first on ``sys.path``, where ``bench/http.py``
would shadow the standard library's ``http`` for every import of FastAPI or urllib; each
script must drop that folder before its imports. ``--help`` imports everything a run does.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


@pytest.mark.parametrize("script", sorted(p.name for p in BENCH.glob("*.py") if p.name != "__init__.py"))
def test_bench_script_starts(script: str) -> None:
    done = subprocess.run([sys.executable, str(BENCH / script), "--help"], capture_output=True, text=True,  # noqa: S603
                          timeout=120, cwd=BENCH.parent)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage:" in done.stdout
