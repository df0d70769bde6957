"""Form posts to the pages, read strictly: every text field is valid UTF-8 and of a bounded length.

Starlette reads a form leniently: bytes that are not UTF-8 (a lone surrogate such as
``%ED%A0%80``, which no browser sends but any client can) become U+FFFD in a URL-encoded
form and Latin-1 characters in a multipart one, and a field over 1 MiB ends the request with
a bare 400. The JSON API refuses such text (api/edge.py), so the pages do too: every page
route is a :class:`PageRoute`, which reads a form post before FastAPI and the CSRF check do
(the parsed form is the one they then see) and notes each field whose text is not valid
UTF-8 (``not_unicode``) or holds more than :data:`MAX_FIELD_CHARS` characters (``too_long``).

A route that shows such problems beside its fields (and keeps what was typed) is marked with
:func:`shows_form_problems` and reads them with :func:`problems`; for any other route the post
is refused before it runs, with a 422 page naming the field. Either way nothing is changed.
The body itself is bounded before this by the edge (``SOPFLOW_MAX_REQUEST_BYTES``).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import unquote_to_bytes

from fastapi import Request
from fastapi.responses import Response
from fastapi.routing import APIRoute
from starlette.datastructures import FormData, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from web.render import N_, page_locale, render

MAX_FIELD_CHARS = 100_000  # a page form's text field (a comment takes 5,000, a form's own maxLength less)
MAX_FIELDS = 1000  # as Starlette's default
FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")
TOO_MANY_FIELDS = N_("the form has more than %(count)s fields")
TOO_LONG = "too_long"
NOT_UNICODE = "not_unicode"

F = TypeVar("F", bound=Callable[..., Any])


def shows_form_problems(endpoint: F) -> F:
    """Mark a page route that places :func:`problems` beside its fields itself (else the post is refused)."""
    endpoint.shows_form_problems = True  # type: ignore[attr-defined]
    return endpoint


def problems(request: Request) -> dict[str, str]:
    """The form fields that could not be taken as sent: name -> ``too_long`` | ``not_unicode``."""
    return getattr(request.state, "form_problems", {})  # type: ignore[no-any-return]


def field_message(problem: str, gettext: Callable[[str], str]) -> str:
    """What a person reads beside a field with ``problem``, in their language."""
    if problem == TOO_LONG:
        return gettext("Enter at most %(count)s characters.") % {"count": f"{MAX_FIELD_CHARS:,}"}
    return gettext("This text holds characters that are not valid Unicode; type it again.")


def _decode(raw: bytes) -> tuple[str, bool]:
    """A URL-encoded name or value (``+`` is a space) as text, and whether it was valid UTF-8."""
    data = unquote_to_bytes(raw.replace(b"+", b" "))
    try:
        return data.decode("utf-8"), True
    except UnicodeDecodeError:
        return data.decode("utf-8", "replace"), False


def read_urlencoded(body: bytes) -> tuple[FormData, dict[str, str]]:
    """Parse an ``application/x-www-form-urlencoded`` body strictly: the fields and their problems.

    Raises ``ValueError`` (its text :data:`TOO_MANY_FIELDS`, a page msgid) when it has more than
    :data:`MAX_FIELDS` fields.
    """
    items: list[tuple[str, str | UploadFile]] = []
    found: dict[str, str] = {}
    for pair in body.split(b"&"):
        if not pair:
            continue
        if len(items) >= MAX_FIELDS:
            raise ValueError(TOO_MANY_FIELDS)
        raw_name, _eq, raw_value = pair.partition(b"=")
        name, name_ok = _decode(raw_name)
        value, value_ok = _decode(raw_value)
        if not (name_ok and value_ok):
            found.setdefault(name, NOT_UNICODE)
        elif len(value) > MAX_FIELD_CHARS:
            found.setdefault(name, TOO_LONG)
        items.append((name, value))
    return FormData(items), found


class _StrictMultiPart(MultiPartParser):
    """Starlette's multipart parser with text parts decoded strictly (no Latin-1 fallback) and checked."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.problems: dict[str, str] = {}

    def on_part_end(self) -> None:
        part = self._current_part
        if part.file is not None:
            super().on_part_end()
            return
        data = bytes(part.data)
        try:
            text = data.decode(self._charset or "utf-8")
        except UnicodeDecodeError:
            text = data.decode(self._charset or "utf-8", "replace")
            self.problems.setdefault(part.field_name, NOT_UNICODE)
        else:
            if len(text) > MAX_FIELD_CHARS:
                self.problems.setdefault(part.field_name, TOO_LONG)
        self.items.append((part.field_name, text))


async def read_form(request: Request, max_bytes: int) -> None:
    """Parse a form post strictly and keep it on ``request`` (Starlette's own cache, so FastAPI's
    ``Form`` parameters and ``request.form()`` see it), its problems on ``request.state``.

    Raises ``ValueError`` for a form that cannot be read at all (malformed multipart, too many fields).
    """
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media == FORM_TYPES[0]:
        form, found = read_urlencoded(await request.body())
    else:
        parser = _StrictMultiPart(request.headers, request.stream(), max_fields=MAX_FIELDS,
                                  max_part_size=max(max_bytes, 4 * MAX_FIELD_CHARS + 1))
        try:
            form = await parser.parse()
        except MultiPartException as exc:
            raise ValueError(exc.message) from None
        found = parser.problems
    request._form = form  # noqa: SLF001 - Starlette's parsed-form cache: one parse per request
    request.state.form_problems = found


class PageRoute(APIRoute):
    """A page route: form posts are read strictly (:func:`read_form`) before anything else sees them."""

    def get_route_handler(self) -> Callable[[Request], Any]:
        handler = super().get_route_handler()
        shown_by_route = getattr(self.endpoint, "shows_form_problems", False)

        async def page_handler(request: Request) -> Response:
            media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
            if request.method in ("POST", "PUT", "PATCH") and media in FORM_TYPES:
                try:
                    await read_form(request, request.app.state.settings.max_request_bytes)
                except ValueError as exc:  # Starlette's text for a malformed multipart form stays as it is
                    reason = str(exc)
                    if reason == TOO_MANY_FIELDS:
                        reason = _gettext(request, TOO_MANY_FIELDS) % {"count": f"{MAX_FIELDS:,}"}
                    return _refused(request, N_("The form could not be read: %(reason)s"), reason=reason)
                found = problems(request)
                if found and not shown_by_route:
                    await request.close()  # the form's spooled upload files: the route that would have is not run
                    name, problem = next(iter(found.items()))
                    msgid = (N_("The field “%(name)s” holds more than %(count)s characters; nothing was changed.")
                             if problem == TOO_LONG else
                             N_("The field “%(name)s” holds text that is not valid Unicode; nothing was changed."))
                    return _refused(request, msgid, name=name[:100], count=f"{MAX_FIELD_CHARS:,}")
            response: Response = await handler(request)
            return response

        return page_handler


def _gettext(request: Request, msgid: str) -> str:
    from web import i18n

    return i18n.translations(page_locale(request)).gettext(msgid)


def _refused(request: Request, msgid: str, **params: str) -> Response:
    message = _gettext(request, msgid) % params
    return render(request, "shell/error.html", {"status": 422, "message": message}, status_code=422)
