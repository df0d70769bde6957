"""The small tree of domain errors. Only ``api/`` maps them to HTTP.

Each error carries a stable ``code`` and the context a person needs to act
(file, element id, line, field). A rejected command never leaves a partial write:
the edge that owns the transaction rolls back when one of these escapes.
"""
from __future__ import annotations

from typing import Any


class SopflowError(Exception):
    code = "error"

    def __init__(self, message: str, **context: Any) -> None:
        super().__init__(message)
        self.message = message
        self.context = {k: v for k, v in context.items() if v is not None}

    def __str__(self) -> str:
        if not self.context:
            return self.message
        where = ", ".join(f"{k}={v}" for k, v in self.context.items())
        return f"{self.message} ({where})"


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
