"""The unit of work every command shares: load an instance, run the engine, persist it.

Each command (DESIGN.md) takes a session, loads the instance (serialized workflow +
``revision``) with :func:`load`, applies itself through SpiffWorkflow, runs engine steps
until every token waits (:func:`run`), then :func:`persist` writes the new state with
``UPDATE ... WHERE revision = :seen`` (0 rows -> :class:`StaleInstance`, which the edge
retries), re-syncs the ``tasks``/``jobs``/``event_subscriptions`` projections and
appends hash-chained audit events. Commands only flush; the edge commits.

The command families live beside this module: ``deployments``, ``instances``,
``tasks``, ``messages``, ``timers`` and ``external_tasks`` (with incidents).
"""
from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, datetime, time
from decimal import Decimal
from pathlib import Path
from types import TracebackType
from typing import Any
from uuid import UUID

from SpiffWorkflow.bpmn import BpmnWorkflow
from SpiffWorkflow.bpmn.specs.mixins.multiinstance_task import MultiInstanceTask
from SpiffWorkflow.exceptions import SpiffWorkflowException
from SpiffWorkflow.task import Task
from SpiffWorkflow.util.task import TaskState
from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.orm import Session

from engine import audit, clock, limits, projections, spiff_patches, variables
from engine import sandbox as sandbox_module
from engine.actor import Actor
from engine.audit import Event
from engine.config import Settings
from engine.config import load as load_settings
from engine.errors import Conflict, InvalidInput, NotFound, Phrase, ScriptError, SopflowError, StaleInstance
from engine.execution import BudgetExceeded, EngineBudget, run_engine
from engine.sandbox import ScriptBudgetExceeded, ScriptRefused, ScriptResultError
from engine.serialization import SPECS, STATE_FORMAT, Specs, dump_state, load_state
from engine.store.db import rowcount
from engine.store.models import DefinitionRow, InstanceRecord, InstanceRow

log = logging.getLogger("sopflow.engine")

# --------------------------------------------------------------------------- helpers

_JSON_SCALARS = (str, int, float, bool, type(None), date, datetime, time, Decimal)


def check_variables(variables: Any, what: str = "variables") -> dict[str, Any]:
    if variables is None:
        return {}
    if not isinstance(variables, dict):
        raise InvalidInput("{what} must be an object mapping names to values", field=what,
                           params={"what": what})

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
            raise InvalidInput("'{name}' is not a valid variable name (letters, digits and _, not starting "
                               "with _ or a digit)", field=str(name), params={"name": name})
        if not ok(value):
            raise InvalidInput("variable '{name}' holds a value that cannot be stored", field=name,
                               params={"name": name})
    return dict(variables)


def json_safe(data: dict[str, Any]) -> dict[str, Any]:
    safe: dict[str, Any] = json.loads(audit.canonical({k: v for k, v in data.items() if not k.startswith("_")}))
    return safe


def instance_variables(workflow: BpmnWorkflow) -> dict[str, Any]:
    """The instance's process variables, JSON-safe, without internal names (``_...``).

    One set per instance (:mod:`engine.variables`), whatever its state: running, completed
    or cancelled (a cancelled instance keeps the variables it had).
    """
    variables.ensure(workflow)
    return variables.as_json(variables.process_variables(workflow))


@dataclass(frozen=True)
class DefinitionInfo:
    """What commands need of a deployed definition; definitions never change once deployed."""

    id: str
    key: str
    version: int
    user_tasks: dict[str, Any]
    start_form: dict[str, Any] | None = None  # {"element_id", "form_key", "form_fields"} (engine.loading)


_DEFINITIONS: dict[str, DefinitionInfo] = {}


def definition_info(row: DefinitionRow) -> DefinitionInfo:
    info = _DEFINITIONS.get(row.id)
    if info is None:
        info = _DEFINITIONS[row.id] = DefinitionInfo(row.id, row.key, row.version, dict(row.user_tasks), row.start_form)
    return info


