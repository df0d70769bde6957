"""Findings of the post-merge review of issues 7 and 8 (a user's reproductions, each a 4xx now).

Each was a 500 against a live server: script data of a type SpiffWorkflow's serializer
or the audit trail cannot store, and computed assignees/candidates that the database
cannot store. On SQLite and PostgreSQL (the `api` fixture runs over the `db` fixture).
"""
from __future__ import annotations

import pytest

from engine import limits
from tests.bpmnkit import Bpmn
from tests.helpers import snapshot


def _problem(r, status: int, *words: str) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    for word in words:
        assert word in body["detail"], body["detail"]
    return body


@pytest.mark.parametrize(("script", "words"), [
    ("x = b'abc'", ("'x'", "bytes")),
    ("x = [1, b'a']", ("'x[1]'", "bytes")),
    ("x = complex(1, 2)", ("complex",)),
    ("x = range(3)", ("range",)),
    ("x = frozenset([1])", ("frozenset",)),
    ("x = {(1, 2): 3}", ("name of type tuple",)),
    ("x = {'k': {(1,): 2}}", ("'x.k'", "name of type tuple")),
    ("x = {1: 'a', '1': 'b'}", ("mixes names",)),
    ("x = {True: 1, 'True': 2}", ("mixes names",)),
    ("x = {1, 'a'}", ("mixes items",)),
    ("x = {chr(0xd800)}", ("not valid Unicode",)),
])
def test_script_values_the_engine_cannot_store_are_a_422_naming_the_element(api, script, words):
    b = (Bpmn("bad").start().script("make_data", script).user("u1", "U", props={"candidateGroups": "staff"})
         .end().chain("start", "make_data", "u1", "end"))
    assert api.deploy("dora", ("bad.bpmn", b.xml())).status_code == 201
    before = snapshot(api.db)
    body = _problem(api.start("rita", "bad"), 422, "make_data", "cannot be stored", *words)
    assert body["element_id"] == "make_data"
    assert snapshot(api.db) == before


@pytest.mark.parametrize(("script", "stored"), [
    ("x = {1: 'a', 2: 'b'}", {"1": "a", "2": "b"}),   # one key type: JSON names, as before
    ("x = {3, 1, 2}", [1, 2, 3]),
    ("x = (1, 'a')", [1, "a"]),
])
def test_script_values_that_can_be_stored_still_are(api, script, stored):
    b = (Bpmn("ok").start().script("make_data", script).user("u1", "U", props={"candidateGroups": "staff"})
         .end().chain("start", "make_data", "u1", "end"))
    assert api.deploy("dora", ("ok.bpmn", b.xml())).status_code == 201
    r = api.start("rita", "ok")
    assert r.status_code == 201, r.text
    assert r.json()["variables"]["x"] == stored


@pytest.mark.parametrize(("props", "words"), [
    ({"assignee": "${chr(0xd800)}"}, ("assignee", "not valid Unicode")),
    ({"assignee": "${'x' * 1000}"}, ("assignee", "longer than 100")),
    ({"candidateGroups": "${chr(0xd800)}"}, ("candidate group", "not valid Unicode")),
    ({"candidateUsers": "${'u' * 300}"}, ("candidate user", "longer than 200")),
])
def test_computed_people_the_database_cannot_store_are_a_422_naming_the_user_task(api, props, words):
    b = Bpmn("who").start().user("u1", "U", props=props).end().chain("start", "u1", "end")
    assert api.deploy("dora", ("who.bpmn", b.xml())).status_code == 201
    before = snapshot(api.db)
    body = _problem(api.start("rita", "who"), 422, "u1", *words)
    assert body["element_id"] == "u1"
    assert snapshot(api.db) == before


def test_find_problem_judges_types_and_names():
    assert limits.find_problem({"a": [1, "x", None, 1.5, True]}) is None
    assert limits.find_problem(b"x") is not None
    assert limits.find_problem({1: 1, 2: 2}) is None
    assert limits.find_problem({1: 1, "2": 2}) is not None


def test_an_employee_cannot_probe_hidden_instances_with_an_instance_of_their_own(api):
    """The oracle: paul starts his own waiting instance with a guessed value and sends the
    message with that value as a correlation key; the answer must not depend on whether
    rita's (hidden) instance holds the same value."""
    b = Bpmn("payroll").start().message_catch("wait", "ping").user("u1", "U", props={"assignee": "max"}).end()
    assert api.deploy("dora", ("payroll.bpmn", b.chain("start", "wait", "u1", "end").xml())).status_code == 201
    hidden = api.start("rita", "payroll", variables={"salary": 90000}).json()["id"]
    answers = {}
    for guess in (90000, 12345):  # the hidden value, and one nobody else holds
        own = api.start("paul", "payroll", variables={"salary": guess}).json()["id"]
        r = api.post("paul", "/api/messages", json={"name": "ping", "correlation_keys": {"salary": guess}})
        answers[guess] = (r.status_code, r.json())
        assert r.status_code == 200 and r.json() == {"instance_ids": [own]}, r.text
    assert answers[90000][0] == answers[12345][0]
    detail = api.get("rita", f"/api/process-instances/{hidden}").json()
    assert detail["revision"] == 1 and detail["open_tasks"] == []  # still waiting, untouched


@pytest.mark.parametrize(("props", "chinese"), [
    ({"candidateUsers": "${'u' * 300}"}, "候选用户"),
    ({"candidateGroups": "${chr(0xd800)}"}, "候选组"),
])
def test_the_refusal_of_a_computed_candidate_names_the_field_in_the_reader_s_language(db, props, chinese):
    """The field's name is a translated phrase, not English inside a Chinese sentence."""
    from engine.commands import SYSTEM, start_instance
    from engine.errors import ScriptError
    from tests.helpers import deploy_xml
    from web import i18n

    deploy_xml(db, Bpmn("who").start().user("u1", "U", props=props).end().chain("start", "u1", "end").xml())
    with pytest.raises(ScriptError) as refused:
        db.command(lambda s: start_instance(s, key="who", actor=SYSTEM))
    text = i18n.error_text(refused.value, "zh-Hans")
    assert chinese in text and "candidate" not in text, text
