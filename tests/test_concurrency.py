"""The unit of work under concurrent writers (real threads, real databases)."""
from __future__ import annotations

import contextlib
import threading

import pytest

from engine import audit
from engine.commands import cancel_instance, claim_task, complete_task, start_instance, unit
from engine.errors import Conflict, StaleInstance
from tests.bpmnkit import Bpmn
from tests.helpers import ALICE, BOB, deploy_xml, instance, open_tasks


def _parallel() -> bytes:
    b = (Bpmn("par").start().parallel("split").user("a", props={"candidateGroups": "staff"}, writes="from_a")
         .user("b", props={"candidateGroups": "staff"}, writes="from_b").parallel("join")
         .user("c", props={"candidateGroups": "staff"}).end())
    b.chain("start", "split").flow("split", "a").flow("split", "b").flow("a", "join").flow("b", "join")
    return b.chain("join", "c", "end").xml()


def _race(monkeypatch, db, *jobs):
    """Run the commands in threads; each pauses after loading the instance until all have loaded."""
    barrier = threading.Barrier(len(jobs), timeout=2)
    conflicts = []
    original_run, original_persist = unit.run, unit.persist

    def paused_run(loaded, actor, settings):
        # commands read and compute before they take the write lock (on SQLite too), so both load
        with contextlib.suppress(threading.BrokenBarrierError):  # a retry runs alone
            barrier.wait()
        return original_run(loaded, actor, settings)

    def counted_persist(*args, **kwargs):
        try:
            return original_persist(*args, **kwargs)
        except StaleInstance:
            conflicts.append(1)
            raise

    monkeypatch.setattr(unit, "run", paused_run)
    monkeypatch.setattr(unit, "persist", counted_persist)
    outcomes: list[object] = [None] * len(jobs)

    def worker(i, job):
        try:
            outcomes[i] = db.command(job)
        except Exception as exc:  # noqa: BLE001 - collected for the assertions
            outcomes[i] = exc

    threads = [threading.Thread(target=worker, args=(i, j)) for i, j in enumerate(jobs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    return outcomes, conflicts


def test_concurrent_completions_of_parallel_tasks_both_land(db, clock, monkeypatch):
    deploy_xml(db, _parallel())
    row = db.command(lambda s: start_instance(s, key="par", actor=ALICE))
    a, b = open_tasks(db, row.id)
    outcomes, conflicts = _race(
        monkeypatch, db,
        lambda s: complete_task(s, task_id=a.id, actor=ALICE, variables={"from_a": 1}),
        lambda s: complete_task(s, task_id=b.id, actor=BOB, variables={"from_b": 2}),
    )
    assert not [o for o in outcomes if isinstance(o, Exception)], outcomes
    [c] = open_tasks(db, row.id)
    assert c.element_id == "c"
    stored = instance(db, row.id)
    assert stored.revision == 3 and stored.variables["from_a"] == 1 and stored.variables["from_b"] == 2
    assert conflicts, "both loaded the same revision; one must have retried"
    with db.read() as s:
        assert audit.verify(s).ok


def test_completion_racing_a_cancel_loses_cleanly(db, clock, monkeypatch):
    deploy_xml(db, _parallel())
    row = db.command(lambda s: start_instance(s, key="par", actor=ALICE))
    a, _ = open_tasks(db, row.id)
    outcomes, _ = _race(
        monkeypatch, db,
        lambda s: complete_task(s, task_id=a.id, actor=ALICE),
        lambda s: cancel_instance(s, instance_id=row.id, actor=BOB, reason="withdrawn"),
    )
    completed, cancelled = outcomes
    assert not isinstance(cancelled, Exception), cancelled
    assert completed is not None and (not isinstance(completed, Exception) or isinstance(completed, Conflict))
    stored = instance(db, row.id)
    assert stored.status == "cancelled" and open_tasks(db, row.id) == []
    with db.read() as s:
        assert audit.verify(s).ok
    from tests.helpers import snapshot

    states = snapshot(db)["task_states"]
    assert states[a.id] == ("cancelled" if isinstance(completed, Conflict) else "completed")


@pytest.mark.parametrize("writers", [6])
def test_many_instances_in_parallel_do_not_block_each_other(db, clock, writers):
    deploy_xml(db, _parallel())
    ids = [db.command(lambda s: start_instance(s, key="par", actor=ALICE)).id for _ in range(writers)]
    errors = []

    def work(instance_id):
        try:
            for task in open_tasks(db, instance_id):
                db.command(lambda s, t=task: complete_task(s, task_id=t.id, actor=ALICE))
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in ids]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    assert all([t.element_id for t in open_tasks(db, i)] == ["c"] for i in ids)
    with db.read() as s:
        assert audit.verify(s).ok


def test_two_people_claiming_at_once_one_wins(db, clock):
    deploy_xml(db, _parallel())
    row = db.command(lambda s: start_instance(s, key="par", actor=ALICE))
    a, _ = open_tasks(db, row.id)
    barrier = threading.Barrier(2)
    outcomes = {}

    def claim(actor):
        barrier.wait()
        try:
            db.command(lambda s: claim_task(s, task_id=a.id, actor=actor))
            outcomes[actor.name] = "won"
        except Conflict as exc:
            outcomes[actor.name] = str(exc)

    threads = [threading.Thread(target=claim, args=(x,)) for x in (ALICE, BOB)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert sorted(outcomes.values())[-1] == "won"
    loser = next(v for v in outcomes.values() if v != "won")
    winner = next(k for k, v in outcomes.items() if v == "won")
    assert f"already claimed by {winner}" in loser
    assert next(t for t in open_tasks(db, row.id) if t.id == a.id).assignee == winner


def test_appends_to_a_global_chain_in_one_transaction_see_their_own_head(db, clock):
    """Several appends in one command (seed_demo adds users and tokens) chain on each other even
    while something (a traceback, a profiler) still holds the head row loaded by the first."""
    from engine.commands import SYSTEM
    from engine.store.models import ChainHeadRow

    def three_appends(session):
        held = []
        for n in range(3):
            audit.append_global(session, "identity", [audit.Event("test.appended", SYSTEM.name, {"n": n})])
            held.append(session.get(ChainHeadRow, "identity"))  # keeps the loaded head alive
        return session.get(ChainHeadRow, "identity", populate_existing=True).seq

    before = db.command(lambda s: (s.get(ChainHeadRow, "identity").seq if s.get(ChainHeadRow, "identity") else 0))
    assert db.command(three_appends, retries=0) == before + 3
    with db.read() as s:
        assert audit.verify(s, chain="identity").ok
