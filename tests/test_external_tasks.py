"""External tasks (Camunda's pattern) and incidents through the engine commands, on SQLite and PostgreSQL."""
from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from engine.actor import Actor
from engine.commands import cancel_instance, start_instance
from engine.commands import external_tasks as ext
from engine.errors import Conflict, InvalidDefinition, InvalidInput
from engine.loading import UploadedFile
from engine.store.models import ExternalTaskRow, IncidentRow
from engine.worker import run_once
from tests.bpmnkit import Bpmn
from tests.helpers import ALICE, audit_actions, deploy_xml, instance, snapshot

WORKER = Actor("billing-bot", roles=frozenset({"integration"}))
OPS = Actor("admin", roles=frozenset({"admin"}))


def service(id: str = "bill", attrs: str = 'camunda:type="external" camunda:topic="billing"', inner: str = "",
            tag: str = "serviceTask") -> str:
    return f'<bpmn:{tag} id="{id}" name="Send the bill" {attrs}>{inner}</bpmn:{tag}>'


def one_service(dialect: str = "camunda", key: str = "invoice", **kw: str) -> bytes:
    b = Bpmn(key, dialect=dialect).start().raw(service(**kw)).script("after", "done = True").end()
    return b.chain("start", kw.get("id", "bill"), "after", "end").xml()


def fetch(db, worker: str = "w1", topic: str = "billing", lock_ms: int = 60_000, max_tasks: int = 10, **kw):
    return db.command(lambda s: ext.fetch_and_lock(
        s, worker_id=worker, topics=[ext.TopicRequest(topic, lock_ms, **kw)], max_tasks=max_tasks, actor=WORKER))


def rows(db, instance_id: str) -> list[ExternalTaskRow]:
    with db.read() as s:
        return list(s.scalars(select(ExternalTaskRow).where(ExternalTaskRow.instance_id == instance_id)
                              .order_by(ExternalTaskRow.created_at, ExternalTaskRow.element_id)))


def incidents(db) -> list[IncidentRow]:
    with db.read() as s:
        return list(s.scalars(select(IncidentRow).order_by(IncidentRow.created_at)))


def test_a_camunda_service_task_deploys_waits_and_completes_with_variables(db, clock):
    # this file used to fail at deploy with "ServiceTask is not JSON serializable" (a 500)
    deploy_xml(db, one_service())
    inst = db.command(lambda s: start_instance(s, key="invoice", actor=ALICE, variables={"amount": 120}))
    assert inst.status == "running"
    [row] = rows(db, inst.id)
    assert (row.state, row.topic, row.element_id, row.variables) == ("open", "billing", "bill", {"amount": 120})
    [locked] = fetch(db)
    assert (locked.id, locked.worker_id) == (row.id, "w1")
    assert locked.lock_expires_at == clock.now() + timedelta(minutes=1)
    assert fetch(db, worker="w2") == []  # locked: nobody else gets it
    db.command(lambda s: ext.complete(s, task_id=row.id, worker_id="w1", actor=WORKER,
                                      variables={"invoice_no": "INV-7"}))
    done = instance(db, inst.id)
    assert done.status == "completed"
    assert done.variables == {"amount": 120, "invoice_no": "INV-7", "done": True}
    assert rows(db, inst.id)[0].state == "completed" and rows(db, inst.id)[0].completed_by == "w1"
    actions = audit_actions(db, inst.id)
    assert actions.index("external_task.created") < actions.index("external_task.locked") \
        < actions.index("external_task.completed") < actions.index("instance.completed")


