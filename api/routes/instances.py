"""Process instances: start, list, read, cancel; message correlation."""
from __future__ import annotations

import json
from typing import Annotated

from fastapi import APIRouter, Query, Response, status

from api.deps import INSTANT_HELP, ActorDep, DbDep, Instant, PagingDep, SettingsDep, require
from api.schemas import (
    CancelRequest,
    InstanceDetail,
    InstanceRead,
    MessageRequest,
    MessageResult,
    Page,
    StartRequest,
)
from api.views import page_body, task_read
from engine import limits
from engine.commands import cancel_instance, correlate_message, start_instance
from engine.errors import Forbidden, InvalidInput, Phrase
from engine.queries import InstanceFilter, instance_diagram, instance_tasks, list_instances, visible_instance

router = APIRouter(prefix="/api", tags=["instances"])


@router.post("/process-definitions/{key}/start", status_code=status.HTTP_201_CREATED, response_model=InstanceDetail)
def start(db: DbDep, actor: ActorDep, settings: SettingsDep, key: str, body: StartRequest) -> dict:
    require(actor, "employee")
    row = db.command(lambda s: start_instance(s, key=key, actor=actor, variables=body.variables,
                                              business_key=body.business_key, version=body.version,
                                              settings=settings))
    return _detail(db, row.id, actor)


def _detail(db: DbDep, instance_id: str, actor: ActorDep) -> dict:
    with db.read() as s:
        row = visible_instance(s, actor, instance_id)
        tasks = instance_tasks(s, instance_id)
    return {**InstanceRead.model_validate(row).model_dump(), "open_tasks": [task_read(t) for t in tasks]}


@router.get("/process-instances", response_model=Page[InstanceRead])
def get_instances(
    db: DbDep, actor: ActorDep, paging: PagingDep,
    definition_key: Annotated[str | None, Query(max_length=200)] = None,
    version: Annotated[int | None, Query(ge=1, le=2**31 - 1, description="the definition's version")] = None,
    status_: Annotated[str | None, Query(alias="status", description="running, completed or cancelled")] = None,
    business_key: Annotated[str | None, Query(max_length=200, description="exact")] = None,
    business_key_prefix: Annotated[str | None, Query(max_length=200, description="starts with (% and _ are "
                                                                                   "plain characters)")] = None,
    started_by: Annotated[str | None, Query(max_length=100)] = None,
    started_before: Annotated[Instant | None, Query(description=INSTANT_HELP + "; started strictly before")] = None,
    started_after: Annotated[Instant | None, Query(description=INSTANT_HELP + "; started strictly after")] = None,
    variable: Annotated[list[str] | None, Query(description="name_eq_value, repeatable (value is JSON or text); "
                                                            "matches the process variable's latest value")] = None,
) -> dict:
    """Search instances you may see (auditors and admins: all), newest first, paged."""
    require(actor, "employee", "auditor")
    variables = {}
    for item in variable or []:
        name, sep, raw = item.partition("_eq_")
        if not sep or not name:
            raise InvalidInput("variable filters look like name_eq_value", field="variable")
        try:
            value = json.loads(raw)
        except (ValueError, RecursionError):
            value = raw
        problem = limits.find_problem(value, max_depth=1)
        if problem is not None:  # e.g. "\ud800" as a JSON escape, or NaN
            what = Phrase("the value")
            raise InvalidInput("variable filter '{name}': {value}", field="variable",
                               params={"name": name, "value": problem.describe(what)})
        variables[name] = value
    f = InstanceFilter(definition_key=definition_key, status=status_, business_key=business_key,
                       started_by=started_by, started_before=started_before, started_after=started_after,
                       variables=variables, definition_version=version, business_key_prefix=business_key_prefix)
    with db.read() as s:
        page = list_instances(s, actor, f, paging)
    return page_body(page)


@router.get("/process-instances/{instance_id}", response_model=InstanceDetail)
def get_instance(db: DbDep, actor: ActorDep, instance_id: str) -> dict:
    require(actor, "employee", "auditor")
    return _detail(db, instance_id, actor)


@router.get("/process-instances/{instance_id}/xml", response_class=Response,
            responses={200: {"content": {"application/xml": {}}}})
def get_instance_xml(db: DbDep, actor: ActorDep, instance_id: str) -> Response:
    """The BPMN XML of the version this instance runs, for whoever may see the instance."""
    with db.read() as s:
        return Response(instance_diagram(s, actor, instance_id), media_type="application/xml")


@router.post("/process-instances/{instance_id}/cancel", response_model=InstanceDetail)
def cancel(db: DbDep, actor: ActorDep, instance_id: str, body: CancelRequest) -> dict:
    require(actor, "employee")
    with db.read() as s:
        row = visible_instance(s, actor, instance_id)
    if not actor.is_admin and row.started_by != actor.name:
        raise Forbidden("only whoever started an instance, or an admin, may cancel it", instance_id=instance_id)
    db.command(lambda s: cancel_instance(s, instance_id=instance_id, actor=actor, reason=body.reason))
    return _detail(db, instance_id, actor)


@router.post("/messages", response_model=MessageResult)
def message(db: DbDep, actor: ActorDep, settings: SettingsDep, body: MessageRequest) -> MessageResult:
    """Correlate a message (docs/notes/messages.md).

    ``integration`` and ``admin`` reach any instance and may start processes by message;
    an employee reaches only instances they may see, and a message that would reach
    another is answered exactly as one that matched nothing, and changes nothing.
    """
    require(actor, "employee", "integration")
    ids = db.command(lambda s: correlate_message(
        s, name=body.name, actor=actor, business_key=body.business_key, correlation_keys=body.correlation_keys,
        correlation=body.correlation, variables=body.variables, all_matches=body.all, settings=settings))
    return MessageResult(instance_ids=ids)
