"""Bad input on the pages (and its JSON twin) gets a clear error beside the field and changes nothing.

The findings of the web application's fresh-user review (README, issue 10): Camunda ``long``
fields beyond 64 bits or in other digits, an unknown password mode, user names that differ
only in case, lone surrogates and over-long values in form posts, silently ignored inbox
filters, client paths in uploaded file names, diffs of versions that do not exist.
"""
from __future__ import annotations

import re
from urllib.parse import quote

import pytest
from sqlalchemy import func, select

from engine import identity, passwords
from engine.commands import SYSTEM
from engine.errors import Conflict
from engine.store.models import (
    AuditEventRow,
    BrowserSessionRow,
    DefinitionRow,
    DeploymentResourceRow,
    InstanceRow,
    UserRow,
)
from tests.helpers import snapshot
from tests.test_web_employee import PROCESSES, deploy, elements, open_task, sign_in, start_purchase, text_of
from tests.web_helpers import PASSWORD, post_login

LONG_MAX = 2**63 - 1
RANGE = "Enter a whole number between -9223372036854775808 and 9223372036854775807."
WHOLE = "Enter a whole number, like 12."
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


@pytest.fixture
def web(web):  # noqa: ANN001, ANN201 - conftest's, with the procedures of tests/test_web_employee.py
    deploy(web, "procurement_approval.bpmn", "budget_review.bpmn")
    return web


@pytest.fixture
def web1(web1):  # noqa: ANN001, ANN201 - idem, SQLite only
    deploy(web1, "procurement_approval.bpmn", "budget_review.bpmn")
    return web1


def field_error(html: str, name: str) -> str:
    found = re.search(rf'id="field-{name}-error">(.*?)</p>', html, re.S)
    assert found, f"no error beside {name}"
    return text_of(found.group(1)).strip().removeprefix("Error:").strip()  # a visually hidden "Error:" first


def typed(html: str, name: str) -> str | None:
    return next((a.get("value") for t, a in elements(html) if t == "input" and a.get("name") == name), None)


def audit_count(db) -> int:
    with db.read() as s:
        return s.scalar(select(func.count()).select_from(AuditEventRow)) or 0


# ------------------------------------------------------------------ 1. long, integer and number fields


def test_a_long_field_takes_ascii_digits_within_64_bits_and_nothing_else(web):
    rita = sign_in(web, "rita")
    task_id = start_purchase(rita)
    before = snapshot(web.db)
    for value, message in (("１２００", WHOLE), ("١٢٠٠", WHOLE), ("12\u0663", WHOLE), (str(LONG_MAX + 1), RANGE),
                           (str(-(2**63) - 1), RANGE), ("9" * 5000, RANGE)):
        r = rita.post(f"/tasks/{task_id}/complete", {"item": "Laptop", "amount": value, "justification": "old"})
        assert r.status_code == 422, value
        assert field_error(r.text, "amount") == message, value
        assert typed(r.text, "amount") == value  # what was typed is kept
    assert snapshot(web.db) == before
    r = rita.post(f"/tasks/{task_id}/complete", {"item": "Laptop", "amount": str(LONG_MAX), "justification": "old"})
    assert r.status_code == 303
    with web.db.read() as s:
        assert s.scalar(select(InstanceRow.variables))["amount"] == LONG_MAX


def test_the_api_refuses_the_same_long_values_naming_the_field(web):
    client, headers = web.anonymous(), web.api("rita")
    started = client.post("/api/process-definitions/procurement_approval/start", headers=headers,
                          json={"business_key": "PR-9"})
    assert started.status_code == 201, started.text
    task_id = started.json()["open_tasks"][0]["id"]
    before = snapshot(web.db)
    for value in (LONG_MAX + 1, -(2**63) - 1, 10**30, "１２", "١٢", str(LONG_MAX + 1), 1e19, True, 12.5):
        r = client.post(f"/api/tasks/{task_id}/complete", headers=headers,
                        json={"variables": {"item": "Laptop", "amount": value}})
        assert r.status_code == 422, value
        assert set(r.json()["errors"]) == {"amount"}, value
        if isinstance(value, int | float) and not isinstance(value, bool) and abs(value) > LONG_MAX:
            assert "between -9223372036854775808 and 9223372036854775807" in r.json()["errors"]["amount"]
    assert snapshot(web.db) == before
    ok = client.post(f"/api/tasks/{task_id}/complete", headers=headers,
                     json={"variables": {"item": "Laptop", "amount": str(-(2**63))}})
    assert ok.status_code == 200, ok.text


