"""Commands through the unit of work, on SQLite and PostgreSQL."""
from __future__ import annotations

import json
from datetime import timedelta

import pytest
from sqlalchemy import select

from engine import audit
from engine.commands import (
    assign_task,
    cancel_instance,
    claim_task,
    complete_task,
    correlate_message,
    start_instance,
    unclaim_task,
)
from engine.config import Settings
from engine.errors import Conflict, Forbidden, InvalidInput, NotFound, ScriptError
from engine.store.models import AuditEventRow, DefinitionRow, TaskRow
from engine.worker import run_once
from tests.bpmnkit import Bpmn, approval_chain, script_loop, straight_scripts, user_loop
from tests.helpers import (
    ALICE,
    BOB,
    DESIGNER,
    MALLORY,
    SHOP,
    audit_actions,
    deploy_xml,
    instance,
    jobs,
    open_tasks,
    snapshot,
)


def test_deploy_versions_per_key_and_identical_redeploy_returns_existing(db):
    first = deploy_xml(db, approval_chain().xml())
    assert first.created and [(d["key"], d["version"]) for d in first.definitions] == [("approval", 1)]
    again = deploy_xml(db, approval_chain().xml())
    assert not again.created and again.deployment_id == first.deployment_id
    assert again.definitions == first.definitions
    changed = deploy_xml(db, approval_chain(n=2).xml())
    assert changed.created and changed.definitions[0]["version"] == 2
    with db.read() as s:
        assert sorted(s.scalars(select(DefinitionRow.version).where(DefinitionRow.key == "approval"))) == [1, 2]


def test_running_instances_stay_on_their_version(db, clock):
    deploy_xml(db, approval_chain(n=3).xml())
    old = db.command(lambda s: start_instance(s, key="approval", actor=ALICE))
    deploy_xml(db, approval_chain(n=1).xml())
    new = db.command(lambda s: start_instance(s, key="approval", actor=ALICE))
    assert (old.definition_version, new.definition_version) == (1, 2)
    for _ in range(3):
        [task] = open_tasks(db, old.id)
        db.command(lambda s, t=task: complete_task(s, task_id=t.id, actor=ALICE))
    assert instance(db, old.id).status == "completed"


def test_straight_through_scripts_complete_and_store_variables(db, clock):
    deploy_xml(db, straight_scripts(5).xml())
    row = db.command(lambda s: start_instance(s, key="straight", actor=ALICE, variables={"seed": 1},
                                              business_key="order-1"))
    stored = instance(db, row.id)
    assert stored.status == "completed"
    assert stored.variables == {"seed": 1, "x0": 0, "x1": 2, "x2": 4, "x3": 6, "x4": 8}
    assert stored.business_key == "order-1" and stored.started_by == "alice"
    assert audit_actions(db, row.id) == ["instance.started", "activities.completed", "instance.completed"]
    with db.read() as s:
        payload = s.scalar(select(AuditEventRow.payload).where(AuditEventRow.action == "activities.completed"))
    assert [a["element_id"] for a in json.loads(payload)["activities"]] == ["start", "s0", "s1", "s2", "s3", "s4",
                                                                            "end"]


def test_user_tasks_flow_through_the_inbox_projection(db, clock):
    deploy_xml(db, approval_chain(3, writes="*").xml())
    row = db.command(lambda s: start_instance(s, key="approval", actor=ALICE, variables={"amount": 10}))
    seen = []
    for _ in range(3):
        [task] = open_tasks(db, row.id)
        assert task.candidate_groups == ["staff"] and task.assignee is None
        seen.append(task.element_id)
        db.command(lambda s, t=task: claim_task(s, task_id=t.id, actor=BOB))
        db.command(lambda s, t=task: complete_task(s, task_id=t.id, actor=BOB, variables={f"ok_{t.element_id}": True}))
    assert seen == ["u0", "u1", "u2"]
    assert open_tasks(db, row.id) == []
    stored = instance(db, row.id)
    assert stored.status == "completed"
    assert stored.variables == {"amount": 10, "ok_u0": True, "ok_u1": True, "ok_u2": True}
    with db.read() as s:
        done = s.scalars(select(TaskRow).where(TaskRow.instance_id == row.id)).all()
        assert {(t.state, t.completed_by) for t in done} == {("completed", "bob")}


