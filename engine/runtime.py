"""Commands: deploy, start, claim, unclaim, assign, complete, cancel, correlate, fire timers.

Each command is one unit of work (DESIGN.md): it takes a session, loads the instance
(serialized workflow + ``revision``), applies itself through SpiffWorkflow, runs engine
steps until every token waits, then (:func:`_persist`) writes the new state with
``UPDATE ... WHERE revision = :seen`` (0 rows -> :class:`StaleInstance`, which the edge
retries), re-syncs the ``tasks``/``jobs``/``event_subscriptions`` projections and
appends hash-chained audit events. Commands only flush; the edge commits.

Guards SpiffWorkflow lacks: a user task is only ever run when it is READY and manual
(``task.run()`` would happily "complete" a FUTURE or COMPLETED task).
"""
from __future__ import annotations

import hashlib
import json
import math
import uuid
from dataclasses import dataclass, field
from datetime import date, datetime, time
from decimal import Decimal, InvalidOperation
from typing import Any
from uuid import UUID

from SpiffWorkflow.bpmn import BpmnEvent, BpmnWorkflow
from SpiffWorkflow.bpmn.specs.event_definitions.message import MessageEventDefinition
from SpiffWorkflow.exceptions import SpiffWorkflowException
from SpiffWorkflow.task import Task
from SpiffWorkflow.util.task import TaskState
from sqlalchemy import bindparam, delete, func, insert, select, update
from sqlalchemy.orm import Session

from engine import audit, clock, forms, projections
from engine.audit import Event
from engine.config import Settings
from engine.config import load as load_settings
from engine.errors import Conflict, Forbidden, InvalidInput, NotFound, ScriptError, StaleInstance
from engine.execution import EngineBudget, run_engine
from engine.ids import time_ordered_id
from engine.loading import UploadedFile, bundle_checksum, parse_bundle
from engine.sandbox import ScriptBudgetExceeded, ScriptRefused
from engine.serialization import SPECS, STATE_FORMAT, Specs, dump_specs, dump_state, load_state, new_workflow
from engine.store.db import rowcount
from engine.store.models import (
    DefinitionRow,
    DeploymentResourceRow,
    DeploymentRow,
    InstanceRecord,
    InstanceRow,
    JobRow,
    SubscriptionRow,
    TaskRow,
)


@dataclass(frozen=True)
class Actor:
    """Who issues a command. ``groups`` decide candidate rights; ``roles`` come from identity."""

    name: str
    groups: frozenset[str] = frozenset()
    roles: frozenset[str] = frozenset()

    @property
    def is_admin(self) -> bool:
        return "admin" in self.roles


SYSTEM = Actor("system", roles=frozenset({"system"}))


# --------------------------------------------------------------------------- helpers

_JSON_SCALARS = (str, int, float, bool, type(None), date, datetime, time, Decimal)


def _check_variables(variables: Any, what: str = "variables") -> dict[str, Any]:
    if variables is None:
        return {}
    if not isinstance(variables, dict):
        raise InvalidInput(f"{what} must be an object mapping names to values", field=what)

    def ok(value: Any, depth: int = 0) -> bool:
        if depth > 20:
            return False
        if isinstance(value, _JSON_SCALARS):
            return not isinstance(value, float) or math.isfinite(value)  # NaN and infinities are not data
        if isinstance(value, list):
            return all(ok(v, depth + 1) for v in value)
        if isinstance(value, dict):
            return all(isinstance(k, str) and ok(v, depth + 1) for k, v in value.items())
        return False

    for name, value in variables.items():
        if not isinstance(name, str) or not name.isidentifier() or name.startswith("_"):
            raise InvalidInput(f"'{name}' is not a valid variable name (letters, digits and _, not starting "
                               "with _ or a digit)", field=str(name))
        if not ok(value):
            raise InvalidInput(f"variable '{name}' holds a value that cannot be stored", field=name)
    return dict(variables)


def _json_safe(data: dict[str, Any]) -> dict[str, Any]:
    safe: dict[str, Any] = json.loads(audit.canonical({k: v for k, v in data.items() if not k.startswith("_")}))
    return safe


