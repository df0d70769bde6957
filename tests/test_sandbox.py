"""The script sandbox: each forbidden operation is refused, ordinary scripts still run."""
from __future__ import annotations

from datetime import date
from decimal import Decimal

import pytest

from engine.sandbox import RestrictedEnvironment, ScriptBudgetExceeded, ScriptRefused, check

ENV = RestrictedEnvironment()

FORBIDDEN = {
    "import os": ImportError,
    "import subprocess": ImportError,
    "import socket": ImportError,
    "from os import system": ImportError,
    "import os.path": ImportError,
    "open('/etc/passwd').read()": NameError,
    "__import__('os')": ScriptRefused,
    "().__class__.__base__.__subclasses__()": ScriptRefused,
    "x = (1).__class__": ScriptRefused,
    "getattr(1, '__class__')": NameError,
    "eval('1+1')": ScriptRefused,
    "exec('x = 1')": ScriptRefused,
    "compile('1', 'x', 'eval')": NameError,
    "globals()['__builtins__']": NameError,
    "import json\nx = json.codecs.open('/etc/passwd').read()": AttributeError,
    "import datetime\nx = datetime.sys.modules": AttributeError,
    "'{0.__class__}'.format(1)": NotImplementedError,
}


@pytest.mark.parametrize("source", list(FORBIDDEN), ids=list(FORBIDDEN))
def test_forbidden_operations_are_refused(source):
    with pytest.raises((FORBIDDEN[source], ScriptRefused)):
        ENV.execute(source, {})


def test_compile_time_refusal_carries_the_line():
    with pytest.raises(ScriptRefused) as err:
        check("a = 1\nb = 2\nc = a.__dict__\n")
    assert err.value.line == 3


def test_syntax_error_carries_the_line():
    with pytest.raises(ScriptRefused) as err:
        check("a = 1\nif a\n  b = 2\n")
    assert err.value.line == 2


@pytest.mark.parametrize("source", [
    "while True:\n    pass",
    "x = 0\nwhile x >= 0:\n    x += 1",
    "for i in range(10):\n    while True:\n        pass",
    "y = [i for i in range(999999) for j in range(999999)]",
])
def test_endless_loops_hit_the_step_budget(source):
    with pytest.raises(ScriptBudgetExceeded):
        ENV.execute(source, {})


@pytest.mark.parametrize("source", ["x = 'a' * 10**9", "x = [0] * 10**8", "x = 2 ** 10**8", "x = 1 << 10**9",
                                    "x = sum(range(10**9))"])
def test_giant_allocations_are_refused(source):
    with pytest.raises(ValueError):
        ENV.execute(source, {})


def test_ordinary_scripts_run_and_keep_only_data():
    ctx = {"amount": Decimal("12.50"), "items": [1, 2, 3]}
    ENV.execute(
        "import math\nimport datetime\nfrom decimal import Decimal\n"
        "total = sum(items) * 2\nroot = math.sqrt(16)\nday = datetime.date(2026, 1, 2)\n"
        "net = amount * Decimal('2')\nnames = {str(i): i for i in items}\n"
        "def helper(x):\n    return x + 1\nbumped = helper(1)\n",
        ctx,
    )
    assert ctx["total"] == 12 and ctx["root"] == 4.0 and ctx["day"] == date(2026, 1, 2)
    assert ctx["net"] == Decimal("25.00") and ctx["names"] == {"1": 1, "2": 2, "3": 3} and ctx["bumped"] == 2
    assert "math" not in ctx and "helper" not in ctx and "datetime" not in ctx


def test_deleting_a_variable_removes_it_from_task_data():
    ctx = {"a": 1, "b": 2}
    ENV.execute("del a", ctx)
    assert ctx == {"b": 2}


def test_expressions_evaluate_against_task_data():
    assert ENV.evaluate("amount > 1000 and region == 'EU'", {"amount": 2000, "region": "EU"}) is True
    with pytest.raises(ScriptRefused):
        ENV.evaluate("__import__('os').system('id')", {})
