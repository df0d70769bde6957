"""Designers' pages: procedures and their versions, the diagram with each user task's SOP step,
upload (several files, drag and drop), the bpmn-js modeler, and the diff of two versions.

Every route checks ``require(actor, "designer")`` as the JSON routes of
``api/routes/definitions.py`` do (admins pass), and deploys with the same engine command
(``engine.commands.deploy``), the same upload size limit (``SOPFLOW_MAX_UPLOAD_BYTES`` per
file) and settings as ``POST /api/deployments``. A refused deployment writes nothing and
answers 422 with the engine's error placed on its file and element.
"""
from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import APIRouter, File, Path, Query, Request, UploadFile
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException

from api.deps import require
from engine import forms, xmlsafe
from engine.actor import Actor
from engine.commands import deploy, latest_definition
from engine.commands.deployments import DeployResult, deploy_edited, resource_name
from engine.config import Settings
from engine.errors import InvalidDefinition, NotFound
from engine.loading import UploadedFile
from engine.queries import Paging, deployments_of, list_definitions
from engine.store.models import DefinitionRow
from web import i18n
from web.deps import CsrfDep, PageActorDep
from web.formdata import PageRoute
from web.render import N_, error_text, page_locale, render

router = APIRouter(include_in_schema=False, route_class=PageRoute)
Key = Annotated[str, Path(max_length=200)]
Version = Annotated[int, Path(ge=1, le=2**31 - 1)]
MAX_FILES = 50  # files in one upload form (the API takes what the body limit allows)


def _designer(actor: Actor) -> None:
    require(actor, "designer")


# ------------------------------------------------------------------ lists


@router.get("/procedures")
def procedures(request: Request, actor: PageActorDep,
               cursor: Annotated[str | None, Query(max_length=300)] = None) -> Response:
    """Every procedure (its latest version), how many versions it has, and who deployed it when."""
    _designer(actor)
    with request.app.state.db.read() as s:
        page = list_definitions(s, key=None, latest=True, paging=Paging.parse(limit=50, cursor=cursor))
        deployments = deployments_of(s, {d.deployment_id for d in page.items})
    return render(request, "designer/procedures.html", {
        "definitions": page.items, "total": page.total, "next_cursor": page.next_cursor,
        "deployments": deployments})


@router.get("/procedures/upload")
def upload_form(request: Request, actor: PageActorDep) -> Response:
    _designer(actor)
    return _upload_page(request)


@router.post("/procedures/upload")
async def upload(request: Request, actor: PageActorDep, _csrf: CsrfDep,
                 files: Annotated[list[UploadFile] | None, File()] = None) -> Response:
    """Deploy the uploaded files as one deployment (as ``POST /api/deployments``); 201 with the new
    versions, 200 when nothing changed, 422 with the refusal per file and element.

    The form is parsed (and its spooled files closed after the response) by FastAPI, before
    the CSRF check reads the same parsed form.
    """
    _designer(actor)
    settings: Settings = request.app.state.settings
    sent = [f for f in files or [] if f.filename]
    names = [resource_name(str(f.filename)) for f in sent]  # the names the engine stores (base names)
    if len(sent) > MAX_FILES:
        return _refused(request, names, InvalidDefinition("upload at most {max_files} files at once",
                                                          params={"max_files": MAX_FILES}))
    uploads: list[UploadedFile] = []
    try:
        for f in sent:
            uploads.append(await _read(f, settings.max_upload_bytes))
        result = request.app.state.db.command(lambda s: deploy(s, files=uploads, actor=actor, settings=settings))
    except InvalidDefinition as exc:
        return _refused(request, names, exc, uploads=uploads, settings=settings)
    return render(request, "designer/deployed.html", {"result": result, "files": names},
                  status_code=201 if result.created else 200)


async def _read(f: UploadFile, limit: int) -> UploadedFile:
    data = await f.read(limit + 1)
    if len(data) > limit:
        name = resource_name(str(f.filename))
        raise InvalidDefinition("{filename} is larger than {limit} bytes", file=name,
                                params={"filename": name, "limit": limit})
    return UploadedFile(f.filename or "upload.bpmn", data)


def _upload_page(request: Request, *, files: list[FileOutcome] | None = None, general: list[Problem] | None = None,
                 status_code: int = 200) -> Response:
    return render(request, "designer/upload.html", {"files": files or [], "general": general or []},
                  status_code=status_code)


# ------------------------------------------------------------------ refusals


@dataclass
class Problem:
    message: str
    element_id: str | None = None
    line: int | None = None


@dataclass
class FileOutcome:
    name: str
    problems: list[Problem] = field(default_factory=list)


