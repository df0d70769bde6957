"""The shell: sign-in, sign-out, the user's settings, and ``/`` (the user's home page)."""
from __future__ import annotations

import hmac
import secrets
from datetime import datetime, timedelta
from zoneinfo import available_timezones

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response
from sqlalchemy.orm import Session

from engine import browser_sessions, identity, passwords
from engine.errors import InvalidInput
from web.deps import COOKIE, CsrfDep, PageSessionDep, optional_session, session_token, signer
from web.formdata import PageRoute
from web.render import N_, error_text, home_of, render

router = APIRouter(include_in_schema=False, route_class=PageRoute)
LOGIN_COOKIE = "sopflow_sign_in"  # double-submit token for the sign-in form (no session yet)


def safe_next(value: object) -> str | None:
    """A same-site path to return to after sign-in, or None (refuses ``//host`` and absolute URLs)."""
    if isinstance(value, str) and value.startswith("/") and not value.startswith(("//", "/\\")) \
            and len(value) <= 2000 and value.isprintable():
        return value
    return None


@router.get("/")
def home(request: Request) -> Response:
    found = optional_session(request)
    return RedirectResponse(home_of(found.actor) if found else "/login", status_code=303)


# The sign-in page's messages (msgids, translated by the template).
WRONG = N_("The user name or password is wrong.")
LOCKED = N_("This account is locked after repeated failed sign-ins. Try again after %(time)s or ask an administrator.")
EXPIRED = N_("This sign-in form has expired; please try again.")
MISSING = N_("Enter your user name and password.")


def _sign_in_page(request: Request, *, error: str | None = None, error_time: datetime | None = None, name: str = "",
                  status_code: int = 200) -> Response:
    token = secrets.token_urlsafe(32)
    response = render(request, "shell/login.html", {
        "error": error, "error_time": error_time, "name": name, "login_token": token,
        "next": safe_next(request.query_params.get("next")) or ""}, status_code=status_code)
    response.set_cookie(LOGIN_COOKIE, token, httponly=True, samesite="strict", path="/login",
                        secure=request.app.state.settings.cookie_secure)
    return response


@router.get("/login")
def login_form(request: Request) -> Response:
    found = optional_session(request)
    if found is not None:
        return RedirectResponse(safe_next(request.query_params.get("next")) or home_of(found.actor), status_code=303)
    return _sign_in_page(request)


@router.post("/login")
async def login(request: Request) -> Response:
    form = await request.form()
    name, password = str(form.get("username") or "").strip(), str(form.get("password") or "")
    sent, expected = str(form.get("login_token") or ""), request.cookies.get(LOGIN_COOKIE) or ""
    if not expected or not hmac.compare_digest(sent.encode(), expected.encode()):
        return _sign_in_page(request, error=EXPIRED, name=name,
                             status_code=403)
    if not name or not password:
        return _sign_in_page(request, error=MISSING, name=name, status_code=422)
    settings = request.app.state.settings

    def attempt(s: Session) -> tuple[passwords.SignIn, str | None]:
        result = passwords.sign_in(s, name=name, password=password)
        if result.actor is None:
            return result, None
        return result, browser_sessions.open_session(s, result.actor,
                                                     lifetime=timedelta(hours=settings.session_hours))

    result, token = request.app.state.db.command(attempt)
    if result.actor is None or token is None:
        if result.locked_until is not None:
            return _sign_in_page(request, error=LOCKED, error_time=result.locked_until, name=name, status_code=401)
        return _sign_in_page(request, error=WRONG, name=name, status_code=401)
    target = safe_next(form.get("next")) or home_of(result.actor)
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(COOKIE, signer(request).sign(token).decode(), httponly=True, samesite="lax",
                        secure=settings.cookie_secure, max_age=int(settings.session_hours * 3600), path="/")
    response.delete_cookie(LOGIN_COOKIE, path="/login")
    return response


@router.post("/logout")
def logout(request: Request, _found: PageSessionDep, _csrf: CsrfDep) -> Response:
    token = session_token(request)
    if token is not None:
        request.app.state.db.command(lambda s: browser_sessions.close_session(s, token))
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(COOKIE, path="/")
    return response


def _settings_page(request: Request, found: browser_sessions.BrowserSession, *, errors: dict[str, str] | None = None,
                   saved: bool = False, status_code: int = 200) -> Response:
    return render(request, "shell/settings.html", {
        "locales": identity.LOCALES, "time_zones": sorted(available_timezones()),
        "current_locale": found.locale or "", "current_zone": found.time_zone or "",
        "errors": errors or {}, "saved": saved}, status_code=status_code)


@router.get("/settings")
def settings_form(request: Request, found: PageSessionDep) -> Response:
    return _settings_page(request, found, saved=request.query_params.get("saved") == "1")


@router.post("/settings")
async def save_settings(request: Request, found: PageSessionDep, _csrf: CsrfDep) -> Response:
    form = await request.form()
    locale = str(form.get("locale") or "") or None
    time_zone = str(form.get("time_zone") or "") or None
    try:
        request.app.state.db.command(lambda s: identity.set_preferences(
            s, name=found.actor.name, locale=locale, time_zone=time_zone, actor=found.actor))
    except InvalidInput as exc:
        return _settings_page(request, found, errors={str(exc.context.get("field")): error_text(request, exc)}, status_code=422)
    return RedirectResponse("/settings?saved=1", status_code=303)
