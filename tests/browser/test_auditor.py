"""The auditor in a real browser: find an instance by business key, read its diagram and timeline,
verify the trail; the pages fit a 390 px phone without sideways scrolling."""
from __future__ import annotations

import httpx2 as httpx
import pytest
from playwright.sync_api import Page, expect

from tests.browser.helpers import has_class, screenshot, signed_in

BUSINESS_KEY = "PR-2026-0042"


def _call(server, user: str, method: str, path: str, **kw) -> dict:
    r = httpx.request(method, server.base_url + path, headers={"Authorization": f"Bearer {server.tokens[user]}"},
                      timeout=30, **kw)
    assert r.status_code < 300, r.text
    return r.json()


@pytest.fixture(scope="module")
def request_in_approval(server) -> str:
    """A procurement request past the requester's step, waiting for a manager."""
    instance = _call(server, "rita", "POST", "/api/process-definitions/procurement_approval/start",
                     json={"business_key": BUSINESS_KEY, "variables": {"amount": 900}})
    [task] = instance["open_tasks"]
    _call(server, "rita", "POST", f"/api/tasks/{task['id']}/complete",
          json={"variables": {"item": "Standing desk", "amount": 1200, "justification": "back pain"}})
    return instance["id"]


def test_an_auditor_finds_an_instance_reads_its_path_and_verifies_the_trail(
        page: Page, server, request_in_approval, blocked_requests, console_errors):
    signed_in(page, server, "audrey")
    expect(page).to_have_url(server.base_url + "/instances")
    page.get_by_label("Business key", exact=True).fill(BUSINESS_KEY)
    page.get_by_role("button", name="Search").click()
    expect(page.get_by_text("Instances found: 1")).to_be_visible()
    page.get_by_role("link", name=BUSINESS_KEY).click()
    expect(page).to_have_url(f"{server.base_url}/instances/{request_in_approval}")

    canvas = page.locator(".bpmn-canvas")
    expect(canvas).to_have_attribute("data-state", "ready")
    expect(canvas.locator('g.djs-element[data-element-id="manager_approval"]')).to_have_class(
        has_class("sopflow-current"))
    for done in ("request_raised", "flow_1", "submit_request", "flow_2"):
        expect(canvas.locator(f'g.djs-element[data-element-id="{done}"]')).to_have_class(
            has_class("sopflow-completed"))
    assert "sopflow-" not in (canvas.locator('g.djs-element[data-element-id="place_order"]')
                              .get_attribute("class") or "")

    completed = page.locator("ol.timeline > li", has_text="Task completed")
    expect(completed.locator(".who")).to_have_text("rita")
    row = completed.locator("table.changes tr", has_text="amount")
    expect(row.locator("td.before")).to_have_text("900")
    expect(row.locator("td.after")).to_have_text("1,200")
    expect(page.locator(".task-record", has_text="Approve as manager")).to_contain_text("procurement_approval v1")
    screenshot(page, "auditor-instance", full_page=True)

    page.get_by_role("navigation", name="Main menu").get_by_role("link", name="Audit trail").click()
    page.get_by_label("Action").fill("task.completed")
    page.get_by_role("button", name="Search").click()
    expect(page.locator("table.audit-events tbody tr").first).to_contain_text("Task completed")
    screenshot(page, "auditor-audit")

    page.get_by_role("link", name="Verify the trail").click()
    expect(page.locator("#verdict")).to_have_text("OK: the trail is intact.")
    assert int(page.locator("#chains").inner_text().replace(",", "")) >= 2
    screenshot(page, "auditor-verify")
    assert blocked_requests == []
    assert console_errors == []


def test_the_auditor_pages_fit_a_phone_and_work_from_the_keyboard(page: Page, server, request_in_approval):
    page.set_viewport_size({"width": 390, "height": 844})
    signed_in(page, server, "audrey")
    for path in ("/instances", f"/instances?business_key={BUSINESS_KEY}", f"/instances/{request_in_approval}",
                 "/audit", "/audit/verify"):
        page.goto(path)
        overflow = page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
        assert overflow <= 0, f"{path} scrolls sideways by {overflow}px at 390 px"
    page.goto(f"/instances/{request_in_approval}")
    expect(page.locator(".bpmn-canvas")).to_have_attribute("data-state", "ready")
    screenshot(page, "auditor-instance-phone", full_page=True)
    # the search form by keyboard alone: tab to the business key, type, Enter submits
    page.goto("/instances")
    field = page.get_by_label("Business key", exact=True)
    for _ in range(30):
        page.keyboard.press("Tab")
        if field.evaluate("el => el === document.activeElement"):
            break
    else:
        pytest.fail("Tab never reached the business key field")
    page.keyboard.type(BUSINESS_KEY)
    page.keyboard.press("Enter")
    expect(page.get_by_role("link", name=BUSINESS_KEY)).to_be_visible()
