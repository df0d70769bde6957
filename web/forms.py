"""Task and start forms as HTML form fields, and submitted form fields back to typed values.

A form is what the engine returns for a task or a start event (``engine.forms``):
``{"title", "schema", "ui"}`` with a JSON Schema object whose ``properties`` are the fields
(Camunda ``formData`` arrives already converted to such a schema). :func:`fields_for` turns
it into :class:`Field` models the ``employee/_form.html`` macros render; :func:`parse_submission`
turns the submitted strings back into the values the schema asks for, so the engine's own
validation (the one the JSON API uses when completing a task) decides; :func:`field_errors`
puts the engine's refusal (``InvalidInput.context["errors"]``) next to each field, in the
user's language where the refusal is one we know.

The rule kept: nothing here accepts or refuses a value on its own authority except what a
browser cannot express in the schema's type (``"abc"`` for a number, ``"2026-13-40"`` for a
date); those are reported as field errors and the engine is not called.
"""
from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, tzinfo
from decimal import Decimal
from typing import Any, Literal
from zoneinfo import ZoneInfo

from markupsafe import Markup

from engine.forms import LONG_MAX, LONG_MIN
from web.render import N_

Kind = Literal["text", "textarea", "number", "integer", "checkbox", "select", "date", "datetime", "json"]
Gettext = Callable[[str], str]

# A string longer than this (its maxLength) gets a textarea rather than a one-line input.
LONG_TEXT = 255
# ASCII digits only (``\d`` would also match full-width and Arabic-Indic digits, which int() reads)
_INTEGER = re.compile(r"[+-]?[0-9]+")
_NUMBER = re.compile(r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?")



def _identity(text: str) -> str:
    return text



def day_start(value: str, zone: tzinfo) -> datetime:
    """Midnight (aware) of the calendar day ``value`` (YYYY-MM-DD) in ``zone``: a form's date filter.

    Raises ``ValueError`` whose text is a msgid for the page to translate: not a date, or a year
    outside 1900-9998 (the calendar's edges overflow once moved to UTC or a day on).
    """
    try:
        day = date.fromisoformat(value)
    except ValueError:
        raise ValueError(N_("Enter a date as YYYY-MM-DD.")) from None
    if not 1900 <= day.year <= 9998:
        raise ValueError(N_("Enter a date between the years 1900 and 9998."))
    return datetime.combine(day, datetime.min.time(), zone)

@dataclass(frozen=True)
class Choice:
    """One option of a select: the submitted ``value`` (a string) and what the user reads."""

    value: str
    label: str


@dataclass
class Field:
    """One form control, ready for a template.

    ``value`` is the control's text (``""`` when empty); ``checked`` is a checkbox's state;
    ``min``/``max``/``step`` are the number input's attributes as strings (None when absent);
    ``error`` is the message shown next to the control.
    """

    name: str
    label: str
    kind: Kind
    help: str | None = None
    required: bool = False
    value: str = ""
    checked: bool = False
    choices: list[Choice] = field(default_factory=list)
    min: str | None = None
    max: str | None = None
    step: str | None = None
    max_length: int | None = None
    error: str | None = None

    @property
    def input_id(self) -> str:
        """The control's id (``field-<name>``), for ``<label for>`` and the error summary's links."""
        return f"field-{self.name}"

    @property
    def help_id(self) -> str:
        return f"field-{self.name}-help"

    @property
    def error_id(self) -> str:
        return f"field-{self.name}-error"

    @property
    def aria(self) -> Markup:
        """The control's accessibility attributes as HTML: ``aria-describedby`` (help, error),
        ``aria-invalid`` when it has an error, ``required``/``aria-required`` when required."""
        attributes = Markup("")
        if self.described_by:
            attributes += Markup(' aria-describedby="{}"').format(self.described_by)
        if self.error:
            attributes += Markup(' aria-invalid="true"')
        if self.required:
            attributes += Markup(" required aria-required=\"true\"")
        return attributes

    @property
    def described_by(self) -> str:
        """The ids for ``aria-describedby``: the help text and the error, those present."""
        ids = [self.help_id] if self.help else []
        if self.error:
            ids.append(self.error_id)
        return " ".join(ids)


def _types(prop: Mapping[str, Any]) -> list[str]:
    t = prop.get("type")
    if isinstance(t, str):
        return [t]
    if isinstance(t, list):
        return [x for x in t if isinstance(x, str)]
    return []


def _choices(prop: Mapping[str, Any]) -> list[tuple[Any, str]] | None:
    """``(value, label)`` pairs from ``enum`` (+ ``enumNames``) or a ``oneOf``/``anyOf`` of ``const``s."""
    if isinstance(prop.get("enum"), list):
        values = prop["enum"]
        names = prop.get("enumNames")
        if isinstance(names, list) and len(names) == len(values):
            return [(v, str(n)) for v, n in zip(values, names, strict=True)]
        return [(v, _text(v)) for v in values]
    for key in ("oneOf", "anyOf"):
        options = prop.get(key)
        if isinstance(options, list) and options and all(isinstance(o, dict) and "const" in o for o in options):
            return [(o["const"], str(o.get("title") or _text(o["const"]))) for o in options]
    return None


def kind_of(prop: Mapping[str, Any], ui: Mapping[str, Any] | None = None) -> Kind:
    """The control for a schema property (the UI hint ``widget: textarea`` wins for strings).

    boolean → checkbox; ``enum``/``oneOf`` of constants → select; integer/number → number
    inputs; string ``format: date``/``date-time`` → date/datetime inputs; a string whose
    ``maxLength`` exceeds :data:`LONG_TEXT` (or with the textarea widget) → textarea; other
    strings → text; objects and arrays → a JSON textarea.
    """
    types = _types(prop)
    widget = (ui or {}).get("widget")
    if _choices(prop) is not None:
        return "select"
    if "boolean" in types:
        return "checkbox"
    if "integer" in types:
        return "integer"
    if "number" in types:
        return "number"
    if ("object" in types or "array" in types) and "string" not in types:
        return "json"
    fmt = prop.get("format")
    if fmt == "date":
        return "date"
    if fmt == "date-time":
        return "datetime"
    if widget == "textarea":
        return "textarea"
    max_length = prop.get("maxLength")
    if isinstance(max_length, int) and max_length > LONG_TEXT:
        return "textarea"
    return "text"


def _zone(time_zone: str | tzinfo | None) -> tzinfo:
    if time_zone is None:
        return UTC
    if isinstance(time_zone, str):
        try:
            return ZoneInfo(time_zone)
        except (KeyError, ValueError):
            return UTC
    return time_zone


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value)) if abs(value) < 1e15 else repr(value)
    return str(value)


