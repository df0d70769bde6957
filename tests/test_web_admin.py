"""The administrator's pages and the notifications page, over HTTP on SQLite and PostgreSQL."""
from __future__ import annotations

import re

from sqlalchemy import select

from engine import notifications, passwords
from engine.commands import external_tasks as ext
from engine.commands import start_instance
from engine.config import Settings
from engine.store.models import AuditEventRow, IncidentRow, TaskRow
from engine.worker import run_once
from tests.bpmnkit import Bpmn
from tests.helpers import ALICE, deploy_xml, open_tasks
from tests.test_external_tasks import WORKER, fetch, one_service
from tests.web_helpers import PASSWORD, csrf, make_web, post_login

SETTINGS = Settings(smtp_host="", webhook_url="")
PAGES = ("/admin", "/admin/users", "/admin/add-user", "/admin/users/rita", "/admin/incidents", "/admin/sla")


def _identity_actions(db) -> list[str]:
    with db.read() as s:
        return list(s.scalars(select(AuditEventRow.action).where(AuditEventRow.chain == "identity")
                              .order_by(AuditEventRow.chain_seq)))


def _user(web, name: str) -> dict:
    r = web.anonymous().get(f"/api/users/{name}", headers=web.api("admin"))
    assert r.status_code == 200, r.text
    return r.json()


def _post(client, path: str, data: dict | None = None, csrf_from: str = "/notifications"):
    return client.post(path, data={"csrf_token": csrf(client, csrf_from), **(data or {})})


def test_every_admin_page_renders_for_the_admin_and_is_refused_to_others(web):
    admin, rita, audrey = web.sign_in("admin"), web.sign_in("rita"), web.sign_in("audrey")
    assert admin.get("/").headers["location"] == "/admin"  # an admin's home
    for path in PAGES:
        page = admin.get(path)
        assert page.status_code == 200, (path, page.text)
        assert 'aria-label="Administration"' in page.text and "Content-Security-Policy" in page.headers
        for other in (rita, audrey):
            refused = other.get(path)
            assert refused.status_code == 403 and "needs the admin role" in refused.text, path
        assert web.anonymous().get(path).status_code == 303
    # a form of the admin pages posted by a non-admin changes nothing
    r = _post(rita, "/admin/users/rita/role", {"role": "admin"})
    assert r.status_code == 403 and _user(web, "rita")["role"] == "employee"
    assert "user.role_changed" not in _identity_actions(web.db)
    # without the CSRF token even the admin is refused
    assert admin.post("/admin/users/rita/role", data={"role": "auditor"}).status_code == 403
    assert _user(web, "rita")["role"] == "employee"


def test_the_overview_counts_and_the_user_list_shows_sign_in_state(web1):
    admin = web1.sign_in("admin")
    page = admin.get("/admin").text
    assert re.search(r'<span class="value">16</span>\s*<span class="label">users', page)  # the demo organisation
    users = admin.get("/admin/users").text
    rita_row = re.search(r'<a href="/admin/users/rita">rita</a>.*?</tr>', users, re.S)
    assert rita_row and "No password" in rita_row.group(0) and "Employee" in rita_row.group(0)
    admin_row = re.search(r'<a href="/admin/users/admin">admin</a>.*?</tr>', users, re.S)
    assert admin_row and "Can sign in" in admin_row.group(0)
    _post(admin, "/settings", {"locale": "zh-Hans", "time_zone": ""})
    assert "用户" in admin.get("/admin/users").text and "可以登录" in admin.get("/admin/users").text


def test_add_a_user_with_a_generated_password_who_then_signs_in(web):
    admin = web.sign_in("admin")
    r = _post(admin, "/admin/add-user", {"name": "nina", "display_name": "Nina, new hire", "role": "employee",
                                          "groups": "staff, finance", "mode": "generate"})
    assert r.status_code == 200 and "The user is added." in r.text
    shown = re.search(r'id="generated-password">([^<]+)</code>', r.text)
    assert shown, r.text
    password = shown.group(1)
    assert admin.get("/admin/users/nina").text.count(password) == 0  # shown once, never again
    nina = web.anonymous()
    signed_in = post_login(nina, "nina", password)
    assert signed_in.status_code == 303 and signed_in.headers["location"] == "/inbox"
    assert _user(web, "nina") == {
        "id": "nina", "name": "nina", "role": "employee", "groups": ["finance", "staff"],
        "display_name": "Nina, new hire", "can_sign_in": True, "locked_until": None, "live_tokens": 0}
    assert _identity_actions(web.db)[-3:] == ["user.created", "user.password_set", "user.signed_in"]


