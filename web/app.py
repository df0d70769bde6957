"""Mount the web application on the API's FastAPI app: static files, page routers, HTML errors.

Page routes answer engine errors and unknown paths with an HTML page carrying the same status
the JSON API would (404, 403, 409, 422), and a missing or expired session with
``303 /login?next=...``; API paths (``/api``, ``/engine-rest``, ...) keep their problem+json.
"""
from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from api.problems import STATUS
from engine.errors import SopflowError
from web.deps import SignInRequired
from web.pages import admin, auditor, designer, diagrams, employee, shell
from web.render import error_text, render

STATIC = Path(__file__).parent / "static"
# built by `make assets` from web/frontend/ (git-ignored): the bpmn-js bundle, Swagger UI for /docs
VENDOR = STATIC / "vendor"
PAGE_MODULES = (shell, diagrams, employee, designer, auditor, admin)
NOT_PAGES = ("/api/", "/engine-rest", "/docs", "/redoc", "/openapi.json", "/healthz", "/readyz", "/metrics",
             "/static/")

Handler = Callable[[Request, Exception], Awaitable[Response]]


def is_page(request: Request) -> bool:
    """Whether ``request`` is for a page (HTML errors) rather than the API (problem+json)."""
    return not request.url.path.startswith(NOT_PAGES)


def _status_of(exc: Exception) -> int:
    if isinstance(exc, StarletteHTTPException):
        return exc.status_code
    if isinstance(exc, RequestValidationError):
        return 422
    for cls, status, _title in STATUS:
        if isinstance(exc, cls):
            return status
    return 400 if isinstance(exc, SopflowError) else 500


def _message(request: Request, exc: Exception) -> str | None:
    if isinstance(exc, SopflowError):
        return error_text(request, exc)
    if isinstance(exc, RequestValidationError):
        return "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ())[1:])}: {e.get('msg')}" for e in exc.errors())
    return None


def _page_errors(api_handler: Handler) -> Handler:
    async def handler(request: Request, exc: Exception) -> Response:
        if not is_page(request):
            return await api_handler(request, exc)
        status = _status_of(exc)
        if status >= 500:
            await api_handler(request, exc)  # logged and counted as the API does; the page stays HTML
        return render(request, "shell/error.html", {"status": status, "message": _message(request, exc)},
                      status_code=status)
    return handler


def install(app: FastAPI) -> None:
    """Mount ``/static``, the page routers and the HTML error pages on ``app`` (after the API's handlers)."""
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    for module in PAGE_MODULES:
        app.include_router(module.router)

    async def sign_in_first(request: Request, exc: Exception) -> Response:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/login?next={quote(target, safe='')}", status_code=303)

    app.add_exception_handler(SignInRequired, sign_in_first)
    for cls in (SopflowError, StarletteHTTPException, RequestValidationError, Exception):
        app.add_exception_handler(cls, _page_errors(app.exception_handlers[cls]))