def get_definition(session: Session, definition_id: str) -> DefinitionInfo:
    info = _DEFINITIONS.get(definition_id)
    if info is not None:
        return info
    row = session.get(DefinitionRow, definition_id)
    if row is None:
        raise NotFound("process definition {definition_id} not found",
                       params={"definition_id": definition_id})
    return definition_info(row)


def specs_for(session: Session, definition: DefinitionInfo) -> Specs:
    def spec_text() -> str:
        text = session.scalar(select(DefinitionRow.spec).where(DefinitionRow.id == definition.id))
        if text is None:
            raise NotFound("process definition {id} not found", params={"id": definition.id})
        return text

    return SPECS.get(definition.id, spec_text)


# Hot-path statements, built once: SQLAlchemy then reuses their compiled form.
_SELECT_INSTANCE = select(InstanceRow.__table__).where(InstanceRow.id == bindparam("b_id"))
_INSERT_INSTANCE = insert(InstanceRow)
_UPDATE_INSTANCE = update(InstanceRow).where(
    InstanceRow.id == bindparam("b_id"), InstanceRow.revision == bindparam("b_revision"),
    InstanceRow.audit_seq == bindparam("b_audit_seq"))
_LATEST_ID = (select(DefinitionRow.id).where(DefinitionRow.key == bindparam("b_key"))
              .order_by(DefinitionRow.version.desc()).limit(1))
_VERSION_ID = select(DefinitionRow.id).where(DefinitionRow.key == bindparam("b_key"),
                                             DefinitionRow.version == bindparam("b_version"))


@dataclass
class Loaded:
    row: InstanceRecord
    definition: DefinitionInfo
    specs: Specs
    workflow: BpmnWorkflow
    seen_revision: int
    seen_audit_seq: int
    events: list[Event] = field(default_factory=list)
    completed_task: str | None = None  # the task row this command closed itself
    settings: Settings | None = None  # the budgets the engine ran under (set by :func:`run`)
    message_depth: int = 0  # hops of instance-to-instance messages that led to this command's step


def load(session: Session, instance_id: str, *, running: bool = True, record: InstanceRecord | None = None) -> Loaded:
    """Read and restore the instance (``record``: its row, already read in this transaction by the caller)."""
    if record is None:
        data = session.connection().execute(_SELECT_INSTANCE, {"b_id": instance_id}).mappings().first()
        if data is None:
            raise NotFound("process instance {instance_id} not found", instance_id=instance_id,
                           params={"instance_id": instance_id})
        record = InstanceRecord(**data)
    row = record
    if running and row.status != "running":
        raise Conflict("process instance {instance_id} is {status}", instance_id=instance_id,
                       status=row.status, params={"instance_id": instance_id, "status": row.status})
    definition = get_definition(session, row.definition_id)
    specs = specs_for(session, definition)
    workflow = load_state(row.state or "", specs)  # a stored instance always has its state
    variables.ensure(workflow)  # instances stored before process variables had their own place
    # its waiting timers fire only in the command that fires their jobs (engine.spiff_patches, timer gate)
    spiff_patches.gate_timers(workflow, [t.id for t in projections.waiting_timers(workflow)])
    return Loaded(row, definition, specs, workflow, row.revision, row.audit_seq or 0)


def find_task(workflow: BpmnWorkflow, task_id: UUID) -> Task | None:
    """The workflow's task with this id, in the workflow or any sub-workflow; None if it is gone.

    Not ``BpmnWorkflow.get_task_from_id``: it raises ``TaskNotFoundException`` instead of
    answering None, and for a task in any sub-workflow but the first it raises from the
    first one it asks.
    """
    for wf in (workflow, *workflow.subprocesses.values()):
        task = wf.tasks.get(task_id)
        if task is not None:
            return task
    return None


