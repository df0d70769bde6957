"""Timers in batches: several instances per transaction (planned first and written together, or each
under its own savepoint)."""
from __future__ import annotations

import pytest
from sqlalchemy import select

from engine.commands import start_instance, unit
from engine.config import Settings
from engine.store.models import AuditEventRow, IncidentRow
from engine.worker import run_once
from tests.bpmnkit import Bpmn
from tests.helpers import ALICE, deploy_xml, instance, jobs


def _waits() -> bytes:
    # the script after the timer divides by ``divisor``: 0 makes that instance's firing fail
    b = Bpmn("wait").start().timer_catch("pause", '"PT1H"').script("after", "fired = fired + 100 / divisor")
    return b.end().chain("start", "pause", "after", "end").xml()


def _fired_events(db, instance_id: str) -> int:
    with db.read() as s:
        return len(s.scalars(select(AuditEventRow.chain_seq).where(AuditEventRow.chain == instance_id,
                                                            AuditEventRow.action == "timer.fired")).all())


def _record_stores(monkeypatch) -> list:
    """Record the session that stores each instance: one entry per instance, by either write path
    (``unit.persist`` under a savepoint, or a batch's planned instances through ``unit.write_plans``)."""
    sessions: list = []
    real_persist, real_write = unit.persist, unit.write_plans
    monkeypatch.setattr(unit, "persist", lambda session, *a, **k: (sessions.append(session),
                                                                   real_persist(session, *a, **k))[1])
    monkeypatch.setattr(unit, "write_plans", lambda session, plans: (sessions.extend([session] * len(plans)),
                                                                     real_write(session, plans))[1])
    return sessions


def _start(db, divisor: int) -> str:
    return db.command(lambda s: start_instance(s, key="wait", actor=ALICE,
                                               variables={"fired": 0, "divisor": divisor})).id


def test_one_failing_instance_does_not_fail_the_batch(db, clock, monkeypatch):
    deploy_xml(db, _waits())
    good = [_start(db, 1) for _ in range(4)]
    bad = _start(db, 0)
    batches = _record_stores(monkeypatch)
    clock.advance(hours=2)
    result = run_once(db, max_attempts=2, settings=Settings(timer_batch_ms=60_000))
    assert (result.acquired, result.fired, result.failed) == (5, 4, 1)
    assert len(batches) == 4 and len({id(s) for s in batches}) == 1  # the four good ones: one transaction
    for instance_id in good:
        row = instance(db, instance_id)
        assert row.status == "completed" and row.variables["fired"] == 100
        assert _fired_events(db, instance_id) == 1
    [job] = jobs(db, bad)
    assert job.attempts == 1 and job.state == "pending" and "division by zero" in job.last_error
    assert instance(db, bad).revision == 1 and _fired_events(db, bad) == 0  # its savepoint rolled back alone
    assert run_once(db, max_attempts=2).acquired == 0  # backing off; the good ones never fire again
    clock.advance(minutes=1)
    result = run_once(db, max_attempts=2)
    assert (result.acquired, result.fired, result.failed) == (1, 0, 1)
    [job] = jobs(db, bad)
    assert job.state == "failed"
    with db.read() as s:
        [incident] = s.scalars(select(IncidentRow).where(IncidentRow.instance_id == bad)).all()
    assert incident.kind == "failed_job" and incident.job_id == job.id
    assert all(_fired_events(db, i) == 1 and instance(db, i).variables["fired"] == 100 for i in good)


def test_a_stale_instance_in_a_batch_is_retried_alone_and_fires_once(db, clock, monkeypatch):
    deploy_xml(db, _waits())
    ids = [_start(db, 1) for _ in range(4)]
    moved = ids[2]
    real_load = unit.load
    loads: list[str] = []

    def load(session, instance_id, **kw):
        loaded = real_load(session, instance_id, **kw)
        loads.append(instance_id)
        if instance_id == moved and loads.count(moved) == 1:
            # another command stores this instance after the batch read it (a new revision): the
            # batch's guarded UPDATE ... WHERE revision = :seen finds no row
            session.execute(unit._UPDATE_INSTANCE, {"b_id": moved, "b_revision": loaded.seen_revision,
                                                    "b_audit_seq": loaded.seen_audit_seq,
                                                    "revision": loaded.seen_revision + 1})
        return loaded

    monkeypatch.setattr(unit, "load", load)
    clock.advance(hours=2)
    result = run_once(db, settings=Settings(timer_batch_ms=60_000))
    assert (result.acquired, result.fired, result.failed) == (4, 4, 0)
    assert loads.count(moved) == 2 and all(loads.count(i) == 1 for i in ids if i != moved)
    assert loads[-1] == moved  # retried alone after the batch committed the others
    for instance_id in ids:
        row = instance(db, instance_id)
        assert row.status == "completed" and row.variables["fired"] == 100
        assert _fired_events(db, instance_id) == 1
    assert run_once(db).acquired == 0


