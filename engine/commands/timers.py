"""Firing an instance's due BPMN timers (called by the job worker)."""
from __future__ import annotations

from SpiffWorkflow.exceptions import SpiffWorkflowException
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from engine import clock
from engine.actor import SYSTEM, Actor
from engine.audit import Event
from engine.commands import unit
from engine.config import Settings
from engine.config import load as load_settings
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
    for job in due:
        loaded.events.append(Event("timer.fired", actor.name, {"element_id": job.element_id, "due_at": job.due_at},
                                   task_id=job.task_id))
    try:
        loaded.workflow.refresh_timers()
    except SpiffWorkflowException as exc:
        raise unit.spiff_error(exc) from None
    unit.run(loaded, actor, settings)
    unit.persist(session, loaded, actor)
    return len(due)