def _element_of(exc: BaseException) -> str | None:
    """The BPMN element a SpiffWorkflow error is about (its task spec, or its task's)."""
    for source in (getattr(exc, "task_spec", None), getattr(getattr(exc, "task", None), "task_spec", None)):
        element = getattr(source, "bpmn_id", None)
        if isinstance(element, str):
            return element
    return None


def _running_task(tb: TracebackType | None, *, innermost: bool = True) -> Task | None:
    """The BPMN task SpiffWorkflow was working on when an error escaped.

    Innermost: the task whose spec code raised (a fault in that element); outermost: the
    task the engine loop was running (where the time went).
    """
    frames = []
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    for frame in (reversed(frames) if innermost else frames):
        for name in ("my_task", "task"):
            candidate = frame.f_locals.get(name)
            if isinstance(candidate, Task) and isinstance(getattr(candidate.task_spec, "bpmn_id", None), str):
                return candidate
    return None


_MISSING = object()
_SOPFLOW_DIRS = tuple(str(Path(__file__).resolve().parents[2] / d) + os.sep for d in ("engine", "api"))
_SANDBOX = str(Path(sandbox_module.__file__).resolve())


def _raised_in_our_code(tb: TracebackType | None) -> bool:
    """Did the exception come from sopflow's own code (not SpiffWorkflow's, a script's or the sandbox's)?

    The innermost frame that is not the standard library decides.
    """
    frames = []
    while tb is not None:
        frames.append(tb.tb_frame.f_code.co_filename)
        tb = tb.tb_next
    stdlib = os.path.dirname(os.__file__) + os.sep
    for filename in reversed(frames):
        if filename.startswith(stdlib) and "site-packages" not in filename:
            continue
        return filename.startswith(_SOPFLOW_DIRS) and filename != _SANDBOX
    return False


def _collection_fault(task: Task | None) -> ScriptError | None:
    """A multi-instance task whose collection is missing or not a collection, said plainly."""
    spec = getattr(task, "task_spec", None)
    if task is None or not isinstance(spec, MultiInstanceTask) or spec.data_input is None:
        return None
    name = spec.data_input.bpmn_id
    value = task.data.get(name, _MISSING)
    if isinstance(value, (list, tuple, dict)):
        return None
    if value is _MISSING:
        return ScriptError(
            "multi-instance element '{bpmn_id}' runs once per item of the variable '{name}', which is not set; "
            "give '{name}' a list (in the start variables or an earlier step)", element_id=spec.bpmn_id,
            variable=name, params={"bpmn_id": spec.bpmn_id, "name": name})
    return ScriptError(
        "multi-instance element '{bpmn_id}' runs once per item of the variable '{name}', which is {value}, "
        "not a list; give '{name}' a list (in the start variables or an earlier step)", element_id=spec.bpmn_id,
        variable=name,
        params={"bpmn_id": spec.bpmn_id, "name": name, "value": json.dumps(value, default=str)[:60]})


def spiff_error(exc: Exception) -> ScriptError:
    """A SpiffWorkflow (or sandbox) error as a :class:`ScriptError` naming the element and line."""
    if isinstance(exc, ScriptError):
        return exc
    element = _element_of(exc)
    line = getattr(exc, "line_number", None) or None
    inner = getattr(exc, "exception", None) or exc.__cause__
    if isinstance(inner, BudgetExceeded):
        return inner
    if isinstance(inner, ScriptRefused):
        line = inner.line or line
    if isinstance(inner, ScriptBudgetExceeded) or isinstance(exc, ScriptBudgetExceeded):
        return ScriptError("element '{element}': {exc}", element_id=element, line=line,
                           params={"element": element, "exc": inner or exc})
    if element:
        return ScriptError("element '{element}' failed: {exc}", element_id=element, line=line,
                           params={"element": element, "exc": exc})
    return ScriptError("the workflow failed: {exc}", element_id=element, line=line, params={"exc": exc})


