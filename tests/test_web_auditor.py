"""The auditor pages: instance search, the instance page (diagram markers, timeline, task records),
audit search, export and verification, each showing what its API twin returns to the same user."""
from __future__ import annotations

import html
import json
import re
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import update

from engine.store.models import AuditEventRow
from tests.web_helpers import csrf

PROCESSES = Path(__file__).resolve().parent.parent / "processes"


def _api(web, user, method, path, **kw):
    r = web.anonymous().request(method, path, headers=web.api(user), **kw)
    assert r.status_code < 300, r.text
    return r


def deploy(web):
    source = (PROCESSES / "procurement_approval.bpmn").read_bytes()
    _api(web, "dora", "POST", "/api/deployments",
         files=[("files", ("procurement_approval.bpmn", source, "application/xml"))])


def start(web, user, business_key, **variables):
    return _api(web, user, "POST", "/api/process-definitions/procurement_approval/start",
                json={"business_key": business_key, "variables": variables}).json()


def complete(web, user, instance_id, element_id, **variables):
    tasks = _api(web, "admin", "GET", f"/api/process-instances/{instance_id}").json()["open_tasks"]
    [task] = [t for t in tasks if t["element_id"] == element_id]
    if task["assignee"] != user:
        _api(web, user, "POST", f"/api/tasks/{task['id']}/claim")
    _api(web, user, "POST", f"/api/tasks/{task['id']}/complete", json={"variables": variables})
    return task["id"]


def attribute(page: str, name: str) -> list[str]:
    match = re.search(rf'{name}="([^"]*)"', page)
    assert match, name
    return json.loads(html.unescape(match.group(1)))


def listed(page: str) -> list[str]:
    """The instance ids a search page lists, in order."""
    return re.findall(r'<a href="/instances/([0-9a-f-]{36})">', page)


@pytest.fixture
def trail(web):
    """Two procurement requests: PR-2026-1 past the requester's step, PR-2026-2 just started (by max)."""
    deploy(web)
    first = start(web, "rita", "PR-2026-1", amount=100)
    complete(web, "rita", first["id"], "submit_request", item="Laptop", amount=1200, justification="old one broke")
    second = start(web, "max", "PR-2026-2", amount=50)
    return web, first["id"], second["id"]


def test_search_by_business_key_finds_the_instance_and_filters_narrow(trail, clock):
    web, first, second = trail
    audrey = web.sign_in("audrey")
    found = audrey.get("/instances", params={"business_key": "PR-2026-1"})
    assert found.status_code == 200 and listed(found.text) == [first]
    assert "PR-2026-1" in found.text and "Instances found: 1" in found.text
    everything = listed(audrey.get("/instances").text)
    assert set(everything) == {first, second}
    # each filter narrows the list to what the API lists for the same filter
    cases = [
        ({"started_by": "max"}, {"started_by": "max"}),
        ({"procedure": "procurement_approval", "state": "running"},
         {"definition_key": "procurement_approval", "status": "running"}),
        ({"state": "completed"}, {"status": "completed"}),
        ({"var_name": "amount", "var_value": "1200"}, {"variable": "amount_eq_1200"}),
        ({"var_name": "item", "var_value": "Laptop"}, {"variable": "item_eq_Laptop"}),
        ({"procedure": "no_such_procedure"}, {"definition_key": "no_such_procedure"}),
    ]
    for page_params, api_params in cases:
        shown = listed(audrey.get("/instances", params=page_params).text)
        api = _api(web, "admin", "GET", "/api/process-instances", params=api_params).json()["items"]
        assert shown == [i["id"] for i in api], page_params
    assert listed(audrey.get("/instances", params={"started_by": "max"}).text) == [second]
    assert listed(audrey.get("/instances", params={"var_name": "amount", "var_value": "1200"}).text) == [first]
    assert listed(audrey.get("/instances", params={"state": "completed"}).text) == []
    # the date range is calendar days in the user's zone: today finds both, yesterday none
    today = clock.now().date().isoformat()
    assert set(listed(audrey.get("/instances", params={"started_from": today, "started_to": today}).text)) \
        == {first, second}
    before = (clock.now().date() - timedelta(days=1)).isoformat()
    assert listed(audrey.get("/instances", params={"started_to": before}).text) == []


