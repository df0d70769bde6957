"""Messages that correlate (issue 8 item 5, issue 7 item 3), on SQLite and PostgreSQL.

Each test is a case a user reported or would check: the message reaches the instance it
is meant for and no other, its payload lands in that instance's variables, a message
thrown by one instance reaches another in the same transaction, and a sender never
reaches (or learns about) an instance they may not see.
"""
from __future__ import annotations

import json

import pytest
from sqlalchemy import select

from api.cli import build_parser
from engine.commands import correlate_message, fire_timers, start_instance
from engine.commands.messages import MAX_CASCADE_DEPTH
from engine.errors import Conflict, Forbidden, NotFound, ScriptError
from engine.store.models import AuditEventRow, SubscriptionRow
from tests.api_helpers import make_api
from tests.bpmnkit import BPMN, SPIFF, Bpmn
from tests.helpers import ALICE, BOB, MALLORY, SHOP, audit_actions, deploy_xml, instance, snapshot

# ----------------------------------------------------------------- diagrams


def waiting_for_payment(dialect: str = "spiff", variable: str | None = None) -> bytes:
    """start -> wait for 'payment' -> done (a script that reads the payload)."""
    b = Bpmn("invoice", dialect=dialect)
    b.messages.add("payment")
    var = (f"<bpmn:extensionElements><spiffworkflow:messageVariable>{variable}</spiffworkflow:messageVariable>"
           "</bpmn:extensionElements>") if variable else ""
    b.start().raw(f'<bpmn:intermediateCatchEvent id="paid"><bpmn:messageEventDefinition messageRef="msg_payment">'
                  f"{var}</bpmn:messageEventDefinition></bpmn:intermediateCatchEvent>")
    b.script("book", "booked = True").end().chain("start", "paid", "book", "end")
    return b.xml()


def _spiff_definitions(body: str, *, messages: str, correlation: bool = True) -> bytes:
    """A SpiffWorkflow-dialect file with an 'order' correlation key over the property order_id."""
    collab = ('<bpmn:collaboration id="collab"><bpmn:correlationKey name="order">'
              "<bpmn:correlationPropertyRef>order_id</bpmn:correlationPropertyRef></bpmn:correlationKey>"
              "</bpmn:collaboration>"
              '<bpmn:correlationProperty id="order_id" name="order_id">' + "".join(
                  f'<bpmn:correlationPropertyRetrievalExpression messageRef="msg_{m}"><bpmn:formalExpression>'
                  "order_id</bpmn:formalExpression></bpmn:correlationPropertyRetrievalExpression>"
                  for m in messages.split()) + "</bpmn:correlationProperty>") if correlation else ""
    msgs = "".join(f'<bpmn:message id="msg_{m}" name="{m}"/>' for m in messages.split())
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<bpmn:definitions xmlns:bpmn="{BPMN}" '
            f'xmlns:spiffworkflow="{SPIFF}" id="defs" targetNamespace="http://sopflow.example/bpmn">'
            f"{collab}{msgs}{body}</bpmn:definitions>").encode()


def _flows(*ids: str) -> str:
    return "".join(f'<bpmn:sequenceFlow id="f_{a}_{b}" sourceRef="{a}" targetRef="{b}"/>'
                   for a, b in zip(ids, ids[1:], strict=False))


SELLER = ('<bpmn:process id="seller" isExecutable="true"><bpmn:startEvent id="s_start"/>'
          '<bpmn:intermediateCatchEvent id="s_paid"><bpmn:messageEventDefinition messageRef="msg_paid">'
          "<bpmn:extensionElements><spiffworkflow:messageVariable>payment</spiffworkflow:messageVariable>"
          "<spiffworkflow:processVariableCorrelation><spiffworkflow:propertyId>order_id</spiffworkflow:propertyId>"
          "<spiffworkflow:expression>order_id</spiffworkflow:expression></spiffworkflow:processVariableCorrelation>"
          "</bpmn:extensionElements></bpmn:messageEventDefinition></bpmn:intermediateCatchEvent>"
          '<bpmn:scriptTask id="s_ship" scriptFormat="python"><bpmn:script>shipped = payment["amount"]'
          "</bpmn:script></bpmn:scriptTask>"
          '<bpmn:endEvent id="s_end"/>' + _flows("s_start", "s_paid", "s_ship", "s_end") + "</bpmn:process>")

