"""What a page route depends on: the signed-in user (session cookie) and the CSRF check.

The cookie ``sopflow_session`` holds a random session token signed with the server's key
(itsdangerous); it is HttpOnly, SameSite=Lax, and Secure when ``SOPFLOW_COOKIE_SECURE=1``.
The token's row (engine.browser_sessions) is read once per request. Every state-changing
request must carry the session's CSRF token (form field ``csrf_token`` or header
``X-CSRF-Token``), OWASP's synchronizer-token pattern.
"""
from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request
from itsdangerous import BadSignature, Signer

from engine import browser_sessions
from engine.actor import Actor
from engine.browser_sessions import BrowserSession
from engine.errors import Forbidden
from engine.store.db import Database

COOKIE = "sopflow_session"
UNSAFE = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class SignInRequired(Exception):  # noqa: N818 - an answer (303 to /login), not a fault
    """No valid session: the page answers ``303 /login?next=<path>``."""


def signer(request: Request) -> Signer:
    """The cookie signer of this process (the key is read, or created, once)."""
    cached: Signer | None = getattr(request.app.state, "cookie_signer", None)
    if cached is None:
        db: Database = request.app.state.db
        cached = Signer(db.command(browser_sessions.signing_key), salt="sopflow.session")
        request.app.state.cookie_signer = cached
    return cached


def session_token(request: Request) -> str | None:
    """The plain session token from the cookie, or None when missing or badly signed."""
    cookie = request.cookies.get(COOKIE)
    if not cookie or len(cookie) > 300:
        return None
    try:
        return signer(request).unsign(cookie).decode()
    except (BadSignature, UnicodeDecodeError):
        return None


def optional_session(request: Request) -> BrowserSession | None:
    """The signed-in browser, or None; remembered on ``request.state`` for the rest of the request."""
    if hasattr(request.state, "page_session"):
        return request.state.page_session  # type: ignore[no-any-return]
    token = session_token(request)
    found = None
    if token is not None:
        with request.app.state.db.read() as s:
            found = browser_sessions.resolve(s, token)
    request.state.page_session = found
    if found is not None:
        request.state.user = found.actor.name
    return found


def page_session(request: Request) -> BrowserSession:
    found = optional_session(request)
    if found is None:
        raise SignInRequired
    return found


PageSessionDep = Annotated[BrowserSession, Depends(page_session)]


def page_actor(found: PageSessionDep) -> Actor:
    return found.actor


PageActorDep = Annotated[Actor, Depends(page_actor)]


async def check_csrf(request: Request, found: PageSessionDep) -> None:
    """Refuse (403) a state-changing request without the session's CSRF token."""
    if request.method not in UNSAFE:
        return
    sent = request.headers.get("x-csrf-token")
    if sent is None:
        value = (await request.form()).get("csrf_token")
        sent = value if isinstance(value, str) else None
    if not sent or not hmac.compare_digest(sent.encode(), found.csrf_token.encode()):
        raise Forbidden("this form has expired or did not come from sopflow; reload the page and try again")


CsrfDep = Annotated[None, Depends(check_csrf)]
