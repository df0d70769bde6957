"""Task forms (JSON Schema + UI hints, named by form key) and SOP text rendering.

A form lives in ``forms/<form key>.json`` as ``{"title", "schema", "ui", "shows"}``:
``schema`` validates what the task's completion submits, ``shows`` lists the instance
variables the form displays. Camunda diagrams that carry ``camunda:formData`` and no
such file get a schema generated from their form fields. SOP text (``bpmn:documentation``)
is a jinja2 template rendered in the immutable sandbox against the instance variables.
"""
from __future__ import annotations

import json
import math
import os
import re
from datetime import date
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from engine import templates
from engine.errors import InvalidInput, ScriptError, reason
from engine.evaluator import EvaluatorUnavailable
from engine.sandbox import ScriptBudgetExceeded

FORMS_DIR = Path(os.environ.get("SOPFLOW_FORMS_DIR", Path(__file__).resolve().parent.parent / "forms"))
# Camunda's long is a Java long (64 bits). Numbers given as text are read in ASCII digits only:
# Python's int() and float() also read full-width and Arabic-Indic digits ("１２", "١٢").
LONG_MIN, LONG_MAX = -(2**63), 2**63 - 1
_LONG_TEXT = re.compile(r"[+-]?[0-9]+")
_NUMBER_TEXT = re.compile(r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?")
LONG_RANGE = f"between {LONG_MIN} and {LONG_MAX}"
_KEY_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")

_CAMUNDA_TYPES: dict[str, dict[str, Any]] = {
    "string": {"type": "string"},
    "long": {"type": "integer"},
    "boolean": {"type": "boolean"},
    "date": {"type": "string", "format": "date"},
    "enum": {"type": "string"},
    "double": {"type": "number"},
    "decimal": {"type": ["number", "string"]},
}


@lru_cache(maxsize=256)
def _load(form_key: str) -> dict[str, Any] | None:
    if not form_key or not set(form_key) <= _KEY_CHARS or form_key.startswith("."):
        return None
    path = FORMS_DIR / f"{form_key}.json"
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    return data if "schema" in data else {"schema": data}


def form_for(form_key: str | None, form_fields: list[dict[str, Any]] | None) -> dict[str, Any] | None:
    """The form of a task: its file, else one generated from Camunda form fields, else None."""
    if form_key and (found := _load(form_key)) is not None:
        return found
    if not form_fields:
        return None
    properties, required = {}, []
    for f in form_fields:
        prop = dict(_CAMUNDA_TYPES.get(f.get("type") or "string", {"type": "string"}))
        if f.get("label"):
            prop["title"] = f["label"]
        if f.get("type") == "enum" and f.get("options"):
            prop["enum"] = [o["id"] for o in f["options"]]
            # the options' names, for a form renderer (react-jsonschema-form's annotation; not validated)
            prop["enumNames"] = [o.get("name") or o["id"] for o in f["options"]]
        if f.get("type") == "long":
            prop = {"type": ["integer", "string"], "pattern": r"^[+-]?[0-9]+$",
                    **({"title": f["label"]} if f.get("label") else {})}
        properties[f["id"]] = prop
        if f.get("required"):
            required.append(f["id"])
    return {"title": None, "schema": {"type": "object", "properties": properties, "required": required},
            "generated": True}


def form_fields(form: dict[str, Any] | None) -> list[str]:
    """The names a form submits: its schema's properties."""
    if not form:
        return []
    return list((form.get("schema") or {}).get("properties") or {})


def check_submission(what: str, form: dict[str, Any] | None, form_fields: list[dict[str, Any]] | None,
                     writes: list[str] | None, variables: dict[str, Any], *, form_key: str | None = None
                     ) -> dict[str, Any]:
    """What a step may write, then the form's own checks; returns the values to store (coerced)."""
    check_writes(what, form, writes, variables, form_key=form_key)
    if form and not form.get("generated"):
        validate(form, variables)
    return coerce_fields(form_fields, variables) if form_fields else variables


def check_writes(what: str, form: dict[str, Any] | None, writes: list[str] | None, variables: dict[str, Any],
                 *, form_key: str | None = None) -> None:
    """Refuse names a task (or start event) may not write; InvalidInput (422) names each of them.

    The rule: a step with a form accepts exactly its form's fields; a step without one
    accepts none; the model may allow more with the property ``writes`` (names, or ``*``).
    ``what`` names the step in the message, e.g. "task 'Approve'".
    """
    if not variables or (writes and "*" in writes):
        return
    allowed = set(form_fields(form)) | set(writes or ())
    unknown = sorted(set(variables) - allowed)
    if not unknown:
        return
    listed = ", ".join(f"'{n}'" for n in unknown)
    if form and allowed:
        why = reason("is not a field of this form")
        raise InvalidInput("{what}: the form has no field {listed}; it accepts {accepts}", field=unknown[0],
                           errors={n: why for n in unknown},
                           params={"what": what, "listed": listed, "accepts": ", ".join(sorted(allowed))})
    if form:
        why = reason("is not a field of this form")
        raise InvalidInput("{what}: the form has no field {listed}; it accepts nothing", field=unknown[0],
                           errors={n: why for n in unknown}, params={"what": what, "listed": listed})
    why = reason("this step accepts no such variable")
    params = {"what": what, "listed": listed, "form_key": form_key, "allowed": ", ".join(sorted(allowed))}
    if form_key and allowed:
        raise InvalidInput("{what} has no form (its form key '{form_key}' names no form in the forms folder), "
                           "so it accepts no variables other than {allowed}; {listed} given. "
                           "A designer can allow names with the property writes (names separated by commas, or *)",
                           field=unknown[0], errors={n: why for n in unknown}, params=params)
    if form_key:
        raise InvalidInput("{what} has no form (its form key '{form_key}' names no form in the forms folder), "
                           "so it accepts no variables; {listed} given. "
                           "A designer can allow names with the property writes (names separated by commas, or *)",
                           field=unknown[0], errors={n: why for n in unknown}, params=params)
    if allowed:
        raise InvalidInput("{what} has no form, so it accepts no variables other than {allowed}; {listed} given. "
                           "A designer can allow names with the property writes (names separated by commas, or *)", field=unknown[0], errors={n: why for n in unknown},
                           params=params)
    raise InvalidInput("{what} has no form, so it accepts no variables; {listed} given. "
                           "A designer can allow names with the property writes (names separated by commas, or *)",
                       field=unknown[0], errors={n: why for n in unknown}, params=params)


def validate(form: dict[str, Any] | None, variables: dict[str, Any]) -> None:
    """Raise InvalidInput naming every bad field (422 at the edge): the schema's checks, and a
    top-level ``integer`` field outside the 64-bit range (:func:`_range_errors`)."""
    if not form:
        return
    try:
        validator = Draft202012Validator(form["schema"])
    except SchemaError as exc:  # a broken form file is the operator's problem, reported plainly
        raise InvalidInput("the task's form schema is invalid: {message}",
                           params={"message": exc.message}) from None
    errors: dict[str, str] = {}
    for err in sorted(validator.iter_errors(variables), key=lambda e: list(e.path)):
        if err.validator == "required":
            missing = err.message.split("'")[1] if "'" in err.message else "?"
            errors.setdefault(missing, "is required")
        else:
            name = ".".join(str(p) for p in err.path) or "(form)"
            errors.setdefault(name, err.message)
    for name, message in _range_errors(form, variables).items():
        errors.setdefault(name, message)
    if errors:
        raise InvalidInput("the form has invalid fields: {fields}",
                           params={"fields": "; ".join(f"{k} {v}" for k, v in errors.items())},
                           field=next(iter(errors)), errors=errors)

def coerce_fields(fields: list[dict[str, Any]], variables: dict[str, Any]) -> dict[str, Any]:
    """Camunda generated-form fields: required and type checks, with the common coercions.

    ``long`` is a Java long (:data:`LONG_MIN` .. :data:`LONG_MAX`): a JSON integer, a whole
    float or text of ASCII digits with an optional sign; ``double``/``decimal`` take a number
    or the text of a finite one in ASCII digits (``12.5``, ``-3e2``). A value beyond the long's
    range is refused with its own message (``must be a long between ...``), any other that does
    not fit its type with ``must be a <type>``. Raises InvalidInput naming every bad field.
    """
    errors: dict[str, str] = {}
    out = dict(variables)
    for f in fields:
        fid, ftype = f["id"], (f.get("type") or "string")
        value = variables.get(fid)
        if value is None or value == "":
            if f.get("required"):
                errors[fid] = "is required"
            continue
        try:
            if ftype == "long":
                out[fid] = _long(value)
            elif ftype == "boolean":
                if not isinstance(value, bool):
                    raise ValueError
            elif ftype == "date":
                out[fid] = date.fromisoformat(str(value)[:10]) if not isinstance(value, date) else value
            elif ftype == "enum":
                options = {o["id"] for o in f.get("options", [])}
                if options and value not in options:
                    errors[fid] = f"must be one of {sorted(options)}"
            elif ftype in ("decimal", "double"):
                number = _number_text(value)
                out[fid] = Decimal(number) if ftype == "decimal" else float(number)
            elif not isinstance(value, str):
                raise ValueError
        except _OutOfRange:
            errors[fid] = f"must be a long {LONG_RANGE}"
        except (ValueError, TypeError, InvalidOperation, OverflowError):
            errors[fid] = f"must be a {ftype}"
    if errors:
        first = next(iter(errors))
        raise InvalidInput("the form has invalid fields: {fields}",
                           params={"fields": "; ".join(f"{k} {v}" for k, v in errors.items())},
                           field=first, errors=errors)
    return out


class _OutOfRange(ValueError):
    """A whole number outside the Java long's range."""


def _long(value: Any) -> int:
    """A Camunda long from a JSON value; ValueError when it is not one, _OutOfRange beyond 64 bits."""
    if isinstance(value, bool):
        raise ValueError
    if isinstance(value, int):
        number = value
    elif isinstance(value, float):
        if not value.is_integer():
            raise ValueError
        number = int(value)
    elif isinstance(value, str) and _LONG_TEXT.fullmatch(text := value.strip()):
        if len(text.lstrip("+-").lstrip("0")) > 19:  # more digits than any long (and int() has a digit cap)
            raise _OutOfRange
        number = int(text)
    else:
        raise ValueError
    if not LONG_MIN <= number <= LONG_MAX:
        raise _OutOfRange
    return number


def _number_text(value: Any) -> str:
    """A ``double``/``decimal`` value as the text of a finite number; ValueError otherwise."""
    if isinstance(value, bool):
        raise ValueError
    if isinstance(value, int | float):
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError
        return repr(value) if isinstance(value, float) else str(value)
    if isinstance(value, str) and _NUMBER_TEXT.fullmatch(text := value.strip()):
        if not math.isfinite(float(text)):
            raise ValueError
        return text
    raise ValueError


def _range_errors(form: dict[str, Any], variables: dict[str, Any]) -> dict[str, str]:
    """Whole numbers a form file's ``integer`` field cannot hold: beyond the 64-bit range, as a Camunda long.

    JSON Schema sets no bound on integers; sopflow stores them in JSON columns that SQLite
    reads as 64-bit integers (larger ones turn into floats and lose digits), so a form field of
    type ``integer`` takes :data:`LONG_MIN` .. :data:`LONG_MAX` (top-level fields).
    """
    errors: dict[str, str] = {}
    properties = (form.get("schema") or {}).get("properties") or {}
    for name, prop in properties.items():
        value = variables.get(name)
        kinds = prop.get("type") if isinstance(prop, dict) else None
        kinds = [kinds] if isinstance(kinds, str) else kinds if isinstance(kinds, list) else []
        if "integer" in kinds and isinstance(value, int) and not isinstance(value, bool) \
                and not LONG_MIN <= value <= LONG_MAX:
            errors[name] = f"must be a whole number {LONG_RANGE}"
    return errors


def render_sop(text: str | None, variables: dict[str, Any], element_id: str | None = None) -> str | None:
    """Render SOP text against the instance's variables, within the script budgets (engine.templates).

    A template that does not fit its data shows as written; one over a budget (CPU, memory,
    output size, recursion) raises :class:`ScriptError` naming the element (422).
    """
    if not text:
        return text
    try:
        return templates.render(text, {k: v for k, v in variables.items() if k.isidentifier()})
    except ScriptBudgetExceeded as exc:
        raise ScriptError("user task '{element_id}': its SOP text {exc}", element_id=element_id,
                          params={"element_id": element_id, "exc": exc}) from None
    except EvaluatorUnavailable:
        raise
    except Exception:  # noqa: BLE001 - a template or data error: the text as written is still useful
        return text
