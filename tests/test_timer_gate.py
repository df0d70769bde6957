"""A timer fires only in the command that fires its job (issue 9; the timer gate, engine.spiff_patches).

Camunda's rule: a timer fires when the job executor runs its job, and whichever transaction
commits first wins. A message correlated, or a task completed, after a timer's due time but
before the worker fired it, must not fire that timer itself: behind an event-based gateway the
message path alone runs (the timer is cancelled, its job deleted), an interrupting boundary
timer is cancelled with its task, and a non-interrupting (or cycle) timer waits for its job.
"""
from __future__ import annotations

import json

import pytest
from sqlalchemy import select

from engine.commands import complete_task, correlate_message, fire_timers, start_instance
from engine.config import Settings
from engine.errors import NotFound
from engine.store.models import AuditEventRow
from engine.worker import acquire, fire_timer_batch, run_once
from tests.bpmnkit import Bpmn
from tests.helpers import ALICE, SHOP, audit_actions, deploy_xml, instance, jobs, open_tasks

STAFF = {"candidateGroups": "staff"}


def _ran(db, instance_id: str) -> list[str]:
    """The elements the instance ran, in order (its ``activities.completed`` audit events)."""
    with db.read() as s:
        payloads = s.scalars(select(AuditEventRow.payload).where(
            AuditEventRow.chain == instance_id, AuditEventRow.action == "activities.completed")
            .order_by(AuditEventRow.chain_seq)).all()
    return [a["element_id"] for p in payloads for a in json.loads(p)["activities"]]


def _fired(db, instance_id: str) -> list[dict]:
    with db.read() as s:
        rows = s.execute(select(AuditEventRow.payload, AuditEventRow.task_id).where(
            AuditEventRow.chain == instance_id, AuditEventRow.action == "timer.fired")
            .order_by(AuditEventRow.chain_seq)).all()
    return [{**json.loads(payload), "task_id": task_id} for payload, task_id in rows]


def _complete(db, instance_id: str, element_id: str) -> None:
    [task] = [t for t in open_tasks(db, instance_id) if t.element_id == element_id]
    db.command(lambda s: complete_task(s, task_id=task.id, actor=ALICE))


# ------------------------------------------------------------ event-based gateway: message vs timer

def _gateway(db) -> str:
    b = Bpmn("waiter").start("w_start").raw('<bpmn:eventBasedGateway id="w_gw"/>')
    b.timer_catch("w_timer", '"PT1H"').message_catch("w_paid", "payment").end("w_late")
    b.user("w_ship", "Ship", props=STAFF).end("w_paid_end")
    b.chain("w_start", "w_gw", "w_timer", "w_late").chain("w_gw", "w_paid", "w_ship", "w_paid_end")
    deploy_xml(db, b.xml())
    return db.command(lambda s: start_instance(s, key="waiter", actor=ALICE)).id


def _pay(db) -> list[str]:
    return db.command(lambda s: correlate_message(s, name="payment", actor=SHOP, variables={"paid": True}))


def test_a_message_after_the_due_time_but_before_the_worker_wins_over_the_timer(db, clock):
    waiting = _gateway(db)
    [job] = jobs(db, waiting)
    clock.advance(hours=2)  # the timer is overdue; no worker has run
    assert _pay(db) == [waiting]
    row = instance(db, waiting)
    assert row.status == "running" and row.variables["paid"] is True
    assert [t.element_id for t in open_tasks(db, waiting)] == ["w_ship"]
    ran = _ran(db, waiting)
    assert "w_paid" in ran
    assert "w_timer" not in ran and "w_late" not in ran  # the timer catch event was cancelled, never fired
    assert _fired(db, waiting) == []
    assert jobs(db, waiting) == []  # the instance still runs: its projection deleted the timer's job
    assert run_once(db).acquired == 0  # nothing left for the worker
    _complete(db, waiting, "w_ship")
    assert instance(db, waiting).status == "completed" and "w_late" not in _ran(db, waiting)


def test_a_worker_holding_the_lease_of_a_timer_the_message_cancelled_does_nothing(db, clock):
    waiting = _gateway(db)
    clock.advance(hours=2)
    leased = acquire(db, owner="w1")  # the worker leased the job, then the message committed first
    assert list(leased) == [waiting]
    assert _pay(db) == [waiting]
    revision = instance(db, waiting).revision
    outcome = fire_timer_batch(db, list(leased.items()), Settings())
    assert outcome.fired == {waiting: 0} and not outcome.failed and not outcome.stale
    assert db.command(lambda s: fire_timers(s, instance_id=waiting, job_ids=leased[waiting])) == 0
    assert instance(db, waiting).revision == revision
    assert _fired(db, waiting) == [] and "w_late" not in _ran(db, waiting)


