"""Designer pages: procedures, versions, upload (several files), the modeler's deploy, and the diff."""
from __future__ import annotations

import re
from html import unescape
from pathlib import Path

from engine.commands import SYSTEM, deploy
from engine.commands.deployments import deploy_edited
from engine.config import Settings
from engine.loading import UploadedFile
from engine.store.models import DefinitionRow, DeploymentRow
from tests.bpmnkit import Bpmn
from tests.web_helpers import csrf, make_web
from web.pages.designer import text_diff

PROCESSES = Path(__file__).resolve().parent.parent / "processes"
PROCUREMENT = (PROCESSES / "procurement_approval.bpmn").read_bytes()
ONBOARDING = (PROCESSES / "employee_onboarding.bpmn").read_bytes()
EQUIPMENT = (PROCESSES / "onboarding_equipment.dmn").read_bytes()

# a complex gateway SpiffWorkflow refuses, on line 5
REFUSED = (b'<?xml version="1.0"?>\n<bpmn:definitions xmlns:bpmn="http://www.omg.org/spec/BPMN/20100524/MODEL" '
           b'id="d">\n<bpmn:process id="gated" isExecutable="true">\n<bpmn:startEvent id="s"/>\n'
           b'<bpmn:complexGateway id="cg"/>\n'
           b'<bpmn:sequenceFlow id="f" sourceRef="s" targetRef="cg"/>\n</bpmn:process>\n</bpmn:definitions>')


def upload(client, *files: tuple[str, bytes], token: str | None = None):  # noqa: ANN201
    token = csrf(client, "/procedures/upload") if token is None else token
    return client.post("/procedures/upload", data={"csrf_token": token},
                       files=[("files", (name, data, "application/octet-stream")) for name, data in files])


def deploy_xml(client, key: str, xml: bytes, token: str | None = None):  # noqa: ANN201
    headers = {"Content-Type": "application/xml"}
    if token is not False:
        headers["X-CSRF-Token"] = token or csrf(client, f"/procedures/{key}/edit")
    return client.post(f"/procedures/{key}/edit", content=xml, headers=headers)


def text_of(html: str) -> str:
    """What a reader sees: tags dropped, entities decoded, white space collapsed."""
    return re.sub(r"\s+", " ", unescape(re.sub(r"<[^>]+>", " ", html)))


def definitions(web) -> list[tuple[str, int]]:
    with web.db.read() as s:
        return sorted((r.key, r.version) for r in s.query(DefinitionRow))


def section(html: str, element_id: str) -> str:
    match = re.search(rf'<section[^>]*data-element="{element_id}".*?</section>', html, re.S)
    assert match, f"no section for {element_id}"
    return match.group(0)


# ---------------------------------------------------------------- pages


def test_a_designer_uploads_several_files_and_sees_the_new_versions(web):
    dora = web.sign_in("dora")
    assert dora.get("/procedures").status_code == 200
    assert "No procedure is deployed yet." in dora.get("/procedures").text
    r = upload(dora, ("employee_onboarding.bpmn", ONBOARDING), ("onboarding_equipment.dmn", EQUIPMENT))
    assert r.status_code == 201, text_of(r.text)
    assert 'href="/procedures/employee_onboarding/versions/1"' in r.text
    assert "Employee onboarding, version 1" in text_of(r.text)
    assert definitions(web) == [("employee_onboarding", 1)]
    again = upload(dora, ("employee_onboarding.bpmn", ONBOARDING), ("onboarding_equipment.dmn", EQUIPMENT))
    assert again.status_code == 200 and "no new version was made" in again.text
    assert definitions(web) == [("employee_onboarding", 1)]


def test_procedures_list_versions_count_and_who_deployed_when(web):
    dora = web.sign_in("dora")
    assert upload(dora, ("procurement_approval.bpmn", PROCUREMENT)).status_code == 201
    edited = PROCUREMENT.replace(b"Check that the purchase is needed", b"Check that the purchase is truly needed")
    assert upload(dora, ("procurement_approval.bpmn", edited)).status_code == 201
    page = dora.get("/procedures")
    row = re.search(r'<tr data-key="procurement_approval">.*?</tr>', page.text, re.S).group(0)
    shown = text_of(row)
    assert "Procurement approval" in shown and 'class="versions">2<' in row and "dora" in shown
    assert "/procedures/procurement_approval/versions/2" in row
    versions = dora.get("/procedures/procurement_approval")
    assert versions.status_code == 200
    assert re.findall(r'<tr data-version="(\d+)">', versions.text) == ["2", "1"]
    assert 'href="/procedures/procurement_approval/diff?from=1&amp;to=2"' in versions.text
    assert dora.get("/procedures/no_such_procedure").status_code == 404


