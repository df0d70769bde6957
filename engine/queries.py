"""Read side: inbox, instances, history and audit queries, each scoped to who is asking.

These read the indexed projection tables only (never deserialize a workflow). Scoping
rules (the API adds role checks on top):
- an admin sees everything;
- an employee sees a task assigned to them, or an unassigned task they are a candidate
  for (by name or group), or an unassigned task that names no candidates at all; never a
  task assigned to someone else;
- an employee sees an instance they started or in which they are or were assignee,
  candidate or completer of a task.
Paging: ``limit`` + opaque ``cursor`` (or Camunda's ``first_result``/``max_results``);
every list answers its total.
"""
from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import and_, exists, func, or_, select
from sqlalchemy.orm import Session
from sqlalchemy.sql import Select

from engine import clock
from engine.actor import Actor
from engine.errors import Forbidden, InvalidInput, NotFound
from engine.store.models import (
    AuditEventRow,
    DefinitionRow,
    DeploymentRow,
    InstanceRow,
    TaskCandidateRow,
    TaskRow,
)

MAX_LIMIT = 500


@dataclass
class Page:
    items: list[Any]
    total: int
    next_cursor: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


MAX_OFFSET = 2**31 - 1
_CURSOR = re.compile(r"[A-Za-z0-9_-]{1,64}={0,2}")


@dataclass(frozen=True)
class Paging:
    """Where a page starts (``offset``) and how many items it holds (``limit``, 1..500).

    A cursor is what :meth:`cursor_after` issued: base64url of ``{"o": <offset>}``. It is
    validated strictly, not signed: it only carries an offset, which ``first_result`` lets
    any client choose anyway, so a signature would protect nothing. Anything else (bad
    base64, other JSON, other keys, a non-integer, a float such as ``1e400``, a negative
    or too large offset) is a 422 naming ``cursor``.
    """

    offset: int = 0
    limit: int = 50

    @classmethod
    def parse(cls, *, limit: int | None = None, cursor: str | None = None, first_result: int | None = None,
              max_results: int | None = None) -> Paging:
        size = max_results if max_results is not None else (limit if limit is not None else 50)
        if size < 1 or size > MAX_LIMIT:
            raise InvalidInput(f"limit must be between 1 and {MAX_LIMIT}", field="limit")
        offset = first_result or 0
        if offset < 0 or offset > MAX_OFFSET:
            raise InvalidInput(f"first_result must be between 0 and {MAX_OFFSET}", field="first_result")
        if cursor:
            offset = _cursor_offset(cursor)
        return cls(offset, size)

    def cursor_after(self, returned: int, total: int) -> str | None:
        nxt = self.offset + returned
        if returned < self.limit or nxt >= total:
            return None
        return base64.urlsafe_b64encode(json.dumps({"o": nxt}).encode()).decode()


def _cursor_offset(cursor: str) -> int:
    refused = InvalidInput("cursor is not one this server issued (pass next_cursor from the previous page "
                           "unchanged)", field="cursor")
    if not _CURSOR.fullmatch(cursor):
        raise refused
    try:
        data = json.loads(base64.b64decode(cursor.encode("ascii"), altchars=b"-_", validate=True),
                          parse_float=lambda _: None, parse_constant=lambda _: None)
    except (ValueError, binascii.Error):
        raise refused from None
    if not isinstance(data, dict) or set(data) != {"o"}:
        raise refused
    offset = data["o"]
    if type(offset) is not int or not 0 <= offset <= MAX_OFFSET:
        raise refused
    return offset


