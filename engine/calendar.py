"""Business calendars: working hours, weekends and holidays, so "2 business days" means that.

A calendar has a time zone, opening and closing times, working weekdays and holidays.
``default`` is Monday-Friday 09:00-18:00 in ``SOPFLOW_CALENDAR_TZ`` (UTC when unset), with
holidays from ``SOPFLOW_CALENDAR_HOLIDAYS`` (a file, one ISO date per line, ``#`` comments).
More calendars come from ``SOPFLOW_CALENDARS``, a JSON file::

    {"cn": {"timezone": "Asia/Shanghai", "open": "09:00", "close": "18:00",
            "workdays": [1, 2, 3, 4, 5], "holidays": ["2026-10-01"], "holidays_file": "cn.txt"},
     "munich": {"timezone": "Europe/Berlin", "country": "DE", "subdivision": "BY"}}

(``workdays`` are ISO weekdays, Monday = 1.) ``country`` (ISO 3166-1 alpha-2) and optional
``subdivision`` (ISO 3166-2 code without the country, e.g. ``BY`` for Bavaria) add that
place's public holidays, as the `holidays` package (pinned) knows them, observed days
included, to the listed and file holidays; ``default`` takes them from
``SOPFLOW_CALENDAR_COUNTRY`` / ``SOPFLOW_CALENDAR_SUBDIVISION``. Business durations (:meth:`BusinessCalendar.add`)
read an ISO 8601 duration in working time: each day (``D``; a week ``W`` is five) is one
working day, keeping the time of day, and hours/minutes/seconds are working hours. Years and
months have no business meaning and are refused. Plain ISO durations elsewhere stay calendar time.
"""
from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from SpiffWorkflow.bpmn.specs.event_definitions.timer import TimerEventDefinition

from engine.errors import InvalidInput

_PUBLIC_HOLIDAYS_LOCK = threading.Lock()
MAX_DAYS = 366 * 20  # no business duration walks further than this (a misconfigured calendar cannot spin)


@dataclass(frozen=True)
class BusinessCalendar:
    """Working time: ``open``..``close`` local time on ``workdays`` (ISO weekdays) that are not ``holidays``."""

    name: str = "default"
    zone: ZoneInfo = field(default_factory=lambda: ZoneInfo("UTC"))
    open: time = time(9, 0)
    close: time = time(18, 0)
    workdays: frozenset[int] = frozenset({1, 2, 3, 4, 5})
    holidays: frozenset[date] = frozenset()
    # a country's public holidays (holidays.HolidayBase: computed per year on first use, any year)
    public_holidays: Any = field(default=None, compare=False, repr=False)

    def is_working_day(self, day: date) -> bool:
        if day.isoweekday() not in self.workdays or day in self.holidays:
            return False
        if self.public_holidays is None:
            return True
        with _PUBLIC_HOLIDAYS_LOCK:  # the package fills a year on first use; another thread must not see it half-filled
            return day not in self.public_holidays

    def _at(self, day: date, at: time) -> datetime:
        return datetime.combine(day, at, tzinfo=self.zone)

    def next_open(self, instant: datetime) -> datetime:
        """``instant`` if it lies in working time, else the next opening (UTC in, local-aware out)."""
        local = instant.astimezone(self.zone)
        day = local.date()
        for _ in range(MAX_DAYS):
            if self.is_working_day(day):
                start, end = self._at(day, self.open), self._at(day, self.close)
                if local < start:
                    return start
                if local < end:
                    return local
            day += timedelta(days=1)
            local = self._at(day, time(0, 0))
        raise InvalidInput("calendar '{name}' has no working time within {max_days} days",
                           params={"name": self.name, "max_days": MAX_DAYS})

    def add_working_time(self, start: datetime, amount: timedelta) -> datetime:
        """``start`` moved by ``amount`` of working time, counted as elapsed time (UTC result).

        On a day whose working hours contain a DST change, the working day is an hour
        shorter (spring) or longer (autumn) in elapsed time, and that is what is counted:
        ``PT2H`` from 01:00 on 2026-03-29 in Europe/Berlin ends at 04:00 CEST.
        """
        # elapsed time is counted in UTC: adding to (or subtracting) datetimes that share a ZoneInfo is
        # wall-clock arithmetic in Python, which is an hour off across a DST change inside a working day
        at = self.next_open(start).astimezone(UTC)
        left = amount
        for _ in range(MAX_DAYS):
            end = self._at(at.astimezone(self.zone).date(), self.close).astimezone(UTC)
            if at + left <= end:
                return at + left
            left -= end - at
            at = self.next_open(end).astimezone(UTC)  # closing time is outside working time: the next opening
        raise InvalidInput("calendar '{name}' cannot fit {amount} of working time",
                           params={"name": self.name, "amount": amount})

    def add_working_days(self, start: datetime, days: int) -> datetime:
        """``start`` (moved to the next opening if outside working time) plus ``days`` working days, same time of day."""
        at = self.next_open(start)
        day, clock_time = at.date(), at.timetz().replace(tzinfo=None)
        for _ in range(days):
            day += timedelta(days=1)
            steps = 0
            while not self.is_working_day(day):
                day += timedelta(days=1)
                steps += 1
                if steps > MAX_DAYS:
                    raise InvalidInput("calendar '{name}' has no working day within {max_days} days",
                                       params={"name": self.name, "max_days": MAX_DAYS})
        return datetime.combine(day, clock_time, tzinfo=self.zone).astimezone(UTC)

    def add(self, start: datetime, duration: str) -> datetime:
        """``start`` plus the ISO 8601 ``duration`` read in business time (see the module docstring)."""
        try:
            parts = TimerEventDefinition.parse_iso_duration(duration.strip())
        except Exception:  # noqa: BLE001 - SpiffWorkflow raises a bare Exception
            raise InvalidInput("'{value}' is not an ISO 8601 duration like P2D or PT4H",
                               field="businessDue", params={"value": duration[:60]}) from None
        if parts.get("years") or parts.get("months"):
            raise InvalidInput("'{value}': a business duration counts days, weeks and hours, "
                               "not years or months", field="businessDue", params={"value": duration[:60]})
        days = parts.get("days", 0) + 5 * parts.get("weeks", 0)
        if days != int(days):
            raise InvalidInput("'{value}': business days must be whole", field="businessDue",
                               params={"value": duration[:60]})
        at = self.add_working_days(start, int(days)) if days else start
        hours = timedelta(hours=parts.get("hours", 0), minutes=parts.get("minutes", 0),
                          seconds=parts.get("seconds", 0))
        return self.add_working_time(at, hours) if hours or not days else at

    def working_time_between(self, start: datetime, end: datetime) -> timedelta:
        """Working time from ``start`` to ``end`` (0 when ``end`` is not later)."""
        total = timedelta(0)
        end = end.astimezone(UTC)
        at = self.next_open(start).astimezone(UTC)
        for _ in range(MAX_DAYS):  # in UTC, as in :meth:`add_working_time` (DST)
            if at >= end:
                return total
            close = self._at(at.astimezone(self.zone).date(), self.close).astimezone(UTC)
            total += min(close, end) - at
            at = self.next_open(close).astimezone(UTC)
        return total