def test_batches_are_bounded(db, clock, monkeypatch):
    deploy_xml(db, _waits())
    ids = [_start(db, 1) for _ in range(7)]
    sessions = _record_stores(monkeypatch)
    clock.advance(hours=2)
    assert run_once(db, settings=Settings(timer_batch_instances=3, timer_batch_ms=60_000)).fired == 7
    assert [sum(x is s for x in sessions) for s in {id(x): x for x in sessions}.values()] == [3, 3, 1]
    assert all(instance(db, i).status == "completed" and _fired_events(db, i) == 1 for i in ids)


def test_a_batch_reads_its_instances_once_and_writes_one_audit_insert_and_the_chains_hold(db, clock, monkeypatch):
    from engine import audit

    deploy_xml(db, _waits())
    good = [_start(db, 1) for _ in range(5)]
    bad = _start(db, 0)  # fails after the timer: its audit rows must not reach the batch's insert
    seq_before = instance(db, bad).audit_seq
    records = []
    real_load = unit.load
    monkeypatch.setattr(unit, "load", lambda session, i, **kw: (records.append(kw.get("record")),
                                                                real_load(session, i, **kw))[1])
    inserts: list[int] = []
    real_insert = audit.insert_rows
    monkeypatch.setattr(audit, "insert_rows", lambda session, rows: (inserts.append(len(rows)),
                                                                     real_insert(session, rows))[1])
    clock.advance(hours=2)
    result = run_once(db, settings=Settings(timer_batch_ms=60_000))
    assert (result.fired, result.failed) == (5, 1)
    # one INSERT for the batch's audit rows (timer.fired, activities, instance.completed per good instance);
    # the bad instance's first failure is recorded on its job, not audited (that comes with the incident)
    assert inserts == [5 * 3]
    assert len(records) == 6 and all(r is not None for r in records)  # rows read for the batch, not per instance
    with db.read() as s:
        verdict = audit.verify(s)
    assert verdict.ok, verdict.to_dict()
    assert all(_fired_events(db, i) == 1 for i in good) and _fired_events(db, bad) == 0
    assert instance(db, bad).status == "running" and instance(db, bad).audit_seq == seq_before


def _savepoints(db) -> list[str]:
    from sqlalchemy import event

    seen: list[str] = []

    def spy(conn, cursor, statement, *args):
        if statement.upper().startswith(("SAVEPOINT", "RELEASE")):
            seen.append(statement)

    event.listen(db.engine, "before_cursor_execute", spy)
    return seen


def test_instances_that_end_are_planned_first_and_written_together_without_savepoints(db, clock, monkeypatch):
    deploy_xml(db, _waits())
    ids = [_start(db, 1) for _ in range(6)]
    savepoints = _savepoints(db)
    stores = _record_stores(monkeypatch)
    persisted = []
    real_persist = unit.persist
    monkeypatch.setattr(unit, "persist", lambda *a, **k: (persisted.append(1), real_persist(*a, **k))[1])
    clock.advance(hours=2)
    result = run_once(db, settings=Settings(timer_batch_ms=60_000))
    assert (result.acquired, result.fired, result.failed) == (6, 6, 0)
    assert savepoints == [] and persisted == [] and len(stores) == 6 and len({id(s) for s in stores}) == 1
    for instance_id in ids:
        row = instance(db, instance_id)
        assert row.status == "completed" and row.revision == 2 and row.variables["fired"] == 100
        assert _fired_events(db, instance_id) == 1 and jobs(db, instance_id) == []
    from engine import audit
    with db.read() as s:
        verdict = audit.verify(s)
    assert verdict.ok, verdict.to_dict()
    assert run_once(db).acquired == 0


