"""The employee's pages: inbox, task page, start page, my requests, notifications.

Each route calls the same engine queries and commands as its JSON counterpart
(api/routes/tasks.py, instances.py, definitions.py, notifications.py) with the signed-in
user as the Actor, so what a page shows and allows is exactly what the API would: an
employee who opens another employee's task gets the engine's NotFound (404), a refused
completion the engine's InvalidInput, shown next to each field (422, the submitted values
kept). Forms are plain POSTs with the CSRF token; a success answers 303 to the next page.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated, Any
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import RedirectResponse, Response
from sqlalchemy import select
from starlette.datastructures import FormData, UploadFile

from api.deps import DbDep, SettingsDep, require
from api.views import download_headers
from engine.actor import Actor
from engine.commands import claim_task, complete_task, start_instance, unclaim_task
from engine.commands.instances import get_start_form
from engine.commands.task_notes import add_attachment, add_comment
from engine.errors import InvalidInput, NotFound, TooLarge, UnsupportedType
from engine.queries import (
    COUNT_CAP,
    InstanceFilter,
    Paging,
    TaskFilter,
    count_tasks,
    get_attachment,
    list_definitions,
    list_instances,
    list_task_attachments,
    list_task_comments,
    list_tasks,
    sla_state,
    task_detail,
)
from engine.store.models import InstanceRow, TaskRow
from web import forms, i18n, sop
from web.deps import CsrfDep, PageActorDep, optional_session
from web.render import error_text, page_locale, render

router = APIRouter(include_in_schema=False)

PAGE_SIZE = 25
VIEWS = ("all", "mine", "groups")
SORTS = ("due", "priority", "created")


def _gettext(request: Request) -> forms.Gettext:
    """gettext in the request's language (the user's setting, else Accept-Language)."""
    return i18n.translations(page_locale(request)).gettext


def _zone(request: Request) -> str:
    """The user's time zone (IANA name; UTC when unset)."""
    found = optional_session(request)
    return (found.time_zone if found else None) or "UTC"


def _redirect(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303)


# ------------------------------------------------------------------ inbox


@dataclass
class InboxQuery:
    """The inbox's filters as the page's GET form sends them (all strings; bad ones are ignored, not 500s)."""

    view: str = "all"
    procedure: str = ""
    due_from: str = ""
    due_until: str = ""
    sla: str = ""
    min_priority: str = ""
    q: str = ""
    sort: str = "due"
    order: str = "asc"
    cursor: str = ""
    limit: str = ""

    def clean(self) -> InboxQuery:
        for name, value in self.__dict__.items():  # typed into a URL: no control characters reach a query
            setattr(self, name, "".join(ch for ch in value if ord(ch) >= 32 and not 0xD800 <= ord(ch) <= 0xDFFF))
        if self.view not in VIEWS:
            self.view = "all"
        if self.sla not in ("", "on_time", "at_risk", "breached"):
            self.sla = ""
        if self.sort not in SORTS:
            self.sort = "due"
        if self.order not in ("asc", "desc"):
            self.order = "asc"
        self.q = self.q.strip()[:200]
        self.procedure = self.procedure[:200]
        if not (self.limit.isdigit() and 1 <= int(self.limit) <= 100):
            self.limit = ""
        return self

    @property
    def page_size(self) -> int:
        return int(self.limit) if self.limit else PAGE_SIZE

    def link(self, **changes: str) -> str:
        """This query's URL with ``changes`` (empty values dropped; a change restarts paging)."""
        params = {**self.__dict__, "cursor": "", **changes}
        return "/inbox?" + urlencode({k: v for k, v in params.items() if v})


def _day_start(day: str, zone: ZoneInfo) -> datetime | None:
    """The inbox's date filter: midnight of ``day`` in the user's zone; a bad or out-of-range day is ignored."""
    try:
        return forms.day_start(day, zone) if len(day) == 10 else None
    except ValueError:
        return None


