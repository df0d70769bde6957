"""Firing an instance's due BPMN timers (called by the job worker)."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from SpiffWorkflow.bpmn import BpmnWorkflow
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from engine import clock
from engine.actor import SYSTEM, Actor
from engine.audit import Event
from engine.commands import unit
from engine.config import Settings
from engine.config import load as load_settings
from engine.spiff_patches import counting_cycle_firings
from engine.store.models import InstanceRow, JobRow


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
    loaded = unit.load(session, instance_id)
    at = len(loaded.events)
    cycles = {job.id: _cycle(loaded.workflow, job.task_id) for job in due}
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
    unit.persist(session, loaded, actor)
    return len(due)


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


def _firings(job: JobRow, before: dict[str, Any] | None, counts: dict[UUID, int]) -> list[datetime]:
    """The due instant of each time this job's timer fired in this command (one audit event each).

    A one-off timer fires once, at the job's due time. A cycle timer (``R3/PT1H``) that fell
    behind fires once per instant that passed, all in one catch-up (counted by
    :func:`engine.spiff_patches.counting_cycle_firings`), each one ``duration`` after the last.
    """
    if before is None or not job.task_id:
        return [job.due_at]
    first = datetime.fromisoformat(before["next"])
    first = first if first.tzinfo else first.replace(tzinfo=UTC)
    step = timedelta(seconds=float(before.get("duration") or 0))
    return [first + step * i for i in range(counts.get(UUID(job.task_id), 0))]
