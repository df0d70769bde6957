"""Deploy-time reading of BPMN: both metadata dialects, lanes, SOP text, refusals with element and line."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from engine.commands import complete_task, start_instance
from engine.config import Settings
from engine.errors import InvalidDefinition, InvalidInput, ScriptError
from engine.loading import UploadedFile, parse_bundle
from tests.bpmnkit import Bpmn
from tests.helpers import ALICE, BOB, deploy_xml, open_tasks

SETTINGS = Settings()

FORM = ('<camunda:formField id="amount" label="Amount" type="long"><camunda:validation>'
        '<camunda:constraint name="required"/></camunda:validation></camunda:formField>'
        '<camunda:formField id="approved" label="Approved" type="boolean"/>')


def _camunda() -> Bpmn:
    b = Bpmn("purchase", dialect="camunda").start()
    b.user("review", "Review request", documentation="Check the **budget** line.",
           camunda={"assignee": "${initiator}", "candidateGroups": "managers, finance", "candidateUsers": "carol",
                    "formKey": "purchase-review", "dueDate": "P2D", "followUpDate": "PT4H", "priority": "80"},
           form_fields=FORM)
    return b.end().chain("start", "review", "end")


def test_camunda_user_task_attributes_survive_parsing():
    [process] = parse_bundle([UploadedFile("p.bpmn", _camunda().xml())], SETTINGS).processes
    meta = process.user_tasks["purchase/review"]
    assert meta.assignee == "${initiator}"
    assert meta.candidate_groups == ["managers", "finance"] and meta.candidate_users == ["carol"]
    assert (meta.form_key, meta.due_date, meta.follow_up_date, meta.priority) == (
        "purchase-review", "P2D", "PT4H", "80")
    assert meta.documentation == "Check the **budget** line."
    assert [f["id"] for f in meta.form_fields] == ["amount", "approved"]
    assert meta.form_fields[0]["required"] is True and meta.form_fields[0]["type"] == "long"


def test_spiff_properties_give_the_same_metadata():
    b = Bpmn("spiffy").start().user("review", "Review", props={
        "candidateGroups": "managers", "formKey": "purchase-review", "dueDate": "PT24H", "priority": "10"})
    [process] = parse_bundle([UploadedFile("p.bpmn", b.end().chain("start", "review", "end").xml())],
                             SETTINGS).processes
    meta = process.user_tasks["spiffy/review"]
    assert (meta.candidate_groups, meta.form_key, meta.due_date, meta.priority) == (
        ["managers"], "purchase-review", "PT24H", "10")


def test_lane_gives_candidate_group_only_when_nothing_more_specific_is_set():
    b = (Bpmn("laned").start().user("draft", "Draft").user("sign", "Sign", props={"assignee": "ceo"}).end()
         .chain("start", "draft", "sign", "end").lane("controllers", "start", "draft", "sign", "end"))
    [process] = parse_bundle([UploadedFile("p.bpmn", b.xml())], SETTINGS).processes
    assert process.user_tasks["laned/draft"].candidate_groups == ["controllers"]
    assert process.user_tasks["laned/sign"].candidate_groups == []
    assert process.user_tasks["laned/sign"].lane == "controllers"


def test_camunda_metadata_resolves_on_the_task_row(db, clock):
    deploy_xml(db, _camunda().xml())
    row = db.command(lambda s: start_instance(s, key="purchase", actor=ALICE))
    [task] = open_tasks(db, row.id)
    assert task.assignee == "alice"  # ${initiator}
    assert task.candidate_groups == ["finance", "managers"] and task.candidate_users == ["carol"]
    assert task.due_at == clock.now() + timedelta(days=2)
    assert task.follow_up_at == clock.now() + timedelta(hours=4)
    assert task.priority == 80 and task.form_key == "purchase-review"


def test_camunda_form_fields_validate_completion(db, clock):
    deploy_xml(db, _camunda().xml())
    row = db.command(lambda s: start_instance(s, key="purchase", actor=ALICE))
    [task] = open_tasks(db, row.id)
    with pytest.raises(InvalidInput) as err:
        db.command(lambda s: complete_task(s, task_id=task.id, actor=ALICE, variables={"approved": "yes"}))
    assert err.value.context["errors"] == {"amount": "is required", "approved": "must be a boolean"}
    db.command(lambda s: complete_task(s, task_id=task.id, actor=ALICE, variables={"amount": "12", "approved": True}))


@pytest.mark.parametrize("due, expected", [
    ("PT24H", timedelta(hours=24)),
    ("P1DT2H", timedelta(days=1, hours=2)),
    ("2026-03-01T12:00:00Z", datetime(2026, 3, 1, 12, tzinfo=UTC)),
    ("${deadline}", datetime(2026, 2, 1, 8, tzinfo=UTC)),
    ("${submitted + timedelta(hours=6)}", datetime(2026, 1, 1, 6, tzinfo=UTC)),
])
def test_due_dates_from_durations_instants_and_expressions(db, clock, due, expected):
    b = Bpmn("due").start().user("t", props={"dueDate": due}).end().chain("start", "t", "end")
    deploy_xml(db, b.xml())
    row = db.command(lambda s: start_instance(s, key="due", actor=ALICE, variables={
        "deadline": "2026-02-01T08:00:00+00:00", "submitted": datetime(2026, 1, 1, tzinfo=UTC)}))
    [task] = open_tasks(db, row.id)
    assert task.due_at == (clock.now() + expected if isinstance(expected, timedelta) else expected)


def test_due_date_expression_failing_at_runtime_names_the_task(db, clock):
    b = Bpmn("due").start().user("t", props={"dueDate": "${missing_var}"}).end().chain("start", "t", "end")
    deploy_xml(db, b.xml())
    with pytest.raises(ScriptError) as err:
        db.command(lambda s: start_instance(s, key="due", actor=ALICE))
    assert err.value.context["element_id"] == "t"


@pytest.mark.parametrize("script, line", [("a = 1\nb = (\n", 2), ("x = 1\ny = x.__class__\n", 2),
                                          ("import os\n", None)])
def test_bad_scripts_are_refused_at_deploy_with_element_and_line(script, line):
    b = Bpmn("bad").start().script("calc", script).end().chain("start", "calc", "end")
    xml = b.xml()
    if line is None:  # imports are checked when they run (the allow-list is a runtime guard)
        parse_bundle([UploadedFile("bad.bpmn", xml)], SETTINGS)
        return
    with pytest.raises(InvalidDefinition) as err:
        parse_bundle([UploadedFile("bad.bpmn", xml)], SETTINGS)
    ctx = err.value.context
    assert ctx["element_id"] == "calc" and ctx["file"] == "bad.bpmn"
    # the builder writes the whole process on line 2, so script line N is file line 2 + N - 1
    assert ctx["line"] == 2 + (line - 1)


def test_bad_condition_and_unquoted_timer_are_refused_at_deploy():
    b = Bpmn("cond").start().xor("gw", default="f2").end("e1").end("e2")
    b.chain("start", "gw").flow("gw", "e1", condition="amount >", id="f1").flow("gw", "e2", id="f2")
    with pytest.raises(InvalidDefinition) as err:
        parse_bundle([UploadedFile("c.bpmn", b.xml())], SETTINGS)
    assert err.value.context["element_id"] == "f1"
    t = Bpmn("timer").start().timer_catch("wait", "PT24H").end().chain("start", "wait", "end")
    with pytest.raises(InvalidDefinition, match='quoted, e.g. "PT24H"') as err:
        parse_bundle([UploadedFile("t.bpmn", t.xml())], SETTINGS)
    assert err.value.context["element_id"] == "wait"


def test_bad_due_date_literal_is_refused_at_deploy():
    b = Bpmn("due").start().user("t", props={"dueDate": "tomorrow-ish"}).end().chain("start", "t", "end")
    with pytest.raises(InvalidDefinition, match="neither an ISO 8601 duration") as err:
        parse_bundle([UploadedFile("d.bpmn", b.xml())], SETTINGS)
    assert err.value.context["element_id"] == "t" and err.value.context["line"]


def test_structural_errors_name_the_problem():
    no_start = Bpmn("nostart").user("t").end().chain("t", "end")
    with pytest.raises(InvalidDefinition, match="start event"):
        parse_bundle([UploadedFile("n.bpmn", no_start.xml())], SETTINGS)
    not_exec = Bpmn("p").start().end().chain("start", "end").xml().replace(b'isExecutable="true"', b"")
    with pytest.raises(InvalidDefinition, match="isExecutable"):
        parse_bundle([UploadedFile("p.bpmn", not_exec)], SETTINGS)
    missing_call = Bpmn("parent").start().call("c", "nowhere").end().chain("start", "c", "end")
    with pytest.raises(InvalidDefinition, match="nowhere"):
        parse_bundle([UploadedFile("p.bpmn", missing_call.xml())], SETTINGS)


def test_call_activity_across_files_in_one_deployment(db, clock):
    child = Bpmn("child").start().user("inner", "Inner step", props={"candidateGroups": "staff"}, writes="y").end()
    child.chain("start", "inner", "end")
    parent = Bpmn("parent").start().call("sub", "child").script("after", "done = True").end()
    parent.chain("start", "sub", "after", "end")
    result = deploy_xml(db, parent.xml(), "parent.bpmn", UploadedFile("child.bpmn", child.xml()))
    assert sorted(d["key"] for d in result.definitions) == ["child", "parent"]
    row = db.command(lambda s: start_instance(s, key="parent", actor=ALICE, variables={"x": 1}))
    [task] = open_tasks(db, row.id)
    assert task.element_id == "inner" and task.name == "Inner step"
    db.command(lambda s: complete_task(s, task_id=task.id, actor=BOB, variables={"y": 2}))
    from tests.helpers import instance

    assert instance(db, row.id).status == "completed"
    assert instance(db, row.id).variables["done"] is True


def test_spiffworkflow_validation_errors_get_their_line():
    """SpiffWorkflow's ValidationException never has a line (it reads `line_number`); ours does."""
    xml = (b'<?xml version="1.0"?>\n<bpmn:definitions xmlns:bpmn="http://www.omg.org/spec/BPMN/20100524/MODEL" '
           b'id="d">\n<bpmn:process id="p" isExecutable="true">\n<bpmn:startEvent id="s"/>\n'
           b'<bpmn:complexGateway id="cg"/>\n'
           b'<bpmn:sequenceFlow id="f" sourceRef="s" targetRef="cg"/>\n</bpmn:process>\n</bpmn:definitions>')
    with pytest.raises(InvalidDefinition) as err:
        parse_bundle([UploadedFile("g.bpmn", xml)], SETTINGS)
    assert err.value.context["element_id"] == "cg" and err.value.context["line"] == 5
    assert err.value.context["file"] == "g.bpmn"


