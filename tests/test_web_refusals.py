"""The engine's refusals on the pages, in the user's language (issue 10).

Each test meets a real refusal twice: as a user whose pages are in Simplified Chinese (the
Chinese text with its parameters filled in, and not the English one), and as a user with
English pages (the English text, as the API writes it).
"""
from __future__ import annotations

import re
from pathlib import Path

from engine.config import Settings
from tests.web_helpers import PASSWORD, Web, csrf, make_web, post_login

PROCESSES = Path(__file__).resolve().parent.parent / "processes"
PROCUREMENT = (PROCESSES / "procurement_approval.bpmn").read_bytes()


def text_of(html: str) -> str:
    """The page's visible text, whitespace collapsed and entities undone (what a user reads)."""
    import html as html_lib

    html = re.sub(r"<(script|style)\b.*?</\1>", " ", html, flags=re.S)
    return html_lib.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html)))


class Browser:
    """One user's signed-in client in one language; form POSTs carry the CSRF token."""

    def __init__(self, web: Web, user: str, language: str) -> None:
        web.give_password(user)
        self.client = web.anonymous(**{"Accept-Language": language})
        assert post_login(self.client, user, PASSWORD).status_code == 303
        self.token = csrf(self.client)

    def get(self, path: str, **params: str):  # noqa: ANN201
        return self.client.get(path, params=params)

    def post(self, path: str, data: dict[str, str] | None = None, files=None):  # noqa: ANN001, ANN201
        return self.client.post(path, data={**(data or {}), "csrf_token": self.token}, files=files)


def zh(web: Web, user: str) -> Browser:
    return Browser(web, user, "zh-CN,zh;q=0.9")


def en(web: Web, user: str) -> Browser:
    return Browser(web, user, "en")


def deploy_procurement(web: Web) -> None:
    r = web.anonymous().post("/api/deployments", headers=web.api("dora"),
                             files=[("files", ("procurement_approval.bpmn", PROCUREMENT, "application/xml"))])
    assert r.status_code in (200, 201), r.text


def start(browser: Browser, key: str) -> str:
    """Start a purchase request from /start; the id of the starter's first task (the page lands on it)."""
    r = browser.post("/start/procurement_approval", {"business_key": key})
    assert r.status_code == 303 and r.headers["location"].startswith("/tasks/"), r.text
    return r.headers["location"].split("?")[0].rsplit("/", 1)[1]


def test_a_task_that_is_not_found_or_not_yours(web1):
    deploy_procurement(web1)
    rita, paul, paul_en = en(web1, "rita"), zh(web1, "paul"), en(web1, "paul")
    missing = paul.get("/tasks/no-such-task")
    assert missing.status_code == 404
    assert "未找到任务 no-such-task" in text_of(missing.text)
    assert "not found" not in text_of(missing.text)
    assert "task no-such-task not found" in text_of(paul_en.get("/tasks/no-such-task").text)
    task_id = start(rita, "PR-ZH-1")
    # another employee's task: not shown at all (404 as if absent), and claiming it is refused (403)
    assert f"未找到任务 {task_id}" in text_of(paul.get(f"/tasks/{task_id}").text)
    claim = paul.post(f"/tasks/{task_id}/claim")
    assert claim.status_code == 403
    assert "这不是您的任务：它已分配给他人，或未提供给您所在的组" in text_of(claim.text)
    assert "this task is not yours: it is assigned to someone else or not offered to your groups" in text_of(
        paul_en.post(f"/tasks/{task_id}/claim").text)


def test_attachments_too_large_or_of_a_refused_type(sqlite_db, clock):
    web = make_web(sqlite_db, Settings(max_attachment_bytes=1000))
    deploy_procurement(web)
    rita, rita_en = zh(web, "rita"), en(web, "rita")
    task_id = start(rita, "PR-ZH-2")
    big = rita.post(f"/tasks/{task_id}/attachments", files={"file": ("big.pdf", b"%PDF-1.4\n" + b"x" * 2000,
                                                                       "application/pdf")})
    assert big.status_code == 413
    assert "文件超过了 1000 字节的上限" in text_of(big.text)
    assert "the file is larger than the limit of 1000 bytes" in text_of(rita_en.post(
        f"/tasks/{task_id}/attachments", files={"file": ("big.pdf", b"x" * 2000, "application/pdf")}).text)
    exe = rita.post(f"/tasks/{task_id}/attachments", files={"file": ("tool.exe", b"MZ\x90\x00", "application/pdf")})
    assert exe.status_code == 415
    shown = text_of(exe.text)
    assert "“tool.exe”不是可接受的文件类型；可接受：" in shown and "is not an accepted type" not in shown
    fake = rita.post(f"/tasks/{task_id}/attachments", files={"file": ("evil.pdf", b"MZ\x90\x00", "application/pdf")})
    assert fake.status_code == 415
    assert "“evil.pdf”的内容与其 .pdf 扩展名不符；可接受：" in text_of(fake.text)
    blank = rita.post(f"/tasks/{task_id}/comments", {"message": "   "})
    assert blank.status_code == 422 and "评论内容为空；请至少写一个字符" in text_of(blank.text)
    assert "message is empty; write at least one character" in text_of(
        rita_en.post(f"/tasks/{task_id}/comments", {"message": "   "}).text)
    english = rita_en.post(f"/tasks/{task_id}/attachments", files={"file": ("evil.pdf", b"MZ\x90\x00", "x/y")})
    assert "the content of 'evil.pdf' does not match its .pdf extension; accepted:" in text_of(english.text)