def test_adding_a_user_refuses_bad_input_next_to_the_field_and_writes_nothing(web):
    admin = web.sign_in("admin")
    before = _identity_actions(web.db)
    short = _post(admin, "/admin/add-user", {"name": "olga", "role": "employee", "mode": "set", "password": "short"})
    assert short.status_code == 422 and 'id="password-error"' in short.text and "8 to 1000 characters" in short.text
    assert 'value="olga"' in short.text  # what was typed stays
    bad_name = _post(admin, "/admin/add-user", {"name": "o lga", "role": "employee", "mode": "none"})
    assert bad_name.status_code == 422 and 'id="name-error"' in bad_name.text
    several = _post(admin, "/admin/add-user", {"name": "o lga", "role": "king", "mode": "set", "password": "x"})
    assert several.status_code == 422  # every bad field is named at once, each next to its field
    assert all(f'id="{field}-error"' in several.text for field in ("name", "role", "password"))
    bad_group = _post(admin, "/admin/add-user", {"name": "olga", "role": "employee", "groups": "ok, b/ad",
                                                  "mode": "none"})
    assert bad_group.status_code == 422 and 'id="group-error"' in bad_group.text
    long_name = _post(admin, "/admin/add-user", {"name": "olga", "role": "employee", "display_name": "O" * 201,
                                                  "mode": "none"})
    assert long_name.status_code == 422 and 'id="display_name-error"' in long_name.text
    taken = _post(admin, "/admin/add-user", {"name": "rita", "role": "employee", "mode": "generate"})
    assert taken.status_code == 409 and "already exists" in taken.text
    assert _identity_actions(web.db) == before
    assert web.anonymous().get("/api/users/olga", headers=web.api("admin")).status_code == 404
    chosen = _post(admin, "/admin/add-user", {"name": "olga", "role": "auditor", "mode": "set",
                                               "password": "olga's own secret"})
    assert chosen.status_code == 303 and chosen.headers["location"] == "/admin/users/olga?done=added"
    assert post_login(web.anonymous(), "olga", "olga's own secret").headers["location"] == "/instances"


def test_change_role_and_groups_and_the_last_admin_keeps_the_role(web):
    admin, rita = web.sign_in("admin"), web.sign_in("rita")
    r = _post(admin, "/admin/users/rita/role", {"role": "auditor"})
    assert r.status_code == 303 and r.headers["location"] == "/admin/users/rita?done=role"
    assert "The role is changed." in admin.get(r.headers["location"]).text
    assert rita.get("/").headers["location"] == "/instances"  # her session follows the new role at once
    r = _post(admin, "/admin/users/rita/groups", {"groups": "staff\nauditors ,  finance"})
    assert r.status_code == 303
    assert _user(web, "rita")["groups"] == ["auditors", "finance", "staff"]
    last = _post(admin, "/admin/users/admin/role", {"role": "employee"})
    assert last.status_code == 409 and "only admin" in last.text
    assert _user(web, "admin")["role"] == "admin"
    bad = _post(admin, "/admin/users/rita/role", {"role": "king"})
    assert bad.status_code == 422 and 'id="role-error"' in bad.text
    assert _post(admin, "/admin/users/nobody/role", {"role": "employee"}).status_code == 404
    actions = _identity_actions(web.db)
    assert actions.count("user.role_changed") == 1 and actions.count("user.groups_changed") == 1


def test_a_locked_account_is_shown_and_unlocked_by_the_admin(web):
    admin = web.sign_in("admin")
    web.give_password("max")
    for _ in range(passwords.MAX_FAILURES):
        assert post_login(web.anonymous(), "max", "wrong password").status_code == 401
    assert "locked" in post_login(web.anonymous(), "max", PASSWORD).text
    assert _user(web, "max")["locked_until"] is not None
    page = admin.get("/admin/users/max").text
    assert "Locked until" in page and 'action="/admin/users/max/unlock"' in page
    r = _post(admin, "/admin/users/max/unlock")
    assert r.status_code == 303 and r.headers["location"] == "/admin/users/max?done=unlocked"
    assert "The account is not locked." in admin.get("/admin/users/max").text
    assert post_login(web.anonymous(), "max", PASSWORD).status_code == 303
    again = _post(admin, "/admin/users/max/unlock")  # nothing to unlock: said so, nothing audited
    assert again.headers["location"] == "/admin/users/max?done=not_locked"
    assert _identity_actions(web.db).count("user.unlocked") == 1