def _decision(*rules: tuple[str, str], input_expression: str = "amount") -> bytes:
    """A one-input, one-output DMN table (first hit): each rule is (input entry, output entry)."""
    rows = "".join(
        f'<rule id="r{i}"><inputEntry id="in{i}"><text>{entry}</text></inputEntry>'
        f'<outputEntry id="out{i}"><text>{output}</text></outputEntry></rule>\n'
        for i, (entry, output) in enumerate(rules, start=1))
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<definitions xmlns="https://www.omg.org/spec/DMN/20191111/MODEL/" id="defs" name="d" namespace="x">\n'
        '<decision id="band" name="Band"><decisionTable id="table" hitPolicy="FIRST">\n'
        f'<input id="i1" label="Amount"><inputExpression id="ie" typeRef="number"><text>{input_expression}'
        '</text></inputExpression></input>\n<output id="o1" label="Band" name="band" typeRef="string"/>\n'
        f"{rows}</decisionTable></decision></definitions>"
    ).encode()


def _decision_process() -> Bpmn:
    b = Bpmn("banding").start().raw(
        '<bpmn:businessRuleTask id="decide"><bpmn:extensionElements><spiffworkflow:calledDecisionId>band'
        "</spiffworkflow:calledDecisionId></bpmn:extensionElements></bpmn:businessRuleTask>")
    return b.user("look").end().chain("start", "decide", "look", "end")


