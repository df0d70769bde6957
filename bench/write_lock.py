"""Per-command cost of taking SQLite's write lock lazily: prints figures, asserts nothing.

`.venv/bin/python bench/write_lock.py [--instances N] [--rounds R]`

The same commands (start a 5-script process; start and complete a 3-user-task approval)
through the lazy transaction `Database.command` uses (read and compute, then
`BEGIN IMMEDIATE` at the first write) and through an eager one (`BEGIN IMMEDIATE` first,
as before), rounds interleaved in one process so machine load hits both alike.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from sqlalchemy.orm import Session

# bench/ itself must not be on the path: bench/http.py would shadow the standard library's http
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine import migrate  # noqa: E402
from engine.commands import Actor, complete_task, deploy, start_instance  # noqa: E402
from engine.loading import UploadedFile  # noqa: E402
from engine.store.db import Database  # noqa: E402
from tests.bpmnkit import approval_chain, straight_scripts  # noqa: E402

T = TypeVar("T")
ACTOR = Actor("bench", groups=frozenset({"staff"}), roles=frozenset({"admin"}))


class _Eager(Database):
    def command(self, fn: Callable[[Session], T], *, retries: int | None = None) -> T:
        with self.transaction() as session:  # BEGIN IMMEDIATE before the command reads
            return fn(session)


def _round(db: Database, n: int) -> tuple[float, float]:
    t0 = time.perf_counter()
    for _ in range(n):
        db.command(lambda s: start_instance(s, key="straight", actor=ACTOR))
    t1 = time.perf_counter()
    approvals = max(1, n // 4)
    for _ in range(approvals):
        row = db.command(lambda s: start_instance(s, key="approval", actor=ACTOR))
        while row.open_task_ids:
            row = db.command(lambda s, t=row.open_task_ids[0]: complete_task(s, task_id=t, actor=ACTOR))
    t2 = time.perf_counter()
    return (t1 - t0) / n * 1000, (t2 - t1) / approvals * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--instances", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        url = f"sqlite:///{directory}/bench.db"
        migrate.upgrade(url)
        lazy, eager = Database(url), _Eager(url)
        lazy.command(lambda s: deploy(s, files=[UploadedFile("s.bpmn", straight_scripts().xml())], actor=ACTOR))
        lazy.command(lambda s: deploy(s, files=[UploadedFile("a.bpmn", approval_chain().xml())], actor=ACTOR))
        results: dict[str, list[tuple[float, float]]] = {"lazy": [], "eager": []}
        for r in range(args.rounds):
            for name in (("lazy", "eager") if r % 2 else ("eager", "lazy")):
                results[name].append(_round(lazy if name == "lazy" else eager, args.instances))
        print(f"write-lock benchmark: {args.instances} starts + {max(1, args.instances // 4)} approvals per round, "
              f"{args.rounds} interleaved rounds, medians")
        for name, label in (("eager", "BEGIN IMMEDIATE first (before)"), ("lazy", "lock at first write (now)")):
            straight = statistics.median(x[0] for x in results[name])
            approval = statistics.median(x[1] for x in results[name])
            print(f"  {label:32} start (5 scripts) {straight:6.2f} ms   approval instance (4 commands) "
                  f"{approval:6.2f} ms")
        lazy.dispose()
        eager.dispose()


if __name__ == "__main__":
    main()
