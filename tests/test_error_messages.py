"""The engine's refusal messages are translatable (engine/errors.py's contract; issue 10).

Every message given to an error (and every :class:`~engine.errors.Phrase` and
``engine.errors.reason``) is a string literal with ``{placeholders}`` filled from ``params``, so
``make messages`` can extract it; and every extracted template has a Chinese translation with the
same placeholders. A message built with an f-string, ``+`` or ``%`` would reach the pages in
English only: these tests fail on it.
"""
from __future__ import annotations

import ast
import string
from pathlib import Path

import pytest
from babel.messages.pofile import read_po

from engine.errors import InvalidInput, Phrase, SopflowError
from web import i18n

ROOT = Path(__file__).resolve().parent.parent
ERRORS_PO = ROOT / "web" / "locale" / "zh_Hans" / "LC_MESSAGES" / "errors.po"
# The calls whose first argument is a message template (Makefile's ERROR_KEYWORDS).
KEYWORDS = {"SopflowError", "NotFound", "Conflict", "Forbidden", "InvalidInput", "InvalidDefinition",
            "ScriptError", "StaleInstance", "TooLarge", "UnsupportedType", "BudgetExceeded", "Unauthorized",
            "_Unauthorized", "Phrase", "reason"}


def _name(func: ast.expr) -> str | None:
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return func.attr
    return None


def _error_classes() -> set[str]:
    """Every class in engine/, api/, web/ that derives from a known error class (so a new subclass
    cannot slip past the keywords)."""
    found = set(KEYWORDS)
    trees = [ast.parse(p.read_text()) for p in _sources()]
    grew = True
    while grew:
        grew = False
        for tree in trees:
            for node in ast.walk(tree):
                if isinstance(node, ast.ClassDef) and node.name not in found and any(
                        _name(base) in found for base in node.bases):
                    found.add(node.name)
                    grew = True
    return found


def _sources() -> list[Path]:
    return sorted(p for folder in ("engine", "api", "web") for p in (ROOT / folder).rglob("*.py"))


def _calls() -> list[tuple[str, ast.Call]]:
    classes = _error_classes()
    calls = []
    for path in _sources():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and _name(node.func) in classes:
                calls.append((f"{path.relative_to(ROOT)}:{node.lineno}", node))
    return calls


def _placeholders(template: str) -> set[str]:
    """The ``{name!conversion:spec}`` fields of a str.format template."""
    return {f"{field}!{conversion or ''}:{spec or ''}"
            for _text, field, spec, conversion in string.Formatter().parse(template) if field is not None}


def _templates() -> dict[str, str]:
    """Every literal template at a call site -> where it is (the first place)."""
    found: dict[str, str] = {}
    for where, call in _calls():
        if call.args and isinstance(call.args[0], ast.Constant) and isinstance(call.args[0].value, str):
            found.setdefault(call.args[0].value, where)
    return found


def test_every_error_message_is_a_literal_template_with_its_params() -> None:
    """No f-string, concatenation, ``%`` or variable as a message: the catalog could not hold it."""
    bad = []
    calls = _calls()
    assert len(calls) > 200  # the walk finds the raise sites (about 250)
    for where, call in calls:
        if _name(call.func) in ("SopflowError",) and not call.args:
            continue  # super().__init__ style calls pass their own arguments
        message = call.args[0] if call.args else None
        if isinstance(message, ast.Attribute) and message.attr == "template":
            continue  # re-raising another error's template (engine.identity.refuse), checked where it was made
        if not (isinstance(message, ast.Constant) and isinstance(message.value, str)):
            bad.append(f"{where}: the message is {type(message).__name__}, not a string literal")
            continue
        try:
            fields = {f.split("!")[0] for f in _placeholders(message.value)}
        except ValueError as exc:
            bad.append(f"{where}: the template does not parse ({exc})")
            continue
        params = next((k.value for k in call.keywords if k.arg == "params"), None)
        given: set[str] | None
        if _name(call.func) == "Phrase":
            given = {k.arg for k in call.keywords if k.arg}
        elif params is None:
            given = set()
        elif isinstance(params, ast.Dict):
            given = {k.value for k in params.keys if isinstance(k, ast.Constant)}
        else:
            given = None  # a mapping built elsewhere (checked when the error is made)
        if given is not None and not fields <= given:
            bad.append(f"{where}: placeholders {sorted(fields - given)} have no param")
    assert not bad, "\n".join(bad)


def test_the_errors_catalog_translates_every_template_with_the_same_placeholders() -> None:
    """Run ``make messages`` and translate in errors.po when this fails."""
    with ERRORS_PO.open("rb") as fh:
        catalog = read_po(fh, locale="zh_Hans")
    problems = []
    for template, where in sorted(_templates().items()):
        message = catalog.get(template)
        if message is None:
            problems.append(f"{where}: {template!r} is not in errors.po (run make messages)")
        elif not message.string or message.fuzzy:
            problems.append(f"{where}: {template!r} has no (non-fuzzy) translation")
        elif _placeholders(str(message.string)) != _placeholders(template):
            problems.append(f"{where}: {template!r} and its translation differ in placeholders "
                            f"({sorted(_placeholders(template))} vs {sorted(_placeholders(str(message.string)))})")
    assert not problems, "\n".join(problems)


def test_a_message_is_its_template_filled_in() -> None:
    exc = InvalidInput("task {task_id} not found", field="task", params={"task_id": "t-1"})
    assert (exc.message, exc.template, exc.params, str(exc)) == (
        "task t-1 not found", "task {task_id} not found", {"task_id": "t-1"}, "task t-1 not found (field=task)")
    assert SopflowError("a literal {{brace}}").message == "a literal {brace}"
    with pytest.raises(KeyError):
        InvalidInput("task {task_id} not found")


def test_error_text_translates_the_template_and_its_phrases_but_not_outside_text() -> None:
    """The params stay as they are (ids, user values, Python's text); Phrases are translated too."""
    exc = InvalidInput("task {task_id} not found", params={"task_id": "t-1"})
    assert i18n.error_text(exc, "en") == "task t-1 not found"
    assert i18n.error_text(exc, "zh-Hans") == "未找到任务 t-1"
    nested = InvalidInput("variable filter: {problem}", params={"problem": Phrase("{what} {reason}", what=Phrase(
        "the value"), reason=Phrase("is nested deeper than {max_depth} levels", max_depth=1))})
    assert nested.message == "variable filter: the value is nested deeper than 1 levels"
    assert i18n.error_text(nested, "zh-Hans") == "变量筛选：该值嵌套超过 1 层"
    outside = InvalidInput("the diagram was refused: {exc}", params={"exc": ValueError("bad thing")})
    assert i18n.error_text(outside, "zh-Hans") == "流程图被拒绝：bad thing"
    unknown = InvalidInput("no such template {x}", params={"x": 1})
    assert i18n.error_text(unknown, "zh-Hans") == "no such template 1"


def test_errors_po_agrees_with_the_page_catalogs_on_shared_msgids() -> None:
    """The catalogs are merged into one: a msgid in errors.po and a page's catalog (e.g. "priority")
    must read the same in both, or one page would silently change."""
    catalogs = i18n.catalogs()
    errors = next(catalog for path, catalog in catalogs if path.name == "errors.po")
    clashes = [f"{path.name}: {message.id!r}" for path, catalog in catalogs if path.name != "errors.po"
               for message in catalog if message.id and message.id in errors
               and errors[message.id].string != message.string]
    assert not clashes
