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
from collections.abc import Callable
from pathlib import Path

# bench/ itself must not be on the path: bench/http.py would shadow the standard library's http
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from SpiffWorkflow.bpmn import BpmnWorkflow  # noqa: E402
from SpiffWorkflow.bpmn.serializer import BpmnWorkflowSerializer  # noqa: E402
from SpiffWorkflow.spiff.parser.process import SpiffBpmnParser  # noqa: E402
from SpiffWorkflow.spiff.serializer.config import SPIFF_CONFIG  # noqa: E402
from SpiffWorkflow.util.task import TaskState  # noqa: E402

from engine import migrate  # noqa: E402
from engine.commands import Actor, complete_task, deploy, start_instance  # noqa: E402
from engine.loading import UploadedFile  # noqa: E402
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


def commit_sizes(db: Database, key: str) -> list[int]:
    """Bytes sopflow writes in each commit of one instance of ``key``: the state it stores,
    plus an even share of the instance's audit rows (payload + ~200 B of columns each) and
    task rows (~300 B each)."""
    from sqlalchemy import text

    states = []
    row = db.command(lambda s: start_instance(s, key=key, actor=ACTOR))
    states.append(len(row.state))
    while row.open_task_ids:
        row = db.command(lambda s, t=row.open_task_ids[0]: complete_task(s, task_id=t, actor=ACTOR))
        states.append(len(row.state))
    with db.read() as s:
        audit = s.execute(text("SELECT sum(length(payload)) + 200 * count(*) FROM audit_events WHERE chain = :id"),
                          {"id": row.id}).scalar()
        tasks = s.execute(text("SELECT count(*) FROM tasks WHERE instance_id = :id"), {"id": row.id}).scalar()
    share = (audit + 300 * tasks) // len(states)
    return [size + share for size in states]


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


def interleaved_rounds(rounds: int, measures: dict[str, Callable[[], float]]) -> list[dict[str, float]]:
    """Each round runs every measure once, back to back, so a round's ratios compare figures
    taken under the same machine load (this VM is noisy); callers take medians over rounds."""
    return [{name: measure() for name, measure in measures.items()} for _ in range(rounds)]


def spread(ratios: list[float]) -> str:
    """The median ratio with its range over the rounds."""
    return f"{statistics.median(ratios):.2f} [{min(ratios):.2f}-{max(ratios):.2f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--instances", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--samples", type=int, default=15)
    args = parser.parse_args()
    n = args.instances
    with tempfile.TemporaryDirectory() as tmp:
        db = fresh_db(tmp, "sopflow.db")
        for xml, name in ((straight_scripts(5).xml(), "straight"), (approval_chain(3).xml(), "approval"),
                          (user_loop().xml(), "loop")):
            db.command(lambda s, x=xml, nm=name: deploy(s, files=[UploadedFile(f"{nm}.bpmn", x)], actor=ACTOR))

        print(f"sopflow engine benchmark: {n} instances per figure; {args.rounds} interleaved rounds, "
              "medians (ratio range over rounds in brackets)")
        print(f"{'process':<26}{'(1) spiff mem':>14}{'(2) bare commits':>17}{'(3) sopflow':>12}"
              f"{'inst/s (3)':>11}{'(3)/((1)+(2))':>22}")
        stacks: list[tuple[str, float, list[float], list[float]]] = []
        for label, xml, pid, run in (
            ("5 script tasks", straight_scripts(5).xml(), "straight", sopflow_straight),
            ("3 user tasks (approval)", approval_chain(3).xml(), "approval", sopflow_approval),
        ):
            run(db, max(n // 10, 10))  # warm-up
            sizes = commit_sizes(db, pid)
            results = interleaved_rounds(args.rounds, {
                "plain": lambda x=xml, p=pid: plain_run(x, p, n),
                "persisted": lambda r=run: r(db, n),
                "floor": lambda z=sizes: bare_commits(tempfile.mkdtemp(dir=tmp), z, n),
                "stack": lambda x=xml, p=pid, z=sizes: (saved_run(x, p, n)
                                                        + session_commits(tempfile.mkdtemp(dir=tmp), z, n)),
            })
            plain, persisted, floor, stack = (statistics.median(r[k] for r in results)
                                              for k in ("plain", "persisted", "floor", "stack"))
            ratios = [r["persisted"] / (r["plain"] + r["floor"]) for r in results]
            print(f"{label:<26}{plain * 1e3:>11.2f} ms{floor * 1e3:>14.2f} ms{persisted * 1e3:>9.2f} ms"
                  f"{1 / persisted:>11.0f}{spread(ratios):>22}")
            print(f"{'':<26}{1 / plain:>9.0f} inst/s{'':>3}{len(sizes)} commit(s) of "
                  f"{', '.join(str(z) for z in sizes)} B")
            stacks.append((label, stack, [r["stack"] / (r["plain"] + r["floor"]) for r in results],
                           [r["persisted"] / r["stack"] for r in results]))
        print(f"\n{'':<26}{'(4) stack floor':>16}{'(4)/((1)+(2))':>22}{'(3)/(4)':>22}")
        for label, stack, floor_ratios, ours_ratios in stacks:
            print(f"{label:<26}{stack * 1e3:>13.2f} ms{spread(floor_ratios):>22}{spread(ours_ratios):>22}")

        checkpoints = [10, 100, 1000]
        # a fresh looping instance per round; medians over rounds (a burst of machine noise
        # during one round's samples would otherwise decide the ratio)
        runs = [loop_latency(db, checkpoints, args.samples) for _ in range(args.rounds)]
        ours = {point: statistics.median(run[point] for run in runs) for point in checkpoints}
        theirs = plain_loop_latency(checkpoints, args.samples)
        print(f"\ncomplete-task latency on a looping instance (median of {args.samples} commands after N "
              f"iterations; sopflow: median over {args.rounds} instances)")
        print(f"{'iterations':>10}{'sopflow (SQLite)':>20}{'plain spiff load+step+save':>30}")
        for point in checkpoints:
            print(f"{point:>10}{ours[point] * 1e3:>17.2f} ms{theirs[point] * 1e3:>27.2f} ms")
        print(f"{'1000/10':>10}{spread([run[1000] / run[10] for run in runs]):>20}"
              f"{theirs[1000] / theirs[10]:>29.2f}x")
        db.dispose()


if __name__ == "__main__":
    main()
