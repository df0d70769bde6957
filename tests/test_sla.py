"""SLA timers: the admin clock, at-risk/breach/reminder jobs fired exactly once, escalation, incidents."""
from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from engine import worker
from engine.commands import start_instance
from engine.commands.sla import fire_sla_job
from engine.config import Settings
from engine.store.models import AuditEventRow, IncidentRow, OutboxRow, TaskCandidateRow, TaskRow
from engine.worker import acquire, run_once
from tests.bpmnkit import Bpmn
from tests.helpers import ALICE, audit_actions, deploy_xml, instance, jobs, open_tasks

SETTINGS = Settings(smtp_host="", webhook_url="")


def complaint(props: dict[str, str] | None = None) -> bytes:
    """A complaint due in 24h, a non-interrupting 24h escalation and an interrupting 48h expiry."""
    p = {"assignee": "sam", "dueDate": "PT24H", "escalateToGroup": "support-leads", "notifyOnBreach": "max",
         **(props or {})}
    b = (Bpmn("complaint").start().user("answer", "Answer the complaint", props=p)
         .boundary_timer("escalation", "answer", '"PT24H"', interrupting=False)
         .script("note", "escalated = True").end("escalated_end")
         .boundary_timer("expiry", "answer", '"PT48H"', interrupting=True).end("expired")
         .end())
    return b.chain("start", "answer", "end").chain("escalation", "note", "escalated_end").chain("expiry", "expired").xml()


@pytest.fixture
def clocked(db, clock):
    """The API with SOPFLOW_CLOCK_CONTROL=1 over each real database (its worker is run by hand)."""
    from fastapi.testclient import TestClient

    from api.app import create_app
    from engine.commands import SYSTEM
    from engine.identity import seed_demo
    from tests.api_helpers import Api

    tokens = db.command(lambda s: seed_demo(s, actor=SYSTEM))
    app = create_app(settings=Settings(clock_control=True), db=db, run_worker=False)
    built = Api(TestClient(app, raise_server_exceptions=False), db, tokens)
    with built.client:
        yield built


def _inapp(db, user: str) -> list[OutboxRow]:
    with db.read() as s:
        return list(s.scalars(select(OutboxRow).where(OutboxRow.channel == "inapp", OutboxRow.recipient == user)
                              .order_by(OutboxRow.created_at, OutboxRow.id)))


def _task(db, task_id: str) -> TaskRow:
    with db.read() as s:
        row = s.get(TaskRow, task_id)
        assert row is not None
        return row


def _advance(api, duration: str) -> None:
    r = api.post("admin", "/api/admin/clock", json={"advance": duration})
    assert r.status_code == 200, r.text
    run_once(api.db, settings=SETTINGS)


