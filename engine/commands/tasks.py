"""User-task commands: claim, unclaim, assign and complete.

Guards SpiffWorkflow lacks: a user task is only ever run when it is READY and manual
(``task.run()`` would happily "complete" a FUTURE or COMPLETED task).
"""
from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from SpiffWorkflow.util.task import TaskState
from sqlalchemy import bindparam, select, update
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from engine import clock, forms
from engine import variables as pvars
from engine.actor import Actor
from engine.audit import Event
from engine.commands import unit
from engine.config import Settings
from engine.config import load as load_settings
from engine.errors import Conflict, Forbidden, InvalidInput, NotFound, Phrase, StaleInstance
from engine.projections import set_offered
from engine.store.db import rowcount
from engine.store.models import InstanceRecord, InstanceRow, TaskRow

_SELECT_TASK = select(TaskRow.__table__).where(TaskRow.id == bindparam("b_id"))
# Closing a task repeats what authorized it: still open, still assigned as when the command read it.
_CLOSE_TASK = update(TaskRow).where(TaskRow.id == bindparam("b_id"), TaskRow.state == "open",
                                    TaskRow.assignee.is_not_distinct_from(bindparam("b_assignee")))


def get_task_row(session: Session, task_id: str, *, fresh: bool = False) -> TaskRow:
    row = session.get(TaskRow, task_id, populate_existing=fresh)
    if row is None:
        raise NotFound("task {task_id} not found", task_id=task_id, params={"task_id": task_id})
    return row


def is_candidate(row: TaskRow, actor: Actor) -> bool:
    if not row.candidate_users and not row.candidate_groups:
        return True  # nobody named: any employee may take it (Camunda's behaviour)
    return actor.name in row.candidate_users or bool(actor.groups & set(row.candidate_groups))


def check_reach(row: Any, actor: Actor) -> None:
    """Refuse (403) a task outside the actor's reach, before anything else about it is told.

    The inbox's visibility rule (``engine.queries.task_scope``) plus named candidates, on the
    row the command has already read, so authorizing costs no second query: admins; the
    assignee; whoever completed it; a named candidate (user or group); anyone when nobody
    is named and the task is unassigned. ``row`` is a TaskRow or a Core row of ``tasks``.
    """
    if actor.is_admin or actor.name in (row.assignee, row.completed_by):
        return
    named = bool(row.candidate_users or row.candidate_groups)
    if is_candidate(row, actor) if named else row.assignee is None:
        return
    raise Forbidden("this task is not yours: it is assigned to someone else or not offered to your groups",
                    task_id=row.id)


def _require_open(row: TaskRow) -> None:
    if row.state != "open":
        raise Conflict("task '{name}' is already {state}", task_id=row.id, state=row.state,
                       params={"name": row.name, "state": row.state})


def may_work_on(row: TaskRow, actor: Actor) -> bool:
    if actor.is_admin:
        return True
    if row.assignee:
        return row.assignee == actor.name
    return is_candidate(row, actor)


def _change_task(session: Session, row: TaskRow, event: Event, **values: Any) -> TaskRow:
    """Change an open task's assignment, guarded: it must still look as this command saw it.

    The UPDATE's WHERE repeats what was read and authorized (state and assignee), so two
    people claiming at once cannot both win; the loser's retry sees the new assignee. The
    audit event goes on the instance's chain with a compare-and-set on its head, written
    first: every task command locks the instance row before the task row (as completing
    does), so two of them on PostgreSQL queue instead of deadlocking.
    """
    instance = session.get(InstanceRow, row.instance_id)  # one read: the chain head and its sequence
    if instance is None:  # the task row references it; only a concurrent delete could get here
        raise StaleInstance("process instance {instance_id} is gone", instance_id=row.instance_id,
                            params={"instance_id": row.instance_id})
    seen_seq = instance.audit_seq or 0
    unit.append_events(session, instance, seen_seq, [event])
    changed = rowcount(session.execute(
        update(TaskRow).where(TaskRow.id == row.id, TaskRow.state == "open",
                              TaskRow.assignee.is_not_distinct_from(row.assignee))
        .values(**values).execution_options(synchronize_session=False)
    ))
    if changed != 1:
        raise StaleInstance("task {id} was changed by someone else", task_id=row.id, params={"id": row.id})
    set_offered(session, [row.id], values["assignee"] is None)  # the inbox's offers follow the assignee
    for key, value in values.items():  # the row as stored, without reading it again under the write lock
        set_committed_value(row, key, value.astimezone(UTC) if isinstance(value, datetime) else value)
    return row


