"""The inbox's free-text filter: a case-insensitive substring of the task name or the business key."""
from __future__ import annotations

from engine.commands import Actor, claim_task, start_instance
from engine.queries import Paging, TaskFilter, count_tasks, list_tasks
from tests.bpmnkit import Bpmn
from tests.helpers import deploy_xml

RITA = Actor("rita", groups=frozenset({"staff"}), roles=frozenset({"employee"}))
MAX = Actor("max", groups=frozenset({"staff", "managers"}), roles=frozenset({"employee"}))
ADMIN = Actor("root", roles=frozenset({"admin"}))


def _process(key: str, task_name: str) -> bytes:
    b = Bpmn(key, dialect="camunda").start().user("do", task_name, camunda={"candidateGroups": "managers"}).end()
    return b.chain("start", "do", "end").xml()


def _seed(db) -> dict[str, str]:
    deploy_xml(db, _process("buy", "Approve the Laptop purchase"), "buy.bpmn")
    deploy_xml(db, _process("fix", "Repair the printer"), "fix.bpmn")
    ids = {}
    for key, bkey in [("buy", "PR-100"), ("buy", "pr_1%x"), ("fix", "CASE-7"), ("fix", None)]:
        inst = db.command(lambda s, k=key, b=bkey: start_instance(s, key=k, actor=RITA, business_key=b))
        ids[bkey or "none"] = inst.id
    return ids


def _found(db, actor: Actor, text: str, **kw) -> set[str]:
    with db.read() as s:
        page = list_tasks(s, actor, TaskFilter(text=text, **kw), Paging.parse(limit=50))
        assert count_tasks(s, actor, TaskFilter(text=text, **kw)).count == len(page.items)
        return {t.instance_id for t in page.items}


def test_text_matches_name_or_business_key_case_insensitively(db, clock):
    ids = _seed(db)
    assert _found(db, MAX, "laptop") == {ids["PR-100"], ids["pr_1%x"]}
    assert _found(db, MAX, "PRINTER") == {ids["CASE-7"], ids["none"]}
    assert _found(db, MAX, "pr-1") == {ids["PR-100"]}
    assert _found(db, MAX, "case-") == {ids["CASE-7"]}
    assert _found(db, MAX, "nothing like it") == set()
    assert _found(db, RITA, "laptop") == set()  # the filter narrows what one may see, never widens it
    assert _found(db, ADMIN, "case-7") == {ids["CASE-7"]}  # the admin's plain query path


def test_percent_and_underscore_match_themselves(db, clock):
    ids = _seed(db)
    assert _found(db, MAX, "_1%") == {ids["pr_1%x"]}
    assert _found(db, MAX, "%") == {ids["pr_1%x"]}
    assert _found(db, MAX, "r_1") == {ids["pr_1%x"]}  # "_" is not "any character": PR-100 has "R-1"


def test_text_combines_with_the_other_filters_and_branches(db, clock):
    ids = _seed(db)
    with db.read() as s:
        task_id = next(t.id for t in list_tasks(s, MAX, TaskFilter(text="CASE-7"), Paging.parse(limit=5)).items)
    db.command(lambda s: claim_task(s, task_id=task_id, actor=MAX))
    assert _found(db, MAX, "printer", assignee="me") == {ids["CASE-7"]}
    assert _found(db, MAX, "printer", unassigned=True) == {ids["none"]}
    assert _found(db, MAX, "printer", candidate_group="managers") == {ids["none"]}
    assert _found(db, MAX, "laptop", definition_key="fix") == set()


def test_the_json_api_takes_text(api):
    api.deploy("dora", ("buy.bpmn", _process("buy", "Approve the Laptop purchase")))
    assert api.start("rita", "buy", business_key="PR-9").status_code == 201
    assert [t["name"] for t in api.inbox("max", text="LAPTOP")] == ["Approve the Laptop purchase"]
    assert api.inbox("max", text="pr-9") and api.inbox("max", text="zzz") == []
    assert api.get("max", "/api/tasks/count", params={"text": "pr-9"}).json()["count"] == 1
    assert api.get("max", "/api/tasks", params={"text": "x" * 201}).status_code == 422
    assert api.get("max", "/api/tasks", params={"text": "a\x00b"}).status_code == 422  # never a 500 on PostgreSQL
