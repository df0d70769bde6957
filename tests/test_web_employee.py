"""The employee pages over HTTP with a signed-in session: inbox, task page, start, requests, notifications.

Each test signs demo users in through /login and drives the pages as a browser would (form
posts with the CSRF token), on SQLite and PostgreSQL, and checks what a user would see.
"""
from __future__ import annotations

import re
from datetime import timedelta
from html.parser import HTMLParser
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select

from engine.store.models import InstanceRow, TaskRow
from tests.web_helpers import Web, csrf
from web import i18n

PROCESSES = Path(__file__).resolve().parent.parent / "processes"


class Elements(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.found: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag, attrs):
        self.found.append((tag, dict(attrs)))


def elements(html: str) -> list[tuple[str, dict[str, str | None]]]:
    parser = Elements()
    parser.feed(html)
    return parser.found


def text_of(html: str) -> str:
    """The page's visible text, whitespace collapsed (what a user reads)."""
    html = re.sub(r"<(script|style)\b.*?</\1>", " ", html, flags=re.S)
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html)).replace("&#34;", '"').replace("&#39;", "'") \
        .replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">")


class Browser:
    """A signed-in user's client: GETs, and form POSTs that carry the session's CSRF token."""

    def __init__(self, web: Web, user: str) -> None:
        self.client = web.sign_in(user)
        self.token = csrf(self.client)

    def get(self, path: str):  # noqa: ANN201
        return self.client.get(path)

    def post(self, path: str, data: dict[str, str], *, csrf: bool = True, files=None):  # noqa: ANN001, ANN201
        return self.client.post(path, data={**data, **({"csrf_token": self.token} if csrf else {})}, files=files)


def sign_in(web: Web, user: str) -> Browser:
    return Browser(web, user)


def deploy(web: Web, *names: str) -> None:
    for name in names:
        r = web.anonymous().post("/api/deployments", headers=web.api("dora"),
                                 files=[("files", (name, (PROCESSES / name).read_bytes(), "application/xml"))])
        assert r.status_code in (200, 201), r.text


@pytest.fixture
def web(web: Web) -> Web:
    """conftest's ``web`` (SQLite and PostgreSQL: for what stores or queries) with the purchase and
    budget procedures deployed."""
    deploy(web, "procurement_approval.bpmn", "budget_review.bpmn")
    return web


@pytest.fixture
def web1(web1: Web) -> Web:
    """conftest's ``web1`` (SQLite only: for what concerns the page) with the same procedures."""
    deploy(web1, "procurement_approval.bpmn", "budget_review.bpmn")
    return web1


def start_purchase(rita: Browser, key: str = "PR-1") -> str:
    """Rita starts a purchase request from /start; returns her first task's id (she lands on it)."""
    r = rita.post("/start/procurement_approval", {"business_key": key})
    assert r.status_code == 303, r.text
    assert r.headers["location"].startswith("/tasks/")
    return r.headers["location"].split("?")[0].rsplit("/", 1)[1]


def submit_purchase(rita: Browser, task_id: str, amount: str = "1200") -> None:
    r = rita.post(f"/tasks/{task_id}/complete", {"item": "Laptop", "amount": amount, "justification": "old one"})
    assert r.status_code == 303 and r.headers["location"] == "/inbox?done=completed", r.text


def open_task(db, element_id: str) -> TaskRow:
    with db.read() as s:
        return s.scalars(select(TaskRow).where(TaskRow.element_id == element_id, TaskRow.state == "open")).one()


# ------------------------------------------------------------------ start, task page, complete


def test_start_lists_procedures_and_lands_on_my_first_task(web1):
    rita = sign_in(web1, "rita")
    page = rita.get("/start")
    assert page.status_code == 200
    assert "Procurement approval" in page.text and "Yearly budget review" in page.text
    task_id = start_purchase(rita)
    task = rita.get(f"/tasks/{task_id}?done=started")
    text = text_of(task.text)
    assert "Submit the purchase request" in text and "PR-1" in text
    assert "SOP PR-1. Describe what you need" in text  # the SOP step, rendered
    labels = {a.get("for") for t, a in elements(task.text) if t == "label"}
    assert {"field-item", "field-amount", "field-justification"} <= labels


