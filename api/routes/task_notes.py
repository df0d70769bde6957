"""Comments and attachments on user tasks, per task and per instance, and attachment downloads.

Thin: the engine decides who may add or read (``engine.commands.task_notes``,
``engine.queries.readable_task``/``visible_instance``); a task or instance outside the
caller's sight answers 404, as its detail does.
"""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, Response, UploadFile, status

from api.deps import ActorDep, DbDep, PagingDep, SettingsDep, require
from api.schemas import AttachmentRead, CommentCreate, CommentRead, Page
from api.views import download_headers, page_body
from engine.commands.task_notes import MAX_DESCRIPTION_CHARS, add_attachment, add_comment
from engine.errors import TooLarge
from engine.queries import (
    get_attachment,
    list_instance_attachments,
    list_instance_comments,
    list_task_attachments,
    list_task_comments,
)

router = APIRouter(prefix="/api", tags=["comments and attachments"])


@router.post("/tasks/{task_id}/comments", status_code=status.HTTP_201_CREATED, response_model=CommentRead)
def create_comment(db: DbDep, actor: ActorDep, task_id: str, body: CommentCreate) -> CommentRead:
    """Comment on an open task you may see (Camunda's `POST /task/{id}/comment/create`).

    404 when the task is not visible to you; 409 when it is completed or cancelled.
    """
    require(actor, "employee")
    row = db.command(lambda s: add_comment(s, task_id=task_id, actor=actor, message=body.message))
    return CommentRead.model_validate(row)


@router.get("/tasks/{task_id}/comments", response_model=Page[CommentRead])
def get_task_comments(db: DbDep, actor: ActorDep, paging: PagingDep, task_id: str) -> dict:
    """The task's comments, oldest first (also after it closed)."""
    require(actor, "employee", "auditor")
    with db.read() as s:
        page = list_task_comments(s, actor, task_id, paging)
        return page_body(page, [CommentRead.model_validate(c) for c in page.items])


@router.get("/process-instances/{instance_id}/comments", response_model=Page[CommentRead])
def get_instance_comments(db: DbDep, actor: ActorDep, paging: PagingDep, instance_id: str) -> dict:
    """The comments on every task of the instance, oldest first."""
    require(actor, "employee", "auditor")
    with db.read() as s:
        page = list_instance_comments(s, actor, instance_id, paging)
        return page_body(page, [CommentRead.model_validate(c) for c in page.items])


@router.post("/tasks/{task_id}/attachments", status_code=status.HTTP_201_CREATED, response_model=AttachmentRead,
             responses={413: {"description": "larger than SOPFLOW_MAX_ATTACHMENT_BYTES"},
                        415: {"description": "a type not accepted, or content not matching the extension"}})
def create_attachment(db: DbDep, actor: ActorDep, settings: SettingsDep, task_id: str,
                      file: Annotated[UploadFile, File(description="the file (multipart field `file`)")],
                      description: Annotated[str | None, Form(max_length=MAX_DESCRIPTION_CHARS)] = None,
                      ) -> AttachmentRead:
    """Attach a file to an open task you may see; stored with its SHA-256 and recorded in the audit trail."""
    require(actor, "employee")
    limit = settings.max_attachment_bytes
    data = file.file.read(limit + 1)  # one byte more than allowed is enough to know it is too large
    if len(data) > limit:
        raise TooLarge("the file is larger than the limit of {limit} bytes", field="file", limit=limit,
                       params={"limit": limit})
    row = db.command(lambda s: add_attachment(s, task_id=task_id, actor=actor, filename=file.filename, data=data,
                                              description=description, settings=settings))
    return AttachmentRead.model_validate(row)


@router.get("/tasks/{task_id}/attachments", response_model=Page[AttachmentRead])
def get_task_attachments(db: DbDep, actor: ActorDep, paging: PagingDep, task_id: str) -> dict:
    """The task's attachments (without their bytes), oldest first."""
    require(actor, "employee", "auditor")
    with db.read() as s:
        page = list_task_attachments(s, actor, task_id, paging)
        return page_body(page, [AttachmentRead.model_validate(a) for a in page.items])


@router.get("/process-instances/{instance_id}/attachments", response_model=Page[AttachmentRead])
def get_instance_attachments(db: DbDep, actor: ActorDep, paging: PagingDep, instance_id: str) -> dict:
    """The attachments of every task of the instance (without their bytes), oldest first."""
    require(actor, "employee", "auditor")
    with db.read() as s:
        page = list_instance_attachments(s, actor, instance_id, paging)
        return page_body(page, [AttachmentRead.model_validate(a) for a in page.items])


@router.get("/attachments/{attachment_id}/content", response_class=Response,
            responses={200: {"content": {"application/octet-stream": {}},
                             "description": "the bytes, with the stored content type"}})
def download_attachment(db: DbDep, actor: ActorDep, attachment_id: str) -> Response:
    """Download an attachment: its stored content type, `Content-Disposition: attachment`, `nosniff`."""
    require(actor, "employee", "auditor")
    with db.read() as s:
        row = get_attachment(s, actor, attachment_id)
        return Response(row.content, headers=download_headers(row.name, row.content_type, row.sha256))

