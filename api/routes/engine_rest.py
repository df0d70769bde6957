"""Camunda 7's REST shape for external tasks and incidents, under ``/engine-rest``.

Existing Camunda worker clients (e.g. ``camunda-external-task-client-python3``) work unchanged
against ``http://host:port/engine-rest``: the paths, camelCase field names, typed variables
(``{"name": {"value": ..., "type": "String"}}``), ``204 No Content`` answers and error bodies
(``{"type": ..., "message": ...}``) are Camunda's. The operations are sopflow's own
(:mod:`engine.commands.external_tasks`), so locking, retries, incidents and audit are the same
as through ``/api``.

Authentication: ``Authorization: Bearer <API token>`` or HTTP Basic with the user name and
the API token as the password (what Camunda clients send with ``auth_basic``). Workers need
the ``integration`` role (or ``admin``); setting retries needs ``admin``.
"""
from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Body, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from api.deps import DbDep, SettingsDep, require, token_cache
from api.routes.external_tasks import MAX_ASYNC_RESPONSE_MS, long_poll, require_worker
from engine.actor import Actor
from engine.commands import external_tasks as ext
from engine.errors import Conflict, Forbidden, InvalidInput, NotFound, ScriptError, SopflowError
from engine.queries import Paging
from engine.store.db import Database
from engine.store.models import ExternalTaskRow, IncidentRow

router = APIRouter(prefix="/engine-rest", tags=["camunda 7 compatible"])

_STATUS: list[tuple[type[SopflowError], int, str]] = [
    (NotFound, 404, "InvalidRequestException"),
    (Forbidden, 403, "AuthorizationException"),
    (Conflict, 409, "RestException"),
    (InvalidInput, 400, "InvalidRequestException"),
    (ScriptError, 422, "ProcessEngineException"),
]


class _Unauthorized(SopflowError):
    code = "unauthorized"


def _error(exc: SopflowError) -> JSONResponse:
    """Camunda's error body (clients read ``type`` and ``message``), plus sopflow's stable ``code``."""
    if isinstance(exc, _Unauthorized):
        return JSONResponse({"type": "AuthenticationException", "message": exc.message, "code": exc.code},
                            status_code=401, headers={"WWW-Authenticate": 'Basic realm="sopflow"'})
    for cls, status, kind in _STATUS:
        if isinstance(exc, cls):
            return JSONResponse({"type": kind, "message": str(exc), "code": exc.code}, status_code=status)
    return JSONResponse({"type": "RestException", "message": str(exc), "code": exc.code}, status_code=400)


def _actor(request: Request, db: Database) -> Actor:
    """The caller from ``Authorization``: Bearer <token>, or Basic user:token (the token as password)."""
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    user: str | None = None
    if scheme.lower() == "bearer" and value.strip():
        token = value.strip()
    elif scheme.lower() == "basic" and value.strip():
        try:
            user, _, token = base64.b64decode(value.strip(), validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            raise _Unauthorized("the Basic credentials are not valid base64 of 'user:token'") from None
    else:
        raise _Unauthorized("send an API token as 'Authorization: Bearer <token>' or HTTP Basic "
                            "with your user name and the token as the password")
    actor = token_cache(request).actor(token, db.read)
    if actor is None or (user is not None and user != actor.name):
        raise _Unauthorized("the API token is unknown or revoked, or does not belong to that user")
    request.state.user = actor.name
    return actor


def _run(request: Request, db: Database, check: Callable[[Actor], None], fn: Callable[[Actor], Any]) -> Any:
    try:
        actor = _actor(request, db)
        check(actor)
        return fn(actor)
    except SopflowError as exc:
        return _error(exc)


def _parse(model: type[BaseModel], body: Any) -> Any:
    try:
        return model.model_validate(body if body is not None else {})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '(body)'}: {e['msg']}" for e in exc.errors())
        raise InvalidInput("the request is invalid: {problems}", params={"problems": problems}) from None


# --------------------------------------------------------------------------- typed variables

_INT32 = (-(2**31), 2**31 - 1)


