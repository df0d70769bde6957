"""Notifications: an outbox written with the event that caused it, delivered by the worker.

:func:`notify` runs inside the command that caused the event (same transaction, so a rolled
back command notifies nobody). Per recipient user it writes an ``inapp`` row (the user's
in-app notification, visible once committed) and, when the user has an e-mail address and
``SOPFLOW_SMTP_HOST`` is set, an ``email`` row; when ``SOPFLOW_WEBHOOK_URL`` is set, one
``webhook`` row per event. Subjects and bodies render from the templates below in jinja2's
sandboxed environment (engine.templates), in the user's ``locale`` (``en`` or ``zh-Hans``;
anything else falls back to English).

:func:`deliver_due` (the worker) leases pending e-mail/webhook rows (``next_attempt_at``
moves ahead by the lease; ``FOR UPDATE SKIP LOCKED`` on PostgreSQL), sends each outside any
transaction, then records the attempt in ``outbox_deliveries``: delivered, or retried with
exponential backoff until :data:`MAX_ATTEMPTS`, then ``failed``. Webhooks POST JSON signed
``X-Sopflow-Signature: sha256=<hex HMAC-SHA256 of the body with SOPFLOW_WEBHOOK_SECRET>``.
Delivery is at least once: a receiver de-duplicates on the ``id`` in the body.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import logging
import smtplib
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import timedelta
from email.message import EmailMessage
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from engine import audit, clock, templates
from engine.config import Settings
from engine.ids import time_ordered_id
from engine.store.db import Database
from engine.store.models import OutboxDeliveryRow, OutboxRow, UserRow

log = logging.getLogger("sopflow.notifications")

MAX_ATTEMPTS = 5
LEASE = timedelta(minutes=2)
_CAP = 64 * 1024

TEMPLATES: dict[str, dict[str, tuple[str, str]]] = {
    "en": {
        "task.at_risk": ("Task at risk: {{ task.name }}",
                         "The task \"{{ task.name }}\" is due at {{ task.due_at }} and is at risk of missing it."),
        "task.breached": ("Task overdue: {{ task.name }}",
                          "The task \"{{ task.name }}\" was due at {{ task.due_at }} and is overdue."
                          "{% if escalated_to %} It was escalated to {{ escalated_to }}.{% endif %}"),
        "task.reminder": ("Reminder: {{ task.name }}",
                          "The task \"{{ task.name }}\" is due at {{ task.due_at }}."),
        "task.follow_up": ("Follow up: {{ task.name }}",
                           "The task \"{{ task.name }}\" is to be followed up now ({{ task.follow_up_at }})."
                           "{% if task.due_at %} It is due at {{ task.due_at }}.{% endif %}"),
    },
    "zh-Hans": {
        "task.at_risk": ("任务有逾期风险：{{ task.name }}",
                         "任务“{{ task.name }}”的截止时间为 {{ task.due_at }}，有逾期风险。"),
        "task.breached": ("任务已逾期：{{ task.name }}",
                          "任务“{{ task.name }}”的截止时间为 {{ task.due_at }}，现已逾期。"
                          "{% if escalated_to %}已升级给 {{ escalated_to }}。{% endif %}"),
        "task.reminder": ("提醒：{{ task.name }}",
                          "任务“{{ task.name }}”将于 {{ task.due_at }} 截止。"),
        "task.follow_up": ("跟进：{{ task.name }}",
                           "任务“{{ task.name }}”已到跟进时间（{{ task.follow_up_at }}）。"
                           "{% if task.due_at %}截止时间为 {{ task.due_at }}。{% endif %}"),
    },
}
LOCALES = tuple(TEMPLATES)


def render(event: str, locale: str | None, context: dict[str, Any]) -> tuple[str, str]:
    """``(subject, body)`` of ``event`` in ``locale`` (English when the locale is not known)."""
    table = TEMPLATES.get(locale or "en") or TEMPLATES["en"]
    subject, body = table.get(event) or TEMPLATES["en"][event]
    return templates.render_bounded(subject, context, _CAP), templates.render_bounded(body, context, _CAP)


def notify(session: Session, *, event: str, users: list[str], context: dict[str, Any], settings: Settings,
           instance_id: str | None = None, task_id: str | None = None) -> list[str]:
    """Write the outbox rows for ``event`` to ``users`` (names; unknown names get in-app rows too).

    ``context`` feeds the templates (``task`` with ``name``, ``due_at``, ...); it is also the
    webhook's payload. Returns the ids of the rows written. Flushes nothing itself.
    """
    now = clock.now()
    names = sorted(set(users))
    known = {u.name: u for u in session.scalars(select(UserRow).where(UserRow.name.in_(names)))} if names else {}
    payload = json.loads(audit.canonical(context))
    rows: list[OutboxRow] = []
    for name in names:
        user = known.get(name)
        subject, body = render(event, user.locale if user else None, context)
        rows.append(OutboxRow(id=time_ordered_id(), channel="inapp", recipient=name, event=event,
                              instance_id=instance_id, task_id=task_id, subject=subject, body=body,
                              payload=payload, state="delivered", attempts=0, created_at=now, delivered_at=now))
        if user is not None and user.email and settings.smtp_host:
            rows.append(OutboxRow(id=time_ordered_id(), channel="email", recipient=user.email, event=event,
                                  instance_id=instance_id, task_id=task_id, subject=subject, body=body,
                                  payload=payload, state="pending", attempts=0, next_attempt_at=now,
                                  created_at=now))
    if settings.webhook_url:
        subject, body = render(event, None, context)
        rows.append(OutboxRow(id=time_ordered_id(), channel="webhook", recipient=settings.webhook_url, event=event,
                              instance_id=instance_id, task_id=task_id, subject=subject, body=body,
                              payload={**payload, "recipients": names}, state="pending", attempts=0,
                              next_attempt_at=now, created_at=now))
    session.add_all(rows)
    return [r.id for r in rows]


# --------------------------------------------------------------------------- delivery


@dataclass
class Outcome:
    ok: bool
    status_code: int | None = None
    error: str | None = None


def sign(secret: str, body: bytes) -> str:
    """The ``X-Sopflow-Signature`` header value: ``sha256=`` + hex HMAC-SHA256 of ``body``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def webhook_body(row: OutboxRow) -> bytes:
    return json.dumps({"id": row.id, "event": row.event, "instance_id": row.instance_id, "task_id": row.task_id,
                       "subject": row.subject, "body": row.body, "data": row.payload,
                       "created_at": row.created_at.isoformat()}, ensure_ascii=False, sort_keys=True).encode()


