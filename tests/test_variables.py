"""Process variables behave as in Camunda: one set per instance, no join ever reverts a write.

Each join kind runs in both completion orders: a branch that changes ``amount`` and a
branch that changes nothing, then a step after the join that reads ``amount``. SpiffWorkflow
alone answers 100 or 120 depending on which branch finished last; sopflow answers 120.
"""
from __future__ import annotations

import json

import pytest
from sqlalchemy import select

from engine.commands import complete_task, start_instance
from engine.queries import InstanceFilter, Paging, list_instances, task_detail
from engine.store.models import AuditEventRow
from engine.worker import run_once
from tests.bpmnkit import Bpmn
from tests.helpers import ALICE, BOB, deploy_xml, instance, open_tasks

ADMIN = ALICE.__class__("root", roles=frozenset({"admin"}))


def _complete(db, task_id: str, variables: dict | None = None, actor=BOB):
    return db.command(lambda s: complete_task(s, task_id=task_id, actor=actor, variables=variables or {}))


def _by_element(db, instance_id: str) -> dict[str, str]:
    return {t.element_id: t.id for t in open_tasks(db, instance_id)}


def _fork(kind: str) -> Bpmn:
    """start -> fork -> {a: may set amount, b: touches nothing} -> join -> read -> check (user) -> end."""
    b = Bpmn(f"fork_{kind}").start()
    if kind == "parallel":
        b.parallel("fork").parallel("join")
    else:
        b.inclusive("fork").inclusive("join")
    b.user("a", "A", writes="amount, note").user("b", "B", writes="note")
    b.script("read", "seen = amount").user("check", "Check").end()
    b.chain("start", "fork")
    cond = "True" if kind == "inclusive" else None
    b.flow("fork", "a", condition=cond).flow("fork", "b", condition=cond)
    return b.chain("a", "join").chain("b", "join").chain("join", "read", "check", "end")


@pytest.mark.parametrize("kind", ["parallel", "inclusive"])
@pytest.mark.parametrize("order", [("a", "b"), ("b", "a")])
def test_a_join_never_reverts_a_branch_write(db, clock, kind, order):
    deploy_xml(db, _fork(kind).xml())
    row = db.command(lambda s: start_instance(s, key=f"fork_{kind}", actor=ALICE, variables={"amount": 100}))
    tasks = _by_element(db, row.id)
    assert set(tasks) == {"a", "b"}
    for element in order:
        _complete(db, tasks[element], {"amount": 120} if element == "a" else {})
    stored = instance(db, row.id)
    assert stored.variables["amount"] == 120 and stored.variables["seen"] == 120
    [check] = open_tasks(db, row.id)
    with db.read() as s:
        assert task_detail(s, ADMIN, check.id)["data"]["amount"] == 120
        # the instance filter reads the same process variables
        found = list_instances(s, ADMIN, InstanceFilter(variables={"amount": 120}), Paging())
    assert [i.id for i in found.items] == [row.id]


@pytest.mark.parametrize("kind", ["parallel", "inclusive"])
@pytest.mark.parametrize("order", [("a", "b"), ("b", "a")])
def test_the_later_write_in_commit_order_wins_and_the_trail_says_so(db, clock, kind, order):
    deploy_xml(db, _fork(kind).xml())
    row = db.command(lambda s: start_instance(s, key=f"fork_{kind}", actor=ALICE, variables={"amount": 100}))
    tasks = _by_element(db, row.id)
    for element in order:
        _complete(db, tasks[element], {"note": f"from {element}"})
    assert instance(db, row.id).variables["note"] == f"from {order[1]}"
    with db.read() as s:
        completed = [json.loads(p) for p in s.scalars(
            select(AuditEventRow.payload).where(AuditEventRow.chain == row.id,
                                                AuditEventRow.action == "task.completed")
            .order_by(AuditEventRow.chain_seq))]
    assert completed[0]["changed"] == {"note": {"from": None, "to": f"from {order[0]}"}}
    assert completed[1]["changed"] == {"note": {"from": f"from {order[0]}", "to": f"from {order[1]}"}}


def _timer_branch() -> Bpmn:
    """work (user) with a non-interrupting PT1H timer -> counter += 1 -> follow up (user) -> end;
    the main path: work -> total = counter * 10 -> end. Both ends meet in the implicit end join."""
    b = (Bpmn("nudge").start().user("work", "Work")
         .boundary_timer("remind", "work", duration='"PT1H"', interrupting=False)
         .script("bump", "counter = counter + 1").user("follow", "Follow up").end("remind_end")
         .script("total", "total = counter * 10").end())
    return b.chain("start", "work", "total", "end").chain("remind", "bump", "follow", "remind_end")