def _where(error: BudgetExceeded, tb: TracebackType | None) -> BudgetExceeded:
    """Name the element the engine was running when the budget ran out, if the error does not yet."""
    if "element_id" in error.context:
        return error
    task = _running_task(tb, innermost=False)
    if task is None:
        return error
    element = task.task_spec.bpmn_id
    return BudgetExceeded("{message} (while running element '{element}')", element_id=element,
                          params={"message": Phrase(error.template, **error.params), "element": element})


@contextmanager
def engine_faults(budget: EngineBudget | None = None) -> Iterator[None]:
    """Run SpiffWorkflow code so that whatever the diagram or its data does is a :class:`ScriptError`.

    - ``budget`` (steps and wall time) is checked inside SpiffWorkflow's own loops while
      this block runs (:class:`EngineBudget`);
    - SpiffWorkflow's and the sandbox's errors name the element (and line);
    - any other exception raised while SpiffWorkflow runs a spec (a ``TypeError`` or
      ``KeyError`` from its specs on data they did not expect, e.g. a multi-instance
      collection that is None) is the diagram's fault too: a 422 naming the element the
      engine was running, logged with its traceback;
    - an exception raised in sopflow's own code (``engine/``, ``api/``; not the sandbox)
      is our bug: logged with its traceback and re-raised (a 500 with a request id).
      Our own domain errors (:class:`SopflowError`) pass through unchanged.
    The caller's transaction rolls back, so the instance stays as it was.
    """
    try:
        if budget is None:
            yield
        else:
            with budget:
                yield
    except SopflowError as exc:
        if budget is not None and budget.exceeded is not None:
            raise _where(budget.exceeded, exc.__traceback__) from None
        raise
    except (SpiffWorkflowException, ScriptBudgetExceeded, ScriptRefused, ScriptResultError) as exc:
        if budget is not None and budget.exceeded is not None:
            raise budget.exceeded from None
        raise (_collection_fault(getattr(exc, "task", None)) or spiff_error(exc)) from None
    except RecursionError:
        raise ScriptError("the workflow recursed too deeply (a script or the diagram loops on itself)") from None
    except Exception as exc:
        if budget is not None and budget.exceeded is not None:
            raise budget.exceeded from None
        if _raised_in_our_code(exc.__traceback__):
            log.error("sopflow failed while running the engine (a bug, not the diagram's fault)", exc_info=True)
            raise
        task = _running_task(exc.__traceback__)
        element = task.task_spec.bpmn_id if task is not None else None
        log.warning("SpiffWorkflow raised %s while running element %s", type(exc).__name__, element, exc_info=True)
        fault = _collection_fault(task)
        if fault is None and element:
            fault = ScriptError("element '{element}' failed: {exc_type}: {exc}", element_id=element,
                                params={"element": element, "exc_type": type(exc).__name__, "exc": exc})
        if fault is None:
            fault = ScriptError("the workflow failed: {exc_type}: {exc}",
                                params={"exc_type": type(exc).__name__, "exc": exc})
        raise fault from None


def run(loaded: Loaded, actor: Actor, settings: Settings) -> None:
    loaded.settings = settings
    budget = EngineBudget(settings.command_max_steps, settings.command_max_seconds)

    activities: list[dict[str, Any]] = []
    ran: list[Task] = []

    def record(task: Task) -> None:
        ran.append(task)
        spec = task.task_spec
        changes = variables.take_changes(task)
        if getattr(spec, "bpmn_id", None) and task.state != TaskState.STARTED:  # STARTED: an external task waits
            activity = {"element_id": spec.bpmn_id, "name": spec.bpmn_name, "type": type(spec).__name__,
                        "task_id": str(task.id)}
            if changes:  # which step wrote which value: the trail says who won at a join
                activity["changed"] = changes
            activities.append(activity)

    with engine_faults(budget):
        try:
            run_engine(loaded.workflow, budget, record)
        except RecursionError:
            check_task_data(loaded.workflow.tasks.values())  # names the element whose data is too deep, if one is
            raise
    check_task_data(ran)
    timer_events(loaded, actor)
    if activities:  # one event per command: they all happened in this transaction, at this instant
        loaded.events.append(Event("activities.completed", actor.name, {"activities": activities}))