def test_search_form_errors_show_next_to_their_fields(trail):
    web, _first, _second = trail
    audrey = web.sign_in("audrey")
    bad_date = audrey.get("/instances", params={"started_from": "31/12/2026"})
    assert bad_date.status_code == 422
    assert 'id="f-started_from-error"' in bad_date.text and "YYYY-MM-DD" in bad_date.text
    for edge in ("0001-01-01", "9999-12-31"):
        r = audrey.get("/instances", params={"started_from": edge, "started_to": edge})
        assert r.status_code == 422 and "1900 and 9998" in r.text
        assert audrey.get("/audit", params={"from": edge}).status_code == 422
    backwards = audrey.get("/instances", params={"started_from": "2026-02-01", "started_to": "2026-01-01"})
    assert backwards.status_code == 422 and 'id="f-started_to-error"' in backwards.text
    bad_state = audrey.get("/instances", params={"state": "sleeping"})
    assert bad_state.status_code == 422 and 'id="f-state-error"' in bad_state.text
    bad_name = audrey.get("/instances", params={"var_name": "no such", "var_value": "1"})
    assert bad_name.status_code == 422 and 'id="f-var_name-error"' in bad_name.text
    bad_cursor = audrey.get("/instances", params={"cursor": "not-a-cursor"})
    assert bad_cursor.status_code == 422 and "out of date" in bad_cursor.text


def test_instance_page_shows_the_timeline_with_who_what_and_before_after(trail):
    web, first, _second = trail
    audrey = web.sign_in("audrey")
    page = audrey.get(f"/instances/{first}")
    assert page.status_code == 200
    text = page.text
    timeline = text[text.index('id="timeline-h"'):text.index('id="tasks-h"')]
    entries = re.split(r'<li id="event-\d+">', timeline)[1:]
    completed = next(e for e in entries if "Task completed" in e)
    assert '<strong class="who">rita</strong>' in completed
    assert "Submit the purchase request (submit_request)" in completed
    # before/after of each process variable the step changed
    rows = re.findall(r'<code>(\w+)</code></td>\s*<td data-label="Before" class="before">(.*?)</td>\s*'
                      r'<td data-label="After" class="after">(.*?)</td>', completed, re.S)
    assert ("amount", "100", "1,200") in rows
    assert ("item", '<span class="muted">(none)</span>', "Laptop") in rows
    started = next(e for e in entries if "Instance started" in e)
    assert '<strong class="who">rita</strong>' in started and "PR-2026-1" in started
    # the diagram: where it has been, where it waits (the same XML the API serves)
    assert 'data-xml-url="/instances/' + first + '/diagram.xml"' in text
    assert attribute(text, "data-completed") == ["request_raised", "submit_request", "flow_1", "flow_2"]
    assert attribute(text, "data-current") == ["manager_approval"]
    assert '<script src="/static/diagram-page.js" defer></script>' in text
    # task records with the SOP version they ran under
    records = text[text.index('id="tasks-h"'):]
    assert records.count('class="task-record"') == 2 and "procurement_approval v1" in records
    assert "SOP PR-1. Describe what you need" in records and "SOP PR-2. Check that the purchase" in records
    # the events are the API's history, in the same order
    history = _api(web, "audrey", "GET", f"/api/history/process-instances/{first}").json()
    assert [int(n) for n in re.findall(r'<li id="event-(\d+)">', text)] == [e["seq"] for e in history["events"]]


def test_the_diagram_marks_the_whole_path_of_an_ended_instance(trail):
    web, _first, second = trail
    complete(web, "max", second, "submit_request", item="Pens", amount=50)
    complete(web, "max", second, "manager_approval", manager_approved=False, manager_comment="not now")
    page = web.sign_in("audrey").get(f"/instances/{second}").text
    completed = attribute(page, "data-completed")
    assert set(completed) == {"request_raised", "flow_1", "submit_request", "flow_2", "manager_approval", "flow_3",
                              "manager_decision", "flow_manager_rejected", "rejected_merge", "flow_8",
                              "record_rejection", "flow_9", "rejected"}
    assert attribute(page, "data-current") == []
    assert "Instance completed" in page


def test_a_merge_is_reached_by_the_branch_that_arrived(trail):
    """Above 10,000 the manager's gateway goes to finance; the merge after it is reached from finance's
    gateway, not by the manager's direct branch (both gateways finished, only one flow was taken)."""
    web, _first, second = trail
    complete(web, "max", second, "submit_request", item="Server", amount=20000)
    complete(web, "max", second, "manager_approval", manager_approved=True)
    complete(web, "fiona", second, "finance_approval", finance_approved=True)
    page = web.sign_in("audrey").get(f"/instances/{second}").text
    completed = attribute(page, "data-completed")
    for element in ("manager_decision", "flow_manager_large", "finance_approval", "flow_4", "finance_decision",
                    "flow_finance_ok", "approved_merge", "flow_5"):
        assert element in completed
    assert "flow_manager_small" not in completed and "flow_manager_rejected" not in completed
    assert "place_order" not in completed
    assert attribute(page, "data-current") == ["place_order"]