def test_resetting_a_password_shows_it_once_and_signs_the_user_out(web):
    admin, rita = web.sign_in("admin"), web.sign_in("rita")
    r = _post(admin, "/admin/users/rita/password", {"mode": "generate"})
    assert r.status_code == 200
    password = re.search(r'id="generated-password">([^<]+)</code>', r.text).group(1)
    assert rita.get("/settings").status_code == 303  # her browser session ended
    assert post_login(web.anonymous(), "rita", PASSWORD).status_code == 401
    assert post_login(web.anonymous(), "rita", password).status_code == 303
    chosen = _post(admin, "/admin/users/rita/password", {"mode": "set", "password": "short"})
    assert chosen.status_code == 422 and "8 to 1000 characters" in chosen.text
    assert post_login(web.anonymous(), "rita", password).status_code == 303  # unchanged by the refusal
    assert "user.sessions_ended" in _identity_actions(web.db)


def test_revoking_tokens_stops_the_api_at_once(web1):
    admin = web1.sign_in("admin")
    api = web1.anonymous()
    assert api.get("/api/tasks", headers=web1.api("rita")).status_code == 200
    assert "1 API token is in use." in admin.get("/admin/users/rita").text
    r = _post(admin, "/admin/users/rita/tokens/revoke")
    assert r.status_code == 303 and r.headers["location"] == "/admin/users/rita?done=revoked"
    assert api.get("/api/tasks", headers=web1.api("rita")).status_code == 401
    assert "0 API tokens are in use." in admin.get("/admin/users/rita").text


def test_an_incident_is_listed_and_retried(web):
    db = web.db
    deploy_xml(db, one_service())
    db.command(lambda s: start_instance(s, key="invoice", actor=ALICE))
    [task] = fetch(db)
    db.command(lambda s: ext.failure(s, task_id=task.id, worker_id="w1", actor=WORKER, error_message="SMTP down",
                                     retries=0))
    admin = web.sign_in("admin")
    page = admin.get("/admin/incidents")
    assert "External task failed" in page.text and "SMTP down" in page.text and "1 incident" in page.text
    assert re.search(r'<span class="value">1</span>\s*<span class="label">open incident', admin.get("/admin").text)
    [incident_id] = re.findall(r'action="/admin/incidents/([^/]+)/retry"', page.text)
    refused = _post(web.sign_in("rita"), f"/admin/incidents/{incident_id}/retry", {"retries": "2"})
    assert refused.status_code == 403
    r = _post(admin, f"/admin/incidents/{incident_id}/retry", {"retries": "2"})
    assert r.status_code == 303 and r.headers["location"] == "/admin/incidents?done=retried"
    with db.read() as s:
        incident = s.get(IncidentRow, incident_id)
        assert (incident.resolution, incident.resolved_by) == ("retried", "admin")
    [again] = fetch(db)
    assert again.retries == 2
    assert "No incidents" in admin.get("/admin/incidents").text
    resolved = admin.get("/admin/incidents?state=resolved").text
    assert "Resolved" in resolved and "SMTP down" in resolved
    twice = _post(admin, f"/admin/incidents/{incident_id}/retry")
    assert twice.status_code == 409 and "already resolved" in twice.text
    assert admin.get("/admin/incidents?state=bogus").status_code == 422


def test_the_clock_page_is_not_there_unless_clock_control_is_on(web1):
    admin = web1.sign_in("admin")
    assert admin.get("/admin/clock").status_code == 404
    assert _post(admin, "/admin/clock", {"advance": "PT1H"}).status_code == 404
    assert 'href="/admin/clock"' not in admin.get("/admin").text


def test_advancing_the_clock_moves_a_task_into_breach_on_the_sla_page(db, clock):
    web = make_web(db, Settings(clock_control=True))
    with web.anonymous():  # runs the app's start-up: the controlled clock
        admin, rita = web.sign_in("admin"), web.sign_in("rita")
        xml = Bpmn("sla").start().user("work", "Check the invoice", props={
            "assignee": "sam", "dueDate": "PT10H"}).end().chain("start", "work", "end").xml()
        deploy_xml(db, xml)
        db.command(lambda s: start_instance(s, key="sla", actor=ALICE))
        page = admin.get("/admin/clock")
        assert page.status_code == 200 and 'href="/admin/clock"' in page.text
        assert rita.get("/admin/clock").status_code == 403
        sla_page = admin.get("/admin/sla").text
        assert "Check the invoice" in sla_page and "No breaches." in sla_page
        bad = _post(admin, "/admin/clock", {"advance": "soon"})
        assert bad.status_code == 422 and 'id="advance-error"' in bad.text and 'value="soon"' in bad.text
        r = _post(admin, "/admin/clock", {"advance": "PT11H"})
        assert r.status_code == 303 and r.headers["location"] == "/admin/clock?done=clock"
        assert "39,600" in admin.get("/admin/clock").text  # 11 hours in seconds
        run_once(db, settings=SETTINGS)
        with db.read() as s:
            task = s.scalars(select(TaskRow).where(TaskRow.element_id == "work")).one()
        assert task.sla_state == "breached"
        sla_page = admin.get("/admin/sla").text
        assert '<span class="badge breached">1</span>' in sla_page
        assert f'href="/instances/{task.instance_id}">Check the invoice</a>' in sla_page
        assert re.search(r'<span class="value">1</span>\s*<span class="label"><span class="badge breached">',
                         admin.get("/admin").text)
        back = _post(admin, "/admin/clock", {"set": "2026-01-01T09:00"})
        assert back.status_code == 422 and "only moves forward" in back.text
        later = _post(admin, "/admin/clock", {"set": "2026-02-01T09:00"})
        assert later.status_code == 303
        assert admin.get("/api/admin/clock", headers=web.api("admin")).json()["now"].startswith("2026-02-01T09:00")
        with db.read() as s:
            moves = s.scalars(select(AuditEventRow.action).where(AuditEventRow.chain == "clock")).all()
        assert moves == ["clock.moved", "clock.moved"]  # the refused moves left no trace
        assert open_tasks(db, task.instance_id)