def timer_events(loaded: Loaded, actor: Actor) -> None:
    """Append a ``timer.fired`` event for each timer that fired in this command without a job.

    A timer the command reached anew whose due time had already passed (``PT0S``, a past
    ``timeDate``, a cycle that started in the past) fires at once inside the command
    (SpiffWorkflow's behaviour, kept); timers that had a job fire only in the command that
    fires the job, which writes their events itself (``engine.commands.timers.run_firing``).
    So every firing is in the audit trail exactly once.
    """
    for task, due_at in spiff_patches.take_timer_firings(loaded.workflow):
        loaded.events.append(Event("timer.fired", actor.name, {"element_id": task.task_spec.bpmn_id,
                                                               "due_at": due_at}, task_id=str(task.id)))


def check_task_data(tasks: Any) -> None:
    """Refuse (422 naming the element) when a task's data cannot be stored (see :mod:`engine.limits`).

    Called on the tasks a command ran, before anything is serialized: a script can build
    data nested thousands deep, a list that contains itself or text with lone surrogates,
    which would otherwise fail in the JSON encoder, the database or the audit hash.
    The element named is the first (in the order given) whose data breaks a bound.
    """
    for task in tasks:
        problem = limits.find_problem_in_variables(task.data)
        if problem is not None:
            element = getattr(task.task_spec, "bpmn_id", None) or task.task_spec.name
            what = Phrase("the variable")
            raise ScriptError("element '{element}' left data that cannot be stored: {value}", element_id=element,
                              variable=problem.path,
                              params={"element": element, "value": problem.describe(what)})


@dataclass
class Plan:
    """What :func:`persist` will write for one instance, computed with no write (:func:`plan`)."""

    row: InstanceRecord
    values: dict[str, Any]  # the instance row's new columns
    new: bool
    ended: bool
    seen_revision: int
    seen_audit_seq: int
    held: list[tuple[Any, Any]]  # projection writes, run once the instance row is written
    audit_rows: list[dict[str, Any]]  # the hash-chained audit rows (engine.audit)
    outgoing: list[Any]  # thrown messages to route after the write (messages.route_thrown)
    clear_subscriptions: bool  # an ended instance's definition has message subscriptions to delete


def plan(session: Session, loaded: Loaded, actor: Actor, *, new: bool = False,
         status: str | None = None, end_reason: str | None = None) -> Plan:
    """Compute everything :func:`persist` writes (state, variables, projection rows, the audit chain).

    Reads only, apart from what the projections of waits and external tasks change through
    the session when the instance keeps running or has external tasks (ORM rows, flushed at
    the next flush); a plan of an instance that ends, has no external tasks and threw no
    message (:func:`deferrable`) writes nothing at all.
    """
    from engine.commands import messages  # late: the messages family builds on this module

    row, workflow = loaded.row, loaded.workflow
    timer_events(loaded, actor)  # fired after the last engine run, if any did
    outgoing = messages.take_thrown(session, loaded, actor) if workflow.bpmn_events else []
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
    with session.no_autoflush:  # plan: reads and computation only (external-task row updates aside)
        values["open_task_ids"] = projections.sync_tasks(
            session, row, workflow, loaded.definition.user_tasks, loaded.events, actor.name,
            revision=values["revision"], completed=loaded.completed_task, held=held,
            at_risk_fraction=(loaded.settings or load_settings()).sla_at_risk_fraction)
        external = projections.sync_external_tasks(session, row, workflow, loaded.events, actor.name, held=held,
                                                   cancelled=status == "cancelled")
        if ended:
            values["waits"] = 0
            if status == "completed":
                loaded.events.append(Event("instance.completed", actor.name, {"variables": values["variables"]}))
        else:
            values["waits"] = projections.sync_waits(session, row, workflow, loaded.events, actor.name) + external
        audit_rows: list[dict[str, Any]] = []
        values.update(_chain(row, loaded.seen_audit_seq, loaded.events, audit_rows))
    return Plan(row, values, new, ended, loaded.seen_revision, loaded.seen_audit_seq, held, audit_rows, outgoing,
                clear_subscriptions=ended and bool(row.waits) and projections.spec_features(workflow).messages)