def instance_variables(workflow: BpmnWorkflow) -> dict[str, Any]:
    """The instance's current data: the workflow's when done, else its tasks' data folded oldest to newest."""
    if workflow.is_completed() and workflow.success:  # a cancelled workflow's data is its tasks'
        return _json_safe(workflow.data)
    merged: dict[str, Any] = {}
    definite = TaskState.DEFINITE_MASK | TaskState.FINISHED_MASK
    # the pruned tree is small: fold every definite task's data, newest last
    for task in sorted((t for t in workflow.tasks.values() if t.has_state(definite)),
                       key=lambda t: t.last_state_change):
        merged.update(task.data)
    return _json_safe(merged)


@dataclass(frozen=True)
class DefinitionInfo:
    """What commands need of a deployed definition; definitions never change once deployed."""

    id: str
    key: str
    version: int
    user_tasks: dict[str, Any]


_DEFINITIONS: dict[str, DefinitionInfo] = {}


def _info(row: DefinitionRow) -> DefinitionInfo:
    info = _DEFINITIONS.get(row.id)
    if info is None:
        info = _DEFINITIONS[row.id] = DefinitionInfo(row.id, row.key, row.version, dict(row.user_tasks))
    return info


def _definition(session: Session, definition_id: str) -> DefinitionInfo:
    info = _DEFINITIONS.get(definition_id)
    if info is not None:
        return info
    row = session.get(DefinitionRow, definition_id)
    if row is None:
        raise NotFound(f"process definition {definition_id} not found")
    return _info(row)


def _specs(session: Session, definition: DefinitionInfo) -> Specs:
    def spec_text() -> str:
        text = session.scalar(select(DefinitionRow.spec).where(DefinitionRow.id == definition.id))
        if text is None:
            raise NotFound(f"process definition {definition.id} not found")
        return text

    return SPECS.get(definition.id, spec_text)


# Hot-path statements, built once: SQLAlchemy then reuses their compiled form.
_SELECT_INSTANCE = select(InstanceRow.__table__).where(InstanceRow.id == bindparam("b_id"))
_INSERT_INSTANCE = insert(InstanceRow)
_UPDATE_INSTANCE = update(InstanceRow).where(
    InstanceRow.id == bindparam("b_id"), InstanceRow.revision == bindparam("b_revision"),
    InstanceRow.audit_seq == bindparam("b_audit_seq"))
_SELECT_TASK = select(TaskRow.__table__).where(TaskRow.id == bindparam("b_id"))
_CLOSE_TASK = update(TaskRow).where(TaskRow.id == bindparam("b_id"), TaskRow.state == "open")
_LATEST_ID = (select(DefinitionRow.id).where(DefinitionRow.key == bindparam("b_key"))
              .order_by(DefinitionRow.version.desc()).limit(1))
_VERSION_ID = select(DefinitionRow.id).where(DefinitionRow.key == bindparam("b_key"),
                                             DefinitionRow.version == bindparam("b_version"))


@dataclass
class _Loaded:
    row: InstanceRecord
    definition: DefinitionInfo
    specs: Specs
    workflow: BpmnWorkflow
    seen_revision: int
    seen_audit_seq: int
    events: list[Event] = field(default_factory=list)
    completed_task: str | None = None  # the task row this command closed itself


def _load(session: Session, instance_id: str, *, running: bool = True) -> _Loaded:
    data = session.connection().execute(_SELECT_INSTANCE, {"b_id": instance_id}).mappings().first()
    if data is None:
        raise NotFound(f"process instance {instance_id} not found", instance_id=instance_id)
    row = InstanceRecord(**data)
    if running and row.status != "running":
        raise Conflict(f"process instance {instance_id} is {row.status}", instance_id=instance_id,
                       status=row.status)
    definition = _definition(session, row.definition_id)
    specs = _specs(session, definition)
    workflow = load_state(row.state or "", specs)  # a stored instance always has its state
    return _Loaded(row, definition, specs, workflow, row.revision, row.audit_seq or 0)


