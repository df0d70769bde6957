"""The four shipped procedures, run the way the SOPs read."""
from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from engine.commands import Actor, claim_task, complete_task, deploy, start_instance
from engine.errors import Forbidden, InvalidInput
from engine.loading import UploadedFile
from engine.worker import run_once
from tests.helpers import DESIGNER, instance, jobs, open_tasks

PROCESSES = Path(__file__).resolve().parent.parent / "processes"

REQUESTER = Actor("rita", groups=frozenset({"staff"}))
MANAGER = Actor("max", groups=frozenset({"managers"}))
FINANCE = Actor("fiona", groups=frozenset({"finance"}))
BUYER = Actor("paul", groups=frozenset({"procurement"}))
AGENT = Actor("sam", groups=frozenset({"support"}))
LEAD = Actor("lena", groups=frozenset({"support-leads"}))
CONTROLLER = Actor("carl", groups=frozenset({"controllers"}))
DIRECTOR = Actor("mia", groups=frozenset({"management"}))
CEO = Actor("eve", groups=frozenset({"executives"}))


@pytest.fixture
def shipped(db):
    dmn = [UploadedFile(p.name, p.read_bytes()) for p in PROCESSES.glob("*.dmn")]
    for path in sorted(PROCESSES.glob("*.bpmn")):
        db.command(lambda s, p=path: deploy(s, files=[UploadedFile(p.name, p.read_bytes()), *dmn], actor=DESIGNER))
    return db


def _only(db, instance_id, element_id):
    tasks = [t for t in open_tasks(db, instance_id) if t.element_id == element_id]
    assert len(tasks) == 1, [t.element_id for t in open_tasks(db, instance_id)]
    return tasks[0]


def _do(db, instance_id, element_id, actor, **variables):
    task = _only(db, instance_id, element_id)
    db.command(lambda s: claim_task(s, task_id=task.id, actor=actor))
    db.command(lambda s: complete_task(s, task_id=task.id, actor=actor, variables=variables))
    return task


def test_large_purchase_climbs_to_finance_and_gets_ordered(shipped, clock):
    db = shipped
    row = db.command(lambda s: start_instance(s, key="procurement_approval", actor=REQUESTER))
    submit = _only(db, row.id, "submit_request")
    assert submit.assignee == "rita" and submit.due_at == clock.now() + timedelta(days=1)
    with pytest.raises(InvalidInput, match="amount is required"):
        db.command(lambda s: complete_task(s, task_id=submit.id, actor=REQUESTER, variables={"item": "Server"}))
    db.command(lambda s: complete_task(s, task_id=submit.id, actor=REQUESTER,
                                       variables={"item": "Server", "amount": "25000"}))
    approval = _only(db, row.id, "manager_approval")
    assert approval.candidate_groups == ["managers"]
    with pytest.raises(Forbidden):
        db.command(lambda s: claim_task(s, task_id=approval.id, actor=FINANCE))
    _do(db, row.id, "manager_approval", MANAGER, manager_approved=True)
    _do(db, row.id, "finance_approval", FINANCE, finance_approved=True)
    _do(db, row.id, "place_order", BUYER, po_number="PO-7")
    done = instance(db, row.id)
    assert done.status == "completed"
    assert done.variables["status"] == "ordered" and done.variables["amount"] == 25000


def test_small_purchase_skips_finance_and_rejection_is_recorded(shipped, clock):
    db = shipped
    row = db.command(lambda s: start_instance(s, key="procurement_approval", actor=REQUESTER))
    _do(db, row.id, "submit_request", REQUESTER, item="Chair", amount=300)
    _do(db, row.id, "manager_approval", MANAGER, manager_approved=False, manager_comment="use the old one")
    assert instance(db, row.id).variables["status"] == "rejected"


def test_complaint_acknowledged_and_answered_in_time(shipped, clock):
    db = shipped
    row = db.command(lambda s: start_instance(s, key="complaint_handling", actor=AGENT,
                                              variables={"customer": "ACME"}))
    ack = _only(db, row.id, "acknowledge")
    assert ack.due_at == clock.now() + timedelta(hours=24) and ack.priority == 80
    assert [j.element_id for j in jobs(db, row.id) if j.kind == "timer"] == ["acknowledge_reminder",
                                                                             "acknowledge_deadline"]
    clock.advance(hours=3)
    _do(db, row.id, "acknowledge", AGENT)
    answer = _only(db, row.id, "answer")
    assert answer.due_at == instance(db, row.id).started_at + timedelta(hours=48)
    assert [j.element_id for j in jobs(db, row.id) if j.kind == "timer"] == ["answer_deadline"]
    _do(db, row.id, "answer", AGENT, outcome="refund")
    done = instance(db, row.id)
    assert done.status == "completed" and done.variables["status"] == "closed"
    assert "acknowledge_breached" not in done.variables and "answer_breached" not in done.variables


