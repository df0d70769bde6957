"""Fixtures-as-functions for page tests: the app over a real database, users signed in with a session."""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from fastapi.testclient import TestClient

from api.app import create_app
from engine import passwords
from engine.commands import SYSTEM
from engine.config import Settings
from engine.identity import seed_demo
from engine.store.db import Database

PASSWORD = "correct horse battery"  # noqa: S105 - the test users' password


@dataclass
class Web:
    """The app, the demo organisation's API tokens, and one signed-in TestClient per user."""

    app: object
    db: Database
    tokens: dict[str, str]
    clients: dict[str, TestClient] = field(default_factory=dict)

    def anonymous(self, **headers: str) -> TestClient:
        return TestClient(self.app, raise_server_exceptions=False, follow_redirects=False, headers=headers)

    def give_password(self, user: str, password: str = PASSWORD) -> None:
        self.db.command(lambda s: passwords.set_password(s, name=user, password=password, actor=SYSTEM))

    def sign_in(self, user: str, password: str = PASSWORD, **headers: str) -> TestClient:
        """A client signed in as ``user`` (given the test password first)."""
        if user not in self.clients:
            self.give_password(user, password)
            client = self.anonymous(**headers)
            r = post_login(client, user, password)
            assert r.status_code == 303, r.text
            self.clients[user] = client
        return self.clients[user]

    def api(self, user: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[user]}"}


def make_web(db: Database, settings: Settings | None = None) -> Web:
    tokens = db.command(lambda s: seed_demo(s, actor=SYSTEM))
    return Web(create_app(settings=settings or Settings(), db=db, run_worker=False), db, tokens)


def hidden(html: str, name: str) -> str:
    """The value of the hidden input ``name`` in a page."""
    match = re.search(rf'name="{name}" value="([^"]*)"', html)
    assert match, f"no hidden field {name}"
    return match.group(1)


def post_login(client: TestClient, user: str, password: str, next_path: str = ""):  # noqa: ANN201
    page = client.get("/login")
    return client.post("/login", data={"username": user, "password": password, "next": next_path,
                                       "login_token": hidden(page.text, "login_token")})


def csrf(client: TestClient, path: str = "/settings") -> str:
    """The session's CSRF token, read from a page's form."""
    return hidden(client.get(path).text, "csrf_token")
