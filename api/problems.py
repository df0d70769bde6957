"""Errors as RFC 9457 problem documents (``application/problem+json``).

Every problem has a stable ``code``, a human ``detail`` and the context a person can act
on (field, element id, line). A 500 carries the request id and never exception text.
"""
from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from engine.errors import (
    Conflict,
    Forbidden,
    InvalidDefinition,
    InvalidInput,
    NotFound,
    ScriptError,
    SopflowError,
    StaleInstance,
    TooLarge,
    UnsupportedType,
)

log = logging.getLogger("sopflow.api")

STATUS = [
    (NotFound, 404, "Not found"),
    (Forbidden, 403, "Forbidden"),
    (StaleInstance, 409, "Conflict"),
    (Conflict, 409, "Conflict"),
    (InvalidDefinition, 422, "Invalid definition"),
    (TooLarge, 413, "Content too large"),
    (UnsupportedType, 415, "Unsupported media type"),
    (InvalidInput, 422, "Invalid input"),
    (ScriptError, 422, "Script failed"),
]


class Unauthorized(SopflowError):
    code = "unauthorized"


class SafeJSONResponse(JSONResponse):
    """JSON whose text is always valid UTF-8: a string that is not (a lone surrogate) is written with
    replacement characters instead of failing the response (a 500 from the error handler itself)."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=False, allow_nan=False, indent=None,
                          separators=(",", ":")).encode("utf-8", "replace")


def problem(request: Request, status: int, title: str, code: str, detail: str, /, **context: Any) -> JSONResponse:
    """A problem response; ``context`` adds fields (element_id, line, field...), never replacing the
    standard ones (an error's ``status=cancelled`` context is the subject's, not the HTTP status)."""
    body: dict[str, Any] = {"type": f"https://sopflow.dev/problems/{code}", "title": title, "status": status,
                            "code": code, "detail": detail, "instance": str(request.url.path),
                            "request_id": getattr(request.state, "request_id", None)}
    body.update({k: v for k, v in context.items() if v is not None and k not in body})
    headers = {"WWW-Authenticate": 'Bearer realm="sopflow"'} if status == 401 else None
    return SafeJSONResponse(body, status_code=status, media_type="application/problem+json", headers=headers)


# Pydantic's words for the refusals people meet most, in sopflow's.
_MESSAGES = {
    "timezone_aware": "needs a time zone (e.g. 2026-01-01T00:00:00Z or 2026-01-01T00:00:00+02:00)",
    "string_unicode": "is not valid Unicode text (it holds a lone surrogate such as \\ud800)",
}


def install(app: FastAPI) -> None:
    @app.exception_handler(SopflowError)
    async def domain_error(request: Request, exc: SopflowError) -> JSONResponse:
        if isinstance(exc, Unauthorized):
            return problem(request, 401, "Unauthorized", exc.code, exc.message)
        for cls, status, title in STATUS:
            if isinstance(exc, cls):
                return problem(request, status, title, exc.code, exc.message, **exc.context)
        return problem(request, 400, "Bad request", exc.code, exc.message, **exc.context)

    @app.exception_handler(RequestValidationError)
    async def request_invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = {}
        for err in exc.errors():
            if err.get("type") == "json_invalid":
                errors["(body)"] = "is not valid JSON"
                continue
            loc = [str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path", "header")]
            message = _MESSAGES.get(err.get("type", ""), err.get("msg", "is invalid"))
            if err.get("type") == "value_error" and "error" in err.get("ctx", {}):
                message = str(err["ctx"]["error"])  # our validators' own words, without pydantic's prefix
            errors[".".join(loc) or "(request)"] = message
        first = next(iter(errors), None)
        detail = "the request is invalid: " + "; ".join(f"{k}: {v}" for k, v in errors.items())
        return problem(request, 422, "Invalid input", "invalid_input", detail, field=first, errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed", 413: "too_large"}.get(exc.status_code, "http_error")
        return problem(request, exc.status_code, str(exc.detail), code, str(exc.detail))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", extra={"request_id": getattr(request.state, "request_id", None)})
        return problem(request, 500, "Internal error", "internal_error",
                       "something went wrong on our side; quote the request id when reporting it")