def test_claim_unclaim_assign_rules(db, clock):
    deploy_xml(db, approval_chain(1).xml())
    row = db.command(lambda s: start_instance(s, key="approval", actor=ALICE))
    [task] = open_tasks(db, row.id)
    with pytest.raises(Forbidden):
        db.command(lambda s: claim_task(s, task_id=task.id, actor=MALLORY))
    db.command(lambda s: claim_task(s, task_id=task.id, actor=ALICE))
    with pytest.raises(Conflict, match="already claimed by alice"):
        db.command(lambda s: claim_task(s, task_id=task.id, actor=BOB))
    with pytest.raises(Forbidden):
        db.command(lambda s: complete_task(s, task_id=task.id, actor=BOB))
    with pytest.raises(Forbidden):
        db.command(lambda s: unclaim_task(s, task_id=task.id, actor=BOB))
    db.command(lambda s: unclaim_task(s, task_id=task.id, actor=ALICE))
    db.command(lambda s: assign_task(s, task_id=task.id, assignee="bob", actor=DESIGNER))
    assert open_tasks(db, row.id)[0].assignee == "bob"
    before = snapshot(db)
    with pytest.raises(Forbidden):
        db.command(lambda s: complete_task(s, task_id=task.id, actor=ALICE))
    assert snapshot(db) == before
    db.command(lambda s: complete_task(s, task_id=task.id, actor=BOB))
    assert "task.claimed" in audit_actions(db, row.id) and "task.assigned" in audit_actions(db, row.id)


def test_completing_a_done_task_is_a_conflict_and_changes_nothing(db, clock):
    deploy_xml(db, approval_chain(2).xml())
    row = db.command(lambda s: start_instance(s, key="approval", actor=ALICE))
    [task] = open_tasks(db, row.id)
    db.command(lambda s: complete_task(s, task_id=task.id, actor=ALICE))
    before = snapshot(db)
    with pytest.raises(Conflict, match="already completed"):
        db.command(lambda s: complete_task(s, task_id=task.id, actor=ALICE))
    with pytest.raises(NotFound):
        db.command(lambda s: complete_task(s, task_id="00000000-0000-0000-0000-000000000000", actor=ALICE))
    assert snapshot(db) == before


def test_future_task_cannot_be_run_even_if_its_row_is_forged(db, clock):
    """SpiffWorkflow's task.run() does not check state; the command must."""
    deploy_xml(db, approval_chain(2).xml())
    row = db.command(lambda s: start_instance(s, key="approval", actor=ALICE))
    [task] = open_tasks(db, row.id)
    from engine.commands import unit

    def future_id(s):
        loaded = unit.load(s, row.id)
        return str(next(t.id for t in loaded.workflow.get_tasks() if t.task_spec.bpmn_id == "u1"))

    fid = db.command(future_id)
    with db.transaction() as s:  # forge an "open" row for the FUTURE task
        forged = s.get(TaskRow, task.id)
        s.add(TaskRow(**{c.name: getattr(forged, c.name) for c in TaskRow.__table__.columns} | {"id": fid}))
    before = snapshot(db)
    with pytest.raises(Conflict, match="can no longer be completed"):
        db.command(lambda s: complete_task(s, task_id=fid, actor=ALICE))
    assert snapshot(db) == before
    assert sorted(t.id for t in open_tasks(db, row.id)) == sorted([task.id, fid])


