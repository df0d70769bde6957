"""External tasks and incidents over HTTP: sopflow's /api shape and Camunda's /engine-rest shape."""
from __future__ import annotations

import base64
import threading
import time

from tests.test_external_tasks import _with_error_boundary, one_service


def _start(api, key: str = "invoice", **variables) -> str:
    r = api.start("rita", key, variables=variables)
    assert r.status_code == 201, r.text
    return r.json()["id"]


def _fetch(api, user: str = "worker", worker: str = "w1", topic: str = "billing", **extra):
    return api.post(user, "/api/external-tasks/fetch-and-lock", json={
        "worker_id": worker, "max_tasks": 5, "topics": [{"topic_name": topic, "lock_duration": 60_000}], **extra})


def test_a_worker_fetches_completes_and_the_instance_moves_on(api):
    assert api.deploy("dora", ("invoice.bpmn", one_service())).status_code == 201
    iid = _start(api, amount=120)
    r = _fetch(api)
    assert r.status_code == 200, r.text
    [task] = r.json()
    assert (task["topic"], task["element_id"], task["instance_id"], task["variables"]) == (
        "billing", "bill", iid, {"amount": 120})
    assert _fetch(api, worker="w2").json() == []
    other = api.post("worker", f"/api/external-tasks/{task['id']}/complete", json={"worker_id": "w2"})
    assert other.status_code == 409 and other.json()["code"] == "conflict"
    done = api.post("worker", f"/api/external-tasks/{task['id']}/complete",
                    json={"worker_id": "w1", "variables": {"invoice_no": "INV-1"}})
    assert done.status_code == 200, done.text
    assert done.json()["status"] == "completed" and done.json()["variables"]["invoice_no"] == "INV-1"


def test_failures_then_an_incident_an_admin_retries(api):
    api.deploy("dora", ("invoice.bpmn", one_service()))
    iid = _start(api)
    [task] = _fetch(api).json()
    r = api.post("worker", f"/api/external-tasks/{task['id']}/failure",
                 json={"worker_id": "w1", "error_message": "down", "retries": 0})
    assert r.status_code == 200 and r.json()["retries"] == 0
    [incident] = api.get("worker", "/api/incidents").json()["items"]
    assert (incident["kind"], incident["instance_id"], incident["message"]) == ("failed_external_task", iid, "down")
    assert api.post("worker", f"/api/incidents/{incident['id']}/retry", json={"retries": 1}).status_code == 403
    r = api.post("admin", f"/api/incidents/{incident['id']}/retry", json={"retries": 1})
    assert r.status_code == 200 and r.json()["resolution"] == "retried"
    assert api.get("worker", "/api/incidents").json()["items"] == []
    assert api.get("worker", "/api/incidents", params={"state": "resolved"}).json()["total"] == 1
    assert [t["id"] for t in _fetch(api).json()] == [task["id"]]


def test_bpmn_error_and_extend_lock(api):
    api.deploy("dora", ("pay.bpmn", _with_error_boundary()))
    iid = _start(api, "pay")
    [task] = _fetch(api, topic="pay").json()
    r = api.post("worker", f"/api/external-tasks/{task['id']}/extend-lock", json={"worker_id": "w1",
                                                                                   "new_duration": 120_000})
    assert r.status_code == 200 and r.json()["lock_expires_at"]
    r = api.post("worker", f"/api/external-tasks/{task['id']}/bpmn-error",
                 json={"worker_id": "w1", "error_code": "CARD_DECLINED", "variables": {"why": "funds"}})
    assert r.json() == {"caught_by": "declined", "incident_id": None}
    inst = api.get("rita", f"/api/process-instances/{iid}").json()
    assert inst["status"] == "completed" and inst["variables"]["outcome"] == "declined"


def test_only_integration_and_admin_reach_worker_operations(api):
    api.deploy("dora", ("invoice.bpmn", one_service()))
    _start(api)
    for user in ("rita", "dora", "audrey"):
        assert _fetch(api, user=user).status_code == 403
        assert api.get(user, "/api/incidents").status_code == 403
        assert api.post(user, "/engine-rest/external-task/fetchAndLock", json={
            "workerId": "x", "topics": [{"topicName": "billing", "lockDuration": 1000}]}).status_code == 403
    assert api.client.post("/api/external-tasks/fetch-and-lock", json={}).status_code == 401
    assert len(_fetch(api, user="admin").json()) == 1