def _spiff_error(exc: Exception) -> ScriptError:
    if isinstance(exc, ScriptError):
        return exc
    task_spec = getattr(exc, "task_spec", None)
    element = getattr(task_spec, "bpmn_id", None) or getattr(getattr(exc, "task", None), "task_spec", None)
    element = element if isinstance(element, str) else getattr(element, "bpmn_id", None)
    line = getattr(exc, "line_number", None) or None
    inner = getattr(exc, "exception", None) or exc.__cause__
    if isinstance(inner, ScriptRefused):
        line = inner.line or line
    if isinstance(inner, ScriptBudgetExceeded) or isinstance(exc, ScriptBudgetExceeded):
        message = f"element '{element}': {inner or exc}"
    else:
        message = f"element '{element}' failed: {exc}" if element else f"the workflow failed: {exc}"
    return ScriptError(message, element_id=element, line=line)


def _run(loaded: _Loaded, actor: Actor, settings: Settings) -> None:
    budget = EngineBudget(settings.command_max_steps, settings.command_max_seconds)

    activities: list[dict[str, Any]] = []

    def record(task: Task) -> None:
        spec = task.task_spec
        if getattr(spec, "bpmn_id", None):
            activities.append({"element_id": spec.bpmn_id, "name": spec.bpmn_name, "type": type(spec).__name__,
                               "task_id": str(task.id)})

    try:
        run_engine(loaded.workflow, budget, record)
    except (SpiffWorkflowException, ScriptBudgetExceeded, ScriptRefused, ScriptError) as exc:
        raise _spiff_error(exc) from None
    except RecursionError:
        raise ScriptError("the workflow recursed too deeply (a script or the diagram loops on itself)") from None
    if activities:  # one event per command: they all happened in this transaction, at this instant
        loaded.events.append(Event("activities.completed", actor.name, {"activities": activities}))


def _persist(session: Session, loaded: _Loaded, actor: Actor, *, new: bool = False,
             status: str | None = None, end_reason: str | None = None) -> None:
    """Store state, projections and audit in the current transaction (the unit of work's steps 4-6).

    A new instance is one INSERT; an existing one is one ``UPDATE ... WHERE revision = :seen``
    that also moves its audit-chain head. 0 rows means another command moved it first
    (:class:`StaleInstance`, retried by the edge), and everything written here rolls back.
    Projection writes that reference the instance row are held until that row exists.
    """
    row, workflow = loaded.row, loaded.workflow
    now = clock.now()
    if status is None:
        status = "completed" if workflow.is_completed() else "running"
    ended = status != "running"
    values: dict[str, Any] = {
        "state": dump_state(loaded.specs, workflow), "state_format": STATE_FORMAT,
        "variables": instance_variables(workflow), "revision": loaded.seen_revision + 1,
    }
    if new or status != row.status:  # SQLite rewrites an index whose column is SET, changed or not
        values.update(status=status, ended_at=now if ended else None, ended_by=actor.name if ended else None,
                      end_reason=end_reason)
    held: list[tuple[Any, Any]] = []
    values["open_task_ids"] = projections.sync_tasks(
        session, row, workflow, loaded.definition.user_tasks, loaded.events, actor.name,
        revision=values["revision"], completed=loaded.completed_task, held=held)
    if ended:
        projections.clear(session, row)
        values["waits"] = 0
        if status == "completed":
            loaded.events.append(Event("instance.completed", actor.name, {"variables": values["variables"]}))
    else:
        values["waits"] = projections.sync_waits(session, row, workflow, loaded.events, actor.name)
    values.update(_chain(session, row, loaded.seen_audit_seq, loaded.events))
    if new:
        identity = {c: getattr(row, c) for c in ("id", "definition_id", "definition_key", "definition_version",
                                                 "business_key", "started_by", "started_at")}
        with session.no_autoflush:  # pending job/subscription rows reference this row: flush after it
            session.connection().execute(_INSERT_INSTANCE, {**identity, **values})
    else:
        moved = session.connection().execute(_UPDATE_INSTANCE, {
            "b_id": row.id, "b_revision": loaded.seen_revision, "b_audit_seq": loaded.seen_audit_seq, **values,
        }).rowcount
        if moved != 1:
            raise StaleInstance(f"process instance {row.id} was changed by someone else", instance_id=row.id)
    for statement, params in held:
        session.connection().execute(statement, params)
    for key, value in values.items():  # the caller's record reflects what was stored
        setattr(row, key, value)
    _insert_events(session)