def test_complaint_reminder_breach_and_escalation(shipped, clock):
    db = shipped
    row = db.command(lambda s: start_instance(s, key="complaint_handling", actor=AGENT))
    clock.advance(hours=20, seconds=1)
    assert run_once(db).fired == 1
    assert instance(db, row.id).variables.get("acknowledge_at_risk") is True
    clock.advance(hours=4)
    assert run_once(db).fired == 1
    escalation = _only(db, row.id, "escalate_acknowledgement")
    assert escalation.candidate_groups == ["support-leads"]
    assert _only(db, row.id, "acknowledge").state == "open"  # support keeps the task
    _do(db, row.id, "escalate_acknowledgement", LEAD)
    _do(db, row.id, "acknowledge", AGENT)
    clock.advance(hours=24)
    assert run_once(db).fired == 1
    assert instance(db, row.id).variables.get("answer_breached") is True
    _do(db, row.id, "escalate_answer", LEAD)
    _do(db, row.id, "answer", AGENT, outcome="explanation")
    done = instance(db, row.id)
    assert done.status == "completed" and done.variables["acknowledge_breached"] is True


def test_budget_goes_back_for_revision_then_is_signed_off(shipped, clock):
    db = shipped
    row = db.command(lambda s: start_instance(s, key="budget_review", actor=CONTROLLER, business_key="FY2027"))
    draft = _only(db, row.id, "draft_budget")
    assert draft.candidate_groups == ["controllers"] and draft.lane == "controllers"
    _do(db, row.id, "draft_budget", CONTROLLER, total=1_200_000)
    _do(db, row.id, "review_budget", DIRECTOR, decision="revise", comments="cut travel")
    _do(db, row.id, "draft_budget", CONTROLLER, total=1_100_000)
    _do(db, row.id, "review_budget", DIRECTOR, decision="approve")
    sign = _only(db, row.id, "sign_off")
    assert sign.candidate_groups == ["executives"]
    _do(db, row.id, "sign_off", CEO)
    done = instance(db, row.id)
    assert done.status == "completed" and done.variables["status"] == "approved"
    assert done.variables["total"] == 1_100_000


def test_onboarding_decides_equipment_and_joins_three_teams(shipped, clock):
    db = shipped
    row = db.command(lambda s: start_instance(s, key="employee_onboarding", actor=Actor("hal", groups=frozenset({"hr"})),
                                              variables={"employee_name": "Ada", "role": "sales", "manager": "max",
                                                         "start_date": "2026-02-02T09:00:00+00:00"}))
    assert instance(db, row.id).variables["laptop"] == "light laptop"
    assert sorted(t.element_id for t in open_tasks(db, row.id)) == ["issue_badge", "prepare_workstation",
                                                                    "sign_contract"]
    _do(db, row.id, "prepare_workstation", Actor("ian", groups=frozenset({"it"})))
    _do(db, row.id, "issue_badge", Actor("fay", groups=frozenset({"facilities"})))
    assert [t.element_id for t in open_tasks(db, row.id)] == ["sign_contract"]
    _do(db, row.id, "sign_contract", Actor("hal", groups=frozenset({"hr"})))
    welcome = _only(db, row.id, "welcome_meeting")
    assert welcome.assignee == "max"
    db.command(lambda s: complete_task(s, task_id=welcome.id, actor=MANAGER))
    assert instance(db, row.id).status == "completed"


def test_onboarding_default_rule(shipped, clock):
    db = shipped
    row = db.command(lambda s: start_instance(s, key="employee_onboarding", actor=Actor("hal"), variables={
        "employee_name": "Bo", "role": "accountant", "manager": "max", "start_date": "2026-02-02"}))
    assert instance(db, row.id).variables["laptop"] == "standard laptop"


@pytest.mark.parametrize("path", sorted(PROCESSES.glob("*.bpmn")), ids=lambda p: p.name)
def test_shipped_diagrams_carry_a_layout_for_every_element(path):
    """Designers open these in a modeler: every node needs a shape and every flow an edge."""
    from lxml import etree

    ns = {"bpmn": "http://www.omg.org/spec/BPMN/20100524/MODEL",
          "bpmndi": "http://www.omg.org/spec/BPMN/20100524/DI"}
    root = etree.parse(str(path)).getroot()
    nodes = set(root.xpath("//bpmn:process/*[not(self::bpmn:laneSet or self::bpmn:sequenceFlow)]/@id", namespaces=ns))
    flows = set(root.xpath("//bpmn:sequenceFlow/@id", namespaces=ns))
    shapes = set(root.xpath("//bpmndi:BPMNShape/@bpmnElement", namespaces=ns))
    edges = set(root.xpath("//bpmndi:BPMNEdge/@bpmnElement", namespaces=ns))
    assert nodes <= shapes and flows <= edges
