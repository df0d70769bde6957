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
import re
from dataclasses import dataclass
from dataclasses import fields as dataclass_fields
from datetime import timedelta
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
from web import formdata, forms, i18n, sop
from web.deps import CsrfDep, PageActorDep, optional_session
from web.formdata import PageRoute, shows_form_problems
from web.render import N_, error_text, page_locale, render

router = APIRouter(include_in_schema=False, route_class=PageRoute)

PAGE_SIZE = 25
VIEWS = ("all", "mine", "groups")
SORTS = ("due", "priority", "created")
SLAS = ("on_time", "at_risk", "breached")
# field names the engine's InvalidInput carries -> the inbox filter that shows the message
_INBOX_FIELDS = {"text": "q", "definition_key": "procedure", "sla": "sla", "sort": "sort", "cursor": "cursor",
                 "min_priority": "min_priority"}


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
    """The inbox's filters as the page's GET form sends them (all strings).

    :meth:`check` reads them as the auditor's search pages read theirs: a value that is not one
    the form offers or cannot be read is an error shown beside its field (the page answers 422
    and lists no tasks), never silently ignored and never a 500.
    """

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

    def check(self, zone: ZoneInfo) -> dict[str, str]:
        """The filters' problems by field (msgids for the page to translate); empty when all are usable."""
        errors: dict[str, str] = {}
        for name in ("view", "sla", "sort", "order"):
            allowed = {"view": VIEWS, "sla": ("", *SLAS), "sort": SORTS, "order": ("asc", "desc")}[name]
            if getattr(self, name) not in allowed:
                errors[name] = N_("Choose an option from the list.")
        self.q = self.q.strip()
        for name, value in (("q", self.q), ("procedure", self.procedure)):
            if len(value) > 200:
                errors[name] = N_("Enter at most 200 characters.")
            elif any(ord(ch) < 32 or ord(ch) == 0x7F or 0xD800 <= ord(ch) <= 0xDFFF for ch in value):
                errors[name] = N_("Enter text without control characters.")
        priority = self.min_priority.strip()
        if priority and not (re.fullmatch(r"[+-]?[0-9]{1,10}", priority) and abs(int(priority)) < 2**31):
            errors["min_priority"] = N_("Enter a priority as a whole number, like 50.")
        if self.limit and not (self.limit.isascii() and self.limit.isdigit() and 1 <= int(self.limit) <= 100):
            errors["limit"] = N_("Enter a page size from 1 to 100.")
        days = {}
        for name in ("due_from", "due_until"):
            if getattr(self, name):
                try:
                    days[name] = forms.day_start(getattr(self, name), zone)
                except ValueError as exc:
                    errors[name] = str(exc)
        if len(days) == 2 and days["due_from"] > days["due_until"]:
            errors["due_until"] = N_("The end of the range is before its start.")
        if len(self.cursor) > 300:
            errors["cursor"] = N_("This page link is out of date; start the search again.")
        self.invalid = set(errors)
        return errors

    @property
    def page_size(self) -> int:
        return int(self.limit) if self.limit and "limit" not in getattr(self, "invalid", ()) else PAGE_SIZE

    def link(self, **changes: str) -> str:
        """This query's URL with ``changes`` (empty values dropped; a change restarts paging)."""
        invalid = getattr(self, "invalid", set())  # a refused value is not carried into the links
        kept = {f.name: getattr(self, f.name) for f in dataclass_fields(self) if f.name not in invalid}
        params = {**kept, "cursor": "", **changes}
        return "/inbox?" + urlencode({k: v for k, v in params.items() if v})


def _task_filter(q: InboxQuery, zone: ZoneInfo, *, view: str | None = None, sla: str | None = None) -> TaskFilter:
    """The TaskFilter the JSON route would build for these (checked) parameters (api/routes/tasks.py)."""
    view = q.view if view is None else view
    sla_value = q.sla if sla is None else sla
    f = TaskFilter(definition_key=q.procedure or None, sla=sla_value or None, text=q.q or None,
                   sort=q.sort, order=q.order)
    if view == "mine":
        f.assignee = "me"
    elif view == "groups":
        f.unassigned = True
    if q.due_from:  # due on or after that day (the filter is strict)
        f.due_after = forms.day_start(q.due_from, zone) - timedelta(microseconds=1)
    if q.due_until:  # due on or before that day: before the next one starts
        f.due_before = forms.day_start(q.due_until, zone) + timedelta(days=1)
    if q.min_priority.strip():
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
    """My tasks and my groups' tasks: filters, sort, keyset paging, counts per view, SLA badges.

    Filters that cannot be used answer 422 with the message beside each field, as /instances does.
    """
    require(actor, "employee")
    zone = ZoneInfo(_zone(request))
    errors = q.check(zone)
    paging = Paging.parse(limit=q.page_size)
    if not errors and q.cursor:
        try:
            paging = Paging.parse(limit=q.page_size, cursor=q.cursor)
        except InvalidInput:
            errors["cursor"] = N_("This page link is out of date; start the search again.")
    rows: list[dict[str, Any]] = []
    counts: dict[str, Any] = {}
    page = None
    with db.read() as s:
        procedures = _procedures(s)
        if not errors:
            f = _task_filter(q, zone)
            try:
                page = list_tasks(s, actor, f, paging)
            except InvalidInput as exc:  # a cursor from another sort order, a filter the query refuses
                field = str(exc.context.get("field") or "")
                errors[_INBOX_FIELDS.get(field, "cursor")] = error_text(request, exc)
            else:
                counts = {
                    "all": count_tasks(s, actor, _task_filter(q, zone, view="all")),
                    "mine": count_tasks(s, actor, _task_filter(q, zone, view="mine")),
                    "groups": count_tasks(s, actor, _task_filter(q, zone, view="groups")),
                    "at_risk": count_tasks(s, actor, _task_filter(q, zone, sla="at_risk")),
                    "breached": count_tasks(s, actor, _task_filter(q, zone, sla="breached")),
                }
                keys = _business_keys(s, {t.instance_id for t in page.items})
                rows = [{"task": t, "sla": sla_state(t), "business_key": keys.get(t.instance_id),
                         "procedure": procedures.get(t.definition_key, t.definition_key)} for t in page.items]
    return render(request, "employee/inbox.html", {
        "q": q, "rows": rows, "counts": counts, "count_cap": COUNT_CAP, "errors": errors,
        "total": page.total if page else 0, "total_capped": page.total_capped if page else False,
        "procedures": procedures,
        "next_link": q.link(cursor=page.next_cursor) if page and page.next_cursor else None,
        "first_link": q.link() if q.cursor else None,
        "done": request.query_params.get("done"),
    }, status_code=422 if errors else 200)


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
               note_errors: dict[str, str] | None = None, typed_comment: str | None = None,
               status_code: int = 200) -> Response:
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
        "note_errors": note_errors or {}, "typed_comment": typed_comment or "", "max_attachment_bytes": request.app.state.settings.max_attachment_bytes,
    }, status_code=status_code)


