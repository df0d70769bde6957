"""Comments and attachments on tasks: who may add and read them, the file limits, the audit trail."""
from __future__ import annotations

import hashlib
import io
import json
import zipfile

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from api.app import create_app
from engine import uploads
from engine.config import Settings
from engine.errors import InvalidInput, UnsupportedType
from engine.store.models import AttachmentRow, AuditEventRow, CommentRow
from tests.api_helpers import Api
from tests.bpmnkit import Bpmn

# review (offered to managers) -> archive (offered to managers) -> end
FLOW = (Bpmn("notes").start().user("review", "Review", props={"candidateGroups": "managers"})
        .user("archive", "Archive", props={"candidateGroups": "managers"}).end()
        .chain("start", "review", "archive", "end"))
PDF = b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n"
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 32


@pytest.fixture
def flow(api):
    assert api.deploy("dora", ("notes.bpmn", FLOW.xml())).status_code == 201
    r = api.start("rita", "notes", business_key="N-1")  # rita starts; the review is the managers' (max)
    assert r.status_code == 201, r.text
    return api, r.json()["id"], r.json()["open_tasks"][0]["id"]


def _comment(api: Api, user: str, task: str, message: str):
    return api.post(user, f"/api/tasks/{task}/comments", json={"message": message})


def _attach(api: Api, user: str, task: str, name: str, data: bytes, description: str | None = None,
            content_type: str = "application/octet-stream"):
    form = {"description": description} if description is not None else None
    return api.post(user, f"/api/tasks/{task}/attachments", files={"file": (name, data, content_type)}, data=form)


def _rows(api: Api, model) -> int:
    with api.db.read() as s:
        return s.scalar(select(func.count()).select_from(model)) or 0


def _events(api: Api, instance: str, action: str) -> list[dict]:
    with api.db.read() as s:
        rows = s.scalars(select(AuditEventRow).where(AuditEventRow.chain == instance, AuditEventRow.action == action)
                         .order_by(AuditEventRow.chain_seq))
        return [{"task_id": e.task_id, "actor": e.actor, **json.loads(e.payload)} for e in rows]


def _verified(api: Api) -> dict:
    r = api.get("audrey", "/api/audit/verify")
    assert r.status_code == 200, r.text
    return r.json()


# ------------------------------------------------------------------ comments


def test_comments_are_added_listed_audited_and_kept_after_completion(flow):
    api, instance, task = flow
    r = _comment(api, "max", task, "  Checked the quote against the framework contract.\n")
    assert r.status_code == 201, r.text
    created = r.json()
    assert created["message"] == "Checked the quote against the framework contract."  # trimmed
    assert created["author"] == "max" and created["task_id"] == task and created["instance_id"] == instance
    assert _comment(api, "max", task, "Second thought: fine.").status_code == 201

    listed = api.get("max", f"/api/tasks/{task}/comments").json()
    assert [c["message"] for c in listed["items"]] == ["Checked the quote against the framework contract.",
                                                       "Second thought: fine."]
    assert listed["total"] == 2
    # the instance's starter sees the instance, so its comments; the auditor and the admin read them too
    for reader in ("rita", "audrey", "admin"):
        r = api.get(reader, f"/api/process-instances/{instance}/comments")
        assert r.status_code == 200, (reader, r.text)
        assert [c["id"] for c in r.json()["items"]][0] == created["id"]

    events = _events(api, instance, "task.comment_added")
    assert [(e["task_id"], e["actor"], e["message"]) for e in events] == [
        (task, "max", "Checked the quote against the framework contract."), (task, "max", "Second thought: fine.")]
    assert events[0]["comment_id"] == created["id"]
    with api.db.read() as s:  # each row knows its event's place in the chain (the lists' order)
        places = {c.id: c.audit_seq for c in s.scalars(select(CommentRow))}
        chain = {json.loads(e.payload)["comment_id"]: e.chain_seq for e in s.scalars(
            select(AuditEventRow).where(AuditEventRow.action == "task.comment_added"))}
    assert places == chain and len(places) == 2
    assert _verified(api)["ok"] is True

    assert api.post("max", f"/api/tasks/{task}/complete", json={"variables": {}}).status_code == 200
    r = _comment(api, "max", task, "too late")
    assert r.status_code == 409 and "completed" in r.json()["detail"]
    assert _rows(api, CommentRow) == 2 and len(_events(api, instance, "task.comment_added")) == 2
    # still readable by whoever completed it, and by the auditor
    assert len(api.get("max", f"/api/tasks/{task}/comments").json()["items"]) == 2
    assert len(api.get("audrey", f"/api/tasks/{task}/comments").json()["items"]) == 2
    assert _verified(api)["ok"] is True