@pytest.mark.parametrize("main_ends_first", [True, False])
def test_a_timer_branch_counter_survives_the_end_of_the_main_path(db, clock, main_ends_first):
    deploy_xml(db, _timer_branch().xml())
    row = db.command(lambda s: start_instance(s, key="nudge", actor=ALICE, variables={"counter": 0}))
    clock.advance(hours=1, seconds=1)
    assert run_once(db).fired == 1
    assert instance(db, row.id).variables["counter"] == 1
    tasks = _by_element(db, row.id)
    for element in (["work", "follow"] if main_ends_first else ["follow", "work"]):
        _complete(db, tasks[element])
    stored = instance(db, row.id)
    assert stored.status == "completed"
    assert stored.variables["counter"] == 1 and stored.variables["total"] == 10


REGIONS = ["North", "Harbour", "Depot"]


def _multi_instance(sequential: bool, dialect: str = "spiff") -> Bpmn:
    if dialect == "spiff":
        loop = ('<bpmn:multiInstanceLoopCharacteristics isSequential="{}"><bpmn:loopDataInputRef>regions'
                '</bpmn:loopDataInputRef><bpmn:inputDataItem id="region" name="region"/>'
                "</bpmn:multiInstanceLoopCharacteristics>").format("true" if sequential else "false")
    else:
        loop = ('<bpmn:multiInstanceLoopCharacteristics isSequential="{}" camunda:collection="regions" '
                'camunda:elementVariable="region"/>').format("true" if sequential else "false")
    b = Bpmn(f"report_{dialect}", dialect=dialect).start()
    b.user("report", "Report", documentation="Inspect the {{ region }} site (#{{ loopCounter }}).",
           writes="amount, note")
    b.nodes[-1] = b.nodes[-1].replace("</bpmn:userTask>", loop + "</bpmn:userTask>")
    b.script("after", "seen = amount").user("check", "Check").end()
    return b.chain("start", "report", "after", "check", "end")


@pytest.mark.parametrize("dialect", ["spiff", "camunda"])
@pytest.mark.parametrize("order", [(0, 1, 2), (2, 1, 0)])
def test_parallel_multi_instance_tasks_show_their_own_item_and_keep_every_write(db, clock, order, dialect):
    deploy_xml(db, _multi_instance(False, dialect).xml())
    row = db.command(lambda s: start_instance(s, key=f"report_{dialect}", actor=ALICE,
                                              variables={"regions": REGIONS, "amount": 100}))
    tasks = open_tasks(db, row.id)
    assert len(tasks) == 3
    shown = {}
    with db.read() as s:
        for t in tasks:
            detail = task_detail(s, ADMIN, t.id)
            region = detail["data"]["region"]
            assert t.local_variables == {"region": region, "loopCounter": REGIONS.index(region)}
            assert detail["sop"] == f"Inspect the {region} site (#{REGIONS.index(region)})."
            assert detail["data"]["amount"] == 100 and detail["data"]["regions"] == REGIONS
            shown[REGIONS.index(region)] = t.id
    assert sorted(shown) == [0, 1, 2], "every item is shown to someone"
    # only Harbour's report changes the amount; the others touch nothing
    for index in order:
        _complete(db, shown[index], {"amount": 120} if REGIONS[index] == "Harbour" else {})
    stored = instance(db, row.id)
    assert stored.variables["amount"] == 120 and stored.variables["seen"] == 120
    assert "region" not in stored.variables and "loopCounter" not in stored.variables
    assert stored.variables["regions"] == REGIONS


@pytest.mark.parametrize("dialect", ["spiff", "camunda"])
def test_sequential_multi_instance_sees_each_earlier_write(db, clock, dialect):
    deploy_xml(db, _multi_instance(True, dialect).xml())
    row = db.command(lambda s: start_instance(s, key=f"report_{dialect}", actor=ALICE,
                                              variables={"regions": REGIONS, "amount": 100}))
    for n, region in enumerate(REGIONS):
        [task] = open_tasks(db, row.id)
        assert task.local_variables == {"region": region, "loopCounter": n}
        with db.read() as s:
            assert task_detail(s, ADMIN, task.id)["data"]["amount"] == 100 + n
        _complete(db, task.id, {"amount": 100 + n + 1} if region != "Depot" else {})
    stored = instance(db, row.id)
    assert stored.variables["amount"] == 102 and stored.variables["seen"] == 102
    assert "region" not in stored.variables