def test_a_batch_mixes_planned_instances_with_ones_that_keep_running(db, clock):
    # after its timer, "review" waits in a user task: stored at once under a savepoint; "wait" ends: planned
    review = Bpmn("review").start().timer_catch("pause", '"PT1H"').user("check", "Check").end()
    deploy_xml(db, review.chain("start", "pause", "check", "end").xml(), "review.bpmn")
    deploy_xml(db, _waits())
    running = db.command(lambda s: start_instance(s, key="review", actor=ALICE)).id
    ending = [_start(db, 1) for _ in range(3)]
    bad = _start(db, 0)
    savepoints = _savepoints(db)
    clock.advance(hours=2)
    result = run_once(db, max_attempts=2, settings=Settings(timer_batch_ms=60_000))
    assert (result.acquired, result.fired, result.failed) == (5, 4, 1)
    assert len([s for s in savepoints if s.upper().startswith("SAVEPOINT")]) == 1  # the running instance's
    row = instance(db, running)
    assert row.status == "running" and row.revision == 2 and jobs(db, running) == []
    assert _fired_events(db, running) == 1 and len(row.open_task_ids) == 1
    assert all(instance(db, i).status == "completed" and _fired_events(db, i) == 1 for i in ending)
    [job] = jobs(db, bad)
    assert job.attempts == 1 and instance(db, bad).revision == 1 and _fired_events(db, bad) == 0
    from engine import audit
    with db.read() as s:
        verdict = audit.verify(s)
    assert verdict.ok, verdict.to_dict()


def test_an_instance_a_message_of_the_same_batch_moved_is_dropped_from_the_plans_and_fired_alone(db, clock):
    # "waiter" waits for its timer OR a message (an event-based gateway): the batch plans it (its timer
    # ends it); "payer", next in the same batch, throws that message after its timer (stored at once: it
    # threw a message), which moves the waiter. The waiter's guard no longer matches: it is dropped from
    # the plans before anything of it is written and fired alone, where it is found completed
    payer = Bpmn("payer")
    payer.messages.add("payment")
    payer.start("p_start").timer_catch("p_wait", '"PT1H"').raw(
        '<bpmn:intermediateThrowEvent id="p_pay"><bpmn:messageEventDefinition messageRef="msg_payment"/>'
        '</bpmn:intermediateThrowEvent>').end("p_end").chain("p_start", "p_wait", "p_pay", "p_end")
    waiter = Bpmn("waiter").start("w_start").raw('<bpmn:eventBasedGateway id="w_gw"/>')
    waiter.timer_catch("w_timer", '"PT1H"').message_catch("w_paid", "payment").end("w_late").end("w_paid_end")
    waiter.chain("w_start", "w_gw", "w_timer", "w_late").chain("w_gw", "w_paid", "w_paid_end")
    deploy_xml(db, waiter.xml(payer))
    waiting = db.command(lambda s: start_instance(s, key="waiter", actor=ALICE)).id
    clock.advance(seconds=1)  # the payer's timer is due after the waiter's: the batch takes the waiter first
    paying = db.command(lambda s: start_instance(s, key="payer", actor=ALICE)).id
    loads: list[str] = []
    real_load = unit.load
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(unit, "load", lambda session, i, **kw: (loads.append(i), real_load(session, i, **kw))[1])
        clock.advance(hours=2)
        result = run_once(db, settings=Settings(timer_batch_ms=60_000))
    assert loads == [waiting, paying, waiting]  # planned, fired the payer, loaded by the payer's message
    assert (result.acquired, result.fired, result.failed) == (2, 1, 0)
    assert instance(db, paying).status == "completed" and _fired_events(db, paying) == 1
    row = instance(db, waiting)
    # stored once, by the payer's message (the message path won: its overdue timer is gated, not
    # fired, in that command); the batch's plan for it, with its timer.fired event, was dropped whole
    assert row.status == "completed" and row.revision == 2 and _fired_events(db, waiting) == 0
    assert jobs(db, waiting) == []
    from engine import audit
    with db.read() as s:
        verdict = audit.verify(s)
    assert verdict.ok, verdict.to_dict()
    assert run_once(db).acquired == 0