def test_a_comment_on_a_cancelled_task_is_a_conflict(flow):
    api, instance, task = flow
    assert api.post("rita", f"/api/process-instances/{instance}/cancel", json={"reason": "no"}).status_code == 200
    r = _comment(api, "admin", task, "hello")
    assert r.status_code == 409 and "cancelled" in r.json()["detail"]
    assert _rows(api, CommentRow) == 0


@pytest.mark.parametrize("message, why", [
    ("", "message"), ("   \n ", "empty"), ("x" * 5001, "message"), ("a\x00b", "U+0000"),
    ("evil\u202etxt.exe", "U+202E"),
])
def test_a_bad_comment_is_refused_and_nothing_is_written(flow, message, why):
    api, instance, task = flow
    before = len(_events(api, instance, "task.comment_added"))
    r = _comment(api, "max", task, message)
    assert r.status_code == 422, r.text
    assert why in r.text
    assert _rows(api, CommentRow) == 0 and len(_events(api, instance, "task.comment_added")) == before


def test_a_comment_of_5000_characters_is_accepted(flow):
    api, _, task = flow
    assert _comment(api, "max", task, "é" * 5000).status_code == 201


def test_who_cannot_see_the_task_gets_404_not_403(flow):
    api, instance, task = flow
    assert _comment(api, "max", task, "a note").status_code == 201
    assert _attach(api, "max", task, "quote.pdf", PDF).status_code == 201
    attachment = api.get("max", f"/api/tasks/{task}/attachments").json()["items"][0]["id"]
    # fiona (finance) is not offered the managers' task and had no part in the instance
    for method, path in [
        ("GET", f"/api/tasks/{task}"),  # the rule the others follow
        ("GET", f"/api/tasks/{task}/comments"), ("GET", f"/api/tasks/{task}/attachments"),
        ("GET", f"/api/process-instances/{instance}/comments"),
        ("GET", f"/api/process-instances/{instance}/attachments"),
        ("GET", f"/api/attachments/{attachment}/content"),
    ]:
        r = api.client.request(method, path, headers=api.h("fiona"))
        assert r.status_code == 404, (path, r.status_code, r.text)
        assert task not in r.json()["detail"] or path.startswith("/api/tasks")  # a download names no task
    assert _comment(api, "fiona", task, "hi").status_code == 404
    assert _attach(api, "fiona", task, "x.pdf", PDF).status_code == 404
    assert _rows(api, CommentRow) == 1 and _rows(api, AttachmentRow) == 1
    # a task assigned to someone else is out of sight too (even for a candidate), as in the inbox
    api.post("admin", "/api/users", json={"name": "mona", "role": "employee", "groups": ["managers"]})
    api.tokens["mona"] = api.post("admin", "/api/users/mona/tokens").json()["token"]
    assert api.get("mona", f"/api/tasks/{task}/comments").status_code == 200
    assert api.post("max", f"/api/tasks/{task}/claim").status_code == 200
    assert api.get("mona", f"/api/tasks/{task}/comments").status_code == 404
    assert _comment(api, "mona", task, "mine?").status_code == 404
    # the starter sees the instance (its lists and the file) but not the managers' task itself
    assert api.get("rita", f"/api/tasks/{task}/comments").status_code == 404
    assert api.get("rita", f"/api/attachments/{attachment}/content").status_code == 200
    # auditors read, never write
    assert api.get("audrey", f"/api/tasks/{task}/attachments").status_code == 200
    assert api.get("audrey", f"/api/attachments/{attachment}/content").status_code == 200
    assert _comment(api, "audrey", task, "audit note").status_code == 403
    assert api.get("dora", f"/api/tasks/{task}/comments").status_code == 403  # designers read neither


def test_an_unknown_task_or_attachment_is_404(flow):
    api, _, _ = flow
    assert _comment(api, "admin", "nope", "x").status_code == 404
    assert _attach(api, "admin", "nope", "a.pdf", PDF).status_code == 404
    assert api.get("admin", "/api/attachments/nope/content").status_code == 404
    assert api.get("admin", "/api/process-instances/nope/attachments").status_code == 404


