"""Passwords and sign-in: argon2id hashes (argon2-cffi) and a lockout after repeated failures.

A user signs in to the web application with a name and password; the API keeps using tokens
(engine.identity). After ``MAX_FAILURES`` wrong passwords in a row the account is locked for
``LOCKOUT`` (OWASP's authentication cheat sheet: lock per account, tell the user it is locked,
unlock after a time); every failure, lock and sign-in is appended to the identity audit chain.
A wrong name costs the same argon2 verification as a wrong password, so timing does not tell
which names exist.
"""
from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from engine import audit, clock
from engine.actor import Actor
from engine.audit import Event
from engine.errors import InvalidInput, NotFound
from engine.store.models import GroupRow, MembershipRow, UserRow

MAX_FAILURES = 5
LOCKOUT = timedelta(minutes=15)
MIN_LENGTH = 8
MAX_LENGTH = 1000  # argon2 takes any length; a cap keeps a hostile form from costing much

_hasher = PasswordHasher()  # argon2id with argon2-cffi's RFC 9106 "low memory" defaults
_DUMMY_HASH = _hasher.hash("sopflow: a password no one has")


def generate_password() -> str:
    """A random password for a new or reset account (16 URL-safe characters, ~96 bits)."""
    return secrets.token_urlsafe(12)


def set_password(session: Session, *, name: str, password: str, actor: Actor) -> None:
    """Store ``password``'s argon2id hash for user ``name`` and lift any lockout.

    Raises ``NotFound`` for an unknown user and ``InvalidInput`` for a password shorter than
    ``MIN_LENGTH`` or longer than ``MAX_LENGTH`` characters.
    """
    if not isinstance(password, str) or not MIN_LENGTH <= len(password) <= MAX_LENGTH:
        raise InvalidInput(f"a password needs {MIN_LENGTH} to {MAX_LENGTH} characters", field="password")
    user = session.scalar(select(UserRow).where(UserRow.name == name))
    if user is None:
        raise NotFound(f"user '{name}' not found", name=name)
    user.password_hash = _hasher.hash(password)
    user.failed_sign_ins = 0
    user.locked_until = None
    session.flush()
    audit.append_global(session, audit.IDENTITY_CHAIN, [Event("user.password_set", actor.name, {"name": name})])


@dataclass(frozen=True)
class SignIn:
    """What a sign-in attempt came to: ``actor`` when it succeeded, else ``refusal`` (a message for the user)."""

    actor: Actor | None
    refusal: str | None = None
    locked_until: datetime | None = None  # set when the refusal is a lockout (UTC)


WRONG = "the user name or password is wrong"


def sign_in(session: Session, *, name: str, password: str) -> SignIn:
    """Check ``name``/``password``; count failures, lock after ``MAX_FAILURES``, audit each outcome.

    Never raises for a wrong name or password (the caller commits the failure count); a
    refusal says only "wrong name or password", or that the account is locked until when.
    """
    now = clock.now()
    user = session.scalar(select(UserRow).where(UserRow.name == name[:100]))
    if user is None or user.password_hash is None:
        _verify(_DUMMY_HASH, password)
        audit.append_global(session, audit.IDENTITY_CHAIN, [Event("user.sign_in_failed", name[:100],
                                                                  {"name": name[:100], "reason": "unknown"})])
        return SignIn(None, WRONG)
    if user.locked_until is not None and user.locked_until > now:
        return SignIn(None, f"this account is locked after {MAX_FAILURES} failed sign-ins; "
                            f"try again after {user.locked_until:%H:%M} UTC or ask an administrator",
                      user.locked_until)
    if not _verify(user.password_hash, password):
        user.failed_sign_ins += 1
        events = [Event("user.sign_in_failed", user.name, {"name": user.name, "reason": "password",
                                                           "failures": user.failed_sign_ins})]
        if user.failed_sign_ins >= MAX_FAILURES:
            user.locked_until = now + LOCKOUT
            user.failed_sign_ins = 0
            events.append(Event("user.locked", "system", {"name": user.name,
                                                          "until": user.locked_until.isoformat()}))
        session.flush()
        audit.append_global(session, audit.IDENTITY_CHAIN, events)
        return SignIn(None, WRONG, user.locked_until)
    if _hasher.check_needs_rehash(user.password_hash):
        user.password_hash = _hasher.hash(password)
    user.failed_sign_ins = 0
    user.locked_until = None
    session.flush()
    audit.append_global(session, audit.IDENTITY_CHAIN, [Event("user.signed_in", user.name, {"name": user.name})])
    groups = session.scalars(select(GroupRow.name).join(MembershipRow, MembershipRow.group_id == GroupRow.id)
                             .where(MembershipRow.user_id == user.id))
    return SignIn(Actor(user.name, frozenset(groups), frozenset({user.role})))


def _verify(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password[:MAX_LENGTH])
    except (VerificationError, InvalidHashError):
        return False