def _task_filter(q: InboxQuery, zone: ZoneInfo, *, view: str | None = None, sla: str | None = None) -> TaskFilter:
    """The TaskFilter the JSON route would build for these parameters (api/routes/tasks.py)."""
    view = q.view if view is None else view
    sla_value = q.sla if sla is None else sla
    f = TaskFilter(definition_key=q.procedure or None, sla=sla_value or None, text=q.q or None,
                   sort=q.sort, order=q.order)
    if view == "mine":
        f.assignee = "me"
    elif view == "groups":
        f.unassigned = True
    start = _day_start(q.due_from, zone) if q.due_from else None
    if start is not None:  # due on or after that day (the filter is strict)
        f.due_after = start - timedelta(microseconds=1)
    end = _day_start(q.due_until, zone) if q.due_until else None
    if end is not None:  # due on or before that day: before the next one starts
        f.due_before = end + timedelta(days=1)
    if q.min_priority.strip().lstrip("-").isdigit() and abs(int(q.min_priority)) < 2**31:
        f.min_priority = int(q.min_priority)
    return f


def _procedures(session: Any) -> dict[str, str]:
    """Every procedure's key and the name of its latest version (for the filter and the rows)."""
    page = list_definitions(session, key=None, latest=True, paging=Paging.parse(limit=500))
    return {d.key: d.name or d.key for d in page.items}


def _business_keys(session: Any, instance_ids: set[str]) -> dict[str, str | None]:
    if not instance_ids:
        return {}
    return dict(session.execute(select(InstanceRow.id, InstanceRow.business_key)
                                .where(InstanceRow.id.in_(sorted(instance_ids)))).all())


@router.get("/inbox")
def inbox(request: Request, db: DbDep, actor: PageActorDep, q: Annotated[InboxQuery, Depends()]) -> Response:
    """My tasks and my groups' tasks: filters, sort, keyset paging, counts per view, SLA badges."""
    require(actor, "employee")
    q.clean()
    zone = ZoneInfo(_zone(request))
    f = _task_filter(q, zone)
    try:
        paging = Paging.parse(limit=q.page_size, cursor=q.cursor or None)
    except InvalidInput:
        paging = Paging.parse(limit=q.page_size)  # a stale or edited cursor: the first page
    with db.read() as s:
        try:
            page = list_tasks(s, actor, f, paging)
        except InvalidInput:  # a cursor from another sort order
            page = list_tasks(s, actor, f, Paging.parse(limit=q.page_size))
        counts = {
            "all": count_tasks(s, actor, _task_filter(q, zone, view="all")),
            "mine": count_tasks(s, actor, _task_filter(q, zone, view="mine")),
            "groups": count_tasks(s, actor, _task_filter(q, zone, view="groups")),
            "at_risk": count_tasks(s, actor, _task_filter(q, zone, sla="at_risk")),
            "breached": count_tasks(s, actor, _task_filter(q, zone, sla="breached")),
        }
        procedures = _procedures(s)
        keys = _business_keys(s, {t.instance_id for t in page.items})
    rows = [{"task": t, "sla": sla_state(t), "business_key": keys.get(t.instance_id),
             "procedure": procedures.get(t.definition_key, t.definition_key)} for t in page.items]
    return render(request, "employee/inbox.html", {
        "q": q, "rows": rows, "counts": counts, "count_cap": COUNT_CAP, "total": page.total,
        "total_capped": page.total_capped, "procedures": procedures,
        "next_link": q.link(cursor=page.next_cursor) if page.next_cursor else None,
        "first_link": q.link() if q.cursor else None,
        "done": request.query_params.get("done"),
    })


# ------------------------------------------------------------------ task page


def _shown(name: str, value: Any) -> dict[str, Any]:
    """One item of the data a step shows: a readable label and the value as text (``kind`` says how:
    ``bool`` for yes/no, ``block`` for structured values shown as indented JSON, else ``text``)."""
    label = forms.humanize(name)
    if isinstance(value, bool):
        return {"name": name, "label": label, "kind": "bool", "value": value}
    if isinstance(value, dict | list):
        return {"name": name, "label": label, "kind": "block",
                "value": json.dumps(value, ensure_ascii=False, indent=2, default=str)}
    return {"name": name, "label": label, "kind": "text", "value": "" if value is None else str(value)}


NOTES_SHOWN = 200  # comments and attachments listed on the task page (oldest first)


