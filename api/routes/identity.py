"""Users, groups and tokens (admin only), and who am I."""
from __future__ import annotations

from fastapi import APIRouter, status

from api.deps import ActorDep, DbDep, TokenCacheDep, require
from api.schemas import (
    GroupRead,
    GroupsUpdate,
    Me,
    Page,
    PasswordSet,
    PasswordSetRead,
    RoleUpdate,
    TokenRead,
    TokensRevoked,
    Unlocked,
    UserCreate,
    UserCreated,
    UserRead,
)
from engine import identity, passwords
from engine.errors import InvalidInput

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


@router.post("/users", status_code=status.HTTP_201_CREATED, response_model=UserCreated)
def add_user(db: DbDep, actor: ActorDep, body: UserCreate) -> dict:
    """Add a user (admin); with `password` or `generate_password` they can sign in to the web pages at once."""
    require(actor)
    view, generated = db.command(lambda s: passwords.add_user_with_password(
        s, name=body.name, role=body.role, groups=body.groups, display_name=body.display_name,
        password=body.password, generate=body.generate_password, actor=actor))
    return {**_user(view), "password": generated}


@router.get("/users/{name}", response_model=UserRead)
def get_user(db: DbDep, actor: ActorDep, name: str) -> dict:
    require(actor)
    with db.read() as s:
        return _user(identity.get_user(s, name))


@router.put("/users/{name}/role", response_model=UserRead)
def set_role(db: DbDep, actor: ActorDep, cache: TokenCacheDep, name: str, body: RoleUpdate) -> dict:
    """Change a user's role (admin); the last admin keeps theirs (409)."""
    require(actor)
    view = db.command(lambda s: identity.set_role(s, name=name, role=body.role, actor=actor))
    cache.clear()  # this process at once; the others within the cache's lifetime
    return _user(view)


@router.put("/users/{name}/password", response_model=PasswordSetRead)
def set_password(db: DbDep, actor: ActorDep, name: str, body: PasswordSet) -> PasswordSetRead:
    """Set (`password`) or reset (`generate: true`, answered once) a user's password (admin).

    Lifts a lockout and ends the user's browser sessions.
    """
    require(actor)
    if (body.password is None) == (not body.generate):
        raise InvalidInput('give either "password" or "generate": true', field="password")
    generated = db.command(lambda s: passwords.reset_password(s, name=name, password=body.password, actor=actor))
    return PasswordSetRead(password=generated)


@router.post("/users/{name}/unlock", response_model=Unlocked)
def unlock(db: DbDep, actor: ActorDep, name: str) -> Unlocked:
    """Lift a sign-in lockout before it runs out (admin)."""
    require(actor)
    return Unlocked(unlocked=db.command(lambda s: passwords.unlock(s, name=name, actor=actor)))


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
