"""The administrator's pages (``/admin/...``) and every user's in-app notifications (``/notifications``).

Each page calls the same engine functions as its JSON twin, with the same role check
(``api.deps.require``: the admin role), so a page shows and does only what the API would:

- ``/admin`` — counts: users, open incidents, open tasks at risk and breached.
- ``/admin/users`` (+ ``/new``, ``/{name}``) — ``/api/users``: add (with an initial or a
  generated password), role, groups, password set/reset, unlock, revoke API tokens.
- ``/admin/incidents`` — ``GET /api/incidents`` and ``POST /api/incidents/{id}/retry``.
- ``/admin/sla`` — ``GET /api/sla/summary`` and ``GET /api/sla/breaches``.
- ``/admin/clock`` — ``/api/admin/clock``; 404 unless ``SOPFLOW_CLOCK_CONTROL=1``, like the API.
- ``/notifications`` — ``/api/notifications`` (any signed-in user).

Every POST carries the session's CSRF token; a refused form re-renders with the engine's
message next to its field (422/409) and changes nothing.
"""
from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Annotated, Any
from zoneinfo import ZoneInfo

from babel import Locale
from babel.dates import format_timedelta
from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import RedirectResponse, Response

from api.deps import require
from engine import identity, notifications, passwords, worker
from engine.actor import Actor
from engine.clock import OffsetClock
from engine.commands import clock_control, sla
from engine.commands import external_tasks as ext
from engine.errors import Conflict, InvalidInput, NotFound
from engine.queries import Paging
from engine.store.db import Database
from web import i18n
from web.deps import CsrfDep, PageActorDep, PageSessionDep
from web.formdata import PageRoute
from web.render import N_, error_text, page_locale, render

router = APIRouter(include_in_schema=False, route_class=PageRoute)

ROLE_LABELS = {"designer": N_("Designer"), "employee": N_("Employee"), "auditor": N_("Auditor"),
               "integration": N_("Integration (other systems)"), "admin": N_("Administrator")}
INCIDENT_KINDS = {"failed_external_task": N_("External task failed"),
                  "unhandled_bpmn_error": N_("BPMN error not caught"), "failed_job": N_("Job failed")}
DONE = {"role": N_("The role is changed."), "groups": N_("The groups are saved."),
        "unlocked": N_("The account is unlocked."), "not_locked": N_("The account was not locked."),
        "revoked": N_("The API tokens are revoked."), "password": N_("The password is set."),
        "retried": N_("The incident is retried."), "clock": N_("The clock is moved."),
        "read": N_("Marked as read.")}
INCIDENTS_PER_PAGE = 25
# the password choices of the user forms (radio buttons named "mode"); "none" only when adding a user
PASSWORD_MODES = ("generate", "set")
NEW_USER_PASSWORD_MODES = (*PASSWORD_MODES, "none")
UNKNOWN_MODE = N_("Choose one of the password options.")


def _db(request: Request) -> Database:
    return request.app.state.db  # type: ignore[no-any-return]


def _admin(actor: Actor) -> Actor:
    require(actor)  # the admin role, exactly as the JSON routes check it
    return actor


def _translated(request: Request, msgid: str) -> str:
    """A page text (marked with ``N_``) in the request's language, for an errors dict the templates show as is."""
    return i18n.translations(page_locale(request)).gettext(msgid)


def _done(request: Request) -> str | None:
    return DONE.get(request.query_params.get("done", ""))


def _see_other(path: str) -> RedirectResponse:
    return RedirectResponse(path, status_code=303)


def _groups_from(text: str) -> list[str]:
    """Group names from a form field: separated by commas, spaces or new lines."""
    return [g for g in re.split(r"[\s,]+", text.strip()) if g]


def _controlled(request: Request) -> OffsetClock | None:
    return getattr(request.app.state, "controlled_clock", None)


def _admin_context(request: Request, section: str) -> dict[str, Any]:
    return {"section": section, "clock_enabled": _controlled(request) is not None, "role_labels": ROLE_LABELS}


def duration(seconds: float | None) -> str:
    """A duration in words in the page's language (``3 hours``, ``3小时``); '' for None."""
    if seconds is None:
        return ""
    return format_timedelta(timedelta(seconds=seconds), locale=Locale.parse(i18n.current().replace("-", "_")),
                            threshold=1.5)


# ------------------------------------------------------------------ overview