def problems_of(names: list[str], exc: InvalidDefinition, uploads: list[UploadedFile] | None = None,
                settings: Settings | None = None, *, locale: str | None = None
                ) -> tuple[list[FileOutcome], list[Problem]]:
    """Place a refusal on the file (and element, line) it names; problems naming no file are general.

    The engine stops at the first problem; the other files are checked for what can be checked
    alone (well-formed, safe XML within the size and depth limits) so that several broken files
    show up at once. Messages are in ``locale`` (:func:`web.i18n.error_text`; None: English).
    """
    outcomes = [FileOutcome(n) for n in names]
    general: list[Problem] = []
    problem = Problem(i18n.error_text(exc, locale or "en"), exc.context.get("element_id"), exc.context.get("line"))
    named = exc.context.get("file")
    target = next((o for o in outcomes if o.name == named), None)
    (target.problems if target else general).append(problem)
    if uploads and settings:
        for upload, outcome in zip(uploads, outcomes, strict=False):
            if outcome is target:
                continue
            try:
                xmlsafe.parse(upload.data, upload.name, max_bytes=settings.max_upload_bytes,
                              max_depth=settings.max_xml_depth)
            except InvalidDefinition as other:
                outcome.problems.append(Problem(i18n.error_text(other, locale or "en"), None, other.context.get("line")))
    return outcomes, general


def _refused(request: Request, names: list[str], exc: InvalidDefinition, *, uploads: list[UploadedFile] | None = None,
             settings: Settings | None = None) -> Response:
    files, general = problems_of(names, exc, uploads, settings, locale=page_locale(request))
    return _upload_page(request, files=files, general=general, status_code=422)


# ------------------------------------------------------------------ one procedure


@router.get("/procedures/{key}")
def procedure(request: Request, actor: PageActorDep, key: Key,
              cursor: Annotated[str | None, Query(max_length=300)] = None) -> Response:
    """The versions of one procedure, newest first, with who deployed each and when."""
    _designer(actor)
    with request.app.state.db.read() as s:
        page = list_definitions(s, key=key, latest=False, paging=Paging.parse(limit=100, cursor=cursor))
        if not page.items and not cursor:
            raise NotFound("no process definition with key '{key}'", key=key, params={"key": key})
        deployments = deployments_of(s, {d.deployment_id for d in page.items})
        latest = latest_definition(s, key)
    return render(request, "designer/procedure.html", {
        "key": key, "versions": page.items, "total": page.total, "next_cursor": page.next_cursor,
        "deployments": deployments, "latest": latest})


@dataclass
class FormField:
    name: str
    label: str | None
    type: str
    required: bool
    options: list[str]


@dataclass
class UserTask:
    element_id: str
    name: str
    sop: str | None
    fields: list[FormField]
    form_key: str | None
    assignee: str | None
    candidate_users: list[str]
    candidate_groups: list[str]
    due_date: str | None
    follow_up_date: str | None
    priority: str | None


def _type_of(prop: dict[str, Any]) -> str:
    kind = prop.get("type", "string")
    kinds = [k for k in kind if k != "null"] if isinstance(kind, list) else [kind]
    if prop.get("format"):
        return f"{kinds[0] if kinds else 'string'} ({prop['format']})"
    return " | ".join(str(k) for k in kinds) or "string"


def fields_of(form_key: str | None, form_fields: list[dict[str, Any]] | None) -> list[FormField]:
    """A task's form fields, from its form file (``forms/<key>.json``) or its Camunda form fields."""
    form = forms.form_for(form_key, form_fields)
    if not form:
        return []
    schema = form.get("schema") or {}
    required = set(schema.get("required") or [])
    found = []
    for name, prop in (schema.get("properties") or {}).items():
        prop = prop if isinstance(prop, dict) else {}
        camunda = next((f for f in form_fields or [] if f.get("id") == name), None)
        kind = (camunda or {}).get("type") or _type_of(prop)
        options = [str(o) for o in prop.get("enum") or []]
        found.append(FormField(name, prop.get("title"), str(kind), name in required, options))
    return found


def user_tasks_of(definition: DefinitionRow) -> list[UserTask]:
    """The definition's user tasks in diagram order, as stored at deploy (``UserTaskMeta``)."""
    tasks = []
    for meta in (definition.user_tasks or {}).values():
        tasks.append(UserTask(
            meta["element_id"], meta.get("name") or meta["element_id"], meta.get("documentation"),
            fields_of(meta.get("form_key"), meta.get("form_fields")), meta.get("form_key"), meta.get("assignee"),
            list(meta.get("candidate_users") or []), list(meta.get("candidate_groups") or []),
            meta.get("due_date"), meta.get("follow_up_date"), meta.get("priority")))
    return tasks