def test_only_the_lock_holder_acts_and_an_expired_lock_can_be_taken(db, clock):
    deploy_xml(db, one_service())
    inst = db.command(lambda s: start_instance(s, key="invoice", actor=ALICE))
    [task] = fetch(db, worker="w1", lock_ms=1000)
    before = snapshot(db)
    with pytest.raises(Conflict, match="locked by another worker"):
        db.command(lambda s: ext.complete(s, task_id=task.id, worker_id="w2", actor=WORKER, variables={"x": 1}))
    for command in (lambda s: ext.failure(s, task_id=task.id, worker_id="w2", actor=WORKER, retries=1),
                    lambda s: ext.bpmn_error(s, task_id=task.id, worker_id="w2", actor=WORKER, error_code="E"),
                    lambda s: ext.extend_lock(s, task_id=task.id, worker_id="w2", actor=WORKER, new_duration_ms=5)):
        with pytest.raises(Conflict):
            db.command(command)
    assert snapshot(db) == before
    clock.advance(seconds=2)
    with pytest.raises(Conflict, match="expired"):
        db.command(lambda s: ext.extend_lock(s, task_id=task.id, worker_id="w1", actor=WORKER,
                                             new_duration_ms=1000))
    [again] = fetch(db, worker="w2")
    assert again.id == task.id
    with pytest.raises(Conflict, match="locked by another worker"):
        db.command(lambda s: ext.complete(s, task_id=task.id, worker_id="w1", actor=WORKER))
    db.command(lambda s: ext.complete(s, task_id=task.id, worker_id="w2", actor=WORKER))
    assert instance(db, inst.id).status == "completed"
    with pytest.raises(Conflict, match="already completed"):
        db.command(lambda s: ext.complete(s, task_id=task.id, worker_id="w2", actor=WORKER))


def test_extend_lock_moves_the_expiry(db, clock):
    deploy_xml(db, one_service())
    db.command(lambda s: start_instance(s, key="invoice", actor=ALICE))
    [task] = fetch(db, lock_ms=1000)
    row = db.command(lambda s: ext.extend_lock(s, task_id=task.id, worker_id="w1", actor=WORKER,
                                               new_duration_ms=60_000))
    assert row.lock_expires_at == clock.now() + timedelta(minutes=1)
    clock.advance(seconds=30)
    assert fetch(db, worker="w2") == []


def test_failures_count_retries_down_then_open_an_incident_that_a_retry_resolves(db, clock):
    deploy_xml(db, one_service())
    inst = db.command(lambda s: start_instance(s, key="invoice", actor=ALICE))
    [task] = fetch(db)
    row = db.command(lambda s: ext.failure(s, task_id=task.id, worker_id="w1", actor=WORKER,
                                           error_message="SMTP down", error_details="trace...", retries=1,
                                           retry_timeout_ms=5000))
    assert (row.retries, row.error_message, row.worker_id) == (1, "SMTP down", None)
    assert fetch(db) == []  # the retry timeout holds it back
    clock.advance(seconds=5)
    [task] = fetch(db)
    db.command(lambda s: ext.failure(s, task_id=task.id, worker_id="w1", actor=WORKER,
                                     error_message="SMTP still down", retries=0))
    [incident] = incidents(db)
    assert (incident.kind, incident.external_task_id, incident.message, incident.resolved_at) == (
        "failed_external_task", task.id, "SMTP still down", None)
    clock.advance(hours=1)
    assert fetch(db) == []  # no retries: nobody fetches it until an operator retries
    assert instance(db, inst.id).status == "running"
    resolved = db.command(lambda s: ext.retry_incident(s, incident_id=incident.id, retries=2, actor=OPS))
    assert (resolved.resolution, resolved.resolved_by) == ("retried", "admin")
    [task] = fetch(db)
    assert task.retries == 2
    with pytest.raises(Conflict, match="already resolved"):
        db.command(lambda s: ext.retry_incident(s, incident_id=incident.id, retries=1, actor=OPS))
    actions = audit_actions(db, inst.id)
    assert actions.count("external_task.failed") == 2
    assert "incident.created" in actions and "incident.resolved" in actions


