"""Notification delivery: e-mail through a local SMTP server, signed webhooks that fail then recover."""
from __future__ import annotations

import hashlib
import hmac
import json
import socket
import threading
from email import message_from_bytes
from email.header import decode_header, make_header
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from sqlalchemy import select, update

from engine.commands import SYSTEM, start_instance
from engine.config import Settings
from engine.identity import seed_demo
from engine.notifications import MAX_ATTEMPTS, render
from engine.store.models import OutboxDeliveryRow, OutboxRow, UserRow
from engine.worker import run_once
from tests.bpmnkit import Bpmn
from tests.helpers import ALICE, deploy_xml

SECRET = "webhook-test-key"  # noqa: S105 - a test fixture, not a credential


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def smtp_server():
    from aiosmtpd.controller import Controller

    received: list[bytes] = []

    class Handler:
        async def handle_DATA(self, server, session, envelope):  # noqa: N802 - aiosmtpd's hook name
            received.append(envelope.content)
            return "250 OK"

    controller = Controller(Handler(), hostname="127.0.0.1", port=_port())
    controller.start()
    yield controller.port, received
    controller.stop()


@pytest.fixture
def receiver():
    """A webhook receiver that answers 503 to the first ``failures`` requests, then 200."""
    state = {"failures": 2, "bodies": [], "signatures": []}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            body = self.rfile.read(int(self.headers["Content-Length"]))
            state["bodies"].append(body)
            state["signatures"].append(self.headers["X-Sopflow-Signature"])
            status = 503 if state["failures"] > 0 else 200
            state["failures"] -= 1
            self.send_response(status)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook", state
    server.shutdown()
    server.server_close()


def _breach(db, clock, settings: Settings, assignee: str = "sam") -> str:
    db.command(lambda s: seed_demo(s, actor=SYSTEM))
    b = Bpmn("sla").start().user("work", "Answer the complaint", props={"assignee": assignee,
                                                                       "dueDate": "PT1H"}).end()
    deploy_xml(db, b.chain("start", "work", "end").xml())
    row = db.command(lambda s: start_instance(s, key="sla", actor=ALICE))
    clock.advance(hours=2)
    run_once(db, settings=settings)
    return row.id


def test_email_in_the_users_language_through_smtp(db, clock, smtp_server):
    port, received = smtp_server
    settings = Settings(smtp_host="127.0.0.1", smtp_port=port, smtp_from="sla@example.org", webhook_url="")
    db.command(lambda s: seed_demo(s, actor=SYSTEM))
    with db.transaction() as s:
        s.execute(update(UserRow).where(UserRow.name == "sam").values(email="sam@example.org", locale="zh-Hans"))
        s.execute(update(UserRow).where(UserRow.name == "max").values(email="max@example.org"))
    b = Bpmn("sla").start().user("work", "Answer the complaint", props={
        "assignee": "sam", "dueDate": "PT1H", "notifyOnBreach": "max"}).end()
    deploy_xml(db, b.chain("start", "work", "end").xml())
    db.command(lambda s: start_instance(s, key="sla", actor=ALICE))
    clock.advance(hours=2)
    run_once(db, settings=settings)  # fires at risk and breach, then delivers what is due
    run_once(db, settings=settings)
    mails = [message_from_bytes(m) for m in received]
    subjects = sorted((m["To"], str(make_header(decode_header(m["Subject"])))) for m in mails)
    assert subjects == [("max@example.org", "Task overdue: Answer the complaint"),
                        ("sam@example.org", "任务已逾期：Answer the complaint"),
                        ("sam@example.org", "任务有逾期风险：Answer the complaint")]
    assert all(m["From"] == "sla@example.org" for m in mails)
    with db.read() as s:
        states = set(s.scalars(select(OutboxRow.state).where(OutboxRow.channel == "email")))
        deliveries = s.scalars(select(OutboxDeliveryRow)).all()
    assert states == {"delivered"} and len(deliveries) == 3 and all(d.ok for d in deliveries)


def test_webhook_is_signed_retried_with_backoff_and_each_delivery_recorded(db, clock, receiver):
    url, state = receiver
    settings = Settings(smtp_host="", webhook_url=url, webhook_secret=SECRET)
    _breach(db, clock, settings)  # two events (at risk, breach) -> two webhook rows; first two posts fail
    with db.read() as s:
        rows = s.scalars(select(OutboxRow).where(OutboxRow.channel == "webhook")).all()
    assert sorted(r.state for r in rows) == ["pending", "pending"]
    assert run_once(db, settings=settings).delivered == 0  # backing off (10 s)
    clock.advance(seconds=11)
    assert run_once(db, settings=settings).delivered == 2
    with db.read() as s:
        rows = s.scalars(select(OutboxRow).where(OutboxRow.channel == "webhook")).all()
        deliveries = s.scalars(select(OutboxDeliveryRow).order_by(OutboxDeliveryRow.id)).all()
    assert sorted(r.state for r in rows) == ["delivered", "delivered"]
    assert [(d.ok, d.status_code) for d in deliveries] == [(False, 503), (False, 503), (True, 200), (True, 200)]
    for body, signature in zip(state["bodies"], state["signatures"], strict=True):
        assert signature == "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    events = sorted(json.loads(b)["event"] for b in state["bodies"][2:])
    assert events == ["task.at_risk", "task.breached"]
    assert json.loads(state["bodies"][-1])["data"]["task"]["name"] == "Answer the complaint"


def test_a_webhook_that_never_recovers_fails_after_the_last_attempt(db, clock, receiver):
    url, state = receiver
    state["failures"] = 10**6
    settings = Settings(smtp_host="", webhook_url=url, webhook_secret=SECRET)
    _breach(db, clock, settings)
    for _ in range(MAX_ATTEMPTS + 2):
        clock.advance(hours=2)
        run_once(db, settings=settings)
    with db.read() as s:
        rows = s.scalars(select(OutboxRow).where(OutboxRow.channel == "webhook")).all()
    assert [(r.state, r.attempts) for r in rows] == [("failed", MAX_ATTEMPTS)] * 2
    assert len(state["bodies"]) == 2 * MAX_ATTEMPTS


def test_templates_fall_back_to_english_and_render_in_the_sandbox():
    context = {"task": {"name": "{{ 7 * 7 }}", "due_at": "2026-01-01T10:00:00+00:00"}}
    subject, body = render("task.reminder", "fr", context)
    assert subject == "Reminder: {{ 7 * 7 }}"  # data is never rendered as a template
    assert "2026-01-01T10:00:00+00:00" in body
