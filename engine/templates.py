"""SOP text (jinja2) rendered within the same CPU and memory budgets as scripts.

Process authors write SOP text (``bpmn:documentation``, Spiff's ``instructionsForEndUser``)
as jinja2 templates. They render in jinja2's ``ImmutableSandboxedEnvironment`` (no
attribute escapes, no mutation of data), tightened here:

- ``*`` and ``**`` go through the script sandbox's size guards, so ``'a' * n`` fails before
  it allocates (and jinja2 no longer folds them at compile time);
- jinja2's own ``range`` limit (100,000 items) holds; a range over it is a budget error;
- output is streamed and capped (``template_max_output_bytes``, default 256 KiB, counted in
  characters), so a loop that prints forever stops at the cap.

A template with any jinja2 syntax renders in an evaluator process (:mod:`engine.evaluator`)
unless it is provably cheap: plain text needs no rendering, and text whose only tags are
``{{ name }}``, ``{{ a.b }}`` or ``{{ a['key'] }}`` costs one ``str()`` of a stored value per
tag, so it renders here. At deploy, :func:`check_bounded` (run in an evaluator) refuses
syntax errors, macros that call themselves (directly or in a cycle), ``range`` over
constants beyond the limit and constant ``*``/``**`` beyond the guards, each with its line.
"""
from __future__ import annotations

import re
from collections.abc import Iterable
from functools import lru_cache
from typing import Any

from jinja2 import TemplateError, TemplateSyntaxError, nodes
from jinja2.environment import Template
from jinja2.sandbox import MAX_RANGE, ImmutableSandboxedEnvironment

from engine import evaluator, sandbox
from engine.sandbox import ScriptBudgetExceeded

_MARKERS = ("{{", "{%", "{#")
_NEWLINES = re.compile(r"\r\n|\r|\n")


class BoundedEnvironment(ImmutableSandboxedEnvironment):
    """jinja2's immutable sandbox with the script sandbox's guards on ``*`` and ``**``."""

    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        try:
            if operator == "*":
                return sandbox._mul(left, right)
            if operator == "**":
                return sandbox._pow(left, right)
        except ValueError as exc:
            raise ScriptBudgetExceeded(str(exc)) from None
        return super().call_binop(context, operator, left, right)


ENV = BoundedEnvironment(autoescape=False)


def _collect(chunks: Iterable[str], cap: int) -> str:
    out: list[str] = []
    size = 0
    for chunk in chunks:
        size += len(chunk)
        if size > cap:
            raise ScriptBudgetExceeded(f"renders to more than {cap // 1024} KiB of text")
        out.append(chunk)
    return "".join(out)


def _as_jinja_renders_plain(text: str) -> str:
    """What jinja2 makes of text without tags: newlines normalised, one trailing newline dropped."""
    lines = _NEWLINES.split(text)
    if lines and lines[-1] == "":
        lines.pop()
    return "\n".join(lines)


@lru_cache(maxsize=256)
def _compiled(text: str) -> Template:
    return ENV.from_string(text)


def render_bounded(text: str, variables: dict[str, Any], cap: int) -> str:
    """Render ``text`` here with the output cap (in an evaluator process: the CPU/memory limits
    are the process's). Budget problems raise :class:`ScriptBudgetExceeded`; a template or
    data error raises what jinja2 raised."""
    try:
        return _collect(_compiled(text).generate(**variables), cap)
    except OverflowError as exc:  # jinja2's sandboxed range() over its limit
        raise ScriptBudgetExceeded(str(exc)) from None


_SIMPLE_NODES = (nodes.Template, nodes.Output, nodes.TemplateData, nodes.Name, nodes.Getattr)


@lru_cache(maxsize=256)
def _simple(text: str) -> Template | None:
    """The compiled template if it only prints names, attributes and constant-key items."""
    try:
        tree = ENV.parse(text)
    except (TemplateError, RecursionError, MemoryError):
        return None
    keys = {id(n.arg) for n in tree.find_all(nodes.Getitem)
            if isinstance(n.arg, nodes.Const) and isinstance(n.arg.value, (str, int))}
    for node in tree.find_all(nodes.Node):
        if isinstance(node, nodes.Getitem) and id(node.arg) in keys or id(node) in keys:
            continue
        if not isinstance(node, _SIMPLE_NODES):
            return None
    return ENV.from_string(text)


