"""Every input is validated at the edge, and failures are visible (issue 7 items 4-5, issue 8 item 6).

Each test is one reproduction from the issue, now answered with a 4xx that says what to change
(and writes nothing), on SQLite and PostgreSQL.
"""
from __future__ import annotations

import base64
import json

import pytest

from tests.bpmnkit import Bpmn, approval_chain
from tests.helpers import audit_actions, snapshot

JSON = {"content-type": "application/json"}


def _simple(api, key: str = "p", **user_props: str) -> None:
    b = (Bpmn(key).start().user("u1", "Check", props={"candidateGroups": "staff", **user_props}).end()
         .chain("start", "u1", "end"))
    r = api.deploy("dora", (f"{key}.bpmn", b.xml()))
    assert r.status_code == 201, r.text


def _raw_post(api, user: str, path: str, body: bytes):
    return api.client.post(path, headers={**api.h(user), **JSON}, content=body)


def _problem(r, status: int, *words: str) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    body = r.json()
    for word in words:
        assert word in body["detail"], body["detail"]
    return body


# ------------------------------------------------------------------ lone surrogates


@pytest.mark.parametrize("body", [
    b'{"variables": {"note": "\\ud800"}}',
    b'{"variables": {"\\ud800": 1}}',
    b'{"variables": {"items": [{"name": "ok"}, {"name": "x\\udfff"}]}}',
    b'{"business_key": "\\ud800"}',
])
def test_a_lone_surrogate_in_a_start_body_is_a_422_and_nothing_is_written(api, body):
    _simple(api)
    before = snapshot(api.db)
    _problem(_raw_post(api, "rita", "/api/process-definitions/p/start", body), 422, "not valid Unicode")
    assert snapshot(api.db) == before


def test_a_lone_surrogate_in_completion_and_message_bodies_is_a_422(api):
    _simple(api)
    started = api.start("rita", "p").json()
    task_id = started["open_tasks"][0]["id"]
    before = snapshot(api.db)
    _problem(_raw_post(api, "rita", f"/api/tasks/{task_id}/complete", b'{"variables": {"a": "\\ud800"}}'),
             422, "not valid Unicode")
    _problem(_raw_post(api, "rita", "/api/messages", b'{"name": "m", "variables": {"a": "\\udc00"}}'),
             422, "not valid Unicode")
    _problem(_raw_post(api, "rita", "/api/messages", b'{"name": "\\ud800"}'), 422, "not valid Unicode")
    assert snapshot(api.db) == before


def test_a_lone_surrogate_in_a_query_filter_is_a_422(api):
    r = api.get("rita", "/api/process-instances", params={"variable": 'note_eq_"\\ud800"'})
    body = _problem(r, 422, "not valid Unicode")
    assert body["field"] == "variable"


@pytest.mark.parametrize(("script", "words"), [
    ("x = chr(0xd800)", ("not valid Unicode", "'x'")),
    ("d = {chr(0xdc00): 1}", ("not valid Unicode",)),
    ("x = []\nfor i in range(5000):\n    x = [x]", ("'x'", "nested")),  # refused as the evaluator returns it
    ("x = []\nfor i in range(50):\n    x = [x]", ("nested deeper than 20 levels",)),  # refused before storing
    ("x = []\nx.append(x)", ("contains itself",)),
])
def test_script_data_that_cannot_be_stored_is_a_422_naming_the_element(api, script, words):
    b = (Bpmn("bad").start().script("make_data", script).user("u1", "U", props={"candidateGroups": "staff"})
         .end().chain("start", "make_data", "u1", "end"))
    assert api.deploy("dora", ("bad.bpmn", b.xml())).status_code == 201
    before = snapshot(api.db)
    body = _problem(api.start("rita", "bad"), 422, "make_data", *words)
    assert body["element_id"] == "make_data"
    assert snapshot(api.db) == before


# ------------------------------------------------------------------ time zones


