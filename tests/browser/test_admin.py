"""The administrator in a real browser: adds a user who then signs in; the SLA and user pages at 1280 and 390 px."""
from __future__ import annotations

import json
import re
import urllib.request

from playwright.sync_api import Page, expect

from tests.browser.helpers import screenshot, signed_in

PHONE = {"width": 390, "height": 844}


def _start_some_requests(server) -> None:  # noqa: ANN001 - the LiveServer fixture
    """A few running procedures with due dates, so the SLA overview has rows."""
    for n in range(2):
        request = urllib.request.Request(  # noqa: S310 - the test's own loopback server
            f"{server.base_url}/api/process-definitions/procurement_approval/start", method="POST",
            data=json.dumps({"variables": {}, "business_key": f"PR-ADMIN-{n}"}).encode(),
            headers={"Authorization": f"Bearer {server.tokens['rita']}", "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as answer:  # noqa: S310
            assert answer.status == 201


def _some_late_work(server) -> None:  # noqa: ANN001 - the LiveServer fixture
    """Two open tasks of a small procedure: one already past due, one at risk (as the clock reads them).

    At risk after 0.0001 of an hour (0.36 s): the test signs in several times before it looks, so the
    task is at risk by then however fast the machine is (0.001, 3.6 s, was too slow on a quiet one).
    """
    from engine.actor import Actor
    from engine.commands import SYSTEM, deploy, start_instance
    from engine.loading import UploadedFile
    from tests.bpmnkit import Bpmn

    for key, name, props in (("delivery_check", "Check the delivery", {"dueDate": "PT0S"}),
                             ("invoice_check", "Check the invoice", {"dueDate": "PT1H", "atRiskFraction": "0.0001"})):
        xml = Bpmn(key).start().user("check", name, props={"assignee": "sam", **props}).end() \
            .chain("start", "check", "end").xml()
        server.db.command(lambda s, k=key, x=xml: deploy(s, files=[UploadedFile(f"{k}.bpmn", x)], actor=SYSTEM))
        rita = Actor("rita", frozenset({"staff"}), frozenset({"employee"}))
        server.db.command(lambda s, k=key, who=rita: start_instance(s, key=k, actor=who))


def _fits_the_width(page: Page) -> bool:
    return bool(page.evaluate("document.documentElement.scrollWidth <= window.innerWidth"))


def test_the_admin_adds_a_user_who_signs_in_and_sees_the_sla_overview(page: Page, server, console_errors,
                                                                      blocked_requests) -> None:
    _start_some_requests(server)
    _some_late_work(server)
    signed_in(page, server, "admin")
    expect(page).to_have_url(re.compile(r"/admin$"))
    page.locator(".admin-nav").get_by_role("link", name="Users").click()
    page.get_by_role("link", name="Add a user").click()
    page.get_by_label("User name").fill("bianca")
    page.get_by_label("Display name").fill("Bianca, finance")
    page.get_by_label("Role").select_option("employee")
    page.get_by_label("Groups").fill("staff, finance")
    page.get_by_label("Generate a password and show it once").check()
    page.get_by_role("button", name="Add the user").click()
    expect(page.get_by_text("The user is added.")).to_be_visible()
    password = page.locator("#generated-password").inner_text().strip()
    assert len(password) >= 16

    page.get_by_role("button", name="Sign out").click()
    page.get_by_label("User name").fill("bianca")
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("link", name="Bianca, finance")).to_be_visible()  # signed in as her
    page.goto("/admin/users")
    expect(page.get_by_role("heading", name="Not allowed")).to_be_visible()  # not an admin
    page.get_by_role("button", name="Sign out").click()
    console_errors.clear()  # the refusal above (and her home page, until the employee pages land) are logged

    signed_in(page, server, "admin", next_path="/admin/users")
    row = page.locator("tr", has=page.get_by_role("link", name="bianca", exact=True))
    expect(row).to_contain_text("Can sign in")
    expect(row).to_contain_text("finance, staff")
    screenshot(page, "admin-users", full_page=True)

    page.locator(".admin-nav").get_by_role("link", name="SLA").click()
    expect(page.get_by_role("heading", name="Service levels")).to_be_visible()
    expect(page.get_by_role("heading", name="By procedure and step")).to_be_visible()
    expect(page.locator("table").first).to_contain_text("procurement_approval")
    breach = page.locator("#breaches + p + .table-wrap tr", has_text="Check the delivery")
    expect(breach).to_contain_text("Open, overdue")
    expect(page.locator("tr", has_text="Check the invoice").locator(".badge.at_risk")).to_have_text("1")
    screenshot(page, "admin-sla", full_page=True)
    breach.get_by_role("link", name="Check the delivery").click()
    expect(page).to_have_url(re.compile(r"/instances/[0-9a-f-]+$"))  # the breach's instance (auditor's page)
    console_errors.clear()  # a 404 until the auditor's pages land
    page.goto("/admin/sla")
    page.get_by_label("Procedure").select_option("procurement_approval")
    page.get_by_role("button", name="Show").click()
    expect(page).to_have_url(re.compile(r"definition_key=procurement_approval"))
    expect(page.get_by_text("Check the delivery")).to_have_count(0)

    page.set_viewport_size(PHONE)
    for path in ("/admin", "/admin/users", "/admin/sla", "/admin/incidents", "/admin/users/bianca", "/notifications"):
        page.goto(path)
        assert _fits_the_width(page), f"{path} scrolls sideways at 390 px"
    page.goto("/admin/sla")
    screenshot(page, "admin-sla-phone", full_page=True)
    assert console_errors == [] and blocked_requests == []


def test_the_user_form_is_reachable_by_keyboard(page: Page, server) -> None:
    signed_in(page, server, "admin", next_path="/admin/add-user")
    page.get_by_label("User name").focus()
    order = []
    for _ in range(6):
        page.keyboard.press("Tab")
        order.append(page.evaluate("document.activeElement.id || document.activeElement.name"))
    assert order[:3] == ["display_name", "role", "group"], order
    assert "mode" in order  # the password choice follows