def _shown(kind: Kind, value: Any, zone: tzinfo) -> str:
    """A stored value as its control's text."""
    if value is None:
        return ""
    if kind == "date":
        if isinstance(value, datetime):
            return value.date().isoformat()
        return value.isoformat() if isinstance(value, date) else str(value)[:10]
    if kind == "datetime":
        moment = value if isinstance(value, datetime) else _parse_instant(str(value))
        if moment is None:
            return str(value)
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return moment.astimezone(zone).strftime("%Y-%m-%dT%H:%M")
    if kind == "json":
        return json.dumps(value, ensure_ascii=False, indent=2, default=str)
    return _text(value)


def _parse_instant(text: str) -> datetime | None:
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def _number_attr(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
        return None
    return _text(value)


def humanize(name: str) -> str:
    """A variable name as a label: ``case_owner`` → ``Case owner``."""
    words = name.replace("_", " ").replace("-", " ").strip()
    return words[:1].upper() + words[1:] if words else name


def field_names(form: Mapping[str, Any] | None) -> list[str]:
    """The form's fields in display order: ``ui.order`` first (those that exist), then the schema's."""
    if not form:
        return []
    props = (form.get("schema") or {}).get("properties") or {}
    order = ((form.get("ui") or {}).get("order")) or []
    named = [n for n in order if isinstance(n, str) and n in props]
    return named + [n for n in props if n not in named]


def fields_for(form: Mapping[str, Any] | None, *, values: Mapping[str, Any] | None = None,
               submitted: Mapping[str, str] | None = None, errors: Mapping[str, str] | None = None,
               time_zone: str | tzinfo | None = None) -> list[Field]:
    """The form's fields for a template.

    ``values`` are stored values (the task's data) that prefill the controls; ``submitted``
    is what the user sent (strings, as the browser posted them), shown again after a refusal
    and preferred over ``values`` (a checkbox absent from it is unchecked); ``errors`` maps a
    field name to the message shown next to it (see :func:`field_errors`). Date-times show in
    ``time_zone`` (an IANA name or tzinfo; UTC when unknown).
    """
    if not form:
        return []
    schema = form.get("schema") or {}
    props: Mapping[str, Any] = schema.get("properties") or {}
    required = set(schema.get("required") or [])
    ui: Mapping[str, Any] = form.get("ui") or {}
    zone = _zone(time_zone)
    out: list[Field] = []
    for name in field_names(form):
        prop = props[name] if isinstance(props[name], dict) else {}
        hint = ui.get(name) if isinstance(ui.get(name), dict) else None
        kind = kind_of(prop, hint)
        f = Field(name=name, label=str(prop.get("title") or humanize(name)), kind=kind,
                  help=str(prop["description"]) if prop.get("description") else None,
                  required=name in required and kind != "checkbox",
                  error=(errors or {}).get(name))
        if kind == "select":
            f.choices = [Choice(_text(v), label) for v, label in _choices(prop) or []]
        if kind in ("number", "integer"):
            f.min = _number_attr(prop.get("minimum"))
            f.max = _number_attr(prop.get("maximum"))
            f.step = _number_attr(prop.get("multipleOf")) or ("1" if kind == "integer" else "any")
        if isinstance(prop.get("maxLength"), int) and kind in ("text", "textarea"):
            f.max_length = prop["maxLength"]
        if submitted is not None:
            if kind == "checkbox":
                f.checked = _checked(submitted.get(name))
            else:
                f.value = submitted.get(name, "")
        elif values is not None and name in values:
            if kind == "checkbox":
                f.checked = values[name] is True
            else:
                f.value = _shown(kind, values[name], zone)
        elif "default" in prop:
            if kind == "checkbox":
                f.checked = prop["default"] is True
            else:
                f.value = _shown(kind, prop["default"], zone)
        out.append(f)
    return out


def _checked(raw: str | None) -> bool:
    return raw is not None and raw.strip().lower() in ("true", "on", "1", "yes")


@dataclass
class Parsed:
    """A submission read back: ``values`` to hand to the engine, ``errors`` for what could not be read."""

    values: dict[str, Any]
    errors: dict[str, str]


def parse_submission(form: Mapping[str, Any] | None, submitted: Mapping[str, str], *,
                     time_zone: str | tzinfo | None = None, gettext: Gettext = _identity) -> Parsed:
    """Submitted strings to the values the form's schema asks for.

    Per kind: integer → ``int``; number → ``int`` when whole, else ``float`` (a schema that
    also allows strings, Camunda's decimal/long, gets the trimmed text, which the engine
    converts exactly); checkbox → ``True``/``False`` (absent, as an unchecked box is, is
    ``False``); select → the ``enum`` member whose text was sent (not a member: the text,
    which the engine refuses); date → ``YYYY-MM-DD``; date-time (a ``datetime-local`` value
    in ``time_zone``) → an ISO 8601 instant in UTC (``...Z``); json → the parsed document;
    text → the text as typed. An empty control is left out, so the engine's ``required``
    check speaks for it. Fields the form does not have are ignored (``csrf_token`` and
    the like). ``errors`` names each field whose text is not of its kind, in the user's
    language (``gettext``).
    """
    _ = gettext
    values: dict[str, Any] = {}
    errors: dict[str, str] = {}
    if not form:
        return Parsed(values, errors)
    props: Mapping[str, Any] = (form.get("schema") or {}).get("properties") or {}
    ui: Mapping[str, Any] = form.get("ui") or {}
    zone = _zone(time_zone)
    for name in field_names(form):
        prop = props[name] if isinstance(props[name], dict) else {}
        hint = ui.get(name) if isinstance(ui.get(name), dict) else None
        kind = kind_of(prop, hint)
        if kind == "checkbox":
            values[name] = _checked(submitted.get(name))
            continue
        raw = submitted.get(name)
        if raw is None or raw.strip() == "":
            continue
        text = raw.strip()
        allows_string = "string" in _types(prop)
        if kind == "integer":
            if not _INTEGER.fullmatch(text):
                errors[name] = _("Enter a whole number, like 12.")
            elif not _is_long(text):
                errors[name] = long_range_error(_)
            else:
                values[name] = text if allows_string else int(text)
        elif kind == "number":
            if not _NUMBER.fullmatch(text):
                errors[name] = _("Enter a number, like 12 or 12.5.")
            elif allows_string:
                values[name] = text
            else:
                number = Decimal(text)
                if "e" not in text.lower() and number == number.to_integral_value() and _is_long(text.split(".")[0]):
                    values[name] = int(number)
                elif math.isfinite(float(number)):
                    values[name] = float(number)
                else:
                    errors[name] = _("Enter a number, like 12 or 12.5.")
        elif kind == "select":
            options = _choices(prop) or []
            values[name] = next((v for v, _label in options if _text(v) == text), text)
        elif kind == "date":
            day = _date(text)
            if day is None:
                errors[name] = _("Enter a real date, like 2027-03-27.")
            else:
                values[name] = day
        elif kind == "datetime":
            moment = _parse_instant(text)
            if moment is None:
                errors[name] = _("Enter a real date and time, like 2027-03-27 14:30.")
                continue
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=zone)
            values[name] = moment.astimezone(UTC).isoformat().replace("+00:00", "Z")
        elif kind == "json":
            try:
                values[name] = json.loads(text)
            except ValueError:
                errors[name] = _("Enter valid JSON.")
        else:  # text as typed; a textarea's CRLF (as browsers send it) as one newline
            values[name] = raw.replace("\r\n", "\n")
    return Parsed(values, errors)


