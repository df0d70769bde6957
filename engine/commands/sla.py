"""Firing SLA jobs (at risk, breach, reminder, follow-up) and the SLA reports.

A job is fired by one command in one transaction, exactly once: the command first deletes
its own ``jobs`` row (``DELETE ... WHERE id = :id AND state = 'pending'``); a second worker
that got the same job after a lease expired finds nothing to delete (on PostgreSQL it waits
on the row lock, then sees 0 rows) and does nothing. The task's ``sla_state`` moves only
forward (``on_time -> at_risk -> breached``) under a guarded UPDATE, and the audit events
go on the instance's chain with a compare-and-set on its head, so a clock moved again and
again announces each state once. A job whose task has ended just goes away.

Effects (see engine.sla for the task properties that drive them):
- ``sla_at_risk``: ``task.at_risk`` event, notification to the assignee or else the candidates.
- ``sla_breach``: ``task.breached`` event, escalation (``escalateToGroup`` re-offers the task to
  that group; ``escalateToUser`` assigns it to that user; event ``task.escalated``), and a
  notification to the assignee/candidates, the escalation's target and ``notifyOnBreach`` users.
- ``sla_reminder``: ``task.reminder`` event and notification.
- ``sla_follow_up``: at the task's follow-up date (``followUpDate``), ``task.follow_up`` event and
  a notification to the assignee or else the candidates; no SLA state changes.
"""
from __future__ import annotations

import statistics
from datetime import datetime
from typing import Any

from sqlalchemy import and_, delete, func, insert, select, update
from sqlalchemy.orm import Session

from engine import clock, notifications, projections
from engine.actor import SYSTEM, Actor
from engine.audit import Event
from engine.commands import unit
from engine.config import Settings
from engine.config import load as load_settings
from engine.errors import StaleInstance
from engine.store.db import rowcount
from engine.store.models import (
    GroupRow,
    IncidentRow,
    InstanceRow,
    JobRow,
    MembershipRow,
    TaskCandidateRow,
    TaskRow,
    UserRow,
)

_NEXT_STATE = {"sla_at_risk": ("at_risk", ("on_time",)), "sla_breach": ("breached", ("on_time", "at_risk"))}
_EVENT = {"sla_at_risk": "task.at_risk", "sla_breach": "task.breached", "sla_reminder": "task.reminder",
          "sla_follow_up": "task.follow_up"}


def task_properties(session: Session, task: TaskRow) -> dict[str, str]:
    """The extension properties of the task's element, read from the deployed (cached) spec."""
    specs = unit.specs_for(session, unit.get_definition(session, task.definition_id))
    spec_name = task.meta_key.rsplit("/", 1)[0]
    spec = specs.spec if specs.spec.name == spec_name else specs.subprocess_specs.get(spec_name)
    if spec is None:
        return {}
    for task_spec in spec.task_specs.values():
        if getattr(task_spec, "bpmn_id", None) == task.element_id:
            props = (getattr(task_spec, "extensions", None) or {}).get("properties")
            return {str(k): str(v) for k, v in props.items()} if isinstance(props, dict) else {}
    return {}


def _split(value: str | None) -> list[str]:
    return [p.strip() for p in (value or "").split(",") if p.strip()]


def _group_members(session: Session, groups: list[str]) -> list[str]:
    if not groups:
        return []
    return list(session.scalars(
        select(UserRow.name).join(MembershipRow, MembershipRow.user_id == UserRow.id)
        .join(GroupRow, GroupRow.id == MembershipRow.group_id).where(GroupRow.name.in_(groups))))


def recipients(session: Session, task: TaskRow) -> list[str]:
    """Who hears about a task: its assignee, else its candidate users and the members of its candidate groups."""
    if task.assignee:
        return [task.assignee]
    return sorted(set(task.candidate_users) | set(_group_members(session, list(task.candidate_groups))))


def _context(task: TaskRow, **extra: Any) -> dict[str, Any]:
    return {"task": {"id": task.id, "name": task.name, "element_id": task.element_id,
                     "instance_id": task.instance_id, "definition_key": task.definition_key,
                     "due_at": task.due_at.isoformat() if task.due_at else None,
                     "follow_up_at": task.follow_up_at.isoformat() if task.follow_up_at else None,
                     "assignee": task.assignee}, **extra}