def test_bad_bodies_are_4xx_with_the_field(api):
    r = api.post("worker", "/api/external-tasks/fetch-and-lock", json={"worker_id": "w", "topics": []})
    assert r.status_code == 422 and r.json()["field"] == "topics"
    r = api.post("worker", "/engine-rest/external-task/fetchAndLock", json={"workerId": "w", "topics": [
        {"topicName": "t", "lockDuration": 0}]})
    assert r.status_code == 400 and "lockDuration" in r.json()["message"]
    r = api.post("worker", "/engine-rest/external-task/nope/complete", json={"workerId": "w"})
    assert r.status_code == 404 and r.json()["type"] == "InvalidRequestException"


def test_a_long_poll_answers_as_soon_as_work_arrives(api):
    api.deploy("dora", ("invoice.bpmn", one_service()))
    threading.Timer(0.3, lambda: _start(api)).start()
    began = time.monotonic()
    r = _fetch(api, async_response_timeout=10_000)
    elapsed = time.monotonic() - began
    assert r.status_code == 200 and len(r.json()) == 1
    assert elapsed < 5  # woken by the commit, not by the 10 s timeout


def test_a_long_poll_with_nothing_to_do_answers_empty_after_the_timeout(api):
    began = time.monotonic()
    r = _fetch(api, async_response_timeout=300)
    assert r.json() == [] and 0.25 <= time.monotonic() - began < 5


def test_engine_rest_speaks_camunda_typed_variables_and_basic_auth(api):
    api.deploy("dora", ("invoice.bpmn", one_service()))
    iid = _start(api, amount=120, items=["a", "b"])
    basic = {"Authorization": "Basic " + base64.b64encode(f"worker:{api.tokens['worker']}".encode()).decode()}
    r = api.client.post("/engine-rest/external-task/fetchAndLock", headers=basic, json={
        "workerId": "py", "maxTasks": 1, "usePriority": False, "asyncResponseTimeout": 0,
        "topics": [{"topicName": "billing", "lockDuration": 10000, "processVariables": {},
                    "includeExtensionProperties": True, "deserializeValues": True, "variables": None}]})
    assert r.status_code == 200, r.text
    [task] = r.json()
    assert (task["processInstanceId"], task["topicName"], task["workerId"], task["retries"]) == (iid, "billing",
                                                                                                 "py", None)
    assert task["variables"]["amount"] == {"value": 120, "type": "Integer", "valueInfo": {}}
    assert task["variables"]["items"] == {"value": '["a", "b"]', "type": "Json", "valueInfo": {}}
    wrong_user = {"Authorization": "Basic " + base64.b64encode(f"rita:{api.tokens['worker']}".encode()).decode()}
    assert api.client.post(f"/engine-rest/external-task/{task['id']}/complete", headers=wrong_user,
                           json={"workerId": "py"}).status_code == 401
    r = api.client.post(f"/engine-rest/external-task/{task['id']}/complete", headers=basic, json={
        "workerId": "py", "variables": {"paid": {"value": True, "type": "Boolean"},
                                        "total": {"value": "12.5", "type": "Integer"}}})
    assert r.status_code == 400 and "total" in r.json()["message"]
    r = api.client.post(f"/engine-rest/external-task/{task['id']}/complete", headers=basic, json={
        "workerId": "py", "variables": {"paid": {"value": True, "type": "Boolean"},
                                        "meta": {"value": '{"k": 1}', "type": "Json"},
                                        "at": {"value": "2026-03-27T09:30:00.000+0100", "type": "Date"}}})
    assert r.status_code == 204, r.text
    variables = api.get("rita", f"/api/process-instances/{iid}").json()["variables"]
    assert variables["paid"] is True and variables["meta"] == {"k": 1}
    assert variables["at"].startswith("2026-03-27T")
