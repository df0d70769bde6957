"""The job worker: acquires due jobs and fires them, each as an engine command, exactly once.

Acquisition runs in its own short transaction: due, pending jobs whose lease is free
are selected in ``(due_at, id)`` order with ``FOR UPDATE SKIP LOCKED`` (PostgreSQL; on
SQLite the write lock serialises acquirers) and leased to this worker. Timer jobs of one
instance are fired in one unit of work (engine.commands.timers), and the units of several
instances share one transaction that computes them all first (on SQLite without the write
lock, so several worker processes on one file compute in parallel) and then writes them
(:func:`fire_timer_batch`, bounded by ``timer_batch_instances``/``timer_batch_ms``; a stale
instance is fired alone afterwards, a failing one writes nothing); each SLA job (``sla_*``) is its own command
(engine.commands.sla). A crashed worker's lease expires and the jobs are picked
up again; the instance ``revision`` check, SpiffWorkflow's own timer state and the SLA
command's delete-as-claim mean a job never fires twice. A failure is recorded on the job
(``attempts``, ``last_error``) with exponential backoff; after ``max_attempts`` the job
becomes ``failed`` with an incident (kind ``failed_job``), retryable through
``POST /api/incidents/{id}/retry``. Each round also delivers due notifications (outbox).

Wake-up: :func:`run_forever` sleeps until the next job is due (read from the ``jobs``
table; at most ``interval`` seconds), and :func:`wake` (called after a command of this
process schedules work, or after the admin clock moved) interrupts the sleep at once. A
commit's new jobs wake the worker only when one is due before the end of its planned sleep
(an SLA job due in days does not; the worker reads it at its next round anyway, at most
``interval`` later): waking costs a round of queries and, on SQLite, the write lock. On
PostgreSQL a commit that scheduled jobs also sends ``NOTIFY sopflow_jobs`` with the earliest
due time as payload, and each worker process ``LISTEN``s (:func:`listen`), so other
processes' new jobs wake it too, on the same rule.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

from sqlalchemy import case, event, func, make_url, or_, select, text, update
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session

from engine import audit, clock, notifications, projections, stats
from engine.actor import SYSTEM
from engine.audit import Event
from engine.commands import unit
from engine.commands.sla import fire_sla_job
from engine.commands.timers import Firing, fire_timers, prefetch, run_firing
from engine.config import Settings
from engine.config import load as load_settings
from engine.errors import SopflowError, StaleInstance
from engine.ids import time_ordered_id
from engine.projections import NEW_JOBS  # set by a command that scheduled jobs
from engine.sla import SLA_JOB_KINDS
from engine.store.db import Database
from engine.store.models import IncidentRow, InstanceRow, JobRow, OutboxRow

log = logging.getLogger("sopflow.worker")

_WAKE = threading.Event()
MIN_SLEEP = 0.005
# each running worker loop of this process -> when its current sleep ends (engine clock), or
# None while it works (then any new job wakes it: it may have read the jobs table before the job)
_SLEEP_ENDS: dict[str, datetime | None] = {}


def wake(due: datetime | None = None) -> None:
    """Interrupt this process's worker sleep (new or earlier work, or the clock moved).

    With ``due`` (the earliest due time of jobs just committed), only when a worker of this
    process is working or would sleep past ``due``, or ``due`` has come already (the clock
    may have moved since the sleep began); a job due later is found at the end of the
    sleep, no later than before.
    """
    if due is not None:
        ends = list(_SLEEP_ENDS.values())
        if due.tzinfo is None:
            due = due.replace(tzinfo=UTC)
        if ends and all(end is not None and due >= end for end in ends) and due > clock.now():
            return
    _WAKE.set()


JOBS_CHANNEL = "sopflow_jobs"  # PostgreSQL NOTIFY channel: a commit scheduled jobs


@event.listens_for(Session, "before_commit")
def _notify_other_processes(session: Session) -> None:
    """On PostgreSQL, ``NOTIFY`` in the committing transaction (delivered at commit, dropped on rollback).

    The payload is the earliest due time of the new jobs (ISO 8601), or empty when one is due now.
    """
    noted = session.info.get(NEW_JOBS)
    if noted and session.get_bind().dialect.name == "postgresql":
        payload = noted.isoformat() if isinstance(noted, datetime) else ""
        session.execute(text("SELECT pg_notify(:channel, :payload)"), {"channel": JOBS_CHANNEL, "payload": payload})


@event.listens_for(Session, "after_commit")
def _wake_after_commit(session: Session) -> None:
    noted = session.info.pop(NEW_JOBS, None)
    if noted:
        wake(noted if isinstance(noted, datetime) else None)


def _payload_due(payload: str) -> datetime | None:
    """The due time a ``NOTIFY`` carries; None (wake regardless) when empty or unreadable."""
    try:
        return datetime.fromisoformat(payload) if payload else None
    except ValueError:
        return None


def listen(url: str, stop: threading.Event) -> None:
    """PostgreSQL: wake this process's worker when another process commits new jobs (``LISTEN``).

    Runs until ``stop`` is set, on its own autocommit connection; reconnects after a second
    when the connection fails (meanwhile the worker's capped sleep still finds new jobs).
    """
    import psycopg

    conninfo = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    while not stop.is_set():
        try:
            with psycopg.connect(conninfo, autocommit=True) as conn:
                conn.execute(f"LISTEN {JOBS_CHANNEL}")
                while not stop.is_set():
                    for notice in conn.notifies(timeout=0.5, stop_after=1):
                        wake(_payload_due(notice.payload))
        except psycopg.Error:
            log.warning("LISTEN connection failed; retrying in 1 s")
            stop.wait(1.0)


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


@dataclass
class WorkerResult:
    acquired: int = 0
    fired: int = 0  # BPMN timer jobs fired
    sla: int = 0  # SLA jobs (at risk, breach, reminder) that had an effect
    failed: int = 0
    delivered: int = 0  # notification delivery attempts (e-mail, webhooks)


def _acquire(db: Database, *, owner: str, limit: int, lease: timedelta) -> list[tuple[str, str, str]]:
    now = clock.now()
    with db.transaction() as session:
        query = (
            select(JobRow.id, JobRow.instance_id, JobRow.kind)
            .where(JobRow.state == "pending", JobRow.due_at <= now,
                   or_(JobRow.lock_expires_at.is_(None), JobRow.lock_expires_at < now))
            .order_by(JobRow.due_at, JobRow.id).limit(limit)
        )
        if not db.is_sqlite:
            query = query.with_for_update(skip_locked=True, of=JobRow)
        rows = [(r.id, r.instance_id, r.kind) for r in session.execute(query)]
        if rows:
            session.execute(
                update(JobRow).where(JobRow.id.in_([r[0] for r in rows]))
                .values(lock_owner=owner, lock_expires_at=now + lease)
                .execution_options(synchronize_session=False)
            )
    return rows


def acquire(db: Database, *, owner: str, limit: int = 50, lease: timedelta = timedelta(minutes=5)) -> dict[str, list[str]]:
    """Lease due jobs to ``owner``; returns job ids grouped by instance."""
    grouped: dict[str, list[str]] = {}
    for job_id, instance_id, _kind in _acquire(db, owner=owner, limit=limit, lease=lease):
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
                _open_incident(session, job, error)
            else:
                job.lock_expires_at = now + timedelta(seconds=min(3600, 10 * 2 ** (job.attempts - 1)))


def _open_incident(session: Session, job: JobRow, error: str) -> None:
    """An incident (``failed_job``) for a job out of attempts, audited on its instance's chain."""
    instance = session.get(InstanceRow, job.instance_id)
    incident_id = time_ordered_id()
    session.add(IncidentRow(id=incident_id, kind="failed_job", instance_id=job.instance_id,
                            definition_key=instance.definition_key if instance else None, element_id=job.element_id,
                            job_id=job.id, message=f"{job.kind} job failed {job.attempts} times: {error}"[:4000],
                            created_at=clock.now()))
    if instance is not None:
        session.flush()
        unit.append_events(session, instance, instance.audit_seq or 0, [Event(
            "incident.created", None, {"incident_id": incident_id, "kind": "failed_job", "job_id": job.id,
                                       "job_kind": job.kind, "element_id": job.element_id,
                                       "message": error[:500]}, task_id=job.task_id)])


def _fire(db: Database, instance_id: str, job_ids: list[str], kinds: dict[str, str],
          settings: Settings) -> tuple[int, int]:
    """Fire one instance's leased jobs, each its own command: ``(timers fired, SLA jobs with an effect)``."""
    timers = [j for j in job_ids if kinds[j] not in SLA_JOB_KINDS]
    fired = db.command(partial(fire_timers, instance_id=instance_id, job_ids=timers)) if timers else 0
    sla = sum(int(db.command(partial(fire_sla_job, job_id=job_id, settings=settings)))
              for job_id in job_ids if kinds[job_id] in SLA_JOB_KINDS)
    return fired, sla


# per-command bookkeeping a command keeps on its session (engine.commands.unit, .messages): reset
# between the instances of a batch so one instance's leftovers never reach the next
_PER_COMMAND_INFO = ("sopflow_audit_rows", "sopflow_message_deliveries")


@dataclass
class BatchOutcome:
    """What one batch transaction did with the instances it took (a prefix of those offered)."""

    taken: int = 0  # instances of the offered list this batch handled (fired, stale or failed)
    fired: dict[str, int] = field(default_factory=dict)  # instance -> timers fired (committed)
    stale: list[str] = field(default_factory=list)  # moved by another command: fire alone, later
    failed: dict[str, str] = field(default_factory=dict)  # instance -> error (backoff/incident path)


def fire_timer_batch(db: Database, groups: list[tuple[str, list[str]]], settings: Settings) -> BatchOutcome:
    """Fire the leased timer jobs of several instances in ONE transaction: compute all, then write.

    ``groups`` is ``[(instance_id, timer job ids), ...]``; the batch takes a prefix of it, at
    most ``settings.timer_batch_instances`` instances and stopping after about
    ``settings.timer_batch_ms`` of computing.

    Phase 1 (compute; on SQLite a read transaction, no write lock): the instance rows and due
    jobs are read for the whole batch in two queries (:func:`engine.commands.timers.prefetch`),
    then per instance: load it and fire its timers in memory
    (:func:`engine.commands.timers.run_firing`). An instance that ends with this firing, threw
    no message and has no external tasks (:func:`engine.commands.unit.deferrable`) is also
    planned (:func:`engine.commands.unit.plan`: state serialized, audit chain hashed; it reads
    only the instance's row, guarded below, and the immutable ids/names of task rows it
    closes). Every other instance is kept for phase 2. An instance whose firing or plan raises
    is reported in ``failed`` (its message; the caller records it: backoff, incident) and has
    written nothing.

    Phase 2 (write; on SQLite the read snapshot ends here and ``BEGIN IMMEDIATE`` takes the
    write lock: :meth:`Database.begin_writing`): each instance kept for it is stored under its
    own SAVEPOINT (:func:`engine.commands.unit.persist`: plan + guarded write + message
    routing; a failure rolls back that instance only). Then the planned instances are written
    together (:func:`engine.commands.unit.write_plans`: their guards, ``revision`` and audit
    head, read in one query under the lock; an instance whose row moved since phase 1 read it,
    whoever moved it, is dropped before anything of it is written and reported in ``stale``;
    then one ``executemany`` each for the guarded instance UPDATEs and the job DELETEs), the jobs
    of instances found gone or ended are deleted (an ended instance never runs again), and the
    audit rows of every instance that fired are inserted in one statement. A stale instance
    of the SAVEPOINT path (:class:`StaleInstance`, or a unique-key/lock error) is reported in
    ``stale`` too; the caller fires stale instances alone, with the command's usual retries.
    If the transaction as a whole fails, the exception reaches the caller and nothing of the
    batch is stored.

    So on SQLite several worker processes compute their batches at the same time and only
    their phase 2 queue on the write lock; everything phase 1 read that a write depends on is
    checked by the guards exactly as on PostgreSQL, where the batch is one READ COMMITTED
    transaction and :meth:`Database.begin_writing` does nothing.
    """
    outcome = BatchOutcome()
    budget = max(0.0, settings.timer_batch_ms / 1000)
    limit = max(1, settings.timer_batch_instances)
    began = time.perf_counter()
    offered = groups[:limit]
    with db.transaction(lazy=True) as session:
        prefetched = prefetch(session, [j for _i, ids in offered for j in ids], [i for i, _ids in offered])
        audit_rows: list[dict[str, Any]] = []
        planned: list[tuple[str, int, unit.Plan]] = []
        kept: list[tuple[str, Firing]] = []
        gone: list[str] = []
        for instance_id, _job_ids in offered:  # phase 1: compute, no write
            if outcome.taken and time.perf_counter() - began >= budget:
                break
            outcome.taken += 1
            try:
                firing = run_firing(session, instance_id=instance_id, settings=settings, prefetched=prefetched)
                if isinstance(firing, bool):  # nothing due; True: gone or ended, its jobs go
                    if firing:
                        gone.append(instance_id)
                    outcome.fired[instance_id] = 0
                elif unit.deferrable(firing.loaded):  # phase 2 writes it with the others
                    planned.append((instance_id, firing.count, unit.plan(session, firing.loaded, SYSTEM)))
                else:
                    kept.append((instance_id, firing))
            except SopflowError as exc:
                outcome.failed[instance_id] = str(exc)
            except Exception as exc:  # noqa: BLE001 - one instance must not fail the batch
                log.exception("timer crashed in a batch", extra={"instance_id": instance_id})
                outcome.failed[instance_id] = f"{type(exc).__name__}: {exc}"
        db.begin_writing(session)  # phase 2: SQLite's write lock from here to the commit
        for instance_id, firing in kept:
            for key in _PER_COMMAND_INFO:
                session.info.pop(key, None)
            deferred: list[dict[str, Any]] = []
            session.info[unit.DEFERRED_AUDIT] = deferred
            try:
                with session.begin_nested():
                    unit.persist(session, firing.loaded, SYSTEM)
                audit_rows.extend(deferred)
                outcome.fired[instance_id] = firing.count
            except (StaleInstance, IntegrityError, OperationalError):
                stats.incr("batch_stale")
                outcome.stale.append(instance_id)
            except SopflowError as exc:
                outcome.failed[instance_id] = str(exc)
            except Exception as exc:  # noqa: BLE001 - one instance must not fail the batch
                log.exception("timer crashed in a batch", extra={"instance_id": instance_id})
                outcome.failed[instance_id] = f"{type(exc).__name__}: {exc}"
        for key in _PER_COMMAND_INFO:
            session.info.pop(key, None)
        session.info[unit.DEFERRED_AUDIT] = audit_rows
        stale = set(unit.write_plans(session, [p for _i, _n, p in planned]))
        for instance_id, count, _plan in planned:
            if instance_id in stale:
                stats.incr("batch_stale")
                outcome.stale.append(instance_id)
            else:
                outcome.fired[instance_id] = count
        projections.clear_many(session, gone, [])  # the jobs of instances gone or ended
        session.info.pop(unit.DEFERRED_AUDIT, None)
        if audit_rows:
            audit.insert_rows(session, audit_rows)
    stats.incr("timer_batches")
    return outcome


def _fire_alone(db: Database, instance_id: str, job_ids: list[str], kinds: dict[str, str], settings: Settings,
                max_attempts: int, result: WorkerResult) -> None:
    """One instance's jobs as their own commands; a failure is recorded on the jobs (backoff, incident)."""
    try:
        fired, sla = _fire(db, instance_id, job_ids, kinds, settings)
        result.fired += fired
        result.sla += sla
        stats.incr("timers_fired", fired)
        stats.incr("sla_jobs_fired", sla)
    except SopflowError as exc:
        _failed(db, instance_id, job_ids, str(exc), max_attempts, result)
    except Exception as exc:  # noqa: BLE001 - a worker must survive any one job
        log.exception("jobs crashed", extra={"instance_id": instance_id})
        _failed(db, instance_id, job_ids, f"{type(exc).__name__}: {exc}", max_attempts, result)


def _failed(db: Database, instance_id: str, job_ids: list[str], error: str, max_attempts: int,
            result: WorkerResult) -> None:
    result.failed += len(job_ids)
    stats.incr("job_failures", len(job_ids))
    log.warning("jobs failed", extra={"instance_id": instance_id, "error": error})
    _record_failure(db, job_ids, error, max_attempts)


def run_once(db: Database, *, owner: str | None = None, limit: int = 100, max_attempts: int = 3,
             settings: Settings | None = None, lease: timedelta = timedelta(minutes=5)) -> WorkerResult:
    """Acquire and fire what is due now, then deliver due notifications (tests call this after moving the clock).

    BPMN timers of several instances fire in batches (:func:`fire_timer_batch`); an instance the
    batch found stale is fired alone right after, one that failed goes the failure path
    (backoff, then an incident). If a batch transaction fails as a whole, its instances are
    fired one by one. SLA jobs are each their own command, as before.
    """
    owner = owner or worker_id()
    settings = settings or load_settings()
    result = WorkerResult()
    rows = _acquire(db, owner=owner, limit=limit, lease=lease)
    kinds = {job_id: kind for job_id, _i, kind in rows}
    grouped: dict[str, list[str]] = {}
    for job_id, instance_id, _kind in rows:
        grouped.setdefault(instance_id, []).append(job_id)
    result.acquired = len(rows)
    stats.incr("jobs", len(rows))
    timers = [(i, [j for j in ids if kinds[j] not in SLA_JOB_KINDS]) for i, ids in grouped.items()]
    timers = [(i, ids) for i, ids in timers if ids]
    while timers:
        try:
            outcome = fire_timer_batch(db, timers, settings)
        except Exception:  # noqa: BLE001 - the whole batch rolled back: fall back to one by one
            log.exception("timer batch failed; firing its instances one by one")
            outcome = BatchOutcome(taken=min(len(timers), max(1, settings.timer_batch_instances)))
            outcome.stale = [i for i, _ids in timers[:outcome.taken]]
        taken, timers = dict(timers[:outcome.taken]), timers[outcome.taken:]
        fired = sum(outcome.fired.values())
        result.fired += fired
        stats.incr("timers_fired", fired)
        for instance_id in outcome.stale:
            _fire_alone(db, instance_id, taken[instance_id], kinds, settings, max_attempts, result)
        for instance_id, error in outcome.failed.items():
            _failed(db, instance_id, taken[instance_id], error, max_attempts, result)
    for instance_id, job_ids in grouped.items():
        sla_jobs = [j for j in job_ids if kinds[j] in SLA_JOB_KINDS]
        if sla_jobs:
            _fire_alone(db, instance_id, sla_jobs, kinds, settings, max_attempts, result)
    try:
        result.delivered = notifications.deliver_due(db, settings)
    except Exception:  # noqa: BLE001 - delivery problems must not stop timers
        log.exception("notification delivery failed")
    return result


def seconds_until_next(db: Database, cap: float) -> float:
    """Seconds until the earliest pending job (or its lease's or backoff's end) or notification is due, at most ``cap``."""
    ready_at = case((JobRow.lock_expires_at > JobRow.due_at, JobRow.lock_expires_at), else_=JobRow.due_at)
    with db.read() as session:
        job = session.scalar(select(func.min(ready_at)).where(JobRow.state == "pending"))
        note = session.scalar(select(func.min(OutboxRow.next_attempt_at)).where(OutboxRow.state == "pending"))
    now = clock.now()
    waits = [(t - now).total_seconds() for t in (job, note) if t is not None]
    return max(0.0, min([cap, *waits]))


def run_forever(db: Database, *, stop: threading.Event, interval: float = 1.0,
                settings: Settings | None = None) -> None:
    """Run the worker until ``stop`` is set: fire what is due, then sleep until the next due time or a :func:`wake`.

    ``interval`` caps each sleep, so jobs written by other processes are seen within it.
    (Setting ``stop`` should be followed by :func:`wake` to end a sleep at once.)
    """
    owner = worker_id()
    if not db.is_sqlite:
        threading.Thread(target=listen, args=(db.url, stop), name="sopflow-listen", daemon=True).start()
    while not stop.is_set():
        _WAKE.clear()
        _SLEEP_ENDS[owner] = None  # working: a job committed from now on wakes it (see wake)
        try:
            result = run_once(db, owner=owner, settings=settings)
        except Exception:  # noqa: BLE001
            log.exception("worker iteration failed")
            result = WorkerResult()
        if result.acquired or result.delivered:
            continue
        try:
            pause = seconds_until_next(db, interval)
        except Exception:  # noqa: BLE001
            pause = interval
        # published after the jobs table was read: a job committed before that read was seen by
        # it; one committed after is compared with this end (or saw None and set the event)
        _SLEEP_ENDS[owner] = clock.now() + timedelta(seconds=max(pause, MIN_SLEEP))
        if not stop.is_set():
            _WAKE.wait(max(pause, MIN_SLEEP))
    _SLEEP_ENDS.pop(owner, None)