def test_start_without_a_form_goes_to_my_requests_when_the_first_task_is_not_mine(web1):
    max_ = sign_in(web1, "max")
    r = max_.post("/start/budget_review", {"business_key": "BUD-2027"})
    assert r.status_code == 303 and r.headers["location"].startswith("/requests?done=started#r-")
    page = text_of(max_.get("/requests").text)
    assert "BUD-2027" in page and "Draft the budget" in page and "In progress" in page


def test_start_refusal_keeps_what_was_typed(web1):
    rita = sign_in(web1, "rita")
    r = rita.post("/start/procurement_approval", {"business_key": "x" * 201})
    assert r.status_code == 422
    assert "Enter at most 200 characters." in text_of(r.text)
    with web1.db.read() as s:
        assert s.scalar(select(InstanceRow.id)) is None  # nothing started
    assert rita.post("/start/no_such_procedure", {}).status_code == 404


def test_form_errors_are_shown_next_to_their_fields_and_nothing_is_stored(web):
    rita = sign_in(web, "rita")
    task_id = start_purchase(rita)
    r = rita.post(f"/tasks/{task_id}/complete", {"item": "", "amount": "lots", "justification": "because"})
    assert r.status_code == 422
    fields = {a["data-field"]: a for t, a in elements(r.text) if t == "div" and a.get("data-field")}
    assert "has-error" in fields["item"]["class"] and "has-error" in fields["amount"]["class"]
    assert "has-error" not in fields["justification"]["class"]
    item_error = re.search(r'id="field-item-error">(.*?)</p>', r.text, re.S).group(1)
    amount_error = re.search(r'id="field-amount-error">(.*?)</p>', r.text, re.S).group(1)
    assert "Enter a value; this field is required." in item_error
    assert "Enter a whole number, like 12." in amount_error
    inputs = {a.get("name"): a for t, a in elements(r.text) if t == "input"}
    assert inputs["justification"]["value"] == "because"  # what was typed is kept
    assert inputs["amount"]["aria-describedby"] == "field-amount-error"
    assert open_task(web.db, "submit_request").id == task_id  # still open: nothing stored


def test_engine_validation_errors_from_a_json_schema_form(web):
    max_ = sign_in(web, "max")
    max_.post("/start/budget_review", {})
    carl = sign_in(web, "carl")  # controllers draft the budget
    task = open_task(web.db, "draft_budget")
    page = carl.get(f"/tasks/{task.id}")
    assert page.status_code == 200
    total = next(a for t, a in elements(page.text) if t == "input" and a.get("name") == "total")
    assert (total["type"], total["min"], total["step"]) == ("number", "0", "1")
    assert any(t == "textarea" and a.get("name") == "notes" for t, a in elements(page.text))
    r = carl.post(f"/tasks/{task.id}/complete", {"total": "-5", "notes": "draft"})
    assert r.status_code == 422
    assert "Enter a number of at least 0." in re.search(r'id="field-total-error">(.*?)</p>', r.text, re.S).group(1)
    r = carl.post(f"/tasks/{task.id}/complete", {"total": "250000", "notes": "draft"})
    assert r.status_code == 303
    with web.db.read() as s:
        variables = s.scalar(select(InstanceRow.variables))
    assert variables["total"] == 250000 and variables["notes"] == "draft"


