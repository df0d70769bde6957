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
- numbers are finite (NaN and infinities are not JSON);
- values are of a type the engine stores (bytes, complex numbers, ranges and frozensets,
  which a script can make, are not), names in an object are all text or all of one
  scalar type (JSON names are text: ``{1: "a", "1": "b"}`` would collide), and the items
  of a set are of one type (a set is stored sorted).

:func:`find_problem` walks a value with an explicit stack (no recursion, whatever the
depth) and stops at the first problem, so its cost is bounded by :data:`MAX_NODES`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from engine.errors import Phrase

MAX_DEPTH = 20
MAX_NODES = 100_000


@dataclass(frozen=True)
class DataProblem:
    """Where a value breaks a bound (``path`` like ``items[3].name``) and why, in words."""

    path: str
    reason: str

    def describe(self, what: str) -> str:
        """``what`` (a :class:`~engine.errors.Phrase` such as "the value") and where it breaks which bound,
        as a Phrase (translated on the web pages with the message it goes into)."""
        if self.path:
            return Phrase("{what} at '{path}' {reason}", what=what, path=self.path, reason=self.reason)
        return Phrase("{what} {reason}", what=what, reason=self.reason)


def valid_text(text: str) -> bool:
    """Is ``text`` encodable as UTF-8 (no lone surrogates)?"""
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


NOT_UNICODE = Phrase("is not valid Unicode text (it holds a lone surrogate such as \\ud800)")
NAME_NOT_UNICODE = Phrase("has a name that is not valid Unicode text (it holds a lone surrogate such as \\ud800)")

# Values a script can leave that neither SpiffWorkflow's serializer nor the audit trail can store.
_UNSTORABLE = (bytes, bytearray, memoryview, complex, range, frozenset)
# Types a name (dict key) may have: JSON turns them into text.
_KEY_TYPES = (str, int, float, bool, type(None))

# A node's place: (parent's place, its container's id, the key in it), None at the root.
_Place = tuple[Any, int, Any] | None


def _path(root: str, place: _Place) -> str:
    keys: list[Any] = []
    while place is not None:
        place, _container, key = place
        keys.append(key)
    path = root
    for key in reversed(keys):
        path = f"{path}[{key}]" if isinstance(key, int) else (f"{path}.{key}" if path else str(key))
    return path


def _inside(place: _Place, container: int) -> bool:
    while place is not None:
        place, parent, _key = place
        if parent == container:
            return True
    return False


def find_problem(value: Any, *, max_depth: int = MAX_DEPTH, max_nodes: int = MAX_NODES,
                 root: str = "") -> DataProblem | None:
    """The first place where ``value`` breaks a bound, or None when it is storable data.

    Checks text (values and keys), depth (a scalar at the top is depth 0; each list or
    dict level adds one), self-containment, the total number of values, and finite numbers.
    Types other than JSON's are not judged here (the engine's own checks and serializer
    decide which other types it stores). Paths are only built for the problem found.
    """
    stack: list[tuple[Any, int, _Place]] = [(value, 0, None)]
    nodes = 0
    while stack:
        item, depth, place = stack.pop()
        nodes += 1
        if nodes > max_nodes:
            return DataProblem(root, Phrase("holds more than {max_nodes} values", max_nodes=max_nodes))
        kind = type(item)
        if kind is str:
            if not item.isascii() and not valid_text(item):
                return DataProblem(_path(root, place), NOT_UNICODE)
        elif kind is dict or kind is list or kind is tuple or isinstance(item, (dict, list, tuple, set)):
            here = id(item)
            if _inside(place, here):
                return DataProblem(_path(root, place), Phrase("contains itself"))
            if depth >= max_depth:
                return DataProblem(_path(root, place), Phrase("is nested deeper than {max_depth} levels", max_depth=max_depth))
            if isinstance(item, (dict, set)):
                mixed = _mixed_types(item, dict_keys=isinstance(item, dict))
                if mixed is not None:
                    return DataProblem(_path(root, place), mixed)
            if isinstance(item, dict):
                for key, child in item.items():
                    if isinstance(key, str) and not key.isascii() and not valid_text(key):
                        return DataProblem(_path(root, place), NAME_NOT_UNICODE)
                    stack.append((child, depth + 1, (place, here, key)))
            else:
                stack.extend((child, depth + 1, (place, here, index)) for index, child in enumerate(item))
        elif isinstance(item, str):
            if not valid_text(item):
                return DataProblem(_path(root, place), NOT_UNICODE)
        elif isinstance(item, float) and not math.isfinite(item):
            return DataProblem(_path(root, place), Phrase("is not a finite number"))
        elif isinstance(item, _UNSTORABLE):
            return DataProblem(_path(root, place), Phrase("holds a value of type {type}, which a process cannot store "
                                                          "(use text, numbers, lists or objects)", type=type(item).__name__))
    return None


def _mixed_types(container: dict[Any, Any] | set[Any], *, dict_keys: bool) -> str | None:
    """Why the names of a dict (or the items of a set) cannot be stored, or None."""
    types = {type(key) for key in container}
    if dict_keys:
        odd = next((t for t in types if t not in _KEY_TYPES), None)
        if odd is not None:
            return Phrase("has a name of type {type}; names must be text", type=odd.__name__)
    if len(types) > 1:
        listed = ", ".join(sorted(t.__name__ for t in types))
        if dict_keys:
            return Phrase("mixes names of different types ({types}); use text", types=listed)
        return Phrase("mixes items of different types ({types}); use text", types=listed)
    return None


def find_problem_in_variables(variables: dict[Any, Any], *, max_depth: int = MAX_DEPTH,
                              max_nodes: int = MAX_NODES) -> DataProblem | None:
    """:func:`find_problem` for a name -> value mapping (process data): names must be valid text,
    and each value may nest ``max_depth`` levels and hold ``max_nodes`` values."""
    for name, value in variables.items():
        if isinstance(name, str) and not valid_text(name):
            return DataProblem("", NAME_NOT_UNICODE)
        found = find_problem(value, max_depth=max_depth, max_nodes=max_nodes, root=str(name))
        if found is not None:
            return found
    return None
