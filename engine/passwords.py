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

from engine import audit, clock, identity
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
        raise InvalidInput("a password needs {min_length} to {max_length} characters", field="password",
                           params={"min_length": MIN_LENGTH, "max_length": MAX_LENGTH})
    user = session.scalar(select(UserRow).where(UserRow.name == name))
    if user is None:
        raise NotFound("user '{name}' not found", name=name, params={"name": name})
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
    The name may be typed in any case (``RITA`` signs in as ``rita``: names are unique
    whatever their case, engine.identity); the session's actor carries the stored name.
    """
    now = clock.now()
    user = _signing_in(session, name[:100])
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


def _signing_in(session: Session, name: str) -> UserRow | None:
    """The user ``name`` signs in as: the exact name, else the one whose name differs only in case."""
    exact = session.scalar(select(UserRow).where(UserRow.name == name))
    if exact is not None or not name:
        return exact
    return session.scalar(select(UserRow).where(UserRow.name_key == identity.name_key(name)))


def _verify(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password[:MAX_LENGTH])
    except (VerificationError, InvalidHashError):
        return False


def reset_password(session: Session, *, name: str, password: str | None, actor: Actor) -> str | None:
    """An administrator sets user ``name``'s password: ``password``, or a generated one when None.

    Lifts any lockout and ends the user's browser sessions (OWASP: a changed password ends the
    sessions opened with the old one), audited as ``user.password_set`` plus
    ``user.sessions_ended`` when some were open. Returns the generated password (shown to the
    admin once, never stored) or None when ``password`` was given. Errors as :func:`set_password`.
    """
    from engine import browser_sessions

    generated = generate_password() if password is None else None
    set_password(session, name=name, password=generated or password or "", actor=actor)
    ended = browser_sessions.close_sessions_of(session, name)
    if ended:
        audit.append_global(session, audit.IDENTITY_CHAIN, [Event("user.sessions_ended", actor.name, {
            "name": name, "count": ended})])
    return generated


def unlock(session: Session, *, name: str, actor: Actor) -> bool:
    """Lift user ``name``'s sign-in lockout and reset the failure count; audited as ``user.unlocked``.

    Returns False (and changes and appends nothing) when the account is neither locked nor has
    failures counted, e.g. the lock ran out meanwhile. NotFound for an unknown user.
    """
    user = session.scalar(select(UserRow).where(UserRow.name == name))
    if user is None:
        raise NotFound("user '{name}' not found", name=name, params={"name": name})
    locked = user.locked_until is not None and user.locked_until > clock.now()
    if not locked and not user.failed_sign_ins:
        return False
    user.locked_until, user.failed_sign_ins = None, 0
    session.flush()
    audit.append_global(session, audit.IDENTITY_CHAIN, [Event("user.unlocked", actor.name, {"name": name})])
    return True


def add_user_with_password(session: Session, *, name: str, role: str, groups: list[str] | None = None,
                           display_name: str | None = None, password: str | None = None, generate: bool = False,
                           actor: Actor) -> tuple[identity.UserView, str | None]:
    """Create a user (:func:`engine.identity.add_user`) and, in the same transaction, give them a password.

    ``password`` sets it, ``generate=True`` makes one (returned once, never stored); neither
    leaves the user without sign-in (API tokens only, e.g. an ``integration`` user). Both is
    InvalidInput (field ``password``). Every bad field is reported at once (InvalidInput's
    ``problems``, as :func:`engine.identity.refuse`). Returns the user and the generated password or None.
    """
    problems = identity.new_user_problems(name=name, role=role, groups=groups, display_name=display_name)
    if password is not None and generate:
        problems["password"] = InvalidInput("give a password or ask for a generated one, not both")
    elif password is not None and not MIN_LENGTH <= len(password) <= MAX_LENGTH:
        problems["password"] = InvalidInput("a password needs {min_length} to {max_length} characters",
                                            params={"min_length": MIN_LENGTH, "max_length": MAX_LENGTH})
    identity.refuse(problems)
    view = identity.add_user(session, name=name, role=role, groups=groups, display_name=display_name, actor=actor)
    if password is None and not generate:
        return view, None
    generated = generate_password() if generate else None
    set_password(session, name=name, password=generated or password or "", actor=actor)
    return identity.get_user(session, name), generated
