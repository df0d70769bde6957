"""Local scopes: embedded sub-processes, call activities (camunda:in/out, SpiffWorkflow data inputs/outputs)."""
from __future__ import annotations

import pytest

from engine.commands import complete_task, start_instance
from engine.errors import InvalidDefinition, ScriptError
from engine.loading import UploadedFile
from tests.bpmnkit import Bpmn
from tests.helpers import ALICE, BOB, deploy_xml, instance, open_tasks


def _complete(db, task_id: str, variables: dict | None = None):
    return db.command(lambda s: complete_task(s, task_id=task_id, actor=BOB, variables=variables or {}))


def _subprocess(join_inside: bool) -> bytes:
    """A sub-process with a local ``budget`` (camunda:inputOutput); inside, two parallel user tasks."""
    io = ('<bpmn:extensionElements><camunda:inputOutput>'
          '<camunda:inputParameter name="budget">${limit}</camunda:inputParameter>'
          "</camunda:inputOutput></bpmn:extensionElements>")
    flows = [("ss", "fork"), ("fork", "x"), ("fork", "y"), ("x", "join"), ("y", "join"), ("join", "spend"),
             ("spend", "se")] if join_inside else [("ss", "spend"), ("spend", "se")]
    inner = ('<bpmn:startEvent id="ss"/><bpmn:parallelGateway id="fork"/><bpmn:parallelGateway id="join"/>'
             '<bpmn:userTask id="x"><bpmn:extensionElements><camunda:properties>'
             '<camunda:property name="writes" value="amount"/></camunda:properties></bpmn:extensionElements>'
             '</bpmn:userTask><bpmn:userTask id="y"/>' if join_inside else '<bpmn:startEvent id="ss"/>')
    inner += ('<bpmn:scriptTask id="spend" scriptFormat="python"><bpmn:script>budget = budget - amount\n'
              "spent = amount\nleft = budget</bpmn:script></bpmn:scriptTask><bpmn:endEvent id=\"se\"/>")
    inner += "".join(f'<bpmn:sequenceFlow id="sf{i}" sourceRef="{a}" targetRef="{b}"/>'
                     for i, (a, b) in enumerate(flows))
    b = Bpmn("budget", dialect="camunda").start().raw(f'<bpmn:subProcess id="sub">{io}{inner}</bpmn:subProcess>')
    b.script("after", "after_left = left").end()
    return b.chain("start", "sub", "after", "end").xml()


@pytest.mark.parametrize("order", [("x", "y"), ("y", "x")])
def test_an_embedded_subprocess_keeps_its_locals_and_shares_the_rest(db, clock, order):
    deploy_xml(db, _subprocess(join_inside=True))
    row = db.command(lambda s: start_instance(s, key="budget", actor=ALICE, variables={"limit": 100, "amount": 1}))
    tasks = {t.element_id: t for t in open_tasks(db, row.id)}
    assert tasks["x"].local_variables == {"budget": 100}  # the sub-process's local, which x reads
    for element in order:
        _complete(db, tasks[element].id, {"amount": 30} if element == "x" else {})
    stored = instance(db, row.id)
    assert stored.status == "completed"
    # budget stayed in the sub-process; what it wrote elsewhere is the process's
    assert stored.variables == {"limit": 100, "amount": 30, "spent": 30, "left": 70, "after_left": 70}


def _called(child_body: str, child_id: str = "child", dialect: str = "camunda") -> bytes:
    child = Bpmn(child_id, dialect=dialect).start()
    child.raw(child_body).end()
    return child.chain("start", "work", "end").xml()


def _caller(mappings: str, dialect: str = "camunda") -> bytes:
    ext = f"<bpmn:extensionElements>{mappings}</bpmn:extensionElements>" if mappings else ""
    b = Bpmn("caller", dialect=dialect).start().raw(f'<bpmn:callActivity id="call" calledElement="child">{ext}'
                                                    "</bpmn:callActivity>")
    b.script("after", "done = True").end()
    return b.chain("start", "call", "after", "end").xml()


