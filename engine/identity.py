"""Users, groups, memberships and API tokens (stored as SHA-256 hashes).

Roles: ``designer`` (deploys), ``employee`` (own and group tasks, starts processes),
``auditor`` (reads history and audit, nothing else), ``integration`` (a role for other
systems: sends messages to any instance, starts processes by message, fetches, completes
and fails external tasks, reads incidents; no inbox), ``admin`` (everything). Every change
is appended to the identity audit chain.

User names are unique whatever their case: ``Rita`` cannot be added while ``rita`` exists
(``users.name_key``, the name in lower case under a unique index, holds this on SQLite and
PostgreSQL alike). Everywhere else a name is matched exactly, as Camunda matches user ids
(assignees, candidate users, the API's ``/users/{name}``); only sign-in also accepts the
name typed in another case (engine.passwords).
"""
from __future__ import annotations

import hashlib
import re
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.orm import Session

from engine import audit, clock
from engine.actor import Actor
from engine.audit import Event
from engine.errors import Conflict, InvalidInput, NotFound, Phrase
from engine.store.db import rowcount
from engine.store.models import ApiTokenRow, GroupRow, MembershipRow, UserRow

ROLES = ("designer", "employee", "auditor", "integration", "admin")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,99}$")
TOKEN_PREFIX = "sop_"  # noqa: S105 (a visible prefix that tells tokens apart, not a secret)


@dataclass(frozen=True)
class UserView:
    """A user as the admin pages and ``/api/users`` show them.

    ``can_sign_in``: the user has a password (engine.passwords); ``locked_until``: a UTC instant
    while sign-in is locked after repeated failures, else None; ``live_tokens``: API tokens not
    revoked.
    """

    name: str
    role: str
    groups: list[str]
    display_name: str | None
    can_sign_in: bool = False
    locked_until: datetime | None = None
    live_tokens: int = 0


def _view(session: Session, user: UserRow) -> UserView:
    tokens = session.scalar(select(func.count()).select_from(ApiTokenRow).where(
        ApiTokenRow.user_id == user.id, ApiTokenRow.revoked_at.is_(None))) or 0
    locked = user.locked_until if user.locked_until is not None and user.locked_until > clock.now() else None
    return UserView(user.name, user.role, _groups_of(session, user.id), user.display_name,
                    can_sign_in=user.password_hash is not None, locked_until=locked, live_tokens=tokens)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


# What a name is called in a refusal, by field (a Phrase: translated on the pages).
_NAME_LABELS = {"name": Phrase("name"), "group": Phrase("group")}


def _check_name(value: str, what: str) -> str:
    if not isinstance(value, str) or not _NAME.match(value):
        raise InvalidInput("{what} '{value}' is not valid: use letters, digits, '.', '_', '@' or '-' "
                           "(at most 100 characters)", field=what,
                           params={"what": _NAME_LABELS.get(what, what), "value": value})
    return value


def _groups_of(session: Session, user_id: int) -> list[str]:
    return sorted(session.scalars(select(GroupRow.name).join(MembershipRow, MembershipRow.group_id == GroupRow.id)
                                  .where(MembershipRow.user_id == user_id)))


def _ensure_group(session: Session, name: str) -> GroupRow:
    group = session.scalar(select(GroupRow).where(GroupRow.name == name))
    if group is None:
        group = GroupRow(name=_check_name(name, "group"))
        session.add(group)
        session.flush()
    return group


def new_user_problems(*, name: str, role: str, groups: list[str] | None = None,
                      display_name: str | None = None) -> dict[str, InvalidInput]:
    """Every reason the fields of a new user are refused, by field (``name``, ``role``, ``display_name``,
    ``group``); empty when they are fine. Whether the name is taken is not checked here."""
    problems: dict[str, InvalidInput] = {}
    try:
        _check_name(name, "name")
    except InvalidInput as exc:
        problems["name"] = exc
    if role not in ROLES:
        problems["role"] = InvalidInput("role must be one of {roles}", params={"roles": ", ".join(ROLES)})
    if display_name is not None and len(display_name) > 200:
        problems["display_name"] = InvalidInput("a display name has at most 200 characters")
    for group in groups or []:
        try:
            _check_name(group, "group")
        except InvalidInput as exc:
            problems.setdefault("group", exc)
    return problems