def _camunda_date(text: str) -> datetime:
    for fmt in ("%Y-%m-%dT%H:%M:%S.%f%z", "%Y-%m-%dT%H:%M:%S%z"):  # Camunda's own format, offset required
        try:
            return datetime.strptime(text, fmt).astimezone(UTC)
        except ValueError:
            continue
    parsed = datetime.fromisoformat(text)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def from_camunda(variables: Any, what: str = "variables") -> dict[str, Any]:
    """Camunda typed variables -> plain values. Raises InvalidInput naming the variable at fault.

    Types: String, Integer, Short, Long, Double, Boolean, Null, Date, Json, Object (JSON
    serialization only); an entry with no type keeps its JSON value (what clients send for
    plain values). Bytes, File and Java-serialized objects are refused.
    """
    if variables is None:
        return {}
    if not isinstance(variables, dict):
        raise InvalidInput("{what} must be an object of {{name: {{value, type}}}}", field=what,
                           params={"what": what})
    out: dict[str, Any] = {}
    for name, typed in variables.items():
        if not isinstance(typed, dict) or "value" not in typed:
            raise InvalidInput("variable '{name}' must be {{\"value\": ..., \"type\": ...}}", field=name,
                               params={"name": name})
        kind = str(typed.get("type") or "").lower()
        value = typed["value"]

        def bad(expected: str, name: str = name, kind: str = kind) -> InvalidInput:
            return InvalidInput("variable '{name}' of type {value} must hold {expected}", field=name,
                                params={"name": name, "value": kind or 'untyped', "expected": expected})

        if value is None or kind == "null":
            out[name] = None
        elif kind in ("", "untyped"):
            out[name] = value
        elif kind == "string":
            if not isinstance(value, str):
                raise bad("a string")
            out[name] = value
        elif kind in ("integer", "short", "long"):
            if isinstance(value, bool) or not isinstance(value, int | float) or int(value) != value:
                raise bad("a whole number")
            out[name] = int(value)
        elif kind == "double":
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise bad("a finite number")
            out[name] = float(value)
        elif kind == "boolean":
            if not isinstance(value, bool):
                raise bad("true or false")
            out[name] = value
        elif kind == "date":
            try:
                out[name] = _camunda_date(str(value))
            except ValueError:
                raise bad("a date like 2026-03-27T09:30:00.000+0000") from None
        elif kind in ("json", "object"):
            info = typed.get("valueInfo") or {}
            if kind == "object" and info.get("serializationDataFormat") not in (None, "application/json"):
                raise bad("JSON (serializationDataFormat application/json); Java serialization is not supported")
            try:
                out[name] = json.loads(value) if isinstance(value, str) else value
            except ValueError:
                raise bad("JSON text") from None
        else:
            raise InvalidInput("variable '{name}' has type {value}, which sopflow does not store "
                               "(use String, Integer, Long, Double, Boolean, Date, Json or Null)", field=name,
                               params={"name": name, "value": typed.get('type')})
    return out