BUYER = ('<bpmn:process id="buyer" isExecutable="true"><bpmn:startEvent id="b_start"/>'
         '<bpmn:intermediateThrowEvent id="b_pay"><bpmn:messageEventDefinition messageRef="msg_paid">'
         '<bpmn:extensionElements><spiffworkflow:messagePayload>{"order_id": order_id, "amount": amount}'
         "</spiffworkflow:messagePayload></bpmn:extensionElements></bpmn:messageEventDefinition>"
         "</bpmn:intermediateThrowEvent>"
         '<bpmn:endEvent id="b_end"/>' + _flows("b_start", "b_pay", "b_end") + "</bpmn:process>")


def _sent_by(db, instance_id: str, action: str = "message.correlated") -> list[dict]:
    with db.read() as s:
        return [json.loads(e.payload) for e in s.scalars(select(AuditEventRow).where(
            AuditEventRow.chain == instance_id, AuditEventRow.action == action).order_by(AuditEventRow.chain_seq))]


# ----------------------------------------------------------------- correlation keys and business key


def test_correlation_keys_reach_the_instance_waiting_on_that_customer_only(db, clock):
    deploy_xml(db, waiting_for_payment())
    a = db.command(lambda s: start_instance(s, key="invoice", actor=ALICE, variables={"customer": "A"}))
    b = db.command(lambda s: start_instance(s, key="invoice", actor=ALICE, variables={"customer": "B"}))
    hit = db.command(lambda s: correlate_message(s, name="payment", actor=ALICE, correlation_keys={"customer": "B"},
                                                 variables={"amount": 42}))
    assert hit == [b.id]
    assert instance(db, b.id).status == "completed"
    assert instance(db, b.id).variables["amount"] == 42 and instance(db, b.id).variables["booked"] is True
    assert instance(db, a.id).status == "running" and "amount" not in instance(db, a.id).variables
    # the older field name still works, and no value of another type passes for "A"
    with pytest.raises(NotFound):
        db.command(lambda s: correlate_message(s, name="payment", actor=ALICE, correlation={"customer": "C"}))
    assert db.command(lambda s: correlate_message(s, name="payment", actor=ALICE,
                                                  correlation={"customer": "A"})) == [a.id]


def test_a_correlation_key_compares_json_values_strictly(db, clock):
    deploy_xml(db, waiting_for_payment())
    flag = db.command(lambda s: start_instance(s, key="invoice", actor=ALICE, variables={"n": True}))
    one = db.command(lambda s: start_instance(s, key="invoice", actor=ALICE, variables={"n": 1}))
    assert db.command(lambda s: correlate_message(s, name="payment", actor=ALICE, correlation_keys={"n": 1})) == [
        one.id]
    assert instance(db, flag.id).status == "running"
    with pytest.raises(NotFound):  # a missing variable never equals anything, not even null
        db.command(lambda s: correlate_message(s, name="payment", actor=ALICE, correlation_keys={"other": None}))


def test_business_key_and_correlation_keys_narrow_together(db, clock):
    deploy_xml(db, waiting_for_payment())
    rows = [db.command(lambda s, bk=bk, c=c: start_instance(s, key="invoice", actor=ALICE, business_key=bk,
                                                            variables={"customer": c}))
            for bk, c in (("INV-1", "A"), ("INV-1", "B"), ("INV-2", "A"))]
    with pytest.raises(Conflict, match="2 instances"):
        db.command(lambda s: correlate_message(s, name="payment", actor=ALICE, business_key="INV-1"))
    hit = db.command(lambda s: correlate_message(s, name="payment", actor=ALICE, business_key="INV-1",
                                                 correlation_keys={"customer": "A"}))
    assert hit == [rows[0].id]
    assert [instance(db, r.id).status for r in rows] == ["completed", "running", "running"]


# ----------------------------------------------------------------- payloads, both dialects


