"""Rendering rows into response bodies (shared by the routes)."""
from __future__ import annotations

from typing import Any

from api.schemas import TaskRead
from engine.queries import Page, sla_state
from engine.store.models import TaskRow


def task_read(row: TaskRow) -> dict[str, Any]:
    return {**TaskRead.model_validate(row).model_dump(), "sla": sla_state(row)}


def page_body(page: Page, items: list[Any] | None = None) -> dict[str, Any]:
    """A list response: ``items`` (rendered when given), ``total`` (+ ``total_capped``) and ``next_cursor``."""
    return {"items": page.items if items is None else items, "total": page.total,
            "total_capped": page.total_capped, "next_cursor": page.next_cursor}
