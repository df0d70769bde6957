"""Auditor pages: instance search, the instance page (diagram, timeline, task records), audit search,
export and chain verification.

Each page calls the engine function its JSON twin calls, with the same Actor:
``/instances`` = ``GET /api/process-instances`` (list_instances; auditors and admins here, an
employee has "My requests"), ``/instances/{id}`` = ``GET /api/history/process-instances/{id}``
(timeline: auditors, admins and employees who may see the instance), ``/audit`` =
``GET /api/audit`` (list_audit), ``/audit/export`` = ``GET /api/audit/export`` (the same streaming
function), ``/audit/verify`` = ``GET /api/audit/verify`` (audit.verify).

Dates typed into the search forms are calendar days in the user's time zone: "from" is the
start of that day, "to" includes the whole day.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta
from typing import Any
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Request
from fastapi.responses import Response

from api.deps import require
from api.routes.audit import export_response
from api.routes.task_notes import download_headers
from engine import audit, clock, limits
from engine.errors import InvalidInput, NotFound, Phrase
from engine.history import diagram_markers, task_records
from engine.queries import (
    AuditFilter,
    InstanceFilter,
    Page,
    Paging,
    event_dict,
    get_attachment,
    list_audit,
    list_instance_attachments,
    list_instance_comments,
    list_instances,
    timeline,
)
from web import forms
from web.deps import PageActorDep, PageSessionDep
from web.formdata import PageRoute
from web.render import N_, error_text, reason_text, render

router = APIRouter(include_in_schema=False, route_class=PageRoute)

INSTANCES_PAGE = 25
AUDIT_PAGE = 50
NOTES_SHOWN = 500  # comments and attachments shown on the instance page (the API's largest page), oldest first
STATES = (("running", N_("Running")), ("completed", N_("Completed")), ("cancelled", N_("Cancelled")))
STATE_LABELS = dict(STATES)
TASK_STATES = {"open": N_("Open"), "completed": N_("Completed"), "cancelled": N_("Cancelled")}

# what each audit action means, for people (the code is shown as well, and for unknown actions alone)
ACTIONS: dict[str, str] = {
    "instance.started": N_("Instance started"),
    "instance.completed": N_("Instance completed"),
    "instance.cancelled": N_("Instance cancelled"),
    "activities.completed": N_("Steps run by the engine"),
    "task.created": N_("Task opened"),
    "task.claimed": N_("Task claimed"),
    "task.unclaimed": N_("Task released"),
    "task.assigned": N_("Task assigned"),
    "task.completed": N_("Task completed"),
    "task.cancelled": N_("Task cancelled"),
    "task.escalated": N_("Task escalated"),
    "task.at_risk": N_("Task at risk of missing its deadline"),
    "task.breached": N_("Task missed its deadline"),
    "task.reminder": N_("Task reminder sent"),
    "task.comment_added": N_("Comment added"),
    "task.attachment_added": N_("File attached"),
    "timer.scheduled": N_("Timer scheduled"),
    "timer.fired": N_("Timer fired"),
    "message.correlated": N_("Message received"),
    "message.sent": N_("Message sent"),
    "external_task.created": N_("External task opened"),
    "external_task.completed": N_("External task completed"),
    "external_task.failed": N_("External task failed"),
    "external_task.bpmn_error": N_("External task raised a BPMN error"),
    "external_task.lock_extended": N_("External task lock extended"),
    "external_task.retries_set": N_("External task retries set"),
    "external_task.cancelled": N_("External task cancelled"),
    "incident.created": N_("Incident raised"),
    "incident.resolved": N_("Incident resolved"),
    "deployment.created": N_("Procedure deployed"),
    "clock.moved": N_("Clock moved"),
    "user.created": N_("User created"),
    "user.groups_changed": N_("User groups changed"),
    "user.password_set": N_("Password set"),
    "user.signed_in": N_("Signed in"),
    "user.signed_out": N_("Signed out"),
    "user.sign_in_failed": N_("Sign-in failed"),
    "user.locked": N_("Account locked"),
    "user.preferences_set": N_("Settings changed"),
    "token.issued": N_("API token issued"),
    "tokens.revoked": N_("API tokens revoked"),
}

# payload keys people read often, named in their language (others show their code)
DETAIL_LABELS: dict[str, str] = {
    "assignee": N_("Assignee"), "previous_assignee": N_("Previous assignee"), "due_at": N_("Due"),
    "priority": N_("Priority"), "candidate_groups": N_("Offered to groups"), "candidate_users": N_("Offered to users"),
    "reason": N_("Reason"), "business_key": N_("Business key"), "definition_key": N_("Procedure"),
    "definition_version": N_("Version"), "message": N_("Message"), "sender": N_("Sender"), "topic": N_("Topic"),
    "worker_id": N_("Worker"), "role": N_("Role"), "groups": N_("Groups"), "retries": N_("Retries"),
    "error_message": N_("Error"), "locale": N_("Language"), "time_zone": N_("Time zone"),
}

# payload keys the timeline shows in their own sections, not among the other details
_SHOWN_APART = frozenset({"variables", "changed", "activities", "element_id", "name"})

# field names the engine's InvalidInput carries -> the form field that shows the message
_INSTANCE_FIELDS = {"definition_key": "procedure", "version": "version", "status": "state", "started_after": "started_from",
                    "started_before": "started_to", "variable": "var_value"}
_AUDIT_FIELDS = {"from": "from", "to": "to", "actor": "actor", "action": "action", "instance_id": "instance",
                 "definition_key": "procedure"}


# ------------------------------------------------------------------ form input


def _text(request: Request, name: str, max_length: int = 200) -> str:
    return request.query_params.get(name, "").strip()[:max_length]


def _day_start(value: str, time_zone: str | None, field_name: str, errors: dict[str, str]) -> datetime | None:
    """Midnight of the calendar day ``value`` (YYYY-MM-DD) in the user's zone, or None (and an error)."""
    if not value:
        return None
    try:
        return forms.day_start(value, ZoneInfo(time_zone or "UTC"))
    except ValueError as exc:
        errors[field_name] = str(exc)
        return None