def test_manager_approves_from_the_inbox(web):
    rita = sign_in(web, "rita")
    submit_purchase(rita, start_purchase(rita), amount="1200")
    max_ = sign_in(web, "max")
    inbox = max_.get("/inbox")
    assert inbox.status_code == 200
    text = text_of(inbox.text)
    assert "Approve as manager" in text and "PR-1" in text and "On time" in text
    approval = open_task(web.db, "manager_approval")
    assert f'href="/tasks/{approval.id}"' in inbox.text
    page = max_.get(f"/tasks/{approval.id}")
    text = text_of(page.text)
    assert "Laptop" in text and "1200" in text  # the data the step shows
    assert any(t == "input" and a.get("type") == "checkbox" and a.get("name") == "manager_approved"
               for t, a in elements(page.text))
    canvas = next(a for t, a in elements(page.text) if t == "div" and "bpmn-canvas" in (a.get("class") or ""))
    assert canvas["data-current"] == '["manager_approval"]'
    assert canvas["data-xml-url"] == f"/instances/{approval.instance_id}/diagram.xml"
    assert max_.get(canvas["data-xml-url"]).text.startswith("<?xml")
    r = max_.post(f"/tasks/{approval.id}/complete", {"manager_approved": "true", "manager_comment": "ok"})
    assert r.status_code == 303
    assert open_task(web.db, "place_order").candidate_groups == ["procurement"]
    with web.db.read() as s:
        assert s.scalar(select(InstanceRow.variables))["manager_approved"] is True


def test_an_unchecked_box_is_false(web1):
    rita = sign_in(web1, "rita")
    submit_purchase(rita, start_purchase(rita))
    max_ = sign_in(web1, "max")
    approval = open_task(web1.db, "manager_approval")
    assert max_.post(f"/tasks/{approval.id}/complete", {"manager_comment": "no budget"}).status_code == 303
    with web1.db.read() as s:
        assert s.scalar(select(InstanceRow.variables))["manager_approved"] is False


def test_claim_and_release(web1):
    rita = sign_in(web1, "rita")
    submit_purchase(rita, start_purchase(rita))
    max_ = sign_in(web1, "max")
    approval = open_task(web1.db, "manager_approval")
    assert max_.post(f"/tasks/{approval.id}/claim", {}).headers["location"] == f"/tasks/{approval.id}?done=claimed"
    assert open_task(web1.db, "manager_approval").assignee == "max"
    mine = text_of(max_.get("/inbox?view=mine").text)
    assert "Approve as manager" in mine
    page = max_.get(f"/tasks/{approval.id}")
    assert f'action="/tasks/{approval.id}/unclaim"' in page.text
    assert max_.post(f"/tasks/{approval.id}/unclaim", {}).status_code == 303
    assert open_task(web1.db, "manager_approval").assignee is None


def test_another_employees_task_is_not_found(web):
    rita = sign_in(web, "rita")
    task_id = start_purchase(rita)
    paul = sign_in(web, "paul")
    instance_id = open_task(web.db, "submit_request").instance_id
    for r in (paul.get(f"/tasks/{task_id}"), paul.get(f"/instances/{instance_id}/diagram.xml"),
              paul.post(f"/tasks/{task_id}/complete", {"item": "x", "amount": "1"})):
        assert r.status_code == 404, r.text
        assert "Submit the purchase request" not in r.text
    # claiming answers as the JSON API does (the engine's command: 403), still showing nothing of the task
    claim = paul.post(f"/tasks/{task_id}/claim", {})
    assert claim.status_code == 403 and "Submit the purchase request" not in claim.text
    assert open_task(web.db, "submit_request").assignee == "rita"


def test_posts_need_the_csrf_token(web1):
    rita = sign_in(web1, "rita")
    task_id = start_purchase(rita)
    r = rita.post(f"/tasks/{task_id}/complete", {"item": "x", "amount": "1"}, csrf=False)
    assert r.status_code == 403
    assert open_task(web1.db, "submit_request").id == task_id


def test_pages_need_a_session(web1):
    r = web1.anonymous().get("/inbox")
    assert r.status_code == 303 and r.headers["location"].startswith("/login")


# ------------------------------------------------------------------ inbox


