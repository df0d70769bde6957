"""Restricted execution of the Python that comes inside uploaded diagrams.

Script tasks, gateway conditions, timer, due-date and DMN expressions are compiled with
RestrictedPython's ``compile_restricted`` (not merely run with fewer builtins, which
``().__class__.__base__.__subclasses__()`` escapes). On top of its policy we:

- refuse imports except ``datetime``, ``decimal``, ``math`` and ``json``;
- count loop iterations (``for``, ``while``, comprehensions) and check a wall-time
  deadline on each count, so ``while True: pass`` fails after the budget;
- bound ``range`` and the size of ``*``/``**``/``<<`` results, so one C-level call
  cannot allocate or spin without passing a checkpoint.

The environment plugs into SpiffWorkflow's script-engine hook
(``PythonScriptEngine(environment=...)``). SpiffWorkflow does not serialize the engine,
so :func:`script_engine` must be re-attached on every load (``engine.serialization``).
"""
from __future__ import annotations

import ast
import datetime as _datetime
import decimal as _decimal
import json as _json
import math as _math
import operator
import re
import threading
import time
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, TypeVar

from RestrictedPython.compile import compile_restricted_eval, compile_restricted_exec
from RestrictedPython.Guards import (
    full_write_guard,
    guarded_iter_unpack_sequence,
    guarded_unpack_sequence,
    safe_builtins,
    safer_getattr_raise,
)
from RestrictedPython.PrintCollector import PrintCollector
from RestrictedPython.transformer import RestrictingNodeTransformer
from SpiffWorkflow.bpmn.script_engine import PythonScriptEngine
from SpiffWorkflow.bpmn.script_engine.python_environment import BasePythonScriptEngineEnvironment

from engine.config import load as load_settings


def _public_namespace(module: types.ModuleType) -> types.SimpleNamespace:
    """A module's public names minus any module it imported (``json.codecs`` would reach ``open``)."""
    names = {name: getattr(module, name) for name in dir(module) if not name.startswith("_")}
    return types.SimpleNamespace(**{k: v for k, v in names.items() if not isinstance(v, types.ModuleType)})


ALLOWED_MODULES = {m.__name__: _public_namespace(m) for m in (_datetime, _decimal, _math, _json)}
MAX_RANGE = 1_000_000
MAX_SEQUENCE = 1_000_000
MAX_POW_BITS = 4096


class ScriptRefused(SyntaxError):
    """Compile-time refusal (syntax or restricted construct), with the 1-based line.

    A ``SyntaxError`` because SpiffWorkflow's DMN engine probes ``validate()`` for one.
    """

    def __init__(self, message: str, line: int | None) -> None:
        super().__init__(message)
        self.line = line

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "script refused"


class ScriptBudgetExceeded(Exception):
    """A script, expression or template went over its CPU, memory, step or size budget."""


class ScriptResultError(Exception):
    """A script left (or an expression returned) something that is not storable data."""


_Node = TypeVar("_Node", bound=ast.AST)


def _located(new: _Node, old: ast.AST) -> _Node:
    """``new`` (a node the policy adds) with the source position of the node it stands for."""
    for child in ast.walk(new):
        if not hasattr(child, "lineno") or child is new:
            ast.copy_location(child, old)
    return new


class _Policy(RestrictingNodeTransformer):
    """RestrictedPython's policy plus step checkpoints and size-guarded arithmetic."""

    def _tick(self, node: ast.AST) -> ast.stmt:
        return _located(ast.Expr(ast.Call(func=ast.Name("_tick_", ast.Load()), args=[], keywords=[])), node)

    def visit_While(self, node: ast.While) -> ast.AST:
        node = self.node_contents_visit(node)
        node.body.insert(0, self._tick(node))
        return node

    def visit_BinOp(self, node: ast.BinOp) -> ast.AST:
        node = self.node_contents_visit(node)
        guard = {ast.Pow: "_pow_", ast.Mult: "_mul_", ast.LShift: "_lshift_"}.get(type(node.op))
        if guard is None:
            return node
        call = ast.Call(func=ast.Name(guard, ast.Load()), args=[node.left, node.right], keywords=[])
        return _located(call, node)


_LINE = re.compile(r"[Ll]ine (\d+)")