@router.get("/admin")
def overview(request: Request, actor: PageActorDep) -> Response:
    """Counts linking to the rest: users, open incidents, open tasks at risk and breached."""
    _admin(actor)
    with _db(request).read() as s:
        users = identity.list_users(s)
        incidents = ext.list_incidents(s, Paging(limit=1), state="open").total
        rows = sla.summary(s)
    return render(request, "admin/overview.html", {
        **_admin_context(request, "overview"),
        "users": len(users), "locked": sum(1 for u in users if u.locked_until is not None),
        "incidents": incidents, "at_risk": sum(r["open_at_risk"] for r in rows),
        "breached": sum(r["open_breached"] for r in rows)})


# ------------------------------------------------------------------ users


@router.get("/admin/users")
def users_page(request: Request, actor: PageActorDep) -> Response:
    """Every user: role, groups, whether they can sign in, lockout, live API tokens."""
    _admin(actor)
    with _db(request).read() as s:
        users = identity.list_users(s)
    return render(request, "admin/users.html", {**_admin_context(request, "users"), "users": users})


def _new_user_page(request: Request, *, form: dict[str, str] | None = None, errors: dict[str, str] | None = None,
                   status_code: int = 200) -> Response:
    with _db(request).read() as s:
        groups = identity.list_groups(s)
    return render(request, "admin/user_new.html", {
        **_admin_context(request, "users"), "roles": identity.ROLES, "known_groups": groups,
        "form": form or {"role": "employee", "mode": "generate"}, "errors": errors or {},
        "min_length": passwords.MIN_LENGTH}, status_code=status_code)


@router.get("/admin/add-user")
def new_user_form(request: Request, actor: PageActorDep) -> Response:
    _admin(actor)
    return _new_user_page(request)


@router.post("/admin/add-user")
def add_user(request: Request, actor: PageActorDep, _csrf: CsrfDep,
             name: Annotated[str, Form(max_length=200)] = "", display_name: Annotated[str, Form(max_length=400)] = "",
             role: Annotated[str, Form(max_length=40)] = "", groups: Annotated[str, Form(max_length=4000)] = "",
             mode: Annotated[str, Form(max_length=20)] = "generate",
             password: Annotated[str, Form(max_length=2000)] = "") -> Response:
    """Add a user (``POST /api/users``); a generated password is shown on the answer, once."""
    _admin(actor)
    form = {"name": name.strip(), "display_name": display_name.strip(), "role": role, "groups": groups,
            "mode": mode}
    if mode not in NEW_USER_PASSWORD_MODES:  # not one of the form's choices: refuse rather than guess
        return _new_user_page(request, form=form, errors={"mode": _translated(request, UNKNOWN_MODE)},
                              status_code=422)
    try:
        view, generated = _db(request).command(lambda s: passwords.add_user_with_password(
            s, name=form["name"], role=role, groups=_groups_from(groups), display_name=form["display_name"] or None,
            password=password if mode == "set" else None, generate=mode == "generate",
            actor=actor))
    except (InvalidInput, Conflict) as exc:
        errors = ({field: error_text(request, problem) for field, problem in exc.details.items()}
                  or {str(exc.context.get("field") or "name"): error_text(request, exc)})
        return _new_user_page(request, form=form, errors=errors, status_code=409 if isinstance(exc, Conflict) else 422)
    if generated is None:
        return _see_other(f"/admin/users/{view.name}?done=added")
    return _user_page(request, view.name, generated=generated, notice=N_("The user is added."))


def _user_page(request: Request, name: str, *, generated: str | None = None, notice: str | None = None,
               errors: dict[str, str] | None = None, status_code: int = 200) -> Response:
    with _db(request).read() as s:
        view = identity.get_user(s, name)
        known = identity.list_groups(s)
    if request.query_params.get("done") == "added":
        notice = N_("The user is added.")
    return render(request, "admin/user.html", {
        **_admin_context(request, "users"), "u": view, "roles": identity.ROLES, "known_groups": known,
        "generated": generated, "notice": notice or _done(request), "errors": errors or {},
        "min_length": passwords.MIN_LENGTH}, status_code=status_code)


@router.get("/admin/users/{name}")
def user_page(request: Request, actor: PageActorDep, name: str) -> Response:
    """One user with the forms that change them."""
    _admin(actor)
    return _user_page(request, name)


def _user_command(request: Request, name: str, command: Any, done: str, *, clear_tokens: bool = False) -> Response:
    """Run one identity command; a refusal re-renders the user's page with the message by its form."""
    try:
        _db(request).command(command)
    except (InvalidInput, Conflict) as exc:
        field = str(exc.context.get("field") or done)
        return _user_page(request, name, errors={field: error_text(request, exc)},
                          status_code=409 if isinstance(exc, Conflict) else 422)
    if clear_tokens:
        request.app.state.token_cache.clear()  # as the API does after role, group and token changes
    return _see_other(f"/admin/users/{name}?done={done}")