def test_a_camunda_catch_event_merges_the_payload_into_process_variables(db, clock):
    deploy_xml(db, waiting_for_payment("camunda"))
    row = db.command(lambda s: start_instance(s, key="invoice", actor=ALICE, variables={"customer": "A"}))
    assert db.command(lambda s: correlate_message(s, name="payment", actor=ALICE, correlation_keys={"customer": "A"},
                                                  variables={"amount": 7, "ref": "x"})) == [row.id]
    stored = instance(db, row.id)
    assert stored.status == "completed"
    assert stored.variables == {"customer": "A", "amount": 7, "ref": "x", "booked": True}


def test_a_spiff_catch_event_puts_the_payload_in_its_message_variable_or_merges_it(db, clock):
    deploy_xml(db, waiting_for_payment(variable="payment_data"))
    row = db.command(lambda s: start_instance(s, key="invoice", actor=ALICE))
    db.command(lambda s: correlate_message(s, name="payment", actor=ALICE, variables={"amount": 7}))
    assert instance(db, row.id).variables["payment_data"] == {"amount": 7}
    assert "amount" not in instance(db, row.id).variables
    deploy_xml(db, waiting_for_payment(), "merged.bpmn")
    merged = db.command(lambda s: start_instance(s, key="invoice", actor=ALICE))
    db.command(lambda s: correlate_message(s, name="payment", actor=ALICE, variables={"amount": 8}))
    assert instance(db, merged.id).variables["amount"] == 8


def test_a_camunda_instance_throws_its_variables_to_the_camunda_instance_waiting(db, clock):
    payer = Bpmn("payer", dialect="camunda")
    payer.messages.add("payment")
    payer.start("p_start").raw('<bpmn:intermediateThrowEvent id="p_pay"><bpmn:messageEventDefinition '
                               'messageRef="msg_payment"/></bpmn:intermediateThrowEvent>').end("p_end")
    payer.chain("p_start", "p_pay", "p_end")
    deploy_xml(db, waiting_for_payment("camunda"))
    deploy_xml(db, payer.xml(), "payer.bpmn")
    invoice = db.command(lambda s: start_instance(s, key="invoice", actor=ALICE, variables={"customer": "A"}))
    db.command(lambda s: start_instance(s, key="payer", actor=BOB, variables={"amount": 9}))
    stored = instance(db, invoice.id)
    assert stored.status == "completed" and stored.variables == {"customer": "A", "amount": 9, "booked": True}


# ----------------------------------------------------------------- SpiffWorkflow correlation properties


def test_spiff_correlation_properties_route_an_api_message_by_its_values(db, clock):
    deploy_xml(db, _spiff_definitions(SELLER, messages="paid"))
    a = db.command(lambda s: start_instance(s, key="seller", actor=ALICE, variables={"order_id": "A"}))
    b = db.command(lambda s: start_instance(s, key="seller", actor=ALICE, variables={"order_id": "B"}))
    with db.read() as s:
        rows = {r.instance_id: r.correlations for r in s.scalars(select(SubscriptionRow))}
    assert rows == {a.id: {"order": {"order_id": "A"}}, b.id: {"order": {"order_id": "B"}}}
    hit = db.command(lambda s: correlate_message(s, name="paid", actor=ALICE,
                                                 variables={"order_id": "B", "amount": 30}))
    assert hit == [b.id]
    assert instance(db, b.id).variables["shipped"] == 30 and instance(db, a.id).status == "running"
    with pytest.raises(NotFound):  # a value no instance expects reaches none
        db.command(lambda s: correlate_message(s, name="paid", actor=ALICE, variables={"order_id": "Z"}))
    # the property's value is read from the payload (SpiffWorkflow's rule), not from correlation keys
    with pytest.raises(NotFound):
        db.command(lambda s: correlate_message(s, name="paid", actor=ALICE, correlation_keys={"order_id": "A"}))
    assert db.command(lambda s: correlate_message(s, name="paid", actor=ALICE,
                                                  variables={"order_id": "A", "amount": 1})) == [a.id]


# ----------------------------------------------------------------- messages thrown by instances