def claim_task(session: Session, *, task_id: str, actor: Actor) -> TaskRow:
    """Claim an open task for ``actor`` (idempotent for its assignee). Raises NotFound, Forbidden, Conflict."""
    row = get_task_row(session, task_id)
    check_reach(row, actor)
    _require_open(row)
    if row.assignee == actor.name:
        return row
    if row.assignee:
        raise Conflict("task '{name}' is already claimed by {assignee}", task_id=row.id,
                       assignee=row.assignee, params={"name": row.name, "assignee": row.assignee})
    if not (is_candidate(row, actor) or actor.is_admin):
        raise Forbidden("you are not a candidate for task '{name}'", task_id=row.id,
                        params={"name": row.name})
    return _change_task(session, row, Event("task.claimed", actor.name, {"assignee": actor.name}, task_id=row.id),
                        assignee=actor.name, claimed_at=clock.now())


def unclaim_task(session: Session, *, task_id: str, actor: Actor) -> TaskRow:
    """Release a claimed task (its assignee or an admin). Raises NotFound, Forbidden, Conflict."""
    row = get_task_row(session, task_id)
    check_reach(row, actor)
    _require_open(row)
    if not row.assignee:
        return row
    if row.assignee != actor.name and not actor.is_admin:
        raise Forbidden("task '{name}' is claimed by {assignee}; only they can release it",
                        task_id=row.id, params={"name": row.name, "assignee": row.assignee})
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


def complete_task(session: Session, *, task_id: str, actor: Actor, variables: dict[str, Any] | None = None,
                  settings: Settings | None = None) -> InstanceRecord:
    """Complete a READY user task with the submitted variables; returns the instance as stored.

    Who may complete is decided on the task row read in this transaction, and the UPDATE
    that closes the row repeats it (still open, same assignee): if an assign or claim
    slipped in between, nothing is stored and the command is retried, then refused
    (403/409).

    What a task may write (Camunda's form-field rule, made strict): exactly its form's
    fields, or, without a form, nothing; the model's ``writes`` property allows more names
    (or ``*``). Anything else is InvalidInput (422) naming the fields. The task runs on the
    latest process variables plus its own locals, and what it changed is written back
    (:mod:`engine.variables`); the ``task.completed`` audit event records each change's
    before and after. Raises NotFound, Forbidden, Conflict, InvalidInput, ScriptError.
    """
    settings = settings or load_settings()
    data = unit.check_variables(variables)
    row: Any = session.connection().execute(_SELECT_TASK, {"b_id": task_id}).first()  # a tasks row, Core
    if row is None:
        raise NotFound("task {task_id} not found", task_id=task_id, params={"task_id": task_id})
    check_reach(row, actor)
    _require_open(row)
    if not may_work_on(row, actor):
        if row.assignee:
            raise Forbidden("task '{name}' is claimed by {assignee}", task_id=row.id,
                            params={"name": row.name, "assignee": row.assignee})
        raise Forbidden("task '{name}' is not in your groups", task_id=row.id, params={"name": row.name})
    loaded = unit.load(session, row.instance_id)
    meta = loaded.definition.user_tasks.get(row.meta_key) or {}
    form = forms.form_for(row.form_key, meta.get("form_fields"))
    data = forms.check_submission(Phrase("task '{name}'", name=row.name), form, meta.get("form_fields"), meta.get("writes"), data,
                                  form_key=row.form_key)
    task = unit.find_task(loaded.workflow, UUID(task_id))
    if task is None or task.state != TaskState.READY or not task.task_spec.manual:
        raise Conflict("task '{name}' can no longer be completed", task_id=row.id, params={"name": row.name})
    pvars.before_run(task)  # the latest process variables (another path may have written since)
    variable = getattr(task.task_spec, "variable", None)  # Spiff UserTask's variableName
    if variable:
        task.data[variable] = data
    else:
        task.data.update(data)
    with unit.engine_faults():
        task.run()
    loaded.completed_task = row.id
    loaded.events.append(Event("task.completed", actor.name, {
        "element_id": row.element_id, "name": row.name, "variables": data,
        "changed": pvars.take_changes(task),  # {name: {from, to}}: what this completion wrote
    }, task_id=row.id))
    unit.run(loaded, actor, settings)
    unit.persist(session, loaded, actor)
    closed = session.connection().execute(_CLOSE_TASK, {  # after the instance row: the lock order of task commands
        "b_id": row.id, "b_assignee": row.assignee, "state": "completed", "ended_at": clock.now(),
        "completed_by": actor.name}).rowcount
    if closed != 1:
        raise StaleInstance("task {id} was changed by someone else", task_id=row.id, params={"id": row.id})
    set_offered(session, [row.id], False)
    return loaded.row