# ------------------------------------------------------------------ attachments


def test_an_attachment_is_stored_with_its_sha256_served_safely_and_audited(flow):
    api, instance, task = flow
    r = _attach(api, "max", task, "Quote 2026.pdf", PDF, description="the supplier's quote", content_type="text/html")
    assert r.status_code == 201, r.text
    meta = r.json()
    assert meta["name"] == "Quote 2026.pdf" and meta["size"] == len(PDF)
    assert meta["sha256"] == hashlib.sha256(PDF).hexdigest()
    assert meta["content_type"] == "application/pdf"  # from the checked extension, not the client's text/html
    assert meta["uploaded_by"] == "max" and meta["description"] == "the supplier's quote"

    listed = api.get("max", f"/api/tasks/{task}/attachments").json()
    assert listed["items"] == [meta] and listed["total"] == 1
    assert api.get("audrey", f"/api/process-instances/{instance}/attachments").json()["items"] == [meta]

    r = api.get("audrey", f"/api/attachments/{meta['id']}/content")
    assert r.status_code == 200
    assert r.content == PDF and hashlib.sha256(r.content).hexdigest() == meta["sha256"]
    assert r.headers["content-type"] == "application/pdf"
    assert r.headers["content-disposition"].startswith("attachment;")
    assert 'filename="Quote 2026.pdf"' in r.headers["content-disposition"]
    assert r.headers["x-content-type-options"] == "nosniff"

    [event] = _events(api, instance, "task.attachment_added")
    assert event["task_id"] == task and event["actor"] == "max"
    assert (event["name"], event["size"], event["sha256"], event["attachment_id"]) == (
        "Quote 2026.pdf", len(PDF), meta["sha256"], meta["id"])
    assert _verified(api)["ok"] is True


def test_a_non_ascii_name_survives_the_download_header(flow):
    api, _, task = flow
    meta = _attach(api, "max", task, "报价单.txt", "数量,单价\n3,100\n".encode()).json()
    assert meta["name"] == "报价单.txt" and meta["content_type"] == "text/plain; charset=utf-8"
    r = api.get("max", f"/api/attachments/{meta['id']}/content")
    assert "filename*=UTF-8''%E6%8A%A5%E4%BB%B7%E5%8D%95.txt" in r.headers["content-disposition"]
    assert r.headers["content-type"] == "text/plain; charset=utf-8"


def _limited(api: Api, **settings) -> Api:
    app = create_app(settings=Settings(**settings), db=api.db, run_worker=False)
    return Api(TestClient(app, raise_server_exceptions=False), api.db, api.tokens)


def test_a_file_over_the_limit_is_413_and_nothing_is_stored(flow):
    api, instance, task = flow
    small = _limited(api, max_attachment_bytes=1000)
    assert _attach(small, "max", task, "ok.txt", b"x" * 1000).status_code == 201  # the limit itself is fine
    r = _attach(small, "max", task, "big.txt", b"x" * 1001)
    assert r.status_code == 413, r.text
    assert r.json()["code"] == "too_large" and "1000 bytes" in r.json()["detail"]
    assert _rows(api, AttachmentRow) == 1 and len(_events(api, instance, "task.attachment_added")) == 1
    # the default limit is 10 MiB
    assert Settings().max_attachment_bytes == 10 * 1024 * 1024
    r = _attach(api, "max", task, "huge.txt", b"y" * (10 * 1024 * 1024 + 1))
    assert r.status_code == 413
    assert _rows(api, AttachmentRow) == 1


@pytest.mark.parametrize("name, data", [
    ("quote.pdf", b"<html><script>alert(1)</script></html>"),  # a .pdf that is not a PDF
    ("photo.png", PDF), ("photo.jpg", PNG), ("anim.gif", PNG),
    ("notes.txt", b"MZ\x90\x00\x03\x00\x00\x00"),  # binary is not text
    ("report.docx", b"PK\x03\x04" + b"\x00" * 40),  # a broken ZIP
    ("tool.exe", b"MZ\x90\x00"), ("page.html", b"<html></html>"), ("noextension", b"hello"),
    ("archive.zip", b"PK\x03\x04"),
])
def test_a_type_not_allowed_or_content_not_matching_is_415(flow, name, data):
    api, instance, task = flow
    r = _attach(api, "max", task, name, data)
    assert r.status_code == 415, r.text
    problem = r.json()
    assert problem["code"] == "unsupported_media_type"
    assert "pdf, png, jpg, jpeg, gif, txt, csv, docx, xlsx, odt, ods" in problem["detail"]  # says what is accepted
    assert _rows(api, AttachmentRow) == 0 and _events(api, instance, "task.attachment_added") == []


