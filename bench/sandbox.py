"""Sandbox benchmark: what bounding scripts, expressions and templates costs. Prints figures,
asserts nothing. Run with `.venv/bin/python bench/sandbox.py [--evaluations N] [--instances N]`.

(1) Per evaluation, the median over N calls of the same source (task data of ~20 values):
    - old path: RestrictedPython in the API process, guards only (what sopflow did before);
    - new path as shipped: provably cheap sources still in-process, the rest in an evaluator
      process (pickle over a pipe, resource limits, kill on timeout);
    - out-of-process forced, to show the IPC cost the in-process shortcut saves.
(2) Straight-through instances (start -> 5 script tasks -> end, persisted on SQLite through the
    unit of work, as bench/engine.py's "5 script tasks"), per instance, for scripts the shortcut
    covers (``x0 = 0 * 2``) and scripts it does not (``x0 = sum([0, 2])``), with every source
    in-process (old), as shipped, and with every source out of process.
"""
from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

# bench/ itself must not be on the path: bench/http.py would shadow the standard library's http
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine import evaluator, sandbox, templates  # noqa: E402
from engine.commands import Actor, deploy, start_instance  # noqa: E402
from engine.loading import UploadedFile  # noqa: E402
from tests.bpmnkit import Bpmn  # noqa: E402

ACTOR = Actor("bench", groups=frozenset({"staff"}), roles=frozenset({"admin"}))
DATA = {f"v{i}": i for i in range(10)} | {"amount": 1500, "region": "EU", "items": list(range(20)),
                                          "who": "Ann", "note": "x" * 200, "order": {"total": 12, "rush": False}}
ORIGINAL = sandbox.provably_cheap


@contextlib.contextmanager
def path(name: str) -> Iterator[None]:
    """``old``: every source in-process; ``shipped``: as sopflow runs; ``pool``: every source out of process."""
    sandbox.provably_cheap = {"old": lambda s, m: True, "pool": lambda s, m: False}.get(name, ORIGINAL)
    try:
        yield
    finally:
        sandbox.provably_cheap = ORIGINAL


def median_us(fn: Callable[[], object], n: int) -> float:
    for _ in range(min(n, 50)):
        fn()
    timings = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        timings.append(time.perf_counter() - t0)
    return statistics.median(timings) * 1e6


def per_evaluation(n: int) -> None:
    env = sandbox.RestrictedEnvironment()
    cases: list[tuple[str, Callable[[], object]]] = [
        ("condition  amount > 1000 and region == 'EU'",
         lambda: env.evaluate("amount > 1000 and region == 'EU'", DATA)),
        ("expression sum([i for i in items]) > 10",
         lambda: env.evaluate("sum([i for i in items]) > 10", DATA)),
        ("script     count += 1", lambda: env.execute("count += 1", {**DATA, "count": 1})),
        ("script     total = sum(items) * 2; 2 more lines",
         lambda: env.execute("total = sum(items) * 2\nnames = [str(i) for i in items]\nok = total > 3",
                             dict(DATA))),
    ]
    print(f"(1) per evaluation, median of {n} (microseconds)")
    print(f"{'source':<52}{'old (in-process)':>18}{'new (shipped)':>15}{'out-of-process':>16}")
    for label, fn in cases:
        figures = []
        for name in ("old", "shipped", "pool"):
            with path(name):
                figures.append(median_us(fn, n))
        print(f"{label:<52}{figures[0]:>15.1f} us{figures[1]:>12.1f} us{figures[2]:>13.1f} us")
    simple, looped = "Check {{ who }}'s {{ order['total'] }} EUR.", "{% for i in items %}[{{ i }}]{% endfor %}"
    old_env = templates.ImmutableSandboxedEnvironment(autoescape=False)
    for label, text in (("SOP text   {{ who }} ... {{ order['total'] }}", simple), ("SOP text   {% for %} loop", looped)):
        old = median_us(lambda t=text: old_env.from_string(t).render(**DATA), n)
        new = median_us(lambda t=text: templates.render(t, DATA), n)
        pool = median_us(lambda t=text: evaluator.render(t, DATA), n)
        print(f"{label:<52}{old:>15.1f} us{new:>12.1f} us{pool:>13.1f} us")


def straight(scripts: list[str], key: str) -> bytes:
    b = Bpmn(key).start()
    for i, code in enumerate(scripts):
        b.script(f"s{i}", code)
    return b.end().chain("start", *[f"s{i}" for i in range(len(scripts))], "end").xml()


def per_instance(instances: int, rounds: int) -> None:
    from engine import migrate
    from engine.store.db import Database

    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/bench.db"
        migrate.upgrade(url)
        db = Database(url)
        processes = {
            "x0 = 0 * 2 (in-process shortcut)": ("cheap", [f"x{i} = {i} * 2" for i in range(5)]),
            "x0 = sum([0, 2]) (evaluator)": ("called", [f"x{i} = sum([{i}, 2])" for i in range(5)]),
        }
        for key, scripts in processes.values():
            db.command(lambda s, k=key, sc=scripts: deploy(
                s, files=[UploadedFile(f"{k}.bpmn", straight(sc, k))], actor=ACTOR))

        def run(key: str) -> float:
            t0 = time.perf_counter()
            for _ in range(instances):
                db.command(lambda s: start_instance(s, key=key, actor=ACTOR))
            return (time.perf_counter() - t0) / instances * 1e3

        print(f"\n(2) straight-through, 5 script tasks, persisted on SQLite: ms per instance, median of {rounds} "
              f"interleaved rounds of {instances}")
        print(f"{'scripts':<40}{'old (in-process)':>18}{'new (shipped)':>15}{'out-of-process':>16}")
        for label, (key, _) in processes.items():
            run(key)  # warm-up
            results: dict[str, list[float]] = {"old": [], "shipped": [], "pool": []}
            for _ in range(rounds):
                for name in results:
                    with path(name):
                        results[name].append(run(key))
            old, new, pool = (statistics.median(results[k]) for k in ("old", "shipped", "pool"))
            print(f"{label:<40}{old:>15.2f} ms{new:>12.2f} ms{pool:>13.2f} ms")
        db.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--evaluations", type=int, default=2000)
    parser.add_argument("--instances", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    try:
        print(f"evaluator pool: {evaluator.pool().size} processes; budgets {evaluator.limits()}\n")
        per_evaluation(args.evaluations)
        per_instance(args.instances, args.rounds)
    finally:
        evaluator.shutdown()


if __name__ == "__main__":
    main()
