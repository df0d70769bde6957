"""The timer worker: leases, crash recovery, failures and incidents."""
from __future__ import annotations

from datetime import timedelta

from engine.commands import start_instance
from engine.worker import acquire, run_once
from tests.bpmnkit import Bpmn
from tests.helpers import ALICE, deploy_xml, instance, jobs


def _waits(duration: str = '"PT1H"', after: str = "done = True") -> bytes:
    b = Bpmn("wait").start().timer_catch("pause", duration).script("after", after).end()
    return b.chain("start", "pause", "after", "end").xml()


def test_leased_jobs_are_not_handed_out_twice(db, clock):
    deploy_xml(db, _waits())
    ids = [db.command(lambda s: start_instance(s, key="wait", actor=ALICE)).id for _ in range(3)]
    clock.advance(hours=2)
    first = acquire(db, owner="w1", limit=2)
    second = acquire(db, owner="w2", limit=10)
    assert len(first) == 2 and len(second) == 1 and not set(first) & set(second)
    assert set(first) | set(second) == set(ids)
    assert acquire(db, owner="w3") == {}


def test_a_crashed_workers_jobs_are_picked_up_after_the_lease(db, clock):
    deploy_xml(db, _waits())
    row = db.command(lambda s: start_instance(s, key="wait", actor=ALICE))
    clock.advance(hours=2)
    assert acquire(db, owner="crashed", lease=timedelta(minutes=5))  # ... and never comes back
    assert run_once(db, owner="w2").fired == 0
    clock.advance(minutes=6)
    assert run_once(db, owner="w2").fired == 1
    assert instance(db, row.id).status == "completed"


def test_timer_fires_exactly_once(db, clock):
    deploy_xml(db, _waits(after="fired = fired + 1"))
    row = db.command(lambda s: start_instance(s, key="wait", actor=ALICE, variables={"fired": 0}))
    clock.advance(hours=2)
    assert run_once(db).fired == 1
    assert run_once(db).fired == 0
    assert instance(db, row.id).variables["fired"] == 1


def test_failing_timer_job_backs_off_then_becomes_an_incident(db, clock):
    deploy_xml(db, _waits(after="x = 1 / 0"))
    row = db.command(lambda s: start_instance(s, key="wait", actor=ALICE))
    clock.advance(hours=2)
    result = run_once(db, max_attempts=2)
    assert (result.acquired, result.failed) == (1, 1)
    [job] = jobs(db, row.id)
    assert job.attempts == 1 and "ZeroDivisionError" in job.last_error and job.state == "pending"
    assert instance(db, row.id).revision == 1  # the failed firing left no trace in the instance
    assert run_once(db, max_attempts=2).acquired == 0  # backing off
    clock.advance(minutes=1)
    assert run_once(db, max_attempts=2).failed == 1
    [job] = jobs(db, row.id)
    assert job.state == "failed" and job.attempts == 2
    clock.advance(days=1)
    assert run_once(db, max_attempts=2).acquired == 0  # an incident waits for an operator