def test_a_form_files_integer_field_is_bounded_the_same_way(web):
    max_ = sign_in(web, "max")
    max_.post("/start/budget_review", {})
    carl = sign_in(web, "carl")
    task = open_task(web.db, "draft_budget")
    r = carl.post(f"/tasks/{task.id}/complete", {"total": str(LONG_MAX + 1)})
    assert r.status_code == 422 and field_error(r.text, "total") == RANGE
    r = carl.post(f"/tasks/{task.id}/complete", {"total": "１００"})
    assert r.status_code == 422 and field_error(r.text, "total") == WHOLE
    api = web.anonymous().post(f"/api/tasks/{task.id}/complete", headers=web.api("carl"),
                               json={"variables": {"total": 2**64}})
    assert api.status_code == 422 and "between" in api.json()["errors"]["total"]
    assert open_task(web.db, "draft_budget").id == task.id


def test_number_text_is_ascii_and_finite():
    from engine import forms as engine_forms
    from engine.errors import InvalidInput
    from web.forms import parse_submission

    form = {"schema": {"type": "object", "properties": {"rate": {"type": "number"}, "n": {"type": "integer"}}}}
    assert parse_submission(form, {"rate": "１.５"}).errors == {"rate": "Enter a number, like 12 or 12.5."}
    assert parse_submission(form, {"rate": "12345678901234567890123"}).values == {"rate": 1.2345678901234568e22}
    assert parse_submission(form, {"n": str(LONG_MAX + 1)}).errors == {"n": RANGE}
    assert parse_submission(form, {"n": "-0"}).values == {"n": 0}
    fields = [{"id": "rate", "type": "double"}, {"id": "price", "type": "decimal"}]
    for bad in ({"rate": "nan"}, {"rate": "1e400"}, {"rate": "١٫٥"}, {"price": "Infinity"}, {"price": "１２"}):
        with pytest.raises(InvalidInput) as refused:
            engine_forms.coerce_fields(fields, bad)
        assert set(refused.value.context["errors"]) == set(bad), bad
    assert engine_forms.coerce_fields(fields, {"rate": "-1.5e2", "price": "12.50"})["rate"] == -150.0


# ------------------------------------------------------------------ 2. the password mode


def test_an_unknown_password_mode_is_refused_naming_the_field_and_changes_nothing(web):
    web.give_password("rita")
    admin = sign_in(web, "admin")
    with web.db.read() as s:
        old_hash = s.scalar(select(UserRow.password_hash).where(UserRow.name == "rita"))
    events = audit_count(web.db)
    r = admin.post("/admin/users/rita/password", {"mode": "bogus"})
    assert r.status_code == 422
    assert "Choose one of the password options." in text_of(r.text)
    assert 'id="mode-error"' in r.text and 'id="generated-password"' not in r.text
    r = admin.post("/admin/add-user", {"name": "newbie", "role": "employee", "mode": "bogus", "password": "x" * 12})
    assert r.status_code == 422 and 'id="mode-error"' in r.text
    assert 'href="#new-mode"' in r.text and 'id="new-mode"' in r.text  # the summary links to the choice
    with web.db.read() as s:
        assert s.scalar(select(UserRow.password_hash).where(UserRow.name == "rita")) == old_hash
        assert s.scalar(select(UserRow.id).where(UserRow.name == "newbie")) is None
    assert audit_count(web.db) == events
    assert post_login(web.anonymous(), "rita", PASSWORD).status_code == 303  # her password still works


# ------------------------------------------------------------------ 3. user names and case