def test_an_employee_sees_only_instances_they_may_see_and_no_audit(trail):
    web, first, second = trail
    rita, sam = web.sign_in("rita"), web.sign_in("sam")
    assert rita.get(f"/instances/{first}").status_code == 200  # she started it
    assert rita.get(f"/instances/{second}").status_code == 404  # max's: not hers, reads as absent
    assert _api_status(web, "rita", f"/api/history/process-instances/{second}") == 404
    assert sam.get(f"/instances/{first}").status_code == 404
    assert sam.get("/instances/no-such-instance").status_code == 404
    for path in ("/instances", "/audit", "/audit/verify", "/audit/export?format=csv"):
        assert sam.get(path).status_code == 403, path
    assert web.sign_in("dora").get(f"/instances/{first}").status_code == 403  # designers: as the API
    assert _api_status(web, "dora", f"/api/history/process-instances/{first}") == 403
    assert web.anonymous().get("/audit").status_code == 303  # signed out: to the sign-in page


def _api_status(web, user, path):
    return web.anonymous().get(path, headers=web.api(user)).status_code


def test_audit_search_filters_and_pages_like_the_api(trail):
    web, first, _second = trail
    audrey = web.sign_in("audrey")
    page = audrey.get("/audit", params={"instance": first})
    assert page.status_code == 200
    seqs = [int(n) for n in re.findall(r'<td data-label="No.">(\d+)</td>', page.text)]
    api = _api(web, "audrey", "GET", "/api/audit", params={"instance_id": first}).json()
    assert seqs == [e["seq"] for e in api["items"]] and len(seqs) >= 5
    by_action = audrey.get("/audit", params={"action": "task.completed", "actor": "rita"}).text
    assert re.findall(r'<td data-label="No.">(\d+)</td>', by_action) == [
        str(e["seq"]) for e in _api(web, "audrey", "GET", "/api/audit",
                                    params={"action": "task.completed", "actor": "rita"}).json()["items"]]
    assert "Events found: 1" in by_action
    # paging: 50 a page, the next page continues where the first ended
    for n in range(3):
        start(web, "fiona", f"PR-2026-{n + 10}", amount=n)
    whole = _api(web, "audrey", "GET", "/api/audit", params={"limit": 500}).json()
    assert whole["total"] > 50
    first_page = audrey.get("/audit").text
    next_url = html.unescape(re.search(r'<a class="button" href="([^"]+)" rel="next">', first_page).group(1))
    second_page = audrey.get(next_url).text
    shown = re.findall(r'<td data-label="No.">(\d+)</td>', first_page + second_page)
    assert [int(n) for n in shown] == [e["seq"] for e in whole["items"]][:len(shown)]
    assert "Showing 51–" in second_page
    bad = audrey.get("/audit", params={"from": "2026-13-01"})
    assert bad.status_code == 422 and 'id="f-from-error"' in bad.text


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_export_streams_what_the_api_exports(trail, fmt):
    web, first, _second = trail
    audrey = web.sign_in("audrey")
    page = audrey.get("/audit")
    link = html.unescape(re.search(rf'href="(/audit/export\?format={fmt})"', page.text).group(1))
    exported = audrey.get(link)
    assert exported.status_code == 200
    api = _api(web, "audrey", "GET", "/api/audit/export", params={"format": fmt})
    assert exported.content == api.content and len(exported.content) > 1000
    assert exported.headers["content-type"] == api.headers["content-type"]
    assert exported.headers["content-disposition"] == f'attachment; filename="sopflow-audit.{fmt}"'
    # with the page's filters, the export link carries them
    filtered = audrey.get("/audit", params={"instance": first, "action": "task.completed"}).text
    link = html.unescape(re.search(rf'href="(/audit/export\?[^"]*format={fmt})"', filtered).group(1))
    api = _api(web, "audrey", "GET", "/api/audit/export",
               params={"format": fmt, "instance_id": first, "action": "task.completed"})
    assert audrey.get(link).content == api.content
    assert api.content.count(b"task.completed") >= 1


def test_verify_shows_ok_and_then_where_the_trail_breaks(trail):
    web, first, _second = trail
    audrey = web.sign_in("audrey")
    api = _api(web, "audrey", "GET", "/api/audit/verify").json()
    page = audrey.get("/audit/verify").text
    assert api["ok"] and "OK: the trail is intact." in page
    assert f'<dd id="chains">{api["chains"]}</dd>' in page
    web.db.command(lambda s: s.execute(  # someone edits an event behind sopflow's back
        update(AuditEventRow).where(AuditEventRow.chain == first, AuditEventRow.chain_seq == 2)
        .values(actor="mallory")))
    broken = audrey.get("/audit/verify").text
    api = _api(web, "audrey", "GET", "/api/audit/verify").json()
    assert not api["ok"] and "The trail is broken." in broken
    assert f"<code>{first}</code>" in broken and api["reason"] in html.unescape(broken)