def to_camunda(values: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Plain JSON values -> Camunda typed variables (objects and lists as ``Json`` text, as Camunda does)."""
    typed: dict[str, dict[str, Any]] = {}
    for name, value in values.items():
        if value is None:
            typed[name] = {"value": None, "type": "Null", "valueInfo": {}}
        elif isinstance(value, bool):
            typed[name] = {"value": value, "type": "Boolean", "valueInfo": {}}
        elif isinstance(value, int):
            kind = "Integer" if _INT32[0] <= value <= _INT32[1] else "Long"
            typed[name] = {"value": value, "type": kind, "valueInfo": {}}
        elif isinstance(value, float):
            typed[name] = {"value": value, "type": "Double", "valueInfo": {}}
        elif isinstance(value, str):
            typed[name] = {"value": value, "type": "String", "valueInfo": {}}
        else:
            typed[name] = {"value": json.dumps(value, ensure_ascii=False), "type": "Json", "valueInfo": {}}
    return typed


def _date(value: datetime | None) -> str | None:
    if value is None:
        return None
    utc = value.astimezone(UTC)
    return f"{utc:%Y-%m-%dT%H:%M:%S}.{utc.microsecond // 1000:03d}+0000"


def _task_dto(row: ExternalTaskRow, names: list[str] | None = None, *, locked: bool = False) -> dict[str, Any]:
    dto = {
        "id": row.id, "activityId": row.element_id, "activityInstanceId": f"{row.element_id}:{row.id}",
        "errorMessage": row.error_message, "errorDetails": row.error_details, "executionId": row.id,
        "lockExpirationTime": _date(row.lock_expires_at), "processDefinitionId": row.definition_id,
        "processDefinitionKey": row.definition_key, "processDefinitionVersionTag": None,
        "processInstanceId": row.instance_id, "retries": row.retries, "suspended": False,
        "workerId": row.worker_id, "topicName": row.topic, "tenantId": None, "priority": row.priority,
        "businessKey": row.business_key,
    }
    if locked:
        dto["variables"] = to_camunda(ext.task_variables(row, names))
        dto["extensionProperties"] = dict(row.extension_properties or {})
    return dto


_INCIDENT_TYPES = {"failed_external_task": "failedExternalTask", "failed_job": "failedJob",
                   "unhandled_bpmn_error": "unhandledBpmnError"}


def _incident_dto(row: IncidentRow) -> dict[str, Any]:
    return {
        "id": row.id, "processDefinitionId": None, "processInstanceId": row.instance_id,
        "executionId": row.external_task_id, "incidentTimestamp": _date(row.created_at),
        "incidentType": _INCIDENT_TYPES.get(row.kind, row.kind), "activityId": row.element_id,
        "failedActivityId": row.element_id, "causeIncidentId": row.id, "rootCauseIncidentId": row.id,
        "configuration": row.external_task_id or row.job_id, "tenantId": None, "incidentMessage": row.message,
        "jobDefinitionId": None, "annotation": None,
    }


# --------------------------------------------------------------------------- bodies (camelCase, extras ignored)


class _Camel(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)


class _Topic(_Camel):
    topic_name: str = Field(alias="topicName", min_length=1, max_length=400)
    lock_duration: int = Field(alias="lockDuration", ge=1, le=ext.MAX_LOCK_MS)
    variables: list[str] | None = None
    business_key: str | None = Field(None, alias="businessKey", max_length=200)
    process_definition_key: str | None = Field(None, alias="processDefinitionKey", max_length=200)
    process_variables: dict[str, Any] | None = Field(None, alias="processVariables")


class _Fetch(_Camel):
    worker_id: str = Field(alias="workerId", min_length=1, max_length=255)
    max_tasks: int = Field(1, alias="maxTasks", ge=0, le=ext.MAX_TASKS)
    use_priority: bool | None = Field(False, alias="usePriority")
    async_response_timeout: int | None = Field(None, alias="asyncResponseTimeout", ge=0, le=MAX_ASYNC_RESPONSE_MS)
    topics: list[_Topic] = Field(min_length=1, max_length=100)


class _Complete(_Camel):
    worker_id: str = Field(alias="workerId", min_length=1, max_length=255)
    variables: dict[str, Any] | None = None
    local_variables: dict[str, Any] | None = Field(None, alias="localVariables")


class _Failure(_Camel):
    worker_id: str = Field(alias="workerId", min_length=1, max_length=255)
    error_message: Any = Field(None, alias="errorMessage")
    error_details: Any = Field(None, alias="errorDetails")
    retries: int = Field(ge=0, le=2**31 - 1)
    retry_timeout: int | None = Field(0, alias="retryTimeout", ge=0, le=ext.MAX_LOCK_MS)


class _BpmnError(_Camel):
    worker_id: str = Field(alias="workerId", min_length=1, max_length=255)
    error_code: str = Field(alias="errorCode", min_length=1, max_length=255)
    error_message: Any = Field(None, alias="errorMessage")
    variables: dict[str, Any] | None = None


class _ExtendLock(_Camel):
    worker_id: str = Field(alias="workerId", min_length=1, max_length=255)
    new_duration: int = Field(alias="newDuration", ge=1, le=ext.MAX_LOCK_MS)


class _Retries(_Camel):
    retries: int = Field(ge=0, le=2**31 - 1)


_NO_CONTENT = 204


# --------------------------------------------------------------------------- routes


@router.post("/external-task/fetchAndLock", response_model=None)
async def fetch_and_lock(request: Request, db: DbDep, body: Any = Body(None)) -> Any:  # noqa: B008
    """Camunda's fetchAndLock: LockedExternalTaskDto list; long-polls up to ``asyncResponseTimeout`` ms."""
    try:
        actor = _actor(request, db)
        require_worker(actor)
        req = _parse(_Fetch, body)
        topics = []
        for t in req.topics:
            filters = from_camunda(t.process_variables, "processVariables") if t.process_variables else None
            topics.append(ext.TopicRequest(t.topic_name, t.lock_duration, t.variables, t.business_key,
                                           t.process_definition_key, filters))
        names = {t.topic_name: t.variables for t in req.topics}
        rows = await long_poll(request, db, lambda s: ext.fetch_and_lock(
            s, worker_id=req.worker_id, topics=topics, max_tasks=req.max_tasks, actor=actor,
            use_priority=bool(req.use_priority)), req.async_response_timeout or 0)
    except SopflowError as exc:
        return _error(exc)
    return [_task_dto(r, names.get(r.topic), locked=True) for r in rows]


@router.post("/external-task/{task_id}/complete", status_code=_NO_CONTENT, response_model=None)
def complete(request: Request, db: DbDep, settings: SettingsDep, task_id: str, body: Any = Body(None)) -> Any:  # noqa: B008
    """Complete; ``variables`` become process variables (``localVariables`` are accepted and not kept)."""
    def go(actor: Actor) -> Response:
        req = _parse(_Complete, body)
        variables = from_camunda(req.variables)
        from_camunda(req.local_variables, "localVariables")  # validated; a task's local scope ends with it
        db.command(lambda s: ext.complete(s, task_id=task_id, worker_id=req.worker_id, actor=actor,
                                          variables=variables, settings=settings))
        return Response(status_code=_NO_CONTENT)
    return _run(request, db, require_worker, go)


@router.post("/external-task/{task_id}/failure", status_code=_NO_CONTENT, response_model=None)
def failure(request: Request, db: DbDep, task_id: str, body: Any = Body(None)) -> Any:  # noqa: B008
    def go(actor: Actor) -> Response:
        req = _parse(_Failure, body)
        db.command(lambda s: ext.failure(s, task_id=task_id, worker_id=req.worker_id, actor=actor,
                                         error_message=req.error_message, error_details=req.error_details,
                                         retries=req.retries, retry_timeout_ms=req.retry_timeout or 0))
        return Response(status_code=_NO_CONTENT)
    return _run(request, db, require_worker, go)


@router.post("/external-task/{task_id}/bpmnError", status_code=_NO_CONTENT, response_model=None)
def bpmn_error(request: Request, db: DbDep, settings: SettingsDep, task_id: str, body: Any = Body(None)) -> Any:  # noqa: B008
    """A BPMN error: caught by an error boundary event, or an incident when nothing catches it."""
    def go(actor: Actor) -> Response:
        req = _parse(_BpmnError, body)
        variables = from_camunda(req.variables)
        db.command(lambda s: ext.bpmn_error(s, task_id=task_id, worker_id=req.worker_id, actor=actor,
                                            error_code=req.error_code, error_message=req.error_message,
                                            variables=variables, settings=settings))
        return Response(status_code=_NO_CONTENT)
    return _run(request, db, require_worker, go)


@router.post("/external-task/{task_id}/extendLock", status_code=_NO_CONTENT, response_model=None)
def extend_lock(request: Request, db: DbDep, task_id: str, body: Any = Body(None)) -> Any:  # noqa: B008
    def go(actor: Actor) -> Response:
        req = _parse(_ExtendLock, body)
        db.command(lambda s: ext.extend_lock(s, task_id=task_id, worker_id=req.worker_id, actor=actor,
                                             new_duration_ms=req.new_duration))
        return Response(status_code=_NO_CONTENT)
    return _run(request, db, require_worker, go)


@router.put("/external-task/{task_id}/retries", status_code=_NO_CONTENT, response_model=None)
def set_retries(request: Request, db: DbDep, task_id: str, body: Any = Body(None)) -> Any:  # noqa: B008
    def go(actor: Actor) -> Response:
        req = _parse(_Retries, body)
        db.command(lambda s: ext.set_retries(s, task_id=task_id, retries=req.retries, actor=actor))
        return Response(status_code=_NO_CONTENT)
    return _run(request, db, lambda a: require(a), go)


@router.get("/external-task/{task_id}", response_model=None)
def get_external_task(request: Request, db: DbDep, task_id: str) -> Any:
    def go(_: Actor) -> dict[str, Any]:
        with db.read() as s:
            return _task_dto(ext.get_external_task(s, task_id))
    return _run(request, db, require_worker, go)


@router.get("/external-task", response_model=None)
def list_external_tasks(request: Request, db: DbDep, topicName: str | None = None,  # noqa: N803
                        workerId: str | None = None, processInstanceId: str | None = None,  # noqa: N803
                        locked: bool | None = None, firstResult: int = 0, maxResults: int = 100) -> Any:  # noqa: N803
    def go(_: Actor) -> list[dict[str, Any]]:
        paging = Paging.parse(first_result=firstResult, max_results=maxResults)
        with db.read() as s:
            page = ext.list_external_tasks(s, paging, topic=topicName, worker_id=workerId,
                                           instance_id=processInstanceId, locked=locked)
        return [_task_dto(r) for r in page.items]
    return _run(request, db, require_worker, go)


@router.get("/incident", response_model=None)
def list_incidents(request: Request, db: DbDep, processInstanceId: str | None = None,  # noqa: N803
                   incidentType: str | None = None, firstResult: int = 0, maxResults: int = 100) -> Any:  # noqa: N803
    """Open incidents (Camunda lists only open ones; resolved ones are history)."""
    kinds = {v: k for k, v in _INCIDENT_TYPES.items()}

    def go(_: Actor) -> list[dict[str, Any]]:
        paging = Paging.parse(first_result=firstResult, max_results=maxResults)
        with db.read() as s:
            page = ext.list_incidents(s, paging, state="open", instance_id=processInstanceId,
                                      kind=kinds.get(incidentType, incidentType) if incidentType else None)
        return [_incident_dto(i) for i in page.items]
    return _run(request, db, require_worker, go)


@router.get("/version", response_model=None)
def version(request: Request, db: DbDep) -> Any:
    """The Camunda 7 REST API level this subset follows."""
    return _run(request, db, lambda a: None, lambda _: {"version": "7.21.0"})
