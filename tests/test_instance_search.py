"""The instance search (``GET /api/process-instances``): every filter, paging, and who sees what."""
from __future__ import annotations

from datetime import timedelta, timezone

import pytest

from tests.bpmnkit import Bpmn


def _flow(name: str = "Orders") -> bytes:
    b = (Bpmn("orders", name).start().user("fill", "Fill in", props={"candidateGroups": "hr"}, writes="*")
         .user("check", "Check", props={"candidateGroups": "managers"}).end())
    return b.chain("start", "fill", "check", "end").xml()


@pytest.fixture
def instances(api, clock):
    """Four orders (first step offered to hr): v1 by rita (PR-2026-001, PR-2026-002, PR_X), v2 by max (QR-1), an hour apart."""
    assert api.deploy("dora", ("orders.bpmn", _flow())).status_code == 201
    made = {}
    for key in ("PR-2026-001", "PR-2026-002", "PR_X"):
        made[key] = api.start("rita", "orders", business_key=key, variables={"region": "EU"}).json()
        clock.advance(hours=1)
    assert api.deploy("dora", ("orders.bpmn", _flow("Orders v2"))).status_code == 201
    made["QR-1"] = api.start("max", "orders", business_key="QR-1").json()
    assert made["QR-1"]["definition_version"] == 2
    return api, clock, {k: v["id"] for k, v in made.items()}


def _q(api, user="audrey", **params) -> list[str]:
    r = api.get(user, "/api/process-instances", params=params)
    assert r.status_code == 200, r.text
    return [i["id"] for i in r.json()["items"]]


def test_procedure_version_state_and_people(instances):
    api, _, ids = instances
    assert sorted(_q(api, definition_key="orders")) == sorted(ids.values())
    assert _q(api, definition_key="orders", version=2) == [ids["QR-1"]]
    assert set(_q(api, version=1)) == {ids["PR-2026-001"], ids["PR-2026-002"], ids["PR_X"]}
    assert _q(api, definition_key="other") == []
    assert _q(api, started_by="max") == [ids["QR-1"]]
    api.post("rita", f"/api/process-instances/{ids['PR_X']}/cancel", json={"reason": "dup"})
    assert _q(api, status="cancelled") == [ids["PR_X"]]
    assert ids["PR_X"] not in _q(api, status="running")
    r = api.get("audrey", "/api/process-instances", params={"version": 0})
    assert r.status_code == 422


def test_business_key_exact_and_prefix(instances):
    api, _, ids = instances
    assert _q(api, business_key="PR-2026-001") == [ids["PR-2026-001"]]
    assert _q(api, business_key="PR-2026") == []  # exact means exact
    assert sorted(_q(api, business_key_prefix="PR-2026-")) == sorted([ids["PR-2026-001"], ids["PR-2026-002"]])
    assert _q(api, business_key_prefix="PR_") == [ids["PR_X"]]  # _ is a character, not a wildcard
    assert _q(api, business_key_prefix="PR%") == []  # so is %
    assert _q(api, business_key_prefix="pr-") == []  # case matters, as for the exact key


def test_started_date_range_needs_aware_instants(instances):
    api, clock, ids = instances
    now = clock.now()  # QR-1 started now, PR_X an hour ago, PR-2026-002 two hours ago, -001 three
    window = {"started_after": (now - timedelta(hours=2, minutes=30)).isoformat(),
              "started_before": (now - timedelta(minutes=30)).isoformat()}
    assert _q(api, **window) == [ids["PR_X"], ids["PR-2026-002"]]  # newest first
    plus2 = (now - timedelta(hours=2, minutes=30)).astimezone(timezone(timedelta(hours=2))).isoformat()
    assert plus2.endswith("+02:00") and _q(api, started_after=plus2) == [ids["QR-1"], ids["PR_X"], ids["PR-2026-002"]]
    naive = api.get("audrey", "/api/process-instances", params={"started_after": "2026-01-01T00:00:00"})
    assert naive.status_code == 422 and "time zone" in naive.json()["detail"]
    empty = api.get("audrey", "/api/process-instances", params={
        "started_after": window["started_before"], "started_before": window["started_after"]})
    assert empty.status_code == 422 and empty.json()["field"] == "started_after"


def test_a_variable_matches_its_latest_value_whichever_step_wrote_it(instances):
    api, _, ids = instances
    assert sorted(_q(api, variable="region_eq_EU")) == sorted([ids["PR-2026-001"], ids["PR-2026-002"], ids["PR_X"]])
    task = api.get("admin", f"/api/process-instances/{ids['PR-2026-002']}").json()["open_tasks"][0]["id"]
    r = api.post("hal", f"/api/tasks/{task}/complete", json={"variables": {"region": "US", "amount": 1200}})
    assert r.status_code == 200, r.text
    assert _q(api, variable="region_eq_US") == [ids["PR-2026-002"]]
    assert ids["PR-2026-002"] not in _q(api, variable="region_eq_EU")
    assert _q(api, variable="amount_eq_1200") == [ids["PR-2026-002"]]
    assert _q(api, variable=["amount_eq_1200", "region_eq_EU"]) == []


def test_paging_and_who_sees_what(instances):
    api, _, ids = instances
    first = api.get("audrey", "/api/process-instances", params={"limit": 3}).json()
    assert first["total"] == 4 and len(first["items"]) == 3 and first["next_cursor"]
    second = api.get("audrey", "/api/process-instances", params={"limit": 3, "cursor": first["next_cursor"]}).json()
    assert [i["id"] for i in first["items"] + second["items"]] == [
        ids["QR-1"], ids["PR_X"], ids["PR-2026-002"], ids["PR-2026-001"]]
    assert second["next_cursor"] is None
    # employees: what they started or take part in; auditors and admins: everything
    assert sorted(_q(api, "rita")) == sorted([ids["PR-2026-001"], ids["PR-2026-002"], ids["PR_X"]])  # started
    assert _q(api, "max") == [ids["QR-1"]]  # started it; the open steps are hr's, not the managers'
    assert len(_q(api, "hal")) == 4  # hr: offered the first step of each
    assert _q(api, "fiona") == []
    assert len(_q(api, "admin")) == 4
    assert api.get("audrey", f"/api/process-instances/{ids['QR-1']}").status_code == 200
    assert api.get("dora", "/api/process-instances").status_code == 403