def test_walk_through_on_time_at_risk_breached_expired(clocked):
    api, db = clocked, clocked.db
    r = api.deploy("dora", ("complaint.bpmn", complaint()))
    assert r.status_code in (200, 201), r.text
    started = api.start("rita", "complaint")
    assert started.status_code in (200, 201), started.text
    instance_id = started.json()["id"]
    [task] = open_tasks(db, instance_id)
    assert task.sla_state == "on_time" and task.assignee == "sam"
    assert task.due_at - task.created_at == timedelta(hours=24)
    assert task.at_risk_at - task.created_at == timedelta(hours=18)  # 75 % of the allowed time

    _advance(api, "PT17H")
    assert _task(db, task.id).sla_state == "on_time" and _inapp(db, "sam") == []

    _advance(api, "PT2H")  # 19 h: at risk
    assert _task(db, task.id).sla_state == "at_risk"
    assert [n.event for n in _inapp(db, "sam")] == ["task.at_risk"]
    assert api.inbox("sam", sla="at_risk")[0]["id"] == task.id

    _advance(api, "PT6H")  # 25 h: breached, escalated to the support leads, the manager told
    for _ in range(3):  # however often the clock moves, it happens once
        _advance(api, "PT1H")
    row = _task(db, task.id)
    assert row.state == "open" and row.sla_state == "breached"
    assert row.assignee is None and row.candidate_groups == ["support-leads"]
    actions = audit_actions(db, instance_id)
    assert actions.count("task.at_risk") == 1 and actions.count("task.breached") == 1
    assert actions.count("task.escalated") == 1
    assert [n.event for n in _inapp(db, "sam")] == ["task.at_risk", "task.breached"]
    assert [n.event for n in _inapp(db, "max")] == ["task.breached"]
    assert [n.event for n in _inapp(db, "lena")] == ["task.breached"]  # support-leads member
    assert "support-leads" in _inapp(db, "max")[0].body
    assert instance(db, instance_id).variables.get("escalated") is True  # the 24h boundary fired once
    assert actions.count("timer.fired") == 1
    assert [t["id"] for t in api.inbox("lena")] == [task.id]  # offered to the group now
    assert api.inbox("sam") == []
    with db.read() as s:
        offers = s.scalars(select(TaskCandidateRow).where(TaskCandidateRow.task_id == task.id)).all()
    assert [(o.kind, o.name, o.offered) for o in offers] == [("group", "support-leads", True)]

    _advance(api, "PT21H")  # 49 h: the interrupting expiry
    assert _task(db, task.id).state == "cancelled"
    assert instance(db, instance_id).status == "completed"
    assert audit_actions(db, instance_id).count("timer.fired") == 2
    assert [n.event for n in _inapp(db, "sam")] == ["task.at_risk", "task.breached"]  # nothing more
    assert jobs(db, instance_id) == []

    mine = api.get("sam", "/api/notifications")
    assert [n["event"] for n in mine.json()["items"]] == ["task.breached", "task.at_risk"]
    marked = api.post("sam", "/api/notifications/read", json={"ids": [n["id"] for n in mine.json()["items"]]})
    assert marked.json() == {"marked": 2}
    assert api.get("sam", "/api/notifications", params={"unread": True}).json()["items"] == []


def test_admin_clock_reads_moves_forward_only_and_needs_admin(clocked):
    api = clocked
    before = api.get("admin", "/api/admin/clock").json()
    assert before["offset_seconds"] == 0
    moved = api.post("admin", "/api/admin/clock", json={"advance": "PT25H"}).json()
    assert moved["offset_seconds"] == 25 * 3600
    target = "2027-03-01T09:00:00Z"
    assert api.post("admin", "/api/admin/clock", json={"set": target}).json()["now"].startswith("2027-03-01T09:00")
    back = api.post("admin", "/api/admin/clock", json={"advance": "-PT1H"})
    assert back.status_code == 422 and "forward" in back.json()["detail"]
    assert api.post("admin", "/api/admin/clock", json={"advance": "soon"}).status_code == 422
    assert api.post("admin", "/api/admin/clock", json={}).status_code == 422
    assert api.post("sam", "/api/admin/clock", json={"advance": "PT1H"}).status_code == 403
    with api.db.read() as s:
        moves = s.scalars(select(AuditEventRow.action).where(AuditEventRow.chain == "clock")).all()
    assert moves == ["clock.moved", "clock.moved"]  # the refused moves left no trace


def test_admin_clock_is_404_when_off(api):
    assert api.get("admin", "/api/admin/clock").status_code == 404
    assert api.post("admin", "/api/admin/clock", json={"advance": "PT1H"}).status_code == 404


def test_the_clock_offset_is_shared_through_the_database(clocked, clock):
    """A second process (here: a second offset clock over the same database) sees the move."""
    from engine.clock import FrozenClock, OffsetClock
    from engine.commands.clock_control import read_offset

    api, db = clocked, clocked.db
    api.post("admin", "/api/admin/clock", json={"advance": "PT3H"})

    def read() -> timedelta:
        with db.read() as s:
            return read_offset(s)

    other = OffsetClock(FrozenClock(clock.now() - timedelta(hours=3)), read, ttl=0)
    assert other.now() == clock.now()  # the test's clock is wrapped by the app's offset clock