def _start_fields(definition: DefinitionRow) -> list[FormField] | None:
    start = definition.start_form
    if not start:
        return None
    return fields_of(start.get("form_key"), start.get("form_fields"))


@router.get("/procedures/{key}/versions/{version}")
def version_page(request: Request, actor: PageActorDep, key: Key, version: Version) -> Response:
    """One version: its diagram and each user task's SOP step, form and assignment."""
    _designer(actor)
    with request.app.state.db.read() as s:
        definition = latest_definition(s, key, version)
        newest = latest_definition(s, key)
        deployment = deployments_of(s, {definition.deployment_id}).get(definition.deployment_id)
    return render(request, "designer/version.html", {
        "definition": definition, "deployment": deployment, "latest_version": newest.version,
        "tasks": user_tasks_of(definition), "start_fields": _start_fields(definition)})


# ------------------------------------------------------------------ modeler


@router.get("/procedures/{key}/edit")
def edit_page(request: Request, actor: PageActorDep, key: Key) -> Response:
    """The bpmn-js modeler with the latest version loaded."""
    _designer(actor)
    with request.app.state.db.read() as s:
        definition = latest_definition(s, key)
    return render(request, "designer/edit.html", {"definition": definition})


@router.post("/procedures/{key}/edit")
async def deploy_from_modeler(request: Request, actor: PageActorDep, _csrf: CsrfDep, key: Key) -> Response:
    """Deploy the modeler's XML (the request body) as a new version of ``key``'s file.

    Answers JSON for the page's script: 201 ``{"created": true, "url": <new version's page>,
    "version"}``, 200 ``{"created": false, ...}`` when nothing changed, 422 ``{"errors":
    [{"file", "element_id", "line", "message"}]}`` when refused (nothing deployed).
    """
    _designer(actor)
    settings: Settings = request.app.state.settings
    limit = settings.max_upload_bytes
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media not in ("application/xml", "text/xml"):
        raise UnsupportedMediaType("send the diagram as application/xml")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            return _json_refusal(request, InvalidDefinition("the diagram is larger than {limit} bytes",
                                                            params={"limit": limit}))
    try:
        result = request.app.state.db.command(lambda s: deploy_edited(
            s, key=key, data=bytes(body), actor=actor, settings=settings))
    except InvalidDefinition as exc:
        return _json_refusal(request, exc)
    chosen = _result_for(result, key)
    return JSONResponse({"created": result.created, "key": chosen["key"], "version": chosen["version"],
                         "url": f"/procedures/{chosen['key']}/versions/{chosen['version']}"},
                        status_code=201 if result.created else 200)


class UnsupportedMediaType(HTTPException):
    def __init__(self, detail: str) -> None:
        super().__init__(status_code=415, detail=detail)


def _result_for(result: DeployResult, key: str) -> dict[str, Any]:
    return next((d for d in result.definitions if d["key"] == key), result.definitions[0])


def _json_refusal(request: Request, exc: InvalidDefinition) -> Response:
    return JSONResponse({"errors": [{
        "file": exc.context.get("file"), "element_id": exc.context.get("element_id"),
        "line": exc.context.get("line"), "message": error_text(request, exc)}]}, status_code=422)


# ------------------------------------------------------------------ diff


@dataclass
class TextDiffLine:
    kind: str  # same | removed | added | changed
    parts: list[tuple[str, str]]  # (same | removed | added, text)


@dataclass
class FieldChange:
    name: str
    kind: str  # added | removed | changed
    before: FormField | None
    after: FormField | None


@dataclass
class TaskChange:
    element_id: str
    name: str
    kind: str  # added | removed | changed | unchanged
    sop: list[TextDiffLine]
    fields: list[FieldChange]
    settings: list[tuple[str, str, str]]  # (label msgid, before, after)


_TOKENS = re.compile(r"[\u3000-\u9fff\uf900-\ufaff]|\w+|\s+|[^\w\s]", re.UNICODE)


def text_diff(before: str | None, after: str | None) -> list[TextDiffLine]:
    """A line diff of two texts (difflib); a replaced line is shown once with its word changes marked.

    Returns the lines in order; each line's parts are ``(same | removed | added, text)``. CJK
    characters count as words of their own, so Chinese SOP text diffs by character.
    """
    a, b = (before or "").splitlines(), (after or "").splitlines()
    lines: list[TextDiffLine] = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if op == "equal":
            lines += [TextDiffLine("same", [("same", line)]) for line in a[i1:i2]]
        elif op == "delete":
            lines += [TextDiffLine("removed", [("removed", line)]) for line in a[i1:i2]]
        elif op == "insert":
            lines += [TextDiffLine("added", [("added", line)]) for line in b[j1:j2]]
        else:
            old, new = a[i1:i2], b[j1:j2]
            for k in range(max(len(old), len(new))):
                if k < len(old) and k < len(new):
                    lines.append(TextDiffLine("changed", _word_diff(old[k], new[k])))
                elif k < len(old):
                    lines.append(TextDiffLine("removed", [("removed", old[k])]))
                else:
                    lines.append(TextDiffLine("added", [("added", new[k])]))
    return lines