def test_an_approver_without_a_form_sees_the_process_variables(db, clock):
    b = (Bpmn("approve").start().script("prep", "item = 'Laptop'").user("approve", "Approve").end()
         .chain("start", "prep", "approve", "end"))
    deploy_xml(db, b.xml())
    row = db.command(lambda s: start_instance(s, key="approve", actor=ALICE, variables={"amount": 950}))
    [task] = open_tasks(db, row.id)
    with db.read() as s:
        detail = task_detail(s, ADMIN, task.id)
    assert detail["form"] is None and detail["data"] == {"amount": 950, "item": "Laptop"}


def test_a_script_after_a_user_task_reads_what_it_submitted_and_the_next_task_reads_the_script(db, clock):
    b = (Bpmn("calc").start().user("enter", "Enter", writes="net").script("vat", "gross = net * 1.2")
         .script("make", "regions = ['a', 'b']").user("show", "Show").end()
         .chain("start", "enter", "vat", "make", "show", "end"))
    deploy_xml(db, b.xml())
    row = db.command(lambda s: start_instance(s, key="calc", actor=ALICE))
    [task] = open_tasks(db, row.id)
    _complete(db, task.id, {"net": 100})
    [show] = open_tasks(db, row.id)
    with db.read() as s:
        assert task_detail(s, ADMIN, show.id)["data"] == {"net": 100, "gross": 120.0, "regions": ["a", "b"]}


def test_camunda_input_output_parameters_are_local_and_outputs_reach_the_process(db, clock):
    io = ('<bpmn:extensionElements><camunda:inputOutput>'
          '<camunda:inputParameter name="doubled">${amount * 2}</camunda:inputParameter>'
          '<camunda:inputParameter name="label">fixed text</camunda:inputParameter>'
          '<camunda:outputParameter name="result">${doubled + 1}</camunda:outputParameter>'
          '</camunda:inputOutput></bpmn:extensionElements>')
    b = Bpmn("io", dialect="camunda").start()
    b.raw(f'<bpmn:scriptTask id="calc" scriptFormat="python">{io}<bpmn:script>inner = doubled + 10</bpmn:script>'
          "</bpmn:scriptTask>")
    b.user("look", "Look", extra=io.removeprefix("<bpmn:extensionElements>").removesuffix("</bpmn:extensionElements>"))
    b.end().chain("start", "calc", "look", "end")
    deploy_xml(db, b.xml())
    row = db.command(lambda s: start_instance(s, key="io", actor=ALICE, variables={"amount": 5}))
    stored = instance(db, row.id)
    assert stored.variables == {"amount": 5, "inner": 20, "result": 11}
    [task] = open_tasks(db, row.id)
    assert task.local_variables == {"doubled": 10, "label": "fixed text"}
    with db.read() as s:
        assert task_detail(s, ADMIN, task.id)["data"]["doubled"] == 10
    _complete(db, task.id)
    assert instance(db, row.id).variables == {"amount": 5, "inner": 20, "result": 11}


def test_multi_instance_output_collection_reaches_the_process(db, clock):
    loop = ('<bpmn:multiInstanceLoopCharacteristics><bpmn:loopDataInputRef>regions</bpmn:loopDataInputRef>'
            '<bpmn:loopDataOutputRef>scores</bpmn:loopDataOutputRef>'
            '<bpmn:inputDataItem id="region" name="region"/><bpmn:outputDataItem id="score" name="score"/>'
            "</bpmn:multiInstanceLoopCharacteristics>")
    b = Bpmn("scores").start().user("rate", "Rate", writes="score")
    b.nodes[-1] = b.nodes[-1].replace("</bpmn:userTask>", loop + "</bpmn:userTask>")
    b.end().chain("start", "rate", "end")
    deploy_xml(db, b.xml())
    row = db.command(lambda s: start_instance(s, key="scores", actor=ALICE, variables={"regions": REGIONS}))
    for task in sorted(open_tasks(db, row.id), key=lambda t: t.local_variables["loopCounter"], reverse=True):
        _complete(db, task.id, {"score": len(task.local_variables["region"])})
    stored = instance(db, row.id)
    assert stored.status == "completed"
    assert stored.variables == {"regions": REGIONS, "scores": [5, 7, 5]}


def test_the_inbox_row_and_detail_show_each_instance_its_own_item(api):
    b = _multi_instance(False)
    assert api.deploy("dora", ("report.bpmn", b.xml())).status_code == 201
    assert api.start("rita", "report_spiff", variables={"regions": REGIONS, "amount": 100}).status_code == 201
    rows = api.inbox("max")
    assert sorted(r["local_variables"]["region"] for r in rows) == sorted(REGIONS)
    for r in rows:
        detail = api.get("max", f"/api/tasks/{r['id']}").json()
        region = r["local_variables"]["region"]
        assert detail["data"]["region"] == region and region in detail["sop"]
