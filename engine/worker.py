"""The job worker: acquires due timer jobs and fires them, one instance per transaction.

Acquisition runs in its own short transaction: due, pending jobs whose lease is free
are selected in ``(due_at, id)`` order with ``FOR UPDATE SKIP LOCKED`` (PostgreSQL; on
SQLite the write lock serialises acquirers) and leased to this worker. Each instance's
due jobs are then fired in one unit of work. A crashed worker's lease expires and the
jobs are picked up again; the instance ``revision`` check and SpiffWorkflow's own timer
state mean a timer never fires twice into an instance. A failure is recorded on the
job (``attempts``, ``last_error``) with exponential backoff; after ``max_attempts`` the
job becomes an incident (``state='failed'``) and is left for an operator.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from dataclasses import dataclass
from datetime import timedelta
from functools import partial

from sqlalchemy import or_, select, update

from engine import clock, stats
from engine.commands.timers import fire_timers
from engine.errors import SopflowError
from engine.store.db import Database
from engine.store.models import JobRow

log = logging.getLogger("sopflow.worker")


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


@dataclass
class WorkerResult:
    acquired: int = 0
    fired: int = 0
    failed: int = 0


def acquire(db: Database, *, owner: str, limit: int = 50, lease: timedelta = timedelta(minutes=5)) -> dict[str, list[str]]:
    """Lease due jobs to ``owner``; returns job ids grouped by instance."""
    now = clock.now()
    with db.transaction() as session:
        query = (
            select(JobRow.id, JobRow.instance_id)
            .where(JobRow.state == "pending", JobRow.due_at <= now,
                   or_(JobRow.lock_expires_at.is_(None), JobRow.lock_expires_at < now))
            .order_by(JobRow.due_at, JobRow.id).limit(limit)
        )
        if not db.is_sqlite:
            query = query.with_for_update(skip_locked=True, of=JobRow)
        rows = session.execute(query).all()
        if rows:
            session.execute(
                update(JobRow).where(JobRow.id.in_([r.id for r in rows]))
                .values(lock_owner=owner, lock_expires_at=now + lease)
                .execution_options(synchronize_session=False)
            )
    grouped: dict[str, list[str]] = {}
    for job_id, instance_id in rows:
        grouped.setdefault(instance_id, []).append(job_id)
    return grouped


def _record_failure(db: Database, job_ids: list[str], error: str, max_attempts: int) -> None:
    now = clock.now()
    with db.transaction() as session:
        for job in session.scalars(select(JobRow).where(JobRow.id.in_(job_ids))):
            job.attempts += 1
            job.last_error = error[:2000]
            job.lock_owner = None
            if job.attempts >= max_attempts:
                job.state = "failed"
                job.lock_expires_at = None
            else:
                job.lock_expires_at = now + timedelta(seconds=min(3600, 10 * 2 ** (job.attempts - 1)))


def run_once(db: Database, *, owner: str | None = None, limit: int = 50, max_attempts: int = 3) -> WorkerResult:
    """Acquire and fire what is due now (tests call this after moving the clock)."""
    owner = owner or worker_id()
    result = WorkerResult()
    for instance_id, job_ids in acquire(db, owner=owner, limit=limit).items():
        result.acquired += len(job_ids)
        stats.incr("jobs", len(job_ids))
        try:
            fired = db.command(partial(fire_timers, instance_id=instance_id, job_ids=job_ids))
            result.fired += fired
            stats.incr("timers_fired", fired)
        except SopflowError as exc:
            result.failed += len(job_ids)
            stats.incr("job_failures", len(job_ids))
            log.warning("timer jobs failed", extra={"instance_id": instance_id, "error": str(exc)})
            _record_failure(db, job_ids, str(exc), max_attempts)
        except Exception as exc:  # noqa: BLE001 - a worker must survive any one job
            result.failed += len(job_ids)
            stats.incr("job_failures", len(job_ids))
            log.exception("timer jobs crashed", extra={"instance_id": instance_id})
            _record_failure(db, job_ids, f"{type(exc).__name__}: {exc}", max_attempts)
    return result


def run_forever(db: Database, *, stop: threading.Event, interval: float = 1.0) -> None:
    owner = worker_id()
    while not stop.is_set():
        try:
            result = run_once(db, owner=owner)
        except Exception:  # noqa: BLE001
            log.exception("worker iteration failed")
            result = WorkerResult()
        if result.acquired == 0:
            stop.wait(interval)