def test_a_version_shows_the_diagram_and_each_steps_sop_text_and_form(web):
    dora = web.sign_in("dora")
    upload(dora, ("procurement_approval.bpmn", PROCUREMENT))
    page = dora.get("/procedures/procurement_approval/versions/1")
    assert page.status_code == 200
    assert 'data-xml-url="/procedures/procurement_approval/versions/1/diagram.xml"' in page.text
    assert '<script src="/static/diagram-page.js" defer></script>' in page.text
    manager = text_of(section(page.text, "manager_approval"))
    assert "Approve as manager" in manager
    assert "SOP PR-2. Check that the purchase is needed and within your budget line." in manager
    assert "manager_approved Approved boolean yes" in manager  # field, label, type, required
    assert "Candidate groups managers" in manager and "Due P2D" in manager
    submit = text_of(section(page.text, "submit_request"))
    assert "amount Amount (EUR) long yes" in submit
    assert dora.get("/procedures/procurement_approval/versions/2").status_code == 404


def test_a_spiff_dialect_version_shows_its_form_files_fields(web1):
    dora = web1.sign_in("dora")
    upload(dora, ("employee_onboarding.bpmn", ONBOARDING), ("onboarding_equipment.dmn", EQUIPMENT))
    page = dora.get("/procedures/employee_onboarding/versions/1")
    tasks = re.findall(r'<section class="card task" id="task-([\w-]+)"', page.text)
    assert len(tasks) >= 3
    assert any("Form fields" in section(page.text, t) and "<code>" in section(page.text, t) for t in tasks)


def test_pages_are_for_designers_only(web):
    dora = web.sign_in("dora")
    upload(dora, ("procurement_approval.bpmn", PROCUREMENT))
    rita = web.sign_in("rita")  # an employee
    for path in ("/procedures", "/procedures/upload", "/procedures/procurement_approval",
                 "/procedures/procurement_approval/versions/1", "/procedures/procurement_approval/edit",
                 "/procedures/procurement_approval/diff?from=1&to=1"):
        r = rita.get(path)
        assert r.status_code == 403, path
        assert r.headers["content-type"].startswith("text/html")
    token = csrf(rita)
    assert upload(rita, ("other.bpmn", PROCUREMENT.replace(b"procurement_approval", b"other")),
                  token=token).status_code == 403
    assert deploy_xml(rita, "procurement_approval", PROCUREMENT.replace(b"needed", b"wanted"),
                      token=token).status_code == 403
    assert definitions(web) == [("procurement_approval", 1)]
    assert web.anonymous().get("/procedures").status_code == 303  # to the sign-in page
    assert web.sign_in("admin").get("/procedures/procurement_approval/versions/1").status_code == 200


def test_posts_need_the_csrf_token(web1):
    dora = web1.sign_in("dora")
    assert upload(dora, ("procurement_approval.bpmn", PROCUREMENT), token="forged").status_code == 403  # noqa: S106
    assert upload(dora, ("procurement_approval.bpmn", PROCUREMENT), token="").status_code == 403
    assert definitions(web1) == []
    upload(dora, ("procurement_approval.bpmn", PROCUREMENT))
    edited = PROCUREMENT.replace(b"needed", b"wanted")
    assert deploy_xml(dora, "procurement_approval", edited, token=False).status_code == 403
    assert deploy_xml(dora, "procurement_approval", edited, token="forged").status_code == 403  # noqa: S106
    assert definitions(web1) == [("procurement_approval", 1)]


# ---------------------------------------------------------------- refusals


def test_a_refused_upload_names_file_element_and_line_and_deploys_nothing(web):
    dora = web.sign_in("dora")
    r = upload(dora, ("procurement_approval.bpmn", PROCUREMENT), ("gated.bpmn", REFUSED))
    assert r.status_code == 422
    assert definitions(web) == []
    with web.db.read() as s:
        assert s.query(DeploymentRow).count() == 0
    gated = re.search(r'<li class="file has-problems" data-file="gated.bpmn">.*?</li>\s*</ul>', r.text, re.S)
    assert gated, text_of(r.text)
    problem = text_of(gated.group(0))
    assert 'data-element="cg"' in gated.group(0)
    assert "Element cg" in problem and "line 5" in problem
    assert "gated.bpmn: There is no support implemented for this task type" in problem  # SpiffWorkflow's reason
    assert '<li class="file" data-file="procurement_approval.bpmn">' in r.text  # named, not blamed
    assert "Nothing was deployed" in r.text


def test_broken_xml_in_several_files_is_shown_for_each(web1):
    dora = web1.sign_in("dora")
    r = upload(dora, ("one.bpmn", b"<bpmn:definitions"), ("two.bpmn", b"<a><b></a>"),
               ("procurement_approval.bpmn", PROCUREMENT))
    assert r.status_code == 422
    for name in ("one.bpmn", "two.bpmn"):
        block = re.search(rf'<li class="file has-problems" data-file="{re.escape(name)}">.*?</li>\s*</ul>', r.text,
                          re.S)
        assert block and "is not well-formed XML" in block.group(0) and "line" in text_of(block.group(0))
    assert definitions(web1) == []


