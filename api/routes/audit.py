"""History and audit: instance timelines, the audit trail, streaming export, chain verification."""
from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query
from fastapi.responses import StreamingResponse

from api.deps import INSTANT_HELP, ActorDep, DbDep, Instant, PagingDep, require
from api.schemas import AuditEventRead, HistoryRead, Page, Verification
from api.views import page_body, task_read
from engine import audit
from engine.actor import Actor
from engine.queries import AuditFilter, audit_batch, event_dict, iter_audit, list_audit, timeline
from engine.store.db import Database
from engine.store.models import AuditEventRow

router = APIRouter(prefix="/api", tags=["history and audit"])


@router.get("/history/process-instances/{instance_id}", response_model=HistoryRead)
def history(db: DbDep, actor: ActorDep, instance_id: str) -> dict:
    require(actor, "auditor", "employee")
    with db.read() as s:
        found = timeline(s, actor, instance_id)
    return {"id": instance_id, "instance": found["instance"], "events": found["events"],
            "tasks": [task_read(t) for t in found["tasks"]]}


def audit_filter(actor_name: Annotated[str | None, Query(alias="actor", max_length=100)] = None,
                 action: Annotated[str | None, Query(max_length=60)] = None,
                 instance_id: Annotated[str | None, Query(max_length=36)] = None,
                 definition_key: Annotated[str | None, Query(max_length=200)] = None,
                 since: Annotated[Instant | None, Query(alias="from", description=INSTANT_HELP)] = None,
                 until: Annotated[Instant | None, Query(alias="to", description=INSTANT_HELP)] = None) -> AuditFilter:
    """The audit trail's filter query parameters, shared by the list and the export."""
    return AuditFilter(actor_name, action, instance_id, definition_key, since, until)


AuditFilterDep = Annotated[AuditFilter, Depends(audit_filter)]


@router.get("/audit", response_model=Page[AuditEventRead])
def get_audit(db: DbDep, actor: ActorDep, paging: PagingDep, f: AuditFilterDep) -> dict:
    require(actor, "auditor")
    with db.read() as s:
        page = list_audit(s, actor, f, paging)
    return page_body(page, [event_dict(e) for e in page.items])


CSV_FIELDS = ["seq", "occurred_at", "actor", "action", "instance_id", "task_id", "definition_key",
              "definition_version", "chain", "chain_seq", "payload", "prev_hash", "hash"]


@router.get("/audit/export", response_class=StreamingResponse,
            responses={200: {"content": {"text/csv": {}, "application/x-ndjson": {}}}})
def export_audit(db: DbDep, actor: ActorDep, f: AuditFilterDep,
                 format: Literal["csv", "jsonl"] = "jsonl") -> StreamingResponse:  # noqa: A002
    """Stream the matching trail (see :func:`export_response`)."""
    require(actor, "auditor")
    return export_response(db, actor, f, format)


def export_response(db: Database, actor: Actor, f: AuditFilter, format: str) -> StreamingResponse:  # noqa: A002
    """The matching trail as CSV or JSONL, streamed; shared by the API and the audit page's export links.

    Everything that can be refused (role, filters) and the first batch of events are checked
    and read before the first byte, so a refusal is a proper error response. An error after the
    stream started aborts the connection (the client sees an incomplete chunked transfer, never
    a clean end), and is logged with the request id.
    """
    with db.read() as s:
        first = audit_batch(s, actor, f, batch=EXPORT_BATCH)
        first_lines = [_line(event, format) for event in first]

    def rows() -> Iterator[str]:
        buffer = io.StringIO()
        if format == "csv":
            csv.DictWriter(buffer, fieldnames=CSV_FIELDS).writeheader()
        buffer.writelines(first_lines)
        if len(first) == EXPORT_BATCH:
            with db.read() as s:
                for event in iter_audit(s, actor, f, EXPORT_BATCH, after=first[-1].seq):
                    buffer.write(_line(event, format))
                    if buffer.tell() > 64 * 1024:
                        yield buffer.getvalue()
                        buffer.seek(0)
                        buffer.truncate()
        yield buffer.getvalue()

    media = "text/csv" if format == "csv" else "application/x-ndjson"
    return StreamingResponse(rows(), media_type=media, headers={
        "Content-Disposition": f'attachment; filename="sopflow-audit.{format}"'})


EXPORT_BATCH = 1000


def _line(event: AuditEventRow, format: str) -> str:  # noqa: A002
    row = event_dict(event)
    if format == "jsonl":
        return json.dumps(row, ensure_ascii=False) + "\n"
    row["payload"] = event.payload
    buffer = io.StringIO()
    csv.DictWriter(buffer, fieldnames=CSV_FIELDS, extrasaction="ignore").writerow(row)
    return buffer.getvalue()


@router.get("/audit/verify", response_model=Verification)
def verify(db: DbDep, actor: ActorDep) -> dict:
    require(actor, "auditor")
    with db.read() as s:
        return audit.verify(s).to_dict()
