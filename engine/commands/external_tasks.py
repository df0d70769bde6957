"""External-task commands (Camunda 7's external task pattern) and incidents.

Workers fetch-and-lock open external tasks by topic, then complete them (variables become
process variables), report a failure (retries count down; at 0 an incident opens), throw a
BPMN error (caught by an error boundary event on the task or an enclosing sub-process) or
extend their lock. A lock belongs to one worker id: any other worker's complete, failure,
BPMN error or lock extension is a :class:`Conflict` (409), also once the lock expired and
another worker took the task.

Each command is one unit of work. Commands that move the workflow (complete, a caught BPMN
error) load, run and persist the instance under its revision; commands that only change
the lock or the retries (fetch-and-lock, failure, extend-lock, an uncaught BPMN error,
incident retry) update the row with a guarded UPDATE and append their audit events with
a compare-and-set on the instance's audit head (as claim does), so a concurrent command on
the instance makes one of them retry. Audit actions: ``external_task.created|locked|
lock_extended|completed|failed|bpmn_error|cancelled|retries_set``, ``incident.created|resolved``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from uuid import UUID

from SpiffWorkflow.bpmn.specs.control import BoundaryEventSplit
from SpiffWorkflow.bpmn.specs.event_definitions.item_aware_event import ErrorEventDefinition
from SpiffWorkflow.bpmn.util import BpmnEvent
from SpiffWorkflow.task import Task
from SpiffWorkflow.util.task import TaskState
from sqlalchemy import event, or_, select, update
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from engine import audit, clock, projections
from engine import variables as pvars
from engine.actor import Actor
from engine.audit import Event
from engine.commands import unit
from engine.config import Settings
from engine.config import load as load_settings
from engine.errors import Conflict, InvalidInput, NotFound, StaleInstance
from engine.external import is_waiting_external
from engine.ids import time_ordered_id
from engine.queries import Page, Paging, _page
from engine.store.db import rowcount
from engine.store.models import ExternalTaskRow, IncidentRow, InstanceRecord, InstanceRow

MAX_LOCK_MS = 7 * 24 * 3600 * 1000  # a week: longer locks are almost certainly a unit mistake
MAX_TASKS = 1000
MAX_MESSAGE = 4000
_MISSING = object()  # Camunda truncates error messages too (to 666 characters)


# --------------------------------------------------------------------------- waking long polls

class WorkSignal:
    """A counter bumped after a commit made external tasks fetchable in this process.

    Long-polling fetches compare it between short sleeps, so they re-query at once when work
    arrives here; work made fetchable by other processes (PostgreSQL scale-out), an expired
    lock or a passed retry timeout is found by their periodic re-query.
    """

    def __init__(self) -> None:
        self.generation = 0

    def bump(self) -> None:
        self.generation += 1


WORK = WorkSignal()


@event.listens_for(Session, "after_commit")
def _after_commit(session: Session) -> None:
    if session.info.pop(projections.NEW_EXTERNAL_WORK, False):
        WORK.bump()


@event.listens_for(Session, "after_rollback")
def _after_rollback(session: Session) -> None:
    session.info.pop(projections.NEW_EXTERNAL_WORK, None)


# --------------------------------------------------------------------------- checks


@dataclass(frozen=True)
class TopicRequest:
    """One topic a worker fetches: its lock duration (ms), which variables to return (None: all)
    and optional filters on the business key, process definition key and variable values
    (Camunda's ``processVariables``: every named variable must equal the given value)."""

    name: str
    lock_duration_ms: int
    variables: list[str] | None = None
    business_key: str | None = None
    definition_key: str | None = None
    variable_values: dict[str, Any] | None = None


def _worker(worker_id: Any) -> str:
    if not isinstance(worker_id, str) or not worker_id.strip() or len(worker_id) > 255:
        raise InvalidInput("workerId must be a non-empty string of at most 255 characters", field="workerId")
    return worker_id


def _duration(value: Any, field: str, *, allow_zero: bool = False) -> int:
    low = 0 if allow_zero else 1
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= MAX_LOCK_MS:
        raise InvalidInput("{field} must be a whole number of milliseconds from {low} to {max_lock_ms}",
                           field=field, params={"field": field, "low": low, "max_lock_ms": MAX_LOCK_MS})
    return value


def _retries(value: Any, field: str = "retries") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 2**31 - 1:
        raise InvalidInput("{field} must be a whole number, 0 or more", field=field, params={"field": field})
    return value


def _text(value: Any, field: str, limit: int | None = None) -> str | None:
    if value is None:
        return None
    text = value if isinstance(value, str) else audit.canonical(value)
    return text[:limit] if limit else text


def get_external_task(session: Session, task_id: str) -> ExternalTaskRow:
    row = session.get(ExternalTaskRow, task_id, populate_existing=True)
    if row is None:
        raise NotFound("external task {task_id} not found", task_id=task_id, params={"task_id": task_id})
    return row


def _require_lock(row: ExternalTaskRow, worker_id: str) -> None:
    """Only the worker holding the lock may act on the task (Camunda compares the worker id)."""
    if row.state != "open":
        raise Conflict("external task '{name}' is already {state}", task_id=row.id, state=row.state,
                       params={"name": row.name, "state": row.state})
    if row.worker_id is None:
        raise Conflict("external task '{name}' is not locked; fetch and lock it first", task_id=row.id,
                       params={"name": row.name})
    if row.worker_id != worker_id:
        raise Conflict("external task '{name}' is locked by another worker", task_id=row.id,
                       worker_id=row.worker_id, params={"name": row.name})


def _guarded(row: ExternalTaskRow, **values: Any) -> Any:
    """An UPDATE that only applies while the row is still open and held by the worker this command saw."""
    holder = ExternalTaskRow.worker_id.is_(None) if row.worker_id is None else ExternalTaskRow.worker_id == row.worker_id
    return (update(ExternalTaskRow).where(ExternalTaskRow.id == row.id, ExternalTaskRow.state == "open", holder)
            .values(**values).execution_options(synchronize_session=False))


def _apply(session: Session, row: ExternalTaskRow, **values: Any) -> None:
    if rowcount(session.execute(_guarded(row, **values))) != 1:
        raise StaleInstance("external task {id} was changed by someone else", task_id=row.id,
                            params={"id": row.id})


def _audit(session: Session, instance_id: str, events: list[Event]) -> None:
    instance = session.get(InstanceRow, instance_id, populate_existing=True)
    if instance is None:
        raise StaleInstance("process instance {instance_id} is gone", instance_id=instance_id,
                            params={"instance_id": instance_id})
    unit.append_events(session, instance, instance.audit_seq or 0, events)


def _incident(session: Session, row: ExternalTaskRow, kind: str, message: str, actor: Actor) -> Event:
    incident_id = time_ordered_id()
    session.add(IncidentRow(id=incident_id, kind=kind, instance_id=row.instance_id,
                            definition_key=row.definition_key, element_id=row.element_id,
                            external_task_id=row.id, message=message, created_at=clock.now()))
    return Event("incident.created", actor.name, {"incident_id": incident_id, "kind": kind,
                                                  "element_id": row.element_id, "message": message},
                 task_id=row.id)


def _waiting_task(loaded: unit.Loaded, row: ExternalTaskRow) -> Task:
    task = unit.find_task(loaded.workflow, UUID(row.id))
    if task is None or not is_waiting_external(task):
        raise Conflict("external task '{name}' no longer waits", task_id=row.id, params={"name": row.name})
    return task


# --------------------------------------------------------------------------- commands


def fetch_and_lock(session: Session, *, worker_id: str, topics: list[TopicRequest], max_tasks: int, actor: Actor,
                   use_priority: bool = False) -> list[ExternalTaskRow]:
    """Lock up to ``max_tasks`` fetchable tasks on the given topics for ``worker_id``; returns them.

    Fetchable: open, retries not exhausted, lock free or expired (a failure's retry timeout
    keeps it locked until then). Oldest first, or highest ``camunda:taskPriority`` first with
    ``use_priority``. On PostgreSQL candidate rows are taken ``FOR UPDATE SKIP LOCKED``, so
    concurrent workers never receive the same task; SQLite serializes writers.
    Raises InvalidInput for a bad worker id, topic list, lock duration or ``max_tasks``.
    """
    worker_id = _worker(worker_id)
    if isinstance(max_tasks, bool) or not isinstance(max_tasks, int) or not 0 <= max_tasks <= MAX_TASKS:
        raise InvalidInput("maxTasks must be between 0 and {max_tasks}", field="maxTasks",
                           params={"max_tasks": MAX_TASKS})
    if not topics:
        raise InvalidInput("name at least one topic to fetch", field="topics")
    for topic in topics:
        if not isinstance(topic.name, str) or not topic.name or len(topic.name) > 400:
            raise InvalidInput("every topic needs a topicName", field="topicName")
        _duration(topic.lock_duration_ms, "lockDuration")
    now = clock.now()
    dialect = session.get_bind().dialect.name
    locked: list[ExternalTaskRow] = []
    for topic in topics:
        remaining = max_tasks - len(locked)
        if remaining <= 0:
            break
        query = select(ExternalTaskRow).where(
            ExternalTaskRow.state == "open", ExternalTaskRow.topic == topic.name,
            or_(ExternalTaskRow.retries.is_(None), ExternalTaskRow.retries > 0),
            or_(ExternalTaskRow.lock_expires_at.is_(None), ExternalTaskRow.lock_expires_at <= now))
        if topic.business_key is not None:
            query = query.where(ExternalTaskRow.business_key == topic.business_key)
        if topic.definition_key is not None:
            query = query.where(ExternalTaskRow.definition_key == topic.definition_key)
        order = [ExternalTaskRow.created_at, ExternalTaskRow.id]
        query = query.order_by(*([ExternalTaskRow.priority.desc()] if use_priority else []), *order)
        if not topic.variable_values:
            query = query.limit(remaining)
        if dialect == "postgresql":
            query = query.with_for_update(skip_locked=True)
        found = list(session.scalars(query))
        if topic.variable_values:
            wanted = json.loads(audit.canonical(topic.variable_values))
            found = [r for r in found if all((r.variables or {}).get(k, _MISSING) == v for k, v in wanted.items())]
        locked.extend(found[:remaining])
    if not locked:
        return []
    by_instance: dict[str, list[Event]] = {}
    durations = {t.name: t.lock_duration_ms for t in topics}
    for row in locked:
        expires = now + timedelta(milliseconds=durations[row.topic])
        _apply(session, row, worker_id=worker_id, lock_expires_at=expires)
        set_committed_value(row, "worker_id", worker_id)
        set_committed_value(row, "lock_expires_at", expires)
        by_instance.setdefault(row.instance_id, []).append(Event(
            "external_task.locked", actor.name,
            {"element_id": row.element_id, "topic": row.topic, "worker_id": worker_id, "lock_expires_at": expires},
            task_id=row.id))
    for instance_id, events in by_instance.items():
        _audit(session, instance_id, events)
    return locked


def complete(session: Session, *, task_id: str, worker_id: str, actor: Actor,
             variables: dict[str, Any] | None = None, settings: Settings | None = None) -> InstanceRecord:
    """Complete a locked external task; ``variables`` become process variables. Returns the instance.

    Conflict (409) when the task is not open or not locked by ``worker_id``; InvalidInput for
    bad variables; ScriptError (422) when what runs next fails (nothing is stored then).
    """
    settings = settings or load_settings()
    worker_id = _worker(worker_id)
    data = unit.check_variables(variables)
    row = get_external_task(session, task_id)
    _require_lock(row, worker_id)
    loaded = unit.load(session, row.instance_id)
    task = _waiting_task(loaded, row)
    pvars.before_run(task)  # the latest process variables; its completion writes what changed
    task.data.update(data)
    with unit.engine_faults():
        task.complete()
    loaded.events.append(Event("external_task.completed", actor.name, {
        "element_id": row.element_id, "topic": row.topic, "worker_id": worker_id, "variables": data,
        "changed": pvars.take_changes(task),
    }, task_id=row.id))
    unit.run(loaded, actor, settings)
    # the first write, once the engine has run (the write lock is not held while it computes)
    _apply(session, row, state="completed", ended_at=clock.now(), completed_by=worker_id, lock_expires_at=None)
    unit.persist(session, loaded, actor)
    return loaded.row


def failure(session: Session, *, task_id: str, worker_id: str, actor: Actor, error_message: Any = None,
            error_details: Any = None, retries: Any = 0, retry_timeout_ms: Any = 0) -> ExternalTaskRow:
    """Report that the worker failed: set the retries left and unlock the task.

    With retries left the task is fetchable again once ``retry_timeout_ms`` has passed (Camunda:
    the lock is held that long). At 0 retries an incident (``failed_external_task``) opens and
    the task is not fetched again until someone sets retries (incident retry). Returns the row.
    """
    worker_id = _worker(worker_id)
    left = _retries(retries)
    timeout = _duration(retry_timeout_ms or 0, "retryTimeout", allow_zero=True)
    message = _text(error_message, "errorMessage", MAX_MESSAGE)
    details = _text(error_details, "errorDetails")
    row = get_external_task(session, task_id)
    _require_lock(row, worker_id)
    now = clock.now()
    later = now + timedelta(milliseconds=timeout) if left > 0 and timeout > 0 else None
    _apply(session, row, retries=left, error_message=message, error_details=details, worker_id=None,
           lock_expires_at=later)
    events = [Event("external_task.failed", actor.name, {
        "element_id": row.element_id, "topic": row.topic, "worker_id": worker_id, "error_message": message,
        "retries": left, "retry_timeout_ms": timeout}, task_id=row.id)]
    if left == 0:
        events.append(_incident(session, row, "failed_external_task",
                                message or f"external task '{row.name}' failed and has no retries left", actor))
    elif later is None:
        session.info[projections.NEW_EXTERNAL_WORK] = True
    _audit(session, row.instance_id, events)
    return get_external_task(session, task_id)


def _error_catcher(task: Task, code: str) -> Task | None:
    """The waiting error boundary event that catches ``code`` thrown by ``task`` (BPMN's scope rule).

    Nearest first: a boundary event on the task itself (or on the multi-instance/loop activity
    around it), then on each enclosing sub-process or call activity, outwards. A boundary
    event is WAITING only while its activity runs, so a WAITING one above the task encloses it.
    """
    node: Task | None = task
    while node is not None:
        ancestor = node.parent
        while ancestor is not None:
            if isinstance(ancestor.task_spec, BoundaryEventSplit):
                for candidate in ancestor.children:
                    ed = getattr(candidate.task_spec, "event_definition", None)
                    if (candidate.state == TaskState.WAITING and isinstance(ed, ErrorEventDefinition)
                            and ed.code in (None, code)):
                        return candidate
            ancestor = ancestor.parent
        workflow = node.workflow
        parent_id = workflow.parent_task_id
        node = unit.find_task(workflow.top_workflow, parent_id) if parent_id is not None else None
    return None


def bpmn_error(session: Session, *, task_id: str, worker_id: str, error_code: Any, actor: Actor,
               error_message: Any = None, variables: dict[str, Any] | None = None,
               settings: Settings | None = None) -> dict[str, Any]:
    """The worker reports a business error: an error boundary event catching ``error_code`` takes over.

    Caught: the task ends (state ``error``), ``variables`` and the task's data reach the boundary
    path, the instance runs on. Not caught (no error boundary on the task or around it for that
    code): an incident (``unhandled_bpmn_error``) opens and the task stays where it is with no
    retries, so nothing is lost silently; Camunda's default would end the path without trace.
    Returns ``{"caught_by": element id or None, "incident_id": ... or None}``.
    """
    settings = settings or load_settings()
    worker_id = _worker(worker_id)
    if not isinstance(error_code, str) or not error_code.strip() or len(error_code) > 255:
        raise InvalidInput("errorCode must be a non-empty string", field="errorCode")
    message = _text(error_message, "errorMessage", MAX_MESSAGE)
    data = unit.check_variables(variables)
    row = get_external_task(session, task_id)
    _require_lock(row, worker_id)
    loaded = unit.load(session, row.instance_id)
    task = _waiting_task(loaded, row)
    catcher = _error_catcher(task, error_code)
    payload = {"element_id": row.element_id, "topic": row.topic, "worker_id": worker_id, "error_code": error_code,
               "error_message": message, "variables": data}
    if catcher is None:
        text = (f"BPMN error '{error_code}' from '{row.element_id}' has no error boundary event that catches it"
                + (f": {message}" if message else ""))
        _apply(session, row, retries=0, worker_id=None, lock_expires_at=None, error_message=text)
        events = [Event("external_task.bpmn_error", actor.name, {**payload, "caught_by": None}, task_id=row.id)]
        incident = _incident(session, row, "unhandled_bpmn_error", text, actor)
        _audit(session, row.instance_id, [*events, incident])
        return {"caught_by": None, "incident_id": incident.payload["incident_id"]}
    definition = catcher.task_spec.event_definition
    thrown = BpmnEvent(type(definition)(definition.name, code=error_code), payload={**task.data, **data})
    with unit.engine_faults():
        catcher.task_spec.catch(catcher, thrown)
        catcher.task_spec._update(catcher)
    caught_by = catcher.task_spec.bpmn_id
    loaded.events.append(Event("external_task.bpmn_error", actor.name, {**payload, "caught_by": caught_by},
                               task_id=row.id))
    unit.run(loaded, actor, settings)
    # the first write, once the engine has run (the write lock is not held while it computes)
    _apply(session, row, state="error", ended_at=clock.now(), completed_by=worker_id, lock_expires_at=None,
           error_message=f"BPMN error '{error_code}'" + (f": {message}" if message else ""))
    unit.persist(session, loaded, actor)
    return {"caught_by": caught_by, "incident_id": None}


def extend_lock(session: Session, *, task_id: str, worker_id: str, new_duration_ms: Any,
                actor: Actor) -> ExternalTaskRow:
    """Extend the worker's lock to ``new_duration_ms`` from now. Conflict if it is not theirs or expired."""
    worker_id = _worker(worker_id)
    duration = _duration(new_duration_ms, "newDuration")
    row = get_external_task(session, task_id)
    _require_lock(row, worker_id)
    now = clock.now()
    if row.lock_expires_at is None or row.lock_expires_at <= now:
        raise Conflict("the lock on external task '{name}' has expired; fetch and lock it again",
                       task_id=row.id, params={"name": row.name})
    expires = now + timedelta(milliseconds=duration)
    _apply(session, row, lock_expires_at=expires)
    _audit(session, row.instance_id, [Event("external_task.lock_extended", actor.name, {
        "element_id": row.element_id, "worker_id": worker_id, "lock_expires_at": expires}, task_id=row.id)])
    return get_external_task(session, task_id)


def set_retries(session: Session, *, task_id: str, retries: Any, actor: Actor,
                resolution: str = "retried") -> ExternalTaskRow:
    """Set an open external task's retries (an operator's action; Camunda's ``PUT .../retries``).

    More than 0: its open incidents are resolved and it is fetchable again at once (any lock
    is dropped). 0: an incident opens if none is open. Conflict when the task has ended.
    """
    left = _retries(retries)
    row = get_external_task(session, task_id)
    if row.state != "open":
        raise Conflict("external task '{name}' is already {state}", task_id=row.id, state=row.state,
                       params={"name": row.name, "state": row.state})
    events = [Event("external_task.retries_set", actor.name, {"element_id": row.element_id, "retries": left},
                    task_id=row.id)]
    open_incident = session.scalar(select(IncidentRow.id).where(IncidentRow.external_task_id == row.id,
                                                               IncidentRow.resolved_at.is_(None)))
    if left > 0:
        _apply(session, row, retries=left, worker_id=None, lock_expires_at=None)
        projections.resolve_incidents(session, events, actor.name, external_task_ids=[row.id],
                                      resolution=resolution)
        session.info[projections.NEW_EXTERNAL_WORK] = True
    else:
        _apply(session, row, retries=0, worker_id=None, lock_expires_at=None)
        if open_incident is None:
            events.append(_incident(session, row, "failed_external_task",
                                    row.error_message or f"retries of '{row.name}' were set to 0", actor))
    _audit(session, row.instance_id, events)
    return get_external_task(session, task_id)


def retry_incident(session: Session, *, incident_id: str, retries: Any, actor: Actor) -> IncidentRow:
    """Resolve an open external-task incident by giving the task ``retries`` (>= 1) again.

    A failed job's incident (``job_id`` set) is retried by :func:`engine.commands.sla.retry_job`.
    """
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 1:
        raise InvalidInput("retries must be 1 or more to retry an incident", field="retries")
    incident = session.get(IncidentRow, incident_id)
    if incident is None:
        raise NotFound("incident {incident_id} not found", incident_id=incident_id,
                       params={"incident_id": incident_id})
    if incident.resolved_at is not None:
        raise Conflict("incident {incident_id} is already resolved ({resolution})",
                       incident_id=incident_id,
                       params={"incident_id": incident_id, "resolution": incident.resolution})
    if incident.external_task_id is None and incident.job_id is not None:  # a job out of attempts
        from engine.commands import sla  # late: sla builds on the worker's modules

        sla.retry_job(session, incident=incident, actor=actor)
        return incident
    if incident.external_task_id is None:
        raise Conflict("incident {incident_id} ({kind}) is not an external task's; it cannot be "
                       "retried here", incident_id=incident_id,
                       params={"incident_id": incident_id, "kind": incident.kind})
    set_retries(session, task_id=incident.external_task_id, retries=retries, actor=actor)
    resolved = session.get(IncidentRow, incident_id, populate_existing=True)
    assert resolved is not None  # noqa: S101 - read just above, in this transaction
    return resolved


# --------------------------------------------------------------------------- queries


def task_variables(row: ExternalTaskRow, names: list[str] | None = None) -> dict[str, Any]:
    """What a worker receives: the task's scope, with the operator's evaluated parameters over it."""
    merged = {**(row.variables or {}), **(row.local_variables or {})}
    return merged if names is None else {k: v for k, v in merged.items() if k in set(names)}


def list_external_tasks(session: Session, paging: Paging, *, state: str | None = "open", topic: str | None = None,
                        instance_id: str | None = None, worker_id: str | None = None,
                        locked: bool | None = None) -> Page:
    """External tasks, oldest first; ``state=None`` lists every state."""
    query = select(ExternalTaskRow).order_by(ExternalTaskRow.created_at, ExternalTaskRow.id)
    if state is not None:
        query = query.where(ExternalTaskRow.state == state)
    if topic is not None:
        query = query.where(ExternalTaskRow.topic == topic)
    if instance_id is not None:
        query = query.where(ExternalTaskRow.instance_id == instance_id)
    if worker_id is not None:
        query = query.where(ExternalTaskRow.worker_id == worker_id)
    if locked is not None:
        now = clock.now()
        held = (ExternalTaskRow.worker_id.is_not(None)) & (ExternalTaskRow.lock_expires_at > now)
        query = query.where(held if locked else ~held)
    return _page(session, query, paging)


def list_incidents(session: Session, paging: Paging, *, state: str = "open", kind: str | None = None,
                   instance_id: str | None = None, external_task_id: str | None = None) -> Page:
    """Incidents, newest first; ``state`` is ``open``, ``resolved`` or ``all``."""
    query = select(IncidentRow).order_by(IncidentRow.created_at.desc(), IncidentRow.id.desc())
    if state == "open":
        query = query.where(IncidentRow.resolved_at.is_(None))
    elif state == "resolved":
        query = query.where(IncidentRow.resolved_at.is_not(None))
    if kind is not None:
        query = query.where(IncidentRow.kind == kind)
    if instance_id is not None:
        query = query.where(IncidentRow.instance_id == instance_id)
    if external_task_id is not None:
        query = query.where(IncidentRow.external_task_id == external_task_id)
    return _page(session, query, paging)