def _word_diff(old: str, new: str) -> list[tuple[str, str]]:
    a, b = _TOKENS.findall(old), _TOKENS.findall(new)
    parts: list[tuple[str, str]] = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if op == "equal":
            parts.append(("same", "".join(a[i1:i2])))
            continue
        if i2 > i1:
            parts.append(("removed", "".join(a[i1:i2])))
        if j2 > j1:
            parts.append(("added", "".join(b[j1:j2])))
    return parts


def _field_changes(before: list[FormField], after: list[FormField]) -> list[FieldChange]:
    old, new = {f.name: f for f in before}, {f.name: f for f in after}
    changes = []
    for name in [*old, *(n for n in new if n not in old)]:
        a, b = old.get(name), new.get(name)
        if a is None:
            changes.append(FieldChange(name, "added", None, b))
        elif b is None:
            changes.append(FieldChange(name, "removed", a, None))
        elif a != b:
            changes.append(FieldChange(name, "changed", a, b))
    return changes


SETTINGS: list[tuple[str, str]] = [
    ("name", N_("Name")), ("form_key", N_("Form")), ("assignee", N_("Assignee")),
    ("candidate_users", N_("Candidate users")), ("candidate_groups", N_("Candidate groups")),
    ("due_date", N_("Due")), ("follow_up_date", N_("Follow-up")), ("priority", N_("Priority")),
]


def _shown(value: Any) -> str:
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    return "" if value is None else str(value)


def task_changes(before: DefinitionRow, after: DefinitionRow) -> list[TaskChange]:
    """Per user task (by element id): added, removed, changed (SOP text, form fields, assignment) or unchanged."""
    old = {t.element_id: t for t in user_tasks_of(before)}
    new = {t.element_id: t for t in user_tasks_of(after)}
    changes = []
    for element_id in [*new, *(e for e in old if e not in new)]:
        a, b = old.get(element_id), new.get(element_id)
        task = b or a
        name = task.name if task else element_id
        sop = text_diff(a.sop if a else None, b.sop if b else None)
        fields = _field_changes(a.fields if a else [], b.fields if b else [])
        settings = [(label, _shown(getattr(a, attr)), _shown(getattr(b, attr))) for attr, label in SETTINGS
                    if a and b and getattr(a, attr) != getattr(b, attr)]
        if a is None:
            kind = "added"
        elif b is None:
            kind = "removed"
        elif a.sop != b.sop or fields or settings:
            kind = "changed"
        else:
            kind = "unchanged"
        changes.append(TaskChange(element_id, name, kind, sop, fields, settings))
    return changes


@router.get("/procedures/{key}/diff")
def diff_page(request: Request, actor: PageActorDep, key: Key,
              from_: Annotated[str, Query(alias="from", max_length=40)] = "",
              to: Annotated[str, Query(max_length=40)] = "") -> Response:
    """What changed between two versions (default: the latest and the one before it).

    A version that does not exist (0, -1, 99, ``abc``) answers the 404 page saying which versions do.
    """
    _designer(actor)
    with request.app.state.db.read() as s:
        newest = latest_definition(s, key)  # NotFound (404) for an unknown procedure
        try:
            to_version = _version(to, newest.version) or newest.version
            from_version = _version(from_, newest.version) or max(1, to_version - 1)
        except ValueError as missing:
            message = i18n.translations(page_locale(request)).gettext(
                "Procedure “%(key)s” has no version %(version)s; its versions are 1 to %(latest)s.") % {
                "key": key, "version": str(missing), "latest": newest.version}
            return render(request, "shell/error.html", {"status": 404, "message": message}, status_code=404)
        before, after = latest_definition(s, key, from_version), latest_definition(s, key, to_version)
    changes = task_changes(before, after)
    return render(request, "designer/diff.html", {
        "key": key, "before": before, "after": after, "latest_version": newest.version, "changes": changes,
        "start_changes": _field_changes(_start_fields(before) or [], _start_fields(after) or []),
        "changed_count": sum(1 for c in changes if c.kind != "unchanged")})


def _version(text: str, latest: int) -> int | None:
    """A version number from the diff's query: None when not given; ValueError (its text the version asked
    for) when there is no such version. Versions of a key are 1 .. ``latest`` without gaps."""
    if not text:
        return None
    if text.isascii() and text.isdigit() and 1 <= int(text) <= latest:
        return int(text)
    raise ValueError(text)