def test_a_message_thrown_by_one_instance_reaches_the_one_waiting_for_its_order(db, clock):
    deploy_xml(db, _spiff_definitions(SELLER + BUYER, messages="paid"))
    a = db.command(lambda s: start_instance(s, key="seller", actor=ALICE, variables={"order_id": "A"}))
    b = db.command(lambda s: start_instance(s, key="seller", actor=ALICE, variables={"order_id": "B"}))
    buyer = db.command(lambda s: start_instance(s, key="buyer", actor=BOB, variables={"order_id": "B",
                                                                                      "amount": 12}))
    assert instance(db, buyer.id).status == "completed"
    assert instance(db, b.id).status == "completed"
    assert instance(db, b.id).variables["payment"] == {"order_id": "B", "amount": 12}
    assert instance(db, b.id).variables["shipped"] == 12
    assert instance(db, a.id).status == "running"
    [received] = _sent_by(db, b.id)
    assert received["sender"] == {"instance_id": buyer.id} and received["message"] == "paid"
    [sent] = _sent_by(db, buyer.id, "message.sent")
    assert sent["to"] == [b.id] and sent["starts"] == []


def test_a_message_end_event_with_nobody_waiting_starts_the_process_that_starts_with_it(db, clock):
    starter = ('<bpmn:process id="fulfil" isExecutable="true"><bpmn:startEvent id="f_start">'
               '<bpmn:messageEventDefinition messageRef="msg_paid"/></bpmn:startEvent>'
               '<bpmn:scriptTask id="f_pack" scriptFormat="python"><bpmn:script>packed = amount * 2</bpmn:script>'
               '</bpmn:scriptTask><bpmn:endEvent id="f_end"/>' + _flows("f_start", "f_pack", "f_end")
               + "</bpmn:process>")
    ender = ('<bpmn:process id="checkout" isExecutable="true"><bpmn:startEvent id="c_start"/>'
             '<bpmn:endEvent id="c_end"><bpmn:messageEventDefinition messageRef="msg_paid">'
             '<bpmn:extensionElements><spiffworkflow:messagePayload>{"amount": amount}</spiffworkflow:messagePayload>'
             "</bpmn:extensionElements></bpmn:messageEventDefinition></bpmn:endEvent>"
             + _flows("c_start", "c_end") + "</bpmn:process>")
    deploy_xml(db, _spiff_definitions(starter + ender, messages="paid", correlation=False))
    checkout = db.command(lambda s: start_instance(s, key="checkout", actor=BOB, variables={"amount": 4}))
    [sent] = _sent_by(db, checkout.id, "message.sent")
    assert sent["to"] == [] and len(sent["starts"]) == 1
    with db.read() as s:
        [started] = s.scalars(select(AuditEventRow.chain).where(AuditEventRow.action == "message.correlated"))
    assert instance(db, started).definition_key == "fulfil"
    assert instance(db, started).variables["packed"] == 8 and instance(db, started).status == "completed"
    assert _sent_by(db, started)[0]["sender"] == {"instance_id": checkout.id}


def test_a_thrown_message_whose_delivery_fails_stores_nothing_of_the_throwing_command(db, clock):
    broken = SELLER.replace('shipped = payment["amount"]', "shipped = payment['amount'] / 0")
    deploy_xml(db, _spiff_definitions(broken + BUYER, messages="paid"))
    db.command(lambda s: start_instance(s, key="seller", actor=ALICE, variables={"order_id": "A"}))
    before = snapshot(db)
    with pytest.raises(ScriptError, match="s_ship"):
        db.command(lambda s: start_instance(s, key="buyer", actor=BOB, variables={"order_id": "A", "amount": 1}))
    assert snapshot(db) == before


def test_a_thrown_message_that_several_instances_would_catch_is_refused(db, clock):
    deploy_xml(db, _spiff_definitions(SELLER + BUYER, messages="paid", correlation=False))
    for order in ("A", "B"):
        db.command(lambda s, o=order: start_instance(s, key="seller", actor=ALICE, variables={"order_id": o}))
    before = snapshot(db)
    with pytest.raises(ScriptError, match="matches 2 waiting instances"):
        db.command(lambda s: start_instance(s, key="buyer", actor=BOB, variables={"order_id": "A", "amount": 1}))
    assert snapshot(db) == before