def _task_page(request: Request, db: DbDep, actor: Actor, task_id: str, *, submitted: dict[str, str] | None = None,
               errors: dict[str, str] | None = None, general: list[str] | None = None,
               note_errors: dict[str, str] | None = None, status_code: int = 200) -> Response:
    with db.read() as s:
        detail = task_detail(s, actor, task_id)  # NotFound (404) for a task this user may not see
        task: TaskRow = detail["task"]
        instance = s.get(InstanceRow, task.instance_id)
        procedures = _procedures(s)
        shown = Paging.parse(limit=NOTES_SHOWN)
        comments = list_task_comments(s, actor, task_id, shown)  # the API's GET /api/tasks/{id}/comments
        attachments = list_task_attachments(s, actor, task_id, shown)
    form = detail["form"]
    mine = task.assignee == actor.name
    may_complete = task.state == "open" and (mine or task.assignee is None)
    fields = forms.fields_for(form, values=detail["data"], submitted=submitted, errors=errors,
                              time_zone=_zone(request)) if may_complete else []
    return render(request, "employee/task.html", {
        "task": task, "sla": sla_state(task), "mine": mine, "may_complete": may_complete,
        "procedure": procedures.get(task.definition_key, task.definition_key),
        "business_key": instance.business_key if instance else None,
        "version": instance.definition_version if instance else None,
        "sop_html": sop.to_html(detail["sop"]),
        "data": [_shown(k, v) for k, v in detail["data"].items()],
        "form": form, "fields": fields, "general_errors": general or [],
        "diagram_url": f"/instances/{task.instance_id}/diagram.xml",
        "current": json.dumps([task.element_id] if task.state == "open" else []),
        "done": request.query_params.get("done"),
        "comments": comments.items, "attachments": attachments.items,
        "more_notes": bool(comments.next_cursor or attachments.next_cursor),
        "note_errors": note_errors or {}, "max_attachment_bytes": request.app.state.settings.max_attachment_bytes,
    }, status_code=status_code)


@router.post("/tasks/{task_id}/comments")
async def comment(request: Request, db: DbDep, actor: PageActorDep, _csrf: CsrfDep, task_id: str) -> Response:
    """Add a comment (the API's ``POST /api/tasks/{id}/comments``); a refused text re-renders beside the field."""
    require(actor, "employee")
    message = (await request.form()).get("message")
    try:
        db.command(lambda s: add_comment(s, task_id=task_id, actor=actor, message=message))
    except InvalidInput as exc:
        return _task_page(request, db, actor, task_id, note_errors={"message": error_text(request, exc)}, status_code=422)
    return _redirect(f"/tasks/{task_id}?done=commented#comments")


@router.post("/tasks/{task_id}/attachments")
async def attach(request: Request, db: DbDep, settings: SettingsDep, actor: PageActorDep, _csrf: CsrfDep,
                 task_id: str) -> Response:
    """Attach a file (the API's ``POST /api/tasks/{id}/attachments``: same size and type checks, SHA-256, audit).

    A refused file re-renders the page with the reason beside the file field and the API's status
    (413 too large, 415 type, 422 otherwise); nothing is stored.
    """
    require(actor, "employee")
    form = await request.form()
    try:
        upload, description = form.get("file"), form.get("description")
        if not isinstance(upload, UploadFile) or not upload.filename:
            return _task_page(request, db, actor, task_id, status_code=422,
                              note_errors={"file": _gettext(request)("Choose a file to attach.")})
        limit = settings.max_attachment_bytes
        data = await upload.read(limit + 1)
        filename = upload.filename
    finally:
        await form.close()  # the upload's spooled temporary file
    try:
        if len(data) > limit:
            raise TooLarge("the file is larger than the limit of {limit} bytes", field="file", limit=limit,
                           params={"limit": limit})
        db.command(lambda s: add_attachment(s, task_id=task_id, actor=actor, filename=filename, data=data,
                                            description=description or None, settings=settings))
    except InvalidInput as exc:
        status = 413 if isinstance(exc, TooLarge) else 415 if isinstance(exc, UnsupportedType) else 422
        return _task_page(request, db, actor, task_id, note_errors={"file": error_text(request, exc)}, status_code=status)
    return _redirect(f"/tasks/{task_id}?done=attached#attachments")


@router.get("/tasks/{task_id}/attachments/{attachment_id}")
def download(request: Request, db: DbDep, actor: PageActorDep, task_id: str, attachment_id: str) -> Response:
    """Download a task's attachment: the API's ``GET /api/attachments/{id}/content`` rule and headers."""
    with db.read() as s:
        row = get_attachment(s, actor, attachment_id)
        if row.task_id != task_id:
            raise NotFound("attachment {attachment_id} not found", attachment_id=attachment_id,
                           params={"attachment_id": attachment_id})
        return Response(row.content, headers=download_headers(row.name, row.content_type, row.sha256))


