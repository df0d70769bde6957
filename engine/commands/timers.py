"""Firing an instance's due BPMN timers (called by the job worker)."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from SpiffWorkflow.bpmn import BpmnWorkflow
from sqlalchemy import Row, bindparam, select
from sqlalchemy.orm import Session

from engine import clock, projections
from engine.actor import SYSTEM, Actor
from engine.audit import Event
from engine.commands import unit
from engine.config import Settings
from engine.config import load as load_settings
from engine.spiff_patches import allow_timers, counting_cycle_firings
from engine.store.models import InstanceRecord, InstanceRow, JobRow

JobRef = Row[str, str, str | None, str | None, datetime]  # id, instance_id, task_id, element_id, due_at

# Built once (SQLAlchemy reuses their compiled form): the worker fires thousands of these.
_JOB_COLUMNS = (JobRow.id, JobRow.instance_id, JobRow.task_id, JobRow.element_id, JobRow.due_at)
_STATUS = select(InstanceRow.status).where(InstanceRow.id == bindparam("b_id"))
_DUE = select(*_JOB_COLUMNS).where(JobRow.instance_id == bindparam("b_id"), JobRow.due_at <= bindparam("b_now"),
                                   JobRow.state == "pending")
_DUE_OF = _DUE.where(JobRow.id.in_(bindparam("b_jobs", expanding=True)))
_BATCH_INSTANCES = select(InstanceRow.__table__).where(InstanceRow.id.in_(bindparam("b_ids", expanding=True)))
_BATCH_DUE = select(*_JOB_COLUMNS).where(JobRow.id.in_(bindparam("b_jobs", expanding=True)),
                                         JobRow.due_at <= bindparam("b_now"), JobRow.state == "pending")


@dataclass
class Prefetched:
    """What :func:`fire_timers` reads first, read for a whole batch of instances in two queries.

    ``records``: instance rows by id (an instance that is gone is absent); ``due``: the due,
    pending timer jobs among the leased ones, by instance. Read in the batch's compute phase
    (on SQLite a read snapshot without the write lock; on PostgreSQL READ COMMITTED): a row
    another command changed since is caught by the instance's guards in the write phase
    (``revision`` and audit head; ``StaleInstance`` or a dropped plan) like any stale read.
    """

    records: dict[str, InstanceRecord] = field(default_factory=dict)
    due: dict[str, list[JobRef]] = field(default_factory=dict)


def prefetch(session: Session, job_ids: Sequence[str], instance_ids: Sequence[str]) -> Prefetched:
    """Read the instance rows and due timer jobs of a batch (:class:`Prefetched`) in two queries."""
    found = Prefetched()
    connection = session.connection()
    for data in connection.execute(_BATCH_INSTANCES, {"b_ids": list(instance_ids)}).mappings():
        found.records[data["id"]] = InstanceRecord(**data)
    for job in connection.execute(_BATCH_DUE, {"b_jobs": list(job_ids), "b_now": clock.now()}):
        found.due.setdefault(job.instance_id, []).append(job)
    return found


@dataclass
class Firing:
    """An instance whose due timers ran in memory (:func:`run_firing`), not yet stored."""

    loaded: unit.Loaded
    count: int  # timers that were due


def run_firing(session: Session, *, instance_id: str, job_ids: list[str] | None = None, actor: Actor = SYSTEM,
               settings: Settings | None = None, prefetched: Prefetched | None = None) -> Firing | bool:
    """Load the instance and fire its due timers in memory; nothing is written.

    Returns the :class:`Firing` to store (:func:`engine.commands.unit.persist`), or, when
    nothing is due: True if the instance is gone or no longer running (its jobs are to be
    deleted), False if it runs but none of the jobs is due. ``prefetched`` (the worker's
    batches) carries the instance row and its due jobs, read for the whole batch
    (:func:`prefetch`); without it they are read here.

    Only the timers of the due jobs fire (Camunda: a timer fires when its job runs): the
    instance's other waiting timers stay gated (:mod:`engine.spiff_patches`, the timer gate),
    even if they are overdue too; their own jobs fire them. A job whose timer another command
    cancelled is gone (``projections.sync_waits``): a lease on it fires nothing.
    """
    settings = settings or load_settings()
    connection = session.connection()
    record = prefetched.records.get(instance_id) if prefetched is not None else None
    status = record.status if prefetched is not None and record is not None else (
        None if prefetched is not None else connection.execute(_STATUS, {"b_id": instance_id}).scalar())
    if status != "running":  # gone or ended: its jobs go too; the full row is read only if a timer is due
        return True
    due: Sequence[JobRef]
    if prefetched is not None:
        due = prefetched.due.get(instance_id, [])
    elif job_ids is not None:
        due = connection.execute(_DUE_OF, {"b_id": instance_id, "b_now": clock.now(), "b_jobs": job_ids}).all()
    else:
        due = connection.execute(_DUE, {"b_id": instance_id, "b_now": clock.now()}).all()
    if not due:
        return False
    loaded = unit.load(session, instance_id, record=record)
    at = len(loaded.events)
    cycles = {job.id: _cycle(loaded.workflow, job.task_id) for job in due}
    # the timer gate (engine.spiff_patches): only the timers of these jobs may fire in this command
    allow_timers(loaded.workflow, [UUID(job.task_id) for job in due if job.task_id])
    with counting_cycle_firings() as counts:
        with unit.engine_faults():
            loaded.workflow.refresh_timers()
        unit.run(loaded, actor, settings)
    fired: list[Event] = []
    for job in due:
        for due_at in _firings(job, cycles[job.id], counts):
            fired.append(Event("timer.fired", actor.name, {"element_id": job.element_id, "due_at": due_at},
                               task_id=job.task_id))
    loaded.events[at:at] = fired  # before what the firings caused
    return Firing(loaded, len(due))


def fire_timers(session: Session, *, instance_id: str, job_ids: list[str] | None = None, actor: Actor = SYSTEM,
                settings: Settings | None = None, prefetched: Prefetched | None = None) -> int:
    """Fire the instance's due timers (all, or those of ``job_ids``). Returns how many were due.

    :func:`run_firing`, then :func:`engine.commands.unit.persist` (or, for an instance that is
    gone or ended, the deletion of its jobs).
    """
    firing = run_firing(session, instance_id=instance_id, job_ids=job_ids, actor=actor, settings=settings,
                        prefetched=prefetched)
    if isinstance(firing, bool):
        if firing:
            projections.clear_many(session, [instance_id], [])
        return 0
    unit.persist(session, firing.loaded, actor)
    return firing.count


def _cycle(workflow: BpmnWorkflow, task_id: str | None) -> dict[str, Any] | None:
    """A cycle timer's state before firing (``{cycles, next, duration}``), None for other timers."""
    if not task_id:
        return None
    try:
        task = unit.find_task(workflow, UUID(task_id))
    except ValueError:
        return None
    value = task.internal_data.get("event_value") if task is not None else None
    return dict(value) if isinstance(value, dict) and "next" in value else None


def _firings(job: JobRef, before: dict[str, Any] | None, counts: dict[UUID, int]) -> list[datetime]:
    """The due instant of each time this job's timer fired in this command (one audit event each).

    A one-off timer fires once, at the job's due time. A cycle timer (``R3/PT1H``) that fell
    behind fires once per instant that passed, all in one catch-up (counted by
    :func:`engine.spiff_patches.counting_cycle_firings`), each one ``duration`` after the last.
    """
    if before is None or not job.task_id:
        return [job.due_at]
    first = clock.parse_instant(before["next"])
    step = timedelta(seconds=float(before.get("duration") or 0))
    return [first + step * i for i in range(counts.get(UUID(job.task_id), 0))]
