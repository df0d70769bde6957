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


# --------------------------------------------------------------------------- public holidays (the `holidays` package)

def berlin(y: int, m: int, d: int, hour: int, minute: int = 0) -> datetime:
    return datetime(y, m, d, hour, minute, tzinfo=BERLIN)


def test_a_country_and_subdivision_bring_their_public_holidays(tmp_path, monkeypatch):
    config = tmp_path / "calendars.json"
    config.write_text('{"munich": {"timezone": "Europe/Berlin", "country": "DE", "subdivision": "BY"},'
                      ' "berlin": {"timezone": "Europe/Berlin", "country": "de", "subdivision": "BE"}}')
    monkeypatch.setenv("SOPFLOW_CALENDARS", str(config))
    calendar.calendars.cache_clear()
    try:
        munich, berlin_cal = calendar.get("munich"), calendar.get("berlin")
        # Fri 22 May 2026 + 1 business day: the weekend and Whit Monday (a public holiday in all of Germany)
        assert munich.add(berlin(2026, 5, 22, 10), "P1D") == berlin(2026, 5, 26, 10).astimezone(UTC)
        # Thu 2 Apr 2026 + 1: Good Friday, the weekend and Easter Monday do not count
        assert munich.add(berlin(2026, 4, 2, 10), "P1D") == berlin(2026, 4, 7, 10).astimezone(UTC)
        # working hours too: Fri 22 May 16:00 + 4 h = 2 h Friday, 2 h on Tuesday
        assert munich.add(berlin(2026, 5, 22, 16), "PT4H") == berlin(2026, 5, 26, 11).astimezone(UTC)
        # Corpus Christi (Thu 4 Jun 2026) is a holiday in Bavaria, not in Berlin
        assert munich.add(berlin(2026, 6, 3, 10), "P1D") == berlin(2026, 6, 5, 10).astimezone(UTC)
        assert berlin_cal.add(berlin(2026, 6, 3, 10), "P1D") == berlin(2026, 6, 4, 10).astimezone(UTC)
        # any year, not only the current one
        assert not munich.is_working_day(date(2031, 12, 25)) and munich.is_working_day(date(2031, 12, 23))
        # a calendar without a country has only its own holidays
        assert calendar.get("default").is_working_day(date(2026, 5, 25))
    finally:
        calendar.calendars.cache_clear()


def test_the_default_calendar_takes_its_country_from_the_environment_besides_the_holiday_file(
        tmp_path, monkeypatch):
    holidays = tmp_path / "holidays.txt"
    holidays.write_text("2026-05-26  # a company day off\n")
    monkeypatch.setenv("SOPFLOW_CALENDAR_TZ", "Europe/Berlin")
    monkeypatch.setenv("SOPFLOW_CALENDAR_HOLIDAYS", str(holidays))
    monkeypatch.setenv("SOPFLOW_CALENDAR_COUNTRY", "DE")
    calendar.calendars.cache_clear()
    try:
        default = calendar.get(None)
        # Fri 22 May + 1: weekend, Whit Monday (country), Tue 26 (file) -> Wednesday
        assert default.add(berlin(2026, 5, 22, 10), "P1D") == berlin(2026, 5, 27, 10).astimezone(UTC)
    finally:
        calendar.calendars.cache_clear()


@pytest.mark.parametrize(("spec", "message"), [
    ('{"x": {"country": "XX"}}', "calendar 'x': no public holidays known for country 'XX'"),
    ('{"x": {"country": "DE", "subdivision": "ZZ"}}', "calendar 'x': no public holidays known for country 'DE', "
                                                       "subdivision 'ZZ'"),
    ('{"x": {"subdivision": "BY"}}', "calendar 'x': a subdivision \\('BY'\\) needs a country"),
])
def test_an_unknown_country_or_subdivision_is_refused_with_the_calendar_named(tmp_path, monkeypatch, spec, message):
    config = tmp_path / "calendars.json"
    config.write_text(spec)
    monkeypatch.setenv("SOPFLOW_CALENDARS", str(config))
    calendar.calendars.cache_clear()
    try:
        with pytest.raises(InvalidInput, match=message):
            calendar.get("x")
    finally:
        calendar.calendars.cache_clear()


