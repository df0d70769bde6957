"""The employee's work in a real browser: start a purchase request, fix a form error, the manager
approves it from the inbox; another employee's task is a 404. Screenshots of the inbox and task page."""
from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, Page, expect

from tests.browser.conftest import VIEWPORT, LiveServer
from tests.browser.helpers import screenshot, signed_in


@pytest.fixture
def sign_in(chromium: Browser, server: LiveServer) -> Iterator:
    """``sign_in(user, width=1280)``: a new browser context (its own cookies) signed in as demo ``user``."""
    contexts = []

    def open_as(user: str, width: int = VIEWPORT["width"]) -> Page:
        context = chromium.new_context(viewport={"width": width, "height": 900}, base_url=server.base_url)
        contexts.append(context)
        return signed_in(context.new_page(), server, user)

    yield open_as
    for context in contexts:
        context.close()


def test_a_purchase_request_from_start_to_the_managers_approval(sign_in) -> None:
    rita = sign_in("rita")
    rita.get_by_role("link", name="Start", exact=True).click()
    procurement = rita.locator("#p-procurement_approval")
    procurement.locator("summary").click()
    procurement.get_by_label("Business key (optional)").fill("PR-BROWSER-1")
    procurement.get_by_role("button", name="Start Procurement approval", exact=True).click()
    expect(rita.get_by_role("heading", name="Submit the purchase request")).to_be_visible()

    # a form error shows next to its field, and what was typed stays
    rita.get_by_label("Justification").fill("The old one broke")
    rita.get_by_label(re.compile("^Amount")).fill("1200")
    rita.get_by_role("button", name="Complete").click()
    expect(rita.locator("#field-item-error")).to_have_text(re.compile("this field is required"))
    expect(rita.get_by_label(re.compile("^Item"))).to_have_attribute("aria-invalid", "true")
    expect(rita.get_by_label("Justification")).to_have_value("The old one broke")
    rita.get_by_role("link", name=re.compile("^Item:")).click()  # the summary links to the field
    expect(rita.get_by_label(re.compile("^Item"))).to_be_focused()
    rita.get_by_label(re.compile("^Item")).fill("Laptop")
    rita.get_by_role("button", name="Complete").click()
    expect(rita.get_by_text("Task completed.")).to_be_visible()

    max_ = sign_in("max")
    row = max_.locator(".task-item", has_text="PR-BROWSER-1")
    expect(row.get_by_role("link", name="Approve as manager")).to_be_visible()
    expect(row.locator(".badge.on_time")).to_be_visible()
    screenshot(max_, "inbox")
    row.get_by_role("link", name="Approve as manager").click()
    expect(max_.get_by_text("Laptop")).to_be_visible()
    canvas = max_.locator(".bpmn-canvas")
    expect(canvas).to_have_attribute("data-state", "ready", timeout=15000)
    expect(canvas.locator('g.sopflow-current[data-element-id="manager_approval"]')).to_have_count(1)
    screenshot(max_, "task", full_page=True)
    max_.get_by_label("Approved").check()
    max_.get_by_label("Comment", exact=True).fill("Fine")
    max_.get_by_role("button", name="Complete").click()
    expect(max_.get_by_text("Task completed.")).to_be_visible()
    expect(max_.locator(".task-item", has_text="PR-BROWSER-1")).to_have_count(0)

    rita.goto("/requests")
    expect(rita.locator(".task-item", has_text="PR-BROWSER-1")).to_contain_text("Place the order")


def test_another_employees_task_is_not_found(sign_in) -> None:
    rita = sign_in("rita")
    rita.goto("/start")
    rita.locator("#p-procurement_approval summary").click()
    rita.get_by_role("button", name="Start Procurement approval", exact=True).click()
    expect(rita.get_by_role("heading", name="Submit the purchase request")).to_be_visible()
    task_url = rita.url.split("?")[0]
    paul = sign_in("paul")
    response = paul.goto(task_url)
    assert response is not None and response.status == 404
    expect(paul.get_by_text("Submit the purchase request")).to_have_count(0)


def test_the_inbox_and_task_page_fit_a_phone(sign_in) -> None:
    rita = sign_in("rita", width=390)
    rita.goto("/start")
    rita.locator("#p-procurement_approval summary").click()
    rita.get_by_role("button", name="Start Procurement approval", exact=True).click()
    for path in ("/inbox", rita.url, "/start", "/requests", "/notifications"):
        rita.goto(path)
        assert rita.evaluate("document.documentElement.scrollWidth") <= 390, path
    rita.goto("/inbox")
    screenshot(rita, "inbox-phone", full_page=True)
