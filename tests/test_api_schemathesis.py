"""Property-based run of schemathesis against our OpenAPI document: no input yields a 5xx.

Runs with an admin token (so every operation is reachable) over a SQLite database holding
the shipped procedures and a running instance; the other suites cover PostgreSQL.
"""
from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, given, settings

from api.app import create_app
from engine.commands import SYSTEM, deploy, start_instance
from engine.config import Settings
from engine.identity import seed_demo
from engine.loading import UploadedFile
from tests.test_processes import PROCESSES

EXAMPLES = 15


def _sopflow_app(db):
    tokens = db.command(lambda s: seed_demo(s, actor=SYSTEM))
    dmn = [UploadedFile(p.name, p.read_bytes()) for p in PROCESSES.glob("*.dmn")]
    for path in sorted(PROCESSES.glob("*.bpmn")):
        db.command(lambda s, p=path: deploy(s, files=[UploadedFile(p.name, p.read_bytes()), *dmn], actor=SYSTEM))
    db.command(lambda s: start_instance(s, key="budget_review", actor=SYSTEM, business_key="FY"))
    # long polls of external-task fetches answer within 0.2 s here (the client's timeout is 10 s)
    return create_app(settings=Settings(max_long_poll_ms=200), db=db, run_worker=False), tokens["admin"]


def test_no_input_makes_the_server_fail(sqlite_db):
    app, token = _sopflow_app(sqlite_db)
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    headers = {"Authorization": f"Bearer {token}"}
    failures: list[str] = []
    calls: list[int] = []
    operations = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        operations += 1

        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        def exercise(case):
            try:
                response = case.call(headers=headers)
            except Exception as exc:  # noqa: BLE001 - an unhandled server error surfaces here
                failures.append(f"{case.operation.label}: {type(exc).__name__}: {exc}"[:300])
                return
            calls.append(response.status_code)
            if response.status_code >= 500:
                failures.append(f"{case.operation.label}: {response.status_code} {response.text[:200]}")

        exercise()
    assert operations >= 25 and len(calls) >= operations * 5
    assert sum(1 for c in calls if c < 300) > operations  # not only refusals: real work was done
    assert sorted(set(failures)) == []