def _send_webhook(row: OutboxRow, settings: Settings) -> Outcome:
    body = webhook_body(row)
    request = urllib.request.Request(row.recipient, data=body, method="POST", headers={  # noqa: S310 (configured URL)
        "Content-Type": "application/json", "X-Sopflow-Event": row.event, "X-Sopflow-Delivery": row.id,
        "X-Sopflow-Signature": sign(settings.webhook_secret, body)})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            return Outcome(200 <= response.status < 300, response.status)
    except urllib.error.HTTPError as exc:
        return Outcome(False, exc.code, f"HTTP {exc.code}")
    except (urllib.error.URLError, OSError) as exc:
        return Outcome(False, None, f"{type(exc).__name__}: {exc}"[:500])


def _send_email(row: OutboxRow, settings: Settings) -> Outcome:
    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = settings.smtp_from, row.recipient, row.subject
    message["Message-ID"] = f"<{row.id}@sopflow>"
    message.set_content(row.body)
    try:
        with smtplib.SMTP(settings.smtp_host, settings.smtp_port, timeout=10) as smtp:
            smtp.send_message(message)
        return Outcome(True)
    except (smtplib.SMTPException, OSError) as exc:
        return Outcome(False, None, f"{type(exc).__name__}: {exc}"[:500])


def _lease(db: Database, limit: int) -> list[OutboxRow]:
    now = clock.now()
    with db.transaction() as session:
        query = (select(OutboxRow).where(OutboxRow.state == "pending", OutboxRow.next_attempt_at <= now)
                 .order_by(OutboxRow.next_attempt_at, OutboxRow.id).limit(limit))
        if not db.is_sqlite:
            query = query.with_for_update(skip_locked=True)
        rows = list(session.scalars(query))
        if rows:
            session.execute(update(OutboxRow).where(OutboxRow.id.in_([r.id for r in rows]))
                            .values(next_attempt_at=now + LEASE).execution_options(synchronize_session=False))
    return rows


