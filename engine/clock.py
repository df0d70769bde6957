"""The one source of time for sopflow.

Everything that needs "now" (timer due dates, task due dates, audit timestamps,
job leases) asks :func:`now`. Tests replace the clock with a :class:`FrozenClock`
and move it; nothing sleeps to wait for a timer.

SpiffWorkflow's timer model reads ``datetime.now(timezone.utc)`` from its own module;
we install a ``datetime`` subclass there whose ``now()`` asks this clock, so BPMN timers
and our jobs table agree on what time it is. All instants are timezone-aware UTC.
"""
from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
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


class OffsetClock(Clock):
    """``base`` moved by an offset that every process reads from one shared place (the admin clock).

    ``read_offset`` fetches the stored offset (engine.commands.clock_control reads the
    ``runtime_settings`` row); it is asked at most every ``ttl`` seconds, so another process's
    move is seen within ``ttl``. :meth:`remember` updates the cache at once after this process
    moved the clock itself. A failing read keeps the last offset known.
    """

    def __init__(self, base: Clock, read_offset: Callable[[], timedelta], *, ttl: float = 0.5) -> None:
        self.base = base
        self._read = read_offset
        self._ttl = ttl
        self._offset = timedelta(0)
        self._read_at = float("-inf")
        self._lock = threading.Lock()

    def offset(self) -> timedelta:
        with self._lock:
            if time.monotonic() - self._read_at >= self._ttl:
                with contextlib.suppress(Exception):  # the clock must answer; the next read retries
                    self._offset = self._read()
                self._read_at = time.monotonic()
            return self._offset

    def remember(self, offset: timedelta) -> None:
        with self._lock:
            self._offset, self._read_at = offset, time.monotonic()

    def now(self) -> datetime:
        return self.base.now() + self.offset()


_current: Clock = SystemClock()


def now() -> datetime:
    return _current.now()


def parse_instant(text: str) -> datetime:
    """An ISO 8601 instant as a timezone-aware UTC datetime; a naive one is read as UTC.

    That is how SpiffWorkflow's timer values (``event_value``) and sopflow's stored instants
    are written. Raises ValueError for text that is not an ISO 8601 date-time.
    """
    instant = datetime.fromisoformat(text)
    return instant.astimezone(UTC) if instant.tzinfo else instant.replace(tzinfo=UTC)


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
