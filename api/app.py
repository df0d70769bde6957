"""The FastAPI application factory: wires settings, the database and the in-process worker."""
from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.responses import JSONResponse

from engine import migrate
from engine.config import Settings
from engine.config import load as load_settings
from engine.store.db import Database
from engine.worker import run_forever


def create_app(*, settings: Settings | None = None, db: Database | None = None, run_worker: bool = True) -> FastAPI:
    settings = settings or load_settings()
    database = db or Database(settings.resolved_database_url())
    stop = threading.Event()

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        worker = None
        if run_worker:
            worker = threading.Thread(target=run_forever, kwargs={"db": database, "stop": stop},
                                      name="sopflow-worker", daemon=True)
            worker.start()
        yield
        stop.set()
        if worker is not None:
            worker.join(timeout=5)

    app = FastAPI(title="sopflow", version="0.1.0", lifespan=lifespan,
                  description="BPMN workflow engine and SOP runtime")
    app.state.db = database
    app.state.settings = settings

    @app.get("/healthz", tags=["operations"])
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["operations"])
    def readyz() -> JSONResponse:
        try:
            at_head = migrate.is_at_head(database.url)
        except Exception:  # noqa: BLE001 - readiness reports, never raises
            return JSONResponse({"status": "unavailable", "database": "unreachable"}, status_code=503)
        if not at_head:
            return JSONResponse({"status": "unavailable", "database": "migrations pending"}, status_code=503)
        return JSONResponse({"status": "ready"})

    return app