def test_a_batch_computes_without_the_write_lock_and_what_a_concurrent_command_moves_is_stale(db, clock, monkeypatch):
    # While the batch computes (phase 1), another "process" (its own Database on the same file or
    # server) commits commands: a start of an unrelated instance, and the cancellation of two instances
    # the batch has already computed, one that ends with its timer (planned) and one that keeps running
    # (stored under a savepoint in phase 2). On SQLite, with the write lock held while computing, those
    # commits would wait for the batch. Both moved instances are found stale in phase 2 (the planned one
    # by the guard read, the other by its guarded UPDATE), nothing of their firing is stored, and they
    # are fired alone afterwards, where they are found cancelled.
    import threading

    from engine import audit, worker
    from engine.commands import cancel_instance
    from engine.store.db import Database
    from tests.helpers import open_tasks

    review = Bpmn("review").start().timer_catch("pause", '"PT1H"').user("check", "Check").end()
    deploy_xml(db, review.chain("start", "pause", "check", "end").xml(), "review.bpmn")
    deploy_xml(db, _waits())
    running = db.command(lambda s: start_instance(s, key="review", actor=ALICE)).id
    ending = [_start(db, 1) for _ in range(4)]
    moved_ending = ending[1]
    other = Database(db.url)
    done: list[str] = []
    real_run_firing = worker.run_firing
    computed: list[str] = []

    def concurrently() -> None:
        other.command(lambda s: start_instance(s, key="wait", actor=ALICE, variables={"fired": 0, "divisor": 1}))
        for victim in (running, moved_ending):
            other.command(lambda s, v=victim: cancel_instance(s, instance_id=v, actor=ALICE, reason="test"))
        done.append("committed")

    def run_firing(session, *, instance_id, **kw):
        firing = real_run_firing(session, instance_id=instance_id, **kw)
        computed.append(instance_id)
        if len(computed) == 5:  # every instance of the batch is computed: commit elsewhere now
            thread = threading.Thread(target=concurrently, daemon=True)
            thread.start()
            thread.join(timeout=15)
            assert done == ["committed"], "another writer could not commit while the batch computed"
        return firing

    monkeypatch.setattr(worker, "run_firing", run_firing)
    try:
        clock.advance(hours=2)
        result = run_once(db, settings=Settings(timer_batch_ms=60_000))
    finally:
        other.dispose()
    assert set(computed[:5]) == {running, *ending} and done == ["committed"]
    # 5 acquired (the new instance's timer is not due yet); 3 fired; the 2 moved ones were found cancelled
    assert (result.acquired, result.fired, result.failed) == (5, 3, 0)
    for victim in (running, moved_ending):
        row = instance(db, victim)
        assert row.status == "cancelled" and row.revision == 2 and _fired_events(db, victim) == 0
        assert jobs(db, victim) == []
    assert open_tasks(db, running) == []  # the firing's user task was never stored
    assert instance(db, moved_ending).variables["fired"] == 0
    for instance_id in (i for i in ending if i != moved_ending):
        row = instance(db, instance_id)
        assert row.status == "completed" and row.variables["fired"] == 100 and _fired_events(db, instance_id) == 1
    with db.read() as s:
        verdict = audit.verify(s)
    assert verdict.ok, verdict.to_dict()
    assert run_once(db).acquired == 0


def test_on_sqlite_the_batch_takes_the_write_lock_only_after_computing(sqlite_db, clock, monkeypatch):
    from datetime import timedelta

    from sqlalchemy import event

    from engine.worker import _acquire, fire_timer_batch

    db = sqlite_db
    deploy_xml(db, _waits())
    for _ in range(3):
        _start(db, 1)
    clock.advance(hours=2)
    rows = _acquire(db, owner="me", limit=10, lease=timedelta(minutes=5))
    order: list[str] = []
    event.listen(db.engine, "before_cursor_execute",
                 lambda conn, cursor, statement, *a: order.append(statement) if statement.startswith("BEGIN") else None)
    real_plan, real_acquire = unit.plan, db.write_queue.acquire
    monkeypatch.setattr(unit, "plan", lambda *a, **k: (order.append("plan"), real_plan(*a, **k))[1])
    monkeypatch.setattr(db.write_queue, "acquire", lambda: (order.append("write lock"), real_acquire())[1])
    outcome = fire_timer_batch(db, [(i, [j]) for j, i, _k in rows], Settings(timer_batch_ms=60_000))
    assert sum(outcome.fired.values()) == 3
    # a read transaction (deferred BEGIN) computes the three plans; then the write lock, once
    assert order == ["BEGIN", "plan", "plan", "plan", "write lock"]
