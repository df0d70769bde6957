"""Across the roles in a real browser: an employee attaches a file that the auditor then sees, the
auditor finds the instance by business key and verifies the trail; and every page, in English and
Chinese, at 1280 px and on a 390 px phone: no untranslated string, no horizontal scrolling."""
from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from babel.messages.extract import extract_from_dir
from babel.messages.pofile import read_po
from playwright.sync_api import Browser, Page, expect

from tests.browser.conftest import VIEWPORT, LiveServer
from tests.browser.helpers import screenshot, signed_in

WEB = Path(__file__).resolve().parent.parent.parent / "web"
PDF = b"%PDF-1.4\n1 0 obj <<>> endobj\ntrailer <<>>\n%%EOF\n"


@pytest.fixture
def sign_in(chromium: Browser, server: LiveServer) -> Iterator:
    """``sign_in(user, width=1280, locale="en-US")``: a new context (own cookies and language) signed in."""
    contexts = []

    def open_as(user: str, width: int = VIEWPORT["width"], locale: str = "en-US") -> Page:
        context = chromium.new_context(viewport={"width": width, "height": 900}, base_url=server.base_url,
                                       locale=locale)
        contexts.append(context)
        page = context.new_page()
        if locale.startswith("zh"):  # the sign-in form then speaks Chinese: fill it by its ids
            page.goto("/login")
            page.locator("#username").fill(user)
            page.locator("#password").fill(server.passwords[user])
            page.locator("form button[type=submit]").click()
            expect(page.locator("header .me")).to_be_visible()
            return page
        return signed_in(page, server, user)

    yield open_as
    for context in contexts:
        context.close()


def test_an_attachment_uploaded_by_the_employee_is_seen_by_the_auditor_who_verifies_the_trail(sign_in, tmp_path):
    rita = sign_in("rita")
    rita.goto("/start")
    procurement = rita.locator("#p-procurement_approval")
    procurement.locator("summary").click()
    procurement.get_by_label("Business key (optional)").fill("PR-JOURNEY-7")
    procurement.get_by_role("button", name="Start Procurement approval").click()
    expect(rita.get_by_role("heading", name="Submit the purchase request")).to_be_visible()
    quote = tmp_path / "supplier-quote.pdf"
    quote.write_bytes(PDF)
    rita.get_by_label("Attach a file").set_input_files(str(quote))
    rita.get_by_label("Description (optional)").fill("the supplier's quote")
    rita.get_by_role("button", name="Upload").click()
    expect(rita.get_by_text("The file was attached.")).to_be_visible()
    expect(rita.get_by_role("link", name="supplier-quote.pdf")).to_be_visible()
    rita.get_by_label("Add a comment").fill("Quote attached.")
    rita.get_by_role("button", name="Add comment").click()
    expect(rita.get_by_text("Quote attached.", exact=True)).to_be_visible()
    screenshot(rita, "task-with-attachment", full_page=True)

    audrey = sign_in("audrey")
    audrey.goto("/instances")
    audrey.get_by_label("Business key", exact=True).fill("PR-JOURNEY-7")
    audrey.get_by_role("button", name="Search").click()
    audrey.get_by_role("link", name="PR-JOURNEY-7").click()
    expect(audrey.get_by_role("link", name="supplier-quote.pdf")).to_be_visible()
    expect(audrey.get_by_text("Quote attached.").first).to_be_visible()
    with audrey.expect_download() as download:
        audrey.get_by_role("link", name="supplier-quote.pdf").click()
    assert Path(download.value.path()).read_bytes() == PDF
    expect(audrey.locator(".bpmn-canvas")).to_have_attribute("data-state", "ready", timeout=15000)
    screenshot(audrey, "instance-timeline", full_page=True)
    audrey.goto("/audit")
    audrey.get_by_role("link", name="Verify the trail").click()
    expect(audrey.locator("#verdict")).to_have_text("OK: the trail is intact.")