def _chain(session: Session, row: InstanceRecord | InstanceRow, seen_seq: int, events: list[Event]) -> dict[str, Any]:
    """Hash-chain ``events`` onto the instance's chain; returns the new head for the row update."""
    if not events:
        return {}
    rows, head, seq = audit.chain_instance_events(
        row.id, (row.definition_id, row.definition_key, row.definition_version), seen_seq,
        row.last_audit_hash if seen_seq else None, events)
    session.info.setdefault("sopflow_audit_rows", []).extend(rows)
    return {"audit_seq": seq, "last_audit_hash": head}


def _insert_events(session: Session) -> None:
    rows = session.info.pop("sopflow_audit_rows", [])
    if rows:
        audit.insert_rows(session, rows)


def _append_events(session: Session, row: InstanceRecord | InstanceRow, seen_seq: int, events: list[Event]) -> None:
    """Audit events that do not change the workflow (claim, assign): compare-and-set on the head."""
    head = _chain(session, row, seen_seq, events)
    if not head:
        return
    moved = rowcount(session.execute(
        update(InstanceRow).where(InstanceRow.id == row.id, InstanceRow.audit_seq == seen_seq)
        .values(**head).execution_options(synchronize_session=False)
    ))
    if moved != 1:
        raise StaleInstance(f"process instance {row.id} was changed by someone else", instance_id=row.id)
    _insert_events(session)


# --------------------------------------------------------------------------- deploy


@dataclass
class DeployResult:
    deployment_id: str
    created: bool
    definitions: list[dict[str, Any]]


def _definitions_of(session: Session, deployment_id: str) -> list[dict[str, Any]]:
    rows = session.scalars(select(DefinitionRow).where(DefinitionRow.deployment_id == deployment_id)
                           .order_by(DefinitionRow.key)).all()
    return [{"id": r.id, "key": r.key, "version": r.version, "name": r.name, "resource": r.resource_name}
            for r in rows]


def _definition_dict(row: DefinitionRow) -> dict[str, Any]:
    return {"id": row.id, "key": row.key, "version": row.version, "name": row.name, "resource": row.resource_name}


def deploy(session: Session, *, files: list[UploadedFile], actor: Actor, name: str | None = None,
           settings: Settings | None = None) -> DeployResult:
    """Deploy a bundle of BPMN/DMN files; a process whose parsed content is unchanged keeps its version.

    Identical bytes return the earlier deployment at once. Otherwise each process is
    compared by the hash of its parsed spec and metadata with the latest version of its
    key (so re-uploading one file of a bundle, or a bundle with an untouched file, does
    not create versions nobody changed); a deployment row is written only if something
    is new.
    """
    settings = settings or load_settings()
    checksum = bundle_checksum(files) if files else ""
    existing = session.scalar(select(DeploymentRow).where(DeploymentRow.checksum == checksum))
    if existing is not None:
        return DeployResult(existing.id, False, _definitions_of(session, existing.id))
    bundle = parse_bundle(files, settings)
    now = clock.now()
    deployment_id = str(uuid.uuid4())
    results, new_rows = [], []
    for process in bundle.processes:
        spec_text = dump_specs(bundle.dialect, process.spec, process.subprocess_specs)
        user_tasks = {k: m.to_dict() for k, m in process.user_tasks.items()}
        content_hash = hashlib.sha256(
            (spec_text + audit.canonical(user_tasks) + audit.canonical(process.message_names)).encode()).hexdigest()
        latest = session.scalars(select(DefinitionRow).where(DefinitionRow.key == process.key)
                                 .order_by(DefinitionRow.version.desc()).limit(1)).first()
        if latest is not None and latest.content_hash == content_hash:
            results.append(_definition_dict(latest))
            continue
        row = DefinitionRow(
            id=str(uuid.uuid4()), key=process.key, version=(latest.version if latest else 0) + 1, name=process.name,
            deployment_id=deployment_id, resource_name=process.resource_name, spec=spec_text,
            user_tasks=user_tasks, message_names=process.message_names, start_messages=process.start_messages,
            content_hash=content_hash, created_at=now,
        )
        new_rows.append(row)
        results.append(_definition_dict(row))
    if not new_rows:
        deployed_in = session.scalar(select(DefinitionRow.deployment_id).where(DefinitionRow.id == results[0]["id"]))
        return DeployResult(str(deployed_in), False, results)
    session.add(DeploymentRow(id=deployment_id, name=name or ", ".join(sorted(f.name for f in files))[:200],
                              checksum=checksum, dialect=bundle.dialect, deployed_by=actor.name, deployed_at=now))
    session.flush()
    session.add_all([DeploymentResourceRow(deployment_id=deployment_id, name=f.name, content=f.data,
                                           sha256=hashlib.sha256(f.data).hexdigest()) for f in files])
    session.add_all(new_rows)
    session.flush()
    audit.append_global(session, audit.DEPLOYMENTS_CHAIN, [Event("deployment.created", actor.name, {
        "deployment_id": deployment_id, "checksum": checksum, "files": sorted(f.name for f in files),
        "definitions": [{"key": r.key, "version": r.version} for r in new_rows],
    })])
    return DeployResult(deployment_id, True, results)