def _sla_task(db, props: dict[str, str]) -> str:
    b = Bpmn("sla").start().user("work", "Work", props=props).end()
    deploy_xml(db, b.chain("start", "work", "end").xml())
    return db.command(lambda s: start_instance(s, key="sla", actor=ALICE)).id


def test_an_sla_job_fires_once_even_when_its_lease_expired_mid_run(db, clock):
    instance_id = _sla_task(db, {"assignee": "alice", "dueDate": "PT10H"})
    clock.advance(hours=11)
    leased = acquire(db, owner="slow", lease=timedelta(seconds=30))  # the slow worker holds both jobs ...
    assert len(leased[instance_id]) == 2
    clock.advance(minutes=1)  # ... past its lease; another worker takes them and fires them
    assert run_once(db, owner="fast", settings=SETTINGS).sla == 2
    for job_id in leased[instance_id]:  # the slow worker finally runs its copies: nothing happens
        assert db.command(lambda s, j=job_id: fire_sla_job(s, job_id=j, settings=SETTINGS)) is False
    actions = audit_actions(db, instance_id)
    assert actions.count("task.at_risk") == 1 and actions.count("task.breached") == 1
    assert sorted(n.event for n in _inapp(db, "alice")) == ["task.at_risk", "task.breached"]


def test_reminders_before_the_due_date(db, clock):
    instance_id = _sla_task(db, {"assignee": "alice", "dueDate": "PT10H", "reminders": "PT4H,PT1H",
                                 "atRiskFraction": "0.85"})
    [task] = open_tasks(db, instance_id)
    assert task.at_risk_at - task.created_at == timedelta(hours=8, minutes=30)
    assert sorted(j.kind for j in jobs(db, instance_id)) == ["sla_at_risk", "sla_breach", "sla_reminder",
                                                             "sla_reminder"]
    clock.advance(hours=6, minutes=30)
    run_once(db, settings=SETTINGS)
    assert [n.event for n in _inapp(db, "alice")] == ["task.reminder"]
    clock.advance(hours=3)
    run_once(db, settings=SETTINGS)
    assert sorted(n.event for n in _inapp(db, "alice")) == ["task.at_risk", "task.reminder", "task.reminder"]
    clock.advance(hours=1)
    run_once(db, settings=SETTINGS)
    assert [n.event for n in _inapp(db, "alice")].count("task.reminder") == 2  # no more reminders


def test_a_completed_tasks_sla_jobs_do_nothing(db, clock):
    from engine.commands import complete_task

    instance_id = _sla_task(db, {"assignee": "alice", "dueDate": "PT10H"})
    [task] = open_tasks(db, instance_id)
    db.command(lambda s: complete_task(s, task_id=task.id, actor=ALICE))
    clock.advance(hours=11)
    assert run_once(db, settings=SETTINGS).sla == 0
    assert _inapp(db, "alice") == [] and "task.breached" not in audit_actions(db, instance_id)


def test_candidates_are_told_when_nobody_is_assigned(db, clock):
    from engine.commands import SYSTEM
    from engine.identity import seed_demo

    db.command(lambda s: seed_demo(s, actor=SYSTEM))
    instance_id = _sla_task(db, {"candidateGroups": "support", "candidateUsers": "rita", "dueDate": "PT1H"})
    clock.advance(hours=2)
    run_once(db, settings=SETTINGS)
    assert {n.recipient for n in _inapp(db, "sam") + _inapp(db, "lena") + _inapp(db, "rita")} == {"sam", "lena",
                                                                                                  "rita"}
    assert _task(db, open_tasks(db, instance_id)[0].id).sla_state == "breached"


