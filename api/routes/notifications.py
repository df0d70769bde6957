"""In-app notifications of the current user (written by the worker's SLA jobs, engine.notifications)."""
from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field

from api.deps import ActorDep, DbDep
from engine import notifications

router = APIRouter(prefix="/api/notifications", tags=["notifications"])


class NotificationRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: str
    event: str
    subject: str
    body: str
    instance_id: str | None
    task_id: str | None
    created_at: datetime
    read_at: datetime | None


class MarkRead(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ids: list[Annotated[str, Field(max_length=36)]] = Field(max_length=500)


@router.get("", response_model=dict[str, list[NotificationRead]])
def list_notifications(db: DbDep, actor: ActorDep, unread: Annotated[bool, Query()] = False,
                       limit: Annotated[int, Query(ge=1, le=200)] = 50) -> Any:
    """Your notifications, newest first (`unread=true`: only unread ones)."""
    with db.read() as s:
        rows = notifications.list_for(s, actor.name, unread_only=unread, limit=limit)
    return {"items": [NotificationRead.model_validate(r) for r in rows]}


@router.post("/read")
def mark_read(db: DbDep, actor: ActorDep, body: MarkRead) -> dict[str, int]:
    """Mark your notifications read (ids of others' notifications are ignored); answers how many changed."""
    return {"marked": db.command(lambda s: notifications.mark_read(s, actor.name, body.ids))}


@router.post("/read-all")
def mark_all_read(db: DbDep, actor: ActorDep) -> dict[str, int]:
    """Mark all your unread notifications read; answers how many changed."""
    return {"marked": db.command(lambda s: notifications.mark_all_read(s, actor.name))}