def deferrable(loaded: Loaded) -> bool:
    """Whether :func:`plan` of this instance (after its engine run) writes nothing through the session.

    True when the instance ends now (completed: no waits to re-sync), threw no message and its
    definition has no external tasks: its plan can be written later, together with others'
    (:func:`write_plans`).
    """
    workflow = loaded.workflow
    return (not workflow.bpmn_events and workflow.is_completed()
            and not projections.spec_features(workflow).external)


def _guarded_update(planned: Plan) -> dict[str, Any]:
    """The parameters of ``_UPDATE_INSTANCE`` for a plan: its new values, guarded by what it saw."""
    return {"b_id": planned.row.id, "b_revision": planned.seen_revision, "b_audit_seq": planned.seen_audit_seq,
            **planned.values}


def _write_plan(session: Session, planned: Plan) -> None:
    row, values = planned.row, planned.values
    # the instance row first (the revision check; on PostgreSQL its row lock also orders this
    # command before any other on the instance), then the rows that hang off it
    if planned.new:
        identity = {c: getattr(row, c) for c in ("id", "definition_id", "definition_key", "definition_version",
                                                 "business_key", "started_by", "started_at")}
        session.connection().execute(_INSERT_INSTANCE, {**identity, **values})
    else:
        moved = session.connection().execute(_UPDATE_INSTANCE, _guarded_update(planned)).rowcount
        if moved != 1:
            raise StaleInstance("process instance {id} was changed by someone else", instance_id=row.id,
                                params={"id": row.id})
    if planned.ended and row.waits:
        projections.clear_rows(session, row.id, subscriptions=planned.clear_subscriptions)
    for statement, params in planned.held:
        session.connection().execute(statement, params)
    for key, value in values.items():  # the caller's record reflects what was stored
        setattr(row, key, value)
    session.info.setdefault("sopflow_audit_rows", []).extend(planned.audit_rows)
    _insert_events(session)


def persist(session: Session, loaded: Loaded, actor: Actor, *, new: bool = False,
             status: str | None = None, end_reason: str | None = None) -> None:
    """Store state, projections and audit in the current transaction (the unit of work's steps 4-6).

    Everything is computed first (:func:`plan`: state, variables, projection rows, expressions
    on new tasks, the audit chain) and written after, instance row first: on SQLite the write
    lock is taken at that first write (:meth:`engine.store.db.Database.command`), so it
    is held for the writes only. A new instance is one INSERT; an existing one is one
    ``UPDATE ... WHERE revision = :seen`` that also moves its audit-chain head. 0 rows
    means another command moved it first (:class:`StaleInstance`, retried by the edge),
    and everything written here rolls back. Messages the instance threw that nothing
    inside it caught are then delivered to the instances waiting for them, in this same
    transaction (``messages.route_thrown``).
    """
    from engine.commands import messages  # late: the messages family builds on this module

    planned = plan(session, loaded, actor, new=new, status=status, end_reason=end_reason)
    _write_plan(session, planned)
    if planned.outgoing:
        messages.route_thrown(session, loaded, planned.outgoing, actor, loaded.settings or load_settings())


_GUARDS = select(InstanceRow.id, InstanceRow.revision, InstanceRow.audit_seq).where(
    InstanceRow.id.in_(bindparam("b_ids", expanding=True))).order_by(InstanceRow.id)


