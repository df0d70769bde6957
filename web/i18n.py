"""Languages of the web application: gettext catalogs (Babel), the user's locale, dates and numbers.

Locales are ``en`` (the msgids themselves) and ``zh-Hans``. Each page area keeps its own
catalog, ``web/locale/zh_Hans/LC_MESSAGES/<area>.po``; they are read and merged once at start-up
(no compile step, no binary files in git). The locale of a request is the user's setting, else
the best match of ``Accept-Language`` (RFC 9110 §12.5.4 q-values), else ``en``.
"""
from __future__ import annotations

import io
from contextvars import ContextVar
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from babel import Locale
from babel.dates import format_datetime as babel_datetime
from babel.messages.catalog import Catalog
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from babel.numbers import format_decimal
from babel.support import NullTranslations, Translations

from engine.errors import Phrase, SopflowError

LOCALES = ("en", "zh-Hans")
LOCALE_DIR = Path(__file__).parent / "locale"
_BABEL = {"en": Locale.parse("en"), "zh-Hans": Locale.parse("zh_Hans")}
_current: ContextVar[str] = ContextVar("sopflow_locale", default="en")


def catalogs(locale: str = "zh-Hans") -> list[tuple[Path, Catalog]]:
    """Every area's catalog for ``locale`` (path, parsed catalog)."""
    folder = LOCALE_DIR / locale.replace("-", "_") / "LC_MESSAGES"
    result = []
    for path in sorted(folder.glob("*.po")):
        with path.open("rb") as fh:
            result.append((path, read_po(fh, locale=locale.replace("-", "_"))))
    return result


@lru_cache(maxsize=len(LOCALES))
def translations(locale: str) -> NullTranslations:
    """The merged gettext translations of ``locale`` (``en`` needs none)."""
    if locale == "en":
        return NullTranslations()
    merged = Catalog(locale=locale.replace("-", "_"))
    for _path, catalog in catalogs(locale):
        for message in catalog:
            if message.id and message.string and not message.fuzzy:
                merged[message.id] = message
    buffer = io.BytesIO()
    write_mo(buffer, merged)
    buffer.seek(0)
    return Translations(buffer)


def negotiate(user_locale: str | None, accept_language: str | None) -> str:
    """The locale to answer in: the user's setting, else the best ``Accept-Language`` match, else ``en``."""
    if user_locale in LOCALES:
        return user_locale  # type: ignore[return-value]
    ranked = []
    for index, part in enumerate((accept_language or "")[:500].split(",")):
        tag, _, params = part.strip().partition(";")
        quality = 1.0
        if params.strip().startswith("q="):
            try:
                quality = float(params.strip()[2:])
            except ValueError:
                quality = 0.0
        ranked.append((-quality, index, tag.strip().lower()))
    for quality, _index, tag in sorted(ranked):
        if quality >= 0:
            continue
        if tag.startswith("zh"):
            return "zh-Hans"
        if tag.startswith("en") or tag == "*":
            return "en"
    return "en"


def use(locale: str) -> Any:
    """Make ``locale`` the one gettext answers in for this request (a context variable token)."""
    return _current.set(locale)


def reset(token: Any) -> None:
    _current.reset(token)


def current() -> str:
    return _current.get()


def gettext(message: str) -> str:
    return translations(_current.get()).gettext(message)


def ngettext(singular: str, plural: str, n: int) -> str:
    return translations(_current.get()).ngettext(singular, plural, n)


def error_text(exc: BaseException, locale: str | None = None) -> str:
    """An engine error's message in ``locale`` (None: the current one, see :func:`use`).

    A :class:`~engine.errors.SopflowError`'s template is looked up in the catalogs
    (``errors.po``, extracted by ``make messages``) and filled with the error's params; the
    params themselves (ids, names, limits, and text from outside such as Python's or
    SpiffWorkflow's exception text) stay as they are, except a
    :class:`~engine.errors.Phrase`, which is translated too. A translation whose placeholders do not
    format falls back to the English message. Any other exception gives ``str(exc)``.
    """
    if not isinstance(exc, SopflowError):
        return str(exc)
    return _translate(exc.template, exc.params, exc.message, translations(locale or _current.get()))


def _translate(template: str, params: dict[str, Any], english: str, catalog: NullTranslations) -> str:
    """``template`` translated and filled with ``params``, whose :class:`~engine.errors.Phrase`
    values are translated the same way; ``english`` when the translation does not format."""
    translated = catalog.gettext(template)
    local = {k: _translate(v.template, v.params, str(v), catalog) if isinstance(v, Phrase) else v
             for k, v in params.items()}
    try:
        return translated.format(**local)
    except (KeyError, IndexError, ValueError, AttributeError, TypeError):
        return english


def format_instant(value: datetime | str | None, time_zone: str | None, fmt: str = "medium") -> str:
    """A UTC instant (or ISO text) shown in ``time_zone`` (None: UTC) in the current locale; '' for None."""
    if value is None or value == "":
        return ""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    zone = ZoneInfo(time_zone) if time_zone else ZoneInfo("UTC")
    return babel_datetime(value, format=fmt, tzinfo=zone, locale=_BABEL[_current.get()])


def format_number(value: float | int | None) -> str:
    """A number in the current locale's digits and separators; '' for None."""
    if value is None:
        return ""
    return format_decimal(value, locale=_BABEL[_current.get()])
