"""Property-based tests (hypothesis): no request body or query string makes any endpoint answer 5xx.

Every route of the app is exercised in-process (TestClient) with generated input aimed at the
edge: text with lone surrogates (sent as JSON escapes and as percent-encoded bytes), control
characters and long strings; timestamps with and without zones and out of range; numbers that
are huge, negative, fractional or not finite; forged cursors; JSON nested deeply, malformed or
not UTF-8; bodies shaped like each request model with odd values. Callers are an admin (who
reaches every operation) and an employee. The database is SQLite holding the shipped procedures
and running instances (the storage paths are covered on both databases by the other suites).

Runs in well under a minute with a fixed seed (``derandomize``), so CI runs it with every
``make test`` (marker ``properties``).
"""
from __future__ import annotations

import base64
import json
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from api.app import create_app
from engine.commands import SYSTEM, deploy, start_instance
from engine.config import Settings
from engine.identity import seed_demo
from engine.loading import UploadedFile
from tests.test_processes import PROCESSES

pytestmark = pytest.mark.properties

EXAMPLES = 25

# ------------------------------------------------------------------ strategies

odd_text = st.one_of(
    st.text(max_size=30),
    st.text(alphabet=st.characters(categories=["Cs", "Cc", "Co", "Zs", "L"]), max_size=8),
    st.sampled_from(["\ud800", "a\udfffb", "\x00", "", " ", "me", "admin", "x" * 300, "../../etc/passwd",
                     "${1+1}", "{{ 7*7 }}", "'; DROP TABLE tasks; --", "%ED%A0%80", "null"]),
)
instants = st.one_of(
    st.sampled_from(["2026-01-01T00:00:00", "2026-01-01T00:00:00Z", "2026-01-01T00:00:00+02:00",
                     "0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00", "2026-13-45", "now", "1e400",
                     "2026-01-01", "-1", "P1D"]),
    st.datetimes().map(lambda d: d.isoformat()),
)
numbers = st.one_of(st.integers(), st.integers(min_value=-(10**30), max_value=10**30),
                    st.sampled_from(["1e400", "NaN", "-0", "2147483648", "1.5", "9" * 5000]))


def _cursor(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode()


cursors = st.one_of(
    st.sampled_from([_cursor(b'{"o": 1e400}'), _cursor(b'{"o": -1}'), _cursor(b'{"o": "1"}'), _cursor(b"[]"),
                     _cursor(b'{"o": 99999999999999999999}'), _cursor(b'{"o": 2}'), "!!!", "eyJvIjog"]),
    st.binary(max_size=40).map(_cursor),
    st.text(max_size=20),
)
json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False),
              odd_text),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(odd_text, inner, max_size=4)),
    max_leaves=12,
)
variables = st.dictionaries(st.one_of(st.from_regex(r"[a-z_][a-z0-9_]{0,8}", fullmatch=True), odd_text),
                            json_values, max_size=4)
raw_bodies = st.sampled_from([
    b"", b"{", b"[]", b"null", b"\xff\xfe", b'{"variables": NaN}', b'{"variables": {"a": 1e400}}',
    b'{"variables": {"a": ' + b"9" * 5000 + b"}}", b"[" * 5000 + b"]" * 5000,
    b'{"variables": {"a": "\\ud800"}}', b'{"variables": {"\\udc00": 1}}', b'{"name": "\\ud800"}',
    b'{"variables": ' + b'{"a": ' * 40 + b"1" + b"}" * 41,
])
field_values = {
    "variables": variables, "correlation": variables, "business_key": odd_text, "version": numbers,
    "assignee": st.one_of(st.none(), odd_text, st.sampled_from(["rita", "max"])), "reason": odd_text,
    "name": odd_text, "all": st.one_of(st.booleans(), odd_text), "role": st.one_of(
        st.sampled_from(["employee", "admin", "auditor", "designer"]), odd_text),
    "groups": st.lists(odd_text, max_size=3), "display_name": odd_text, "message": odd_text,
}


@st.composite
def json_bodies(draw):
    if draw(st.integers(0, 4)) == 0:
        return draw(raw_bodies)
    body = {}
    if draw(st.booleans()):  # mostly plausible: real variable names, one odd value somewhere
        body["variables"] = {draw(st.sampled_from(["amount", "item", "note", "decision"])): draw(json_values)}
    for name in draw(st.lists(st.sampled_from(sorted(field_values)), max_size=3, unique=True)):
        body[name] = draw(field_values[name])
    if draw(st.booleans()):
        body[draw(odd_text)] = draw(json_values)
    return json.dumps(body, ensure_ascii=True).encode()  # lone surrogates travel as \udXXX escapes


def _query_values(name: str):
    if name in ("from", "to") or name.endswith(("_before", "_after")):
        return instants
    if name == "cursor":
        return cursors
    if name in ("limit", "first_result", "max_results", "min_priority", "version"):
        return st.one_of(numbers.map(str), odd_text)
    if name == "variable":
        return st.one_of(st.builds(lambda n, v: f"{n}_eq_{v}", st.sampled_from(["a", "amount", "x y", ""]),
                                   st.one_of(json_values.map(lambda v: json.dumps(v)), odd_text)), odd_text)
    return st.one_of(odd_text, st.sampled_from(["me", "true", "false", "all", "open", "due", "desc", "csv"]))