def test_inbox_filters_counts_sort_and_paging(web, clock):
    rita = sign_in(web, "rita")
    for n in range(3):
        submit_purchase(rita, start_purchase(rita, key=f"PR-{n}"))
        clock.advance(minutes=5)
    max_ = sign_in(web, "max")
    r = max_.get("/inbox?limit=2&sort=created&order=asc")
    names = re.findall(r'<dd>(PR-\d)</dd>', r.text)
    assert names == ["PR-0", "PR-1"]
    next_link = re.search(r'href="([^"]+)" rel="next"', r.text).group(1).replace("&amp;", "&")
    assert re.findall(r'<dd>(PR-\d)</dd>', max_.get(next_link).text) == ["PR-2"]
    desc = max_.get("/inbox?sort=created&order=desc")
    assert re.findall(r'<dd>(PR-\d)</dd>', desc.text) == ["PR-2", "PR-1", "PR-0"]
    assert re.findall(r'<dd>(PR-\d)</dd>', max_.get("/inbox?q=pr-1").text) == ["PR-1"]
    assert re.findall(r'<dd>(PR-\d)</dd>', max_.get("/inbox?procedure=budget_review").text) == []
    assert "No tasks match." in max_.get("/inbox?min_priority=61").text
    counts = dict(re.findall(r'>([^<>]+?) <span class="count">(\d+\+?)</span>', max_.get("/inbox").text))
    assert counts == {"All my work": "3", "Assigned to me": "0", "Offered to my groups": "3", "At risk": "0",
                      "Breached": "0"}
    clock.advance(days=3)  # manager approval is due in P2D
    web.clients.pop("max")  # the session has expired meanwhile: sign in again
    max_ = sign_in(web, "max")
    breached = max_.get("/inbox?sla=breached")
    assert re.findall(r'<dd>(PR-\d)</dd>', breached.text) == ["PR-0", "PR-1", "PR-2"]
    assert text_of(breached.text).count("Breached") >= 4  # the view and a badge per task
    # filters the inbox cannot use answer 422 beside their fields (tests/test_web_input.py), never a 500
    assert max_.get("/inbox?cursor=garbage&sort=nonsense&due_from=2027-99-99").status_code == 422
    assert max_.get("/inbox?q=a%00b&procedure=%00").status_code == 422  # PostgreSQL would refuse NUL


def test_inbox_due_filters_are_whole_days_in_my_time_zone(web1, clock):
    rita = sign_in(web1, "rita")
    submit_purchase(rita, start_purchase(rita))
    due = open_task(web1.db, "manager_approval").due_at
    # a zone where the due instant falls on another calendar day than in UTC
    zone = "Pacific/Kiritimati" if due.hour >= 10 else "Pacific/Pago_Pago"  # UTC+14 / UTC-11
    local_day = due.astimezone(ZoneInfo(zone)).date()
    assert local_day != due.date()
    max_ = sign_in(web1, "max")
    assert max_.post("/settings", {"locale": "en", "time_zone": zone}).status_code == 303
    inbox = max_.get(f"/inbox?due_from={local_day}&due_until={local_day}")
    assert "PR-1" in inbox.text
    assert "PR-1" not in max_.get(f"/inbox?due_from={due.date()}&due_until={due.date()}").text
    assert "PR-1" not in max_.get(f"/inbox?due_until={local_day - timedelta(days=1)}").text
    assert "PR-1" not in max_.get(f"/inbox?due_from={local_day + timedelta(days=1)}").text
    shown = re.search(r'<time datetime="[^"]+">([^<]+)</time>', inbox.text).group(1)
    assert shown == i18n.format_instant(due, zone) != i18n.format_instant(due, "UTC")  # shown in max's zone


# ------------------------------------------------------------------ notifications


