"""The `sopflow` command line, run as a user would (a real subprocess, a real database file)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "SOPFLOW_DATA_DIR": str(tmp_path), "SOPFLOW_DATABASE_URL": ""}
    return subprocess.run([sys.executable, "-m", "api.cli", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)


def test_upgrade_deploy_users_and_tokens(tmp_path):
    assert _run(tmp_path, "db", "upgrade").returncode == 0
    deployed = _run(tmp_path, "deploy", "processes/")
    assert deployed.returncode == 0, deployed.stderr
    assert "deployed procurement_approval v1" in deployed.stdout
    assert "unchanged procurement_approval v1" in _run(tmp_path, "deploy", "processes/").stdout
    added = _run(tmp_path, "users", "add", "kim", "--role", "employee", "--group", "support", "--group", "staff")
    assert added.returncode == 0 and "kim (employee)" in added.stdout
    token = _run(tmp_path, "users", "token", "kim")
    assert token.returncode == 0
    assert token.stdout.startswith("sop_") and token.stdout.count("\n") == 1 and " " not in token.stdout.strip()
    listed = _run(tmp_path, "users", "list").stdout
    assert "kim" in listed and "staff, support" in listed
    assert _run(tmp_path, "users", "add", "kim", "--role", "employee").returncode == 1
    demo = _run(tmp_path, "users", "demo")
    assert "These API tokens are shown once" in demo.stdout and "rita" in demo.stdout
    assert "Sign in at" in demo.stdout and "with these passwords" in demo.stdout
    assert "already present" in _run(tmp_path, "users", "demo").stdout


def test_refused_deploy_exits_non_zero_with_the_reason(tmp_path):
    _run(tmp_path, "db", "upgrade")
    bad = tmp_path / "bad.bpmn"
    bad.write_text("<not-bpmn/>")
    result = _run(tmp_path, "deploy", str(bad))
    assert result.returncode == 1 and "neither a BPMN 2.0 nor a DMN" in result.stderr