def _escalate(session: Session, task: TaskRow, props: dict[str, str], actor: Actor,
              events: list[Event]) -> tuple[str | None, list[str]]:
    """Apply ``escalateToGroup``/``escalateToUser``; returns (who it went to, extra people to tell)."""
    group, user = props.get("escalateToGroup"), props.get("escalateToUser")
    if not group and not user:
        return None, []
    if user:
        values: dict[str, Any] = {"assignee": user, "claimed_at": clock.now()}
        target, told = user, [user]
    else:
        group = group or ""
        values = {"assignee": None, "claimed_at": None, "candidate_users": [], "candidate_groups": [group]}
        target, told = f"group {group}", _group_members(session, [group])
    changed = rowcount(session.execute(update(TaskRow).where(TaskRow.id == task.id, TaskRow.state == "open")
                                       .values(**values).execution_options(synchronize_session=False)))
    if changed != 1:
        raise StaleInstance("task {id} changed while it was escalated", task_id=task.id,
                            params={"id": task.id})
    if group:  # the inbox's offers follow the new candidates
        session.execute(delete(TaskCandidateRow).where(TaskCandidateRow.task_id == task.id))
        row = {"id": task.id, "state": "open", "assignee": None, "created_at": task.created_at,
               "due_at": task.due_at, "priority": task.priority, "candidate_users": [], "candidate_groups": [group]}
        session.execute(insert(TaskCandidateRow), projections.offers(row))
    else:
        projections.set_offered(session, [task.id], False)
    events.append(Event("task.escalated", actor.name, {
        "to_user": user, "to_group": None if user else group, "previous_assignee": task.assignee,
        "previous_candidate_groups": list(task.candidate_groups)}, task_id=task.id))
    return target, told


def fire_sla_job(session: Session, *, job_id: str, actor: Actor = SYSTEM, settings: Settings | None = None) -> bool:
    """Fire one SLA job (see the module docstring); returns whether it had an effect.

    False when the job is gone (fired already, by this or another worker), its task has
    ended, or the task's SLA state is already past what the job announces.
    """
    settings = settings or load_settings()
    job = session.get(JobRow, job_id)
    if job is None or job.state != "pending" or job.task_id is None:
        return False
    if rowcount(session.execute(delete(JobRow).where(JobRow.id == job_id, JobRow.state == "pending"))) != 1:
        return False  # another worker fired it first
    task = session.get(TaskRow, job.task_id, populate_existing=True)
    if task is None or task.state != "open":
        return False
    instance = session.get(InstanceRow, task.instance_id)
    if instance is None or instance.status != "running":
        return False
    seen_seq = instance.audit_seq or 0
    events: list[Event] = []
    told = recipients(session, task)
    extra: dict[str, Any] = {}
    if job.kind in _NEXT_STATE:
        new_state, before = _NEXT_STATE[job.kind]
        moved = rowcount(session.execute(
            update(TaskRow).where(TaskRow.id == task.id, TaskRow.state == "open", TaskRow.sla_state.in_(before))
            .values(sla_state=new_state).execution_options(synchronize_session=False)))
        if moved != 1:
            return False  # already announced (the state only moves forward)
    payload: dict[str, Any] = {"element_id": task.element_id, "name": task.name, "due_at": task.due_at,
                               "assignee": task.assignee}
    if job.kind == "sla_follow_up":
        payload["follow_up_at"] = task.follow_up_at
    events.append(Event(_EVENT[job.kind], actor.name, payload, task_id=task.id))
    if job.kind == "sla_breach":
        props = task_properties(session, task)
        target, more = _escalate(session, task, props, actor, events)
        told = sorted(set(told) | set(more) | set(_split(props.get("notifyOnBreach"))))
        if target:
            extra["escalated_to"] = target
    if told:
        notifications.notify(session, event=_EVENT[job.kind], users=told, context=_context(task, **extra),
                             settings=settings, instance_id=task.instance_id, task_id=task.id)
    unit.append_events(session, instance, seen_seq, events)
    return True


