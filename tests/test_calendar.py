"""Business calendars: working hours, weekends and holidays; business due dates on tasks."""
from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from engine import calendar
from engine.calendar import BusinessCalendar
from engine.commands import start_instance
from engine.errors import InvalidInput
from tests.bpmnkit import Bpmn
from tests.helpers import ALICE, deploy_xml, jobs, open_tasks

BERLIN = ZoneInfo("Europe/Berlin")
# Tuesday 2026-01-06 (Epiphany) is a holiday in this calendar
CAL = BusinessCalendar(zone=BERLIN, holidays=frozenset({date(2026, 1, 6)}))


def at(day: int, hour: int, minute: int = 0) -> datetime:
    """An instant in January 2026, Berlin time (UTC+1)."""
    return datetime(2026, 1, day, hour, minute, tzinfo=BERLIN)


@pytest.mark.parametrize(("start", "duration", "due"), [
    (at(2, 15), "P2D", at(7, 15)),        # Fri 15:00 + 2 business days: Mon, (Tue holiday), Wed 15:00
    (at(2, 15), "P1D", at(5, 15)),        # over the weekend
    (at(3, 10), "P1D", at(7, 9)),         # Saturday starts Monday 09:00; +1 skips the holiday
    (at(2, 20), "P1D", at(7, 9)),         # after closing: next opening (Mon 09:00), +1 day
    (at(2, 15), "PT4H", at(5, 10)),       # 3 h on Friday, 1 h on Monday
    (at(5, 8), "PT9H", at(5, 18)),        # before opening: a whole working day
    (at(5, 17), "PT2H", at(7, 10)),       # Mon 17:00 + 2 h: 1 h Monday, 1 h Wednesday
    (at(5, 10), "P1W", at(13, 10)),       # a week is five working days (one holiday inside)
    (at(5, 10), "P1DT2H", at(7, 12)),     # days first, then working hours
])
def test_business_durations(start, duration, due):
    assert CAL.add(start, duration) == due.astimezone(UTC)


def test_working_time_between_skips_nights_weekends_and_holidays():
    assert CAL.working_time_between(at(2, 15), at(7, 10)) == timedelta(hours=3 + 9 + 1)


@pytest.mark.parametrize("bad", ["P1M", "P1Y", "soon", "P1.5D"])
def test_business_durations_refuse_what_has_no_business_meaning(bad):
    with pytest.raises(InvalidInput):
        CAL.add(at(5, 10), bad)


def test_calendars_come_from_the_environment_and_a_holiday_file(tmp_path, monkeypatch):
    holidays = tmp_path / "holidays.txt"
    holidays.write_text("# public holidays\n2026-01-06\n2026-12-25  # Christmas\n")
    config = tmp_path / "calendars.json"
    config.write_text('{"cn": {"timezone": "Asia/Shanghai", "open": "08:30", "close": "17:30", '
                      '"workdays": [1, 2, 3, 4, 5, 6]}}')
    monkeypatch.setenv("SOPFLOW_CALENDAR_TZ", "Europe/Berlin")
    monkeypatch.setenv("SOPFLOW_CALENDAR_HOLIDAYS", str(holidays))
    monkeypatch.setenv("SOPFLOW_CALENDARS", str(config))
    calendar.calendars.cache_clear()
    try:
        default = calendar.get(None)
        assert default.zone == BERLIN and date(2026, 12, 25) in default.holidays
        cn = calendar.get("cn")
        assert cn.open.hour == 8 and cn.is_working_day(date(2026, 1, 3))  # a Saturday works there
        with pytest.raises(InvalidInput, match="unknown calendar 'mars'; configured: cn, default"):
            calendar.get("mars")
    finally:
        calendar.calendars.cache_clear()


def test_a_task_due_in_two_business_days(db, clock, monkeypatch, tmp_path):
    holidays = tmp_path / "holidays.txt"
    holidays.write_text("2026-01-06\n")
    monkeypatch.setenv("SOPFLOW_CALENDAR_TZ", "Europe/Berlin")
    monkeypatch.setenv("SOPFLOW_CALENDAR_HOLIDAYS", str(holidays))
    calendar.calendars.cache_clear()
    try:
        clock.set(at(2, 15))  # Friday 15:00 Berlin
        b = Bpmn("biz").start().user("review", "Review", props={"assignee": "alice", "businessDue": "P2D",
                                                                "calendar": "default"}).end()
        deploy_xml(db, b.chain("start", "review", "end").xml())
        row = db.command(lambda s: start_instance(s, key="biz", actor=ALICE))
        [task] = open_tasks(db, row.id)
        assert task.due_at == at(7, 15).astimezone(UTC)  # Wednesday: the weekend and the holiday do not count
        # at risk after 75 % of the 18 working hours (13.5 h): Fri 3 h + Mon 9 h + 1.5 h on Wednesday
        assert task.at_risk_at == at(7, 10, 30).astimezone(UTC)
        assert {j.kind: j.due_at for j in jobs(db, row.id)}["sla_breach"] == task.due_at
    finally:
        calendar.calendars.cache_clear()


def test_an_unknown_calendar_names_the_task(db, clock):
    from engine.errors import ScriptError

    b = Bpmn("badcal").start().user("review", "Review", props={"businessDue": "P1D", "calendar": "mars"}).end()
    deploy_xml(db, b.chain("start", "review", "end").xml())
    with pytest.raises(ScriptError, match="user task 'review': unknown calendar 'mars'"):
        db.command(lambda s: start_instance(s, key="badcal", actor=ALICE))
