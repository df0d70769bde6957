"""``/docs``: Swagger UI served from sopflow's own static files, so it works offline.

FastAPI's default ``/docs`` page loads Swagger UI from a CDN, which is a blank page without
internet; here the app is created with ``docs_url=None`` and this route renders the same page
from ``/static/vendor/swagger-ui/`` (built by ``make assets``). When those files are missing
the route answers 503 with the command that builds them, instead of a page that cannot load.
ReDoc is switched off (``redoc_url=None``): it would be a second CDN dependency.
"""
from __future__ import annotations

from html import escape

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse

from web.app import VENDOR

SWAGGER_DIR = VENDOR / "swagger-ui"
SWAGGER_FILES = ("swagger-ui-bundle.js", "swagger-ui.css", "favicon-32x32.png")

MISSING_ASSETS_HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title} - API docs unavailable</title></head>
<body style="font-family: sans-serif; max-width: 40em; margin: 3em auto">
<h1>The API documentation is not built</h1>
<p>Swagger UI's files are missing from <code>web/static/vendor/swagger-ui/</code>.
Build the front-end assets with <code>make assets</code> (needs node and npm; <code>make run</code>
does it too), then reload this page.</p>
<p>The API itself works; its description is at <a href="{openapi_url}">{openapi_url}</a>.</p>
</body></html>
"""


def swagger_ui(request: Request) -> HTMLResponse:
    """The Swagger UI page of the app serving the request (503 with the build command when its files are missing).

    A module-level function reading the app from the request, not a closure over one app:
    FastAPI caches what it learns about every endpoint callable (bounded LRU caches keyed by
    the callable), so a closure per app would keep every app made in a process alive.
    """
    app = request.app
    openapi_url = app.openapi_url or "/openapi.json"
    base = "/static/vendor/swagger-ui"
    if not all((SWAGGER_DIR / name).is_file() for name in SWAGGER_FILES):
        return HTMLResponse(MISSING_ASSETS_HTML.format(title=escape(app.title), openapi_url=escape(openapi_url)),
                            status_code=503, headers={"Retry-After": "60"})
    return get_swagger_ui_html(
        openapi_url=openapi_url,
        title=f"{app.title} - API docs",
        swagger_js_url=f"{base}/swagger-ui-bundle.js",
        swagger_css_url=f"{base}/swagger-ui.css",
        swagger_favicon_url=f"{base}/favicon-32x32.png",
        # no badge image from the online validator (an outside request on every page view)
        swagger_ui_parameters={"validatorUrl": None},
    )


def install(app: FastAPI) -> None:
    """Add ``GET /docs`` (Swagger UI from local files) to an app created with ``docs_url=None``."""
    app.get("/docs", include_in_schema=False)(swagger_ui)