def test_cancel_closes_tasks_and_timers(db, clock):
    b = approval_chain(1).boundary_timer("late", "u0", duration='"PT1H"').end("late_end").flow("late", "late_end")
    deploy_xml(db, b.xml())
    row = db.command(lambda s: start_instance(s, key="approval", actor=ALICE))
    assert len(jobs(db, row.id)) == 1 and len(open_tasks(db, row.id)) == 1
    db.command(lambda s: cancel_instance(s, instance_id=row.id, actor=ALICE, reason="duplicate request"))
    stored = instance(db, row.id)
    assert (stored.status, stored.end_reason, stored.ended_by) == ("cancelled", "duplicate request", "alice")
    assert open_tasks(db, row.id) == [] and jobs(db, row.id) == []
    with pytest.raises(Conflict, match="cancelled"):
        db.command(lambda s: cancel_instance(s, instance_id=row.id, actor=ALICE))


def test_boundary_timer_fires_through_the_worker_when_the_clock_passes(db, clock):
    b = (Bpmn("sla").start().user("review", "Review", props={"candidateGroups": "staff"})
         .boundary_timer("warn", "review", duration='"PT24H"', interrupting=False).script("escalate", "escalated = True")
         .end("warn_end").boundary_timer("breach", "review", duration='"PT48H"').script("reject", "rejected = True")
         .end("breach_end").end())
    b.chain("start", "review", "end").chain("warn", "escalate", "warn_end").chain("breach", "reject", "breach_end")
    deploy_xml(db, b.xml())
    row = db.command(lambda s: start_instance(s, key="sla", actor=ALICE))
    due = [j.due_at for j in jobs(db, row.id)]
    assert due == [clock.now() + timedelta(hours=24), clock.now() + timedelta(hours=48)]
    assert run_once(db).fired == 0
    clock.advance(hours=24, seconds=1)
    assert run_once(db).fired == 1
    assert [j.element_id for j in jobs(db, row.id)] == ["breach"]
    assert len(open_tasks(db, row.id)) == 1
    assert instance(db, row.id).variables.get("escalated") is True
    clock.advance(hours=24)
    assert run_once(db).fired == 1
    stored = instance(db, row.id)
    assert stored.status == "completed" and stored.variables.get("rejected") is True
    assert open_tasks(db, row.id) == [] and jobs(db, row.id) == []
    assert audit_actions(db, row.id).count("timer.fired") == 2
    assert "task.cancelled" in audit_actions(db, row.id)
    assert run_once(db).fired == 0


def test_message_correlation_by_business_key(db, clock):
    b = (Bpmn("pay").start().message_catch("paid", "order_paid").script("ship", "shipped = amount_paid > 0").end())
    b.chain("start", "paid", "ship", "end")
    deploy_xml(db, b.xml())
    a = db.command(lambda s: start_instance(s, key="pay", actor=ALICE, business_key="A"))
    other = db.command(lambda s: start_instance(s, key="pay", actor=ALICE, business_key="B"))
    with pytest.raises(Conflict, match="2 instances"):
        db.command(lambda s: correlate_message(s, name="order_paid", actor=ALICE, variables={"amount_paid": 5}))
    with pytest.raises(NotFound):
        db.command(lambda s: correlate_message(s, name="order_paid", actor=ALICE, business_key="Z"))
    hit = db.command(lambda s: correlate_message(s, name="order_paid", actor=ALICE, business_key="A",
                                                 variables={"amount_paid": 5}))
    assert hit == [a.id]
    assert instance(db, a.id).status == "completed" and instance(db, a.id).variables["shipped"] is True
    assert instance(db, other.id).status == "running"


