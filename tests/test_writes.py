"""What a task (or a start) may write: exactly its form's fields, or what the model allows."""
from __future__ import annotations

import pytest

from engine.commands import complete_task, start_instance
from engine.errors import InvalidInput
from tests.bpmnkit import Bpmn
from tests.helpers import ALICE, deploy_xml, instance, open_tasks, snapshot

LEAD = '<camunda:formField id="amount" type="long" label="Amount"><camunda:validation>' \
       '<camunda:constraint name="required"/></camunda:validation></camunda:formField>' \
       '<camunda:formField id="reason" type="string"/>'


def _one_task(db, dialect: str, **user) -> tuple[str, str]:
    b = Bpmn(f"w_{dialect}", dialect=dialect).start().user("approve", "Approve", **user).end()
    deploy_xml(db, b.chain("start", "approve", "end").xml())
    row = db.command(lambda s: start_instance(s, key=f"w_{dialect}", actor=ALICE, variables={"manager": "max"}))
    [task] = open_tasks(db, row.id)
    return row.id, task.id


def _complete(db, task_id: str, variables: dict):
    return db.command(lambda s: complete_task(s, task_id=task_id, actor=ALICE, variables=variables))


@pytest.mark.parametrize("dialect", ["spiff", "camunda"])
def test_a_task_without_a_form_accepts_no_variables_and_says_so(db, clock, dialect):
    instance_id, task_id = _one_task(db, dialect)
    before = snapshot(db)
    with pytest.raises(InvalidInput) as err:
        _complete(db, task_id, {"manager": "x", "role": "ceo"})
    assert "has no form, so it accepts no variables" in str(err.value) and "'manager', 'role'" in str(err.value)
    assert "writes" in str(err.value) and err.value.context["errors"].keys() == {"manager", "role"}
    assert snapshot(db) == before
    _complete(db, task_id, {})
    assert instance(db, instance_id).variables == {"manager": "max"}


@pytest.mark.parametrize("dialect", ["spiff", "camunda"])
def test_the_writes_property_allows_names_or_everything(db, clock, dialect):
    instance_id, task_id = _one_task(db, dialect, writes="approved, comment")
    with pytest.raises(InvalidInput, match="'manager'"):
        _complete(db, task_id, {"approved": True, "manager": "x"})
    _complete(db, task_id, {"approved": True, "comment": "fine"})
    assert instance(db, instance_id).variables == {"manager": "max", "approved": True, "comment": "fine"}


def test_writes_star_accepts_any_name(db, clock):
    instance_id, task_id = _one_task(db, "spiff", writes="*")
    _complete(db, task_id, {"anything": 1})
    assert instance(db, instance_id).variables["anything"] == 1


def test_writes_must_name_variables(db, clock):
    from engine.errors import InvalidDefinition

    b = Bpmn("bad").start().user("approve", writes="ok, not a name").end().chain("start", "approve", "end")
    with pytest.raises(InvalidDefinition, match="not a name"):
        deploy_xml(db, b.xml())


def test_a_task_with_a_form_accepts_exactly_its_fields(db, clock):
    instance_id, task_id = _one_task(db, "camunda", form_fields=LEAD)
    with pytest.raises(InvalidInput) as err:
        _complete(db, task_id, {"amount": 5, "manager": "x"})
    assert "the form has no field 'manager'" in str(err.value) and "amount, reason" in str(err.value)
    _complete(db, task_id, {"amount": "7", "reason": "ok"})
    assert instance(db, instance_id).variables == {"manager": "max", "amount": 7, "reason": "ok"}


def test_a_form_file_task_refuses_unknown_fields(db, clock):
    instance_id, task_id = _one_task(db, "spiff", props={"formKey": "complaint-acknowledgement"})
    with pytest.raises(InvalidInput, match="'role'"):
        _complete(db, task_id, {"channel": "email", "role": "ceo"})
    _complete(db, task_id, {"channel": "email"})
    assert instance(db, instance_id).variables == {"manager": "max", "channel": "email"}


def _start_form_process(attrs: str = "", inner: str = "") -> bytes:
    b = Bpmn("hire", dialect="camunda")
    b.raw(f'<bpmn:startEvent id="start"{attrs}>{inner}</bpmn:startEvent>').user("review", "Review").end()
    return b.chain("start", "review", "end").xml()


def test_start_variables_follow_the_start_form(api):
    xml = _start_form_process(inner=f"<bpmn:extensionElements><camunda:formData>{LEAD}</camunda:formData>"
                                    "</bpmn:extensionElements>")
    deployed = api.deploy("dora", ("hire.bpmn", xml))
    assert deployed.status_code == 201, deployed.text
    form = api.get("rita", "/api/process-definitions/hire/start-form").json()
    assert form["accepts"] == "form" and form["element_id"] == "start"
    assert set(form["form"]["schema"]["properties"]) == {"amount", "reason"}
    assert form["form"]["schema"]["required"] == ["amount"]
    unknown = api.start("rita", "hire", variables={"amount": 3, "role": "ceo"})
    assert unknown.status_code == 422 and unknown.json()["errors"] == {"role": "is not a field of this form"}
    missing = api.start("rita", "hire", variables={"reason": "x"})
    assert missing.status_code == 422 and "amount" in missing.json()["errors"]
    ok = api.start("rita", "hire", variables={"amount": "3"})
    assert ok.status_code == 201, ok.text
    assert ok.json()["variables"] == {"amount": 3}


def test_a_start_without_a_form_takes_any_variables(api):
    assert api.deploy("dora", ("hire.bpmn", _start_form_process())).status_code == 201
    form = api.get("rita", "/api/process-definitions/hire/start-form").json()
    assert form["accepts"] == "any" and form["form"] is None
    assert api.start("rita", "hire", variables={"whatever": 1}).status_code == 201
    assert api.get("rita", "/api/process-definitions/nope/start-form").status_code == 404


def test_a_start_form_key_names_a_form_file(api):
    xml = _start_form_process(' camunda:formKey="complaint-acknowledgement"')
    assert api.deploy("dora", ("hire.bpmn", xml)).status_code == 201
    form = api.get("rita", "/api/process-definitions/hire/start-form").json()
    assert form["form_key"] == "complaint-acknowledgement" and form["form"]["title"] == "Acknowledge the customer"
    assert api.start("rita", "hire", variables={"channel": "fax"}).status_code == 422
    assert api.start("rita", "hire", variables={"channel": "email"}).status_code == 201


def test_the_api_names_the_fields_a_task_refuses(api):
    b = Bpmn("plain").start().user("approve", "Approve", props={"candidateGroups": "staff"}).end()
    assert api.deploy("dora", ("plain.bpmn", b.chain("start", "approve", "end").xml())).status_code == 201
    started = api.start("rita", "plain", variables={"item": "Laptop", "amount": 950}).json()
    [task] = api.inbox("max")
    detail = api.get("max", f"/api/tasks/{task['id']}").json()
    assert detail["data"] == {"item": "Laptop", "amount": 950}  # the approver sees what they approve
    r = api.post("max", f"/api/tasks/{task['id']}/complete", json={"variables": {"manager": "x"}})
    assert r.status_code == 422 and r.json()["errors"] == {"manager": "this step accepts no such variable"}
    assert "accepts no variables" in r.json()["detail"]
    assert api.get("rita", f"/api/process-instances/{started['id']}").json()["variables"] == {
        "item": "Laptop", "amount": 950}
