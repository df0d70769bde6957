"""Browser tests: a real sopflow server and Debian's headless Chromium driven by Playwright.

Every test under ``tests/browser/`` gets the ``browser`` marker (``-m "not browser"`` skips
them). Fixtures:

- ``server`` (session): sopflow on a free 127.0.0.1 port over a fresh SQLite data directory,
  ``processes/`` deployed, the demo organisation seeded (``server.tokens``: user -> API token,
  ``server.passwords``: user -> password). Test-only routes: ``/_test/pages/<name>`` serves
  ``tests/browser/pages/<name>`` with the pages' security headers (CSP), ``/_test/processes/``
  serves ``processes/``.
- ``chromium`` (session): ``/usr/bin/chromium`` (``SOPFLOW_CHROMIUM`` overrides), never a
  browser that Playwright downloads.
- ``page`` (per test): a fresh context (1280x900, ``base_url`` = the server) in which every
  request to a host other than 127.0.0.1 is aborted and recorded in ``blocked_requests``;
  uncaught page errors and console errors are recorded in ``console_errors``.
- ``tests.browser.helpers``: ``signed_in(page, server, user)`` signs in through the login form;
  ``screenshot(page_or_locator, name)`` writes ``docs/screenshots/<name>.png``.

Without Chromium the tests are skipped, unless ``SOPFLOW_TEST_REQUIRE_BROWSER=1`` (CI), which
turns that into a failure. Without the built front-end assets they fail: run ``make assets``.
"""
from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from fastapi import FastAPI, HTTPException
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from playwright.sync_api import Browser, ConsoleMessage, Page, Playwright, Route, sync_playwright

from engine import migrate
from engine.commands import SYSTEM, deploy
from engine.config import Settings
from engine.identity import demo_passwords
from engine.loading import UploadedFile
from engine.store.db import Database
from tests.api_helpers import live_server
from web.app import VENDOR
from web.render import SECURITY_HEADERS

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
PROCESSES = ROOT / "processes"
PAGES = HERE / "pages"

CHROMIUM = os.environ.get("SOPFLOW_CHROMIUM", "/usr/bin/chromium")
REQUIRE_BROWSER = os.environ.get("SOPFLOW_TEST_REQUIRE_BROWSER") == "1"
# no sandbox (we run as root in CI), and none of Chromium's own calls home
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ALLOWED_HOST = "127.0.0.1"
VIEWPORT = {"width": 1280, "height": 900}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.browser)


@dataclass
class LiveServer:
    base_url: str  # http://127.0.0.1:<port>
    db: Database
    tokens: dict[str, str]  # demo user -> API token
    passwords: dict[str, str]  # demo user -> password (as `sopflow users demo` prints them)
    data_dir: Path


def _deploy_processes(db: Database) -> None:
    """Deploy processes/ as ``sopflow deploy processes/`` does: each BPMN file with every DMN file."""
    files = sorted(p for p in PROCESSES.iterdir() if p.suffix in (".bpmn", ".dmn"))
    dmn = [UploadedFile(p.name, p.read_bytes()) for p in files if p.suffix == ".dmn"]
    for path in files:
        if path.suffix == ".bpmn":
            bundle = [UploadedFile(path.name, path.read_bytes()), *dmn]
            db.command(lambda s, b=bundle: deploy(s, files=b, actor=SYSTEM))


def _test_routes(app: FastAPI) -> None:
    @app.get("/_test/pages/{name}", include_in_schema=False)
    def test_page(name: str) -> HTMLResponse:
        # with the pages' own security headers, so a test page meets the same CSP (no inline script)
        path = PAGES / name
        if path.parent != PAGES or not path.is_file():
            raise HTTPException(404)
        return HTMLResponse(path.read_text(), headers=SECURITY_HEADERS)

    app.mount("/_test/processes", StaticFiles(directory=PROCESSES), name="test-processes")


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    if not (VENDOR / "diagram.js").is_file():
        pytest.fail(f"front-end assets missing in {VENDOR}: run `make assets`")
    data_dir = tmp_path_factory.mktemp("browser-data")
    url = f"sqlite:///{data_dir / 'sopflow.db'}"
    migrate.upgrade(url)
    db = Database(url)
    _deploy_processes(db)
    settings = Settings(data_dir=data_dir, database_url=url)
    try:
        with live_server(db, settings=settings, setup=_test_routes) as (host, port, tokens):
            secrets = db.command(lambda s: demo_passwords(s, actor=SYSTEM))
            yield LiveServer(f"http://{host}:{port}", db, tokens, secrets, data_dir)
    finally:
        db.dispose()


@pytest.fixture(scope="session")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as p:
        yield p


@pytest.fixture(scope="session")
def chromium(playwright: Playwright) -> Iterator[Browser]:
    if not (os.access(CHROMIUM, os.X_OK) or shutil.which(CHROMIUM)):
        message = f"Chromium not found at {CHROMIUM} (apt-get install chromium, or set SOPFLOW_CHROMIUM)"
        if REQUIRE_BROWSER:
            pytest.fail(message)
        pytest.skip(message)
    browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    yield browser
    browser.close()


@pytest.fixture
def blocked_requests() -> list[str]:
    """URLs the page tried to load from anywhere but 127.0.0.1 (each was aborted)."""
    return []


@pytest.fixture
def console_errors() -> list[str]:
    """Uncaught exceptions and console.error messages of the page."""
    return []


@pytest.fixture
def page(chromium: Browser, server: LiveServer, blocked_requests: list[str],
         console_errors: list[str]) -> Iterator[Page]:
    context = chromium.new_context(viewport=VIEWPORT, base_url=server.base_url)

    def only_loopback(route: Route) -> None:
        url = route.request.url
        if urlsplit(url).hostname == ALLOWED_HOST:
            route.continue_()
        else:
            blocked_requests.append(url)
            route.abort("blockedbyclient")

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error":
            console_errors.append(message.text)

    context.route("**/*", only_loopback)
    page = context.new_page()
    page.on("pageerror", lambda error: console_errors.append(f"uncaught: {error}"))
    page.on("console", on_console)
    yield page
    context.close()