def test_the_timer_fired_first_wins_over_a_later_message(db, clock):
    waiting = _gateway(db)
    [job] = jobs(db, waiting)
    clock.advance(hours=2)
    assert run_once(db).fired == 1
    row = instance(db, waiting)
    assert row.status == "completed"
    ran = _ran(db, waiting)
    assert "w_timer" in ran and "w_late" in ran and "w_paid" not in ran and open_tasks(db, waiting) == []
    # the gateway waits for both of its events (SpiffWorkflow): the timer's job is the gateway's
    assert [(f["element_id"], f["task_id"]) for f in _fired(db, waiting)] == [(job.element_id, job.task_id)]
    with pytest.raises(NotFound):
        _pay(db)  # nobody waits for it any more
    assert "payment" not in json.dumps(instance(db, waiting).variables) and jobs(db, waiting) == []


# ------------------------------------------------------------ boundary timers on user tasks

def test_completing_a_task_after_its_interrupting_timer_is_due_cancels_the_timer(db, clock):
    b = (Bpmn("review").start().user("review", "Review", props=STAFF)
         .boundary_timer("late", "review", duration='"PT1H"')
         .script("escalate", "escalated = True").end("escalated_end").end("done")
         .chain("start", "review", "done").chain("late", "escalate", "escalated_end"))
    deploy_xml(db, b.xml())
    row = db.command(lambda s: start_instance(s, key="review", actor=ALICE))
    assert len(jobs(db, row.id)) == 1
    clock.advance(hours=2)
    _complete(db, row.id, "review")
    stored = instance(db, row.id)
    assert stored.status == "completed" and "escalated" not in stored.variables
    ran = _ran(db, row.id)
    assert "done" in ran and "task.completed" in audit_actions(db, row.id)
    assert "late" not in ran and "escalate" not in ran and "escalated_end" not in ran
    assert _fired(db, row.id) == [] and "timer.fired" not in audit_actions(db, row.id)
    assert jobs(db, row.id) == []
    assert run_once(db).acquired == 0


def _parallel(db, timer: dict[str, str]) -> str:
    """Tasks ``a`` and ``b`` in parallel; ``a`` carries a non-interrupting boundary timer ``remind``."""
    b = (Bpmn("par").start().parallel("fork").user("a", "A", props=STAFF).user("b", "B", props=STAFF)
         .boundary_timer("remind", "a", interrupting=False, **timer)
         .script("count", "n = n + 1").end("counted").parallel("join").end()
         .chain("start", "fork", "a", "join", "end").chain("fork", "b", "join").chain("remind", "count", "counted"))
    deploy_xml(db, b.xml())
    return db.command(lambda s: start_instance(s, key="par", actor=ALICE, variables={"n": 0})).id


def test_another_command_does_not_fire_an_overdue_non_interrupting_timer_the_worker_does(db, clock):
    row_id = _parallel(db, {"duration": '"PT1H"'})
    [job] = jobs(db, row_id)
    clock.advance(hours=2)
    _complete(db, row_id, "b")  # runs the engine on the instance while the timer is overdue
    assert instance(db, row_id).variables["n"] == 0
    assert "count" not in _ran(db, row_id) and _fired(db, row_id) == []
    assert [(j.id, j.due_at) for j in jobs(db, row_id)] == [(job.id, job.due_at)]
    assert run_once(db).fired == 1
    assert instance(db, row_id).variables["n"] == 1
    assert _ran(db, row_id).count("count") == 1
    [fired] = _fired(db, row_id)
    assert fired["element_id"] == "remind" and fired["task_id"] == job.task_id
    assert jobs(db, row_id) == [] and run_once(db).acquired == 0
    assert [t.element_id for t in open_tasks(db, row_id)] == ["a"]


