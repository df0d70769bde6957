"""An app that is made, used and dropped is freed: nothing in the process keeps every app alive.

FastAPI remembers what it learned about each endpoint and dependency callable in LRU caches
of 4096 callables per process. A route defined as a closure over one app's objects (its
database, the app itself) therefore kept that app, its database engine and its routes alive
after the app was gone: the test suite makes an app per test, its heap grew by ~11,000 objects
per test, and a full garbage collection late in the suite stopped the process for seconds
(a 300 ms long poll answered after 5.4 s; docs/notes/pollflake.md).
"""
from __future__ import annotations

import gc
import weakref

from tests.api_helpers import make_api

ROUTES = ("/healthz", "/readyz", "/docs", "/metrics", "/api/tasks", "/openapi.json", "/")  # "/": the sign-in page


def test_an_app_used_on_every_operations_route_is_freed_once_dropped(sqlite_db):
    api = make_api(sqlite_db)
    with api.client:
        for path in ROUTES:
            r = api.get("admin", path)
            assert r.status_code in (200, 503), (path, r.status_code)  # /docs: 503 without built assets
    app = weakref.ref(api.client.app)
    api.client.close()
    del api
    gc.collect()
    assert app() is None, "the app is still referenced after it was dropped"
