"""Deployments and process definitions (designers deploy; employees list what they can start)."""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Path, Query, Response, UploadFile, status

from api.deps import ActorDep, DbDep, PagingDep, SettingsDep, require
from api.schemas import DefinitionRead, DeploymentCreated, DeploymentRead, Page, StartFormRead
from api.views import page_body
from engine.commands import deploy, latest_definition
from engine.commands.instances import get_start_form
from engine.errors import InvalidDefinition
from engine.loading import UploadedFile
from engine.queries import definition_source, list_definitions, list_deployments
from engine.store.models import DefinitionRow

router = APIRouter(prefix="/api", tags=["definitions"])
VersionPath = Annotated[int, Path(ge=1, le=2**31 - 1)]


@router.post("/deployments", status_code=status.HTTP_201_CREATED, response_model=DeploymentCreated,
             responses={200: {"model": DeploymentCreated, "description": "identical files: the existing versions"}})
def create_deployment(db: DbDep, actor: ActorDep, settings: SettingsDep, response: Response,
                      files: Annotated[list[UploadFile], File(description="one or more .bpmn/.dmn files")],
                      name: Annotated[str | None, Query(max_length=200)] = None) -> DeploymentCreated:
    require(actor, "designer")
    limit = settings.max_upload_bytes
    uploads = []
    for f in files:
        data = f.file.read(limit + 1)
        if len(data) > limit:
            raise InvalidDefinition("{filename} is larger than {limit} bytes", file=f.filename,
                                    params={"filename": f.filename, "limit": limit})
        uploads.append(UploadedFile(f.filename or "upload.bpmn", data))
    result = db.command(lambda s: deploy(s, files=uploads, actor=actor, name=name, settings=settings))
    if not result.created:
        response.status_code = status.HTTP_200_OK
    return DeploymentCreated(id=result.deployment_id, created=result.created, definitions=result.definitions)


@router.get("/deployments", response_model=Page[DeploymentRead])
def get_deployments(db: DbDep, actor: ActorDep, paging: PagingDep) -> dict:
    require(actor, "designer")
    with db.read() as s:
        page = list_deployments(s, paging)
    return page_body(page)


@router.get("/process-definitions", response_model=Page[DefinitionRead])
def get_definitions(db: DbDep, actor: ActorDep, paging: PagingDep,
                    key: Annotated[str | None, Query(max_length=200)] = None,
                    latest: bool = False) -> dict:
    require(actor, "designer", "employee")
    with db.read() as s:
        page = list_definitions(s, key=key, latest=latest, paging=paging)
    return page_body(page)


@router.get("/process-definitions/{key}", response_model=DefinitionRead)
def get_latest_definition(db: DbDep, actor: ActorDep, key: str) -> DefinitionRow:
    require(actor, "designer", "employee")
    with db.read() as s:
        return latest_definition(s, key)


@router.get("/process-definitions/{key}/start-form", response_model=StartFormRead)
def get_latest_start_form(db: DbDep, actor: ActorDep, key: str) -> dict:
    """The start event's form of the latest version: what start variables a client must send."""
    require(actor, "designer", "employee")
    with db.read() as s:
        return get_start_form(s, key=key)


@router.get("/process-definitions/{key}/versions/{version}", response_model=DefinitionRead)
def get_definition_version(db: DbDep, actor: ActorDep, key: str, version: VersionPath) -> DefinitionRow:
    require(actor, "designer", "employee")
    with db.read() as s:
        return latest_definition(s, key, version)


def _xml(db: DbDep, key: str, version: int | None) -> Response:
    with db.read() as s:
        return Response(definition_source(s, latest_definition(s, key, version)), media_type="application/xml")


@router.get("/process-definitions/{key}/xml", response_class=Response,
            responses={200: {"content": {"application/xml": {}}}})
def get_latest_xml(db: DbDep, actor: ActorDep, key: str) -> Response:
    require(actor, "designer")
    return _xml(db, key, None)


@router.get("/process-definitions/{key}/versions/{version}/xml", response_class=Response,
            responses={200: {"content": {"application/xml": {}}}})
def get_version_xml(db: DbDep, actor: ActorDep, key: str, version: VersionPath) -> Response:
    require(actor, "designer")
    return _xml(db, key, version)