@router.post("/admin/users/{name}/role")
def change_role(request: Request, actor: PageActorDep, _csrf: CsrfDep, name: str,
                role: Annotated[str, Form(max_length=40)] = "") -> Response:
    """``PUT /api/users/{name}/role``."""
    _admin(actor)
    return _user_command(request, name, lambda s: identity.set_role(s, name=name, role=role, actor=actor), "role",
                         clear_tokens=True)


@router.post("/admin/users/{name}/groups")
def change_groups(request: Request, actor: PageActorDep, _csrf: CsrfDep, name: str,
                  groups: Annotated[str, Form(max_length=4000)] = "") -> Response:
    """``PUT /api/users/{name}/groups``."""
    _admin(actor)
    chosen = _groups_from(groups)
    return _user_command(request, name, lambda s: identity.set_groups(s, name=name, groups=chosen, actor=actor),
                         "groups", clear_tokens=True)


@router.post("/admin/users/{name}/password")
def change_password(request: Request, actor: PageActorDep, _csrf: CsrfDep, name: str,
                    mode: Annotated[str, Form(max_length=20)] = "generate",
                    password: Annotated[str, Form(max_length=2000)] = "") -> Response:
    """``PUT /api/users/{name}/password``: set the given one, or generate one and show it once."""
    _admin(actor)
    if mode not in PASSWORD_MODES:  # not one of the form's choices: refuse rather than generate one
        return _user_page(request, name, errors={"mode": _translated(request, UNKNOWN_MODE)}, status_code=422)
    given = password if mode == "set" else None
    try:
        generated = _db(request).command(lambda s: passwords.reset_password(s, name=name, password=given,
                                                                            actor=actor))
    except InvalidInput as exc:
        return _user_page(request, name, errors={"password": error_text(request, exc)}, status_code=422)
    if generated is None:
        return _see_other(f"/admin/users/{name}?done=password")
    return _user_page(request, name, generated=generated, notice=DONE["password"])


@router.post("/admin/users/{name}/unlock")
def unlock(request: Request, actor: PageActorDep, _csrf: CsrfDep, name: str) -> Response:
    """``POST /api/users/{name}/unlock``."""
    _admin(actor)
    unlocked = _db(request).command(lambda s: passwords.unlock(s, name=name, actor=actor))
    return _see_other(f"/admin/users/{name}?done={'unlocked' if unlocked else 'not_locked'}")


@router.post("/admin/users/{name}/tokens/revoke")
def revoke_tokens(request: Request, actor: PageActorDep, _csrf: CsrfDep, name: str) -> Response:
    """``DELETE /api/users/{name}/tokens``."""
    _admin(actor)
    return _user_command(request, name, lambda s: identity.revoke_tokens(s, name=name, actor=actor), "revoked",
                         clear_tokens=True)


# ------------------------------------------------------------------ incidents


@router.get("/admin/incidents")
def incidents_page(request: Request, actor: PageActorDep, state: Annotated[str, Query(max_length=20)] = "open",
                   cursor: Annotated[str | None, Query(max_length=200)] = None) -> Response:
    """Incidents, newest first, with retry (``GET /api/incidents``)."""
    _admin(actor)
    if state not in ("open", "resolved", "all"):
        raise InvalidInput("state must be open, resolved or all", field="state")
    paging = Paging.parse(limit=INCIDENTS_PER_PAGE, cursor=cursor)
    with _db(request).read() as s:
        page = ext.list_incidents(s, paging, state=state)
    return render(request, "admin/incidents.html", {
        **_admin_context(request, "incidents"), "page": page, "state": state, "kinds": INCIDENT_KINDS,
        "notice": _done(request)})


@router.post("/admin/incidents/{incident_id}/retry")
def retry_incident(request: Request, actor: PageActorDep, _csrf: CsrfDep, incident_id: str,
                   retries: Annotated[int, Form(ge=1, le=1000)] = 1) -> Response:
    """``POST /api/incidents/{id}/retry``: the failed task gets ``retries`` again (a failed job runs again)."""
    _admin(actor)
    _db(request).command(lambda s: ext.retry_incident(s, incident_id=incident_id, retries=retries, actor=actor))
    worker.wake()
    return _see_other("/admin/incidents?done=retried")


# ------------------------------------------------------------------ SLA


