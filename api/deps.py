"""Request dependencies: the database, the authenticated actor and role checks."""
from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import Depends, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import AfterValidator, AwareDatetime
from starlette.concurrency import run_in_threadpool

from api.problems import Unauthorized
from engine.actor import Actor
from engine.config import Settings
from engine.errors import Forbidden
from engine.identity import TokenCache
from engine.queries import Paging
from engine.store.db import Database

bearer = HTTPBearer(auto_error=False, description="an API token from `sopflow users token NAME`")


# The dependencies are ``async def`` when they do not block: FastAPI runs a plain ``def``
# dependency in a worker thread, a hand-off (and back) per dependency per request.
async def get_db(request: Request) -> Database:
    return request.app.state.db


DbDep = Annotated[Database, Depends(get_db)]


async def token_cache_dep(request: Request) -> TokenCache:
    return token_cache(request)


def token_cache(request: Request) -> TokenCache:
    """This process's token cache (``engine.identity.TokenCache``); cleared after identity changes."""
    return request.app.state.token_cache


TokenCacheDep = Annotated[TokenCache, Depends(token_cache_dep)]


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


SettingsDep = Annotated[Settings, Depends(get_settings)]


async def current_actor(request: Request, db: DbDep,
                        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> Actor:
    """The caller of an API token: from this process's token cache, or (a miss) a database read in a thread."""
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise Unauthorized("send an API token as 'Authorization: Bearer <token>'")
    cache = token_cache(request)
    actor = cache.cached(credentials.credentials)
    if actor is None:
        actor = await run_in_threadpool(cache.actor, credentials.credentials, db.read)
    if actor is None:
        raise Unauthorized("the API token is unknown or revoked")
    request.state.user = actor.name
    return actor


ActorDep = Annotated[Actor, Depends(current_actor)]


def _utc(value: datetime) -> datetime:
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise ValueError("is out of range once converted to UTC") from None


# Every date filter takes an ISO 8601 instant WITH a time zone ("Z" or "+02:00"); one without is
# a 422 saying so (guessing the server's or UTC would silently shift a filter by hours).
Instant = Annotated[AwareDatetime, AfterValidator(_utc)]
INSTANT_HELP = "an ISO 8601 instant with a time zone, e.g. 2026-01-01T00:00:00Z"


async def paging(limit: Annotated[int | None, Query(ge=1, le=500)] = None,
                 cursor: Annotated[str | None, Query(max_length=200,
                                                     description="next_cursor of the previous page")] = None,
                 first_result: Annotated[int | None, Query(ge=0, le=2**31 - 1)] = None,
                 max_results: Annotated[int | None, Query(ge=1, le=500)] = None) -> Paging:
    """Every list pages with limit/cursor, or Camunda's first_result/max_results."""
    return Paging.parse(limit=limit, cursor=cursor, first_result=first_result, max_results=max_results)


PagingDep = Annotated[Paging, Depends(paging)]


def require(actor: Actor, *roles: str) -> None:
    """Admins pass every check; others need one of ``roles``."""
    if actor.is_admin or actor.roles & set(roles):
        return
    if not roles:
        raise Forbidden("this needs the admin role")
    raise Forbidden("this needs the {roles} role", params={"roles": " or ".join(roles)})