@router.get("/tasks/{task_id}")
def task_page(request: Request, db: DbDep, actor: PageActorDep, task_id: str) -> Response:
    """The task: SOP step, the data it shows, its form, claim/unclaim/complete, the diagram."""
    require(actor, "employee")
    return _task_page(request, db, actor, task_id)


@router.post("/tasks/{task_id}/claim")
def claim(db: DbDep, actor: PageActorDep, _csrf: CsrfDep, task_id: str) -> Response:
    require(actor, "employee")
    db.command(lambda s: claim_task(s, task_id=task_id, actor=actor))
    return _redirect(f"/tasks/{task_id}?done=claimed")


@router.post("/tasks/{task_id}/unclaim")
def unclaim(db: DbDep, actor: PageActorDep, _csrf: CsrfDep, task_id: str) -> Response:
    require(actor, "employee")
    db.command(lambda s: unclaim_task(s, task_id=task_id, actor=actor))
    return _redirect(f"/tasks/{task_id}?done=released")


def _strings(data: FormData) -> dict[str, str]:
    """A form post's text fields (files and repeated names aside: the last value of a name)."""
    return {k: v for k, v in data.multi_items() if isinstance(v, str)}


@router.post("/tasks/{task_id}/complete")
async def complete(request: Request, db: DbDep, settings: SettingsDep, actor: PageActorDep, _csrf: CsrfDep,
                   task_id: str) -> Response:
    """Complete with the form's values; refused values re-render the page (422) with the errors beside them."""
    require(actor, "employee")
    submitted = _strings(await request.form())
    with db.read() as s:
        form = task_detail(s, actor, task_id)["form"]
    _ = _gettext(request)
    parsed = forms.parse_submission(form, submitted, time_zone=_zone(request), gettext=_)
    if parsed.errors:
        return _refused(request, db, actor, task_id, form, submitted, parsed, None)
    try:
        db.command(lambda s: complete_task(s, task_id=task_id, actor=actor, variables=parsed.values,
                                           settings=settings))
    except InvalidInput as exc:
        return _refused(request, db, actor, task_id, form, submitted, parsed, exc)
    return _redirect("/inbox?done=completed")


def _refused(request: Request, db: DbDep, actor: Actor, task_id: str, form: dict[str, Any] | None,
             submitted: dict[str, str], parsed: forms.Parsed, exc: InvalidInput | None) -> Response:
    _ = _gettext(request)
    fields = forms.fields_for(form)
    if exc is not None:
        text = error_text(request, exc)
        engine_errors = exc.context.get("errors") or ({exc.context["field"]: text}
                                                      if exc.context.get("field") else None)
        per_field, general = forms.field_errors(fields, engine_errors, message=text, gettext=_)
    else:
        per_field, general = _also_engine_checks(form, parsed, fields, _)
    per_field.update(parsed.errors)
    return _task_page(request, db, actor, task_id, submitted=submitted, errors=per_field, general=general,
                      status_code=422)


def _also_engine_checks(form: dict[str, Any] | None, parsed: forms.Parsed, fields: list[forms.Field],
                        _: forms.Gettext) -> tuple[dict[str, str], list[str]]:
    """With fields that could not be read at all, the engine's schema check still speaks for the
    rest (so every error shows at once); nothing is stored either way."""
    from engine import forms as engine_forms

    try:
        engine_forms.validate(form, parsed.values)
    except InvalidInput as exc:
        errors = {k: v for k, v in (exc.context.get("errors") or {}).items() if k not in parsed.errors}
        return forms.field_errors(fields, errors, gettext=_)
    return {}, []


# ------------------------------------------------------------------ start page


def _start_forms(request: Request, session: Any, *, key: str | None = None, submitted: dict[str, str] | None = None,
                 errors: dict[str, str] | None = None) -> list[dict[str, Any]]:
    out = []
    for d in list_definitions(session, key=None, latest=True, paging=Paging.parse(limit=500)).items:
        start = get_start_form(session, key=d.key)
        this = d.key == key
        out.append({
            "key": d.key, "name": d.name or d.key, "version": d.version, "form": start["form"],
            "fields": forms.fields_for(start["form"], submitted=submitted if this else None,
                                       errors=errors if this else None, time_zone=_zone(request)),
            "business_key": (submitted or {}).get("business_key", "") if this else "",
            "business_key_error": (errors or {}).get("business_key") if this else None,
            "open": this,
        })
    return sorted(out, key=lambda p: p["name"].lower())


