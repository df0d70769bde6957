"""Rendering rows into response bodies (shared by the routes)."""
from __future__ import annotations

from typing import Any
from urllib.parse import quote

from api.schemas import TaskRead
from engine.queries import Page, sla_state
from engine.store.models import TaskRow


def task_read(row: TaskRow) -> dict[str, Any]:
    return {**TaskRead.model_validate(row).model_dump(), "sla": sla_state(row)}


def page_body(page: Page, items: list[Any] | None = None) -> dict[str, Any]:
    """A list response: ``items`` (rendered when given), ``total`` (+ ``total_capped``) and ``next_cursor``."""
    return {"items": page.items if items is None else items, "total": page.total,
            "total_capped": page.total_capped, "next_cursor": page.next_cursor}


def download_headers(name: str, content_type: str, sha256: str) -> dict[str, str]:
    """Headers that make a browser save the file and never render or re-interpret it.

    ``filename`` carries an ASCII fallback, ``filename*`` the exact name (RFC 6266 / 8187).
    Used by ``GET /api/attachments/{id}/content`` and the task page's download alike.
    """
    fallback = name.encode("ascii", "replace").decode().replace("?", "_").replace('"', "_").replace("\\", "_")
    return {
        "Content-Type": content_type,  # as stored: set here so nothing appends a charset it does not have
        "Content-Disposition": f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}",
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": "default-src 'none'; sandbox",
        "Cache-Control": "private, no-store",
        "ETag": f'"{sha256}"',
    }
