"""The one source of time for sopflow.

Everything that needs "now" (timer due dates, task due dates, audit timestamps,
job leases) asks :func:`now`. Tests replace the clock with a :class:`FrozenClock`
and move it; nothing sleeps to wait for a timer.

SpiffWorkflow's timer model reads ``datetime.now(timezone.utc)`` from its own module;
we install a ``datetime`` subclass there whose ``now()`` asks this clock, so BPMN timers
and our jobs table agree on what time it is. All instants are timezone-aware UTC.
"""
from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta, tzinfo

from SpiffWorkflow.bpmn.specs.event_definitions import timer as _spiff_timer


class Clock:
    def now(self) -> datetime:
        raise NotImplementedError


class SystemClock(Clock):
    def now(self) -> datetime:
        return datetime.now(UTC)


class FrozenClock(Clock):
    """A clock that only moves when told to (tests, simulations)."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = (start or datetime(2026, 1, 5, 9, 0, tzinfo=UTC)).astimezone(UTC)
        self._lock = threading.Lock()

    def now(self) -> datetime:
        with self._lock:
            return self._now

    def set(self, instant: datetime) -> None:
        with self._lock:
            self._now = instant.astimezone(UTC)

    def advance(self, delta: timedelta | None = None, **kwargs: float) -> datetime:
        with self._lock:
            self._now += delta if delta is not None else timedelta(**kwargs)
            return self._now


_current: Clock = SystemClock()


def now() -> datetime:
    return _current.now()


def use(clock: Clock) -> Clock:
    """Install ``clock`` process-wide; returns the previous one so callers can restore it."""
    global _current
    previous, _current = _current, clock
    return previous


def current() -> Clock:
    return _current


class _ClockDatetime(datetime):
    """``datetime`` whose ``now()`` is sopflow's clock (installed into SpiffWorkflow's timers)."""

    @classmethod
    def now(cls, tz: tzinfo | None = None) -> datetime:  # type: ignore[override]
        instant = _current.now()
        return instant.astimezone(tz) if tz is not None else instant.replace(tzinfo=None)


_spiff_timer.datetime = _ClockDatetime
