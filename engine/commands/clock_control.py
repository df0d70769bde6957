"""The controllable clock (``SOPFLOW_CLOCK_CONTROL=1``): read, advance or set the server's time.

The clock is the system's (or a test's) plus an offset stored in ``runtime_settings``
under :data:`OFFSET_KEY`, so every process (API, separate ``sopflow worker`` processes)
agrees on the time: each reads the offset through :class:`engine.clock.OffsetClock`, cached
for half a second. Moving the clock is an admin's act, audited on the ``clock`` chain; time
only moves forward (a move back is refused: jobs already fired cannot un-fire).
"""
from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from engine import audit, clock
from engine.actor import Actor
from engine.audit import Event
from engine.errors import InvalidInput
from engine.loading import duration_from
from engine.store.db import Database
from engine.store.models import RuntimeSettingRow

OFFSET_KEY = "clock_offset_seconds"
CLOCK_CHAIN = "clock"


def read_offset(session: Session) -> timedelta:
    """The stored offset (0 when the clock was never moved)."""
    value = session.scalar(select(RuntimeSettingRow.value).where(RuntimeSettingRow.key == OFFSET_KEY))
    return timedelta(seconds=float(value or 0))


def install(db: Database) -> clock.OffsetClock:
    """Wrap the current clock in an :class:`~engine.clock.OffsetClock` reading ``db``; returns it.

    Idempotent for the same database: an installed offset clock is returned as is.
    """
    current = clock.current()
    if isinstance(current, clock.OffsetClock):
        return current

    def read() -> timedelta:
        with db.read() as session:
            return read_offset(session)

    controlled = clock.OffsetClock(current, read)
    clock.use(controlled)
    return controlled


def describe(controlled: clock.OffsetClock) -> dict[str, Any]:
    """``{"now": instant, "offset_seconds": float, "system_now": instant}``."""
    offset = controlled.offset()
    base = controlled.base.now()
    return {"now": base + offset, "offset_seconds": offset.total_seconds(), "system_now": base}


def move_clock(session: Session, *, controlled: clock.OffsetClock, actor: Actor, advance: str | None = None,
               to: datetime | None = None) -> timedelta:
    """Advance the clock by an ISO 8601 duration (``PT25H``) or set it to an instant; returns the new offset.

    Exactly one of ``advance``/``to`` is given (InvalidInput otherwise, or when the duration
    is unreadable or the move goes back in time). The caller commits, then calls
    ``controlled.remember(offset)`` and wakes the worker.
    """
    if (advance is None) == (to is None):
        raise InvalidInput('give either "advance" (an ISO 8601 duration like "PT25H") or "set" (an instant)',
                           field="advance")
    offset = read_offset(session)
    base = controlled.base.now()
    now = base + offset
    if advance is not None:
        try:
            target = duration_from(advance.strip(), now)
        except (ValueError, OverflowError):
            raise InvalidInput("advance '{value}' is not an ISO 8601 duration like PT25H or P2D",
                               field="advance", params={"value": advance[:60]}) from None
    elif to is not None:
        if to.tzinfo is None:
            raise InvalidInput("set needs an instant with a time zone, e.g. 2026-01-01T09:00:00Z", field="set")
        target = to
    if target < now:
        raise InvalidInput("the clock only moves forward; it is already {value}",
                           field="set" if to is not None else "advance", params={"value": now.isoformat()})
    new_offset = target - base
    row = session.get(RuntimeSettingRow, OFFSET_KEY)
    if row is None:
        session.add(RuntimeSettingRow(key=OFFSET_KEY, value=new_offset.total_seconds(), updated_at=target,
                                      updated_by=actor.name))
    else:
        row.value, row.updated_at, row.updated_by = new_offset.total_seconds(), target, actor.name
    audit.append_global(session, CLOCK_CHAIN, [Event("clock.moved", actor.name, {
        "from": now, "to": target, "offset_seconds": new_offset.total_seconds()})])
    return new_offset
