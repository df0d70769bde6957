"""Signed-in browsers: a random session token per sign-in, stored as its SHA-256, with a CSRF token.

The web application's cookie carries the token signed with the server's key
(:func:`signing_key`, shared by every process through ``runtime_settings``); the row makes
sign-out and expiry take effect at once on every process. ``resolve`` answers who a token
belongs to in one read (user, groups, role, preferences). Lifetimes are UTC instants from
:mod:`engine.clock`.
"""
from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import delete, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from engine import audit, clock
from engine.actor import Actor
from engine.audit import Event
from engine.store.db import rowcount
from engine.store.models import BrowserSessionRow, GroupRow, MembershipRow, RuntimeSettingRow, UserRow

SIGNING_KEY = "session_signing_key"


@dataclass(frozen=True)
class BrowserSession:
    """Who a signed-in browser is: the actor plus what pages need of the user."""

    actor: Actor
    csrf_token: str
    display_name: str | None
    locale: str | None
    time_zone: str | None


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def open_session(session: Session, actor: Actor, *, lifetime: timedelta) -> str:
    """Start a session for ``actor`` (already signed in); returns the plain token (never stored)."""
    user_id = session.scalar(select(UserRow.id).where(UserRow.name == actor.name))
    token = secrets.token_urlsafe(32)
    now = clock.now()
    session.add(BrowserSessionRow(token_hash=_hash(token), user_id=user_id, csrf_token=secrets.token_urlsafe(32),
                                  created_at=now, expires_at=now + lifetime))
    session.execute(delete(BrowserSessionRow).where(BrowserSessionRow.user_id == user_id,
                                                    BrowserSessionRow.expires_at <= now))
    return token


def resolve(session: Session, token: str) -> BrowserSession | None:
    """The live session ``token`` belongs to, or None (unknown, signed out or expired)."""
    row = session.execute(
        select(BrowserSessionRow.csrf_token, BrowserSessionRow.expires_at, UserRow.id, UserRow.name, UserRow.role,
               UserRow.display_name, UserRow.locale, UserRow.time_zone)
        .join(UserRow, UserRow.id == BrowserSessionRow.user_id)
        .where(BrowserSessionRow.token_hash == _hash(token))
    ).first()
    if row is None or row.expires_at <= clock.now():
        return None
    groups = session.scalars(select(GroupRow.name).join(MembershipRow, MembershipRow.group_id == GroupRow.id)
                             .where(MembershipRow.user_id == row.id))
    return BrowserSession(Actor(row.name, frozenset(groups), frozenset({row.role})), row.csrf_token,
                          row.display_name, row.locale, row.time_zone)


def close_session(session: Session, token: str) -> None:
    """Sign out: the token stops working on every process at once (audited)."""
    found = session.execute(
        select(UserRow.name).join(BrowserSessionRow, BrowserSessionRow.user_id == UserRow.id)
        .where(BrowserSessionRow.token_hash == _hash(token))).scalar()
    session.execute(delete(BrowserSessionRow).where(BrowserSessionRow.token_hash == _hash(token)))
    if found is not None:
        audit.append_global(session, audit.IDENTITY_CHAIN, [Event("user.signed_out", found, {"name": found})])


def close_sessions_of(session: Session, name: str) -> int:
    """End every browser session of user ``name`` (after an admin sets their password); returns how many.

    The caller audits (the password change's event records the count).
    """
    user_id = session.scalar(select(UserRow.id).where(UserRow.name == name))
    if user_id is None:
        return 0
    return rowcount(session.execute(delete(BrowserSessionRow).where(BrowserSessionRow.user_id == user_id)))


def signing_key(session: Session) -> str:
    """The key that signs session cookies: created once (first use, race-free) and shared by every process."""
    value = session.scalar(select(RuntimeSettingRow.value).where(RuntimeSettingRow.key == SIGNING_KEY))
    if value is not None:
        return str(value)
    row = {"key": SIGNING_KEY, "value": secrets.token_urlsafe(48), "updated_at": clock.now(), "updated_by": "system"}
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    session.execute(insert(RuntimeSettingRow).values(**row).on_conflict_do_nothing(index_elements=["key"]))
    return str(session.scalar(select(RuntimeSettingRow.value).where(RuntimeSettingRow.key == SIGNING_KEY)))
