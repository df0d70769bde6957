"""/static and /docs: the front-end assets are served locally, and /docs says what to do without them."""
from __future__ import annotations

import re

import pytest

from api import docs
from tests.api_helpers import make_api
from web.app import VENDOR


def require_assets() -> None:
    if not (VENDOR / "diagram.js").is_file():
        pytest.fail(f"front-end assets missing in {VENDOR}: run `make assets`")


def test_docs_page_loads_swagger_ui_from_static_only(sqlite_db):
    require_assets()
    api = make_api(sqlite_db)
    r = api.client.get("/docs")
    assert r.status_code == 200
    sources = re.findall(r'(?:src|href)="([^"]+)"', r.text)
    assert "/static/vendor/swagger-ui/swagger-ui-bundle.js" in sources
    assert "/static/vendor/swagger-ui/swagger-ui.css" in sources
    assert [s for s in sources if "//" in s] == []  # nothing from another host
    for path in sources:
        assert api.client.get(path).status_code == 200, path
    assert api.client.get("/redoc").status_code == 404  # ReDoc is off: it would need a CDN


def test_static_serves_the_diagram_bundle_and_page_script(sqlite_db):
    require_assets()
    api = make_api(sqlite_db)
    bundle = api.client.get("/static/vendor/diagram.js")
    assert bundle.status_code == 200
    assert "javascript" in bundle.headers["content-type"]
    assert "SopflowDiagram" in bundle.text
    css = api.client.get("/static/vendor/diagram.css")
    assert css.status_code == 200 and ".sopflow-current" in css.text
    fonts = re.findall(r"url\(\"?\.?/?(fonts/[^\")?#]+)", css.text)
    assert fonts  # the bpmn-font files the diagram icons need
    for font in fonts:
        assert api.client.get(f"/static/vendor/{font}").status_code == 200, font
    assert api.client.get("/static/diagram-page.js").status_code == 200
    assert api.client.get("/static/vendor/nothing-here.js").status_code == 404
    # the static mount is not part of the API's description
    assert not [p for p in api.client.get("/openapi.json").json()["paths"] if p.startswith("/static")]


def test_docs_without_built_assets_says_to_run_make_assets(sqlite_db, tmp_path, monkeypatch):
    monkeypatch.setattr(docs, "SWAGGER_DIR", tmp_path / "missing")
    api = make_api(sqlite_db)
    r = api.client.get("/docs")
    assert r.status_code == 503
    assert "text/html" in r.headers["content-type"]
    assert "make assets" in r.text