def _with_error_boundary(code: str | None = "CARD_DECLINED") -> bytes:
    error_ref = ' errorRef="err"' if code else ""
    b = (Bpmn("pay", dialect="camunda").start().raw(service("charge", 'camunda:type="external" camunda:topic="pay"'))
         .script("paid", "outcome = 'paid'").end()
         .raw(f'<bpmn:boundaryEvent id="declined" attachedToRef="charge"><bpmn:errorEventDefinition{error_ref}/>'
              "</bpmn:boundaryEvent>")
         .script("ask_again", "outcome = 'declined'").end("end_declined"))
    b.chain("start", "charge", "paid", "end").chain("declined", "ask_again", "end_declined")
    xml = b.xml().decode()
    if code:
        xml = xml.replace("<bpmn:process", f'<bpmn:error id="err" name="declined" errorCode="{code}"/><bpmn:process', 1)
    return xml.encode()


def test_a_bpmn_error_takes_the_error_boundary_path_with_the_variables(db, clock):
    deploy_xml(db, _with_error_boundary())
    inst = db.command(lambda s: start_instance(s, key="pay", actor=ALICE, variables={"order": 7}))
    [task] = fetch(db, topic="pay")
    result = db.command(lambda s: ext.bpmn_error(s, task_id=task.id, worker_id="w1", actor=WORKER,
                                                 error_code="CARD_DECLINED", error_message="insufficient funds",
                                                 variables={"reason": "funds"}))
    assert result == {"caught_by": "declined", "incident_id": None}
    done = instance(db, inst.id)
    assert done.status == "completed"
    assert done.variables["outcome"] == "declined" and done.variables["reason"] == "funds"
    assert done.variables["order"] == 7
    assert rows(db, inst.id)[0].state == "error"
    assert "external_task.bpmn_error" in audit_actions(db, inst.id)


def test_an_uncaught_bpmn_error_opens_an_incident_and_keeps_the_task(db, clock):
    deploy_xml(db, _with_error_boundary())
    inst = db.command(lambda s: start_instance(s, key="pay", actor=ALICE))
    [task] = fetch(db, topic="pay")
    revision = instance(db, inst.id).revision
    result = db.command(lambda s: ext.bpmn_error(s, task_id=task.id, worker_id="w1", actor=WORKER,
                                                 error_code="OTHER"))
    assert result["caught_by"] is None
    [incident] = incidents(db)
    assert incident.kind == "unhandled_bpmn_error" and "OTHER" in incident.message
    assert instance(db, inst.id).revision == revision  # the workflow did not move
    [row] = rows(db, inst.id)
    assert (row.state, row.retries) == ("open", 0)
    assert fetch(db, topic="pay") == []


def test_an_error_boundary_without_a_code_catches_every_code(db, clock):
    deploy_xml(db, _with_error_boundary(code=None))
    inst = db.command(lambda s: start_instance(s, key="pay", actor=ALICE))
    [task] = fetch(db, topic="pay")
    db.command(lambda s: ext.bpmn_error(s, task_id=task.id, worker_id="w1", actor=WORKER, error_code="ANY"))
    assert instance(db, inst.id).variables["outcome"] == "declined"


def test_a_boundary_timer_cancels_the_waiting_external_task_and_resolves_its_incident(db, clock):
    b = (Bpmn("slow", dialect="camunda").start().raw(service()).end()
         .boundary_timer("late", "bill", duration='"PT1H"').script("chase", "chased = True").end("late_end"))
    deploy_xml(db, b.chain("start", "bill", "end").chain("late", "chase", "late_end").xml())
    inst = db.command(lambda s: start_instance(s, key="slow", actor=ALICE))
    [task] = fetch(db)
    db.command(lambda s: ext.failure(s, task_id=task.id, worker_id="w1", actor=WORKER, retries=0))
    clock.advance(hours=2)
    run_once(db)
    assert instance(db, inst.id).variables.get("chased") is True
    assert rows(db, inst.id)[0].state == "cancelled"
    [incident] = incidents(db)
    assert incident.resolution == "task_ended"