# --------------------------------------------------------------------------- instances


def latest_definition(session: Session, key: str, version: int | None = None) -> DefinitionRow:
    query = select(DefinitionRow).where(DefinitionRow.key == key)
    query = query.where(DefinitionRow.version == version) if version else query.order_by(
        DefinitionRow.version.desc())
    row = session.scalars(query.limit(1)).first()
    if row is None:
        raise _no_definition(key, version)
    return row


def _no_definition(key: str, version: int | None) -> NotFound:
    suffix = f" version {version}" if version else ""
    return NotFound(f"no process definition with key '{key}'{suffix}", key=key)


def _definition_for_start(session: Session, key: str, version: int | None) -> DefinitionInfo:
    """The definition to start: one light query for its id, the rest from the immutable cache."""
    if version:
        definition_id = session.connection().execute(_VERSION_ID, {"b_key": key, "b_version": version}).scalar()
    else:
        definition_id = session.connection().execute(_LATEST_ID, {"b_key": key}).scalar()
    if definition_id is None:
        raise _no_definition(key, version)
    return _definition(session, definition_id)


def start_instance(session: Session, *, key: str, actor: Actor, variables: dict[str, Any] | None = None,
                   business_key: str | None = None, version: int | None = None,
                   settings: Settings | None = None) -> InstanceRecord:
    return _start(session, _definition_for_start(session, key, version), actor=actor,
                  data=_check_variables(variables), business_key=business_key, settings=settings or load_settings())


def _start(session: Session, definition: DefinitionInfo, *, actor: Actor, data: dict[str, Any],
           business_key: str | None, settings: Settings, message: str | None = None) -> InstanceRecord:
    if business_key is not None and (not isinstance(business_key, str) or len(business_key) > 200):
        raise InvalidInput("business_key must be a string of at most 200 characters", field="business_key")
    specs = _specs(session, definition)
    workflow = new_workflow(specs)
    for task in workflow.get_tasks(state=TaskState.READY):
        task.data.update(data)
    row = InstanceRecord(
        id=time_ordered_id(), definition_id=definition.id, definition_key=definition.key,
        definition_version=definition.version, business_key=business_key, started_by=actor.name,
        started_at=clock.now(), audit_seq=0, revision=0, open_task_ids=[], waits=0, last_audit_hash=None,
    )
    loaded = _Loaded(row, definition, specs, workflow, 0, 0)
    loaded.events.append(Event("instance.started", actor.name, {
        "variables": data, "business_key": business_key, "definition_key": definition.key,
        "definition_version": definition.version, **({"message": message} if message else {}),
    }))
    _run(loaded, actor, settings)
    if message is not None:  # a message start event waits for this very message
        _deliver(loaded, message, data, actor)
        _run(loaded, actor, settings)
    _persist(session, loaded, actor, new=True)
    return row


def cancel_instance(session: Session, *, instance_id: str, actor: Actor, reason: str | None = None) -> None:
    loaded = _load(session, instance_id)
    loaded.workflow.cancel()
    loaded.events.append(Event("instance.cancelled", actor.name, {"reason": reason}))
    _persist(session, loaded, actor, status="cancelled", end_reason=reason)


# --------------------------------------------------------------------------- tasks


def get_task_row(session: Session, task_id: str, *, fresh: bool = False) -> TaskRow:
    row = session.get(TaskRow, task_id, populate_existing=fresh)
    if row is None:
        raise NotFound(f"task {task_id} not found", task_id=task_id)
    return row