@router.get("/admin/sla")
def sla_page(request: Request, actor: PageActorDep,
             definition_key: Annotated[str | None, Query(max_length=200)] = None) -> Response:
    """At risk and breached by procedure and step, the summary figures, and the breaches."""
    _admin(actor)
    key = definition_key or None
    with _db(request).read() as s:
        rows = sla.summary(s, definition_key=key)
        breaches = sla.breaches(s, limit=100, definition_key=key)
        keys = sorted({r["definition_key"] for r in sla.summary(s)}) if key else sorted(
            {r["definition_key"] for r in rows})
    done = sum(r["done"] for r in rows)
    on_time = sum(r["on_time"] for r in rows)
    return render(request, "admin/sla.html", {
        **_admin_context(request, "sla"), "rows": rows, "breaches": breaches, "keys": keys, "selected": key or "",
        "totals": {"at_risk": sum(r["open_at_risk"] for r in rows), "breached": sum(r["open_breached"] for r in rows),
                   "done": done, "late": sum(r["breaches"] for r in rows),
                   "on_time_rate": on_time / done if done else None},
        "duration": duration})


# ------------------------------------------------------------------ clock


def _clock_or_404(request: Request) -> OffsetClock:
    controlled = _controlled(request)
    if controlled is None:  # as GET/POST /api/admin/clock answer
        raise NotFound("the clock cannot be controlled here (set SOPFLOW_CLOCK_CONTROL=1 to allow it)")
    return controlled


def _clock_page(request: Request, controlled: OffsetClock, *, errors: dict[str, str] | None = None,
                form: dict[str, str] | None = None, status_code: int = 200) -> Response:
    return render(request, "admin/clock.html", {
        **_admin_context(request, "clock"), "clock": clock_control.describe(controlled), "errors": errors or {},
        "form": form or {}, "notice": _done(request)}, status_code=status_code)


@router.get("/admin/clock")
def clock_page(request: Request, actor: PageActorDep) -> Response:
    """The server's time and its offset (``GET /api/admin/clock``)."""
    controlled = _clock_or_404(request)
    _admin(actor)
    return _clock_page(request, controlled)


def _local_instant(text: str, time_zone: str | None) -> datetime:
    """A ``datetime-local`` field's value read in the user's time zone (UTC when unset)."""
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise InvalidInput("'{value}' is not a date and time like 2026-03-01T09:00", field="set",
                           params={"value": text[:40]}) from None
    return value if value.tzinfo else value.replace(tzinfo=ZoneInfo(time_zone or "UTC"))


@router.post("/admin/clock")
def move_clock(request: Request, found: PageSessionDep, _csrf: CsrfDep,
               advance: Annotated[str, Form(max_length=60)] = "",
               set_to: Annotated[str, Form(alias="set", max_length=60)] = "") -> Response:
    """``POST /api/admin/clock``: advance by an ISO 8601 duration (``PT25H``) or set to an instant; forward only."""
    controlled = _clock_or_404(request)
    actor = _admin(found.actor)
    form = {"advance": advance, "set": set_to}
    try:
        to = _local_instant(set_to, found.time_zone) if set_to.strip() else None
        offset = _db(request).command(lambda s: clock_control.move_clock(
            s, controlled=controlled, actor=actor, advance=advance.strip() or None, to=to))
    except InvalidInput as exc:
        return _clock_page(request, controlled, errors={str(exc.context.get("field") or "advance"): error_text(request, exc)},
                           form=form, status_code=422)
    controlled.remember(offset)
    worker.wake()
    return _see_other("/admin/clock?done=clock")


# ------------------------------------------------------------------ notifications


@router.get("/notifications")
def notifications_page(request: Request, actor: PageActorDep,
                       unread: Annotated[bool, Query()] = False) -> Response:
    """The signed-in user's in-app notifications, newest first (``GET /api/notifications``)."""
    with _db(request).read() as s:
        rows = notifications.list_for(s, actor.name, unread_only=unread, limit=100)
    return render(request, "admin/notifications.html", {"items": rows, "unread_only": unread,
                                                        "notice": _done(request)})


@router.post("/notifications/read")
def notifications_read(request: Request, found: PageSessionDep, _csrf: CsrfDep,
                       id: Annotated[list[str] | None, Form(max_length=500)] = None) -> Response:  # noqa: A002
    """Mark the posted notifications read (``POST /api/notifications/read``); others' ids change nothing."""
    ids = [i[:36] for i in (id or [])]
    _db(request).command(lambda s: notifications.mark_read(s, found.actor.name, ids))
    return _see_other("/notifications?done=read")


@router.post("/notifications/read-all")
def notifications_read_all(request: Request, found: PageSessionDep, _csrf: CsrfDep) -> Response:
    """Mark every unread notification read (``POST /api/notifications/read-all``)."""
    _db(request).command(lambda s: notifications.mark_all_read(s, found.actor.name))
    return _see_other("/notifications?done=read")