def test_failing_script_rolls_back_and_names_element_and_line(db, clock):
    b = (Bpmn("boom").start().user("fill", props={"candidateGroups": "staff"}, writes="total, count")
         .script("calc", "a = 1\nb = total / count\n").end())
    b.chain("start", "fill", "calc", "end")
    deploy_xml(db, b.xml())
    row = db.command(lambda s: start_instance(s, key="boom", actor=ALICE))
    [task] = open_tasks(db, row.id)
    before = snapshot(db)
    with pytest.raises(ScriptError) as err:
        db.command(lambda s: complete_task(s, task_id=task.id, actor=ALICE, variables={"total": 1, "count": 0}))
    assert err.value.context["element_id"] == "calc" and err.value.context["line"] == 2
    assert "ZeroDivisionError" in str(err.value)
    assert snapshot(db) == before


def test_forbidden_script_is_refused_at_runtime_after_restore(db, clock):
    """A restored workflow keeps the sandbox (SpiffWorkflow would fall back to plain exec)."""
    b = (Bpmn("evil").start().user("fill", props={"candidateGroups": "staff"})
         .script("run", "import os\nos.system('touch /tmp/sopflow-pwned')").end())
    b.chain("start", "fill", "run", "end")
    deploy_xml(db, b.xml())
    row = db.command(lambda s: start_instance(s, key="evil", actor=ALICE))
    [task] = open_tasks(db, row.id)
    with pytest.raises(ScriptError, match="import of 'os' is not allowed") as err:
        db.command(lambda s: complete_task(s, task_id=task.id, actor=ALICE))
    assert err.value.context["element_id"] == "run" and err.value.context["line"] == 1
    assert instance(db, row.id).revision == 1


def test_endless_script_loop_fails_cleanly(db, clock):
    b = Bpmn("spin").start().script("inc", "n = n + 1").xor("again").end()
    b.chain("start", "inc", "again").flow("again", "inc", condition="True").flow("again", "end", condition="False")
    deploy_xml(db, b.xml())
    before = snapshot(db)
    budget = Settings(command_max_steps=2_000)
    with pytest.raises(ScriptError, match="endless loop"):
        db.command(lambda s: start_instance(s, key="spin", actor=ALICE, variables={"n": 0}, settings=budget))
    assert snapshot(db) == before


def test_gateway_loop_of_2000_iterations_runs_to_the_end(db, clock):
    deploy_xml(db, script_loop().xml())
    row = db.command(lambda s: start_instance(s, key="script_loop", actor=ALICE, variables={"target": 2000}))
    stored = instance(db, row.id)
    assert stored.status == "completed"
    assert stored.variables == {"target": 2000, "n": 2000, "finished": True}


def test_bad_variables_are_refused(db, clock):
    deploy_xml(db, approval_chain(1).xml())
    before = snapshot(db)
    for bad in ({"__class__": 1}, {"1abc": 2}, {"x": object()}, ["not", "a", "dict"]):
        with pytest.raises(InvalidInput):
            db.command(lambda s, v=bad: start_instance(s, key="approval", actor=ALICE, variables=v))
    with pytest.raises(NotFound):
        db.command(lambda s: start_instance(s, key="nope", actor=ALICE))
    assert snapshot(db) == before


def test_audit_chain_verifies_and_detects_tampering(db, clock):
    deploy_xml(db, approval_chain(2, writes="amount").xml())
    row = db.command(lambda s: start_instance(s, key="approval", actor=ALICE))
    [task] = open_tasks(db, row.id)
    db.command(lambda s: complete_task(s, task_id=task.id, actor=ALICE, variables={"amount": 100}))
    with db.read() as s:
        result = audit.verify(s)
    assert result.ok and result.events >= 6 and result.chains == 2
    with db.transaction() as s:  # an insider edits the submitted amount
        ev = s.scalars(select(AuditEventRow).where(AuditEventRow.action == "task.completed")).one()
        ev.payload = ev.payload.replace("100", "1")
        seq = ev.chain_seq
    with db.read() as s:
        broken = audit.verify(s)
    assert not broken.ok and broken.broken_chain == row.id and broken.broken_seq == seq
    assert "altered" in broken.reason