def test_notifications_list_and_mark_read(web1):
    from engine import notifications
    from engine.config import Settings

    web1.db.command(lambda s: notifications.notify(s, event="task.breached", users=["rita"], settings=Settings(),
                                                  context={"task": {"name": "Pay the invoice", "id": "t1"}}))
    rita = sign_in(web1, "rita")
    page = rita.get("/notifications")
    assert page.status_code == 200 and "Pay the invoice" in page.text and "Mark all as read" in page.text
    ids = [a["value"] for t, a in elements(page.text) if t == "input" and a.get("name") == "id"]
    assert ids
    paul = sign_in(web1, "paul")
    paul.post("/notifications/read", {"id": ids[0]})  # someone else's: nothing changes
    assert "Mark all as read" in rita.get("/notifications").text
    assert rita.post("/notifications/read", {"id": ids[0]}).status_code == 303
    assert "Mark all as read" not in rita.get("/notifications").text


def test_pages_speak_chinese(web1):
    web1.give_password("rita")
    rita = Browser.__new__(Browser)
    rita.client = web1.sign_in("rita", **{"Accept-Language": "zh-CN,zh;q=0.9"})
    rita.token = csrf(rita.client)
    inbox = text_of(rita.get("/inbox").text)
    assert "收件箱" in inbox and "我的全部工作" in inbox and "All my work" not in inbox
    task_id = start_purchase(rita)
    r = rita.post(f"/tasks/{task_id}/complete", {"item": "笔记本电脑", "amount": "很多"})
    assert r.status_code == 422
    assert "请输入整数，例如 12。" in text_of(r.text) and "出现问题" in text_of(r.text)
    assert "发起申请" in text_of(rita.get("/start").text)


LEAVE = b"""<?xml version="1.0" encoding="UTF-8"?>
<bpmn:definitions xmlns:bpmn="http://www.omg.org/spec/BPMN/20100524/MODEL"
  xmlns:camunda="http://camunda.org/schema/1.0/bpmn" id="defs" targetNamespace="http://sopflow.dev/test">
  <bpmn:process id="leave" name="Leave request" isExecutable="true">
    <bpmn:startEvent id="start">
      <bpmn:extensionElements>
        <camunda:formData>
          <camunda:formField id="kind" label="Kind of leave" type="enum">
            <camunda:value id="annual" name="Annual leave"/>
            <camunda:value id="sick" name="Sick leave"/>
          </camunda:formField>
          <camunda:formField id="first_day" label="First day" type="date">
            <camunda:validation><camunda:constraint name="required"/></camunda:validation>
          </camunda:formField>
          <camunda:formField id="days" label="Days" type="long"/>
          <camunda:formField id="urgent" label="Urgent" type="boolean"/>
        </camunda:formData>
      </bpmn:extensionElements>
    </bpmn:startEvent>
    <bpmn:sequenceFlow id="f1" sourceRef="start" targetRef="check"/>
    <bpmn:userTask id="check" name="Check the leave request" camunda:assignee="${initiator}"/>
    <bpmn:sequenceFlow id="f2" sourceRef="check" targetRef="end"/>
    <bpmn:endEvent id="end"/>
  </bpmn:process>
</bpmn:definitions>
"""


def test_a_start_form_is_rendered_parsed_and_checked_by_the_engine(web1):
    r = web1.anonymous().post("/api/deployments", headers=web1.api("dora"),
                              files=[("files", ("leave.bpmn", LEAVE, "application/xml"))])
    assert r.status_code == 201, r.text
    rita = sign_in(web1, "rita")
    page = rita.get("/start")
    controls = {a.get("name"): (t, a) for t, a in elements(page.text) if t in ("input", "select")
                and (a.get("id") or "").startswith("field-")}
    assert controls["kind"][0] == "select" and controls["first_day"][1]["type"] == "date"
    assert controls["days"][1]["type"] == "number" and controls["urgent"][1]["type"] == "checkbox"
    assert '<option value="sick">Sick leave</option>' in page.text
    refused = rita.post("/start/leave", {"kind": "sick", "days": "2"})
    assert refused.status_code == 422
    assert "Enter a value; this field is required." in re.search(
        r'id="field-first_day-error">(.*?)</p>', refused.text, re.S).group(1)
    assert 'value="2"' in refused.text  # what was typed is kept
    assert re.search(r'id="p-leave".*?<details( open)?>', refused.text, re.S).group(1) == " open"
    r = rita.post("/start/leave", {"kind": "sick", "days": "2", "first_day": "2027-03-01"})
    assert r.status_code == 303 and r.headers["location"].startswith("/tasks/")
    with web1.db.read() as s:
        variables = s.scalar(select(InstanceRow.variables).where(InstanceRow.definition_key == "leave"))
    assert variables["kind"] == "sick" and variables["days"] == 2 and variables["urgent"] is False
    assert str(variables["first_day"]).startswith("2027-03-01")