def _is_long(digits: str) -> bool:
    """Whether whole-number text (ASCII digits, optional sign) is within a Java long's range."""
    body = digits.lstrip("+-")
    if len(body.lstrip("0")) > 19:  # more digits than any long (and int() caps the digits it reads)
        return False
    return not body or LONG_MIN <= int(digits) <= LONG_MAX


def long_range_error(gettext: Gettext = _identity) -> str:
    """The message for a whole number beyond the 64-bit range (a Camunda long's, a form integer's)."""
    return gettext("Enter a whole number between %(min)s and %(max)s.") % {"min": LONG_MIN, "max": LONG_MAX}


def _date(text: str) -> str | None:
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
        return None
    try:
        return date.fromisoformat(text).isoformat()
    except ValueError:
        return None


# The engine's words (engine.forms: jsonschema's messages and the Camunda field checks) for the
# refusals people meet, mapped to a sentence that says what to do. Anything else is shown as the
# engine wrote it.
_REFUSALS: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"^is required$"), "required"),
    (re.compile(r"^must be a (long|whole number) between"), "long_range"),
    (re.compile(r"is not of type 'integer'|^must be a long$"), "integer"),
    (re.compile(r"is not of type 'number'|^must be a (double|decimal)$"), "number"),
    (re.compile(r"is not of type 'boolean'|^must be a boolean$"), "boolean"),
    (re.compile(r"is less than (or equal to )?the minimum of"), "minimum"),
    (re.compile(r"is greater than (or equal to )?the maximum of"), "maximum"),
    (re.compile(r"is too long$|is longer than"), "too_long"),
    (re.compile(r"is too short$|should be non-empty"), "too_short"),
    (re.compile(r"is not one of|^must be one of"), "choice"),
    (re.compile(r"^must be a date$"), "date"),
    (re.compile(r"does not match"), "pattern"),
]