@lru_cache(maxsize=4096)
def _compile(source: str, mode: str) -> types.CodeType:
    compiler = compile_restricted_exec if mode == "exec" else compile_restricted_eval
    try:
        result = compiler(source, policy=_Policy)
    except SyntaxError as exc:  # raised by some policies for constructs they refuse outright
        raise ScriptRefused(exc.msg, exc.lineno) from None
    if result.errors or result.code is None:
        message = "; ".join(result.errors) or "script refused"
        match = _LINE.search(message)
        raise ScriptRefused(message, int(match.group(1)) if match else None)
    return result.code


def check(source: str, mode: str = "exec") -> None:
    """Raise :class:`ScriptRefused` if ``source`` would not compile in the sandbox."""
    _compile(source, mode)


@dataclass
class _Budget:
    steps_left: int
    deadline: float
    clock: Callable[[], float]


_state = threading.local()


def _tick() -> None:
    budget: _Budget = _state.budget
    budget.steps_left -= 1
    if budget.steps_left < 0:
        raise ScriptBudgetExceeded("script exceeded its step budget (endless loop?)")
    if budget.steps_left % 256 == 0 and budget.clock() > budget.deadline:
        raise ScriptBudgetExceeded("script exceeded its time budget (endless loop?)")


def _getiter(obj: Any) -> Iterator[Any]:
    for item in iter(obj):
        _tick()
        yield item


def _range(*args: int) -> range:
    r = range(*args)
    if len(r) > MAX_RANGE:
        raise ValueError(f"range() larger than {MAX_RANGE} items is not allowed in scripts")
    return r


def _size(value: Any) -> int:
    return len(value) if isinstance(value, (str, bytes, list, tuple)) else 0


def _mul(left: Any, right: Any) -> Any:
    for seq, times in ((left, right), (right, left)):
        if _size(seq) and isinstance(times, int) and _size(seq) * times > MAX_SEQUENCE:
            raise ValueError("sequence repetition too large for a script")
    return left * right


def _pow(base: Any, exp: Any) -> Any:
    big = isinstance(base, int) and isinstance(exp, int) and exp > 0 and abs(base) > 1
    if big and exp * abs(base).bit_length() > MAX_POW_BITS:
        raise ValueError("power too large for a script")
    return base**exp


def _lshift(left: Any, right: Any) -> Any:
    if isinstance(right, int) and right > MAX_POW_BITS:
        raise ValueError("shift too large for a script")
    return left << right


def _import(name: str, globals: Any = None, locals: Any = None, fromlist: Any = (),  # noqa: A002
            level: int = 0) -> Any:
    root = name.split(".")[0]
    if level != 0 or root not in ALLOWED_MODULES or name != root:
        raise ImportError(f"import of '{name}' is not allowed (allowed: {', '.join(sorted(ALLOWED_MODULES))})")
    return ALLOWED_MODULES[root]


_INPLACE = {
    "+=": operator.iadd, "-=": operator.isub, "*=": _mul, "/=": operator.itruediv,
    "//=": operator.ifloordiv, "%=": operator.imod, "**=": _pow, "|=": operator.ior,
    "&=": operator.iand, "^=": operator.ixor, ">>=": operator.irshift, "<<=": _lshift,
}


def _inplacevar(op: str, x: Any, y: Any) -> Any:
    return _INPLACE[op](x, y)


def _build_builtins() -> dict[str, Any]:
    b = dict(safe_builtins)
    for name in ("list", "dict", "set", "frozenset", "min", "max", "sum", "any", "all", "enumerate",
                 "map", "filter", "reversed", "sorted", "zip", "tuple", "isinstance", "bool"):
        b[name] = __builtins__[name] if isinstance(__builtins__, dict) else getattr(__builtins__, name)
    b["range"] = _range
    b["__import__"] = _import
    return b


_BUILTINS = _build_builtins()
_GUARDS: dict[str, Any] = {
    "__builtins__": _BUILTINS,
    "__name__": "sopflow_script",
    "__metaclass__": type,
    "_getattr_": safer_getattr_raise,  # a missing attribute raises, as in Python
    "_getitem_": operator.getitem,
    "_getiter_": _getiter,
    "_iter_unpack_sequence_": guarded_iter_unpack_sequence,
    "_unpack_sequence_": guarded_unpack_sequence,
    "_write_": full_write_guard,
    "_inplacevar_": _inplacevar,
    "_print_": PrintCollector,
    "_apply_": lambda f, *a, **kw: f(*a, **kw),
    "_tick_": _tick,
    "_mul_": _mul,
    "_pow_": _pow,
    "_lshift_": _lshift,
}
def _now() -> _datetime.datetime:
    fixed: _datetime.datetime | None = getattr(_state, "now", None)  # set per request in an evaluator process
    if fixed is not None:
        return fixed
    from engine import clock

    return clock.now()