def write_plans(session: Session, plans: list[Plan]) -> list[str]:
    """Write the plans of several existing instances (each :func:`deferrable`); returns the stale ones' ids.

    First the guards of all of them are read in one query (``FOR UPDATE`` on PostgreSQL, so
    they cannot move before the UPDATEs; on SQLite the caller holds the write lock): an
    instance whose ``revision`` or audit head moved since it was loaded is dropped before
    anything of it is written (the caller fires it alone). The others are written with one
    ``executemany`` per statement: the guarded instance UPDATEs, the job and subscription
    DELETEs of the ended instances; then their held projection writes. A guarded UPDATE that
    still matched fewer rows than planned raises :class:`StaleInstance` (the caller's
    transaction must then roll back as a whole).
    """
    if not plans:
        return []
    query = _GUARDS if session.get_bind().dialect.name == "sqlite" else _GUARDS.with_for_update()
    current = {r.id: (r.revision, r.audit_seq or 0)
               for r in session.connection().execute(query, {"b_ids": [p.row.id for p in plans]})}
    stale = [p.row.id for p in plans if current.get(p.row.id) != (p.seen_revision, p.seen_audit_seq)]
    fresh = [p for p in plans if current.get(p.row.id) == (p.seen_revision, p.seen_audit_seq)]
    by_columns: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for p in fresh:
        by_columns.setdefault(tuple(sorted(p.values)), []).append(_guarded_update(p))
    connection = session.connection()
    for params in by_columns.values():
        moved = connection.execute(_UPDATE_INSTANCE, params).rowcount
        if moved != len(params):
            raise StaleInstance("{stale} of {total} process instances were changed by someone else during the batch",
                                params={"stale": len(params) - moved, "total": len(params)})
    projections.clear_many(session, [p.row.id for p in fresh if p.ended and p.row.waits],
                           [p.row.id for p in fresh if p.ended and p.row.waits and p.clear_subscriptions])
    rows: list[dict[str, Any]] = session.info.setdefault("sopflow_audit_rows", [])
    for p in fresh:
        for statement, params in p.held:
            connection.execute(statement, params)
        for key, value in p.values.items():
            setattr(p.row, key, value)
        rows.extend(p.audit_rows)
    _insert_events(session)
    return stale


def _chain(row: InstanceRecord | InstanceRow, seen_seq: int, events: list[Event],
           into: list[dict[str, Any]]) -> dict[str, Any]:
    """Hash-chain ``events`` onto the instance's chain (rows appended to ``into``); returns the new head."""
    if not events:
        return {}
    rows, head, seq = audit.chain_instance_events(
        row.id, (row.definition_id, row.definition_key, row.definition_version), seen_seq,
        row.last_audit_hash if seen_seq else None, events)
    into.extend(rows)
    return {"audit_seq": seq, "last_audit_hash": head}


DEFERRED_AUDIT = "sopflow_deferred_audit_rows"  # session.info: a batch inserts its audit rows once (engine.worker)


def _insert_events(session: Session) -> None:
    rows = session.info.pop("sopflow_audit_rows", [])
    if not rows:
        return
    deferred = session.info.get(DEFERRED_AUDIT)
    if deferred is not None:  # the caller inserts them with the rest of its batch, if this unit succeeds
        deferred.extend(rows)
    else:
        audit.insert_rows(session, rows)


def append_events(session: Session, row: InstanceRecord | InstanceRow, seen_seq: int, events: list[Event]) -> None:
    """Audit events that do not change the workflow (claim, assign): compare-and-set on the head."""
    head = _chain(row, seen_seq, events, session.info.setdefault("sopflow_audit_rows", []))
    if not head:
        return
    moved = rowcount(session.execute(
        update(InstanceRow).where(InstanceRow.id == row.id, InstanceRow.audit_seq == seen_seq)
        .values(**head).execution_options(synchronize_session=False)
    ))
    if moved != 1:
        raise StaleInstance("process instance {id} was changed by someone else", instance_id=row.id,
                            params={"id": row.id})
    _insert_events(session)