def test_a_task_due_in_business_days_skips_the_public_holidays_of_its_calendar(db, clock, monkeypatch, tmp_path):
    config = tmp_path / "calendars.json"
    config.write_text('{"munich": {"timezone": "Europe/Berlin", "country": "DE", "subdivision": "BY"}}')
    monkeypatch.setenv("SOPFLOW_CALENDARS", str(config))
    calendar.calendars.cache_clear()
    try:
        clock.set(berlin(2026, 5, 22, 15))  # Friday before Whitsun
        b = Bpmn("whit").start().user("review", "Review", props={"assignee": "alice", "businessDue": "P1D",
                                                                 "calendar": "munich"}).end()
        deploy_xml(db, b.chain("start", "review", "end").xml())
        row = db.command(lambda s: start_instance(s, key="whit", actor=ALICE))
        [task] = open_tasks(db, row.id)
        assert task.due_at == berlin(2026, 5, 26, 15).astimezone(UTC)  # Tuesday: weekend and Whit Monday skipped
    finally:
        calendar.calendars.cache_clear()


# --------------------------------------------------------------------------- DST inside a working day

# a calendar whose working day contains the change: every day 00:00-06:00 in Berlin. On Sunday
# 29 Mar 2026 clocks go 02:00 CET -> 03:00 CEST (a 5-hour working day); on Sunday 25 Oct 2026
# 03:00 CEST -> 02:00 CET (a 7-hour one). Working time is elapsed time.
NIGHT = BusinessCalendar(zone=BERLIN, open=datetime.min.time(), close=datetime.min.time().replace(hour=6),
                         workdays=frozenset(range(1, 8)))


@pytest.mark.parametrize(("start", "duration", "due_utc"), [
    (berlin(2026, 3, 29, 1), "PT2H", datetime(2026, 3, 29, 2, tzinfo=UTC)),    # 01:00 CET + 2 h = 04:00 CEST
    (berlin(2026, 3, 29, 0), "PT6H", datetime(2026, 3, 29, 23, tzinfo=UTC)),   # 5 h Sunday, 1 h Monday 00:00-01:00
    (berlin(2026, 10, 25, 1), "PT3H", datetime(2026, 10, 25, 2, tzinfo=UTC)),  # 01:00 CEST + 3 h = 03:00 CET
    (berlin(2026, 10, 25, 0), "PT7H", datetime(2026, 10, 25, 5, tzinfo=UTC)),  # the 7-hour day exactly: 06:00 CET
    (berlin(2026, 3, 28, 1), "P1D", datetime(2026, 3, 29, 0, tzinfo=UTC)),     # whole days keep the wall time: 01:00
])
def test_business_time_across_a_dst_change_inside_a_working_day(start, duration, due_utc):
    assert NIGHT.add(start, duration) == due_utc


def test_working_time_between_counts_the_short_and_the_long_dst_day():
    assert NIGHT.working_time_between(berlin(2026, 3, 29, 0), berlin(2026, 3, 29, 6)) == timedelta(hours=5)
    assert NIGHT.working_time_between(berlin(2026, 10, 25, 0), berlin(2026, 10, 25, 6)) == timedelta(hours=7)


def test_office_hours_across_the_dst_weekend():
    # Fri 27 Mar 15:00 CET + 4 working hours: 3 h Friday, 1 h Monday (now CEST) -> 10:00 CEST = 08:00 UTC
    assert CAL.add(berlin(2026, 3, 27, 15), "PT4H") == datetime(2026, 3, 30, 8, tzinfo=UTC)
    assert CAL.add(berlin(2026, 3, 27, 15), "P1D") == datetime(2026, 3, 30, 13, tzinfo=UTC)  # 15:00 CEST