@router.post("/tasks/{task_id}/comments")
@shows_form_problems
async def comment(request: Request, db: DbDep, actor: PageActorDep, _csrf: CsrfDep, task_id: str) -> Response:
    """Add a comment (the API's ``POST /api/tasks/{id}/comments``); a refused text re-renders beside the field."""
    require(actor, "employee")
    message = (await request.form()).get("message")
    if found := formdata.problems(request):
        return _task_page(request, db, actor, task_id, status_code=422, note_errors={
            "message": formdata.field_message(next(iter(found.values())), _gettext(request))},
            typed_comment=message if isinstance(message, str) else None)
    try:
        db.command(lambda s: add_comment(s, task_id=task_id, actor=actor, message=message))
    except InvalidInput as exc:
        return _task_page(request, db, actor, task_id, note_errors={"message": error_text(request, exc)},
                          status_code=422, typed_comment=message if isinstance(message, str) else None)
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
@shows_form_problems
async def complete(request: Request, db: DbDep, settings: SettingsDep, actor: PageActorDep, _csrf: CsrfDep,
                   task_id: str) -> Response:
    """Complete with the form's values; refused values re-render the page (422) with the errors beside them."""
    require(actor, "employee")
    submitted = _strings(await request.form())
    with db.read() as s:
        form = task_detail(s, actor, task_id)["form"]
    _ = _gettext(request)
    parsed = forms.parse_submission(form, submitted, time_zone=_zone(request), gettext=_)
    unread = _unread_fields(request, form, parsed, _)
    if parsed.errors or unread:
        return _refused(request, db, actor, task_id, form, submitted, parsed, None, unread)
    try:
        db.command(lambda s: complete_task(s, task_id=task_id, actor=actor, variables=parsed.values,
                                           settings=settings))
    except InvalidInput as exc:
        return _refused(request, db, actor, task_id, form, submitted, parsed, exc)
    return _redirect("/inbox?done=completed")


def _unread_fields(request: Request, form: dict[str, Any] | None, parsed: forms.Parsed,
                   _: forms.Gettext) -> list[str]:
    """Fields the post could not carry as typed (too long, not valid Unicode: web.formdata): each form
    field's message joins ``parsed.errors``; those of other names are returned, to show above the form."""
    names = set(forms.field_names(form))
    general = []
    for name, problem in formdata.problems(request).items():
        if name in names:
            parsed.errors[name] = formdata.field_message(problem, _)
        elif name != "business_key":
            general.append(f"{name[:100]}: {formdata.field_message(problem, _)}")
    return general


def _refused(request: Request, db: DbDep, actor: Actor, task_id: str, form: dict[str, Any] | None,
             submitted: dict[str, str], parsed: forms.Parsed, exc: InvalidInput | None,
             unread: list[str] | None = None) -> Response:
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
    return _task_page(request, db, actor, task_id, submitted=submitted, errors=per_field,
                      general=[*(unread or []), *general], status_code=422)


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
@shows_form_problems
async def start(request: Request, db: DbDep, settings: SettingsDep, actor: PageActorDep, _csrf: CsrfDep,
                key: str) -> Response:
    """Start ``key``; to its first task when that is mine, else to my requests. Refusals re-render (422)."""
    require(actor, "employee")
    submitted = _strings(await request.form())
    with db.read() as s:
        form = get_start_form(s, key=key)["form"]  # NotFound (404) for an unknown procedure
    _ = _gettext(request)
    parsed = forms.parse_submission(form, submitted, time_zone=_zone(request), gettext=_)
    general: list[str] = _unread_fields(request, form, parsed, _)
    business_key = submitted.get("business_key", "").strip() or None
    errors: dict[str, str] = dict(parsed.errors)
    if problem := formdata.problems(request).get("business_key"):
        errors["business_key"] = formdata.field_message(problem, _)
    elif business_key and len(business_key) > 200:
        errors["business_key"] = _("Enter at most %(count)s characters.") % {"count": 200}
    if not errors and not general:
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
