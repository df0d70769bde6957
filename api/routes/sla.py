"""SLA reports: per-task figures and the list of breaches (designer, auditor, admin)."""
from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict

from api.deps import INSTANT_HELP, ActorDep, DbDep, Instant, require
from engine.commands import sla

router = APIRouter(prefix="/api/sla", tags=["sla"])


class SlaSummaryRow(BaseModel):
    definition_key: str
    element_id: str
    name: str
    done: int
    on_time: int
    breaches: int
    on_time_rate: float | None
    median_seconds: float | None
    p90_seconds: float | None
    open_at_risk: int
    open_breached: int


class BreachRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: str
    instance_id: str
    definition_key: str
    element_id: str
    name: str
    state: str
    assignee: str | None
    due_at: datetime | None
    ended_at: datetime | None
    sla_state: str | None


@router.get("/summary", response_model=dict[str, list[SlaSummaryRow]])
def summary(db: DbDep, actor: ActorDep,
            since: Annotated[Instant | None, Query(description=f"tasks completed from; {INSTANT_HELP}")] = None,
            until: Annotated[Instant | None, Query(description=f"tasks completed before; {INSTANT_HELP}")] = None,
            definition_key: Annotated[str | None, Query(max_length=200)] = None) -> Any:
    """Per definition and task: tasks done, on-time rate, breaches, median/p90 time to complete; open at risk/breached."""
    require(actor, "designer", "auditor")
    with db.read() as s:
        return {"items": sla.summary(s, since=since, until=until, definition_key=definition_key)}


@router.get("/breaches", response_model=dict[str, list[BreachRead]])
def breaches(db: DbDep, actor: ActorDep, definition_key: Annotated[str | None, Query(max_length=200)] = None,
             limit: Annotated[int, Query(ge=1, le=500)] = 100) -> Any:
    """Tasks open past their due date, and tasks completed late; earliest due first."""
    require(actor, "designer", "auditor")
    with db.read() as s:
        return {"items": [BreachRead.model_validate(t) for t in sla.breaches(s, limit=limit,
                                                                             definition_key=definition_key)]}