DMN_BANDS = (("&lt; 0", '"refund"'), ("0 &lt;= ? &lt; 100", '"small"'), ("in (100, 200)", '"round"'),
             ("250", '"exact"'), ("-", '"large"'))


@pytest.mark.parametrize("amount, band", [(-5, "refund"), (50, "small"), (200, "round"), (250, "exact"),
                                          (999, "large")])
def test_dmn_entry_forms_accepted_at_deploy_evaluate_as_written(db, clock, amount, band):
    deploy_xml(db, _decision_process().xml(), "banding.bpmn", UploadedFile("bands.dmn", _decision(*DMN_BANDS)))
    row = db.command(lambda s: start_instance(s, key="banding", actor=ALICE, variables={"amount": amount}))
    assert row.variables["band"] == band


@pytest.mark.parametrize("rules, input_expression, element_id, line", [
    ((("&gt; &gt; 5", '"x"'),), "amount", "in1", 6),           # an input entry that is no test
    ((("&gt; 5", '"unclosed'),), "amount", "out1", 6),          # an output entry that does not parse
    ((("-", '"x"'),), "amount.__class__", "ie", 4),             # a dunder in the input expression
    ((("-", '"x"'), ("-", "().__class__")), "amount", "out2", 7),  # a dunder in the second rule's output
    ((("-", '"x"'),), " ", "ie", 4),                            # an empty input expression
])
def test_bad_dmn_expressions_are_refused_at_deploy_with_element_and_line(rules, input_expression, element_id,
                                                                          line):
    files = [UploadedFile("banding.bpmn", _decision_process().xml()),
             UploadedFile("bands.dmn", _decision(*rules, input_expression=input_expression))]
    with pytest.raises(InvalidDefinition) as err:
        parse_bundle(files, SETTINGS)
    ctx = err.value.context
    assert (ctx["file"], ctx["element_id"], ctx["line"]) == ("bands.dmn", element_id, line)
    assert "bands.dmn" in str(err.value) and element_id in str(err.value)
