"""The small tree of domain errors. Only ``api/`` maps them to HTTP.

Each error carries a stable ``code`` and the context a person needs to act
(file, element id, line, field). A rejected command never leaves a partial write:
the edge that owns the transaction rolls back when one of these escapes.

Messages are translatable the way Django's ``ValidationError(message, code, params)`` is:
the message given to the constructor is a *template*, always a string literal at the raise
site (a test walks the code to hold this), with ``{name}`` placeholders filled from
``params``. The English text is ``template.format(**params)``; the web pages look the template
up in the gettext catalog (``web/locale/*/LC_MESSAGES/errors.po``, extracted by
``make messages``) and fill the translation with the same params.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class SopflowError(Exception):
    """A refused command or query.

    ``message`` is a ``str.format`` template (``"task {task_id} not found"``; a literal brace
    is written ``{{``), ``params`` its values — the ids, names, limits and any text that comes
    from outside (a user's value, Python's, SpiffWorkflow's or lxml's exception text), which
    stays as it is in every language. ``context`` holds the machine-readable fields the API
    adds to its problem (``field``, ``element_id``, ``line``...).

    ``details`` maps a field to its own refusal when one error reports several (its
    ``context["problems"]`` holds their English messages, which the API shows).

    Attributes: ``template`` (the untranslated template, the catalog's msgid), ``params``
    (a dict, empty without params), ``message`` (the English text: the template filled in),
    ``context`` (``None`` values dropped). Raises :class:`KeyError`/:class:`IndexError`/
    :class:`ValueError` at construction if the template names a placeholder ``params`` lacks.
    """

    code = "error"

    def __init__(self, message: str, *, params: Mapping[str, Any] | None = None,
                 details: Mapping[str, SopflowError] | None = None, **context: Any) -> None:
        self.template = message
        self.params: dict[str, Any] = dict(params or {})
        self.message = message.format(**self.params)
        #: per-field refusals as errors (their messages are also in ``context``), for translation
        self.details: dict[str, SopflowError] = dict(details or {})
        super().__init__(self.message)
        self.context = {k: v for k, v in context.items() if v is not None}

    def __str__(self) -> str:
        if not self.context:
            return self.message
        where = ", ".join(f"{k}={v}" for k, v in self.context.items())
        return f"{self.message} ({where})"


class Phrase(str):
    """A translatable piece of a message, given as a param (``Phrase("due date")``,
    ``Phrase("task '{name}'", name=...)``): a ``str`` holding the English text, which also keeps
    its ``template`` and ``params`` so that the web pages translate it with the message around it.
    Like a message, its template is a string literal (extracted by ``make messages``)."""

    template: str
    params: dict[str, Any]

    def __new__(cls, template: str, **params: Any) -> Phrase:
        text = super().__new__(cls, template.format(**params))
        text.template = template
        text.params = params
        return text


def reason(text: str) -> str:
    """Mark a literal as a message id for ``make messages`` (a refusal's per-field reason); returns it as is."""
    return text


class NotFound(SopflowError):
    code = "not_found"


class Conflict(SopflowError):
    code = "conflict"


class Forbidden(SopflowError):
    code = "forbidden"


class InvalidInput(SopflowError):
    code = "invalid_input"


class InvalidDefinition(InvalidInput):
    """An uploaded BPMN/DMN file is refused (names file, element id and line)."""

    code = "invalid_definition"


class ScriptError(SopflowError):
    """A script, condition or expression failed or was refused while running."""

    code = "script_error"


class StaleInstance(Conflict):
    """Another command moved the instance first (revision check failed); retried by the unit of work."""

    code = "stale_instance"


class TooLarge(InvalidInput):
    """An input is larger than a configured limit (an attachment above ``SOPFLOW_MAX_ATTACHMENT_BYTES``)."""

    code = "too_large"


class UnsupportedType(InvalidInput):
    """An uploaded file's type is not accepted, or its content is not what its name says."""

    code = "unsupported_media_type"
