"""API behaviour: paging, filters, the problem format, refusals that change nothing."""
from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from tests.bpmnkit import Bpmn
from tests.helpers import snapshot
from tests.test_xmlsafe import LAUGHS, XXE

PROCESSES = Path(__file__).resolve().parent.parent / "processes"


def _tasks_flow(key: str = "chores", due: str = "PT10H", priority: str = "50", group: str = "staff") -> bytes:
    b = Bpmn(key).start().user("do", "Do the chore", props={"candidateGroups": group, "dueDate": due,
                                                            "priority": priority}).end()
    return b.chain("start", "do", "end").xml()


def test_task_paging_with_cursor_and_first_result(api, clock):
    api.deploy("dora", ("chores.bpmn", _tasks_flow()))
    for i in range(7):
        clock.advance(minutes=1)
        api.start("rita", "chores", variables={"n": i})
    seen, cursor = [], None
    while True:
        params = {"limit": 3, **({"cursor": cursor} if cursor else {})}
        page = api.get("rita", "/api/tasks", params=params).json()
        assert page["total"] == 7
        seen += [t["id"] for t in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert len(seen) == 7 == len(set(seen))
    camunda = api.get("rita", "/api/tasks", params={"first_result": 3, "max_results": 3}).json()
    assert [t["id"] for t in camunda["items"]] == seen[3:6]
    assert api.get("rita", "/api/tasks/count").json() == {"count": 7, "capped": False}
    bad = api.get("rita", "/api/tasks", params={"cursor": "not-a-cursor"})
    assert bad.status_code == 422 and bad.json()["field"] == "cursor"


def test_task_filters_and_sorting(api, clock):
    api.deploy("dora", ("chores.bpmn", _tasks_flow()))
    api.deploy("dora", ("urgent.bpmn", _tasks_flow("urgent", due="PT2H", priority="90")))
    api.deploy("dora", ("mgmt.bpmn", _tasks_flow("mgmt", due="P3D", group="managers")))
    chore = api.start("rita", "chores").json()
    urgent = api.start("rita", "urgent").json()
    api.start("max", "mgmt")
    ids = lambda user, **p: [t["id"] for t in api.inbox(user, **p)]  # noqa: E731
    chore_task, urgent_task = chore["open_tasks"][0]["id"], urgent["open_tasks"][0]["id"]
    assert ids("rita", sort="priority", order="desc") == [urgent_task, chore_task]
    assert ids("rita", min_priority=60) == [urgent_task]
    assert ids("rita", definition_key="chores") == [chore_task]
    assert ids("rita", process_instance_id=urgent["id"]) == [urgent_task]
    assert ids("rita", due_before=(clock.now() + timedelta(hours=5)).isoformat()) == [urgent_task]
    assert ids("rita", due_after=(clock.now() + timedelta(hours=5)).isoformat()) == [chore_task]
    assert len(ids("max", candidate_group="managers")) == 1
    assert len(ids("max")) == 3  # staff and managers
    api.post("rita", f"/api/tasks/{chore_task}/claim")
    assert ids("rita", assignee="me") == [chore_task]
    assert ids("rita", unassigned=True) == [urgent_task]
    clock.advance(hours=1, minutes=40)  # urgent: 100 of 120 minutes spent
    assert ids("rita", sla="at_risk") == [urgent_task]
    assert ids("rita", sla="on_time") == [chore_task]
    clock.advance(minutes=30)
    assert ids("rita", sla="breached") == [urgent_task]
    assert api.get("rita", f"/api/tasks/{urgent_task}").json()["sla"] == "breached"
    bad = api.get("rita", "/api/tasks", params={"sla": "late"})
    assert bad.status_code == 422 and "sla" in bad.json()["errors"]


def test_instance_filters(api, clock):
    api.deploy("dora", ("chores.bpmn", _tasks_flow(group="hr")))
    a = api.start("rita", "chores", business_key="A", variables={"region": "EU", "size": 3}).json()
    clock.advance(hours=1)
    b = api.start("rita", "chores", business_key="B", variables={"region": "US", "size": 3}).json()
    api.post("rita", f"/api/process-instances/{b['id']}/cancel", json={"reason": "dup"})
    q = lambda **p: [i["id"] for i in api.get("rita", "/api/process-instances", params=p).json()["items"]]  # noqa: E731
    assert q(business_key="A") == [a["id"]]
    assert q(status="cancelled") == [b["id"]]
    assert q(variable="region_eq_EU") == [a["id"]]
    assert sorted(q(variable="size_eq_3")) == sorted([a["id"], b["id"]])
    assert q(variable=["size_eq_3", "region_eq_US"]) == [b["id"]]
    assert q(variable="size_eq_4") == [] and q(variable="missing_eq_1") == []
    assert q(variable='region_eq_"EU"') == [a["id"]]
    assert sorted(q(variable="missing_eq_null")) == sorted([a["id"], b["id"]])
    for bad in ("size_eq_[1]", "size_eq_99999999999999999999", "no-equals"):
        r = api.get("rita", "/api/process-instances", params={"variable": bad})
        assert r.status_code == 422 and r.json()["field"] == "variable"
    assert q(started_after=(clock.now() - timedelta(minutes=30)).isoformat()) == [b["id"]]
    assert q(started_by="max") == []
    assert api.get("max", "/api/process-instances").json()["total"] == 0  # not hr, did not start them
    assert api.get("hal", "/api/process-instances").json()["total"] == 2  # hr: candidate of their tasks
    detail = api.get("rita", f"/api/process-instances/{b['id']}").json()
    assert detail["status"] == "cancelled" and detail["end_reason"] == "dup" and detail["open_tasks"] == []


def test_problem_format_and_request_ids(api):
    r = api.get("rita", "/api/process-instances/does-not-exist")
    assert r.status_code == 404 and r.headers["content-type"] == "application/problem+json"
    body = r.json()
    assert body["code"] == "not_found" and body["status"] == 404 and body["request_id"] == r.headers["x-request-id"]
    unauth = api.client.get("/api/tasks")
    assert unauth.status_code == 401 and unauth.headers["www-authenticate"].startswith("Bearer")
    assert api.client.get("/api/tasks", headers={"Authorization": "Bearer sop_forged"}).status_code == 401
    echoed = api.client.get("/healthz", headers={"X-Request-ID": "trace-123"})
    assert echoed.headers["x-request-id"] == "trace-123"
    bad_body = api.post("rita", "/api/process-definitions/x/start", json={"variables": "nope"})
    assert bad_body.status_code == 422 and "variables" in bad_body.json()["errors"]
    assert api.get("rita", "/api/no-such-route").status_code == 404
    huge = api.client.post("/api/process-definitions/x/start", content=b"{" + b" " * (21 * 1024 * 1024) + b"}",
                           headers={**api.h("rita"), "Content-Type": "application/json"})
    assert huge.status_code == 413 and huge.json()["code"] == "too_large"


def test_hostile_and_broken_uploads_store_nothing(api):
    before = snapshot(api.db)
    for name, data in (("xxe.bpmn", XXE), ("laughs.bpmn", LAUGHS), ("junk.bpmn", b"\x00\x01"),
                       ("notes.txt", b"hello"), ("big.bpmn", b"<a>" + b" " * (5 * 1024 * 1024 + 1) + b"</a>")):
        r = api.deploy("dora", (name, data))
        assert r.status_code == 422, (name, r.text)
        assert r.json()["code"] == "invalid_definition" and r.json()["file"] == name
    bad_script = Bpmn("bad").start().script("calc", "x = (").end().chain("start", "calc", "end").xml()
    r = api.deploy("dora", ("bad.bpmn", bad_script))
    assert r.status_code == 422 and r.json()["element_id"] == "calc" and r.json()["line"] == 2
    assert snapshot(api.db) == before


def test_form_validation_names_each_bad_field_and_changes_nothing(api):
    for name in ("budget_review.bpmn",):
        assert api.deploy("dora", (name, (PROCESSES / name).read_bytes())).status_code == 201
    instance = api.start("carl", "budget_review").json()
    task = instance["open_tasks"][0]
    detail = api.get("carl", f"/api/tasks/{task['id']}").json()
    assert detail["form"]["schema"]["required"] == ["total"] and detail["form_key"] == "budget-draft"
    assert detail["sop"].startswith("SOP BR-1.")
    before = snapshot(api.db)
    r = api.post("carl", f"/api/tasks/{task['id']}/complete", json={"variables": {"total": -5, "notes": 7}})
    assert r.status_code == 422
    assert set(r.json()["errors"]) == {"total", "notes"}
    assert snapshot(api.db) == before
    ok = api.post("carl", f"/api/tasks/{task['id']}/complete", json={"variables": {"total": 100}})
    assert ok.status_code == 200 and ok.json()["revision"] == 2
    again = api.post("carl", f"/api/tasks/{task['id']}/complete", json={"variables": {"total": 100}})
    assert again.status_code == 409 and again.json()["code"] == "conflict"
    review = api.get("mia", f"/api/tasks/{api.inbox('mia')[0]['id']}").json()
    assert review["data"] == {"total": 100}  # what the review form shows


def test_identity_endpoints_and_me(api):
    r = api.post("admin", "/api/users", json={"name": "nina", "role": "auditor"})
    assert r.status_code == 201 and r.json()["id"] == "nina"
    assert api.post("admin", "/api/users", json={"name": "nina", "role": "auditor"}).status_code == 409
    assert api.post("admin", "/api/users", json={"name": "x y", "role": "auditor"}).status_code == 422
    assert api.post("admin", "/api/users", json={"name": "z", "role": "king"}).status_code == 422
    token = api.post("admin", "/api/users/nina/tokens").json()["token"]
    me = api.client.get("/api/me", headers={"Authorization": f"Bearer {token}"}).json()
    assert me["name"] == "nina" and me["roles"] == ["auditor"]
    api.put("admin", "/api/users/nina/groups", json={"groups": ["finance"]})
    users = {u["name"]: u for u in api.get("admin", "/api/users").json()["items"]}
    assert users["nina"]["groups"] == ["finance"]
    assert api.get("audrey", "/api/audit", params={"action": "user.created", "actor": "admin"}).json()["total"] == 1
    assert api.client.delete("/api/users/nina/tokens", headers=api.h("rita")).status_code == 403
    assert api.client.delete("/api/users/nina/tokens", headers=api.h("admin")).json() == {"revoked": 1}
    assert api.client.get("/api/me", headers={"Authorization": f"Bearer {token}"}).status_code == 401


def test_metrics_expose_counters(api):
    api.deploy("dora", ("chores.bpmn", _tasks_flow()))
    api.start("rita", "chores")
    text = api.get("admin", "/metrics").text
    for name in ("sopflow_http_requests_total", "sopflow_commands_total", "sopflow_command_conflicts_total",
                 "sopflow_jobs_total", "sopflow_timers_fired_total", "sopflow_sla_breached_open_tasks"):
        assert name in text


def test_audit_filters_by_instance_action_and_process(api):
    api.deploy("dora", ("chores.bpmn", _tasks_flow()), ("errands.bpmn", _tasks_flow("errands")))
    first, second, other = (api.start("rita", key).json() for key in ("chores", "chores", "errands"))

    def trail(**params) -> list[dict]:
        return api.get("audrey", "/api/audit", params={**params, "max_results": 200}).json()["items"]

    mine = trail(instance_id=first["id"])
    assert mine and {e["instance_id"] for e in mine} == {first["id"]}
    assert [e["chain_seq"] for e in mine] == list(range(1, len(mine) + 1))
    started = trail(action="instance.started")
    assert {e["instance_id"] for e in started} == {first["id"], second["id"], other["id"]}
    assert {e["instance_id"] for e in trail(definition_key="errands", action="instance.started")} == {other["id"]}
    assert trail(definition_key="errands", actor="nobody") == []