def test_another_command_does_not_advance_an_overdue_cycle_timer_the_worker_fires_each_cycle(db, clock):
    row_id = _parallel(db, {"cycle": '"R3/PT1H"'})
    [job] = jobs(db, row_id)
    clock.advance(hours=2, minutes=30)  # two cycles overdue (10:00, 11:00)
    _complete(db, row_id, "b")
    assert instance(db, row_id).variables["n"] == 0 and _fired(db, row_id) == []
    assert [(j.id, j.due_at) for j in jobs(db, row_id)] == [(job.id, job.due_at)]  # not advanced
    assert run_once(db).fired == 1  # one job, one command: both overdue cycles, one event each
    assert instance(db, row_id).variables["n"] == 2
    assert [f["due_at"][11:16] for f in _fired(db, row_id)] == ["10:00", "11:00"]
    [after] = jobs(db, row_id)
    assert after.due_at.hour == 12
    clock.advance(hours=1)
    _complete(db, row_id, "a")  # the third cycle is due, but completing the task ends the timer
    assert instance(db, row_id).status == "completed" and instance(db, row_id).variables["n"] == 2
    assert len(_fired(db, row_id)) == 2 and jobs(db, row_id) == []


# ------------------------------------------------------------ other paths that run the engine

def test_a_message_thrown_by_another_instance_after_the_due_time_wins_over_the_timer(db, clock):
    # the message reaches the waiter through messages.route_thrown, inside the payer's start command
    payer = Bpmn("payer")
    payer.messages.add("payment")
    payer.start("p_start").raw('<bpmn:intermediateThrowEvent id="p_pay"><bpmn:messageEventDefinition '
                               'messageRef="msg_payment"/></bpmn:intermediateThrowEvent>').end("p_end")
    payer.chain("p_start", "p_pay", "p_end")
    deploy_xml(db, payer.xml(), "payer.bpmn")
    waiting = _gateway(db)
    clock.advance(hours=2)
    paying = db.command(lambda s: start_instance(s, key="payer", actor=ALICE)).id
    assert instance(db, paying).status == "completed"
    assert [t.element_id for t in open_tasks(db, waiting)] == ["w_ship"]
    ran = _ran(db, waiting)
    assert "w_paid" in ran and "w_timer" not in ran and "w_late" not in ran
    assert _fired(db, waiting) == [] and jobs(db, waiting) == [] and run_once(db).acquired == 0


def test_a_timer_in_a_called_process_waits_for_its_job_too(db, clock):
    child = Bpmn("child").start().timer_catch("pause", '"PT1H"').script("after", "waited = True").end()
    child.chain("start", "pause", "after", "end")
    parent = (Bpmn("parent").start().parallel("fork").call("sub", "child").user("b", "B", props=STAFF)
              .parallel("join").end().chain("start", "fork", "sub", "join", "end").chain("fork", "b", "join"))
    deploy_xml(db, parent.xml(child), "parent.bpmn")
    row_id = db.command(lambda s: start_instance(s, key="parent", actor=ALICE)).id
    [job] = jobs(db, row_id)
    assert job.element_id == "pause"
    clock.advance(hours=2)
    _complete(db, row_id, "b")
    assert instance(db, row_id).status == "running" and "after" not in _ran(db, row_id)
    assert _fired(db, row_id) == [] and [j.id for j in jobs(db, row_id)] == [job.id]
    assert run_once(db).fired == 1
    stored = instance(db, row_id)
    assert stored.status == "completed" and stored.variables["waited"] is True
    assert [(f["element_id"], f["task_id"]) for f in _fired(db, row_id)] == [("pause", job.task_id)]


# ------------------------------------------------------------ timers a command reaches already due

def test_a_timer_reached_already_due_fires_at_once_with_its_audit_event(db, clock):
    b = (Bpmn("past").start().user("u", "U", props=STAFF)
         .raw('<bpmn:intermediateCatchEvent id="deadline"><bpmn:timerEventDefinition><bpmn:timeDate>'
              '"2026-01-05T10:00:00+00:00"</bpmn:timeDate></bpmn:timerEventDefinition></bpmn:intermediateCatchEvent>')
         .script("after", "done = True").end().chain("start", "u", "deadline", "after", "end"))
    deploy_xml(db, b.xml())
    row_id = db.command(lambda s: start_instance(s, key="past", actor=ALICE)).id  # 09:00
    clock.advance(hours=2)
    _complete(db, row_id, "u")  # reaches the timer at 11:00: already due, so it fires in this command
    stored = instance(db, row_id)
    assert stored.status == "completed" and stored.variables["done"] is True
    [fired] = _fired(db, row_id)
    assert fired["element_id"] == "deadline" and fired["due_at"].startswith("2026-01-05T10:00:00")
    actions = audit_actions(db, row_id)
    assert actions.index("timer.fired") < len(actions) - 1 - actions[::-1].index("activities.completed")
    assert jobs(db, row_id) == [] and run_once(db).acquired == 0