def _next_day(start: datetime) -> datetime:
    return datetime.combine(start.date() + timedelta(days=1), time(), start.tzinfo)


def _variable_value(raw: str) -> Any:
    """A variable filter's value as the API reads it: JSON if it parses, else the text itself.

    Raises InvalidInput (field ``variable``) for JSON the API refuses too (e.g. NaN, a lone surrogate).
    """
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):
        return raw
    problem = limits.find_problem(value, max_depth=1)
    if problem is not None:
        what = Phrase("the value")
        raise InvalidInput("variable filter: {problem}", field="variable",
                           params={"problem": problem.describe(what)})
    return value


def _paging(request: Request, size: int, errors: dict[str, str]) -> Paging:
    try:
        return Paging.parse(limit=size, cursor=_text(request, "cursor", 300) or None)
    except InvalidInput:
        errors["cursor"] = N_("This page link is out of date; start the search again.")
        return Paging(0, size)


@dataclass
class Pager:
    """Where the current page sits in the result, and links to the next and the first page."""

    first: int
    last: int
    total: int
    next_url: str | None
    first_url: str | None
    params: dict[str, str] = field(default_factory=dict)


def _pager(path: str, params: dict[str, str], paging: Paging, page: Page) -> Pager:
    kept = {k: v for k, v in params.items() if v}
    next_url = f"{path}?{urlencode({**kept, 'cursor': page.next_cursor})}" if page.next_cursor else None
    first_url = (f"{path}?{urlencode(kept)}" if kept else path) if paging.offset else None
    return Pager(paging.offset + 1 if page.items else 0, paging.offset + len(page.items), page.total,
                 next_url, first_url, kept)


# ------------------------------------------------------------------ instance search


