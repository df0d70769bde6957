"""The admin clock: read, advance or set the server's time (only with ``SOPFLOW_CLOCK_CONTROL=1``).

With the setting off (the default) both routes answer 404 and the clock is the system's.
Moving the clock wakes this process's worker at once; other processes see the new offset
within half a second (engine.commands.clock_control).
"""
from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from api.deps import ActorDep, DbDep, require
from engine import worker
from engine.clock import OffsetClock
from engine.commands import clock_control
from engine.errors import NotFound

router = APIRouter(prefix="/api/admin", tags=["admin"])


class ClockMove(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    advance: str | None = Field(None, max_length=60, description="an ISO 8601 duration, e.g. PT25H or P2D")
    set_to: AwareDatetime | None = Field(None, alias="set", description="an instant with a time zone")


class ClockRead(BaseModel):
    now: AwareDatetime
    offset_seconds: float
    system_now: AwareDatetime


def _controlled(request: Request) -> OffsetClock:
    controlled: OffsetClock | None = getattr(request.app.state, "controlled_clock", None)
    if controlled is None:
        raise NotFound("the clock cannot be controlled here (set SOPFLOW_CLOCK_CONTROL=1 to allow it)")
    return controlled


@router.get("/clock", response_model=ClockRead)
def read_clock(request: Request, actor: ActorDep) -> Any:
    """The server's time and how far it was moved (admin)."""
    controlled = _controlled(request)
    require(actor)
    return clock_control.describe(controlled)


@router.post("/clock", response_model=ClockRead)
def move_clock(request: Request, db: DbDep, actor: ActorDep, body: ClockMove) -> Any:
    """Advance (`{"advance": "PT25H"}`) or set (`{"set": "2026-01-06T09:00:00Z"}`) the clock (admin); forward only."""
    controlled = _controlled(request)
    require(actor)
    offset = db.command(lambda s: clock_control.move_clock(s, controlled=controlled, actor=actor,
                                                           advance=body.advance, to=body.set_to))
    controlled.remember(offset)
    worker.wake()
    return clock_control.describe(controlled)