CHILD_SCRIPT = ('<bpmn:scriptTask id="work" scriptFormat="python"><bpmn:script>result = value * 2\njunk = 1'
                "</bpmn:script></bpmn:scriptTask>")


def _deploy_pair(db, caller: bytes, child: bytes) -> None:
    deploy_xml(db, caller, "caller.bpmn", UploadedFile("child.bpmn", child))


def test_a_call_activity_passes_only_what_camunda_in_and_out_name(db, clock):
    _deploy_pair(db, _caller('<camunda:in source="amount" target="value"/>'
                             '<camunda:in sourceExpression="${amount + 1}" target="extra"/>'
                             '<camunda:out source="result" target="outcome"/>'), _called(CHILD_SCRIPT))
    row = db.command(lambda s: start_instance(s, key="caller", actor=ALICE, variables={"amount": 21, "secret": 1}))
    stored = instance(db, row.id)
    assert stored.status == "completed"
    assert stored.variables == {"amount": 21, "secret": 1, "outcome": 42, "done": True}


def test_a_call_activity_with_variables_all_both_ways(db, clock):
    _deploy_pair(db, _caller('<camunda:in variables="all"/><camunda:out variables="all"/>'),
                 _called(CHILD_SCRIPT))
    row = db.command(lambda s: start_instance(s, key="caller", actor=ALICE, variables={"value": 5}))
    assert instance(db, row.id).variables == {"value": 5, "result": 10, "junk": 1, "done": True}


def test_a_camunda_call_activity_without_mappings_passes_nothing(db, clock):
    _deploy_pair(db, _caller(""), _called(CHILD_SCRIPT))
    with pytest.raises(ScriptError, match="value"):
        db.command(lambda s: start_instance(s, key="caller", actor=ALICE, variables={"value": 5}))


def test_call_activity_mappings_are_checked_at_deploy(db, clock):
    with pytest.raises(InvalidDefinition, match="call activity 'call'"):
        _deploy_pair(db, _caller('<camunda:in source="amount"/>'), _called(CHILD_SCRIPT))


def test_a_user_task_in_a_called_process_reads_the_called_process_variables(db, clock):
    child = ('<bpmn:userTask id="work" name="Work"><bpmn:extensionElements><camunda:properties>'
             '<camunda:property name="writes" value="result"/></camunda:properties></bpmn:extensionElements>'
             "</bpmn:userTask>")
    _deploy_pair(db, _caller('<camunda:in source="amount" target="value"/><camunda:out source="result" '
                             'target="outcome"/>'), _called(child))
    row = db.command(lambda s: start_instance(s, key="caller", actor=ALICE, variables={"amount": 3}))
    [task] = open_tasks(db, row.id)
    from engine.queries import task_detail

    assert task.local_variables == {"value": 3}  # the called process's own variables
    with db.read() as s:
        assert task_detail(s, ALICE.__class__("root", roles=frozenset({"admin"})), task.id)["data"]["value"] == 3
    _complete(db, task.id, {"result": "ok"})
    assert instance(db, row.id).variables == {"amount": 3, "outcome": "ok", "done": True}


def test_spiff_call_activity_follows_the_called_process_data_inputs_and_outputs(db, clock):
    io = ('<bpmn:ioSpecification><bpmn:dataInput id="value" name="value"/>'
          '<bpmn:dataOutput id="result" name="result"/>'
          "<bpmn:inputSet><bpmn:dataInputRefs>value</bpmn:dataInputRefs></bpmn:inputSet>"
          "<bpmn:outputSet><bpmn:dataOutputRefs>result</bpmn:dataOutputRefs></bpmn:outputSet>"
          "</bpmn:ioSpecification>")
    child = Bpmn("child").raw(io).start().raw(CHILD_SCRIPT).end()
    child.chain("start", "work", "end")
    _deploy_pair(db, _caller("", dialect="spiff"), child.xml())
    row = db.command(lambda s: start_instance(s, key="caller", actor=ALICE, variables={"value": 4, "other": 1}))
    assert instance(db, row.id).variables == {"value": 4, "other": 1, "result": 8, "done": True}