def _encode(value: str) -> str:
    return quote(value.encode("utf-8", "surrogatepass"), safe="")  # a lone surrogate as its raw bytes


# ------------------------------------------------------------------ the app


@pytest.fixture
def sopflow(sqlite_db):
    tokens = sqlite_db.command(lambda s: seed_demo(s, actor=SYSTEM))
    dmn = [UploadedFile(p.name, p.read_bytes()) for p in PROCESSES.glob("*.dmn")]
    for path in sorted(PROCESSES.glob("*.bpmn")):
        sqlite_db.command(lambda s, p=path: deploy(s, files=[UploadedFile(p.name, p.read_bytes()), *dmn],
                                                   actor=SYSTEM))
    row = sqlite_db.command(lambda s: start_instance(s, key="budget_review", actor=SYSTEM, business_key="FY"))
    app = create_app(settings=Settings(), db=sqlite_db, run_worker=False)
    with TestClient(app, raise_server_exceptions=False) as client:
        task = client.get(f"/api/process-instances/{row.id}",
                          headers={"Authorization": f"Bearer {tokens['admin']}"}).json()["open_tasks"][0]
        attachment = client.post(f"/api/tasks/{task['id']}/attachments", files={"file": ("a.txt", b"text")},
                                 headers={"Authorization": f"Bearer {tokens['admin']}"}).json()["id"]
        known = {"key": ["budget_review", "procurement_approval"], "version": ["1"],
                 "instance_id": [row.id], "task_id": [task["id"]], "name": ["rita", "max"],
                 "attachment_id": [attachment]}
        yield app, client, tokens, known


def _operations(app) -> list[tuple[str, str, list[str], list[str], str | None]]:
    """(method, path, query names, path names, multipart file field or None) of every operation in the
    OpenAPI document."""
    found = []
    document = app.openapi()
    for path, item in document["paths"].items():
        for method, operation in item.items():
            params = operation.get("parameters", [])
            content = operation.get("requestBody", {}).get("content", {})
            file_field = None
            if "multipart/form-data" in content:
                ref = content["multipart/form-data"]["schema"]["$ref"].rsplit("/", 1)[-1]
                properties = document["components"]["schemas"][ref]["properties"]
                file_field = next(n for n in properties if n in ("files", "file"))
            found.append((method.upper(), path, sorted(p["name"] for p in params if p["in"] == "query"),
                          [p["name"] for p in params if p["in"] == "path"], file_field))
    return found


def test_no_body_or_query_string_makes_any_endpoint_fail(sopflow):
    app, client, tokens, known = sopflow
    failures: list[str] = []
    statuses: list[int] = []
    routes = _operations(app)
    assert len(routes) >= 25

    def exercise_operation(method, route_path, query_names, path_names, multipart):
        @given(data=st.data())
        @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        def exercise(data):
            path = route_path
            for name in path_names:
                value = data.draw(st.sampled_from(known.get(name, ["x"])) if data.draw(st.integers(0, 4), label="real")
                                  else odd_text, label=name)
                path = path.replace("{" + name + "}", _encode(value) or "x")
            chosen = data.draw(st.lists(st.sampled_from(query_names), unique=True, max_size=4), label="query") \
                if query_names else []
            query = "&".join(f"{_encode(n)}={_encode(data.draw(_query_values(n), label=n))}" for n in chosen)
            user = data.draw(st.sampled_from(["admin", "rita"]), label="user")
            headers = {"Authorization": f"Bearer {tokens[user]}"}
            url = path + (f"?{query}" if query else "")
            if multipart == "files":  # deployments
                name = data.draw(odd_text, label="filename").encode("utf-8", "surrogatepass").decode(
                    "utf-8", "replace") + ".bpmn"
                content = data.draw(st.one_of(st.binary(max_size=200), st.sampled_from([
                    PROCESSES.joinpath("budget_review.bpmn").read_bytes(), b"<?xml version='1.0'?><a/>"])))
                response = client.request(method, url, headers=headers, files=[("files", (name, content))])
            elif multipart:  # a task attachment (and its optional description)
                name = data.draw(odd_text, label="filename").encode("utf-8", "surrogatepass").decode(
                    "utf-8", "replace") + data.draw(st.sampled_from([".txt", ".pdf", ".csv", ".exe", ""]))
                content = data.draw(st.one_of(st.binary(max_size=200), st.sampled_from([b"%PDF-1.4\n", b"a,b\n"])))
                form = {"description": data.draw(odd_text, label="description").encode(
                    "utf-8", "surrogatepass").decode("utf-8", "replace")} if data.draw(st.booleans()) else None
                response = client.request(method, url, headers=headers, files=[(multipart, (name, content))],
                                          data=form)
            elif method in ("POST", "PUT", "PATCH"):
                body = data.draw(json_bodies(), label="body")
                response = client.request(method, url, headers={**headers, "Content-Type": "application/json"},
                                          content=body)
            else:
                response = client.request(method, url, headers=headers)
            statuses.append(response.status_code)
            if response.status_code >= 500:
                failures.append(f"{method} {url[:200]}: {response.status_code} {response.text[:200]}")

        exercise()

    for operation in routes:
        exercise_operation(*operation)
    assert len(statuses) >= len(routes) * EXAMPLES // 2
    assert sum(1 for s in statuses if s < 300) > len(routes)  # not only refusals: real work was done
    assert sum(1 for s in statuses if s == 422) > len(routes)  # and the edge refused what it should
    assert failures == []