def test_instances_that_throw_messages_to_each_other_forever_are_stopped(db, clock):
    """A throws to B, B throws back to A, ...: the cascade is refused at its bound, nothing stored."""
    ping = ('<bpmn:process id="ping" isExecutable="true"><bpmn:startEvent id="p_start"/>'
            '<bpmn:intermediateThrowEvent id="p_throw"><bpmn:messageEventDefinition messageRef="msg_ball"/>'
            "</bpmn:intermediateThrowEvent>"
            '<bpmn:intermediateCatchEvent id="p_catch"><bpmn:messageEventDefinition messageRef="msg_ball"/>'
            '</bpmn:intermediateCatchEvent><bpmn:exclusiveGateway id="p_again" default="f_p_again_p_throw"/>'
            '<bpmn:endEvent id="p_end"/>' + _flows("p_start", "p_throw", "p_catch", "p_again", "p_throw")
            + '<bpmn:sequenceFlow id="f_stop" sourceRef="p_again" targetRef="p_end"><bpmn:conditionExpression>'
            "stop</bpmn:conditionExpression></bpmn:sequenceFlow></bpmn:process>")
    deploy_xml(db, _spiff_definitions(ping, messages="ball", correlation=False))
    first = db.command(lambda s: start_instance(s, key="ping", actor=ALICE, variables={"stop": False}))  # throws to nobody, then waits
    assert _sent_by(db, first.id, "message.sent")[0]["to"] == []
    before = snapshot(db)
    with pytest.raises(ScriptError, match=f"at most {MAX_CASCADE_DEPTH}"):
        db.command(lambda s: start_instance(s, key="ping", actor=ALICE, variables={"stop": False}))
    assert snapshot(db) == before


def test_a_timer_that_leads_to_a_throw_delivers_the_message_too(db, clock):
    from datetime import timedelta

    delayed = BUYER.replace('<bpmn:intermediateThrowEvent id="b_pay">',
                            '<bpmn:intermediateCatchEvent id="b_wait"><bpmn:timerEventDefinition><bpmn:timeDuration>'
                            '"PT1H"</bpmn:timeDuration></bpmn:timerEventDefinition></bpmn:intermediateCatchEvent>'
                            '<bpmn:intermediateThrowEvent id="b_pay">')
    delayed = delayed.replace(_flows("b_start", "b_pay", "b_end"), _flows("b_start", "b_wait", "b_pay", "b_end"))
    deploy_xml(db, _spiff_definitions(SELLER + delayed, messages="paid"))
    seller = db.command(lambda s: start_instance(s, key="seller", actor=ALICE, variables={"order_id": "A"}))
    buyer = db.command(lambda s: start_instance(s, key="buyer", actor=BOB, variables={"order_id": "A", "amount": 3}))
    clock.advance(timedelta(hours=2))
    db.command(lambda s: fire_timers(s, instance_id=buyer.id))
    assert instance(db, seller.id).variables["shipped"] == 3


# ----------------------------------------------------------------- who may send


def test_an_employee_reaches_only_instances_they_may_see_and_a_refusal_looks_like_no_match(db, clock):
    deploy_xml(db, waiting_for_payment())
    hidden = db.command(lambda s: start_instance(s, key="invoice", actor=ALICE, variables={"customer": "A"}))
    before = snapshot(db)
    for customer in ("A", "nobody"):  # a match mallory may not see, and no match at all: the same answer
        with pytest.raises(NotFound) as refused:
            db.command(lambda s, c=customer: correlate_message(s, name="payment", actor=MALLORY,
                                                               correlation_keys={"customer": c}))
        assert refused.value.message.startswith("no running instance is waiting for message 'payment'")
    assert snapshot(db) == before
    # a hidden instance takes no part: with her own instance waiting on the same value, the
    # message reaches hers alone (refusing it because of the hidden one would tell her it exists)
    mine = db.command(lambda s: start_instance(s, key="invoice", actor=MALLORY, business_key="M-1",
                                               variables={"customer": "A"}))
    assert db.command(lambda s: correlate_message(s, name="payment", actor=MALLORY,
                                                  correlation_keys={"customer": "A"})) == [mine.id]
    assert instance(db, hidden.id).status == "running"
    mine = db.command(lambda s: start_instance(s, key="invoice", actor=MALLORY, business_key="M-2",
                                               variables={"customer": "A"}))
    assert db.command(lambda s: correlate_message(s, name="payment", actor=MALLORY, all_matches=True)) == [mine.id]
    assert instance(db, hidden.id).status == "running"
    # a system (integration role) reaches any instance
    assert db.command(lambda s: correlate_message(s, name="payment", actor=SHOP,
                                                  correlation_keys={"customer": "A"})) == [hidden.id]
    assert _sent_by(db, hidden.id)[0]["sender"] == {"user": "shop"}