def test_a_failing_sla_job_becomes_an_incident_and_a_retry_fires_it(clocked, monkeypatch):
    api, db = clocked, clocked.db
    from engine.commands import sla as sla_commands

    calls = {"n": 0}
    real = sla_commands.notifications.notify

    def broken(*args, **kwargs):
        calls["n"] += 1
        raise RuntimeError("mail relay exploded")

    monkeypatch.setattr(sla_commands.notifications, "notify", broken)
    api.deploy("dora", ("sla.bpmn", Bpmn("sla").start().user("work", "Work", props={
        "assignee": "sam", "dueDate": "PT10H", "atRiskFraction": "1"}).end().chain("start", "work", "end").xml()))
    instance_id = api.start("rita", "sla").json()["id"]
    api.post("admin", "/api/admin/clock", json={"advance": "PT11H"})
    for step in ("PT0S", "PT1M", "PT2M"):  # three attempts with backoff (10 s, 20 s)
        api.post("admin", "/api/admin/clock", json={"advance": step})
        run_once(db, settings=SETTINGS, max_attempts=3)
    assert calls["n"] == 3
    [job] = jobs(db, instance_id)
    assert job.state == "failed" and "mail relay exploded" in job.last_error
    incidents = api.get("admin", "/api/incidents").json()["items"]
    assert [(i["kind"], i["job_id"]) for i in incidents] == [("failed_job", job.id)]
    assert _task(db, open_tasks(db, instance_id)[0].id).sla_state == "on_time"  # the failed attempts left nothing

    monkeypatch.setattr(sla_commands.notifications, "notify", real)
    retried = api.post("admin", f"/api/incidents/{incidents[0]['id']}/retry")
    assert retried.status_code == 200, retried.text
    assert retried.json()["resolution"] == "retried"
    run_once(db, settings=SETTINGS)
    assert _task(db, open_tasks(db, instance_id)[0].id).sla_state == "breached"
    assert [n.event for n in _inapp(db, "sam")] == ["task.breached"]
    assert api.post("admin", f"/api/incidents/{incidents[0]['id']}/retry").status_code == 409
    with db.read() as s:
        assert s.scalar(select(IncidentRow.resolution)) == "retried"
    assert "incident.created" in audit_actions(db, instance_id)


def test_the_embedded_worker_acts_on_a_clock_move_at_once(db, clock):
    import threading
    import time

    instance_id = _sla_task(db, {"assignee": "alice", "dueDate": "PT10H"})
    stop = threading.Event()
    thread = threading.Thread(target=worker.run_forever, kwargs={"db": db, "stop": stop, "interval": 30,
                                                                 "settings": SETTINGS}, daemon=True)
    thread.start()
    try:
        time.sleep(0.2)  # let it go to sleep (30 s) with nothing due
        clock.advance(hours=11)
        moved_at = time.monotonic()
        worker.wake()
        while "task.breached" not in audit_actions(db, instance_id) and time.monotonic() - moved_at < 10:
            time.sleep(0.02)
        assert time.monotonic() - moved_at < 1.0
    finally:
        stop.set()
        worker.wake()
        thread.join(timeout=10)


def test_sla_summary_and_breaches(clocked):
    api, db = clocked, clocked.db
    api.deploy("dora", ("sla.bpmn", Bpmn("sla").start().user("work", "Work", props={
        "assignee": "sam", "dueDate": "PT10H"}).end().chain("start", "work", "end").xml()))
    ids = [api.start("rita", "sla").json()["id"] for _ in range(4)]
    tasks = [open_tasks(db, i)[0].id for i in ids]
    _advance(api, "PT2H")
    assert api.post("sam", f"/api/tasks/{tasks[0]}/complete", json={}).status_code == 200  # on time, 2 h
    _advance(api, "PT2H")
    assert api.post("sam", f"/api/tasks/{tasks[1]}/complete", json={}).status_code == 200  # on time, 4 h
    _advance(api, "PT4H")  # 8 h: the two open ones are at risk
    summary = api.get("audrey", "/api/sla/summary").json()["items"]
    assert [(r["element_id"], r["done"], r["on_time"], r["open_at_risk"], r["open_breached"]) for r in summary] \
        == [("work", 2, 2, 2, 0)]
    _advance(api, "PT4H")  # 12 h: both breached; one is then done late
    assert api.post("sam", f"/api/tasks/{tasks[2]}/complete", json={}).status_code == 200
    [row] = api.get("audrey", "/api/sla/summary").json()["items"]
    assert (row["done"], row["on_time"], row["breaches"], row["open_breached"]) == (3, 2, 1, 1)
    assert row["on_time_rate"] == pytest.approx(2 / 3)
    assert row["median_seconds"] == 4 * 3600
    breaches = api.get("audrey", "/api/sla/breaches").json()["items"]
    assert sorted((b["id"], b["state"]) for b in breaches) == sorted([(tasks[2], "completed"), (tasks[3], "open")])
    later = api.get("audrey", "/api/sla/summary", params={"since": "2030-01-01T00:00:00Z"}).json()["items"]
    assert later[0]["done"] == 0 and later[0]["open_breached"] == 1
    assert api.get("sam", "/api/sla/summary").status_code == 403