def _today() -> _datetime.date:
    return _now().date()


# Convenience names every script and expression sees (task data of the same name wins).
HELPERS: dict[str, Any] = {
    "now": _now, "today": _today, "timedelta": _datetime.timedelta, "date": _datetime.date,
    "Decimal": _decimal.Decimal,
}
_NOT_DATA = (types.ModuleType, types.SimpleNamespace, types.FunctionType, types.BuiltinFunctionType, type, types.MethodType)


@lru_cache(maxsize=1)
def _limits() -> tuple[int, float]:
    """Script budgets from the settings, read once per process."""
    settings = load_settings()
    return settings.script_max_steps, settings.script_max_seconds


class _Run:
    """Installs a fresh budget for one script or expression (re-entrant: nested calls share it).

    ``steps``/``seconds`` default to the settings; ``clock`` is wall time in the API process
    and CPU time (``time.process_time``) in an evaluator process.
    """

    def __init__(self, steps: int | None = None, seconds: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.steps, self.seconds, self.clock = steps, seconds, clock

    def __enter__(self) -> None:
        self.outer = getattr(_state, "budget", None)
        if self.outer is None:
            steps, seconds = _limits()
            steps = self.steps if self.steps is not None else steps
            seconds = self.seconds if self.seconds is not None else seconds
            _state.budget = _Budget(steps, self.clock() + seconds, self.clock)

    def __exit__(self, *exc: object) -> None:
        if self.outer is None:
            _state.budget = None


def run_eval(expression: str, context: dict[str, Any], external_context: dict[str, Any] | None = None,
             run: _Run | None = None) -> Any:
    """Evaluate ``expression`` here, in this process, under the restricted policy and guards.

    Only the guards bound it (loop steps, ``range``, ``*``/``**``/``<<`` sizes): a single C-level
    call is not interrupted. The API process uses it only for :func:`provably_cheap` sources;
    everything else goes through :mod:`engine.evaluator`, whose processes call this.
    """
    code = _compile(expression.strip(), "eval")
    scope = {**HELPERS, **context, **(external_context or {}), **_GUARDS}
    with run or _Run():
        return eval(code, scope)  # noqa: S307  (restricted bytecode, guarded globals)


def run_exec(script: str, context: dict[str, Any], external_context: dict[str, Any] | None = None,
             run: _Run | None = None) -> None:
    """Execute ``script`` here against ``context``, updating it in place (deletions included).

    What the script leaves behind becomes task data, except names starting with ``_``,
    modules, functions and classes, and helpers or external values left unchanged.
    """
    code = _compile(script, "exec")
    external = external_context or {}
    scope = {**HELPERS, **context, **external, **_GUARDS}
    with run or _Run():
        exec(code, scope)  # noqa: S102  (restricted bytecode, guarded globals)
    for key in list(context):
        if key not in scope:
            del context[key]
    for key, value in scope.items():
        if key in _GUARDS or key.startswith("_") or isinstance(value, _NOT_DATA):
            continue
        if (key in external and external[key] is value) or (key in HELPERS and HELPERS[key] is value):
            continue
        context[key] = value


# ---------------------------------------------------------------- provably cheap sources
#
# A source made only of these nodes runs in the API process: no loop, no call, no
# arithmetic that can grow a value, no container built from data. Each node costs at most
# time linear in the size of the values it touches (a comparison of two stored values, a
# truth test, a dict lookup), and those values are task data whose size is bounded where
# it is stored. Anything else (a call, ``*``, a comprehension, a loop, an f-string, ...)
# goes to an evaluator process.

_CHEAP_EXPR = (ast.Expression, ast.Name, ast.Load, ast.Compare, ast.BoolOp, ast.And, ast.Or,
               ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.Is, ast.IsNot, ast.In, ast.NotIn,
               ast.UnaryOp, ast.Not, ast.USub, ast.UAdd, ast.Attribute, ast.Subscript, ast.Constant, ast.Tuple)
_CHEAP_CONSTANT = (int, float, bool, str, type(None))
_CHEAP_STR = 10_000
# At most this many comparisons (each linear in the stored values it compares) and
# statements per source: the bound on the whole source stays a small multiple of one pass
# over the task data.
_CHEAP_COMPARISONS = 8
_CHEAP_STATEMENTS = 16


def _cheap_expression(node: ast.AST) -> bool:
    for child in ast.walk(node):
        if not isinstance(child, _CHEAP_EXPR):
            return False
        if isinstance(child, ast.Constant):
            value = child.value
            if not isinstance(value, _CHEAP_CONSTANT) or (isinstance(value, str) and len(value) > _CHEAP_STR):
                return False
        if isinstance(child, ast.Tuple) and not all(isinstance(e, ast.Constant) for e in child.elts):
            return False  # a tuple of constants, never one of (shared) data values
        if isinstance(child, ast.Subscript) and not isinstance(child.slice, (ast.Constant, ast.Name)):
            return False  # no slices: no copies
    return True


def _small_number(node: ast.AST) -> bool:
    return (isinstance(node, ast.Constant) and isinstance(node.value, (int, float))
            and not isinstance(node.value, bool) and abs(node.value) < 2**63)


@lru_cache(maxsize=4096)
def provably_cheap(source: str, mode: str) -> bool:
    """Can ``source`` run in the API process without a CPU or memory risk?

    Expressions: names, constants, comparisons, ``and``/``or``/``not``, attribute and
    single-key subscript reads (``amount > 1000 and region == 'EU'``, ``approved``).
    Scripts: only assignments ``name = <such an expression>`` and ``name = <number> <op>
    <number>`` / ``name += <number>`` with ``+ - *`` on number literals below 2**63
    (``count += 1``). Whatever else, including anything that does not compile, is not.
    """
    try:
        tree = ast.parse(source.strip() if mode == "eval" else source, mode=mode)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return False
    comparisons = sum(len(n.ops) for n in ast.walk(tree) if isinstance(n, ast.Compare))
    if comparisons > _CHEAP_COMPARISONS:
        return False
    if mode == "eval":
        return _cheap_expression(tree)
    if not isinstance(tree, ast.Module) or not tree.body or len(tree.body) > _CHEAP_STATEMENTS:
        return False
    for stmt in tree.body:
        if isinstance(stmt, ast.Assign) and all(isinstance(t, ast.Name) for t in stmt.targets):
            value = stmt.value
            if (isinstance(value, ast.BinOp) and isinstance(value.op, (ast.Add, ast.Sub, ast.Mult))
                    and _small_number(value.left) and _small_number(value.right)):
                continue
            if _cheap_expression(ast.Expression(value)):
                continue
        if (isinstance(stmt, ast.AugAssign) and isinstance(stmt.target, ast.Name)
                and isinstance(stmt.op, (ast.Add, ast.Sub)) and _small_number(stmt.value)):
            continue  # a number grows by a bounded amount; str/list + number is a TypeError
        return False
    return True


class RestrictedEnvironment(BasePythonScriptEngineEnvironment):
    """SpiffWorkflow script environment: restricted compile, run within CPU and memory budgets.

    Sources :func:`provably_cheap` accepts run here; every other runs in a pool of evaluator
    processes with resource limits and a kill (:mod:`engine.evaluator`), so a C-level
    operation that ignores every guard cannot hold this process's GIL or memory.
    """

    def __init__(self) -> None:
        super().__init__({})

    def evaluate(self, expression: str, context: dict[str, Any], external_context: dict[str, Any] | None = None) -> Any:
        if provably_cheap(expression, "eval"):
            return run_eval(expression, context, external_context)
        from engine import evaluator

        return evaluator.evaluate(expression, context, external_context)

    def execute(self, script: str, context: dict[str, Any], external_context: dict[str, Any] | None = None) -> bool:
        if provably_cheap(script, "exec"):
            run_exec(script, context, external_context)
            return True
        from engine import evaluator

        evaluator.execute(script, context, external_context)
        return True

    def call_service(self, context: dict[str, Any], **kwargs: Any) -> Any:
        raise NotImplementedError("service tasks have no connector in sopflow")


class InProcessEnvironment(RestrictedEnvironment):
    """The restricted environment without the evaluator processes (guards only; for comparison)."""

    def evaluate(self, expression: str, context: dict[str, Any], external_context: dict[str, Any] | None = None) -> Any:
        return run_eval(expression, context, external_context)

    def execute(self, script: str, context: dict[str, Any], external_context: dict[str, Any] | None = None) -> bool:
        run_exec(script, context, external_context)
        return True


class SandboxedScriptEngine(PythonScriptEngine):
    """SpiffWorkflow's engine with the restricted environment; compile errors carry their line."""

    def __init__(self) -> None:
        super().__init__(environment=RestrictedEnvironment())

    def validate(self, expression: str) -> None:
        check(expression, "eval")


_ENGINE = SandboxedScriptEngine()


def script_engine() -> SandboxedScriptEngine:
    return _ENGINE