def friendly_error(message: str, f: Field | None, *, gettext: Gettext = _identity) -> str:
    """The engine's refusal of a field as a sentence saying what to do (``gettext`` applied).

    Known refusals (required, type, minimum/maximum, length, choice, pattern) become plain
    instructions using the field's limits; any other message is returned as the engine wrote it.
    """
    _ = gettext
    kind = next((k for pattern, k in _REFUSALS if pattern.search(message)), None)
    if kind == "required":
        if f is not None and f.kind == "select":
            return _("Choose an option.")
        return _("Enter a value; this field is required.")
    if kind == "long_range":
        return long_range_error(_)
    if kind == "integer" or (kind == "pattern" and f is not None and f.kind == "integer"):
        return _("Enter a whole number, like 12.")
    if kind == "number":
        return _("Enter a number, like 12 or 12.5.")
    if kind == "boolean":
        return _("Tick the box or leave it empty.")
    if kind == "minimum" and f is not None and f.min is not None:
        return _("Enter a number of at least %(min)s.") % {"min": f.min}
    if kind == "maximum" and f is not None and f.max is not None:
        return _("Enter a number of at most %(max)s.") % {"max": f.max}
    if kind == "too_long" and f is not None and f.max_length is not None:
        return _("Enter at most %(count)s characters.") % {"count": f.max_length}
    if kind == "too_short":
        return _("Enter a longer value.")
    if kind == "choice":
        return _("Choose one of the options.")
    if kind == "date":
        return _("Enter a real date, like 2027-03-27.")
    if kind == "pattern":
        return _("Enter a value in the expected format.")
    return message


def field_errors(fields: list[Field], engine_errors: Mapping[str, str] | None, *, message: str | None = None,
                 gettext: Gettext = _identity) -> tuple[dict[str, str], list[str]]:
    """Place an engine refusal (``InvalidInput``'s ``errors``, or its ``field`` and ``message``).

    Returns ``(per_field, general)``: messages keyed by the form's field names (a nested path
    ``a.b`` goes to ``a``), and those that name no field of the form (a refused name, the
    whole form) to show above it. The per-field messages go through :func:`friendly_error`.
    """
    by_name = {f.name: f for f in fields}
    per_field: dict[str, str] = {}
    general: list[str] = []
    for key, text in (engine_errors or {}).items():
        head = key.split(".", 1)[0]
        if head in by_name:
            per_field.setdefault(head, friendly_error(text, by_name[head], gettext=gettext))
        else:
            text = gettext(text)  # the engine's per-field reasons are msgids (engine.errors.reason)
            general.append(f"{key}: {text}" if key and not key.startswith("(") else text)
    if not per_field and not general and message:
        general.append(message)
    return per_field, general
