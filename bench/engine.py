"""Engine benchmark: prints figures, asserts nothing. Run with `make bench` or
`.venv/bin/python bench/engine.py [--instances N] [--rounds R]`.

Figures, all measured in this one run on the same diagrams:
  (1) plain SpiffWorkflow, in memory (default engine, do_engine_steps, no storage);
  (2) the floor: the same number of bare durable SQLite commits, each writing as many
      bytes as sopflow's commit for that step (WAL, synchronous=FULL, like sopflow);
  (3) sopflow, persisted on SQLite through its unit of work (one transaction per command).
Target: (3) <= 2 x ((1) + (2)) per instance.
And, to show what the chosen stack costs before sopflow adds anything:
  (4) the stack's floor: (1) plus SpiffWorkflow's serializer saving the state after every
      command (no loads, as if instances stayed in memory), plus the same commits made
      through a SQLAlchemy session (as every sopflow command is). No audit, no
      projections, no checks: what any implementation on this stack pays at least.
Then the latency of one complete-task command after 10, 100 and 1000 loop iterations
(target: flat, within 1.5x), next to plain SpiffWorkflow loading, stepping and saving
the same instance without pruning.
"""
from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from SpiffWorkflow.bpmn import BpmnWorkflow  # noqa: E402
from SpiffWorkflow.bpmn.serializer import BpmnWorkflowSerializer  # noqa: E402
from SpiffWorkflow.spiff.parser.process import SpiffBpmnParser  # noqa: E402
from SpiffWorkflow.spiff.serializer.config import SPIFF_CONFIG  # noqa: E402
from SpiffWorkflow.util.task import TaskState  # noqa: E402

from engine import migrate  # noqa: E402
from engine.loading import UploadedFile  # noqa: E402
from engine.runtime import Actor, complete_task, deploy, start_instance  # noqa: E402
from engine.store.db import Database  # noqa: E402
from tests.bpmnkit import approval_chain, straight_scripts, user_loop  # noqa: E402

ACTOR = Actor("bench", groups=frozenset({"staff"}), roles=frozenset({"admin"}))


def plain_spec(xml: bytes, pid: str):
    parser = SpiffBpmnParser()
    parser.add_bpmn_str(xml, filename=f"{pid}.bpmn")
    return parser.get_spec(pid), parser.get_subprocess_specs(pid)


def plain_run(xml: bytes, pid: str, n: int) -> float:
    spec, subs = plain_spec(xml, pid)
    t0 = time.perf_counter()
    for _ in range(n):
        wf = BpmnWorkflow(spec, subs)
        wf.do_engine_steps()
        while not wf.is_completed():
            for task in wf.get_tasks(state=TaskState.READY, manual=True):
                task.run()
            wf.do_engine_steps()
    return (time.perf_counter() - t0) / n


def bare_commits(directory: str, sizes: list[int], n: int) -> float:
    path = os.path.join(directory, "bare.db")
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("DROP TABLE IF EXISTS t")
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, body BLOB)")
    payloads = [os.urandom(s) for s in sizes]
    t0 = time.perf_counter()
    for i in range(n):
        for j, payload in enumerate(payloads):
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT OR REPLACE INTO t (id, body) VALUES (?, ?)", (i * 10 + j, payload))
            conn.execute("COMMIT")
    conn.close()
    return (time.perf_counter() - t0) / n


def session_commits(directory: str, sizes: list[int], n: int) -> float:
    """The same commits as :func:`bare_commits`, each through a SQLAlchemy session (``Database.command``)."""
    from sqlalchemy import text

    db = Database(f"sqlite:///{os.path.join(directory, 'session.db')}")
    db.command(lambda s: s.execute(text("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, body BLOB)")))
    statement = text("INSERT OR REPLACE INTO t (id, body) VALUES (:id, :body)")
    payloads = [os.urandom(s) for s in sizes]
    t0 = time.perf_counter()
    for i in range(n):
        for j, payload in enumerate(payloads):
            db.command(lambda s, k=i * 10 + j, b=payload: s.connection().execute(statement, {"id": k, "body": b}))
    elapsed = (time.perf_counter() - t0) / n
    db.dispose()
    return elapsed