def is_candidate(row: TaskRow, actor: Actor) -> bool:
    if not row.candidate_users and not row.candidate_groups:
        return True  # nobody named: any employee may take it (Camunda's behaviour)
    return actor.name in row.candidate_users or bool(actor.groups & set(row.candidate_groups))


def _require_open(row: TaskRow) -> None:
    if row.state != "open":
        raise Conflict(f"task '{row.name}' is already {row.state}", task_id=row.id, state=row.state)


def may_work_on(row: TaskRow, actor: Actor) -> bool:
    if actor.is_admin:
        return True
    if row.assignee:
        return row.assignee == actor.name
    return is_candidate(row, actor)


def _change_task(session: Session, row: TaskRow, event: Event, **values: Any) -> TaskRow:
    """Change an open task's assignment, guarded: it must still look as this command saw it.

    The UPDATE's WHERE repeats what was read (state and assignee), so two people claiming
    at once cannot both win; the loser's retry sees the new assignee. The audit event goes
    on the instance's chain with a compare-and-set on its head.
    """
    instance = session.get(InstanceRow, row.instance_id)  # one read: the chain head and its sequence
    if instance is None:  # the task row references it; only a concurrent delete could get here
        raise StaleInstance(f"process instance {row.instance_id} is gone", instance_id=row.instance_id)
    seen_seq = instance.audit_seq or 0
    assignee_was = TaskRow.assignee.is_(None) if row.assignee is None else TaskRow.assignee == row.assignee
    changed = rowcount(session.execute(
        update(TaskRow).where(TaskRow.id == row.id, TaskRow.state == "open", assignee_was)
        .values(**values).execution_options(synchronize_session=False)
    ))
    if changed != 1:
        raise StaleInstance(f"task {row.id} was changed by someone else", task_id=row.id)
    _append_events(session, instance, seen_seq, [event])
    return get_task_row(session, row.id, fresh=True)


def claim_task(session: Session, *, task_id: str, actor: Actor) -> TaskRow:
    row = get_task_row(session, task_id)
    _require_open(row)
    if row.assignee == actor.name:
        return row
    if row.assignee:
        raise Conflict(f"task '{row.name}' is already claimed by {row.assignee}", task_id=row.id,
                       assignee=row.assignee)
    if not (is_candidate(row, actor) or actor.is_admin):
        raise Forbidden(f"you are not a candidate for task '{row.name}'", task_id=row.id)
    return _change_task(session, row, Event("task.claimed", actor.name, {"assignee": actor.name}, task_id=row.id),
                        assignee=actor.name, claimed_at=clock.now())


def unclaim_task(session: Session, *, task_id: str, actor: Actor) -> TaskRow:
    row = get_task_row(session, task_id)
    _require_open(row)
    if not row.assignee:
        return row
    if row.assignee != actor.name and not actor.is_admin:
        raise Forbidden(f"task '{row.name}' is claimed by {row.assignee}; only they can release it",
                        task_id=row.id)
    return _change_task(session, row, Event("task.unclaimed", actor.name, {"previous_assignee": row.assignee},
                                            task_id=row.id), assignee=None, claimed_at=None)


def assign_task(session: Session, *, task_id: str, assignee: str | None, actor: Actor) -> TaskRow:
    """Set or clear the assignee. Who may assign is the caller's decision (a role check at the edge)."""
    row = get_task_row(session, task_id)
    _require_open(row)
    if assignee is not None and (not isinstance(assignee, str) or not assignee.strip() or len(assignee) > 100):
        raise InvalidInput("assignee must be a user name", field="assignee")
    event = Event("task.assigned", actor.name, {"assignee": assignee, "previous_assignee": row.assignee},
                  task_id=row.id)
    return _change_task(session, row, event, assignee=assignee, claimed_at=clock.now() if assignee else None)


