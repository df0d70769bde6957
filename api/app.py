"""The FastAPI application factory: settings, database, routes, errors, observability, worker."""
from __future__ import annotations

import os
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response
from sqlalchemy import func, select

from api import docs, observability, problems
from api.deps import ActorDep, DbDep, require
from api.edge import RequestGuard
from api.routes import (
    admin,
    audit,
    definitions,
    engine_rest,
    external_tasks,
    identity,
    instances,
    notifications,
    sla,
    task_notes,
    tasks,
)
from engine import clock, migrate, worker
from engine.commands import clock_control
from engine.config import Settings
from engine.config import load as load_settings
from engine.identity import TokenCache
from engine.store.db import Database
from engine.store.models import TaskRow
from web import app as web

DESCRIPTION = """
sopflow runs standard operating procedures as BPMN 2.0 processes.

Every endpoint except `/healthz` and `/readyz` needs `Authorization: Bearer <token>`
(`sopflow users token NAME` prints one; `/engine-rest` also takes HTTP Basic with the token
as the password, as Camunda clients send it). Errors are `application/problem+json`
(RFC 9457) with a stable `code`. Lists answer `{"items": [...], "total": n, "total_capped": false,
"next_cursor": ...}` and page with `limit`/`cursor` or `first_result`/`max_results`. The task
inbox counts exactly up to 1000 and then answers `total: 1000, total_capped: true` ("1000+");
`/api/tasks/count` likewise answers `{"count": 1000, "capped": true}`.
"""


SERVE_WORKER_ENV = "SOPFLOW_SERVE_RUN_WORKER"


def serve_app() -> FastAPI:
    """The app factory ``sopflow serve --workers N`` hands uvicorn (one call per worker process).

    The timer worker is not run here: the serving supervisor runs it once (``api.cli``),
    unless ``SOPFLOW_SERVE_RUN_WORKER=1`` says this process should.
    """
    observability.configure_logging()  # a spawned process: set up its own (JSON) logging
    return create_app(run_worker=os.environ.get(SERVE_WORKER_ENV) == "1")



# The routes defined here are module-level functions that find their app's state through the
# request, never closures over one app's objects: FastAPI keeps what it learns about each
# endpoint callable in LRU caches of 4096 callables per process, so a closure per app keeps
# every app made in the process alive (the test suite makes one per test; that heap growth made
# full garbage collections take seconds, docs/notes/pollflake.md).


def readyz(db: DbDep) -> JSONResponse:
    """Ready when the database answers and its schema is at the migrations' head (else 503)."""
    try:
        at_head = migrate.is_at_head(db.url)
    except Exception:  # noqa: BLE001 - readiness reports, never raises
        return JSONResponse({"status": "unavailable", "database": "unreachable"}, status_code=503)
    if not at_head:
        return JSONResponse({"status": "unavailable", "database": "migrations pending"}, status_code=503)
    return JSONResponse({"status": "ready"})


def healthz() -> dict[str, str]:
    """The process answers (liveness; no database)."""
    return {"status": "ok"}


def metrics(db: DbDep, actor: ActorDep) -> Response:
    """Prometheus text: the engine's counters, HTTP metrics and open tasks past their due time (admin)."""
    require(actor)
    with db.read() as s:
        breached = s.scalar(select(func.count()).select_from(TaskRow).where(
            TaskRow.state == "open", TaskRow.due_at <= clock.now())) or 0
    return Response(observability.render_metrics(breached), media_type="text/plain; version=0.0.4")


def create_app(*, settings: Settings | None = None, db: Database | None = None, run_worker: bool = True) -> FastAPI:
    settings = settings or load_settings()
    database = db or Database(settings.resolved_database_url())
    database.retries = settings.command_retries
    stop = threading.Event()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        previous_clock = None
        if settings.clock_control:  # the admin clock: this process's clock plus the shared offset
            previous_clock = clock.current()
            app.state.controlled_clock = clock_control.install(database)
        thread = None
        if run_worker:
            thread = threading.Thread(target=worker.run_forever,
                                      kwargs={"db": database, "stop": stop, "settings": settings},
                                      name="sopflow-worker", daemon=True)
            thread.start()
        yield
        stop.set()
        worker.wake()
        if thread is not None:
            thread.join(timeout=5)
        if previous_clock is not None:
            clock.use(previous_clock)
            app.state.controlled_clock = None

    app = FastAPI(title="sopflow", version="0.1.0", lifespan=lifespan, description=DESCRIPTION,
                  default_response_class=problems.SafeJSONResponse,
                  docs_url=None, redoc_url=None)  # /docs from local files (api/docs.py); no ReDoc
    app.state.db = database
    app.state.settings = settings
    app.state.token_cache = TokenCache(settings.token_cache_seconds)
    problems.install(app)
    app.add_middleware(RequestGuard, max_bytes=settings.max_request_bytes, max_json_bytes=settings.max_json_bytes)
    observability.install(app)  # outermost: every answer, refusals and 500s included, is counted and logged
    for module in (definitions, instances, tasks, task_notes, audit, identity, external_tasks, engine_rest, admin,
                   notifications, sla):
        app.include_router(module.router)
    docs.install(app)
    web.install(app)

    app.get("/healthz", tags=["operations"])(healthz)
    app.get("/readyz", tags=["operations"], responses={503: {"description": "not ready"}})(readyz)
    app.get("/metrics", tags=["operations"], response_class=Response,
            responses={200: {"content": {"text/plain": {}}}})(metrics)
    return app