def test_user_names_must_differ_in_more_than_case(web):
    admin = sign_in(web, "admin")
    r = admin.post("/admin/add-user", {"name": "Rita", "role": "employee", "mode": "generate"})
    assert r.status_code == 409
    assert "user 'rita' already exists; user names must differ in more than upper and lower case" in text_of(r.text)
    api = web.anonymous().post("/api/users", headers=web.api("admin"), json={"name": "RITA", "role": "employee"})
    assert api.status_code == 409 and api.json()["field"] == "name"
    with pytest.raises(Conflict):
        web.db.command(lambda s: identity.add_user(s, name="MAX", role="employee", actor=SYSTEM))
    with web.db.read() as s:
        assert s.scalars(select(UserRow.name).where(func.lower(UserRow.name) == "rita")).all() == ["rita"]
    ok = web.anonymous().post("/api/users", headers=web.api("admin"), json={"name": "Rita.B", "role": "employee"})
    assert ok.status_code == 201 and ok.json()["name"] == "Rita.B"  # the case a user was added with is kept


def test_sign_in_takes_the_name_in_any_case_and_signs_in_that_user(web):
    web.give_password("rita")
    client = web.anonymous()
    r = post_login(client, "RiTa", PASSWORD)
    assert r.status_code == 303
    inbox = client.get("/inbox")
    assert inbox.status_code == 200
    with web.db.read() as s:
        rita_id = s.scalar(select(UserRow.id).where(UserRow.name == "rita"))
        assert s.scalars(select(BrowserSessionRow.user_id)).all() == [rita_id]
    assert post_login(web.anonymous(), "RITA", "wrong password").status_code == 401


def test_the_migration_keeps_existing_case_twins_and_lets_each_sign_in(db):
    """Users that differ only in case from before the rule: the oldest gets the name key, the others keep
    their rows unchanged (no key) and sign in with their exact name; no new spelling can be added."""
    from sqlalchemy import create_engine, insert, pool

    from engine import clock, migrate

    url = db.url
    db.dispose()
    migrate.downgrade(url, "e5a91c3d7f24")  # the revision before the rule
    engine = create_engine(url, poolclass=pool.NullPool)
    with engine.begin() as conn:  # only the columns that revision has
        for name in ("Zoe", "zoe", "ZOE"):
            conn.execute(insert(UserRow.__table__).values(name=name, role="employee", created_at=clock.now(),
                                                          failed_sign_ins=0))
    migrate.upgrade(url)
    with engine.connect() as conn:
        keys = dict(conn.exec_driver_sql("SELECT name, name_key FROM users WHERE lower(name) = 'zoe'").all())
    engine.dispose()
    assert keys == {"Zoe": "zoe", "zoe": None, "ZOE": None}
    for name in ("Zoe", "zoe"):
        db.command(lambda s, n=name: passwords.set_password(s, name=n, password=PASSWORD, actor=SYSTEM))
    for typed_name, signed_in in (("zoe", "zoe"), ("Zoe", "Zoe"), ("zOE", "Zoe")):
        result = db.command(lambda s, n=typed_name: passwords.sign_in(s, name=n, password=PASSWORD))
        assert result.actor is not None and result.actor.name == signed_in, typed_name
    with pytest.raises(Conflict):
        db.command(lambda s: identity.add_user(s, name="zOe", role="employee", actor=SYSTEM))


# ------------------------------------------------------------------ 4. lone surrogates in form posts


def test_a_lone_surrogate_in_a_form_post_is_refused_beside_its_field(web):
    rita = sign_in(web, "rita")
    task_id = start_purchase(rita)
    before = snapshot(web.db)
    body = f"csrf_token={rita.token}&item=Laptop&amount=12&justification=old%ED%A0%80one"
    r = rita.client.post(f"/tasks/{task_id}/complete", content=body, headers=FORM)
    assert r.status_code == 422
    assert field_error(r.text, "justification") == \
        "This text holds characters that are not valid Unicode; type it again."
    assert typed(r.text, "item") == "Laptop"
    r = rita.client.post("/start/procurement_approval", content=f"csrf_token={rita.token}&business_key=PR%ED%B0%80",
                         headers=FORM)
    assert r.status_code == 422 and "not valid Unicode" in text_of(r.text)
    r = rita.client.post(f"/tasks/{task_id}/comments", content=f"csrf_token={rita.token}&message=hi%ED%A0%80",
                         headers=FORM)
    assert r.status_code == 422 and "not valid Unicode" in text_of(r.text)
    assert snapshot(web.db) == before