# --------------------------------------------------------------------------- follow-up dates (camunda:followUpDate)

def test_a_follow_up_date_notifies_once_and_changes_no_sla_state(db, clock):
    instance_id = _sla_task(db, {"assignee": "alice", "followUpDate": "PT4H", "dueDate": "PT10H"})
    [task] = open_tasks(db, instance_id)
    assert task.follow_up_at == task.created_at + timedelta(hours=4)
    assert {j.kind: j.due_at for j in jobs(db, instance_id)}["sla_follow_up"] == task.follow_up_at
    clock.advance(hours=3, minutes=59)
    run_once(db, settings=SETTINGS)
    assert _inapp(db, "alice") == []
    clock.advance(minutes=1)
    assert run_once(db, settings=SETTINGS).sla == 1
    [note] = _inapp(db, "alice")
    assert note.event == "task.follow_up" and note.subject == "Follow up: Work"
    assert _task(db, task.id).sla_state == "on_time"  # a follow-up is not a deadline
    for _ in range(3):  # moving the clock again tells nobody again
        clock.advance(minutes=30)
        run_once(db, settings=SETTINGS)
    assert [n.event for n in _inapp(db, "alice")] == ["task.follow_up"]
    assert audit_actions(db, instance_id).count("task.follow_up") == 1


def test_a_follow_up_date_without_a_due_date_still_reminds(db, clock):
    instance_id = _sla_task(db, {"assignee": "alice", "followUpDate": "PT1H"})
    [task] = open_tasks(db, instance_id)
    assert task.due_at is None and [j.kind for j in jobs(db, instance_id)] == ["sla_follow_up"]
    clock.advance(hours=2)
    run_once(db, settings=SETTINGS)
    assert [n.event for n in _inapp(db, "alice")] == ["task.follow_up"]
    assert _task(db, task.id).sla_state is None


def test_a_completed_tasks_follow_up_does_nothing(db, clock):
    from engine.commands import complete_task

    instance_id = _sla_task(db, {"assignee": "alice", "followUpDate": "PT1H"})
    [task] = open_tasks(db, instance_id)
    db.command(lambda s: complete_task(s, task_id=task.id, actor=ALICE))
    clock.advance(hours=2)
    assert run_once(db, settings=SETTINGS).sla == 0 and _inapp(db, "alice") == []


def test_the_inbox_filters_on_the_follow_up_date(clocked):
    from engine import clock as engine_clock

    api, db = clocked, clocked.db
    b = Bpmn("fu").start().user("work", "Work", props={"assignee": "sam", "followUpDate": "${follow}"}).end()
    deploy_xml(db, b.chain("start", "work", "end").xml())
    soon = db.command(lambda s: start_instance(s, key="fu", actor=ALICE, variables={"follow": "PT2H"})).id
    db.command(lambda s: start_instance(s, key="fu", actor=ALICE, variables={"follow": "P3D"}))
    db.command(lambda s: start_instance(s, key="fu", actor=ALICE, variables={"follow": None}))
    cutoff = (engine_clock.now() + timedelta(hours=5)).isoformat()
    assert [t["instance_id"] for t in api.inbox("sam", follow_up_before=cutoff)] == [soon]
    assert len(api.inbox("sam")) == 3