def test_cancelling_the_instance_cancels_its_external_tasks(db, clock):
    deploy_xml(db, one_service())
    inst = db.command(lambda s: start_instance(s, key="invoice", actor=ALICE))
    db.command(lambda s: cancel_instance(s, instance_id=inst.id, actor=ALICE))
    assert rows(db, inst.id)[0].state == "cancelled"
    assert fetch(db) == []


@pytest.mark.parametrize(("dialect", "attrs", "inner", "topic"), [
    ("camunda", 'camunda:class="com.acme.Billing"', "", "com.acme.Billing"),
    ("camunda", 'camunda:delegateExpression="${billingDelegate}"', "", "billingDelegate"),
    ("camunda", 'camunda:expression="${mailer.send(to)}"', "", "mailer.send(to)"),
    ("camunda", "", '<bpmn:extensionElements><camunda:connector><camunda:connectorId>http-connector'
                    "</camunda:connectorId></camunda:connector></bpmn:extensionElements>", "http-connector"),
    ("spiff", 'xmlns:flowable="http://flowable.org/bpmn" flowable:type="external-worker" flowable:topic="fl"', "",
     "fl"),
    ("spiff", 'xmlns:flowable="http://flowable.org/bpmn" flowable:class="org.Foo"', "", "org.Foo"),
])
def test_every_dialect_names_the_topic(db, clock, dialect, attrs, inner, topic):
    deploy_xml(db, one_service(dialect, attrs=attrs, inner=inner))
    inst = db.command(lambda s: start_instance(s, key="invoice", actor=ALICE))
    assert [r.topic for r in rows(db, inst.id)] == [topic]


def test_a_spiff_service_operator_waits_with_its_evaluated_parameters(db, clock):
    inner = ('<bpmn:extensionElements><spiffworkflow:serviceTaskOperator id="http/GetRequest" resultVariable="r">'
             '<spiffworkflow:parameters><spiffworkflow:parameter id="url" type="str" '
             'value="&quot;https://example.test/orders/&quot; + str(order)"/></spiffworkflow:parameters>'
             "</spiffworkflow:serviceTaskOperator></bpmn:extensionElements>")
    deploy_xml(db, one_service("spiff", attrs="", inner=inner))
    inst = db.command(lambda s: start_instance(s, key="invoice", actor=ALICE, variables={"order": 9}))
    [row] = rows(db, inst.id)
    assert row.topic == "http/GetRequest"
    assert ext.task_variables(row) == {"order": 9, "url": "https://example.test/orders/9"}
    assert ext.task_variables(row, ["url"]) == {"url": "https://example.test/orders/9"}


def test_send_and_business_rule_tasks_are_external_only_with_an_implementation(db, clock):
    b = (Bpmn("mixed", dialect="camunda").start()
         .raw(service("notify", 'camunda:type="external" camunda:topic="mail"', tag="sendTask"))
         .raw(service("score", 'camunda:class="com.acme.Score"', tag="businessRuleTask")).end())
    deploy_xml(db, b.chain("start", "notify", "score", "end").xml())
    inst = db.command(lambda s: start_instance(s, key="mixed", actor=ALICE))
    [mail] = fetch(db, topic="mail")
    assert mail.element_type == "sendTask"
    db.command(lambda s: ext.complete(s, task_id=mail.id, worker_id="w1", actor=WORKER))
    [score] = fetch(db, topic="com.acme.Score")
    assert score.element_type == "businessRuleTask"
    db.command(lambda s: ext.complete(s, task_id=score.id, worker_id="w1", actor=WORKER, variables={"s": 3}))
    assert instance(db, inst.id).variables == {"s": 3}


