"""Fixtures-as-functions for API tests: an app over a real database, with the demo organisation."""
from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient

from api.app import create_app
from engine.commands import SYSTEM
from engine.config import Settings
from engine.identity import seed_demo
from engine.store.db import Database


@dataclass
class Api:
    client: TestClient
    db: Database
    tokens: dict[str, str]

    def h(self, user: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[user]}"}

    def get(self, user: str, path: str, **kw):
        return self.client.get(path, headers=self.h(user), **kw)

    def post(self, user: str, path: str, **kw):
        return self.client.post(path, headers=self.h(user), **kw)

    def put(self, user: str, path: str, **kw):
        return self.client.put(path, headers=self.h(user), **kw)

    def deploy(self, user: str, *files: tuple[str, bytes]):
        return self.post(user, "/api/deployments",
                         files=[("files", (name, data, "application/xml")) for name, data in files])

    def start(self, user: str, key: str, **body):
        return self.post(user, f"/api/process-definitions/{key}/start", json=body)

    def inbox(self, user: str, **params) -> list[dict]:
        r = self.get(user, "/api/tasks", params=params)
        assert r.status_code == 200, r.text
        return r.json()["items"]


def make_api(db: Database) -> Api:
    tokens = db.command(lambda s: seed_demo(s, actor=SYSTEM))
    app = create_app(settings=Settings(), db=db, run_worker=False)
    return Api(TestClient(app, raise_server_exceptions=False), db, tokens)


@contextmanager
def live_server(db: Database, *, lifespan: str = "off", settings: Settings | None = None,
                setup: Callable[[FastAPI], None] | None = None) -> Iterator[tuple[str, int, dict[str, str]]]:
    """sopflow served by a real uvicorn on a free loopback port, with the demo organisation.

    Yields ``(host, port, tokens)``; the server stops when the block ends. For what only a
    real server shows: chunked bodies on the wire, clients that speak HTTP themselves, a
    browser. ``setup`` may add test-only routes to the app before it serves.
    """
    tokens = db.command(lambda s: seed_demo(s, actor=SYSTEM))
    app = create_app(settings=settings or Settings(), db=db, run_worker=False)
    if setup is not None:
        setup(app)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="critical",
                                           lifespan=lifespan))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield "127.0.0.1", port, tokens
    finally:
        server.should_exit = True
        thread.join(timeout=10)
