"""Rendering rows into response bodies (shared by the routes)."""
from __future__ import annotations

from typing import Any

from api.schemas import TaskRead
from engine.queries import sla_state
from engine.store.models import TaskRow


def task_read(row: TaskRow) -> dict[str, Any]:
    return {**TaskRead.model_validate(row).model_dump(), "sla": sla_state(row)}