def _coerce_form_fields(fields: list[dict[str, Any]], variables: dict[str, Any]) -> dict[str, Any]:
    """Camunda generated-form fields: required and type checks, with the common coercions."""
    errors: dict[str, str] = {}
    out = dict(variables)
    for f in fields:
        fid, ftype = f["id"], (f.get("type") or "string")
        value = variables.get(fid)
        if value is None or value == "":
            if f.get("required"):
                errors[fid] = "is required"
            continue
        try:
            if ftype == "long":
                if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                    raise ValueError
                out[fid] = int(value)
            elif ftype == "boolean":
                if not isinstance(value, bool):
                    raise ValueError
            elif ftype == "date":
                out[fid] = date.fromisoformat(str(value)[:10]) if not isinstance(value, date) else value
            elif ftype == "enum":
                options = {o["id"] for o in f.get("options", [])}
                if options and value not in options:
                    errors[fid] = f"must be one of {sorted(options)}"
            elif ftype in ("decimal", "double"):
                out[fid] = Decimal(str(value)) if ftype == "decimal" else float(value)
            elif not isinstance(value, str):
                raise ValueError
        except (ValueError, TypeError, InvalidOperation):
            errors[fid] = f"must be a {ftype}"
    if errors:
        first = next(iter(errors))
        raise InvalidInput("the form has invalid fields: " + "; ".join(f"{k} {v}" for k, v in errors.items()),
                           field=first, errors=errors)
    return out


def complete_task(session: Session, *, task_id: str, actor: Actor, variables: dict[str, Any] | None = None,
                  settings: Settings | None = None) -> InstanceRecord:
    """Complete a READY user task with the submitted variables; returns the instance as stored."""
    settings = settings or load_settings()
    data = _check_variables(variables)
    row: Any = session.connection().execute(_SELECT_TASK, {"b_id": task_id}).first()  # a tasks row, Core
    if row is None:
        raise NotFound(f"task {task_id} not found", task_id=task_id)
    _require_open(row)
    if not may_work_on(row, actor):
        whose = f"claimed by {row.assignee}" if row.assignee else "not in your groups"
        raise Forbidden(f"task '{row.name}' is {whose}", task_id=row.id)
    loaded = _load(session, row.instance_id)
    meta = loaded.definition.user_tasks.get(row.meta_key) or {}
    form = forms.form_for(row.form_key, meta.get("form_fields"))
    if form and not form.get("generated"):
        forms.validate(form, data)
    if meta.get("form_fields"):
        data = _coerce_form_fields(meta["form_fields"], data)
    task = loaded.workflow.get_task_from_id(UUID(task_id))
    if task is None or task.state != TaskState.READY or not task.task_spec.manual:
        raise Conflict(f"task '{row.name}' can no longer be completed", task_id=row.id)
    before = {k: task.data.get(k) for k in data}
    variable = getattr(task.task_spec, "variable", None)  # Spiff UserTask's variableName
    if variable:
        task.data[variable] = data
    else:
        task.data.update(data)
    try:
        task.run()
    except (SpiffWorkflowException, ScriptBudgetExceeded, ScriptRefused) as exc:
        raise _spiff_error(exc) from None
    closed = session.connection().execute(_CLOSE_TASK, {
        "b_id": row.id, "state": "completed", "ended_at": clock.now(), "completed_by": actor.name}).rowcount
    if closed != 1:
        raise StaleInstance(f"task {row.id} was changed by someone else", task_id=row.id)
    loaded.completed_task = row.id
    loaded.events.append(Event("task.completed", actor.name, {
        "element_id": row.element_id, "name": row.name, "variables": data,
        "changed": {k: {"from": before[k], "to": v} for k, v in data.items() if before[k] != v},
    }, task_id=row.id))
    _run(loaded, actor, settings)
    _persist(session, loaded, actor)
    return loaded.row


# --------------------------------------------------------------------------- events


