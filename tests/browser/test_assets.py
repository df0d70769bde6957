"""The front-end assets in a real browser: /docs offline, and the diagram bundle's view/edit/diff."""
from __future__ import annotations

from pathlib import Path

from playwright.sync_api import Page, expect

from tests.browser.helpers import has_class, screenshot, signed_in

PROCUREMENT = (Path(__file__).resolve().parent.parent.parent / "processes" / "procurement_approval.bpmn").read_text()


def test_requests_off_127_0_0_1_are_aborted_and_recorded(page: Page, blocked_requests):
    # the guard every browser test relies on; 127.0.0.2 is loopback too, so even a broken
    # guard would send nothing off this machine. (/healthz: the pages' CSP would refuse the
    # fetch itself before the guard sees it.)
    page.goto("/healthz")
    outcome = page.evaluate("""async () => {
        try { await fetch('http://127.0.0.2:9/probe'); return 'loaded'; }
        catch (e) { return 'failed'; }
    }""")
    assert outcome == "failed"
    assert blocked_requests == ["http://127.0.0.2:9/probe"]


def test_docs_renders_swagger_ui_from_this_server_only(page: Page, blocked_requests, console_errors):
    page.goto("/docs")
    tasks = page.locator(".opblock-summary-path", has_text="/api/tasks").first
    expect(tasks).to_be_visible()
    assert page.locator(".opblock").count() > 20  # the whole API is listed, not an empty shell
    assert blocked_requests == []
    assert console_errors == []
    screenshot(page, "api-docs")


def test_diagram_page_script_shows_a_diagram_with_completed_and_current_marks(page: Page, blocked_requests,
                                                                               console_errors):
    page.goto("/_test/pages/diagram.html")
    declared = page.locator("#declared")
    expect(declared).to_have_attribute("data-state", "ready")
    current = declared.locator('g.djs-element[data-element-id="manager_approval"]')
    expect(current).to_have_class(has_class("sopflow-current"))
    for done in ("request_raised", "flow_1", "submit_request", "flow_2"):
        expect(declared.locator(f'g.djs-element[data-element-id="{done}"]')).to_have_class(has_class("sopflow-completed"))
    # the rest of the diagram is drawn but not marked
    later = declared.locator('g.djs-element[data-element-id="place_order"]')
    expect(later).to_be_visible()
    assert "sopflow-" not in (later.get_attribute("class") or "")
    assert blocked_requests == []
    assert console_errors == []
    screenshot(declared, "diagram-bundle-viewer")


def test_diagram_page_script_reports_a_diagram_it_cannot_load(page: Page, blocked_requests):
    page.goto("/_test/pages/diagram-missing.html")
    broken = page.locator("#broken")
    expect(broken).to_have_attribute("data-state", "error")
    expect(broken).to_contain_text("The diagram could not be shown (HTTP 404)")
    assert blocked_requests == []


def test_view_edit_and_diff(page: Page, blocked_requests, console_errors):
    page.goto("/_test/pages/diagram.html")
    page.wait_for_function("() => !!window.SopflowDiagram")

    # view(): markers on the given ids, unknown ids ignored, the viewer returned
    zoom = page.evaluate("""async (xml) => {
        const viewer = await SopflowDiagram.view(document.getElementById('view'), xml,
            {completed: ['request_raised', 'flow_1'], current: ['submit_request', 'no_such_element']});
        return viewer.get('canvas').zoom();
    }""", PROCUREMENT)
    assert zoom > 0
    view = page.locator("#view")
    expect(view.locator('g.djs-element[data-element-id="submit_request"]')).to_have_class(has_class("sopflow-current"))
    expect(view.locator('g.djs-element[data-element-id="flow_1"]')).to_have_class(has_class("sopflow-completed"))

    # edit(): the modeler renames a task and appends one; saveXML keeps the Camunda attributes
    saved = page.evaluate("""async (xml) => {
        const modeler = await SopflowDiagram.edit(document.getElementById('edit'), xml);
        const registry = modeler.get('elementRegistry');
        const modeling = modeler.get('modeling');
        modeling.updateLabel(registry.get('record_order'), 'Record the order in the ledger');
        const added = modeling.appendShape(registry.get('place_order'), {type: 'bpmn:UserTask'},
                                           {x: 900, y: 420});
        modeling.updateLabel(added, 'Tell the requester');
        const {xml: out} = await modeler.saveXML({format: true});
        return {xml: out, added: added.id};
    }""", PROCUREMENT)
    xml = saved["xml"]
    assert 'camunda:assignee="${initiator}"' in xml
    assert 'camunda:formKey="purchase-request"' in xml
    assert 'camunda:dueDate="P1D"' in xml
    assert '<camunda:formField id="amount" label="Amount (EUR)" type="long">' in xml
    assert 'name="Record the order in the ledger"' in xml
    assert f'id="{saved["added"]}"' in xml
    screenshot(page.locator("#edit"), "diagram-bundle-modeler")

    # diff(): the edited version against the deployed one
    result = page.evaluate("""async ([a, b]) => {
        const r = await SopflowDiagram.diff(document.getElementById('diff-a'), document.getElementById('diff-b'), a, b);
        return {added: r.added, removed: r.removed, changed: r.changed, layoutChanged: r.layoutChanged,
                viewers: r.viewers.length};
    }""", [PROCUREMENT, xml])
    assert saved["added"] in result["added"]
    assert "record_order" in result["changed"]
    assert result["removed"] == []
    assert result["viewers"] == 2
    diff_b = page.locator("#diff-b")
    expect(diff_b.locator(f'g.djs-element[data-element-id="{saved["added"]}"]')).to_have_class(
        has_class("sopflow-diff-added"))
    expect(diff_b.locator('g.djs-element[data-element-id="record_order"]')).to_have_class(
        has_class("sopflow-diff-changed"))
    expect(page.locator('#diff-a g.djs-element[data-element-id="record_order"]')).to_have_class(
        has_class("sopflow-diff-changed"))
    screenshot(page.locator(".pair"), "diagram-bundle-diff")
    assert blocked_requests == []
    assert console_errors == []



def test_signed_in_helper_signs_in_through_the_login_form(page: Page, server, blocked_requests, console_errors):
    signed_in(page, server, "rita")
    expect(page.get_by_role("link", name="Rita, requester")).to_be_visible()
    session = [c for c in page.context.cookies() if c["name"] == "sopflow_session"]
    assert len(session) == 1 and session[0]["httpOnly"]  # the page's scripts cannot read it
    assert blocked_requests == []
