"""The authorization matrix: each role against each endpoint, allowed and refused."""
from __future__ import annotations

import pytest

from tests.bpmnkit import Bpmn

FLOW = (Bpmn("authz").start().user("review", "Review", props={"candidateGroups": "managers"})
        .message_catch("wait", "go").end().chain("start", "review", "wait", "end"))

ROLES = {"admin": "admin", "designer": "dora", "employee": "max", "auditor": "audrey", "integration": "worker"}
ALL = set(ROLES)


def _fresh(api):
    r = api.start("max", "authz", business_key="B")
    assert r.status_code == 201, r.text
    return r.json()["id"], r.json()["open_tasks"][0]["id"]


# (method, path template, json body, roles allowed)
CASES = [
    ("POST", "/api/deployments", "upload", {"admin", "designer"}),
    ("GET", "/api/deployments", None, {"admin", "designer"}),
    ("GET", "/api/process-definitions", None, {"admin", "designer", "employee"}),
    ("GET", "/api/process-definitions/authz", None, {"admin", "designer", "employee"}),
    ("GET", "/api/process-definitions/authz/versions/1", None, {"admin", "designer", "employee"}),
    ("GET", "/api/process-definitions/authz/xml", None, {"admin", "designer"}),
    ("GET", "/api/process-definitions/authz/versions/1/xml", None, {"admin", "designer"}),
    ("POST", "/api/process-definitions/authz/start", {"variables": {}}, {"admin", "employee"}),
    ("GET", "/api/process-instances", None, {"admin", "employee", "auditor"}),
    ("GET", "/api/process-instances/{instance}", None, {"admin", "employee", "auditor"}),
    ("POST", "/api/process-instances/{instance}/cancel", {"reason": "test"}, {"admin", "employee"}),
    ("POST", "/api/messages", {"name": "nobody-waits"}, {"admin", "employee", "integration"}),
    ("GET", "/api/tasks", None, {"admin", "employee"}),
    ("GET", "/api/tasks/count", None, {"admin", "employee"}),
    ("GET", "/api/tasks/{task}", None, {"admin", "employee"}),
    ("POST", "/api/tasks/{task}/claim", None, {"admin", "employee"}),
    ("POST", "/api/tasks/{task}/unclaim", None, {"admin", "employee"}),
    ("POST", "/api/tasks/{task}/assign", {"assignee": "max"}, {"admin"}),
    ("POST", "/api/tasks/{task}/complete", {"variables": {}}, {"admin", "employee"}),
    ("GET", "/api/history/process-instances/{instance}", None, {"admin", "auditor", "employee"}),
    ("POST", "/api/tasks/{task}/comments", {"message": "checked"}, {"admin", "employee"}),
    ("GET", "/api/tasks/{task}/comments", None, {"admin", "employee", "auditor"}),
    ("GET", "/api/process-instances/{instance}/comments", None, {"admin", "employee", "auditor"}),
    ("POST", "/api/tasks/{task}/attachments", "file", {"admin", "employee"}),
    ("GET", "/api/tasks/{task}/attachments", None, {"admin", "employee", "auditor"}),
    ("GET", "/api/process-instances/{instance}/attachments", None, {"admin", "employee", "auditor"}),
    ("GET", "/api/attachments/{attachment}/content", None, {"admin", "employee", "auditor"}),
    ("GET", "/api/audit", None, {"admin", "auditor"}),
    ("GET", "/api/audit/export?format=csv", None, {"admin", "auditor"}),
    ("GET", "/api/audit/verify", None, {"admin", "auditor"}),
    ("GET", "/api/me", None, ALL),
    ("GET", "/api/users", None, {"admin"}),
    ("POST", "/api/users", "new-user", {"admin"}),
    ("PUT", "/api/users/rita/groups", {"groups": ["staff"]}, {"admin"}),
    ("POST", "/api/users/rita/tokens", None, {"admin"}),
    ("DELETE", "/api/users/fay/tokens", None, {"admin"}),
    ("GET", "/api/users/rita", None, {"admin"}),
    ("PUT", "/api/users/fay/role", {"role": "employee"}, {"admin"}),
    ("PUT", "/api/users/fay/password", {"generate": True}, {"admin"}),
    ("POST", "/api/users/fay/unlock", None, {"admin"}),
    ("POST", "/api/notifications/read-all", None, ALL),
    ("GET", "/api/groups", None, {"admin"}),
    ("GET", "/metrics", None, {"admin"}),
    # external tasks: workers (integration) and admins; an unknown id answers 404 to those allowed
    ("POST", "/api/external-tasks/fetch-and-lock",
     {"worker_id": "w", "topics": [{"topic_name": "t", "lock_duration": 1000}]}, {"admin", "integration"}),
    ("GET", "/api/external-tasks", None, {"admin", "integration"}),
    ("GET", "/api/external-tasks/{task}", None, {"admin", "integration"}),
    ("POST", "/api/external-tasks/{task}/complete", {"worker_id": "w"}, {"admin", "integration"}),
    ("POST", "/api/external-tasks/{task}/failure", {"worker_id": "w", "retries": 1}, {"admin", "integration"}),
    ("POST", "/api/external-tasks/{task}/bpmn-error", {"worker_id": "w", "error_code": "E"},
     {"admin", "integration"}),
    ("POST", "/api/external-tasks/{task}/extend-lock", {"worker_id": "w", "new_duration": 1000},
     {"admin", "integration"}),
    ("PUT", "/api/external-tasks/{task}/retries", {"retries": 1}, {"admin"}),
    ("GET", "/api/incidents", None, {"admin", "integration"}),
    ("POST", "/api/incidents/{task}/retry", {"retries": 1}, {"admin"}),
]


