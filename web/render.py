"""Rendering a page: one jinja2 environment (autoescaped, gettext) and the context every page gets."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse
from jinja2 import Environment, FileSystemLoader, select_autoescape

from engine import notifications
from engine.actor import Actor
from web import i18n, sop
from web.deps import optional_session

TEMPLATES = Path(__file__).parent / "templates"


def _environment() -> Environment:
    env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(default=True),
                      extensions=["jinja2.ext.i18n"], trim_blocks=True, lstrip_blocks=True)
    env.install_gettext_callables(i18n.gettext, i18n.ngettext, newstyle=True)  # type: ignore[attr-defined]
    env.filters["number"] = i18n.format_number
    env.filters["sop"] = sop.to_html  # SOP text (Markdown) as sanitized HTML
    return env


ENV = _environment()


@dataclass(frozen=True)
class NavItem:
    href: str
    label: str  # a msgid; the template translates it


def N_(message: str) -> str:  # noqa: N802 - gettext's "mark for extraction, translate later"
    return message


# (path, label, roles that see it); admins see every item.
NAV: list[tuple[str, str, frozenset[str]]] = [
    ("/inbox", N_("Inbox"), frozenset({"employee"})),
    ("/start", N_("Start"), frozenset({"employee"})),
    ("/requests", N_("My requests"), frozenset({"employee"})),
    ("/procedures", N_("Procedures"), frozenset({"designer"})),
    ("/instances", N_("Instances"), frozenset({"auditor"})),
    ("/audit", N_("Audit trail"), frozenset({"auditor"})),
    ("/admin", N_("Administration"), frozenset()),
]


def nav_for(actor: Actor) -> list[NavItem]:
    """The main menu entries ``actor``'s role may use."""
    return [NavItem(href, label) for href, label, roles in NAV if actor.is_admin or actor.roles & roles]


def home_of(actor: Actor) -> str:
    """Where ``/`` sends a signed-in user: admins ``/admin``, others the first page of their menu, else
    their notifications (docs/notes/web.md's URL map)."""
    if actor.is_admin:
        return "/admin"
    items = nav_for(actor)
    return items[0].href if items else "/notifications"


def page_locale(request: Request) -> str:
    found = optional_session(request)
    return i18n.negotiate(found.locale if found else None, request.headers.get("accept-language"))


def error_text(request: Request, exc: BaseException) -> str:
    """An engine error's message in the request's language (:func:`web.i18n.error_text`)."""
    return i18n.error_text(exc, page_locale(request))


def reason_text(request: Request, text: str) -> str:
    """A per-field reason from an engine error's ``errors`` (marked with ``engine.errors.reason``), translated."""
    return i18n.translations(page_locale(request)).gettext(text)


def render(request: Request, template: str, context: dict[str, Any] | None = None, *,
           status_code: int = 200, headers: dict[str, str] | None = None) -> HTMLResponse:
    """Render ``template`` for the request's user and language.

    The context always holds ``request``, ``user`` (an Actor, or None on the sign-in page),
    ``display_name``, ``csrf_token``, ``locale`` (``en`` | ``zh-Hans``), ``time_zone`` (IANA,
    None = UTC), ``nav`` (NavItems), ``unread_notifications``, ``path``, the gettext functions
    and the ``datetime(value, fmt="medium")`` helper (a UTC instant in the user's zone and locale).
    """
    found = optional_session(request)
    locale = page_locale(request)
    time_zone = found.time_zone if found else None
    unread = 0
    if found is not None:
        with request.app.state.db.read() as s:
            unread = notifications.unread_count(s, found.actor.name)
    values: dict[str, Any] = {
        "request": request, "path": request.url.path,
        "user": found.actor if found else None,
        "display_name": (found.display_name or found.actor.name) if found else None,
        "csrf_token": found.csrf_token if found else "",
        "locale": locale, "time_zone": time_zone,
        "nav": nav_for(found.actor) if found else [],
        "unread_notifications": unread,
        "datetime": lambda value, fmt="medium": i18n.format_instant(value, time_zone, fmt),
    }
    values.update(context or {})
    token = i18n.use(locale)
    try:
        body = ENV.get_template(template).render(values)
    finally:
        i18n.reset(token)
    response = HTMLResponse(body, status_code=status_code, headers=headers)
    response.headers["Content-Language"] = locale
    response.headers.update(SECURITY_HEADERS)
    return response


# Pages run no inline script (every script is a file under /static), are never framed, and
# never send a full URL to another site. bpmn-js sets style attributes on SVG, hence styles inline.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
                               "img-src 'self' data:; font-src 'self' data:; frame-ancestors 'none'; "
                               "form-action 'self'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