def test_an_empty_file_is_refused(flow):
    api, _, task = flow
    r = _attach(api, "max", task, "empty.txt", b"")
    assert r.status_code == 422 and "empty" in r.json()["detail"]
    assert _rows(api, AttachmentRow) == 0


def test_file_names_are_sanitized(flow):
    api, _, task = flow
    r = _attach(api, "max", task, "../../etc/..\\evil \u202eFDP.txt", b"plain text")  # (controls: see below)
    assert r.status_code == 201, r.text
    assert r.json()["name"] == "evil FDP.txt"
    long = "a" * 400 + ".csv"
    r = _attach(api, "max", task, long, b"a,b\n1,2\n")
    assert r.status_code == 201
    assert r.json()["name"] == "a" * (uploads.MAX_NAME_CHARS - 4) + ".csv"
    assert _attach(api, "max", task, "../..", b"x").status_code == 422  # nothing usable left


def test_the_allowed_types_follow_the_setting(flow):
    api, _, task = flow
    only_pdf = _limited(api, attachment_types=("pdf",))
    assert _attach(only_pdf, "max", task, "a.pdf", PDF).status_code == 201
    r = _attach(only_pdf, "max", task, "a.png", PNG)
    assert r.status_code == 415 and "accepted: pdf" in r.json()["detail"]


def test_the_setting_refuses_types_sopflow_cannot_recognise(monkeypatch):
    monkeypatch.setenv("SOPFLOW_ATTACHMENT_TYPES", "PDF, .txt")
    assert Settings().attachment_types == ("pdf", "txt")
    monkeypatch.setenv("SOPFLOW_ATTACHMENT_TYPES", "pdf,exe")
    with pytest.raises(ValueError, match="exe"):
        Settings()


def test_attachments_and_comments_on_a_closed_task_are_refused(flow):
    api, instance, task = flow
    assert api.post("max", f"/api/tasks/{task}/complete", json={"variables": {}}).status_code == 200
    r = _attach(api, "max", task, "late.pdf", PDF)
    assert r.status_code == 409
    assert _rows(api, AttachmentRow) == 0 and _events(api, instance, "task.attachment_added") == []


def test_notes_interleaved_with_task_commands_keep_the_trail_verifiable(flow):
    api, instance, task = flow
    assert _comment(api, "max", task, "before claiming").status_code == 201
    assert api.post("max", f"/api/tasks/{task}/claim").status_code == 200
    assert _attach(api, "max", task, "a.txt", b"claimed").status_code == 201
    assert api.post("max", f"/api/tasks/{task}/complete", json={"variables": {}}).status_code == 200
    archive = api.get("max", "/api/tasks").json()["items"][0]["id"]
    assert _comment(api, "max", archive, "archived").status_code == 201
    assert _verified(api)["ok"] is True
    history = api.get("audrey", f"/api/history/process-instances/{instance}").json()["events"]
    actions = [e["action"] for e in history]
    assert actions.index("task.comment_added") < actions.index("task.claimed") < \
        actions.index("task.attachment_added") < actions.index("task.completed")
    assert len(api.get("audrey", f"/api/process-instances/{instance}/comments").json()["items"]) == 2


# ------------------------------------------------------------------ the file checks themselves


def _zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


DOCX = _zip({"[Content_Types].xml": b"<Types/>", "word/document.xml": b"<w:document/>"})
XLSX = _zip({"[Content_Types].xml": b"<Types/>", "xl/workbook.xml": b"<workbook/>"})
ODT = _zip({"mimetype": b"application/vnd.oasis.opendocument.text", "content.xml": b"<office/>"})
ODS = _zip({"mimetype": b"application/vnd.oasis.opendocument.spreadsheet", "content.xml": b"<office/>"})