def test_an_upload_without_files_or_with_the_wrong_kind_is_refused(web1):
    dora = web1.sign_in("dora")
    token = csrf(dora, "/procedures/upload")
    r = dora.post("/procedures/upload", data={"csrf_token": token})
    assert r.status_code == 422 and "at least one .bpmn or .dmn file" in r.text
    r = upload(dora, ("notes.txt", b"hello"))
    assert r.status_code == 422 and "only .bpmn and .dmn files can be deployed" in r.text


def test_an_upload_over_the_size_limit_is_refused_like_the_api(sqlite_db, clock):
    web = make_web(sqlite_db, Settings(max_upload_bytes=2000))
    dora = web.sign_in("dora")
    r = upload(dora, ("procurement_approval.bpmn", PROCUREMENT))
    assert r.status_code == 422 and "is larger than 2000 bytes" in r.text
    assert definitions(web) == []


# ---------------------------------------------------------------- the modeler


def test_the_modeler_page_loads_the_latest_version_and_deploys_a_new_one(web):
    dora = web.sign_in("dora")
    upload(dora, ("procurement_approval.bpmn", PROCUREMENT))
    page = dora.get("/procedures/procurement_approval/edit")
    assert page.status_code == 200
    assert 'data-source-url="/procedures/procurement_approval/versions/1/diagram.xml"' in page.text
    assert 'data-deploy-url="/procedures/procurement_approval/edit"' in page.text
    assert '<script src="/static/designer.js" defer></script>' in page.text
    renamed = PROCUREMENT.replace(b'name="Approve as manager"', b'name="Approve as line manager"')
    r = deploy_xml(dora, "procurement_approval", renamed)
    assert r.status_code == 201
    assert r.json() == {"created": True, "key": "procurement_approval", "version": 2,
                        "url": "/procedures/procurement_approval/versions/2"}
    assert "Approve as line manager" in dora.get(r.json()["url"]).text
    same = deploy_xml(dora, "procurement_approval", renamed)
    assert same.status_code == 200 and same.json()["created"] is False and same.json()["version"] == 2
    assert definitions(web) == [("procurement_approval", 1), ("procurement_approval", 2)]


def test_the_modeler_refusal_names_the_element_and_deploys_nothing(web):
    dora = web.sign_in("dora")
    upload(dora, ("procurement_approval.bpmn", PROCUREMENT))
    broken = PROCUREMENT.replace(b'<bpmn:userTask id="manager_approval"',
                                 b'<bpmn:complexGateway id="cg"/><bpmn:sequenceFlow id="to_cg" sourceRef="request_raised" '
                                 b'targetRef="cg"/><bpmn:userTask id="manager_approval"')
    r = deploy_xml(dora, "procurement_approval", broken)
    assert r.status_code == 422
    [error] = r.json()["errors"]
    assert error["element_id"] == "cg" and error["file"] == "procurement_approval.bpmn" and error["line"]
    assert deploy_xml(dora, "procurement_approval", b"<not xml").status_code == 422
    too_big = deploy_xml(dora, "procurement_approval", PROCUREMENT + b" " * web.app.state.settings.max_upload_bytes)
    assert too_big.status_code == 422 and "larger than" in too_big.json()["errors"][0]["message"]
    wrong_type = dora.post("/procedures/procurement_approval/edit", content=PROCUREMENT,
                           headers={"X-CSRF-Token": csrf(dora), "Content-Type": "text/plain"})
    assert wrong_type.status_code == 415
    assert definitions(web) == [("procurement_approval", 1)]
    assert dora.get("/procedures/nothing_here/edit").status_code == 404


def test_an_edited_diagram_is_deployed_with_the_decisions_it_uses(web1):
    dora = web1.sign_in("dora")
    upload(dora, ("employee_onboarding.bpmn", ONBOARDING), ("onboarding_equipment.dmn", EQUIPMENT))
    edited = ONBOARDING.replace(b'name="Employee onboarding"', b'name="Onboarding a new employee"')
    r = deploy_xml(dora, "employee_onboarding", edited)
    assert r.status_code == 201, r.json()
    with web1.db.read() as s:
        edit = s.query(DeploymentRow).filter(DeploymentRow.name == "employee_onboarding.bpmn (edited)").one()
        assert edit.deployed_by == "dora"
    assert definitions(web1) == [("employee_onboarding", 1), ("employee_onboarding", 2)]