@router.get("/start")
def start_page(request: Request, db: DbDep, actor: PageActorDep) -> Response:
    """The procedures I may start (every deployed one: sopflow has no starter restriction), each with its form."""
    require(actor, "employee")
    with db.read() as s:
        procedures = _start_forms(request, s, key=request.query_params.get("open"))
    return render(request, "employee/start.html", {"procedures": procedures, "general_errors": [],
                                                   "error_key": None})


@router.post("/start/{key}")
async def start(request: Request, db: DbDep, settings: SettingsDep, actor: PageActorDep, _csrf: CsrfDep,
                key: str) -> Response:
    """Start ``key``; to its first task when that is mine, else to my requests. Refusals re-render (422)."""
    require(actor, "employee")
    submitted = _strings(await request.form())
    with db.read() as s:
        form = get_start_form(s, key=key)["form"]  # NotFound (404) for an unknown procedure
    _ = _gettext(request)
    parsed = forms.parse_submission(form, submitted, time_zone=_zone(request), gettext=_)
    business_key = submitted.get("business_key", "").strip() or None
    errors: dict[str, str] = dict(parsed.errors)
    general: list[str] = []
    if business_key and len(business_key) > 200:
        errors["business_key"] = _("Enter at most %(count)s characters.") % {"count": 200}
    if not errors:
        try:
            row = db.command(lambda s: start_instance(s, key=key, actor=actor, variables=parsed.values,
                                                      business_key=business_key, settings=settings))
        except InvalidInput as exc:
            fields = forms.fields_for(form)
            text = error_text(request, exc)
            engine_errors = exc.context.get("errors") or ({exc.context["field"]: text}
                                                          if exc.context.get("field") else None)
            if exc.context.get("field") == "business_key":
                errors["business_key"] = text
            else:
                per_field, general = forms.field_errors(fields, engine_errors, message=text, gettext=_)
                errors.update(per_field)
        else:
            with db.read() as s:
                first = s.scalars(select(TaskRow.id).where(
                    TaskRow.instance_id == row.id, TaskRow.state == "open", TaskRow.assignee == actor.name)
                    .order_by(TaskRow.created_at, TaskRow.id).limit(1)).first()
            return _redirect(f"/tasks/{first}?done=started" if first else f"/requests?done=started#r-{row.id}")
    with db.read() as s:
        procedures = _start_forms(request, s, key=key, submitted=submitted, errors=errors)
    return render(request, "employee/start.html", {"procedures": procedures, "general_errors": general,
                                                   "error_key": key}, status_code=422)


# ------------------------------------------------------------------ my requests


@router.get("/requests")
def requests_page(request: Request, db: DbDep, actor: PageActorDep,
                  cursor: Annotated[str, Query(max_length=200)] = "") -> Response:
    """The instances I started, newest first: state and current steps (open tasks)."""
    require(actor, "employee")
    try:
        paging = Paging.parse(limit=PAGE_SIZE, cursor=cursor or None)
    except InvalidInput:
        paging = Paging.parse(limit=PAGE_SIZE)
    with db.read() as s:
        page = list_instances(s, actor, InstanceFilter(started_by=actor.name), paging)
        ids = [i.id for i in page.items]
        open_tasks: dict[str, list[TaskRow]] = {i: [] for i in ids}
        if ids:
            for t in s.scalars(select(TaskRow).where(TaskRow.instance_id.in_(ids), TaskRow.state == "open")
                               .order_by(TaskRow.created_at, TaskRow.id)):
                open_tasks[t.instance_id].append(t)
        procedures = _procedures(s)
    rows = [{"instance": i, "procedure": procedures.get(i.definition_key, i.definition_key),
             "steps": open_tasks[i.id]} for i in page.items]
    nxt = paging.cursor_after(len(page.items), page.total)
    return render(request, "employee/requests.html", {
        "rows": rows, "total": page.total, "next_link": f"/requests?cursor={nxt}" if nxt else None,
        "first_link": "/requests" if cursor else None, "done": request.query_params.get("done"),
    })