def _msgids() -> set[str]:
    """Every English msgid of the pages with at least two words (single words may be data too)."""
    found = set()
    for _f, _l, message, _c, _x in extract_from_dir(
            str(WEB), [("**/templates/**.html", "jinja2"), ("**.py", "python")],
            keywords={"_": None, "gettext": None, "ngettext": (1, 2), "N_": None},
            options_map={"**/templates/**.html": {"extensions": "jinja2.ext.i18n"}}):
        for text in (message if isinstance(message, tuple) else (message,)):
            plain = re.sub(r"%\(\w+\)s", "", text).strip()
            if len(plain.split()) >= 2 and not re.search(r"[\u4e00-\u9fff]", plain):
                found.add(plain if "%(" not in text else re.split(r"%\(\w+\)s", text)[0].strip())
    # the engine's refusal templates (errors.po): each literal run between {placeholders}
    with (WEB / "locale" / "zh_Hans" / "LC_MESSAGES" / "errors.po").open("rb") as fh:
        for message in read_po(fh):
            if message.id:
                found.update(part.strip(" ;:,.()'\"") for part in re.split(r"\{[^{}]*\}", str(message.id)))
    return {m for m in found if len(m.split()) >= 2}


# (user, path) of every page a role uses; ``{instance}``/``{task}`` are filled from the first instance.
PAGES = [
    ("rita", "/inbox"), ("rita", "/start"), ("rita", "/requests"), ("rita", "/notifications"), ("rita", "/settings"),
    ("rita", "/tasks/{task}"),
    ("dora", "/procedures"), ("dora", "/procedures/procurement_approval"),
    ("dora", "/procedures/procurement_approval/versions/1"), ("dora", "/procedures/upload"),
    ("dora", "/procedures/procurement_approval/edit"),
    ("dora", "/procedures/procurement_approval/diff?from=1&to=1"),
    ("audrey", "/instances"), ("audrey", "/instances/{instance}"), ("audrey", "/audit"), ("audrey", "/audit/verify"),
    ("admin", "/admin"), ("admin", "/admin/users"), ("admin", "/admin/incidents"), ("admin", "/admin/sla"),
]
# Refusals (the engine's messages, issue 10): (user, path, status).
REFUSALS = [
    ("paul", "/tasks/{task}", 404),  # another employee's task
    ("rita", "/tasks/no-such-task", 404),
    ("audrey", "/instances?var_name=amount&var_value=[[1]]", 422),
]


@pytest.mark.parametrize("locale", ["en-US", "zh-CN"])
def test_every_page_in_both_languages_has_no_untranslated_string_and_fits_a_phone(sign_in, server, locale):
    rita = sign_in("rita", locale=locale)
    rita.goto("/start")
    rita.locator("#p-procurement_approval summary").click()
    rita.locator("#p-procurement_approval button[type=submit]").click()
    rita.wait_for_url(re.compile(r"/tasks/"))
    task = rita.url.split("/tasks/")[1].split("?")[0]
    instance = rita.locator(".bpmn-canvas").get_attribute("data-xml-url").split("/")[2]
    english = _msgids()
    pages: dict[str, Page] = {"rita": rita}
    problems = []
    english_seen: set[str] = set()  # on the English pages: proves the detector finds these strings
    for user, path, status in [(user, path, 200) for user, path in PAGES] + REFUSALS:
        for width in (VIEWPORT["width"], 390):
            key = f"{user}@{width}"
            if key not in pages:
                pages[key] = rita if (user, width) == ("rita", VIEWPORT["width"]) else sign_in(user, width, locale)
            page = pages[key]
            url = path.format(task=task, instance=instance)
            response = page.goto(url)
            assert response is not None and response.status == status, (url, response and response.status)
            overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
            if overflow > 0:
                problems.append(f"{url} at {width} px scrolls sideways by {overflow} px")
            if width == VIEWPORT["width"]:
                text = page.evaluate("document.body.innerText")
                left = sorted(m for m in english if m in text)
                if not locale.startswith("zh"):
                    english_seen.update(left)
                    continue
                assert page.locator("html").get_attribute("lang") == "zh-Hans"
                if left:
                    problems.append(f"{url}: English left in the Chinese page: {left}")
    assert not problems, "\n".join(problems)
    if not locale.startswith("zh"):
        assert len(english_seen) > 30, english_seen