def saved_run(xml: bytes, pid: str, n: int) -> float:
    """(1), saving the state with SpiffWorkflow's serializer after every command, as a store must.

    No loads: as if every instance stayed in memory between commands (a perfect cache).
    """
    from engine.serialization import Specs, dump_state

    spec, subs = plain_spec(xml, pid)
    specs = Specs("spiff", spec, subs)
    t0 = time.perf_counter()
    for _ in range(n):
        wf = BpmnWorkflow(spec, subs)  # SpiffWorkflow's default script engine, as in (1)
        wf.do_engine_steps()
        dump_state(specs, wf)
        while not wf.is_completed():
            for task in wf.get_tasks(state=TaskState.READY, manual=True)[:1]:
                task.run()
            wf.do_engine_steps()
            dump_state(specs, wf)
    return (time.perf_counter() - t0) / n


def fresh_db(directory: str, name: str) -> Database:
    url = f"sqlite:///{os.path.join(directory, name)}"
    migrate.upgrade(url)
    return Database(url)


def commit_sizes(db: Database) -> list[int]:
    """Bytes sopflow writes per commit, from the last instance: state plus audit rows."""
    with db.read() as s:
        from sqlalchemy import func, text  # noqa: F401

        state = s.execute(text("SELECT length(state) FROM process_instances ORDER BY started_at DESC LIMIT 1")).scalar()
        audit = s.execute(text("SELECT sum(length(payload)) + 200 * count(*) FROM audit_events")).scalar()
        instances = s.execute(text("SELECT count(*) FROM process_instances")).scalar()
        tasks = s.execute(text("SELECT count(*) FROM tasks")).scalar()
    return [int(state or 0) + int((audit or 0) / max(instances, 1)) + 300 * int(tasks / max(instances, 1))]