@pytest.mark.parametrize(("user", "path", "param"), [
    ("audrey", "/api/audit", "from"),
    ("audrey", "/api/audit", "to"),
    ("audrey", "/api/audit/export", "from"),
    ("rita", "/api/tasks", "due_before"),
    ("rita", "/api/tasks", "due_after"),
    ("rita", "/api/tasks", "follow_up_before"),
    ("rita", "/api/tasks/count", "due_before"),
    ("rita", "/api/process-instances", "started_before"),
    ("rita", "/api/process-instances", "started_after"),
])
def test_a_timestamp_without_a_time_zone_is_a_422_saying_so(api, user, path, param):
    body = _problem(api.get(user, path, params={param: "2026-01-01T00:00:00"}), 422, param, "time zone")
    assert body["field"] == param
    assert api.get(user, path, params={param: "2026-01-01T00:00:00Z"}).status_code == 200
    assert api.get(user, path, params={param: "2026-01-01T00:00:00+02:00"}).status_code == 200


def test_an_instant_that_leaves_the_calendar_in_utc_is_a_422(api):
    _problem(api.get("rita", "/api/tasks", params={"due_before": "0001-01-01T00:00:00+01:00"}), 422, "out of range")


def test_export_with_a_naive_time_is_refused_before_any_byte(api):
    r = api.get("audrey", "/api/audit/export", params={"format": "jsonl", "from": "2026-01-01T00:00:00"})
    assert r.status_code == 422 and "time zone" in r.json()["detail"]


@pytest.mark.parametrize("path", ["/api/audit", "/api/audit/export"])
def test_an_audit_window_that_ends_before_it_starts_is_a_422(api, path):
    r = api.get("audrey", path, params={"format": "jsonl", "from": "2026-02-01T00:00:00Z",
                                        "to": "2026-01-01T00:00:00Z"})
    assert r.status_code == 422 and "later than" in r.json()["detail"]


def test_export_streams_every_matching_event_across_batches(api, monkeypatch):
    from api.routes import audit as audit_routes

    monkeypatch.setattr(audit_routes, "EXPORT_BATCH", 3)
    _simple(api)
    for _ in range(3):
        api.start("rita", "p")
    listed = api.get("audrey", "/api/audit", params={"limit": 500}).json()
    r = api.get("audrey", "/api/audit/export", params={"format": "jsonl"})
    assert r.status_code == 200
    seqs = [json.loads(line)["seq"] for line in r.text.splitlines()]
    assert seqs == [e["seq"] for e in listed["items"]] and len(seqs) == listed["total"] > 3


# ------------------------------------------------------------------ cursors


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode()


@pytest.mark.parametrize("cursor", [
    _b64(b'{"o": 1e400}'), _b64(b'{"o": -5}'), _b64(b'{"o": "5"}'), _b64(b'{"o": 5.0}'), _b64(b'{"o": true}'),
    _b64(b'{"o": 99999999999999999999}'), _b64(b'{"o": 5, "x": 1}'), _b64(b"[5]"), _b64(b"\xff\xfe"),
    "!!!!", "eyJvIjogNX0", "eyJvIjogNX0=====", _b64(b'{"o": NaN}'),
])
def test_a_forged_cursor_is_a_422(api, cursor):
    for path in ("/api/tasks", "/api/process-instances", "/api/process-definitions"):
        body = _problem(api.get("rita", path, params={"cursor": cursor}), 422, "cursor")
        assert body["field"] == "cursor"
    _problem(api.get("audrey", "/api/audit", params={"cursor": cursor}), 422, "cursor")