def test_audit_verify_detects_a_deleted_tail_event(db, clock):
    deploy_xml(db, approval_chain(1).xml())
    row = db.command(lambda s: start_instance(s, key="approval", actor=ALICE))
    with db.transaction() as s:
        last = s.scalars(select(AuditEventRow).where(AuditEventRow.chain == row.id)
                         .order_by(AuditEventRow.chain_seq.desc())).first()
        s.delete(last)
    with db.read() as s:
        result = audit.verify(s)
    assert not result.ok and result.broken_chain == row.id and "head" in result.reason


def test_user_loop_step_stays_correct_over_many_iterations(db, clock):
    deploy_xml(db, user_loop(writes="last").xml())
    row = db.command(lambda s: start_instance(s, key="loop", actor=ALICE, variables={"limit": 60}))
    for i in range(60):
        [task] = open_tasks(db, row.id)
        db.command(lambda s, t=task, n=i: complete_task(s, task_id=t.id, actor=ALICE, variables={"last": n}))
    stored = instance(db, row.id)
    assert stored.status == "completed" and stored.variables["count"] == 60 and stored.variables["last"] == 59
    assert len(stored.state) < 10_000  # history lives in tasks/audit, not in the workflow tree


def test_redeploying_an_unchanged_process_in_another_bundle_keeps_its_version(db, clock):
    from engine.loading import UploadedFile

    first = deploy_xml(db, approval_chain().xml(), "approval.bpmn")
    other = Bpmn("other").start().end().chain("start", "end").xml()
    both = deploy_xml(db, approval_chain().xml(), "approval.bpmn", UploadedFile("other.bpmn", other))
    assert both.created
    versions = {d["key"]: d["version"] for d in both.definitions}
    assert versions == {"approval": 1, "other": 1}
    assert [d["id"] for d in both.definitions if d["key"] == "approval"] == [first.definitions[0]["id"]]


def _assert_projections_match(db, instance_id):
    """The tasks/jobs rows equal what the stored workflow says is open and waiting."""
    from SpiffWorkflow.util.task import TaskState

    from engine import projections
    from engine.commands import unit

    with db.read() as s:
        loaded = unit.load(s, instance_id, running=False)
        ready = {str(t.id) for t in loaded.workflow.get_tasks(state=TaskState.READY, manual=True)}
        timers = {str(t.id) for t in projections.waiting_events(loaded.workflow) if projections._timer_due(t)}
    assert {t.id for t in open_tasks(db, instance_id)} == ready
    assert {j.task_id for j in jobs(db, instance_id)} == timers


def test_projections_match_the_workflow_after_every_command(db, clock):
    b = (Bpmn("proj").start().parallel("split").user("a", props={"candidateGroups": "staff"})
         .user("b", props={"candidateGroups": "staff"}).boundary_timer("t", "b", duration='"PT1H"')
         .parallel("join").end().end("timed_out"))
    b.chain("start", "split").flow("split", "a").flow("split", "b").flow("a", "join").flow("b", "join")
    b.chain("join", "end").flow("t", "timed_out")
    deploy_xml(db, b.xml())
    row = db.command(lambda s: start_instance(s, key="proj", actor=ALICE))
    _assert_projections_match(db, row.id)
    a = next(t for t in open_tasks(db, row.id) if t.element_id == "a")
    db.command(lambda s: claim_task(s, task_id=a.id, actor=ALICE))
    _assert_projections_match(db, row.id)
    db.command(lambda s: complete_task(s, task_id=a.id, actor=ALICE))
    _assert_projections_match(db, row.id)
    clock.advance(hours=2)
    run_once(db)
    _assert_projections_match(db, row.id)
    assert [t.element_id for t in open_tasks(db, row.id)] == []


def test_specs_are_stored_once_per_definition_not_per_instance(db, clock):
    deploy_xml(db, approval_chain(3).xml())
    row = db.command(lambda s: start_instance(s, key="approval", actor=ALICE))
    state = json.loads(instance(db, row.id).state)
    assert "spec" not in state and "subprocess_specs" not in state
    with db.read() as s:
        spec = s.scalar(select(DefinitionRow.spec).where(DefinitionRow.key == "approval"))
    assert '"u2"' in spec and len(instance(db, row.id).state) < len(spec)