def test_a_multi_instance_service_task_gives_each_worker_its_own_item(db, clock):
    b = (Bpmn("fan", dialect="camunda").start()
         .raw(service(attrs='camunda:type="external" camunda:topic="billing"',
                      inner='<bpmn:multiInstanceLoopCharacteristics camunda:collection="customers" '
                            'camunda:elementVariable="customer"/>')).end())
    deploy_xml(db, b.chain("start", "bill", "end").xml())
    inst = db.command(lambda s: start_instance(s, key="fan", actor=ALICE, variables={"customers": ["A", "B"]}))
    tasks = fetch(db)
    assert sorted(ext.task_variables(t)["customer"] for t in tasks) == ["A", "B"]
    for t in tasks:
        db.command(lambda s, t=t: ext.complete(s, task_id=t.id, worker_id="w1", actor=WORKER))
    assert instance(db, inst.id).status == "completed"


@pytest.mark.parametrize(("xml", "message"), [
    (one_service(attrs=""), "has no implementation"),
    (one_service(attrs='camunda:type="external"'), "needs a camunda:topic"),
    (one_service("spiff", attrs=""), "has no implementation"),
    (one_service(attrs="", tag="businessRuleTask"), "needs camunda:decisionRef"),
])
def test_service_tasks_without_an_implementation_are_refused_at_deploy(db, xml, message):
    with pytest.raises(InvalidDefinition, match=message) as info:
        db.command(lambda s: deploy_xml_session(s, xml))
    assert info.value.context.get("element_id") == "bill"


def deploy_xml_session(session, xml: bytes):
    from engine.commands import deploy
    from tests.helpers import DESIGNER

    return deploy(session, files=[UploadedFile("p.bpmn", xml)], actor=DESIGNER)


def test_bad_worker_input_is_refused_without_a_write(db, clock):
    deploy_xml(db, one_service())
    db.command(lambda s: start_instance(s, key="invoice", actor=ALICE))
    before = snapshot(db)
    for kw in ({"worker": ""}, {"lock_ms": 0}, {"lock_ms": 10**12}, {"max_tasks": -1}):
        with pytest.raises(InvalidInput):
            fetch(db, **kw)
    [task] = fetch(db)
    after_fetch = snapshot(db)
    with pytest.raises(InvalidInput):
        db.command(lambda s: ext.failure(s, task_id=task.id, worker_id="w1", actor=WORKER, retries=-1))
    with pytest.raises(InvalidInput):
        db.command(lambda s: ext.complete(s, task_id=task.id, worker_id="w1", actor=WORKER,
                                          variables={"_secret": 1}))
    assert snapshot(db) == after_fetch
    assert before["revisions"] == after_fetch["revisions"]


def test_priority_orders_the_fetch_when_asked(db, clock):
    b = (Bpmn("prio", dialect="camunda").start().parallel("fork")
         .raw(service("low", 'camunda:type="external" camunda:topic="t" camunda:taskPriority="1"'))
         .raw(service("high", 'camunda:type="external" camunda:topic="t" camunda:taskPriority="9"'))
         .parallel("join").end())
    b.chain("start", "fork", "low", "join", "end").chain("fork", "high", "join")
    deploy_xml(db, b.xml())
    db.command(lambda s: start_instance(s, key="prio", actor=ALICE))
    [first] = db.command(lambda s: ext.fetch_and_lock(s, worker_id="w", topics=[ext.TopicRequest("t", 1000)],
                                                      max_tasks=1, actor=WORKER, use_priority=True))
    assert first.element_id == "high"


def test_concurrent_workers_never_get_the_same_task(db, clock):
    import threading

    deploy_xml(db, one_service())
    for _ in range(12):
        db.command(lambda s: start_instance(s, key="invoice", actor=ALICE))
    got: dict[str, list[str]] = {}
    errors: list[BaseException] = []

    def work(name: str) -> None:
        try:
            while batch := fetch(db, worker=name, max_tasks=2):
                got.setdefault(name, []).extend(t.id for t in batch)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    locked = [task_id for ids in got.values() for task_id in ids]
    assert len(locked) == 12 and len(set(locked)) == 12