def test_an_edit_leaves_out_a_companion_file_redeployed_since(web1):
    a = Bpmn("first").start().user("ua", "A").end().chain("start", "ua", "end").xml()
    b = Bpmn("second").start().user("ub", "B").end().chain("start", "ub", "end").xml()
    web1.db.command(lambda s: deploy(s, files=[UploadedFile("a.bpmn", a), UploadedFile("b.bpmn", b)], actor=SYSTEM))
    b2 = b.replace(b'name="B"', b'name="B two"')
    web1.db.command(lambda s: deploy(s, files=[UploadedFile("b.bpmn", b2)], actor=SYSTEM))
    a2 = a.replace(b'name="A"', b'name="A two"')
    result = web1.db.command(lambda s: deploy_edited(s, key="first", data=a2, actor=SYSTEM))
    assert result.created
    # b.bpmn of the first deployment would have made "second" v3 = v1 again; it stayed out
    assert definitions(web1) == [("first", 1), ("first", 2), ("second", 1), ("second", 2)]
    a3 = a2.replace(b'name="A two"', b'name="A three"')
    web1.db.command(lambda s: deploy_edited(s, key="first", data=a3, actor=SYSTEM))
    assert ("first", 3) in definitions(web1) and ("second", 3) not in definitions(web1)


# ---------------------------------------------------------------- diff


def test_the_diff_shows_sop_text_and_form_changes_per_step_escaped(web):
    dora = web.sign_in("dora")
    upload(dora, ("procurement_approval.bpmn", PROCUREMENT))
    edited = (PROCUREMENT
              .replace(b"Check that the purchase is needed", b"Check that the purchase is &lt;b&gt;truly&lt;/b&gt; needed")
              .replace(b'<camunda:formField id="manager_comment"', b'<camunda:formField id="cost_centre" label="Cost '
                       b'centre" type="string"/><camunda:formField id="manager_comment"'))
    assert deploy_xml(dora, "procurement_approval", edited).status_code == 201
    page = dora.get("/procedures/procurement_approval/diff?from=1&to=2")
    assert page.status_code == 200
    assert 'data-from-url="/procedures/procurement_approval/versions/1/diagram.xml"' in page.text
    assert 'data-to-url="/procedures/procurement_approval/versions/2/diagram.xml"' in page.text
    manager = section(page.text, "manager_approval")
    assert 'data-change="changed"' in manager
    inserted = re.search(r"<ins>(.*?)</ins>", manager, re.S).group(1)
    assert "&lt;b&gt;truly&lt;/b&gt;" in inserted and "<b>" not in manager  # escaped, never markup
    assert '<tr class="added" data-field="cost_centre">' in manager
    assert 'data-change="unchanged"' in section(page.text, "place_order")
    assert "1 step changed." in page.text
    default = dora.get("/procedures/procurement_approval/diff")  # latest against the one before
    assert "version 1 → 2" in default.text
    assert dora.get("/procedures/procurement_approval/diff?from=1&to=9").status_code == 404
    assert dora.get("/procedures/procurement_approval/diff?from=0&to=1").status_code == 404  # no version 0 (tests/test_web_input.py)


def test_the_diff_marks_added_and_removed_steps(web1):
    dora = web1.sign_in("dora")
    one = (Bpmn("steps").start().user("keep", "Keep", documentation="Same.").user("old", "Old step").end()
           .chain("start", "keep", "old", "end"))
    two = (Bpmn("steps").start().user("keep", "Keep", documentation="Same.")
           .user("new", "New step", documentation="Do it.").end().chain("start", "keep", "new", "end"))
    upload(dora, ("steps.bpmn", one.xml()))
    upload(dora, ("steps.bpmn", two.xml()))
    page = dora.get("/procedures/steps/diff?from=1&to=2")
    assert 'data-change="added"' in section(page.text, "new") and "Do it." in section(page.text, "new")
    assert 'data-change="removed"' in section(page.text, "old")
    assert 'data-change="unchanged"' in section(page.text, "keep")


def test_text_diff_marks_words_and_chinese_characters():
    lines = text_diff("Check the budget.\nSign.", "Check the whole budget.\nSign.\nFile it.")
    assert [line.kind for line in lines] == ["changed", "same", "added"]
    assert ("added", "whole ") in lines[0].parts or ("added", " whole") in lines[0].parts
    [chinese] = text_diff("检查预算。", "检查全部预算。")
    assert ("added", "全部") in chinese.parts
    assert text_diff(None, None) == []


def test_pages_speak_chinese(web1):
    dora = web1.sign_in("dora", **{"Accept-Language": "zh-CN"})
    upload(dora, ("procurement_approval.bpmn", PROCUREMENT))
    assert "1 个流程" in dora.get("/procedures").text
    assert "上传流程图" in dora.get("/procedures/upload").text
    assert "部署为新版本" in dora.get("/procedures/procurement_approval/edit").text