def test_the_pages_speak_chinese_and_show_times_in_the_users_zone(trail):
    web, first, _second = trail
    audrey = web.sign_in("audrey")
    r = audrey.post("/settings", data={"csrf_token": csrf(audrey), "locale": "zh-Hans",
                                       "time_zone": "Asia/Shanghai"})
    assert r.status_code == 303
    search = audrey.get("/instances", params={"business_key": "PR-2026-1"}).text
    assert "业务键" in search and "运行中" in search
    page = audrey.get(f"/instances/{first}").text
    assert "时间线" in page and "任务已完成" in page
    assert "17:00:00" in page  # 09:00 UTC (the test clock) is 17:00 in Shanghai
    assert "验证" in audrey.get("/audit/verify").text


def test_a_parallel_join_takes_every_branch_and_an_exclusive_merge_one():
    from engine.history import taken_flows
    from tests.bpmnkit import Bpmn

    xml = (Bpmn("p").start().parallel("split").user("a", "A").user("b", "B").parallel("join")
           .xor("choose").user("c", "C").xor("merge").end()
           .chain("start", "split").chain("split", "a", "join").chain("split", "b", "join")
           .chain("join", "choose").chain("choose", "c", "merge").chain("choose", "merge").chain("merge", "end").xml())
    order = {"start": 0, "split": 1, "b": 2, "a": 3, "join": 4, "choose": 5, "c": 6, "merge": 7}
    flows = taken_flows(xml, order, {"end"})
    ids = {(f.get("sourceRef"), f.get("targetRef")): f.get("id") for f in _flows(xml)}
    assert ids["a", "join"] in flows and ids["b", "join"] in flows  # a parallel join: both branches
    assert ids["c", "merge"] in flows and ids["choose", "merge"] not in flows  # the branch that arrived
    assert ids["merge", "end"] in flows  # into what waits now


def _flows(xml: bytes):
    from lxml import etree

    return etree.fromstring(xml).iter("{http://www.omg.org/spec/BPMN/20100524/MODEL}sequenceFlow")


def test_search_by_version_and_business_key_prefix(trail):
    web, first, second = trail
    audrey = web.sign_in("audrey")
    cases = [
        ({"business_key_prefix": "PR-2026-"}, {"business_key_prefix": "PR-2026-"}, {first, second}),
        ({"business_key_prefix": "PR-2026-2"}, {"business_key_prefix": "PR-2026-2"}, {second}),
        ({"version": "1", "procedure": "procurement_approval"},
         {"version": 1, "definition_key": "procurement_approval"}, {first, second}),
        ({"version": "2"}, {"version": 2}, set()),
    ]
    for page_params, api_params, expected in cases:
        shown = listed(audrey.get("/instances", params=page_params).text)
        api = _api(web, "audrey", "GET", "/api/process-instances", params=api_params).json()["items"]
        assert shown == [i["id"] for i in api] and set(shown) == expected, page_params
    bad = audrey.get("/instances", params={"version": "first"})
    assert bad.status_code == 422 and 'id="f-version-error"' in bad.text


def test_instance_page_lists_comments_and_attachments_and_downloads_them(trail):
    web, first, second = trail
    [task] = _api(web, "admin", "GET", f"/api/process-instances/{second}").json()["open_tasks"]
    _api(web, "max", "POST", f"/api/tasks/{task['id']}/comments", json={"message": "Quote attached.\nPens only."})
    attached = _api(web, "max", "POST", f"/api/tasks/{task['id']}/attachments",
                    files={"file": ("quote.txt", b"Pens: 50 EUR", "text/plain")}).json()
    audrey = web.sign_in("audrey")
    page = audrey.get(f"/instances/{second}").text
    notes = page[page.index('id="notes-h"'):page.index('id="variables-h"')]
    assert "Quote attached.\nPens only." in notes and '<strong class="who">max</strong>' in notes
    assert "quote.txt" in notes and attached["sha256"] in notes and "Submit the purchase request" in notes
    link = f"/instances/{second}/attachments/{attached['id']}"
    assert f'href="{link}"' in notes
    got = audrey.get(link)
    api = _api(web, "audrey", "GET", f"/api/attachments/{attached['id']}/content")
    assert got.status_code == 200 and got.content == api.content == b"Pens: 50 EUR"
    assert got.headers["content-disposition"] == api.headers["content-disposition"]
    assert got.headers["x-content-type-options"] == "nosniff"
    assert web.sign_in("max").get(link).status_code == 200  # his own instance
    assert web.sign_in("rita").get(link).status_code == 404  # not hers
    assert audrey.get(f"/instances/{first}/attachments/{attached['id']}").status_code == 404  # another instance
    assert "No attachments." in audrey.get(f"/instances/{first}").text