def retry_job(session: Session, *, incident: IncidentRow, actor: Actor) -> None:
    """Give a failed job (an incident of kind ``failed_job``) a fresh start: pending, due now, no attempts."""
    from engine.errors import Conflict

    changed = rowcount(session.execute(
        update(JobRow).where(JobRow.id == incident.job_id, JobRow.state == "failed")
        .values(state="pending", attempts=0, last_error=None, lock_owner=None, lock_expires_at=None,
                due_at=clock.now()).execution_options(synchronize_session=False)))
    if changed != 1:
        raise Conflict("the job of incident {id} is gone (its instance or task ended)",
                       incident_id=incident.id, params={"id": incident.id})
    incident.resolved_at, incident.resolved_by, incident.resolution = clock.now(), actor.name, "retried"
    projections.new_jobs_due(session, None)  # due now: the worker wakes after the commit
    instance = session.get(InstanceRow, incident.instance_id) if incident.instance_id else None
    if instance is not None:
        session.flush()
        unit.append_events(session, instance, instance.audit_seq or 0, [Event(
            "incident.resolved", actor.name, {"incident_id": incident.id, "kind": incident.kind,
                                              "resolution": "retried", "job_id": incident.job_id})])


# --------------------------------------------------------------------------- reports


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def summary(session: Session, *, since: datetime | None = None, until: datetime | None = None,
            definition_key: str | None = None) -> list[dict[str, Any]]:
    """SLA figures per (definition key, task element) for tasks with a due date.

    Done tasks (completed in ``[since, until)``): count, on-time rate (completed at or before
    due), breaches, median and p90 time to complete in seconds; plus the current open at-risk
    and breached counts (by the clock, whether or not the worker has announced them yet).
    """
    now = clock.now()
    query = select(TaskRow.definition_key, TaskRow.element_id, TaskRow.name, TaskRow.state, TaskRow.created_at,
                   TaskRow.ended_at, TaskRow.due_at, TaskRow.at_risk_at).where(TaskRow.due_at.is_not(None))
    if definition_key:
        query = query.where(TaskRow.definition_key == definition_key)
    groups: dict[tuple[str, str], dict[str, Any]] = {}
    for key, element, name, state, created, ended, due, at_risk in session.execute(query):
        g = groups.setdefault((key, element), {"definition_key": key, "element_id": element, "name": name,
                                               "done": 0, "on_time": 0, "breaches": 0, "durations": [],
                                               "open_at_risk": 0, "open_breached": 0})
        if due is None:
            continue
        if state == "completed" and ended is not None:
            if (since and ended < since) or (until and ended >= until):
                continue
            g["done"] += 1
            g["durations"].append((ended - created).total_seconds())
            if ended <= due:
                g["on_time"] += 1
            else:
                g["breaches"] += 1
        elif state == "open":
            if due <= now:
                g["open_breached"] += 1
            elif at_risk is not None and at_risk <= now:
                g["open_at_risk"] += 1
    out = []
    for g in sorted(groups.values(), key=lambda g: (g["definition_key"], g["element_id"])):
        durations = sorted(g.pop("durations"))
        g["on_time_rate"] = g["on_time"] / g["done"] if g["done"] else None
        g["median_seconds"] = statistics.median(durations) if durations else None
        g["p90_seconds"] = _percentile(durations, 90)
        out.append(g)
    return out


def breaches(session: Session, *, limit: int = 100, definition_key: str | None = None) -> list[TaskRow]:
    """Tasks past their due date: open ones now past due, and ones completed late; most overdue first."""
    now = clock.now()
    query = select(TaskRow).where(TaskRow.due_at.is_not(None), (
        and_(TaskRow.state == "open", TaskRow.due_at <= now)
        | and_(TaskRow.state == "completed", TaskRow.ended_at > TaskRow.due_at)))
    if definition_key:
        query = query.where(TaskRow.definition_key == definition_key)
    return list(session.scalars(query.order_by(TaskRow.due_at, TaskRow.id).limit(limit)))


def count_open_breached(session: Session) -> int:
    return session.scalar(select(func.count()).select_from(TaskRow).where(
        TaskRow.state == "open", TaskRow.due_at <= clock.now())) or 0