def render(text: str, variables: dict[str, Any]) -> str:
    """``text`` rendered against ``variables`` within the budgets (:func:`engine.evaluator.limits`),
    its output at most ``output_bytes`` characters.

    Raises :class:`ScriptBudgetExceeded` when over a budget (CPU, memory, output, recursion);
    any other exception means the template does not fit its data (the caller decides).
    """
    cap = evaluator.limits().output_bytes
    if not any(marker in text for marker in _MARKERS):
        return _collect([_as_jinja_renders_plain(text)], cap)
    simple = _simple(text)
    if simple is not None:
        return _collect(simple.generate(**variables), cap)
    return evaluator.render(text, variables)


# ---------------------------------------------------------------- deploy-time checks

_NOT_CONSTANT = object()


def _constant(node: nodes.Node) -> Any:
    """A constant expression's value, computed under the sandbox's guards (or _NOT_CONSTANT)."""
    if isinstance(node, nodes.Const):
        return node.value
    if isinstance(node, nodes.Neg):
        value = _constant(node.node)
        return -value if isinstance(value, (int, float)) else _NOT_CONSTANT
    if isinstance(node, (nodes.Mul, nodes.Pow, nodes.Add, nodes.Sub)):
        left, right = _constant(node.left), _constant(node.right)
        if left is _NOT_CONSTANT or right is _NOT_CONSTANT:
            return _NOT_CONSTANT
        try:
            if isinstance(node, nodes.Mul):
                return sandbox._mul(left, right)
            if isinstance(node, nodes.Pow):
                return sandbox._pow(left, right)
            if isinstance(left, (int, float)) and isinstance(right, (int, float)):
                return left + right if isinstance(node, nodes.Add) else left - right
        except ValueError:
            raise
        except (TypeError, ArithmeticError):
            return _NOT_CONSTANT
    return _NOT_CONSTANT


def _recursive_macro(tree: nodes.Template) -> nodes.Macro | None:
    macros = {m.name: m for m in tree.find_all(nodes.Macro)}
    calls = {
        name: {c.node.name for c in macro.find_all(nodes.Call) if isinstance(c.node, nodes.Name)} & set(macros)
        for name, macro in macros.items()
    }
    for start, macro in macros.items():
        seen: set[str] = set()
        todo = list(calls[start])
        while todo:
            name = todo.pop()
            if name == start:
                return macro
            if name not in seen:
                seen.add(name)
                todo.extend(calls[name])
    return None


def _static_problem(tree: nodes.Template) -> tuple[str, int | None] | None:
    macro = _recursive_macro(tree)
    if macro is not None:
        return (f"macro '{macro.name}' calls itself (directly or through another macro); "
                "SOP text may not recurse", macro.lineno)
    for call in tree.find_all(nodes.Call):
        if isinstance(call.node, nodes.Name) and call.node.name == "range" and call.args and not call.kwargs:
            try:
                args = [_constant(a) for a in call.args]
            except ValueError as exc:
                return str(exc), call.lineno
            if all(isinstance(a, int) and not isinstance(a, bool) for a in args) and len(args) <= 3:
                try:
                    too_long = len(range(*args)) > MAX_RANGE
                except (ValueError, OverflowError):
                    too_long = True
                if too_long:
                    return f"range() over more than {MAX_RANGE} items", call.lineno
    for op in tree.find_all((nodes.Mul, nodes.Pow)):
        try:
            _constant(op)
        except ValueError as exc:
            return str(exc), op.lineno
    return None


def check_bounded(text: str, cap: int) -> tuple[str, int | None] | None:
    """What is wrong with SOP text ``text`` as a bounded template: (message, 1-based line), or None.

    Runs in an evaluator process (compiling folds constants, which costs what they cost).
    """
    if len(text) > cap:
        return f"is longer than the {cap // 1024} KiB of text an SOP may render to", None
    try:
        tree = ENV.parse(text)
    except TemplateSyntaxError as exc:
        return f"template syntax error: {exc.message}", exc.lineno
    problem = _static_problem(tree)
    if problem is not None:
        return problem
    try:
        ENV.compile(tree)
    except ScriptBudgetExceeded as exc:
        return str(exc), None
    except TemplateError as exc:
        return f"template error: {exc}", getattr(exc, "lineno", None)
    return None
