"""Diagram sources for the pages' bpmn-js canvases, authorized by the session like their API counterparts.

``/instances/{id}/diagram.xml`` = ``GET /api/process-instances/{id}/xml`` (whoever may see the
instance); ``/procedures/{key}/versions/{v}/diagram.xml`` = ``GET /api/process-definitions/{key}/
versions/{v}/xml`` (designers).
"""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request
from fastapi.responses import Response

from api.deps import require
from engine.commands import latest_definition
from engine.queries import definition_source, instance_diagram
from web.deps import PageActorDep
from web.formdata import PageRoute

router = APIRouter(include_in_schema=False, route_class=PageRoute)
XML = "application/xml"


@router.get("/instances/{instance_id}/diagram.xml")
def instance_xml(request: Request, actor: PageActorDep, instance_id: Annotated[str, Path(max_length=64)]) -> Response:
    with request.app.state.db.read() as s:
        return Response(instance_diagram(s, actor, instance_id), media_type=XML)


@router.get("/procedures/{key}/versions/{version}/diagram.xml")
def version_xml(request: Request, actor: PageActorDep, key: Annotated[str, Path(max_length=200)],
                version: Annotated[int, Path(ge=1, le=2**31 - 1)]) -> Response:
    require(actor, "designer")
    with request.app.state.db.read() as s:
        return Response(definition_source(s, latest_definition(s, key, version)), media_type=XML)
