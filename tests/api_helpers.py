"""Fixtures-as-functions for API tests: an app over a real database, with the demo organisation."""
from __future__ import annotations

from dataclasses import dataclass

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
