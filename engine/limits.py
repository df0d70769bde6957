"""Bounds on the data sopflow stores: nesting depth, size, cycles, text that is valid Unicode.

Process data comes from requests (start, complete, message variables), from scripts and
from expressions. Whatever its source it ends up as JSON in the database and in the
hash-chained audit trail, so it must be JSON-shaped data that every store can hold:
- text is valid Unicode: a lone surrogate (``"\\ud800"``, which JSON's escapes and
  Python's ``chr`` can make) cannot be encoded as UTF-8, so neither SQLite, PostgreSQL nor
  the audit hash can take it;
- nesting is at most :data:`MAX_DEPTH` levels (deeper data exhausts recursion in JSON
  encoders and in SpiffWorkflow's deep copies of task data);
- a container never contains itself, and one value holds at most :data:`MAX_NODES`
  values in all (a list that repeats one shared list a thousand times is a thousand
  copies once stored);
- numbers are finite (NaN and infinities are not JSON).

:func:`find_problem` walks a value with an explicit stack (no recursion, whatever the
depth) and stops at the first problem, so its cost is bounded by :data:`MAX_NODES`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

MAX_DEPTH = 20
MAX_NODES = 100_000


@dataclass(frozen=True)
class DataProblem:
    """Where a value breaks a bound (``path`` like ``items[3].name``) and why, in words."""

    path: str
    reason: str

    def describe(self, what: str) -> str:
        where = f"{what} at '{self.path}'" if self.path else what
        return f"{where} {self.reason}"


def valid_text(text: str) -> bool:
    """Is ``text`` encodable as UTF-8 (no lone surrogates)?"""
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _step(path: str, key: Any) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else str(key)


NOT_UNICODE = "is not valid Unicode text (it holds a lone surrogate such as \\ud800)"


def find_problem(value: Any, *, max_depth: int = MAX_DEPTH, max_nodes: int = MAX_NODES,
                 root: str = "") -> DataProblem | None:
    """The first place where ``value`` breaks a bound, or None when it is storable data.

    Checks text (values and keys), depth (a scalar at the top is depth 0; each list or
    dict level adds one), self-containment, the total number of values, and finite numbers.
    Types other than JSON's are not judged here (the engine's own checks and serializer
    decide which other types it stores).
    """
    stack: list[tuple[Any, str, int, tuple[int, ...]]] = [(value, root, 0, ())]
    nodes = 0
    while stack:
        item, path, depth, ancestors = stack.pop()
        nodes += 1
        if nodes > max_nodes:
            return DataProblem(root, f"holds more than {max_nodes} values")
        if isinstance(item, str):
            if not valid_text(item):
                return DataProblem(path, NOT_UNICODE)
        elif isinstance(item, float):
            if not math.isfinite(item):
                return DataProblem(path, "is not a finite number")
        elif isinstance(item, (list, tuple, dict)):
            if id(item) in ancestors:
                return DataProblem(path, "contains itself")
            if depth >= max_depth:
                return DataProblem(path, f"is nested deeper than {max_depth} levels")
            inner = (*ancestors, id(item))
            if isinstance(item, dict):
                for key, child in item.items():
                    if isinstance(key, str) and not valid_text(key):
                        return DataProblem(path, "has a name that " + NOT_UNICODE)
                    stack.append((child, _step(path, key), depth + 1, inner))
            else:
                for index, child in enumerate(item):
                    stack.append((child, _step(path, index), depth + 1, inner))
    return None


def find_problem_in_variables(variables: dict[Any, Any], *, max_depth: int = MAX_DEPTH,
                              max_nodes: int = MAX_NODES) -> DataProblem | None:
    """:func:`find_problem` for a name -> value mapping (process data): names must be valid text,
    and each value may nest ``max_depth`` levels and hold ``max_nodes`` values."""
    for name, value in variables.items():
        if isinstance(name, str) and not valid_text(name):
            return DataProblem("", "has a name that " + NOT_UNICODE)
        found = find_problem(value, max_depth=max_depth, max_nodes=max_nodes, root=str(name))
        if found is not None:
            return found
    return None