def refuse(problems: Mapping[str, InvalidInput]) -> None:
    """Raise InvalidInput for the first problem (its ``field``), all of them under ``problems`` (their
    messages) and ``details`` (the errors, for translation)."""
    if problems:
        field, first = next(iter(problems.items()))
        raise InvalidInput(first.template, field=field, params=first.params, details=problems,
                           problems={k: e.message for k, e in problems.items()} if len(problems) > 1 else None)


def name_key(name: str) -> str:
    """The case-free form of a user name (``users.name_key``): names are ASCII, so lower case is enough."""
    return name.lower()


def taken_name(session: Session, name: str) -> str | None:
    """The existing user name that ``name`` equals or differs from only in case, or None."""
    return session.scalar(select(UserRow.name).where(or_(UserRow.name == name, UserRow.name_key == name_key(name)))
                          .order_by(UserRow.id).limit(1))


def add_user(session: Session, *, name: str, role: str, groups: list[str] | None = None,
             display_name: str | None = None, actor: Actor) -> UserView:
    """Create user ``name`` with ``role`` (one of :data:`ROLES`) in ``groups`` (created when new); audited.

    The user has no password and no token yet. InvalidInput names the first bad field (see
    :func:`new_user_problems`; context ``problems`` lists all when several are); Conflict (field
    ``name``) when the name is taken, also in another case (``Rita`` while ``rita`` exists).
    """
    refuse(new_user_problems(name=name, role=role, groups=groups, display_name=display_name))
    existing = taken_name(session, name)
    if existing == name:
        raise Conflict("user '{name}' already exists", name=name, field="name", params={"name": name})
    if existing is not None:
        raise Conflict("user '{existing}' already exists; user names must differ in more than upper and "
                       "lower case", name=name, field="name",
                       params={"existing": existing})
    user = UserRow(name=name, name_key=name_key(name), role=role, display_name=display_name,
                   created_at=clock.now())
    session.add(user)
    session.flush()
    for group in sorted(set(groups or [])):
        session.add(MembershipRow(user_id=user.id, group_id=_ensure_group(session, group).id))
    session.flush()
    audit.append_global(session, audit.IDENTITY_CHAIN, [Event("user.created", actor.name, {
        "name": name, "role": role, "groups": sorted(set(groups or []))})])
    return _view(session, user)


def set_groups(session: Session, *, name: str, groups: list[str], actor: Actor) -> UserView:
    """Make ``groups`` the user's groups (replacing the old ones; new groups are created); audited.

    InvalidInput (field ``group``) for a malformed group name, NotFound for an unknown user.
    """
    user = _user(session, name)
    session.execute(delete(MembershipRow).where(MembershipRow.user_id == user.id))
    for group in sorted(set(groups)):
        session.add(MembershipRow(user_id=user.id, group_id=_ensure_group(session, group).id))
    session.flush()
    audit.append_global(session, audit.IDENTITY_CHAIN, [Event("user.groups_changed", actor.name, {
        "name": name, "groups": sorted(set(groups))})])
    return _view(session, user)


def set_role(session: Session, *, name: str, role: str, actor: Actor) -> UserView:
    """Give user ``name`` the role ``role`` (one of :data:`ROLES`); audited as ``user.role_changed``.

    The last admin cannot lose the admin role (Conflict): someone must be left to administer.
    InvalidInput (field ``role``) for an unknown role, NotFound for an unknown user. Setting the
    role a user already has changes nothing and appends nothing.
    """
    if role not in ROLES:
        raise InvalidInput("role must be one of {roles}", field="role", params={"roles": ', '.join(ROLES)})
    user = _user(session, name)
    if user.role == role:
        return _view(session, user)
    if user.role == "admin":
        admins = session.scalar(select(func.count()).select_from(UserRow).where(UserRow.role == "admin")) or 0
        if admins <= 1:
            raise Conflict("'{name}' is the only admin; make another user admin first", name=name,
                           params={"name": name})
    previous, user.role = user.role, role
    session.flush()
    audit.append_global(session, audit.IDENTITY_CHAIN, [Event("user.role_changed", actor.name, {
        "name": name, "from": previous, "to": role})])
    return _view(session, user)


def get_user(session: Session, name: str) -> UserView:
    """One user (NotFound when unknown)."""
    return _view(session, _user(session, name))


def _user(session: Session, name: str) -> UserRow:
    user = session.scalar(select(UserRow).where(UserRow.name == name))
    if user is None:
        raise NotFound("user '{name}' not found", name=name, params={"name": name})
    return user