def _clock_time(text: str, what: str) -> time:
    try:
        return time.fromisoformat(text)
    except ValueError:
        raise InvalidInput("calendar {what} '{text}' is not a time like 09:00",
                           params={"what": what, "text": text}) from None


def _read_holiday_file(path: str) -> set[date]:
    found: set[date] = set()
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        text = line.split("#", 1)[0].strip()
        if text:
            found.add(date.fromisoformat(text))
    return found


def _public_holidays(name: str, country: Any, subdivision: Any) -> Any:
    """The public holidays of ``country`` (and ``subdivision``) from the `holidays` package, None without a country.

    Raises InvalidInput naming the calendar when the package does not know the country or
    the subdivision.
    """
    if not country:
        if subdivision:
            raise InvalidInput("calendar '{name}': a subdivision ('{subdivision}') needs a country",
                               params={"name": name, "subdivision": subdivision})
        return None
    import holidays  # late: only calendars that name a country need it

    try:
        found = holidays.country_holidays(str(country).upper(), subdiv=str(subdivision) if subdivision else None)
    except NotImplementedError as exc:  # the package's way of saying "no such country/subdivision"
        if subdivision:
            raise InvalidInput("calendar '{name}': no public holidays known for country '{country}', "
                               "subdivision '{subdivision}' ({exc})",
                               params={"name": name, "country": country, "subdivision": subdivision, "exc": exc}) from None
        raise InvalidInput("calendar '{name}': no public holidays known for country '{country}' ({exc})",
                           params={"name": name, "country": country, "exc": exc}) from None
    return found


def _build(name: str, spec: dict[str, Any]) -> BusinessCalendar:
    try:
        zone = ZoneInfo(str(spec.get("timezone") or "UTC"))
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidInput("calendar '{name}': unknown time zone '{value}'",
                           params={"name": name, "value": spec.get('timezone')}) from None
    holidays = {date.fromisoformat(d) for d in spec.get("holidays", [])}
    if spec.get("holidays_file"):
        holidays |= _read_holiday_file(str(spec["holidays_file"]))
    cal = BusinessCalendar(name=name, zone=zone, open=_clock_time(str(spec.get("open", "09:00")), "open"),
                           close=_clock_time(str(spec.get("close", "18:00")), "close"),
                           workdays=frozenset(int(d) for d in spec.get("workdays", [1, 2, 3, 4, 5])),
                           holidays=frozenset(holidays),
                           public_holidays=_public_holidays(name, spec.get("country"), spec.get("subdivision")))
    if cal.close <= cal.open or not cal.workdays <= set(range(1, 8)) or not cal.workdays:
        raise InvalidInput("calendar '{name}': needs open before close and workdays among 1..7",
                           params={"name": name})
    return cal


@lru_cache(maxsize=1)
def calendars() -> dict[str, BusinessCalendar]:
    """Every configured calendar by name (read once per process); ``default`` is always there."""
    found: dict[str, dict[str, Any]] = {"default": {"timezone": os.environ.get("SOPFLOW_CALENDAR_TZ") or "UTC"}}
    if os.environ.get("SOPFLOW_CALENDAR_HOLIDAYS"):
        found["default"]["holidays_file"] = os.environ["SOPFLOW_CALENDAR_HOLIDAYS"]
    if os.environ.get("SOPFLOW_CALENDAR_COUNTRY"):
        found["default"]["country"] = os.environ["SOPFLOW_CALENDAR_COUNTRY"]
        found["default"]["subdivision"] = os.environ.get("SOPFLOW_CALENDAR_SUBDIVISION") or None
    if os.environ.get("SOPFLOW_CALENDARS"):
        extra = json.loads(Path(os.environ["SOPFLOW_CALENDARS"]).read_text(encoding="utf-8"))
        for name, spec in extra.items():
            found[str(name)] = {**found.get(str(name), {}), **spec}
    return {name: _build(name, spec) for name, spec in found.items()}


def get(name: str | None) -> BusinessCalendar:
    """The calendar called ``name`` (``default`` when None); InvalidInput naming the known ones otherwise."""
    known = calendars()
    cal = known.get(name or "default")
    if cal is None:
        raise InvalidInput("unknown calendar '{name}'; configured: {known}", field="calendar",
                           params={"name": name, "known": ', '.join(sorted(known))})
    return cal
