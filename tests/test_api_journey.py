"""What the README promises a new user, end to end through HTTP, on SQLite and PostgreSQL."""
from __future__ import annotations

import csv
import io
import json
from datetime import timedelta

from tests.bpmnkit import Bpmn

REVIEW = (Bpmn("expense", name="Expense claim").start()
          .user("review", "Review the expense claim", documentation="Check the receipt of {{ employee }} for {{ amount }} EUR.",
                props={"candidateGroups": "managers", "dueDate": "PT24H", "priority": "70"}, writes="approved")
          .user("pay", "Pay the claim", props={"candidateGroups": "finance"}).end()
          .chain("start", "review", "pay", "end"))


def test_upload_start_inbox_complete_audit(api, clock):
    r = api.deploy("dora", ("expense.bpmn", REVIEW.xml()))
    assert r.status_code == 201, r.text
    assert [(d["key"], d["version"]) for d in r.json()["definitions"]] == [("expense", 1)]
    again = api.deploy("dora", ("expense.bpmn", REVIEW.xml()))
    assert again.status_code == 200 and again.json()["id"] == r.json()["id"]

    started = api.start("rita", "expense", variables={"employee": "Rita", "amount": 42}, business_key="EXP-1")
    assert started.status_code == 201, started.text
    instance = started.json()
    assert instance["status"] == "running" and instance["business_key"] == "EXP-1"
    [task] = instance["open_tasks"]

    assert [t["id"] for t in api.inbox("max")] == [task["id"]]  # a manager
    assert api.inbox("fiona") == [] and api.inbox("sam") == []  # finance, support: not theirs
    assert api.inbox("rita") == []  # the requester is not a manager
    detail = api.get("max", f"/api/tasks/{task['id']}").json()
    assert detail["sop"] == "Check the receipt of Rita for 42 EUR."
    assert detail["sla"] == "on_time" and detail["priority"] == 70
    assert detail["due_at"].startswith((clock.now() + timedelta(hours=24)).isoformat()[:19])
    assert api.get("fiona", f"/api/tasks/{task['id']}").status_code == 404

    assert api.post("max", f"/api/tasks/{task['id']}/claim").json()["assignee"] == "max"
    done = api.post("max", f"/api/tasks/{task['id']}/complete", json={"variables": {"approved": True}})
    assert done.status_code == 200, done.text
    [pay] = api.inbox("fiona")
    assert pay["name"] == "Pay the claim"

    trail = api.get("audrey", "/api/audit", params={"instance_id": instance["id"]}).json()
    actions = [e["action"] for e in trail["items"]]
    assert actions[:2] == ["instance.started", "activities.completed"]
    assert "task.claimed" in actions and "task.completed" in actions
    completed = next(e for e in trail["items"] if e["action"] == "task.completed")
    assert completed["actor"] == "max" and completed["payload"]["variables"] == {"approved": True}
    assert completed["definition_key"] == "expense" and completed["definition_version"] == 1
    assert api.get("audrey", "/api/audit/verify").json()["ok"] is True

    history = api.get("audrey", f"/api/history/process-instances/{instance['id']}").json()
    assert [t["name"] for t in history["tasks"]] == ["Review the expense claim", "Pay the claim"]
    assert history["tasks"][0]["completed_by"] == "max"


def test_audit_export_streams_csv_and_jsonl(api, clock):
    api.deploy("dora", ("expense.bpmn", REVIEW.xml()))
    api.start("rita", "expense", variables={"employee": "Rita", "amount": 1})
    lines = api.get("audrey", "/api/audit/export", params={"format": "jsonl"}).text.strip().splitlines()
    events = [json.loads(line) for line in lines]
    assert {e["action"] for e in events} >= {"deployment.created", "instance.started", "task.created"}
    r = api.get("audrey", "/api/audit/export", params={"format": "csv", "action": "instance.started"})
    assert r.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert len(rows) == 1 and rows[0]["actor"] == "rita" and json.loads(rows[0]["payload"])["variables"]["amount"] == 1