def issue_token(session: Session, *, name: str, actor: Actor) -> str:
    """Create a new API token for ``name``; the plain token is returned once and never stored."""
    user = _user(session, name)
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    session.add(ApiTokenRow(user_id=user.id, token_hash=hash_token(token), created_at=clock.now()))
    session.flush()
    audit.append_global(session, audit.IDENTITY_CHAIN, [Event("token.issued", actor.name, {"name": name})])
    return token


def revoke_tokens(session: Session, *, name: str, actor: Actor) -> int:
    """Revoke every live token of ``name``; returns how many were revoked."""
    user = _user(session, name)
    revoked = rowcount(session.execute(
        update(ApiTokenRow).where(ApiTokenRow.user_id == user.id, ApiTokenRow.revoked_at.is_(None))
        .values(revoked_at=clock.now())
    ))
    audit.append_global(session, audit.IDENTITY_CHAIN, [Event("tokens.revoked", actor.name,
                                                              {"name": name, "count": revoked})])
    return revoked


def authenticate(session: Session, token: str) -> Actor | None:
    """The actor an API token belongs to, or None when it is malformed, unknown or revoked (one read)."""
    if not token or not token.startswith(TOKEN_PREFIX) or len(token) > 200:
        return None
    return _authenticate_hash(session, hash_token(token))


def _authenticate_hash(session: Session, token_hash: str) -> Actor | None:
    row = session.execute(
        select(UserRow.id, UserRow.name, UserRow.role)
        .join(ApiTokenRow, ApiTokenRow.user_id == UserRow.id)
        .where(ApiTokenRow.token_hash == token_hash, ApiTokenRow.revoked_at.is_(None))
    ).first()
    if row is None:
        return None
    return Actor(row.name, frozenset(_groups_of(session, row.id)), frozenset({row.role}))


class TokenCache:
    """Who a token belongs to, remembered for ``ttl`` seconds per process.

    Keyed by the token's SHA-256 (the raw token is never kept). A hit costs no database
    read; a miss runs :func:`authenticate` and remembers a found actor (never a refusal,
    so a token issued elsewhere works at once). Revoking tokens or changing a user's
    groups empties this process's cache at once (:meth:`clear`, called by the edge after
    the command commits); another server process keeps answering from its cache until
    the entry is ``ttl`` seconds old, so **a revocation or group change takes effect
    everywhere within ``ttl`` seconds** (``SOPFLOW_TOKEN_CACHE_SECONDS``, default 5; 0
    turns caching off). Ages use the monotonic clock, not :mod:`engine.clock`: this is a
    cache lifetime, not business time.
    """

    def __init__(self, ttl: float, *, max_entries: int = 10_000) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._entries: dict[str, tuple[float, Actor]] = {}
        self._lock = threading.Lock()

    def cached(self, token: str) -> Actor | None:
        """The actor of ``token`` if this cache holds it and it is younger than ``ttl``; else None.

        No database and no blocking: the API's async authentication answers a hit on the
        event loop and runs :meth:`actor` in a thread only on a miss.
        """
        if not token or not token.startswith(TOKEN_PREFIX) or len(token) > 200:
            return None
        hit = self._entries.get(hash_token(token))
        return hit[1] if hit is not None and time.monotonic() - hit[0] < self.ttl else None

    def actor(self, token: str, read: Callable[[], AbstractContextManager[Session]]) -> Actor | None:
        """The actor of ``token`` (None: unknown or revoked); ``read`` opens a session on a miss."""
        if not token or not token.startswith(TOKEN_PREFIX) or len(token) > 200:
            return None
        key = hash_token(token)
        now = time.monotonic()
        hit = self._entries.get(key)
        if hit is not None and now - hit[0] < self.ttl:
            return hit[1]
        with read() as session:
            actor = _authenticate_hash(session, key)
        if actor is not None and self.ttl > 0:
            with self._lock:
                if len(self._entries) >= self.max_entries:
                    self._entries.clear()  # a bound, not an LRU: a refill costs one read per token
                self._entries[key] = (now, actor)
        else:
            self._entries.pop(key, None)
        return actor

    def clear(self) -> None:
        """Forget every token (after a revocation or a group change in this process)."""
        with self._lock:
            self._entries.clear()