def correlate_message(session: Session, *, name: str, actor: Actor, business_key: str | None = None,
                      correlation: dict[str, Any] | None = None, variables: dict[str, Any] | None = None,
                      all_matches: bool = False, settings: Settings | None = None) -> list[str]:
    settings = settings or load_settings()
    data = _check_variables(variables)
    if not isinstance(name, str) or not name:
        raise InvalidInput("a message needs a name", field="name")
    correlation = _check_variables(correlation, "correlation")
    query = (select(SubscriptionRow.instance_id).join(InstanceRow, InstanceRow.id == SubscriptionRow.instance_id)
             .where(SubscriptionRow.name == name, InstanceRow.status == "running").distinct())
    if business_key is not None:
        query = query.where(InstanceRow.business_key == business_key)
    instance_ids = sorted(session.scalars(query))
    if correlation:
        matched = []
        for iid, values in session.execute(select(InstanceRow.id, InstanceRow.variables)
                                           .where(InstanceRow.id.in_(instance_ids))):
            if all(_json_safe({k: v}).get(k) == (values or {}).get(k) for k, v in correlation.items()):
                matched.append(iid)
        instance_ids = sorted(matched)
    if not instance_ids:
        return _start_by_message(session, name=name, actor=actor, business_key=business_key, data=data,
                                 all_matches=all_matches, settings=settings)
    if len(instance_ids) > 1 and not all_matches:
        raise Conflict(f"{len(instance_ids)} instances wait for message '{name}'; narrow it with a business key "
                       "or correlation variables, or deliver to all", message_name=name, matches=len(instance_ids))
    for instance_id in instance_ids:
        loaded = _load(session, instance_id)
        _deliver(loaded, name, data, actor)
        _run(loaded, actor, settings)
        _persist(session, loaded, actor)
    return instance_ids


def _deliver(loaded: _Loaded, name: str, data: dict[str, Any], actor: Actor) -> None:
    waiting = [t for t in projections.waiting_events(loaded.workflow) if name in projections.message_names(t)]
    # the event must be of the catching definition's own class (Spiff and Camunda dialects differ)
    definition = projections.message_definition(waiting[0], name) if waiting else MessageEventDefinition(name)
    try:
        loaded.workflow.send_event(BpmnEvent(definition, payload=data))
    except SpiffWorkflowException as exc:
        raise _spiff_error(exc) from None
    for task in waiting:
        ed = projections.message_definition(task, name)
        if getattr(ed, "message_var", "") is None or getattr(ed, "variable", "") is None:
            task.data.update(data)  # these dialects drop a payload that has no variable to land in
    loaded.events.append(Event("message.correlated", actor.name, {"message": name, "variables": data}))


def _start_by_message(session: Session, *, name: str, actor: Actor, business_key: str | None,
                      data: dict[str, Any], all_matches: bool, settings: Settings) -> list[str]:
    """No instance waits for the message: start the latest definitions whose start event catches it."""
    latest = select(DefinitionRow.key, func.max(DefinitionRow.version).label("v")).group_by(
        DefinitionRow.key).subquery()
    candidates = [
        d for d in session.scalars(select(DefinitionRow).join(
            latest, (latest.c.key == DefinitionRow.key) & (latest.c.v == DefinitionRow.version)))
        if name in (d.start_messages or [])
    ]
    if not candidates:
        raise NotFound(f"no running instance is waiting for message '{name}' and no process starts with it",
                       message_name=name)
    if len(candidates) > 1 and not all_matches:
        raise Conflict(f"{len(candidates)} processes start with message '{name}'; deliver to all or rename one",
                       message_name=name, matches=len(candidates))
    return [_start(session, _info(d), actor=actor, data=data, business_key=business_key, settings=settings,
                   message=name).id for d in sorted(candidates, key=lambda d: d.key)]


def fire_timers(session: Session, *, instance_id: str, job_ids: list[str] | None = None, actor: Actor = SYSTEM,
                settings: Settings | None = None) -> int:
    """Fire the instance's due timers. Returns how many were due."""
    settings = settings or load_settings()
    now = clock.now()
    status = session.scalar(select(InstanceRow.status).where(InstanceRow.id == instance_id))
    if status != "running":  # gone or ended: its jobs go too; the full row is read only if a timer is due
        session.execute(delete(JobRow).where(JobRow.instance_id == instance_id))
        return 0
    due_query = select(JobRow).where(JobRow.instance_id == instance_id, JobRow.due_at <= now,
                                     JobRow.state == "pending")
    if job_ids is not None:
        due_query = due_query.where(JobRow.id.in_(job_ids))
    due = session.scalars(due_query).all()
    if not due:
        return 0
    loaded = _load(session, instance_id)
    for job in due:
        loaded.events.append(Event("timer.fired", actor.name, {"element_id": job.element_id, "due_at": job.due_at},
                                   task_id=job.task_id))
    try:
        loaded.workflow.refresh_timers()
    except SpiffWorkflowException as exc:
        raise _spiff_error(exc) from None
    _run(loaded, actor, settings)
    _persist(session, loaded, actor)
    return len(due)