def backoff(attempts: int) -> timedelta:
    """Wait before the next attempt after ``attempts`` failures: 10 s, 20 s, 40 s, ... at most 1 h."""
    return timedelta(seconds=min(3600, 10 * 2 ** (attempts - 1)))


def deliver_due(db: Database, settings: Settings, *, limit: int = 20) -> int:
    """Send what is due (e-mail and webhooks); returns how many attempts were made."""
    rows = _lease(db, limit)
    for row in rows:
        outcome = _send_email(row, settings) if row.channel == "email" else _send_webhook(row, settings)
        now = clock.now()
        with db.transaction() as session:
            attempts = row.attempts + 1
            values: dict[str, Any] = {"attempts": attempts, "last_error": outcome.error}
            if outcome.ok:
                values.update(state="delivered", delivered_at=now, next_attempt_at=None)
            elif attempts >= MAX_ATTEMPTS:
                values.update(state="failed", next_attempt_at=None)
            else:
                values.update(next_attempt_at=now + backoff(attempts))
            session.execute(update(OutboxRow).where(OutboxRow.id == row.id, OutboxRow.attempts == row.attempts)
                            .values(**values).execution_options(synchronize_session=False))
            session.add(OutboxDeliveryRow(outbox_id=row.id, attempt=attempts, at=now, ok=outcome.ok,
                                          status_code=outcome.status_code, error=outcome.error))
        if not outcome.ok:
            log.warning("notification delivery failed", extra={"outbox_id": row.id, "error": outcome.error})
    return len(rows)


def list_for(session: Session, user: str, *, unread_only: bool = False, limit: int = 50) -> list[OutboxRow]:
    """A user's in-app notifications, newest first."""
    query = select(OutboxRow).where(OutboxRow.channel == "inapp", OutboxRow.recipient == user)
    if unread_only:
        query = query.where(OutboxRow.read_at.is_(None))
    return list(session.scalars(query.order_by(OutboxRow.created_at.desc(), OutboxRow.id.desc()).limit(limit)))


def mark_read(session: Session, user: str, ids: list[str]) -> int:
    """Mark the user's own in-app notifications read; returns how many changed (others' ids are ignored)."""
    from engine.store.db import rowcount

    if not ids:
        return 0
    return rowcount(session.execute(
        update(OutboxRow).where(OutboxRow.id.in_(ids), OutboxRow.channel == "inapp", OutboxRow.recipient == user,
                                OutboxRow.read_at.is_(None))
        .values(read_at=clock.now()).execution_options(synchronize_session=False)))


def mark_all_read(session: Session, user: str) -> int:
    """Mark every unread in-app notification of ``user`` read; returns how many changed."""
    from engine.store.db import rowcount

    return rowcount(session.execute(
        update(OutboxRow).where(OutboxRow.channel == "inapp", OutboxRow.recipient == user, OutboxRow.read_at.is_(None))
        .values(read_at=clock.now()).execution_options(synchronize_session=False)))


def unread_count(session: Session, user: str) -> int:
    """How many of the user's in-app notifications are unread (the pages' badge)."""
    from sqlalchemy import func

    return session.scalar(select(func.count()).select_from(OutboxRow).where(
        OutboxRow.channel == "inapp", OutboxRow.recipient == user, OutboxRow.read_at.is_(None))) or 0