def _aware(value: datetime, name: str) -> datetime:
    """A filter instant in UTC; one without a time zone is refused (it would be read in some unknown zone)."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise InvalidInput(f"{name} needs a time zone (e.g. 2026-01-01T00:00:00Z)", field=name)
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise InvalidInput(f"{name} is out of range once converted to UTC", field=name) from None


def _page(session: Session, query: Select[Any], paging: Paging, *, scalars: bool = True) -> Page:
    total = session.scalar(select(func.count()).select_from(query.order_by(None).subquery())) or 0
    rows = session.execute(query.offset(paging.offset).limit(paging.limit))
    items = list(rows.scalars() if scalars else rows)
    return Page(items, total, paging.cursor_after(len(items), total))


# ------------------------------------------------------------------ tasks


def _candidate_of(actor: Actor) -> Any:
    return exists().where(
        TaskCandidateRow.task_id == TaskRow.id,
        or_(and_(TaskCandidateRow.kind == "user", TaskCandidateRow.name == actor.name),
            and_(TaskCandidateRow.kind == "group", TaskCandidateRow.name.in_(sorted(actor.groups)))),
    )


def _no_candidates() -> Any:
    return ~exists().where(TaskCandidateRow.task_id == TaskRow.id)


def task_scope(actor: Actor) -> Any:
    if actor.is_admin:
        return True
    return or_(
        TaskRow.assignee == actor.name,
        TaskRow.completed_by == actor.name,
        and_(TaskRow.assignee.is_(None), or_(_candidate_of(actor), _no_candidates())),
    )


@dataclass
class TaskFilter:
    state: str = "open"
    assignee: str | None = None
    candidate_user: str | None = None
    candidate_group: str | None = None
    include_assigned: bool = False
    unassigned: bool | None = None
    process_instance_id: str | None = None
    definition_key: str | None = None
    due_before: datetime | None = None
    due_after: datetime | None = None
    follow_up_before: datetime | None = None
    min_priority: int | None = None
    sla: str | None = None
    sort: str = "created"
    order: str = "asc"


SORTS = {"due": TaskRow.due_at, "priority": TaskRow.priority, "created": TaskRow.created_at}


def _task_query(actor: Actor, f: TaskFilter) -> Select[Any]:
    query = select(TaskRow).where(task_scope(actor))
    if f.state != "all":
        if f.state not in ("open", "completed", "cancelled"):
            raise InvalidInput("state must be open, completed, cancelled or all", field="state")
        query = query.where(TaskRow.state == f.state)
    if f.assignee:
        query = query.where(TaskRow.assignee == (actor.name if f.assignee == "me" else f.assignee))
    candidate = []
    if f.candidate_user:
        name = actor.name if f.candidate_user == "me" else f.candidate_user
        candidate.append(exists().where(TaskCandidateRow.task_id == TaskRow.id, TaskCandidateRow.kind == "user",
                                        TaskCandidateRow.name == name))
    if f.candidate_group:
        candidate.append(exists().where(TaskCandidateRow.task_id == TaskRow.id, TaskCandidateRow.kind == "group",
                                        TaskCandidateRow.name == f.candidate_group))
    if candidate:
        query = query.where(*candidate)
        if not f.include_assigned:
            query = query.where(TaskRow.assignee.is_(None))
    if f.unassigned is True:
        query = query.where(TaskRow.assignee.is_(None))
    elif f.unassigned is False:
        query = query.where(TaskRow.assignee.is_not(None))
    if f.process_instance_id:
        query = query.where(TaskRow.instance_id == f.process_instance_id)
    if f.definition_key:
        query = query.where(TaskRow.definition_key == f.definition_key)
    if f.due_before:
        query = query.where(TaskRow.due_at < _aware(f.due_before, "due_before"))
    if f.due_after:
        query = query.where(TaskRow.due_at > _aware(f.due_after, "due_after"))
    if f.follow_up_before:
        query = query.where(TaskRow.follow_up_at < _aware(f.follow_up_before, "follow_up_before"))
    if f.min_priority is not None:
        query = query.where(TaskRow.priority >= f.min_priority)
    if f.sla:
        now = clock.now()
        if f.sla == "breached":
            query = query.where(TaskRow.due_at <= now)
        elif f.sla == "at_risk":
            query = query.where(TaskRow.at_risk_at <= now, TaskRow.due_at > now)
        elif f.sla == "on_time":
            query = query.where(or_(TaskRow.due_at.is_(None), TaskRow.at_risk_at > now))
        else:
            raise InvalidInput("sla must be on_time, at_risk or breached", field="sla")
    if f.sort not in SORTS:
        raise InvalidInput(f"sort must be one of {', '.join(SORTS)}", field="sort")
    if f.order not in ("asc", "desc"):
        raise InvalidInput("order must be asc or desc", field="order")
    column = SORTS[f.sort]
    ordering = column.desc() if f.order == "desc" else column.asc()
    # tasks without a due date sort last either way; the id keeps pages stable
    return query.order_by(column.is_(None), ordering, TaskRow.id)


def list_tasks(session: Session, actor: Actor, f: TaskFilter, paging: Paging) -> Page:
    return _page(session, _task_query(actor, f), paging)


def count_tasks(session: Session, actor: Actor, f: TaskFilter) -> int:
    return session.scalar(select(func.count()).select_from(_task_query(actor, f).order_by(None).subquery())) or 0


def sla_state(task: TaskRow, now: datetime | None = None) -> str | None:
    if task.due_at is None or task.state != "open":
        return None
    now = now or clock.now()
    if task.due_at <= now:
        return "breached"
    if task.at_risk_at is not None and task.at_risk_at <= now:
        return "at_risk"
    return "on_time"


def visible_task(session: Session, actor: Actor, task_id: str) -> TaskRow:
    # out of scope reads as absent: an employee must not learn that someone else's task exists
    task = session.scalar(select(TaskRow).where(TaskRow.id == task_id, task_scope(actor)))
    if task is None:
        raise NotFound(f"task {task_id} not found", task_id=task_id)
    return task


# ------------------------------------------------------------------ instances


def instance_scope(actor: Actor) -> Any:
    if actor.is_admin or "auditor" in actor.roles:
        return True
    involved = select(TaskRow.instance_id).where(or_(
        TaskRow.assignee == actor.name, TaskRow.completed_by == actor.name, _candidate_of(actor)))
    return or_(InstanceRow.started_by == actor.name, InstanceRow.id.in_(involved))


@dataclass
class InstanceFilter:
    definition_key: str | None = None
    status: str | None = None
    business_key: str | None = None
    started_by: str | None = None
    started_before: datetime | None = None
    started_after: datetime | None = None
    variables: dict[str, Any] = field(default_factory=dict)


def _instance_query(actor: Actor, f: InstanceFilter) -> Select[Any]:
    query = select(InstanceRow).where(instance_scope(actor))
    if f.definition_key:
        query = query.where(InstanceRow.definition_key == f.definition_key)
    if f.status:
        if f.status not in ("running", "completed", "cancelled"):
            raise InvalidInput("status must be running, completed or cancelled", field="status")
        query = query.where(InstanceRow.status == f.status)
    if f.business_key:
        query = query.where(InstanceRow.business_key == f.business_key)
    if f.started_by:
        query = query.where(InstanceRow.started_by == f.started_by)
    if f.started_before:
        query = query.where(InstanceRow.started_at < _aware(f.started_before, "started_before"))
    if f.started_after:
        query = query.where(InstanceRow.started_at > _aware(f.started_after, "started_after"))
    return query.order_by(InstanceRow.started_at.desc(), InstanceRow.id)


def _variable_equals(name: str, value: Any) -> Any:
    """``variables[name] == value`` in SQL, typed by the value (JSON paths on SQLite and PostgreSQL)."""
    element = InstanceRow.variables[name]
    if isinstance(value, bool):
        return element.as_boolean() == value
    if isinstance(value, int):
        if not -(2**63) <= value < 2**63:
            raise InvalidInput(f"variable filter '{name}' compares with a number out of range", field="variable")
        return element.as_integer() == value
    if isinstance(value, float):
        return element.as_float() == value
    if isinstance(value, str):
        return element.as_string() == value
    if value is None:  # JSON null and a missing variable both read as SQL NULL
        return element.as_string().is_(None)
    raise InvalidInput(f"variable filter '{name}' must compare with a string, number, boolean or null",
                       field="variable")


def list_instances(session: Session, actor: Actor, f: InstanceFilter, paging: Paging) -> Page:
    query = _instance_query(actor, f)
    for name, value in f.variables.items():
        if not name.isidentifier():
            raise InvalidInput(f"'{name}' is not a variable name", field="variable")
        query = query.where(_variable_equals(name, value))
    return _page(session, query, paging)


def visible_instance(session: Session, actor: Actor, instance_id: str) -> InstanceRow:
    row = session.scalar(select(InstanceRow).where(InstanceRow.id == instance_id, instance_scope(actor)))
    if row is None:
        raise NotFound(f"process instance {instance_id} not found", instance_id=instance_id)
    return row


def instance_tasks(session: Session, instance_id: str, *, state: str | None = "open") -> list[TaskRow]:
    query = select(TaskRow).where(TaskRow.instance_id == instance_id)
    if state:
        query = query.where(TaskRow.state == state)
    return list(session.scalars(query.order_by(TaskRow.created_revision, TaskRow.created_at, TaskRow.id)))


# ------------------------------------------------------------------ definitions


def list_definitions(session: Session, *, key: str | None, latest: bool, paging: Paging) -> Page:
    query = select(DefinitionRow)
    if key:
        query = query.where(DefinitionRow.key == key)
    if latest:
        newest = select(DefinitionRow.key, func.max(DefinitionRow.version).label("v")).group_by(
            DefinitionRow.key).subquery()
        query = query.join(newest, and_(newest.c.key == DefinitionRow.key, newest.c.v == DefinitionRow.version))
    return _page(session, query.order_by(DefinitionRow.key, DefinitionRow.version.desc()), paging)


def list_deployments(session: Session, paging: Paging) -> Page:
    return _page(session, select(DeploymentRow).order_by(DeploymentRow.deployed_at.desc(), DeploymentRow.id), paging)


# ------------------------------------------------------------------ history and audit


@dataclass
class AuditFilter:
    actor: str | None = None
    action: str | None = None
    instance_id: str | None = None
    definition_key: str | None = None
    since: datetime | None = None
    until: datetime | None = None


def _audit_query(f: AuditFilter) -> Select[Any]:
    query = select(AuditEventRow)
    if f.actor:
        query = query.where(AuditEventRow.actor == f.actor)
    if f.action:
        query = query.where(AuditEventRow.action == f.action)
    if f.instance_id:
        query = query.where(AuditEventRow.chain == f.instance_id)  # an instance's chain is its id
    if f.definition_key:
        query = query.where(AuditEventRow.definition_key == f.definition_key)
    if f.since:
        query = query.where(AuditEventRow.occurred_at >= _aware(f.since, "from"))
    if f.until:
        query = query.where(AuditEventRow.occurred_at < _aware(f.until, "to"))
    return query.order_by(AuditEventRow.seq)


def list_audit(session: Session, actor: Actor, f: AuditFilter, paging: Paging) -> Page:
    _require_audit_reader(actor)
    return _page(session, _audit_query(f), paging)


def audit_batch(session: Session, actor: Actor, f: AuditFilter, *, after: int = 0,
                batch: int = 1000) -> list[AuditEventRow]:
    """Up to ``batch`` matching events with ``seq > after``, in order (one keyset page of an export)."""
    _require_audit_reader(actor)
    return list(session.scalars(_audit_query(f).where(AuditEventRow.seq > after).limit(batch)))


def iter_audit(session: Session, actor: Actor, f: AuditFilter, batch: int = 1000, *,
               after: int = 0) -> Iterator[AuditEventRow]:
    """Every matching event with ``seq > after``, in order, fetched in keyset batches (for streaming exports)."""
    _require_audit_reader(actor)
    last = after
    while True:
        rows = list(session.scalars(_audit_query(f).where(AuditEventRow.seq > last).limit(batch)))
        yield from rows
        if len(rows) < batch:
            return
        last = rows[-1].seq


def _require_audit_reader(actor: Actor) -> None:
    if not (actor.is_admin or "auditor" in actor.roles):
        raise Forbidden("reading the audit trail needs the auditor or admin role")


def event_dict(row: AuditEventRow) -> dict[str, Any]:
    return {
        "id": row.seq, "seq": row.seq, "chain": row.chain, "chain_seq": row.chain_seq,
        "occurred_at": row.occurred_at.isoformat(), "actor": row.actor, "action": row.action,
        "instance_id": row.instance_id, "task_id": row.task_id, "definition_id": row.definition_id,
        "definition_key": row.definition_key, "definition_version": row.definition_version,
        "payload": json.loads(row.payload), "prev_hash": row.prev_hash, "hash": row.hash,
    }


def timeline(session: Session, actor: Actor, instance_id: str) -> dict[str, Any]:
    """The instance's history: every audit event of its chain, with the user tasks' records."""
    instance = visible_instance(session, actor, instance_id)
    events = [event_dict(e) for e in session.scalars(
        select(AuditEventRow).where(AuditEventRow.chain == instance_id).order_by(AuditEventRow.chain_seq))]
    return {"instance": instance, "events": events, "tasks": instance_tasks(session, instance_id, state=None)}


def task_detail(session: Session, actor: Actor, task_id: str) -> dict[str, Any]:
    """A task with what its performer needs: the SOP text rendered, the form, the data it shows."""
    from engine import forms

    task = visible_task(session, actor, task_id)
    meta = (session.scalar(select(DefinitionRow.user_tasks).where(DefinitionRow.id == task.definition_id))
            or {}).get(task.meta_key) or {}
    variables = session.scalar(select(InstanceRow.variables).where(InstanceRow.id == task.instance_id)) or {}
    form = forms.form_for(task.form_key, meta.get("form_fields"))
    if form is None:
        shown = dict(variables)
    else:
        names = form.get("shows") or list(form["schema"].get("properties", {}))
        shown = {k: variables[k] for k in names if k in variables}
    return {
        "task": task,
        "documentation": meta.get("documentation"),
        "sop": forms.render_sop(meta.get("documentation"), variables, task.element_id),
        "form": None if form is None else {"title": form.get("title"), "schema": form["schema"],
                                           "ui": form.get("ui")},
        "data": shown,
    }


def may_act_on(session: Session, actor: Actor, task_id: str) -> bool:
    """May ``actor`` issue commands on this task (the engine then applies the task's own rules)?"""
    if actor.is_admin:
        return True
    related = or_(task_scope(actor), _candidate_of(actor))
    return session.scalar(select(TaskRow.id).where(TaskRow.id == task_id, related)) is not None


def task_exists(session: Session, task_id: str) -> bool:
    return session.scalar(select(TaskRow.id).where(TaskRow.id == task_id)) is not None