def sopflow_straight(db: Database, n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        db.command(lambda s: start_instance(s, key="straight", actor=ACTOR))
    return (time.perf_counter() - t0) / n


def sopflow_approval(db: Database, n: int) -> float:
    """Start, then complete each next task (commands return the instance with its open tasks)."""
    t0 = time.perf_counter()
    for _ in range(n):
        row = db.command(lambda s: start_instance(s, key="approval", actor=ACTOR))
        while row.open_task_ids:
            row = db.command(lambda s, t=row.open_task_ids[0]: complete_task(s, task_id=t, actor=ACTOR))
        assert row.status == "completed"
    return (time.perf_counter() - t0) / n


def _latency_after(checkpoints: list[int], samples: int, step) -> dict[int, float]:
    """Median time of ``step()`` over the ``samples`` steps after each checkpoint iteration count."""
    results: dict[int, float] = {}
    done = 0
    for point in checkpoints:
        timings = []
        while done < point + samples:
            t0 = time.perf_counter()
            step()
            elapsed = time.perf_counter() - t0
            done += 1
            if done > point:
                timings.append(elapsed)
        results[point] = statistics.median(timings)
    return results


def loop_latency(db: Database, checkpoints: list[int], samples: int) -> dict[int, float]:
    rows = [db.command(lambda s: start_instance(s, key="loop", actor=ACTOR, variables={"limit": 10**9}))]

    def step() -> None:
        rows[0] = db.command(lambda s, t=rows[0].open_task_ids[0]: complete_task(s, task_id=t, actor=ACTOR))

    return _latency_after(checkpoints, samples, step)


def plain_loop_latency(checkpoints: list[int], samples: int) -> dict[int, float]:
    """Plain SpiffWorkflow: load, complete one task, run, save, as a store would (no pruning)."""
    from SpiffWorkflow.bpmn.util import task as bpmn_task_util  # the depth cap stalls at ~500 loops

    bpmn_task_util.BpmnTaskIterator.__init__.__defaults__ = (None, 10**9, True, False, None)
    spec, subs = plain_spec(user_loop().xml(), "loop")
    serializer = BpmnWorkflowSerializer(BpmnWorkflowSerializer.configure(SPIFF_CONFIG))
    wf = BpmnWorkflow(spec, subs)
    wf.get_tasks(state=TaskState.READY)[0].data["limit"] = 10**9
    wf.do_engine_steps()
    states = [serializer.serialize_json(wf)]

    def step() -> None:
        workflow = serializer.deserialize_json(states[0])
        [task] = workflow.get_tasks(state=TaskState.READY, manual=True)
        task.run()
        workflow.do_engine_steps()
        states[0] = serializer.serialize_json(workflow)

    return _latency_after(checkpoints, samples, step)


def median_of(rounds: int, fn, *args) -> float:
    return statistics.median(fn(*args) for _ in range(rounds))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--instances", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--samples", type=int, default=15)
    args = parser.parse_args()
    n = args.instances
    with tempfile.TemporaryDirectory() as tmp:
        db = fresh_db(tmp, "sopflow.db")
        for xml, name in ((straight_scripts(5).xml(), "straight"), (approval_chain(3).xml(), "approval"),
                          (user_loop().xml(), "loop")):
            db.command(lambda s, x=xml, nm=name: deploy(s, files=[UploadedFile(f"{nm}.bpmn", x)], actor=ACTOR))

        print(f"sopflow engine benchmark: {n} instances per figure, median of {args.rounds} rounds")
        print(f"{'process':<28}{'(1) spiff mem':>14}{'(2) bare commits':>18}{'(3) sopflow':>13}"
              f"{'inst/s (3)':>12}{'(3)/((1)+(2))':>15}")
        stacks: list[tuple[str, float, float, float]] = []
        for label, xml, pid, commits, run in (
            ("5 script tasks", straight_scripts(5).xml(), "straight", 1, sopflow_straight),
            ("3 user tasks (approval)", approval_chain(3).xml(), "approval", 4, sopflow_approval),
        ):
            plain = median_of(args.rounds, plain_run, xml, pid, n)
            persisted = median_of(args.rounds, run, db, n)
            sizes = commit_sizes(db) * commits
            floor = median_of(args.rounds, bare_commits, tempfile.mkdtemp(dir=tmp), sizes, n)
            stack = (median_of(args.rounds, saved_run, xml, pid, n)
                     + median_of(args.rounds, session_commits, tempfile.mkdtemp(dir=tmp), sizes, n))
            ratio = persisted / (plain + floor)
            print(f"{label:<28}{plain * 1e3:>11.2f} ms{floor * 1e3:>15.2f} ms{persisted * 1e3:>10.2f} ms"
                  f"{1 / persisted:>12.0f}{ratio:>15.2f}")
            print(f"{'':<28}{1 / plain:>9.0f} inst/s{'':>4}{commits} commit(s) of ~{sizes[0]} B each")
            stacks.append((label, stack, stack / (plain + floor), persisted / stack))
        print(f"\n{'':<28}{'(4) stack floor':>16}{'(4)/((1)+(2))':>15}{'(3)/(4)':>10}")
        for label, stack, floor_ratio, ours_ratio in stacks:
            print(f"{label:<28}{stack * 1e3:>13.2f} ms{floor_ratio:>15.2f}{ours_ratio:>10.2f}")

        checkpoints = [10, 100, 1000]
        ours = loop_latency(db, checkpoints, args.samples)
        theirs = plain_loop_latency(checkpoints, args.samples)
        print("\ncomplete-task latency on a looping instance (median of "
              f"{args.samples} commands after N iterations)")
        print(f"{'iterations':>10}{'sopflow (SQLite)':>20}{'plain spiff load+step+save':>30}")
        for point in checkpoints:
            print(f"{point:>10}{ours[point] * 1e3:>17.2f} ms{theirs[point] * 1e3:>27.2f} ms")
        print(f"{'1000/10':>10}{ours[1000] / ours[10]:>19.2f}x{theirs[1000] / theirs[10]:>29.2f}x")
        db.dispose()


if __name__ == "__main__":
    main()