@pytest.fixture
def deployed(api):
    assert api.deploy("dora", ("authz.bpmn", FLOW.xml())).status_code == 201
    return api


def _call(api, user, method, template, body, counter=[0]):  # noqa: B006 - a counter for unique names
    instance, task = _fresh(api)
    attachment = None
    if "{attachment}" in template:
        attachment = api.post("max", f"/api/tasks/{task}/attachments",
                              files={"file": ("note.txt", b"a note", "text/plain")}).json()["id"]
    path = template.format(instance=instance, task=task, attachment=attachment)
    headers = api.h(user) if user else {}
    if body == "file":
        return api.client.post(path, headers=headers, files={"file": ("note.txt", b"a note", "text/plain")})
    if body == "upload":
        counter[0] += 1
        xml = FLOW.xml().replace(b'name="authz"', f'name="authz {counter[0]}"'.encode())
        return api.client.post(path, headers=headers, files=[("files", ("authz.bpmn", xml, "application/xml"))])
    if body == "new-user":
        counter[0] += 1
        body = {"name": f"user{counter[0]}", "role": "employee"}
    return api.client.request(method, path, headers=headers, json=body)


@pytest.mark.parametrize("method, path, body, allowed", CASES, ids=[f"{c[0]} {c[1]}" for c in CASES])
def test_role_matrix(deployed, method, path, body, allowed):
    for role, user in ROLES.items():
        r = _call(deployed, user, method, path, body)
        if role in allowed:
            assert r.status_code not in (401, 403), f"{role} refused: {r.status_code} {r.text}"
            assert r.status_code < 500, r.text
        else:
            assert r.status_code == 403, f"{role} allowed: {r.status_code} {r.text}"
            assert r.headers["content-type"].startswith("application/problem+json")
    assert _call(deployed, None, method, path, body).status_code == 401


def test_health_endpoints_need_no_token(api):
    assert api.client.get("/healthz").json() == {"status": "ok"}
    assert api.client.get("/readyz").json() == {"status": "ready"}


def test_employee_sees_only_their_own_and_their_groups_tasks(deployed):
    api = deployed
    instance, task = _fresh(api)
    assert task in [t["id"] for t in api.inbox("max")]  # a manager
    assert api.inbox("rita") == []  # staff, not managers
    assert api.get("rita", f"/api/tasks/{task}").status_code == 404
    assert api.get("rita", f"/api/process-instances/{instance}").status_code == 404  # no part in it
    assert api.post("rita", f"/api/tasks/{task}/complete", json={"variables": {}}).status_code == 403
    api.post("admin", "/api/users", json={"name": "mona", "role": "employee", "groups": ["managers"]})
    mona = api.post("admin", "/api/users/mona/tokens").json()["token"]
    api.tokens["mona"] = mona
    assert task in [t["id"] for t in api.inbox("mona")]
    api.post("max", f"/api/tasks/{task}/claim")
    assert task not in [t["id"] for t in api.inbox("mona")]  # claimed by another: gone from her inbox
    # include_assigned never reveals someone else's task to an employee
    assert task not in [t["id"] for t in api.inbox("mona", candidate_group="managers", include_assigned=True)]
    r = api.post("mona", f"/api/tasks/{task}/complete", json={"variables": {}})
    assert r.status_code == 403 and "claimed by max" in r.json()["detail"]
    assert task in [t["id"] for t in api.inbox("admin", include_assigned=True, candidate_group="managers")]