@router.get("/instances")
def instances(request: Request, found: PageSessionDep) -> Response:
    actor = found.actor
    require(actor, "auditor")
    names = ("procedure", "version", "state", "business_key", "business_key_prefix", "started_by", "started_from",
             "started_to", "var_name", "var_value")
    form = {name: _text(request, name) for name in names}
    errors: dict[str, str] = {}
    version = None
    if form["version"]:
        if not form["version"].isdigit() or not 1 <= int(form["version"]) < 2**31:
            errors["version"] = N_("Enter a version number (1, 2, ...).")
        else:
            version = int(form["version"])
    if form["state"] and form["state"] not in STATE_LABELS:
        errors["state"] = N_("Choose a state from the list.")
    start = _day_start(form["started_from"], found.time_zone, "started_from", errors)
    end = _day_start(form["started_to"], found.time_zone, "started_to", errors)
    if start and end and start > end:
        errors["started_to"] = N_("The end of the range is before its start.")
    variables: dict[str, Any] = {}
    if form["var_name"] or form["var_value"]:
        if not form["var_name"].isidentifier():
            errors["var_name"] = N_("Enter the name of a process variable (letters, digits and _).")
        else:
            try:
                variables[form["var_name"]] = _variable_value(form["var_value"])
            except InvalidInput as exc:
                errors["var_value"] = error_text(request, exc)
    paging = _paging(request, INSTANCES_PAGE, errors)
    page: Page | None = None
    if not errors:
        f = InstanceFilter(definition_key=form["procedure"] or None, status=form["state"] or None,
                           business_key=form["business_key"] or None, started_by=form["started_by"] or None,
                           started_after=start - timedelta(microseconds=1) if start else None,
                           started_before=_next_day(end) if end else None, variables=variables,
                           definition_version=version, business_key_prefix=form["business_key_prefix"] or None)
        try:
            with request.app.state.db.read() as s:
                page = list_instances(s, actor, f, paging)
        except InvalidInput as exc:
            errors[_INSTANCE_FIELDS.get(str(exc.context.get("field")), "form")] = error_text(request, exc)
    pager = _pager("/instances", form, paging, page) if page is not None else None
    return render(request, "auditor/instances.html", {
        "form": form, "errors": errors, "page": page, "pager": pager, "states": STATES,
        "state_labels": STATE_LABELS}, status_code=422 if errors else 200)


# ------------------------------------------------------------------ the instance page


@dataclass
class Change:
    name: str
    before: Any
    after: Any


@dataclass
class Step:
    """An activity inside an ``activities.completed`` event."""

    name: str
    element_id: str
    kind: str
    changes: list[Change]


@dataclass
class Entry:
    """One audit event as the timeline shows it."""

    seq: int
    occurred_at: str
    actor: str
    action: str
    chain: str
    instance_id: str | None
    definition_key: str | None
    definition_version: int | None
    label: str | None
    subject: str | None
    task_id: str | None
    submitted: dict[str, Any] | None
    changes: list[Change]
    steps: list[Step]
    details: dict[str, Any]


def _changes(raw: Any) -> list[Change]:
    if not isinstance(raw, dict):
        return []
    return [Change(name, (c or {}).get("from"), (c or {}).get("to")) for name, c in raw.items()
            if isinstance(c, dict)]


def _entry(event: dict[str, Any]) -> Entry:
    payload = event["payload"] if isinstance(event["payload"], dict) else {"value": event["payload"]}
    steps = [Step(str(a.get("name") or a.get("element_id") or ""), str(a.get("element_id") or ""),
                  str(a.get("type") or ""), _changes(a.get("changed")))
             for a in payload.get("activities") or [] if isinstance(a, dict)]
    name, element = payload.get("name"), payload.get("element_id")
    subject = f"{name} ({element})" if name and element and name != element else (name or element)
    submitted = payload.get("variables")
    return Entry(event["seq"], event["occurred_at"], event["actor"], event["action"], event["chain"],
                 event["instance_id"], event["definition_key"], event["definition_version"], ACTIONS.get(event["action"]),
                 str(subject) if subject else None, event["task_id"],
                 submitted if isinstance(submitted, dict) else None, _changes(payload.get("changed")), steps,
                 {k: _detail(k, v) for k, v in payload.items() if k not in _SHOWN_APART and v not in (None, [], {})})


@dataclass(frozen=True)
class Instant:
    """A payload value that is an ISO 8601 instant (a ``*_at`` key the engine wrote): shown in the user's zone."""

    value: datetime


def _detail(key: str, value: Any) -> Any:
    if key.endswith("_at") and isinstance(value, str):
        try:
            when = datetime.fromisoformat(value)
        except ValueError:
            return value
        return Instant(when) if when.tzinfo is not None else value
    return value


def is_instant(value: Any) -> bool:
    return isinstance(value, Instant)


def shown(value: Any) -> str:
    """A value as text for people: strings as they are, everything else as compact JSON."""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


