"""External tasks for workers (fetch-and-lock, complete, failure, BPMN error, extend lock) and incidents.

Who may call: workers use an account with the ``integration`` role (or ``admin``); setting
retries and retrying incidents is an operator's act, ``admin`` only. Camunda 7's REST shape of
the same operations is in :mod:`api.routes.engine_rest`; both share the long poll below.
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from api.deps import ActorDep, DbDep, PagingDep, SettingsDep, require
from api.schemas import InstanceRead, Page
from api.views import page_body
from engine.actor import Actor
from engine.commands import external_tasks as ext
from engine.config import Settings
from engine.store.db import Database
from engine.store.models import ExternalTaskRow

MAX_ASYNC_RESPONSE_MS = 300_000  # a long poll waits at most five minutes
DB_RECHECK_SECONDS = 1.0  # other processes' work, expired locks and retry timeouts are found this often
WAKE_CHECK_SECONDS = 0.05  # this process's new work wakes a poll within this

router = APIRouter(prefix="/api", tags=["external tasks"])


def require_worker(actor: Actor) -> None:
    require(actor, "integration")


async def long_poll(request: Request, db: Database, fetch: Callable[[Any], list[ExternalTaskRow]],
                    timeout_ms: int) -> list[ExternalTaskRow]:
    """Fetch now; if nothing was found, wait up to ``timeout_ms`` for work, then answer (maybe empty).

    The wait is capped by ``SOPFLOW_MAX_LONG_POLL_MS`` (an answer with no tasks is always a
    valid long-poll answer; workers simply ask again).

    No transaction stays open and no thread is held while waiting: each attempt is one short
    unit of work on the thread pool; between attempts the event loop sleeps in short steps,
    waking at once when this process commits new work and re-querying every second for work
    that other processes, expired locks or passed retry timeouts made fetchable.
    """
    settings: Settings = request.app.state.settings
    deadline = time.monotonic() + min(timeout_ms, settings.max_long_poll_ms) / 1000
    while True:
        seen = ext.WORK.generation
        found = await run_in_threadpool(db.command, fetch)
        if found or time.monotonic() >= deadline:
            return found
        recheck = min(deadline, time.monotonic() + DB_RECHECK_SECONDS)
        while time.monotonic() < recheck and ext.WORK.generation == seen:
            await asyncio.sleep(WAKE_CHECK_SECONDS)
        if await request.is_disconnected():
            return []


# --------------------------------------------------------------------------- bodies


class TopicBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    topic_name: str = Field(min_length=1, max_length=400)
    lock_duration: int = Field(description="milliseconds the lock holds", ge=1, le=ext.MAX_LOCK_MS)
    variables: list[str] | None = Field(None, description="names of the variables to return; null returns all")
    business_key: str | None = Field(None, max_length=200)
    process_definition_key: str | None = Field(None, max_length=200)


class FetchBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    worker_id: str = Field(min_length=1, max_length=255)
    max_tasks: int = Field(1, ge=0, le=ext.MAX_TASKS)
    use_priority: bool = False
    async_response_timeout: int = Field(0, ge=0, le=MAX_ASYNC_RESPONSE_MS,
                                        description="long poll: milliseconds to wait for work when none is there")
    topics: list[TopicBody] = Field(min_length=1, max_length=100)


class CompleteBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    worker_id: str = Field(min_length=1, max_length=255)
    variables: dict[str, Any] = Field(default_factory=dict)


class FailureBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    worker_id: str = Field(min_length=1, max_length=255)
    error_message: str | None = None
    error_details: str | None = None
    retries: int = Field(ge=0, le=2**31 - 1, description="retries left; 0 opens an incident")
    retry_timeout: int = Field(0, ge=0, le=ext.MAX_LOCK_MS, description="milliseconds before it may be fetched again")


class BpmnErrorBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    worker_id: str = Field(min_length=1, max_length=255)
    error_code: str = Field(min_length=1, max_length=255)
    error_message: str | None = None
    variables: dict[str, Any] = Field(default_factory=dict)


class ExtendLockBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    worker_id: str = Field(min_length=1, max_length=255)
    new_duration: int = Field(ge=1, le=ext.MAX_LOCK_MS, description="milliseconds from now")


class RetriesBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    retries: int = Field(ge=0, le=2**31 - 1)


class IncidentRetryBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    retries: int = Field(1, ge=1, le=2**31 - 1)


class ExternalTaskRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: str
    topic: str
    state: str
    worker_id: str | None
    lock_expires_at: datetime | None
    retries: int | None
    error_message: str | None
    error_details: str | None
    priority: int
    instance_id: str
    definition_key: str
    definition_version: int
    business_key: str | None
    element_id: str
    element_type: str
    name: str
    extension_properties: dict[str, Any]
    created_at: datetime
    ended_at: datetime | None
    variables: dict[str, Any]


class BpmnErrorResult(BaseModel):
    caught_by: str | None = Field(description="the error boundary event that took over; null: an incident opened")
    incident_id: str | None


class IncidentRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: str
    kind: str
    instance_id: str | None
    definition_key: str | None
    element_id: str | None
    external_task_id: str | None
    job_id: str | None
    message: str
    created_at: datetime
    resolved_at: datetime | None
    resolved_by: str | None
    resolution: str | None


def external_task_read(row: ExternalTaskRow, names: list[str] | None = None) -> dict[str, Any]:
    body = ExternalTaskRead.model_validate({**{c.name: getattr(row, c.name) for c in row.__table__.columns},
                                            "variables": ext.task_variables(row, names)})
    return body.model_dump()


# --------------------------------------------------------------------------- worker operations


@router.post("/external-tasks/fetch-and-lock", response_model=list[ExternalTaskRead])
async def fetch_and_lock(request: Request, db: DbDep, actor: ActorDep, body: FetchBody) -> list[dict[str, Any]]:
    """Lock up to `max_tasks` tasks of the topics for `worker_id`; long-polls up to `async_response_timeout` ms."""
    require_worker(actor)
    topics = [ext.TopicRequest(t.topic_name, t.lock_duration, t.variables, t.business_key, t.process_definition_key)
              for t in body.topics]
    names = {t.topic_name: t.variables for t in body.topics}
    rows = await long_poll(request, db, lambda s: ext.fetch_and_lock(
        s, worker_id=body.worker_id, topics=topics, max_tasks=body.max_tasks, actor=actor,
        use_priority=body.use_priority), body.async_response_timeout)
    return [external_task_read(r, names.get(r.topic)) for r in rows]


@router.post("/external-tasks/{task_id}/complete", response_model=InstanceRead)
def complete(db: DbDep, actor: ActorDep, settings: SettingsDep, task_id: str, body: CompleteBody) -> Any:
    """Complete a task this worker holds; `variables` become process variables. Returns the instance."""
    require_worker(actor)
    return db.command(lambda s: ext.complete(s, task_id=task_id, worker_id=body.worker_id, actor=actor,
                                             variables=body.variables, settings=settings))


@router.post("/external-tasks/{task_id}/failure", response_model=ExternalTaskRead)
def failure(db: DbDep, actor: ActorDep, task_id: str, body: FailureBody) -> dict[str, Any]:
    """Report a failure: `retries` left (0 opens an incident), fetchable again after `retry_timeout` ms."""
    require_worker(actor)
    row = db.command(lambda s: ext.failure(s, task_id=task_id, worker_id=body.worker_id, actor=actor,
                                           error_message=body.error_message, error_details=body.error_details,
                                           retries=body.retries, retry_timeout_ms=body.retry_timeout))
    return external_task_read(row)


@router.post("/external-tasks/{task_id}/bpmn-error", response_model=BpmnErrorResult)
def bpmn_error(db: DbDep, actor: ActorDep, settings: SettingsDep, task_id: str, body: BpmnErrorBody) -> Any:
    """Throw a BPMN error from the task: an error boundary event catching `error_code` takes over, or an
    incident opens (`unhandled_bpmn_error`) when none does."""
    require_worker(actor)
    return db.command(lambda s: ext.bpmn_error(s, task_id=task_id, worker_id=body.worker_id, actor=actor,
                                               error_code=body.error_code, error_message=body.error_message,
                                               variables=body.variables, settings=settings))


@router.post("/external-tasks/{task_id}/extend-lock", response_model=ExternalTaskRead)
def extend_lock(db: DbDep, actor: ActorDep, task_id: str, body: ExtendLockBody) -> dict[str, Any]:
    """Extend this worker's lock to `new_duration` ms from now (409 once it expired or is someone else's)."""
    require_worker(actor)
    row = db.command(lambda s: ext.extend_lock(s, task_id=task_id, worker_id=body.worker_id, actor=actor,
                                               new_duration_ms=body.new_duration))
    return external_task_read(row)


@router.put("/external-tasks/{task_id}/retries", response_model=ExternalTaskRead)
def set_retries(db: DbDep, actor: ActorDep, task_id: str, body: RetriesBody) -> dict[str, Any]:
    """Operators (admin): set the retries left; > 0 resolves its incident and makes it fetchable again."""
    require(actor)
    row = db.command(lambda s: ext.set_retries(s, task_id=task_id, retries=body.retries, actor=actor))
    return external_task_read(row)


@router.get("/external-tasks", response_model=Page[ExternalTaskRead])
def list_external_tasks(db: DbDep, actor: ActorDep, paging: PagingDep,
                        state: Annotated[Literal["open", "completed", "error", "cancelled", "all"], Query()] = "open",
                        topic: Annotated[str | None, Query(max_length=400)] = None,
                        process_instance_id: Annotated[str | None, Query(max_length=36)] = None,
                        worker_id: Annotated[str | None, Query(max_length=255)] = None,
                        locked: bool | None = None) -> dict[str, Any]:
    require_worker(actor)
    with db.read() as s:
        page = ext.list_external_tasks(s, paging, state=None if state == "all" else state, topic=topic,
                                       instance_id=process_instance_id, worker_id=worker_id, locked=locked)
    return page_body(page, [external_task_read(r) for r in page.items])


@router.get("/external-tasks/{task_id}", response_model=ExternalTaskRead)
def get_external_task(db: DbDep, actor: ActorDep, task_id: str) -> dict[str, Any]:
    require_worker(actor)
    with db.read() as s:
        return external_task_read(ext.get_external_task(s, task_id))


# --------------------------------------------------------------------------- incidents


@router.get("/incidents", response_model=Page[IncidentRead], tags=["incidents"])
def list_incidents(db: DbDep, actor: ActorDep, paging: PagingDep,
                   state: Annotated[Literal["open", "resolved", "all"], Query()] = "open",
                   kind: Annotated[str | None, Query(max_length=40)] = None,
                   process_instance_id: Annotated[str | None, Query(max_length=36)] = None,
                   external_task_id: Annotated[str | None, Query(max_length=36)] = None) -> dict[str, Any]:
    """Incidents, newest first (admin and integration)."""
    require_worker(actor)
    with db.read() as s:
        page = ext.list_incidents(s, paging, state=state, kind=kind, instance_id=process_instance_id,
                                  external_task_id=external_task_id)
    return page_body(page, [IncidentRead.model_validate(i).model_dump() for i in page.items])


@router.post("/incidents/{incident_id}/retry", response_model=IncidentRead, tags=["incidents"])
def retry_incident(db: DbDep, actor: ActorDep, incident_id: str, body: IncidentRetryBody | None = None) -> Any:
    """Operators (admin): give the failed task `retries` (default 1) again; it is fetchable at once."""
    require(actor)
    retries = body.retries if body is not None else 1
    return db.command(lambda s: ext.retry_incident(s, incident_id=incident_id, retries=retries, actor=actor))