def test_pages_without_field_errors_of_their_own_refuse_the_post_naming_the_field(web):
    admin = sign_in(web, "admin")
    events = audit_count(web.db)
    body = f"csrf_token={admin.token}&name=zed&role=employee&mode=generate&display_name=Z%ED%A0%80d"
    r = admin.client.post("/admin/add-user", content=body, headers=FORM)
    assert r.status_code == 422
    assert "The field “display_name” holds text that is not valid Unicode; nothing was changed." in text_of(r.text)
    assert audit_count(web.db) == events
    rita = sign_in(web, "rita")
    task_id = start_purchase(rita)
    before = snapshot(web.db)
    # multipart: Starlette would have read these bytes as Latin-1
    r = rita.client.post(f"/tasks/{task_id}/attachments", data={"csrf_token": rita.token, "description": b"d\xed\xa0\x80"},
                         files={"file": ("a.txt", b"hello", "text/plain")})
    assert r.status_code == 422 and "“description”" in text_of(r.text)
    assert snapshot(web.db) == before
    with web.db.read() as s:
        assert s.scalar(select(UserRow.id).where(UserRow.name == "zed")) is None


# ------------------------------------------------------------------ 5. inbox filters


@pytest.mark.parametrize(("query", "field", "message"), [
    ("sort=nonsense", "sort", "Choose an option from the list."),
    ("order=up", "order", "Choose an option from the list."),
    ("sla=late", "sla", "Choose an option from the list."),
    ("due_from=2027-99-99", "due_from", "Enter a date as YYYY-MM-DD."),
    ("due_until=9999-12-31", "due_until", "Enter a date between the years 1900 and 9998."),
    ("due_from=2027-03-02&due_until=2027-03-01", "due_until", "The end of the range is before its start."),
    ("min_priority=lots", "min_priority", "Enter a priority as a whole number, like 50."),
    ("min_priority=%EF%BC%95", "min_priority", "Enter a priority as a whole number, like 50."),
    ("q=a%00b", "q", "Enter text without control characters."),
    ("procedure=" + "p" * 201, "procedure", "Enter at most 200 characters."),
])
def test_the_inbox_answers_a_filter_it_cannot_use_beside_the_field(web1, query, field, message):
    max_ = sign_in(web1, "max")
    r = max_.get(f"/inbox?{query}")
    assert r.status_code == 422
    shown = re.search(rf'id="f-{field}-error">(.*?)</p>', r.text, re.S)
    assert shown and shown.group(1).strip() == message
    assert f'aria-describedby="f-{field}-error"' in r.text


def test_the_inbox_answers_a_bad_page_link_view_or_size_above_the_filters(web1):
    max_ = sign_in(web1, "max")
    for query, message in (("cursor=garbage", "This page link is out of date; start the search again."),
                           ("view=everything", "Choose an option from the list."),
                           ("limit=1000", "Enter a page size from 1 to 100.")):
        r = max_.get(f"/inbox?{query}")
        assert r.status_code == 422, query
        assert message in text_of(r.text), query
        assert "nonsense" not in r.text
    assert max_.get("/inbox?sort=created&order=desc&limit=5&due_from=2027-01-01").status_code == 200


def test_inbox_errors_are_translated(web1):
    web1.give_password("max")
    client = web1.anonymous(**{"Accept-Language": "zh-Hans"})
    assert post_login(client, "max", PASSWORD).status_code == 303
    r = client.get("/inbox?sort=nonsense")
    assert r.status_code == 422 and "请从列表中选择一项。" in r.text


# ------------------------------------------------------------------ 6. over-long values


