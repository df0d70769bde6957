"""A designer in the browser: upload a diagram, rename a task in the modeler, deploy version 2, see the diff."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

# the browser-test infrastructure (Playwright, fixtures, helpers) comes with branch `assets`
pytest.importorskip("playwright.sync_api", reason="Playwright is not installed")
browser_helpers = pytest.importorskip("tests.browser.helpers", reason="tests/browser infrastructure is missing")

from playwright.sync_api import Page, expect  # noqa: E402

has_class, screenshot, signed_in = browser_helpers.has_class, browser_helpers.screenshot, browser_helpers.signed_in
ROOT = Path(__file__).resolve().parent.parent.parent
KEY = "purchase_requests"  # not among processes/, so this test makes versions 1 and 2 itself


def sign_in(page: Page, server, user: str) -> None:
    signed_in(page, server, user, next_path="/procedures")
    expect(page).to_have_url(re.compile(r"/procedures$"))


def test_upload_edit_in_the_modeler_deploy_and_diff(page: Page, server, tmp_path, blocked_requests,
                                                    console_errors):
    source = (ROOT / "processes" / "procurement_approval.bpmn").read_text()
    diagram = tmp_path / f"{KEY}.bpmn"
    diagram.write_text(source.replace('id="procurement_approval"', f'id="{KEY}"')
                       .replace('name="Procurement approval"', 'name="Purchase requests"'))
    sign_in(page, server, "dora")

    # upload
    page.get_by_role("link", name="Upload diagrams").click()
    page.get_by_label("BPMN and DMN files").set_input_files(str(diagram))
    expect(page.locator("#chosen")).to_contain_text(f"{KEY}.bpmn")
    page.get_by_role("button", name="Deploy").click()
    expect(page.locator(f'#deployed li[data-key="{KEY}"]')).to_have_attribute("data-version", "1")

    # the version page: diagram drawn, SOP steps listed
    page.get_by_role("link", name="Purchase requests, version 1").click()
    expect(page.locator("#diagram")).to_have_attribute("data-state", "ready")
    expect(page.locator("#task-manager_approval")).to_contain_text("SOP PR-2.")
    screenshot(page, "designer-procedure-version", full_page=True)

    # the modeler: rename a task the way a person does (double-click, type, click away)
    page.get_by_role("link", name="Edit", exact=True).click()
    modeler = page.locator("#modeler")
    expect(modeler).to_have_attribute("data-state", "ready")
    task = modeler.locator('g.djs-element[data-element-id="manager_approval"]')
    task.dblclick()
    editor = page.locator(".djs-direct-editing-parent")
    expect(editor).to_be_visible()
    page.keyboard.press("Control+A")
    page.keyboard.type("Approve as line manager")
    modeler.locator("svg").first.click(position={"x": 5, "y": 5})
    expect(task).to_contain_text("Approve as line manager")
    screenshot(page, "designer-modeler")
    page.get_by_role("button", name="Deploy as new version").click()

    # the new version's page
    expect(page).to_have_url(re.compile(rf"/procedures/{KEY}/versions/2$"))
    expect(page.locator("#task-manager_approval")).to_contain_text("Approve as line manager")

    # the diff: the renamed task is marked changed on both diagrams and listed
    page.goto(f"/procedures/{KEY}/diff?from=1&to=2")
    expect(page.locator("#diagram-diff")).to_have_attribute("data-state", "ready")
    changed = page.locator('#diff-to g.djs-element[data-element-id="manager_approval"]')
    expect(changed).to_have_class(has_class("sopflow-diff-changed"))
    expect(page.locator('#diff-from g.djs-element[data-element-id="manager_approval"]')).to_have_class(
        has_class("sopflow-diff-changed"))
    expect(page.locator("#diff-summary")).to_contain_text("Approve as line manager (manager_approval)")
    unchanged = page.locator('#diff-to g.djs-element[data-element-id="place_order"]')
    assert "sopflow-diff" not in (unchanged.get_attribute("class") or "")
    expect(page.locator("#change-manager_approval")).to_have_attribute("data-change", "changed")
    screenshot(page, "designer-diff", full_page=True)
    assert blocked_requests == []
    assert console_errors == []


def test_a_refusal_in_the_modeler_is_listed_and_marked_on_its_element(page: Page, server, console_errors):
    sign_in(page, server, "dora")
    page.goto("/procedures/procurement_approval/edit")
    modeler = page.locator("#modeler")
    expect(modeler).to_have_attribute("data-state", "ready")
    # a complex gateway (SpiffWorkflow refuses it) after the start event, added through the modeler's API
    page.evaluate("""() => {
        const m = document.getElementById('modeler').sopflowModeler;
        const registry = m.get('elementRegistry');
        const start = registry.get('request_raised');
        m.get('modeling').appendShape(start, {type: 'bpmn:ComplexGateway'}, {x: start.x + 80, y: start.y + 160});
    }""")
    page.get_by_role("button", name="Deploy as new version").click()
    problem = page.locator("#edit-problems li.problem").first
    expect(problem).to_be_visible()
    element_id = problem.get_attribute("data-element")
    assert element_id and element_id.startswith("Gateway_")
    expect(problem).to_contain_text("There is no support implemented for this task type")
    expect(modeler.locator(f'g.djs-element[data-element-id="{element_id}"]')).to_have_class(has_class("sopflow-error"))
    problem.get_by_role("button", name="Show in the diagram").click()
    expect(modeler.locator(f'g.djs-element[data-element-id="{element_id}"]')).to_have_class(has_class("selected"))
    expect(page).to_have_url(re.compile(r"/edit$"))  # stayed: nothing deployed
    # the browser logs the 422 answer itself; nothing else went wrong
    assert [e for e in console_errors if "status of 422" not in e] == []


def test_the_pages_fit_a_phone(page: Page, server):
    sign_in(page, server, "dora")
    page.set_viewport_size({"width": 390, "height": 844})
    for path in ("/procedures", "/procedures/procurement_approval", "/procedures/procurement_approval/versions/1",
                 "/procedures/upload", "/procedures/procurement_approval/edit",
                 "/procedures/procurement_approval/diff?from=1&to=1"):
        page.goto(path)
        overflow = page.evaluate("() => document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, (path, overflow)


def test_files_dropped_on_the_drop_zone_are_uploaded(page: Page, server, console_errors):
    sign_in(page, server, "dora")
    page.goto("/procedures/upload")
    source = (ROOT / "processes" / "procurement_approval.bpmn").read_text().replace(
        'id="procurement_approval"', 'id="dropped_requests"')
    page.evaluate("""(text) => {
        const files = new DataTransfer();
        files.items.add(new File([text], 'dropped_requests.bpmn', {type: 'application/xml'}));
        const zone = document.getElementById('drop-zone');
        zone.dispatchEvent(new DragEvent('dragover', {dataTransfer: files, bubbles: true, cancelable: true}));
        zone.dispatchEvent(new DragEvent('drop', {dataTransfer: files, bubbles: true, cancelable: true}));
    }""", source)
    expect(page.locator("#chosen")).to_contain_text("dropped_requests.bpmn")
    expect(page.locator("#drop-zone")).not_to_have_class(has_class("dragging"))
    page.get_by_role("button", name="Deploy").click()
    expect(page.locator('#deployed li[data-key="dropped_requests"]')).to_have_attribute("data-version", "1")
    assert console_errors == []
