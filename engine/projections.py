"""Projections of a workflow's state into queryable tables, re-synced by every command.

- ``tasks`` (+ ``task_candidates``): one row per user task that became READY; open rows
  that are no longer READY become ``cancelled`` (boundary interrupt, instance cancel)
  unless the command completed them. Metadata (assignee, candidates, due date, priority)
  is resolved once, when the row is created, against the task's data.
- ``jobs``: one row per waiting timer, ``due_at`` from SpiffWorkflow's own timer value.
- ``event_subscriptions``: one row per waiting message catch event and message name, with
  the correlation values the catch requires (``None``: any message of that name).
- ``external_tasks``: one row per service/send/business-rule task that waits for an
  external worker (see :func:`sync_external_tasks`).

Invariant: after every command these tables match the workflow exactly; user queries
read them and never deserialize a workflow.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from SpiffWorkflow.bpmn import BpmnWorkflow
from SpiffWorkflow.bpmn.specs.event_definitions.message import MessageEventDefinition
from SpiffWorkflow.bpmn.specs.event_definitions.multiple import MultipleEventDefinition
from SpiffWorkflow.bpmn.specs.event_definitions.timer import TimerEventDefinition
from SpiffWorkflow.task import Task
from SpiffWorkflow.util.task import TaskState
from sqlalchemy import bindparam, delete, insert, select, update
from sqlalchemy.orm import Session

from engine import audit, clock, limits, sla, variables
from engine.audit import Event, canonical
from engine.errors import Phrase, ScriptError
from engine.external import ExternalTaskMixin, is_waiting_external
from engine.ids import time_ordered_id
from engine.loading import UserTaskMeta, duration_from
from engine.message_events import expected_correlations
from engine.sandbox import ScriptRefused, script_engine
from engine.store.models import (
    ExternalTaskRow,
    IncidentRow,
    InstanceRecord,
    JobRow,
    SubscriptionRow,
    TaskCandidateRow,
    TaskRow,
)

# A task is "at risk" once this share of the time between its creation and its due date has passed
# (the default of SOPFLOW_SLA_AT_RISK_FRACTION; a task's atRiskFraction property overrides it: engine.sla).
AT_RISK_FRACTION = 0.75
# Sane bounds for what a diagram computes (engine.limits has the data bounds): a priority is
# a 32-bit integer (Camunda's), and due and follow-up dates lie within 100 years of the task's
# creation. Literal values are checked at deploy (engine.loading), computed ones here.
PRIORITY_MIN, PRIORITY_MAX = -(2**31), 2**31 - 1
DATE_HORIZON = timedelta(days=36525)


_INSERT_TASKS = insert(TaskRow)
_INSERT_CANDIDATES = insert(TaskCandidateRow)
_INSERT_JOBS = insert(JobRow)
NEW_JOBS = "sopflow_new_jobs"  # session.info: this commit scheduled jobs; see new_jobs_due (engine.worker wakes)
_EMPTY_TASK_ROW: dict[str, Any] = {c.name: None for c in TaskRow.__table__.columns}  # one executemany shape


def new_jobs_due(session: Session, due: datetime | None) -> None:
    """Note on ``session`` that its commit schedules a job due at ``due`` (``None``: due now or unknown).

    ``session.info[NEW_JOBS]`` keeps the earliest due time of the transaction's new jobs (or
    ``True`` when one has none); after the commit the job worker is woken only if that is
    earlier than the end of its planned sleep (:func:`engine.worker.wake`).
    """
    noted = session.info.get(NEW_JOBS)
    if due is None or noted is True:
        session.info[NEW_JOBS] = True
        return
    due = due.astimezone(UTC) if due.tzinfo else due.replace(tzinfo=UTC)
    session.info[NEW_JOBS] = due if not isinstance(noted, datetime) else min(noted, due)


def meta_key(task: Task) -> str:
    return f"{task.workflow.spec.name}/{task.task_spec.bpmn_id}"


def _expression(value: str) -> str | None:
    text = value.strip()
    return text[2:-1].strip() if text.startswith("${") and text.endswith("}") else None


def _evaluate(task: Task, expression: str, initiator: str | None, what: str) -> Any:
    context = {**task.data, "initiator": initiator}
    try:
        return script_engine().environment.evaluate(expression, context)
    except (ScriptRefused, Exception) as exc:  # noqa: BLE001 - any failure is the diagram's, reported as such
        raise ScriptError(
            "user task '{bpmn_id}': the {what} expression '{expression}' failed: {exc}",
            element_id=task.task_spec.bpmn_id,
            params={"bpmn_id": task.task_spec.bpmn_id, "what": what, "expression": expression, "exc": exc},
        ) from None


def _instant(value: Any, base: datetime, task: Task, what: str) -> datetime | None:
    """A due/follow-up value (datetime, date, timedelta, ISO duration or instant) as a UTC instant.

    Refused (ScriptError naming the element) when unreadable or more than
    :data:`DATE_HORIZON` away from ``base`` (the task's creation).
    """
    try:
        instant = _parse_instant(value, base, task, what)
        in_range = instant is None or base - DATE_HORIZON <= instant <= base + DATE_HORIZON
    except (OverflowError, ValueError, TypeError):  # e.g. P99999999999D overflows datetime arithmetic
        in_range = False
    if not in_range:
        raise ScriptError(
            "user task '{bpmn_id}': {what} '{value}' is more than 100 years away "
            "from the task's creation", element_id=task.task_spec.bpmn_id,
            params={"bpmn_id": task.task_spec.bpmn_id, "what": what, "value": str(value)[:100]},
        )
    return instant


def _parse_instant(value: Any, base: datetime, task: Task, what: str) -> datetime | None:
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    if isinstance(value, timedelta):
        return base + value
    text = str(value).strip()
    try:
        if text.startswith(("P", "-P")):
            return duration_from(text, base)
        parsed_dt = datetime.fromisoformat(text)
        return parsed_dt.astimezone(UTC) if parsed_dt.tzinfo else parsed_dt.replace(tzinfo=UTC)
    except (ValueError, TypeError):
        raise ScriptError(
            "user task '{bpmn_id}': {what} '{text}' is not an ISO 8601 duration or instant",
            element_id=task.task_spec.bpmn_id,
            params={"bpmn_id": task.task_spec.bpmn_id, "what": what, "text": text},
        ) from None


def _resolve(task: Task, raw: str | None, initiator: str | None, what: str) -> Any:
    if raw is None:
        return None
    expr = _expression(raw)
    return _evaluate(task, expr, initiator, what) if expr is not None else raw


def _names(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, (list, tuple, set)):
        return [str(v).strip() for v in value if str(v).strip()]
    return [p.strip() for p in str(value).split(",") if p.strip()]


# The longest user name (users.name) and group/candidate name (task_candidates.name) stored.
ASSIGNEE_MAX, CANDIDATE_MAX = 100, 200

# What a refusal of a computed task field calls the field (translated on the pages), built once.
_ASSIGNEE, _PRIORITY = Phrase("assignee"), Phrase("priority")
_CANDIDATE_USERS, _CANDIDATE_USER = Phrase("candidate users"), Phrase("candidate user")
_CANDIDATE_GROUPS, _CANDIDATE_GROUP = Phrase("candidate groups"), Phrase("candidate group")
_DUE_DATE, _FOLLOW_UP_DATE = Phrase("due date"), Phrase("follow-up date")


def _checked_names(names: list[str], task: Task, what: str, limit: int) -> list[str]:
    """``names`` when each is valid Unicode text of at most ``limit`` characters, else a
    ScriptError naming the user task (a computed name is stored and indexed as it is)."""
    for name in names:
        if len(name) > limit or not limits.valid_text(name):
            why = (Phrase("is longer than {limit} characters", limit=limit) if len(name) > limit
                   else Phrase("is not valid Unicode text (it holds a lone surrogate)"))
            raise ScriptError("user task '{bpmn_id}': the {what} {value!r} {why}",
                              element_id=task.task_spec.bpmn_id,
                              params={"bpmn_id": task.task_spec.bpmn_id, "what": what, "value": name[:60], "why": why})
    return names


def new_task_row(task: Task, meta: UserTaskMeta, instance: InstanceRecord, now: datetime,
                 revision: int, *, at_risk_fraction: float = AT_RISK_FRACTION) -> dict[str, Any]:
    """The ``tasks`` row (column values) for a user task that became READY now.

    Raises ScriptError (422 naming the user task) when a computed value cannot be stored:
    a priority outside 32 bits, a date more than 100 years away, an assignee or candidate
    name that is not valid Unicode or longer than its column. Its SLA fields (``due_at`` from
    ``dueDate`` or a ``businessDue`` property, ``at_risk_at``, ``sla_state``) follow
    :func:`engine.sla.due_and_at_risk`.
    """
    initiator = instance.started_by
    assignee = _resolve(task, meta.assignee, initiator, _ASSIGNEE)
    if assignee not in (None, ""):
        _checked_names([str(assignee)], task, _ASSIGNEE, ASSIGNEE_MAX)
    users = _checked_names([n for raw in meta.candidate_users
                            for n in _names(_resolve(task, raw, initiator, _CANDIDATE_USERS))],
                           task, _CANDIDATE_USER, CANDIDATE_MAX)
    groups = _checked_names([n for raw in meta.candidate_groups
                             for n in _names(_resolve(task, raw, initiator, _CANDIDATE_GROUPS))],
                            task, _CANDIDATE_GROUP, CANDIDATE_MAX)
    priority_raw = _resolve(task, meta.priority, initiator, _PRIORITY)
    try:
        priority = int(priority_raw) if priority_raw not in (None, "") else 50
    except (TypeError, ValueError, OverflowError):
        raise ScriptError("user task '{element_id}': priority '{value}' is not a number",
                          element_id=meta.element_id,
                          params={"element_id": meta.element_id, "value": str(priority_raw)[:100]}) from None
    if not PRIORITY_MIN <= priority <= PRIORITY_MAX:
        raise ScriptError("user task '{element_id}': priority {value} is outside "
                          "{priority_min}..{priority_max} (a 32-bit integer)", element_id=meta.element_id,
                          params={"element_id": meta.element_id, "value": str(priority)[:40], "priority_min": PRIORITY_MIN, "priority_max": PRIORITY_MAX})
    due_at, at_risk_at = sla.due_and_at_risk(
        sla.task_properties(task), _instant(_resolve(task, meta.due_date, initiator, _DUE_DATE), now, task, _DUE_DATE),
        now, at_risk_fraction, meta.element_id)
    return {
        **_EMPTY_TASK_ROW,
        "id": str(task.id), "instance_id": instance.id, "definition_id": instance.definition_id,
        "definition_key": instance.definition_key, "element_id": meta.element_id, "meta_key": meta_key(task),
        "name": meta.name, "lane": meta.lane, "state": "open",
        "assignee": str(assignee) if assignee not in (None, "") else None,
        "candidate_users": sorted(set(users)), "candidate_groups": sorted(set(groups)),
        "form_key": meta.form_key, "priority": priority, "due_at": due_at,
        "at_risk_at": at_risk_at, "sla_state": "on_time" if due_at is not None else None,
        "follow_up_at": _instant(_resolve(task, meta.follow_up_date, initiator, _FOLLOW_UP_DATE), now, task,
                                 _FOLLOW_UP_DATE),
        "created_at": now, "created_revision": revision,
        "local_variables": variables.as_json(variables.own_scope(task)) or None,
    }


def sync_tasks(session: Session, instance: InstanceRecord, workflow: BpmnWorkflow, user_tasks: dict[str, Any],
               events: list[Event], actor: str | None, *, revision: int, completed: str | None = None,
               held: list[tuple[Any, Any]], at_risk_fraction: float = AT_RISK_FRACTION) -> list[str]:
    """Re-sync the instance's task rows; returns the ids of its open tasks.

    A new task with a due date also gets its SLA jobs (engine.sla.job_rows), held likewise.

    ``instance.open_task_ids`` (stored with the instance, under its revision) says which
    rows are open, so nothing is queried unless a task has to be closed. Nothing is written
    here: the closing UPDATE and the inserts of new rows go to ``held``, which the caller
    runs once the instance row is written (and so after every expression is evaluated).
    """
    now = clock.now()
    ready = {str(t.id): t for t in workflow.get_tasks(state=TaskState.READY, manual=True)}
    known = set(instance.open_task_ids or [])
    gone = sorted(known - set(ready) - {completed})
    if gone:
        for task_id, element_id, name in session.execute(
                select(TaskRow.id, TaskRow.element_id, TaskRow.name).where(TaskRow.id.in_(gone))):
            events.append(Event("task.cancelled", actor, {"element_id": element_id, "name": name}, task_id=task_id))
        held.append((update(TaskRow).where(TaskRow.id.in_(gone), TaskRow.state == "open")
                     .values(state="cancelled", ended_at=now), {}))
        held.append((_SET_OFFERED.values(offered=False), {"b_ids": gone}))
    created: list[dict[str, Any]] = []
    sla_jobs: list[dict[str, Any]] = []
    for task_id, task in ready.items():
        if task_id in known:
            continue
        meta_dict = user_tasks.get(meta_key(task))
        meta = UserTaskMeta.from_dict(meta_dict) if meta_dict else UserTaskMeta(
            element_id=task.task_spec.bpmn_id, name=task.task_spec.bpmn_name or task.task_spec.bpmn_id)
        row = new_task_row(task, meta, instance, now, revision, at_risk_fraction=at_risk_fraction)
        created.append(row)
        if row["due_at"] is not None or row["follow_up_at"] is not None:
            sla_jobs.extend(sla.job_rows(row, sla.task_properties(task), now))
        events.append(Event("task.created", actor, {
            "element_id": row["element_id"], "name": row["name"], "assignee": row["assignee"],
            "candidate_users": row["candidate_users"], "candidate_groups": row["candidate_groups"],
            "due_at": row["due_at"], "priority": row["priority"],
        }, task_id=row["id"]))
    if created:
        held.append((_INSERT_TASKS, created))
        held.append((_INSERT_CANDIDATES, [offer for r in created for offer in offers(r)]))
    if sla_jobs:
        held.append((_INSERT_JOBS, sla_jobs))
        for job in sla_jobs:
            new_jobs_due(session, job["due_at"])
    return sorted(ready)


def offers(task: dict[str, Any]) -> list[dict[str, Any]]:
    """The ``task_candidates`` rows (the inbox's offers) of a new ``tasks`` row given as column values.

    One per candidate user and group, or one ``anyone`` row when the task names none (any
    employee may take it); each carries the task's sort keys and whether it is on offer
    (open and unassigned).
    """
    keys = {"task_id": task["id"], "offered": task["state"] == "open" and task["assignee"] is None,
            "created_at": task["created_at"], "due_at": task["due_at"], "priority": task["priority"]}
    named = [("user", n) for n in task["candidate_users"]] + [("group", n) for n in task["candidate_groups"]]
    return [{**keys, "kind": kind, "name": name} for kind, name in (named or [("anyone", "*")])]


_SET_OFFERED = update(TaskCandidateRow).where(TaskCandidateRow.task_id.in_(bindparam("b_ids", expanding=True)))
# built once, run on the connection: no statement to build and no ORM bulk-update step per command
_SET_OFFERED_TO = {flag: _SET_OFFERED.values(offered=flag) for flag in (True, False)}


def set_offered(session: Session, task_ids: list[str], offered: bool) -> None:
    """Keep ``task_candidates.offered`` equal to "open and unassigned" after a task's state or assignee changed.

    Every command that claims, unclaims, assigns, completes or cancels a task calls this in
    the same transaction; the inbox's offer branches read only offered rows.
    """
    if task_ids:
        session.flush()  # what the session's autoflush did: pending ORM writes first, in the same order
        session.connection().execute(_SET_OFFERED_TO[offered], {"b_ids": list(task_ids)})


def _timer_due(task: Task) -> datetime | None:
    ed = task.task_spec.event_definition
    if not isinstance(ed, TimerEventDefinition) and not (
        isinstance(ed, MultipleEventDefinition)
        and any(isinstance(e, TimerEventDefinition) for e in ed.event_definitions)
    ):
        return None
    value = task.internal_data.get("event_value")
    if isinstance(value, dict):
        if value.get("cycles") == 0:
            return None
        value = value.get("next")
    if not value:
        return None
    return clock.parse_instant(value)


def message_definitions_of(task_spec: Any) -> list[MessageEventDefinition]:
    """The message definitions an event spec catches or throws (several for a multiple event)."""
    ed = getattr(task_spec, "event_definition", None)
    defs = ed.event_definitions if isinstance(ed, MultipleEventDefinition) else [ed]
    return [d for d in defs if isinstance(d, MessageEventDefinition)]


def _message_definitions(task: Task) -> list[MessageEventDefinition]:
    return message_definitions_of(task.task_spec)


def message_names(task: Task) -> list[str]:
    return [d.name for d in _message_definitions(task)]


def message_definition(task: Task, name: str) -> MessageEventDefinition:
    return next(d for d in _message_definitions(task) if d.name == name)


def waiting_events(workflow: BpmnWorkflow) -> list[Task]:
    return [t for t in workflow.event_manager.tasks.values() if t.state == TaskState.WAITING]


def waiting_timers(workflow: BpmnWorkflow) -> list[Task]:
    """The workflow's WAITING timer tasks that have a due instant (those :func:`sync_waits` keeps a job for).

    Includes the timers of sub-workflows and multiple events with a timer definition.
    """
    return [t for t in waiting_events(workflow) if _timer_due(t) is not None]


def sync_waits(session: Session, instance: InstanceRecord, workflow: BpmnWorkflow, events: list[Event],
               actor: str | None) -> int:
    """Re-sync timer jobs and message subscriptions; returns how many rows the instance now has.

    ``instance.waits`` (stored under the revision) lets an instance that waits for nothing
    skip the queries altogether.
    """
    waiting = waiting_events(workflow)
    if not waiting and not instance.waits:
        return 0
    return _sync_jobs(session, instance, waiting, events, actor) + _sync_subscriptions(
        session, instance, waiting, query=spec_features(workflow).messages)


def _sync_jobs(session: Session, instance: InstanceRecord, waiting: list[Task], events: list[Event],
               actor: str | None) -> int:
    now = clock.now()
    desired: dict[str, tuple[datetime, Task]] = {}
    for task in waiting:
        due = _timer_due(task)
        if due is not None:
            desired[f"timer:{instance.id}:{task.id}"] = (due, task)
    existing = {} if not instance.waits else {  # timer jobs only: SLA jobs follow their task (engine.sla)
        j.dedup_key: j for j in session.scalars(select(JobRow).where(JobRow.instance_id == instance.id,
                                                                      JobRow.kind == "timer"))}
    for key, job in existing.items():
        if key not in desired:
            session.delete(job)
        elif job.due_at != desired[key][0]:
            job.due_at, job.attempts, job.last_error, job.state = desired[key][0], 0, None, "pending"
            new_jobs_due(session, job.due_at)
            job.lock_owner = job.lock_expires_at = None
            events.append(Event("timer.scheduled", actor, {"element_id": job.element_id, "due_at": job.due_at},
                                task_id=job.task_id))
    for key, (due, task) in desired.items():
        if key in existing:
            continue
        new_jobs_due(session, due)
        session.add(JobRow(id=time_ordered_id(), dedup_key=key, kind="timer", instance_id=instance.id,
                           task_id=str(task.id), element_id=task.task_spec.bpmn_id, due_at=due,
                           state="pending", attempts=0, created_at=now))
        events.append(Event("timer.scheduled", actor, {"element_id": task.task_spec.bpmn_id, "due_at": due},
                            task_id=str(task.id)))
    return len(desired)


def _subscriptions_of(waiting: list[Task]) -> list[tuple[Task, str, dict[str, Any] | None]]:
    found = []
    for task in waiting:
        for definition in _message_definitions(task):
            expected = expected_correlations(task, definition)
            found.append((task, definition.name, json.loads(canonical(expected)) if expected else None))
    return found


def _sync_subscriptions(session: Session, instance: InstanceRecord, waiting: list[Task], *, query: bool = True) -> int:
    desired = {(str(task.id), name): (task, expected) for task, name, expected in _subscriptions_of(waiting)}
    existing = {} if not instance.waits or not query else {
        (s.task_id, s.name): s
        for s in session.scalars(select(SubscriptionRow).where(SubscriptionRow.instance_id == instance.id))}
    for key, row in existing.items():
        if key not in desired:
            session.delete(row)
        elif row.correlations != desired[key][1]:  # the instance's correlation values changed while it waits
            row.correlations = desired[key][1]
    for (task_id, name), (task, expected) in desired.items():
        if (task_id, name) not in existing:
            session.add(SubscriptionRow(task_id=task_id, name=name, instance_id=instance.id, kind="message",
                                        element_id=task.task_spec.bpmn_id, correlations=expected))
    return len(desired)


_CLEAR_JOBS = delete(JobRow).where(JobRow.instance_id == bindparam("b_id"))
_CLEAR_SUBSCRIPTIONS = delete(SubscriptionRow).where(SubscriptionRow.instance_id == bindparam("b_id"))


def clear(session: Session, instance: InstanceRecord, workflow: BpmnWorkflow | None = None) -> None:
    """An ended instance waits for nothing (Core deletes, built once: no ORM object is tracked for these rows
    in a command that ends its instance, since :func:`sync_waits` is not called then)."""
    if not instance.waits:
        return
    clear_rows(session, instance.id, subscriptions=workflow is None or spec_features(workflow).messages)


def clear_rows(session: Session, instance_id: str, *, subscriptions: bool) -> None:
    """Delete an ended instance's jobs (and, if it can have any, its message subscriptions)."""
    clear_many(session, [instance_id], [instance_id] if subscriptions else [])


def clear_many(session: Session, instance_ids: list[str], subscription_ids: list[str]) -> None:
    """:func:`clear_rows` for several ended instances: one ``executemany`` per table."""
    connection = session.connection()
    if instance_ids:
        connection.execute(_CLEAR_JOBS, [{"b_id": i} for i in instance_ids])
    if subscription_ids:
        connection.execute(_CLEAR_SUBSCRIPTIONS, [{"b_id": i} for i in subscription_ids])


@dataclass(frozen=True)
class SpecFeatures:
    """Which projections a definition can ever have rows in (so the others are never queried)."""

    external: bool  # a service/send/business-rule task that waits for an external worker
    messages: bool  # an element that catches (or throws) a message: event subscriptions


def spec_features(workflow: BpmnWorkflow) -> SpecFeatures:
    """The :class:`SpecFeatures` of the workflow's definition (its process and every called process).

    Computed once per restored spec (specs are cached per definition and never change once
    deployed) and kept on the spec object.
    """
    spec = workflow.spec
    features: SpecFeatures | None = getattr(spec, "_sopflow_features", None)
    if features is None:
        task_specs = [t for s in (spec, *workflow.subprocess_specs.values()) for t in s.task_specs.values()]
        features = SpecFeatures(external=any(isinstance(t, ExternalTaskMixin) for t in task_specs),
                                messages=any(message_definitions_of(t) for t in task_specs))
        spec._sopflow_features = features
    return features


# --------------------------------------------------------------------------- external tasks
# Kept apart from the user-task projection above: service/send/business-rule tasks that wait
# STARTED for an external worker (engine.external) -> ``external_tasks`` rows.

NEW_EXTERNAL_WORK = "sopflow_new_external_work"  # session.info flag: wake long-polling fetches after commit


def waiting_external_tasks(workflow: BpmnWorkflow) -> list[Task]:
    """Every external task of the instance (sub-processes included) that waits for a worker."""
    found = [t for t in workflow.tasks.values() if is_waiting_external(t)]
    for sub in workflow.subprocesses.values():
        found.extend(t for t in sub.tasks.values() if is_waiting_external(t))
    return found


def external_task_scope(task: Task) -> dict[str, Any]:
    """The variables a worker sees for ``task``: the latest process variables under its own scope
    (multi-instance item included; engine.variables.view)."""
    data = variables.view(task) if variables.is_scoped(task.workflow) else task.data
    return variables.as_json(data)


def _extension_properties(task: Task) -> dict[str, Any]:
    ext = getattr(task.task_spec, "extensions", None) or {}
    nested = ext.get("properties")
    props: dict[str, Any] = nested if isinstance(nested, dict) else ext
    return {str(k): str(v) for k, v in props.items() if isinstance(v, str | int | float | bool)}


def sync_external_tasks(session: Session, instance: InstanceRecord, workflow: BpmnWorkflow, events: list[Event],
                        actor: str | None, *, held: list[tuple[Any, Any]], cancelled: bool = False) -> int:
    """Re-sync the instance's ``external_tasks`` rows; returns how many wait now.

    New waits become ``open`` rows (inserted through ``held``, after the instance row);
    open rows whose task no longer waits (a boundary event interrupted it, the instance
    was cancelled) become ``cancelled`` and their open incidents are resolved; the variables of
    rows that still wait follow the task's scope. A command that ends a task itself
    (complete, BPMN error) closes its row first. Nothing is queried unless the instance
    waits for something (``instance.waits``, which counts these rows too).
    """
    now = clock.now()
    waiting = {str(t.id): t for t in waiting_external_tasks(workflow)}
    if not waiting and (not instance.waits or not spec_features(workflow).external):
        return 0
    existing: dict[str, Any] = {} if not instance.waits else {
        row.id: row.variables for row in session.execute(
            select(ExternalTaskRow.id, ExternalTaskRow.variables)
            .where(ExternalTaskRow.instance_id == instance.id, ExternalTaskRow.state == "open"))}
    gone = sorted(set(existing) - set(waiting))
    if gone:
        session.execute(update(ExternalTaskRow).where(ExternalTaskRow.id.in_(gone), ExternalTaskRow.state == "open")
                        .values(state="cancelled", ended_at=now, worker_id=None, lock_expires_at=None)
                        .execution_options(synchronize_session=False))
        for task_id, element_id in session.execute(select(ExternalTaskRow.id, ExternalTaskRow.element_id)
                                                   .where(ExternalTaskRow.id.in_(gone))):
            events.append(Event("external_task.cancelled", actor, {"element_id": element_id}, task_id=task_id))
        resolve_incidents(session, events, actor, external_task_ids=gone,
                          resolution="instance_cancelled" if cancelled else "task_ended")
    created = []
    for task_id, task in waiting.items():
        scope = external_task_scope(task)
        if task_id in existing:
            if existing[task_id] != scope:
                session.execute(update(ExternalTaskRow).where(ExternalTaskRow.id == task_id)
                                .values(variables=scope).execution_options(synchronize_session=False))
            continue
        spec = task.task_spec
        local = json.loads(audit.canonical(task.internal_data.get("external_params") or {}))
        created.append({
            "id": task_id, "instance_id": instance.id, "definition_id": instance.definition_id,
            "definition_key": instance.definition_key, "definition_version": instance.definition_version,
            "business_key": instance.business_key, "element_id": spec.bpmn_id, "element_type": spec.element_type,
            "name": spec.bpmn_name or spec.bpmn_id, "topic": spec.topic, "priority": spec.priority,
            "state": "open", "variables": scope, "local_variables": local,
            "extension_properties": _extension_properties(task), "worker_id": None, "lock_expires_at": None,
            "retries": None, "error_message": None, "error_details": None, "created_at": now, "ended_at": None,
            "completed_by": None,
        })
        events.append(Event("external_task.created", actor, {"element_id": spec.bpmn_id, "topic": spec.topic},
                            task_id=task_id))
    if created:
        held.append((insert(ExternalTaskRow), created))
        session.info[NEW_EXTERNAL_WORK] = True
    return len(waiting)


def resolve_incidents(session: Session, events: list[Event], actor: str | None, *, external_task_ids: list[str],
                      resolution: str) -> None:
    """Close the open incidents of these external tasks (audit: ``incident.resolved``)."""
    now = clock.now()
    open_incidents = session.execute(
        select(IncidentRow.id, IncidentRow.external_task_id).where(
            IncidentRow.external_task_id.in_(external_task_ids), IncidentRow.resolved_at.is_(None))).all()
    if not open_incidents:
        return
    session.execute(update(IncidentRow).where(IncidentRow.id.in_([i for i, _ in open_incidents]))
                    .values(resolved_at=now, resolved_by=actor, resolution=resolution)
                    .execution_options(synchronize_session=False))
    for incident_id, task_id in open_incidents:
        events.append(Event("incident.resolved", actor, {"incident_id": incident_id, "resolution": resolution},
                            task_id=task_id))