def test_an_over_long_value_is_a_field_error_and_the_other_values_are_kept(web1):
    rita = sign_in(web1, "rita")
    task_id = start_purchase(rita)
    before = snapshot(web1.db)
    for size in (100_001, 1024 * 1024 + 10):  # past sopflow's field limit; past Starlette's 1 MiB part
        r = rita.post(f"/tasks/{task_id}/complete", {"item": "Laptop", "amount": "12", "justification": "j" * size})
        assert r.status_code == 422, size
        assert field_error(r.text, "justification") == "Enter at most 100,000 characters."
        assert typed(r.text, "item") == "Laptop" and typed(r.text, "amount") == "12"
    r = rita.post("/start/procurement_approval", {"business_key": "k" * 100_001})
    assert r.status_code == 422 and "Enter at most 100,000 characters." in text_of(r.text)
    r = rita.post(f"/tasks/{task_id}/comments", {"message": "m" * (1024 * 1024 + 1)})
    assert r.status_code == 422 and "Enter at most 100,000 characters." in text_of(r.text)
    r = rita.post(f"/tasks/{task_id}/comments", {"message": "m" * 5001})  # the engine's own limit
    assert r.status_code == 422 and "m" * 5001 + "</textarea>" in r.text  # the comment typed is kept
    assert snapshot(web1.db) == before
    admin = sign_in(web1, "admin")
    r = admin.post("/admin/add-user", {"name": "zed", "role": "employee", "groups": "g," * 60_000})
    assert r.status_code == 422 and "“groups”" in text_of(r.text)


# ------------------------------------------------------------------ 7. uploaded file names


def test_an_uploaded_diagram_is_stored_under_its_base_name(web):
    data = (PROCESSES / "budget_review.bpmn").read_bytes().replace(b"Yearly budget review", b"Budget review 2")
    dora = sign_in(web, "dora")
    r = dora.post("/procedures/upload", {}, files=[("files", ("../../evil/budget.bpmn", data, "application/xml"))])
    assert r.status_code == 201, r.text
    api = web.anonymous().post("/api/deployments", headers=web.api("dora"), files=[
        ("files", ("C:\\fakepath\\purchase.bpmn", (PROCESSES / "procurement_approval.bpmn").read_bytes()
                   .replace(b"Procurement approval", b"Purchase approval"), "application/xml"))])
    assert api.status_code == 201, api.text
    with web.db.read() as s:
        names = set(s.scalars(select(DeploymentResourceRow.name)))
        resources = set(s.scalars(select(DefinitionRow.resource_name)))
    assert {"budget.bpmn", "purchase.bpmn"} <= names and {"budget.bpmn", "purchase.bpmn"} <= resources
    assert not any("/" in n or "\\" in n for n in names | resources)
    long_name = "d" * 300 + ".bpmn"  # longer than the column: PostgreSQL refused it with a 500 before
    api = web.anonymous().post("/api/deployments", headers=web.api("dora"), files=[
        ("files", (long_name, data.replace(b"Budget review 2", b"Budget review 3"), "application/xml"))])
    assert api.status_code == 201, api.text
    assert api.json()["definitions"][0]["resource"] == "d" * 195 + ".bpmn"


# ------------------------------------------------------------------ 8. the diff of versions


def test_the_diff_of_a_version_that_does_not_exist_is_a_404_page(web1):
    dora = sign_in(web1, "dora")
    assert dora.get("/procedures/procurement_approval/diff").status_code == 200
    for query, version in (("from=7", "7"), ("to=9", "9"), ("from=1&to=3", "3"), ("from=0", "0"), ("to=-1", "-1"),
                           ("from=99999999999", "99999999999"), ("to=abc", "abc"), ("from=%EF%BC%91", "１")):
        r = dora.get(f"/procedures/procurement_approval/diff?{query}")
        assert r.status_code == 404, query
        assert f"Procedure “procurement_approval” has no version {version}; its versions are 1 to 1." \
            in text_of(r.text), query
    r = dora.get(f"/procedures/{quote('no_such')}/diff")
    assert r.status_code == 404


def test_a_form_with_too_many_fields_is_refused_in_the_users_language(web1):
    admin = sign_in(web1, "admin")
    events = audit_count(web1.db)
    body = f"csrf_token={admin.token}&name=zed&role=employee&mode=generate&" + "&".join(f"x{i}=1" for i in range(1000))
    r = admin.client.post("/admin/add-user", content=body, headers=FORM)
    assert r.status_code == 422
    assert "The form could not be read: the form has more than 1,000 fields" in text_of(r.text)
    r = admin.client.post("/admin/add-user", content=body, headers={**FORM, "Accept-Language": "zh-Hans"})
    assert r.status_code == 422 and "无法读取表单：表单的字段超过 1,000 个" in text_of(r.text)
    assert audit_count(web1.db) == events
    with web1.db.read() as s:
        assert s.scalar(select(UserRow.id).where(UserRow.name == "zed")) is None