@router.get("/instances/{instance_id}")
def instance_page(request: Request, actor: PageActorDep, instance_id: str) -> Response:
    require(actor, "auditor", "employee")  # GET /api/history/process-instances/{id}
    with request.app.state.db.read() as s:
        found = timeline(s, actor, instance_id[:64])
        markers = diagram_markers(s, found["instance"], found["events"])
        records = task_records(s, found["tasks"])
        comments = list_instance_comments(s, actor, instance_id, Paging(0, NOTES_SHOWN))
        attachments = list_instance_attachments(s, actor, instance_id, Paging(0, NOTES_SHOWN))
    instance = found["instance"]
    return render(request, "auditor/instance.html", {
        "instance": instance, "entries": [_entry(e) for e in found["events"]], "records": records,
        "completed": json.dumps(markers.completed), "current": json.dumps(markers.current),
        "state_labels": STATE_LABELS, "task_states": TASK_STATES, "shown": shown,
        "labels": DETAIL_LABELS, "is_instant": is_instant,
        "comments": comments, "attachments": attachments, "notes_shown": NOTES_SHOWN, "task_names": {t.id: t.name for t in found["tasks"]},
        "variables": {k: v for k, v in (instance.variables or {}).items()}})


@router.get("/instances/{instance_id}/attachments/{attachment_id}")
def instance_attachment(request: Request, actor: PageActorDep, instance_id: str, attachment_id: str) -> Response:
    """Download an attachment listed on the instance page (``GET /api/attachments/{id}/content``'s rule)."""
    require(actor, "employee", "auditor")
    with request.app.state.db.read() as s:
        row = get_attachment(s, actor, attachment_id[:64])
        if row.instance_id != instance_id:
            raise NotFound("attachment {value} not found", attachment_id=attachment_id[:64],
                           params={"value": attachment_id[:64]})
        return Response(row.content, headers=download_headers(row.name, row.content_type, row.sha256))


# ------------------------------------------------------------------ the audit trail


def _audit_form(request: Request, time_zone: str | None) -> tuple[dict[str, str], dict[str, str], AuditFilter]:
    names = ("actor", "action", "instance", "procedure", "from", "to")
    form = {name: _text(request, name) for name in names}
    errors: dict[str, str] = {}
    start = _day_start(form["from"], time_zone, "from", errors)
    end = _day_start(form["to"], time_zone, "to", errors)
    if start and end and start > end:
        errors["to"] = N_("The end of the range is before its start.")
    f = AuditFilter(actor=form["actor"] or None, action=form["action"] or None, instance_id=form["instance"] or None,
                    definition_key=form["procedure"] or None, since=start, until=_next_day(end) if end else None)
    return form, errors, f


@router.get("/audit")
def audit_page(request: Request, found: PageSessionDep) -> Response:
    actor = found.actor
    require(actor, "auditor")
    form, errors, f = _audit_form(request, found.time_zone)
    paging = _paging(request, AUDIT_PAGE, errors)
    page: Page | None = None
    if not errors:
        try:
            with request.app.state.db.read() as s:
                page = list_audit(s, actor, f, paging)
        except InvalidInput as exc:
            errors[_AUDIT_FIELDS.get(str(exc.context.get("field")), "form")] = error_text(request, exc)
    kept = {k: v for k, v in form.items() if v}
    return render(request, "auditor/audit.html", {
        "form": form, "errors": errors, "page": page, "actions": ACTIONS, "shown": shown, "labels": DETAIL_LABELS, "is_instant": is_instant,
        "events": [_entry(event) for event in _event_dicts(page)],
        "pager": _pager("/audit", form, paging, page) if page is not None else None,
        "export_csv": "/audit/export?" + urlencode({**kept, "format": "csv"}),
        "export_jsonl": "/audit/export?" + urlencode({**kept, "format": "jsonl"}),
    }, status_code=422 if errors else 200)


def _event_dicts(page: Page | None) -> list[dict[str, Any]]:
    return [event_dict(e) for e in page.items] if page is not None else []


@router.get("/audit/export")
def audit_export(request: Request, found: PageSessionDep) -> Response:
    """The audit page's filters as a file: the same stream as ``GET /api/audit/export``."""
    actor = found.actor
    require(actor, "auditor")
    form, errors, f = _audit_form(request, found.time_zone)
    fmt = request.query_params.get("format", "jsonl")
    if fmt not in ("csv", "jsonl"):
        raise InvalidInput("format must be csv or jsonl", field="format")
    if errors:
        field_name, message = next(iter(errors.items()))
        message = reason_text(request, message)  # a page msgid (N_), in the user's language
        raise InvalidInput("{field_name}: {message}", field=field_name,
                           params={"field_name": field_name, "message": message})
    return export_response(request.app.state.db, actor, f, fmt)


@router.get("/audit/verify")
def audit_verify(request: Request, actor: PageActorDep) -> Response:
    require(actor, "auditor")
    with request.app.state.db.read() as s:
        result = audit.verify(s)
    return render(request, "auditor/verify.html", {"result": result.to_dict(), "checked_at": clock.now()})
