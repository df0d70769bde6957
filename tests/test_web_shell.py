"""The web application's shell: sign-in with lockout, the session cookie, CSRF, sign-out, settings, languages."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from babel.messages.extract import extract_from_dir

from engine import browser_sessions, passwords
from engine.store.models import AuditEventRow
from tests.web_helpers import PASSWORD, csrf, hidden, post_login
from web import i18n


def test_a_page_without_a_session_sends_the_browser_to_sign_in_and_back(web1):
    client = web1.anonymous()
    r = client.get("/settings?x=1")
    assert r.status_code == 303 and r.headers["location"] == "/login?next=%2Fsettings%3Fx%3D1"
    assert client.get("/").headers["location"] == "/login"
    web1.give_password("rita")
    r = post_login(client, "rita", PASSWORD, next_path="/settings?x=1")
    assert r.status_code == 303 and r.headers["location"] == "/settings?x=1"
    cookie = r.headers["set-cookie"]
    assert "sopflow_session=" in cookie and "HttpOnly" in cookie and "SameSite=lax" in cookie
    assert client.get("/settings").status_code == 200
    assert client.get("/").headers["location"] == "/inbox"  # an employee's home


def test_sign_in_refuses_a_wrong_password_and_an_unknown_name_alike(web):
    client = web.anonymous()
    web.give_password("rita")
    wrong = post_login(client, "rita", "not the password")
    unknown = post_login(client, "nobody", "not the password")
    for r in (wrong, unknown):
        assert r.status_code == 401
        assert "The user name or password is wrong." in r.text
        assert "sopflow_session" not in r.headers.get("set-cookie", "")
    assert client.get("/settings").status_code == 303  # still signed out


def test_sign_in_needs_the_forms_own_token(web1):
    web1.give_password("rita")
    client = web1.anonymous()
    r = client.post("/login", data={"username": "rita", "password": PASSWORD, "login_token": "forged"})
    assert r.status_code == 403 and "expired" in r.text
    assert client.get("/settings").status_code == 303


def test_the_account_locks_after_five_failures_and_unlocks_after_a_quarter_hour(web, clock):
    web.give_password("max")
    client = web.anonymous()
    for _ in range(passwords.MAX_FAILURES):
        assert post_login(client, "max", "wrong password").status_code == 401
    r = post_login(client, "max", PASSWORD)  # the right password, but locked
    assert r.status_code == 401 and "locked" in r.text
    with web.db.read() as s:
        kinds = [e.action for e in s.query(AuditEventRow).filter(AuditEventRow.chain == "identity")]
    assert kinds.count("user.sign_in_failed") == passwords.MAX_FAILURES and "user.locked" in kinds
    clock.advance(passwords.LOCKOUT)
    assert post_login(client, "max", PASSWORD).status_code == 303
    with web.db.read() as s:
        assert s.query(AuditEventRow).filter(AuditEventRow.action == "user.signed_in").count() == 1


def test_sign_out_needs_csrf_and_ends_the_session_everywhere(web):
    client = web.sign_in("rita")
    old_cookie = client.cookies.get("sopflow_session")
    assert client.post("/logout").status_code == 403  # no CSRF token: refused, still signed in
    assert client.post("/logout", data={"csrf_token": "forged"}).status_code == 403
    assert client.get("/settings").status_code == 200
    r = client.post("/logout", data={"csrf_token": csrf(client)})
    assert r.status_code == 303 and r.headers["location"] == "/login"
    replay = web.anonymous()
    replay.cookies.set("sopflow_session", old_cookie)
    assert replay.get("/settings").status_code == 303  # the old cookie no longer works


def test_a_tampered_or_foreign_cookie_is_no_session(web1):
    client = web1.sign_in("rita")
    cookie = client.cookies.get("sopflow_session")
    token, _, signature = cookie.rpartition(".")
    forged = web1.anonymous()
    forged.cookies.set("sopflow_session", token[:-1] + ("A" if token[-1] != "A" else "B") + "." + signature)
    assert forged.get("/settings").status_code == 303
    unsigned = web1.anonymous()
    unsigned.cookies.set("sopflow_session", token)
    assert unsigned.get("/settings").status_code == 303


def test_an_expired_session_signs_out(web1, clock):
    client = web1.sign_in("rita")
    clock.advance(hours=web1.app.state.settings.session_hours, seconds=1)
    assert client.get("/settings").status_code == 303


def test_next_never_leaves_the_site(web1):
    web1.give_password("rita")
    for target in ("//evil.example/x", "https://evil.example/", "/\\evil.example"):
        r = post_login(web1.anonymous(), "rita", PASSWORD, next_path=target)
        assert r.headers["location"] == "/inbox"


def test_api_tokens_keep_working_and_a_session_cookie_is_not_an_api_credential(web1):
    client = web1.sign_in("rita")
    assert client.get("/api/tasks").status_code == 401
    assert web1.anonymous().get("/api/tasks", headers=web1.api("rita")).status_code == 200


def test_settings_choose_language_and_time_zone(web):
    client = web.sign_in("rita")
    bad = client.post("/settings", data={"csrf_token": csrf(client), "locale": "", "time_zone": "Mars/Olympus"})
    assert bad.status_code == 422 and 'id="time_zone-error"' in bad.text and "Mars/Olympus" in bad.text
    ok = client.post("/settings", data={"csrf_token": csrf(client), "locale": "zh-Hans", "time_zone": "Asia/Shanghai"})
    assert ok.status_code == 303
    page = client.get("/settings?saved=1")
    assert page.headers["content-language"] == "zh-Hans" and '<html lang="zh-Hans">' in page.text
    assert "设置已保存" in page.text and 'selected>Asia/Shanghai<' in page.text


def test_the_browser_language_decides_until_the_user_chooses(web1):
    assert "登录" in web1.anonymous(**{"Accept-Language": "zh-CN,zh;q=0.9,en;q=0.8"}).get("/login").text
    assert "登录" not in web1.anonymous(**{"Accept-Language": "de-DE,en;q=0.5"}).get("/login").text
    assert i18n.negotiate(None, "fr;q=0.9, zh-TW;q=0.8, en;q=0.1") == "zh-Hans"
    assert i18n.negotiate("en", "zh-CN") == "en"
    assert i18n.negotiate(None, "en;q=0, zh;q=0") == "en"


def test_pages_answer_errors_in_html_and_the_api_keeps_problem_json(web1):
    client = web1.sign_in("rita")
    page = client.get("/no-such-page")
    assert page.status_code == 404 and page.headers["content-type"].startswith("text/html")
    assert "Content-Security-Policy" in page.headers
    api = client.get("/api/no-such-thing", headers=web1.api("rita"))
    assert api.status_code == 404 and api.headers["content-type"] == "application/problem+json"


def test_the_session_signing_key_is_made_once_and_shared(db):
    first = db.command(browser_sessions.signing_key)
    assert first and db.command(browser_sessions.signing_key) == first


# ---------------------------------------------------------------- catalogs

WEB = Path(__file__).resolve().parent.parent / "web"
KEYWORDS = {"_": None, "gettext": None, "ngettext": (1, 2), "N_": None}
METHODS = [("**/templates/**.html", "jinja2"), ("**.py", "python")]


def test_every_string_of_every_page_has_a_chinese_translation():
    """Every msgid in web/ (templates and Python) is translated in some zh_Hans catalog, none fuzzy."""
    translated = {m.id[0] if isinstance(m.id, tuple) else m.id  # a plural is known by its singular
                  for _path, catalog in i18n.catalogs("zh-Hans") for m in catalog
                  if m.id and m.string and all(m.string if isinstance(m.string, tuple) else [m.string])
                  and not m.fuzzy}
    found = {}
    for filename, _line, message, _comments, _context in extract_from_dir(
            str(WEB), METHODS, keywords=KEYWORDS, options_map={"**/templates/**.html": {"extensions": "jinja2.ext.i18n"}}):
        msgid = message[0] if isinstance(message, tuple) else message
        found.setdefault(msgid, filename)
    assert len(found) > 35
    missing = {m: f for m, f in found.items() if m not in translated}
    assert not missing, f"untranslated strings (msgid: file): {missing}"


def test_every_template_string_is_marked_for_translation():
    """No bare words between tags in templates: visible text goes through gettext."""
    import re

    bare = []
    for path in (WEB / "templates").rglob("*.html"):
        text = re.sub(r"{#.*?#}|{%.*?%}|{{.*?}}|<script.*?</script>|<style.*?</style>", " ", path.read_text(),
                      flags=re.S)
        for chunk in re.findall(r">([^<]+)<", text):
            words = chunk.strip()
            if words and re.search(r"[A-Za-z]{2,}", words) and words not in ALLOWED_BARE:
                bare.append((path.relative_to(WEB).as_posix(), words))
    assert not bare, f"text not marked for translation: {bare}"


ALLOWED_BARE = {"sopflow", "· sopflow", "English", "UTC", "/docs", "SHA-256"}


def test_the_command_line_sets_passwords(tmp_path):
    env = {"SOPFLOW_DATA_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}
    run = [sys.executable, "-m", "api.cli"]
    assert subprocess.run([*run, "db", "upgrade"], env=env, capture_output=True).returncode == 0
    demo = subprocess.run([*run, "users", "demo"], env=env, capture_output=True, text=True)
    assert "Sign in at" in demo.stdout and "rita" in demo.stdout
    added = subprocess.run([*run, "users", "add", "zoe", "--role", "employee", "--password"], env=env,
                           input="a long enough secret\n", capture_output=True, text=True)
    assert added.returncode == 0 and "can sign in" in added.stdout
    short = subprocess.run([*run, "users", "password", "zoe"], env=env, input="short\n", capture_output=True,
                           text=True)
    assert short.returncode == 1 and "8 to 1000 characters" in short.stderr
    generated = subprocess.run([*run, "users", "password", "zoe", "--generate"], env=env, capture_output=True,
                               text=True)
    assert generated.returncode == 0 and generated.stdout.startswith("new password for zoe: ")


def test_hidden_helper_reads_the_csrf_field():
    assert hidden('<input type="hidden" name="csrf_token" value="abc">', "csrf_token") == "abc"


def test_diagram_sources_follow_the_apis_rules(web1):
    from tests.api_helpers import Api

    api = Api(web1.anonymous(), web1.db, web1.tokens)
    source = (Path(__file__).resolve().parent.parent / "processes" / "procurement_approval.bpmn").read_bytes()
    assert api.deploy("dora", ("procurement_approval.bpmn", source)).status_code == 201
    started = api.start("rita", "procurement_approval", variables={}, business_key="PR-9")
    instance = started.json()["id"]
    rita, sam = web1.sign_in("rita"), web1.sign_in("sam")
    page = rita.get(f"/instances/{instance}/diagram.xml")
    assert page.status_code == 200 and b"procurement_approval" in page.content
    assert page.content == api.get("rita", f"/api/process-instances/{instance}/xml").content
    assert sam.get(f"/instances/{instance}/diagram.xml").status_code == 404  # not his instance
    assert api.get("sam", f"/api/process-instances/{instance}/xml").status_code == 404
    assert rita.get("/procedures/procurement_approval/versions/1/diagram.xml").status_code == 403
    dora = web1.sign_in("dora")
    assert dora.get("/procedures/procurement_approval/versions/1/diagram.xml").status_code == 200