def test_dates_and_decimals_from_scripts_survive_storage(db, clock):
    b = (Bpmn("typed").start().script("make", "import datetime\nfrom decimal import Decimal\n"
                                      "day = datetime.date(2026, 3, 1)\nprice = Decimal('19.90')\nat = now()")
         .user("check", props={"candidateGroups": "staff"}).script("use", "total = price * 2\nlater = day.month + 1")
         .end())
    b.chain("start", "make", "check", "use", "end")
    deploy_xml(db, b.xml())
    row = db.command(lambda s: start_instance(s, key="typed", actor=ALICE))
    [task] = open_tasks(db, row.id)
    db.command(lambda s: complete_task(s, task_id=task.id, actor=ALICE))
    stored = instance(db, row.id)
    assert stored.status == "completed"
    assert stored.variables["total"] == "39.80" and stored.variables["later"] == 4
    assert stored.variables["day"] == "2026-03-01" and stored.variables["at"] == clock.now().isoformat()


def _message_started(process_id: str = "orders") -> bytes:
    b = Bpmn(process_id)
    b.messages.add("order_placed")
    b.raw('<bpmn:startEvent id="start"><bpmn:messageEventDefinition messageRef="msg_order_placed"/>'
          "</bpmn:startEvent>")
    b.user("pack", "Pack the order", props={"candidateGroups": "staff"}).end().chain("start", "pack", "end")
    return b.xml()


def test_a_message_with_nobody_waiting_starts_its_process(db, clock):
    deploy_xml(db, _message_started())
    before = snapshot(db)
    with pytest.raises(Forbidden, match="needs the integration or admin role"):  # people use the start endpoint
        db.command(lambda s: correlate_message(s, name="order_placed", actor=ALICE, variables={"sku": "X1"}))
    assert snapshot(db) == before
    [iid] = db.command(lambda s: correlate_message(s, name="order_placed", actor=SHOP, business_key="O-1",
                                                   variables={"sku": "X1"}))
    stored = instance(db, iid)
    assert stored.business_key == "O-1" and stored.definition_key == "orders" and stored.started_by == "shop"
    assert stored.variables["sku"] == "X1"
    assert [t.element_id for t in open_tasks(db, iid)] == ["pack"]
    assert audit_actions(db, iid)[:2] == ["instance.started", "message.correlated"]
    deploy_xml(db, _message_started("returns"), "returns.bpmn")
    with pytest.raises(Conflict, match="2 processes start with message"):
        db.command(lambda s: correlate_message(s, name="order_placed", actor=SHOP))
    both = db.command(lambda s: correlate_message(s, name="order_placed", actor=SHOP, all_matches=True))
    assert sorted(instance(db, i).definition_key for i in both) == ["orders", "returns"]
    with pytest.raises(NotFound, match="no process starts with it"):
        db.command(lambda s: correlate_message(s, name="unknown", actor=ALICE))


def test_instance_ids_are_version_7_uuids_in_start_order(db, clock):
    import uuid

    deploy_xml(db, straight_scripts(1).xml())
    ids = []
    for _ in range(3):
        ids.append(db.command(lambda s: start_instance(s, key="straight", actor=ALICE)).id)
        clock.advance(milliseconds=2)
    same_instant = [db.command(lambda s: start_instance(s, key="straight", actor=ALICE)).id for _ in range(20)]
    assert all(uuid.UUID(i).version == 7 and uuid.UUID(i).variant == uuid.RFC_4122 for i in ids + same_instant)
    assert ids == sorted(ids) and ids[-1] < min(same_instant)
    assert len(set(same_instant)) == 20  # the random part keeps ids of one millisecond apart