def test_issued_cursors_page_through_everything(api):
    _simple(api)
    for _ in range(5):
        api.start("rita", "p")
    seen, cursor = [], None
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = api.get("rita", "/api/process-instances", params=params).json()
        seen += [i["id"] for i in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == len(set(seen)) == 5


# ------------------------------------------------------------------ bounds in diagrams


@pytest.mark.parametrize(("props", "words"), [
    ({"dueDate": "P99999999999D"}, ("u1", "100 years")),
    ({"dueDate": "9999-12-31T23:59:59-05:00"}, ("u1", "100 years")),
    ({"followUpDate": "-P99999D"}, ("u1", "100 years")),
    ({"priority": "99999999999999999999"}, ("u1", "priority", "integer")),
    ({"priority": "high"}, ("u1", "priority")),
])
def test_static_dates_and_priorities_out_of_bounds_are_refused_at_deploy(api, props, words):
    b = Bpmn("p").start().user("u1", "U", props={"candidateGroups": "staff", **props}).end().chain("start", "u1", "end")
    body = _problem(api.deploy("dora", ("p.bpmn", b.xml())), 422, *words)
    assert body["element_id"] == "u1" and body["line"]


@pytest.mark.parametrize(("props", "words"), [
    ({"dueDate": "${'P99999999999D'}"}, ("u1", "100 years")),
    ({"dueDate": "${due}"}, ("u1", "100 years")),
    ({"priority": "${10**100}"}, ("u1", "priority", "32-bit")),
    ({"priority": "${-(2**31) - 1}"}, ("u1", "priority", "32-bit")),
])
def test_computed_dates_and_priorities_out_of_bounds_are_a_422_naming_the_element(api, props, words):
    _simple(api, **props)
    before = snapshot(api.db)
    body = _problem(api.start("rita", "p", variables={"due": "P40000D"}), 422, *words)
    assert body["element_id"] == "u1"
    assert snapshot(api.db) == before


def test_dates_and_priorities_within_bounds_are_kept(api):
    _simple(api, dueDate="P36000D", priority="${2**31 - 1}")
    task = api.start("rita", "p").json()["open_tasks"][0]
    assert task["priority"] == 2**31 - 1
    assert task["due_at"].startswith("2124-")


# ------------------------------------------------------------------ request data bounds


def test_request_data_nested_5000_deep_is_a_422_before_the_engine(api):
    _simple(api)
    before = snapshot(api.db)
    deep = b"[" * 5000 + b"]" * 5000
    _problem(_raw_post(api, "rita", "/api/process-definitions/p/start", b'{"variables": {"a": ' + deep + b"}}"),
             422, "nested deeper than 32 levels")
    nested: list = []
    for _ in range(21):
        nested = [nested]
    body = _problem(api.start("rita", "p", variables={"a": nested}), 422, "nested deeper than 20 levels")
    assert body["field"] == "variables"
    assert snapshot(api.db) == before
    nested = []
    for _ in range(19):
        nested = [nested]
    assert api.start("rita", "p", variables={"a": nested}).status_code == 201


@pytest.mark.parametrize(("raw", "words"), [
    (b'{"variables": {"a": NaN}}', ("NaN",)),
    (b'{"variables": {"a": 1e400}}', ("1e400", "finite")),
    (b'{"variables": {"a": ' + b"9" * 5000 + b"}}", ("too many digits",)),
    (b'{"variables": {"a": "\xff"}}', ("UTF-8",)),
    (b'{"variables": ', ("not valid JSON",)),
])
def test_json_bodies_that_are_not_data_are_a_422(api, raw, words):
    _simple(api)
    _problem(_raw_post(api, "rita", "/api/process-definitions/p/start", raw), 422, *words)


def test_a_json_body_over_one_mebibyte_is_a_413(api):
    _simple(api)
    body = b'{"variables": {"a": "' + b"x" * (1024 * 1024) + b'"}}'
    _problem(_raw_post(api, "rita", "/api/process-definitions/p/start", body), 413, "1048576")


# ------------------------------------------------------------------ large diagrams


def test_a_linear_chain_of_600_user_tasks_deploys_and_runs(api):
    r = api.deploy("dora", ("chain.bpmn", approval_chain(600, process_id="chain600").xml()))
    assert r.status_code == 201, r.text
    started = api.start("rita", "chain600")
    assert started.status_code == 201, started.text
    first = started.json()["open_tasks"][0]
    assert first["element_id"] == "u0"
    r = api.post("rita", f"/api/tasks/{first['id']}/complete", json={"variables": {}})
    assert r.status_code == 200, r.text
    assert [t["element_id"] for t in api.inbox("rita")] == ["u1"]


def test_a_linear_process_of_2000_steps_deploys_and_starts(api):
    r = api.deploy("dora", ("chain.bpmn", approval_chain(2000, process_id="chain2000").xml()))
    assert r.status_code == 201, r.text
    assert api.start("rita", "chain2000").json()["open_tasks"][0]["element_id"] == "u0"


# ------------------------------------------------------------------ timers


def test_a_cycle_timer_that_fires_three_times_in_one_catch_up_writes_three_events(db, clock):
    from engine.commands import start_instance
    from engine.worker import run_once
    from tests.helpers import ALICE, deploy_xml, instance

    b = (Bpmn("cyc").start().user("u1", "U", props={"candidateGroups": "staff"})
         .boundary_timer("remind", "u1", cycle='"R3/PT1H"', interrupting=False)
         .script("count", "n = n + 1").end("e2").end().chain("start", "u1", "end").chain("remind", "count", "e2"))
    deploy_xml(db, b.xml())
    row = db.command(lambda s: start_instance(s, key="cyc", actor=ALICE, variables={"n": 0}))
    clock.advance(hours=5)
    assert run_once(db).fired == 1  # one job, one command
    assert audit_actions(db, row.id).count("timer.fired") == 3
    from sqlalchemy import select

    from engine.store.models import AuditEventRow
    with db.read() as s:
        payloads = [json.loads(p) for p in s.scalars(select(AuditEventRow.payload).where(
            AuditEventRow.chain == row.id, AuditEventRow.action == "timer.fired").order_by(AuditEventRow.chain_seq))]
    assert [p["due_at"][11:16] for p in payloads] == ["10:00", "11:00", "12:00"]
    assert instance(db, row.id).status == "running"


def test_a_conflict_whose_context_names_a_status_keeps_the_http_status(api):
    # found by the property tests: Conflict(..., status="cancelled") collided with the problem's status (500)
    _simple(api)
    instance_id = api.start("rita", "p").json()["id"]
    assert api.post("rita", f"/api/process-instances/{instance_id}/cancel", json={}).status_code == 200
    body = _problem(api.post("rita", f"/api/process-instances/{instance_id}/cancel", json={}), 409, "cancelled")
    assert body["status"] == 409


@pytest.mark.parametrize(("kind", "value", "words"), [
    ("timeDuration", '"P99999999999D"', ("wait", "duration")),
    ("timeDuration", '"PT-5H"', ("wait", "duration")),
    ("timeDuration", '"P40000D"', ("wait", "100 years")),
    ("timeDate", '"9999-12-31T00:00:00Z"', ("wait", "100 years")),
    ("timeCycle", '"R3/P99999999999D"', ("wait", "cycle")),
])
def test_static_timer_values_spiffworkflow_cannot_schedule_are_refused_at_deploy(api, kind, value, words):
    b = (Bpmn("p").start().raw(f'<bpmn:intermediateCatchEvent id="wait"><bpmn:timerEventDefinition><bpmn:{kind}>'
                               f'{value}</bpmn:{kind}></bpmn:timerEventDefinition></bpmn:intermediateCatchEvent>')
         .end().chain("start", "wait", "end"))
    body = _problem(api.deploy("dora", ("p.bpmn", b.xml())), 422, *words)
    assert body["element_id"] == "wait" and body["line"]


def test_timers_within_bounds_deploy(api):
    b = (Bpmn("p").start().timer_catch("wait", '"P36000D"').end().chain("start", "wait", "end"))
    assert api.deploy("dora", ("p.bpmn", b.xml())).status_code == 201
