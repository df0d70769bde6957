"""Users, groups and tokens (admin only), and who am I."""
from __future__ import annotations

from fastapi import APIRouter, status

from api.deps import ActorDep, DbDep, TokenCacheDep, require
from api.schemas import GroupRead, GroupsUpdate, Me, Page, TokenRead, TokensRevoked, UserCreate, UserRead
from engine import identity

router = APIRouter(prefix="/api", tags=["identity"])


def _user(view: identity.UserView) -> dict:
    return {"id": view.name, **view.__dict__}


@router.get("/me", response_model=Me)
def me(actor: ActorDep) -> Me:
    return Me(id=actor.name, name=actor.name, roles=sorted(actor.roles), groups=sorted(actor.groups))


@router.get("/users", response_model=Page[UserRead])
def users(db: DbDep, actor: ActorDep) -> dict:
    require(actor)
    with db.read() as s:
        items = [_user(u) for u in identity.list_users(s)]
    return {"items": items, "total": len(items), "next_cursor": None}


@router.post("/users", status_code=status.HTTP_201_CREATED, response_model=UserRead)
def add_user(db: DbDep, actor: ActorDep, body: UserCreate) -> dict:
    require(actor)
    view = db.command(lambda s: identity.add_user(s, name=body.name, role=body.role, groups=body.groups,
                                                  display_name=body.display_name, actor=actor))
    return _user(view)


@router.put("/users/{name}/groups", response_model=UserRead)
def set_groups(db: DbDep, actor: ActorDep, cache: TokenCacheDep, name: str, body: GroupsUpdate) -> dict:
    require(actor)
    view = db.command(lambda s: identity.set_groups(s, name=name, groups=body.groups, actor=actor))
    cache.clear()  # this process at once; the others within the cache's lifetime
    return _user(view)


@router.post("/users/{name}/tokens", status_code=status.HTTP_201_CREATED, response_model=TokenRead)
def new_token(db: DbDep, actor: ActorDep, name: str) -> TokenRead:
    require(actor)
    return TokenRead(token=db.command(lambda s: identity.issue_token(s, name=name, actor=actor)))


@router.delete("/users/{name}/tokens", response_model=TokensRevoked)
def revoke_tokens(db: DbDep, actor: ActorDep, cache: TokenCacheDep, name: str) -> TokensRevoked:
    require(actor)
    revoked = db.command(lambda s: identity.revoke_tokens(s, name=name, actor=actor))
    cache.clear()  # this process at once; the others within the cache's lifetime
    return TokensRevoked(revoked=revoked)


@router.get("/groups", response_model=Page[GroupRead])
def groups(db: DbDep, actor: ActorDep) -> dict:
    require(actor)
    with db.read() as s:
        items = [{"id": g, "name": g} for g in identity.list_groups(s)]
    return {"items": items, "total": len(items), "next_cursor": None}