def test_a_deploy_refusal_on_the_upload_page_is_shown_per_element(web1):
    broken = PROCUREMENT.replace(b'camunda:priority="60"', b'camunda:priority="urgent"')
    assert broken != PROCUREMENT
    for browser, expected in (
            (zh(web1, "dora"), "人工任务“manager_approval”：优先级“urgent”不是 -2147483648 到 2147483647 之间的整数"),
            (en(web1, "dora"), "user task 'manager_approval': priority 'urgent' is not an integer between -2147483648 "
                               "and 2147483647")):
        r = browser.client.post("/procedures/upload", data={"csrf_token": csrf(browser.client, "/procedures/upload")},
                                files=[("files", ("procurement_approval.bpmn", broken, "application/octet-stream"))])
        assert r.status_code == 422
        block = re.search(r'<li class="file has-problems" data-file="procurement_approval.bpmn">.*?</li>\s*</ul>',
                          r.text, re.S)
        assert block and 'data-element="manager_approval"' in block.group(0), text_of(r.text)
        assert expected in text_of(block.group(0))


def test_a_weak_password_on_the_admin_pages(web1):
    admin, admin_en = zh(web1, "admin"), en(web1, "admin")
    reset = admin.post("/admin/users/rita/password", {"mode": "set", "password": "short"})
    assert reset.status_code == 422 and 'id="password-error"' in reset.text
    assert "密码需要 8 到 1000 个字符" in text_of(reset.text)
    added = admin.post("/admin/add-user", {"name": "o lga", "role": "king", "mode": "set", "password": "x"})
    assert added.status_code == 422
    shown = text_of(added.text)
    assert "密码需要 8 到 1000 个字符" in shown and "角色必须是以下之一：" in shown
    assert "用户名“o lga”无效：请使用字母、数字" in shown and "a password needs" not in shown
    english = admin_en.post("/admin/users/rita/password", {"mode": "set", "password": "short"})
    assert "a password needs 8 to 1000 characters" in text_of(english.text)


def test_a_form_sent_for_a_task_that_is_already_completed(web1):
    deploy_procurement(web1)
    rita, rita_en = zh(web1, "rita"), en(web1, "rita")
    task_id = start(rita, "PR-ZH-3")
    page = rita.get(f"/tasks/{task_id}")
    assert page.status_code == 200
    values = {"item": "笔记本电脑", "amount": "1200", "justification": "旧的坏了"}
    assert rita.post(f"/tasks/{task_id}/complete", values).status_code == 303
    again = rita.post(f"/tasks/{task_id}/complete", values)  # the same form, sent a second time
    assert again.status_code == 409
    assert "任务“Submit the purchase request”已经是 completed 状态" in text_of(again.text)
    english = rita_en.post(f"/tasks/{task_id}/complete", values)
    assert english.status_code == 409
    assert "task 'Submit the purchase request' is already completed" in text_of(english.text)
    closed = rita.post(f"/tasks/{task_id}/comments", {"message": "还有一件事"})
    assert closed.status_code == 409
    assert "任务“Submit the purchase request”的状态是 completed：其评论和附件仍可查看，但只有在任务未完成时才能发表评论" \
        in text_of(closed.text)


def test_a_bad_filter_on_the_auditor_search(web1):
    audrey, audrey_en = zh(web1, "audrey"), en(web1, "audrey")
    r = audrey.get("/instances", var_name="amount", var_value="[[1]]")
    assert r.status_code == 422
    assert "变量筛选：该值在“[0]”处嵌套超过 1 层" in text_of(r.text)
    english = audrey_en.get("/instances", var_name="amount", var_value="[[1]]")
    assert "variable filter: the value at '[0]' is nested deeper than 1 levels" in text_of(english.text)



def test_webfix_refusals_in_chinese(web1):
    """The review fixes' refusals (docs/notes/webfix.md) on the Chinese pages: a user name taken in
    another case, an unknown password choice, an inbox filter, a missing version on the diff page."""
    admin, admin_en = zh(web1, "admin"), en(web1, "admin")
    taken = admin.post("/admin/add-user", {"name": "Rita", "role": "employee", "mode": "generate"})
    assert taken.status_code == 409 and 'id="name-error"' in taken.text
    shown = text_of(taken.text)
    assert "用户“rita”已存在；用户名之间不能只有大小写不同" in shown and "already exists" not in shown
    english = admin_en.post("/admin/add-user", {"name": "RITA", "role": "employee", "mode": "generate"})
    assert "user 'rita' already exists; user names must differ in more than upper and lower case" in \
        text_of(english.text)
    mode = admin.post("/admin/users/rita/password", {"mode": "bogus"})
    assert mode.status_code == 422 and "请选择一种密码设置方式。" in text_of(mode.text)
    rita = zh(web1, "rita")
    inbox = rita.get("/inbox", limit="500", due_from="2027-02-30")
    assert inbox.status_code == 422
    assert "请输入 1 到 100 之间的每页条数。" in text_of(inbox.text)
    assert "请按 YYYY-MM-DD 格式输入日期。" in text_of(inbox.text) and 'id="f-due_from-error"' in inbox.text
    deploy_procurement(web1)
    dora = zh(web1, "dora")
    diff = dora.get("/procedures/procurement_approval/diff", to="7")
    assert diff.status_code == 404
    assert "流程“procurement_approval”没有版本 7；它的版本为 1 到 1。" in text_of(diff.text)