def test_comments_and_attachments_on_the_task_page(web):
    """Rita comments and attaches a PDF; the page lists both, the download is the same bytes with the
    API's headers, refusals show beside their field with the API's status and store nothing."""
    import hashlib

    rita = sign_in(web, "rita")
    task_id = start_purchase(rita, "PR-NOTES")
    assert rita.post(f"/tasks/{task_id}/comments", {"message": "   "}).status_code == 422
    r = rita.post(f"/tasks/{task_id}/comments", {"message": "Quote attached, see PDF"})
    assert r.status_code == 303 and r.headers["location"].endswith("?done=commented#comments")
    pdf = b"%PDF-1.4\n1 0 obj <<>> endobj\ntrailer <<>>\n%%EOF\n"
    r = rita.post(f"/tasks/{task_id}/attachments", {"description": "supplier quote"},
                  files={"file": ("quote.pdf", pdf, "application/pdf")})
    assert r.status_code == 303, r.text
    fake = rita.post(f"/tasks/{task_id}/attachments", {}, files={"file": ("evil.pdf", b"MZ\x90\x00", "application/pdf")})
    assert fake.status_code == 415 and 'id="attachment-file-error"' in fake.text
    none = rita.post(f"/tasks/{task_id}/attachments", {})
    assert none.status_code == 422 and "Choose a file to attach." in text_of(none.text)
    page = rita.get(f"/tasks/{task_id}")
    shown = text_of(page.text)
    assert "Quote attached, see PDF" in shown and "quote.pdf" in shown and "supplier quote" in shown
    assert hashlib.sha256(pdf).hexdigest() in shown and "evil.pdf" not in shown
    link = re.search(rf'href="(/tasks/{task_id}/attachments/[^"]+)"', page.text).group(1)
    download = rita.get(link)
    assert download.status_code == 200 and download.content == pdf
    assert download.headers["content-type"] == "application/pdf"
    assert download.headers["content-disposition"].startswith("attachment;")
    listed = web.anonymous().get(f"/api/tasks/{task_id}/attachments", headers=web.api("rita")).json()["items"]
    assert [a["name"] for a in listed] == ["quote.pdf"]  # the page and the API agree
    paul = sign_in(web, "paul")
    assert paul.get(link).status_code == 404  # not his task
    assert paul.post(f"/tasks/{task_id}/comments", {"message": "hi"}).status_code == 404
    assert rita.post(f"/tasks/{task_id}/comments", {"message": "x"}, csrf=False).status_code == 403


def test_inbox_date_filters_at_the_calendars_edges_are_refused_not_a_server_error(web1):
    """The day after 9999-12-31 or the UTC midnight of 0001-01-01 cannot be computed: such a day is
    refused beside its field, as the auditor pages refuse it (ISO 8601's basic form is a date too)."""
    rita = sign_in(web1, "rita")
    for query in ("due_until=9999-12-31", "due_from=0001-01-01", "due_until=0001-01-01"):
        r = rita.get(f"/inbox?{query}")
        assert r.status_code == 422 and "Enter a date between the years 1900 and 9998." in r.text, query
    assert rita.get("/inbox?due_from=20260101").status_code == 200