def list_users(session: Session) -> list[UserView]:
    """Every user by name, with groups, whether they can sign in, lockout and live token count."""
    users = session.scalars(select(UserRow).order_by(UserRow.name)).all()
    groups: dict[int, list[str]] = {}
    for user_id, group in session.execute(select(MembershipRow.user_id, GroupRow.name)
                                          .join(GroupRow, GroupRow.id == MembershipRow.group_id)
                                          .order_by(GroupRow.name)):
        groups.setdefault(user_id, []).append(group)
    tokens: dict[int, int] = {user_id: count for user_id, count in session.execute(
        select(ApiTokenRow.user_id, func.count()).where(ApiTokenRow.revoked_at.is_(None)).group_by(ApiTokenRow.user_id))}
    now = clock.now()
    return [UserView(u.name, u.role, groups.get(u.id, []), u.display_name, can_sign_in=u.password_hash is not None,
                     locked_until=u.locked_until if u.locked_until is not None and u.locked_until > now else None,
                     live_tokens=tokens.get(u.id, 0)) for u in users]


def list_groups(session: Session) -> list[str]:
    return list(session.scalars(select(GroupRow.name).order_by(GroupRow.name)))


DEMO_ORGANISATION: list[tuple[str, str, list[str], str]] = [
    ("admin", "admin", [], "Administrator"),
    ("dora", "designer", [], "Dora the process designer"),
    ("audrey", "auditor", [], "Audrey the auditor"),
    ("rita", "employee", ["staff"], "Rita, requester"),
    ("max", "employee", ["staff", "managers"], "Max, manager"),
    ("fiona", "employee", ["staff", "finance"], "Fiona, finance"),
    ("paul", "employee", ["staff", "procurement"], "Paul, procurement"),
    ("sam", "employee", ["staff", "support"], "Sam, support agent"),
    ("lena", "employee", ["staff", "support", "support-leads"], "Lena, support lead"),
    ("carl", "employee", ["staff", "controllers"], "Carl, controller"),
    ("mia", "employee", ["staff", "management"], "Mia, management"),
    ("eve", "employee", ["staff", "executives"], "Eve, executive"),
    ("ian", "employee", ["staff", "it"], "Ian, IT"),
    ("hal", "employee", ["staff", "hr"], "Hal, HR"),
    ("fay", "employee", ["staff", "facilities"], "Fay, facilities"),
    ("worker", "integration", [], "External-task worker"),
]


def seed_demo(session: Session, *, actor: Actor) -> dict[str, str]:
    """Create the demo organisation; returns new tokens for the users it created (none if present)."""
    tokens = {}
    for name, role, groups, display in DEMO_ORGANISATION:
        if taken_name(session, name) is not None:
            continue
        add_user(session, name=name, role=role, groups=groups, display_name=display, actor=actor)
        tokens[name] = issue_token(session, name=name, actor=actor)
    return tokens


LOCALES = ("en", "zh-Hans")


def set_preferences(session: Session, *, name: str, locale: str | None, time_zone: str | None,
                    actor: Actor) -> None:
    """Set a user's language (``en`` | ``zh-Hans``; None: from the browser) and IANA time zone (None: UTC).

    Raises ``InvalidInput`` naming the field for an unknown locale or zone, ``NotFound`` for an unknown user.
    """
    from zoneinfo import available_timezones

    if locale is not None and locale not in LOCALES:
        raise InvalidInput("language must be one of {locales}", field="locale",
                           params={"locales": ', '.join(LOCALES)})
    if time_zone is not None and time_zone not in available_timezones():
        raise InvalidInput("'{value}' is not a known time zone (e.g. Europe/Berlin, Asia/Shanghai)",
                           field="time_zone", params={"value": time_zone[:64]})
    user = _user(session, name)
    user.locale, user.time_zone = locale, time_zone
    session.flush()
    audit.append_global(session, audit.IDENTITY_CHAIN, [Event("user.preferences_set", actor.name, {
        "name": name, "locale": locale, "time_zone": time_zone})])


def demo_passwords(session: Session, *, actor: Actor) -> dict[str, str]:
    """Give each demo user without a password a generated one; returns them (shown once, never stored)."""
    from engine import passwords

    created = {}
    for name, _role, _groups, _display in DEMO_ORGANISATION:
        user = session.scalar(select(UserRow).where(UserRow.name == name))
        if user is None or user.password_hash is not None or user.role == "integration":
            continue
        created[name] = passwords.generate_password()
        passwords.set_password(session, name=name, password=created[name], actor=actor)
    return created