@pytest.mark.parametrize("name, data", [
    ("a.pdf", PDF), ("a.png", PNG), ("a.jpg", b"\xff\xd8\xff\xe0JFIF"), ("a.JPEG", b"\xff\xd8\xff\xdb"),
    ("a.gif", b"GIF89a...."), ("a.txt", "Grüße\r\n".encode("latin-1")), ("a.csv", b"a;b\n1;2\n"),
    ("a.docx", DOCX), ("a.xlsx", XLSX), ("a.odt", ODT), ("a.ods", ODS),
])
def test_every_default_type_is_recognised_by_content(name, data):
    accepted = uploads.check_file(name, data, max_bytes=10**6, allowed=uploads.DEFAULT_TYPES)
    assert accepted.sha256 == hashlib.sha256(data).hexdigest() and accepted.size == len(data)


@pytest.mark.parametrize("name, data", [
    ("a.docx", XLSX), ("a.xlsx", DOCX), ("a.odt", ODS), ("a.ods", ODT), ("a.docx", ODT),
    ("a.odt", _zip({"mimetype": b"application/vnd.oasis.opendocument.textXXXX"})),
])
def test_office_containers_must_be_the_kind_their_extension_says(name, data):
    with pytest.raises(UnsupportedType):
        uploads.check_file(name, data, max_bytes=10**6, allowed=uploads.DEFAULT_TYPES)


@pytest.mark.parametrize("raw, clean", [
    ("report.pdf", "report.pdf"), ("C:\\Users\\me\\report.pdf", "report.pdf"), ("/srv/../../x.txt", "x.txt"),
    ("  .hidden.txt ", "hidden.txt"), ('a<b>:"c"|?*.txt', "a_b___c____.txt"), ("tab\there.txt", "tab here.txt"),
    ("a\x07b\x00\x1b.txt", "ab.txt"),
    ("e\u0301.txt", "\u00e9.txt"), ("x.pdf\u200b", "x.pdf"), ("..", ""), (None, ""),
])
def test_sanitize_filename(raw, clean):
    assert uploads.sanitize_filename(raw) == clean


def test_a_long_name_without_a_short_extension_is_cut():
    assert uploads.sanitize_filename("b" * 500) == "b" * uploads.MAX_NAME_CHARS
    with pytest.raises(InvalidInput):
        uploads.check_file("..", b"x", max_bytes=10, allowed=("txt",))


# ------------------------------------------------------------------ racing a completion (engine level)


@pytest.mark.parametrize("what", ["comment", "attachment"])
def test_an_addition_racing_a_completion_is_retried_then_refused(db, clock, monkeypatch, what):
    """The task is completed after the addition read it open and before it wrote: the addition's
    compare-and-set on the instance's audit head fails, the retry sees the closed task (409), and
    neither a row nor an event of the addition is stored."""
    from engine import audit
    from engine.commands import complete_task, start_instance, task_notes
    from engine.errors import Conflict
    from tests.helpers import ALICE, deploy_xml, open_tasks

    deploy_xml(db, FLOW.xml().replace(b"managers", b"staff"))
    row = db.command(lambda s: start_instance(s, key="notes", actor=ALICE))
    task = open_tasks(db, row.id)[0].id
    original, raced = task_notes._open_task, []

    def racing(session, actor, task_id, doing):
        found = original(session, actor, task_id, doing)
        if not raced:  # once: someone else completes the task between this read and the write
            raced.append(True)
            db.command(lambda s: complete_task(s, task_id=task_id, actor=ALICE, variables={}))
        return found

    monkeypatch.setattr(task_notes, "_open_task", racing)
    if what == "comment":
        add = lambda s: task_notes.add_comment(s, task_id=task, actor=ALICE, message="hi")  # noqa: E731
    else:
        add = lambda s: task_notes.add_attachment(s, task_id=task, actor=ALICE, filename="a.pdf",  # noqa: E731
                                                  data=PDF, settings=Settings())
    with pytest.raises(Conflict) as refused:
        db.command(add)
    assert "completed" in refused.value.message and raced == [True]
    with db.read() as s:
        assert s.scalar(select(func.count()).select_from(CommentRow)) == 0
        assert s.scalar(select(func.count()).select_from(AttachmentRow)) == 0
        actions = list(s.scalars(select(AuditEventRow.action).where(AuditEventRow.chain == row.id)))
        assert "task.completed" in actions and not any(a.startswith("task.comment") or a.startswith(
            "task.attachment") for a in actions)
        assert audit.verify(s).ok