def test_only_systems_start_a_process_by_message(db, clock):
    b = Bpmn("orders")
    b.messages.add("order_placed")
    b.raw('<bpmn:startEvent id="start"><bpmn:messageEventDefinition messageRef="msg_order_placed"/>'
          "</bpmn:startEvent>").script("s", "seen = True").end().chain("start", "s", "end")
    deploy_xml(db, b.xml())
    before = snapshot(db)
    with pytest.raises(Forbidden, match="integration or admin"):
        db.command(lambda s: correlate_message(s, name="order_placed", actor=ALICE))
    assert snapshot(db) == before
    [iid] = db.command(lambda s: correlate_message(s, name="order_placed", actor=SHOP, variables={"sku": "A"}))
    assert instance(db, iid).variables == {"sku": "A", "seen": True}
    assert audit_actions(db, iid)[:2] == ["instance.started", "message.correlated"]


def test_the_integration_role_can_be_given_from_the_command_line():
    args = build_parser().parse_args(["users", "add", "erp", "--role", "integration"])
    assert args.role == "integration"


# ----------------------------------------------------------------- through HTTP


@pytest.fixture
def api(db, clock):
    return make_api(db)


def test_http_messages_correlate_and_refuse_without_revealing(api):
    assert api.deploy("dora", ("invoice.bpmn", waiting_for_payment("camunda"))).status_code == 201
    a = api.start("rita", "invoice", variables={"customer": "A"}).json()["id"]
    b = api.start("rita", "invoice", variables={"customer": "B"}).json()["id"]
    # paul may not see rita's instances: a match and a miss answer the same
    hidden = api.post("paul", "/api/messages", json={"name": "payment", "correlation_keys": {"customer": "A"}})
    missing = api.post("paul", "/api/messages", json={"name": "payment", "correlation_keys": {"customer": "Q"}})
    assert hidden.status_code == missing.status_code == 404
    assert {**hidden.json(), "request_id": None} == {**missing.json(), "request_id": None}
    assert api.get("rita", f"/api/process-instances/{a}").json()["status"] == "running"
    # a misspelt field is an error, not a message sent to whoever waits
    r = api.post("rita", "/api/messages", json={"name": "payment", "correlationKeys": {"customer": "A"}})
    assert r.status_code == 422
    r = api.post("rita", "/api/messages", json={"name": "payment", "correlation_keys": {"customer": "B"},
                                                "variables": {"amount": 5}})
    assert r.status_code == 200 and r.json() == {"instance_ids": [b]}
    detail = api.get("rita", f"/api/process-instances/{b}").json()
    assert detail["status"] == "completed" and detail["variables"]["amount"] == 5
    assert api.get("rita", f"/api/process-instances/{a}").json()["status"] == "running"
    # a system account (integration role) reaches any instance, and may do nothing else
    assert api.post("admin", "/api/users", json={"name": "erp", "role": "integration"}).status_code in (200, 201)
    api.tokens["erp"] = api.post("admin", "/api/users/erp/tokens").json()["token"]
    r = api.post("erp", "/api/messages", json={"name": "payment", "correlation_keys": {"customer": "A"}})
    assert r.status_code == 200 and r.json() == {"instance_ids": [a]}
    assert api.get("erp", "/api/tasks").status_code == 403