def _notify(db, user: str, name: str, task_id: str | None = None) -> None:
    db.command(lambda s: notifications.notify(s, event="task.breached", users=[user], settings=SETTINGS,
                                              task_id=task_id, context={"task": {"name": name, "due_at": "noon"}}))


def test_notifications_list_link_and_mark_read(web):
    _notify(web.db, "sam", "Answer the complaint", task_id="t-1")
    _notify(web.db, "sam", "Call the customer")
    _notify(web.db, "rita", "Someone else's task")
    sam = web.sign_in("sam")
    page = sam.get("/notifications").text
    assert '<span class="badge count" title="unread">2</span>' in page  # the header's badge
    assert '<a href="/tasks/t-1">Task overdue: Answer the complaint</a>' in page
    assert "Call the customer" in page and "Someone else" not in page
    ids = re.findall(r'name="id" value="([^"]+)"', page)
    assert len(ids) == 2
    rita_id = web.anonymous().get("/api/notifications", headers=web.api("rita")).json()["items"][0]["id"]
    r = _post(sam, "/notifications/read", {"id": [ids[0], rita_id]})
    assert r.status_code == 303 and r.headers["location"] == "/notifications?done=read"
    unread = sam.get("/notifications?unread=true").text
    assert len(re.findall(r'name="id" value=', unread)) == 1
    assert web.anonymous().get("/api/notifications?unread=true", headers=web.api("rita")).json()["items"]
    r = _post(sam, "/notifications/read-all")
    assert r.status_code == 303
    assert "No unread notifications." in sam.get("/notifications?unread=true").text
    assert 'title="unread"' not in sam.get("/notifications").text
    assert sam.post("/notifications/read-all").status_code == 403  # no CSRF token
    api = web.anonymous().post("/api/notifications/read-all", headers=web.api("rita"))
    assert api.json() == {"marked": 1}


def test_the_api_twins_do_what_the_pages_do(web):
    c, h = web.anonymous(), web.api("admin")
    r = c.post("/api/users", headers=h, json={"name": "pia", "role": "employee", "generate_password": True})
    assert r.status_code == 201 and r.json()["can_sign_in"] is True
    assert post_login(web.anonymous(), "pia", r.json()["password"]).status_code == 303
    both = c.post("/api/users", headers=h, json={"name": "pio", "role": "employee", "password": "long enough secret",
                                                 "generate_password": True})
    assert both.status_code == 422 and both.json()["field"] == "password"
    several = c.post("/api/users", headers=h, json={"name": "p io", "role": "king", "password": "x"})
    assert several.status_code == 422 and set(several.json()["problems"]) == {"name", "role", "password"}
    assert c.get("/api/users/pio", headers=h).status_code == 404
    assert c.put("/api/users/pia/role", headers=h, json={"role": "auditor"}).json()["role"] == "auditor"
    assert c.put("/api/users/admin/role", headers=h, json={"role": "auditor"}).status_code == 409
    assert c.put("/api/users/pia/password", headers=h, json={"password": "pia's new secret"}).json() == {
        "password": None}
    assert c.put("/api/users/pia/password", headers=h, json={}).status_code == 422
    for _ in range(passwords.MAX_FAILURES):
        post_login(web.anonymous(), "pia", "wrong password")
    assert c.get("/api/users/pia", headers=h).json()["locked_until"] is not None
    assert c.post("/api/users/pia/unlock", headers=h).json() == {"unlocked": True}
    assert c.post("/api/users/pia/unlock", headers=h).json() == {"unlocked": False}
    assert post_login(web.anonymous(), "pia", "pia's new secret").status_code == 303
