"""Timer benchmark: N timers due within a window, fired by the worker; prints figures, asserts nothing.

    .venv/bin/python bench/timers.py                              # 10,000 timers in 10 s, SQLite, embedded worker
    .venv/bin/python bench/timers.py --workers 1 2 --rounds 2     # SQLite: 1 vs 2 timer processes, interleaved
    .venv/bin/python bench/timers.py --postgres --workers 1 2 4   # a throwaway PostgreSQL cluster, worker processes
    .venv/bin/python bench/timers.py --database-url postgresql+psycopg://... --workers 2   # an EMPTY database
    .venv/bin/python bench/timers.py --compare /path/to/other/checkout --rounds 3     # before/after, SQLite

``--compare`` (SQLite, embedded worker) seeds ONE database, then fires copies of it
alternately with the other checkout's engine (``--engine-root``, e.g. a ``git worktree`` of
main) and with this one, ``--rounds`` times, each firing in a fresh process, and prints
each run and the medians: both sides fire the same timers on the same machine state.

Seeding: ``--timers`` instances of a process whose intermediate timer has a ``timeDate``
from a start variable are started through ``start_instance`` (real state, real jobs), their
due instants spread evenly over ``--window`` seconds starting one hour ahead. Then the
clock is moved with the admin clock's shared offset (``runtime_settings``, exactly what
``POST /api/admin/clock`` writes) so the window starts one second from now, and the workers
run in real time: on SQLite one embedded worker thread (``run_forever``, as ``sopflow
serve`` runs it); on PostgreSQL ``--workers`` separate ``sopflow worker`` processes
(``SOPFLOW_CLOCK_CONTROL=1``: they read the same offset). Each run waits until every timer
fired (or ``--timeout``).

On SQLite, ``--workers N ...`` runs the embedded configuration with N timer processes, as
``sopflow serve --timer-processes N`` does (the default on a 2-core machine is 2): the worker
thread of this process plus N - 1 ``sopflow worker`` children (``api.timer_processes``). ONE
database is seeded and copied for each run; the runs go round-robin over the Ns, ``--rounds``
times, each firing in a fresh process, so the Ns are compared under the same machine load.
Each run also prints ``cpu_ms_per_firing``: the CPU time of the firing process and its timer
children from the clock move to the last firing (the children's start-up excluded), per timer.

Figures, from the ``timer.fired`` audit events: lateness = the event's time minus the
timer's due time (p50, p99, max), throughput = timers / (last firing - first due), and
duplicates (a timer fired twice would show as two events; the instance revision check
should make that impossible).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path

# bench/ itself must not be on the path: bench/http.py would shadow the standard library's http
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
if "--engine-root" in sys.argv:  # fire with another checkout's engine (see --compare)
    sys.path.insert(0, str(Path(sys.argv[sys.argv.index("--engine-root") + 1]).resolve()))

from sqlalchemy import delete, func, select, text  # noqa: E402

from bench.http import cpu_seconds  # noqa: E402
from engine import clock, migrate  # noqa: E402
from engine.commands import SYSTEM, deploy, start_instance  # noqa: E402
from engine.commands.clock_control import OFFSET_KEY, install  # noqa: E402
from engine.config import Settings  # noqa: E402
from engine.loading import UploadedFile  # noqa: E402
from engine.store.db import Database  # noqa: E402
from engine.store.models import AuditEventRow, JobRow, RuntimeSettingRow  # noqa: E402
from engine.worker import run_forever, wake  # noqa: E402

SPIFF = "http://spiffworkflow.org/bpmn/schema/1.0/core"
BPMN = "http://www.omg.org/spec/BPMN/20100524/MODEL"
PROCESS = f"""<?xml version="1.0" encoding="UTF-8"?>
<bpmn:definitions xmlns:bpmn="{BPMN}" xmlns:spiffworkflow="{SPIFF}" id="d" targetNamespace="http://sopflow/bench">
<bpmn:process id="tick" isExecutable="true">
  <bpmn:startEvent id="start"/>
  <bpmn:intermediateCatchEvent id="wait"><bpmn:timerEventDefinition><bpmn:timeDate>due</bpmn:timeDate>
  </bpmn:timerEventDefinition></bpmn:intermediateCatchEvent>
  <bpmn:endEvent id="end"/>
  <bpmn:sequenceFlow id="f1" sourceRef="start" targetRef="wait"/>
  <bpmn:sequenceFlow id="f2" sourceRef="wait" targetRef="end"/>
</bpmn:process></bpmn:definitions>""".encode()


def seed(db: Database, n: int, window: float) -> datetime:
    """Start ``n`` instances whose timers fall due over ``window`` seconds from one hour ahead; returns the start."""
    start = (clock.now() + timedelta(hours=1)).replace(microsecond=0)
    db.command(lambda s: deploy(s, files=[UploadedFile("tick.bpmn", PROCESS)], actor=SYSTEM))
    began = time.perf_counter()
    for i in range(n):
        due = (start + timedelta(seconds=window * i / n)).isoformat()
        db.command(lambda s, d=due: start_instance(s, key="tick", actor=SYSTEM, variables={"due": d}))
        if (i + 1) % 2000 == 0:
            print(f"  seeded {i + 1}/{n} ({(i + 1) / (time.perf_counter() - began):.0f} starts/s)", flush=True)
    return start


def move_clock_to(db: Database, target: datetime) -> None:
    offset = (target - clock.SystemClock().now()).total_seconds()
    with db.transaction() as s:
        s.execute(delete(RuntimeSettingRow).where(RuntimeSettingRow.key == OFFSET_KEY))
        s.add(RuntimeSettingRow(key=OFFSET_KEY, value=offset, updated_at=target, updated_by="bench"))


def figures(db: Database, n: int, window_start: datetime) -> dict[str, object]:
    with db.read() as s:
        rows = s.execute(select(AuditEventRow.occurred_at, AuditEventRow.payload, AuditEventRow.instance_id)
                         .where(AuditEventRow.action == "timer.fired")).all()
    late = []
    per_instance: dict[str | None, int] = {}
    last = window_start
    for occurred, payload, instance_id in rows:
        due = datetime.fromisoformat(json.loads(payload)["due_at"])
        due = due if due.tzinfo else due.replace(tzinfo=UTC)
        late.append((occurred - due).total_seconds())
        per_instance[instance_id] = per_instance.get(instance_id, 0) + 1
        last = max(last, occurred)
    late.sort()
    q = statistics.quantiles(late, n=100, method="inclusive") if len(late) > 1 else late * 99
    span = (last - window_start).total_seconds()
    return {"fired": len(rows), "expected": n, "duplicates": sum(c - 1 for c in per_instance.values() if c > 1),
            "lateness_p50_s": round(q[49], 3), "lateness_p99_s": round(q[98], 3), "lateness_max_s": round(late[-1], 3),
            "timers_per_s": round(len(rows) / span, 1) if span > 0 else None}


def wait_for(db: Database, n: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with db.read() as s:
            left = s.scalar(select(func.count()).select_from(JobRow)) or 0
        if left == 0:
            return
        time.sleep(0.25)
    print(f"  timed out with {left} of {n} timers left", flush=True)


def run_embedded(url: str, n: int, window: float, timeout: float) -> dict[str, object]:
    db = Database(url)
    start = seed(db, n, window)
    return fire_embedded(db, n, start, timeout)


def _settle(pids: list[int], limit: float = 60.0) -> None:
    """Wait until the child processes have started (imported) and sleep: their CPU time stops growing."""
    deadline = time.monotonic() + limit
    last = -1.0
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = cpu_seconds(pids)
        if now == last:
            return
        last = now


def fire_embedded(db: Database, n: int, start: datetime, timeout: float, processes: int = 1,
                  lead: float = 1.0) -> dict[str, object]:
    """Run the embedded worker thread (and ``processes`` - 1 ``sopflow worker`` children) from ``lead``
    seconds before ``start`` until ``n`` timers fired; the figures."""
    install(db)
    children = None
    if processes > 1:  # imported only then: a --compare side may run an older engine without it
        from api.timer_processes import TimerProcesses

        children = TimerProcesses(processes - 1, db.url, env={"SOPFLOW_CLOCK_CONTROL": "1"})
        children.start()
        _settle(children.pids())
    try:
        pids = children.pids() if children is not None else []
        cpu_before = time.process_time() + cpu_seconds(pids)
        move_clock_to(db, start - timedelta(seconds=lead))
        stop = threading.Event()
        thread = threading.Thread(target=run_forever, kwargs={"db": db, "stop": stop, "settings": Settings()},
                                  daemon=True)
        thread.start()
        wake()
        wait_for(db, n, timeout)
        cpu = time.process_time() + cpu_seconds(pids) - cpu_before
        stop.set()
        wake()
        thread.join(timeout=10)
    finally:
        if children is not None:
            children.stop()
    result = figures(db, n, start)
    result["cpu_ms_per_firing"] = round(1000 * cpu / max(1, int(result["fired"])), 3)  # type: ignore[call-overload]
    return result


def fire_seeded(url: str, timeout: float, processes: int = 1, lead: float = 1.0) -> dict[str, object]:
    """Fire a database seeded by ``--save-seed`` with the embedded worker (the window starts at its first due job)."""
    db = Database(url)
    with db.read() as s:
        start = s.scalar(select(func.min(JobRow.due_at)))
        n = s.scalar(select(func.count()).select_from(JobRow)) or 0
    assert start is not None, "the seeded database has no timers"
    return fire_embedded(db, n, start, timeout, processes, lead)


def _load() -> str:
    return Path("/proc/loadavg").read_text().split()[0] if Path("/proc/loadavg").exists() else "?"


def _seeded(n: int, window: float) -> Path:
    folder = Path(tempfile.mkdtemp(prefix="sopflow-bench-"))
    seeded = folder / "seeded.db"
    migrate.upgrade(f"sqlite:///{seeded}")
    db = Database(f"sqlite:///{seeded}")
    seed(db, n, window)
    db.dispose()
    return seeded


TARGET_PER_S, TARGET_P99_S = 500, 1.0  # issues 9 and 11: >= 500 timers/s, lateness p99 <= 1 s


def against_targets(figures_: Mapping[str, object]) -> str:
    """The figures' verdicts against the targets (throughput and lateness p99), as one line."""
    rate, p99 = figures_.get("timers_per_s"), figures_.get("lateness_p99_s")
    rate_ok = isinstance(rate, (int, float)) and rate >= TARGET_PER_S
    p99_ok = isinstance(p99, (int, float)) and p99 <= TARGET_P99_S
    return (f"against the targets: {rate} timers/s (target >= {TARGET_PER_S}) {'OK' if rate_ok else 'MISSED'}; "
            f"lateness p99 {p99} s (target <= {TARGET_P99_S:g}) {'OK' if p99_ok else 'MISSED'}")


def _medians(runs: list[dict[str, object]]) -> dict[str, float]:
    keys = ("timers_per_s", "lateness_p50_s", "lateness_p99_s", "lateness_max_s", "cpu_ms_per_firing")
    return {k: round(statistics.median(float(r[k]) for r in runs if r.get(k) is not None), 3)
            for k in keys if any(r.get(k) is not None for r in runs)}


def timer_processes(counts: list[int], n: int, window: float, rounds: int, timeout: float) -> None:
    """SQLite, embedded: seed once, fire copies with each number of timer processes, round-robin; runs and medians."""
    import shutil

    seeded = _seeded(n, window)
    results: dict[int, list[dict[str, object]]] = {c: [] for c in counts}
    for round_ in range(1, rounds + 1):
        for count in counts:
            copy = seeded.parent / f"p{count}-{round_}.db"
            shutil.copyfile(seeded, copy)
            load = _load()
            cmd = [sys.executable, str(Path(__file__).resolve()), "--from-seed", str(copy), "--timeout", str(timeout),
                   "--processes", str(count), "--lead", "2"]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout  # noqa: S603
            figures_ = json.loads(out.strip().splitlines()[-1])
            results[count].append(figures_)
            print(f"round {round_} {count} timer process(es) (load {load}): {json.dumps(figures_)}", flush=True)
    medians = {count: _medians(runs) for count, runs in results.items()}
    for count, runs in results.items():
        print(f"median, {count} timer process(es): {json.dumps(medians[count])}, "
              f"duplicates {sum(int(r['duplicates']) for r in runs)}, "  # type: ignore[call-overload]
              f"fired {[r['fired'] for r in runs]}", flush=True)
        print(f"  {count} timer process(es), medians {against_targets(medians[count])}", flush=True)
    first = counts[0]
    for count in counts[1:]:
        ratios = {k: round(medians[count][k] / medians[first][k], 2) for k in ("timers_per_s", "cpu_ms_per_firing")
                  if medians[first].get(k)}
        print(f"ratio {count} / {first} timer processes (medians): {json.dumps(ratios)}", flush=True)


def compare(other: str, n: int, window: float, rounds: int, timeout: float) -> None:
    """Seed once, then fire copies alternately with ``other``'s engine and this one; print runs and medians."""
    import shutil

    seeded = _seeded(n, window)
    folder = seeded.parent
    results: dict[str, list[dict[str, object]]] = {"other": [], "this": []}
    for round_ in range(1, rounds + 1):
        for side in ("other", "this"):
            copy = folder / f"{side}-{round_}.db"
            shutil.copyfile(seeded, copy)
            cmd = [sys.executable, str(Path(__file__).resolve()), "--from-seed", str(copy), "--timeout", str(timeout)]
            if side == "other":
                cmd += ["--engine-root", other]
            load = _load()
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout  # noqa: S603
            figures_ = json.loads(out.strip().splitlines()[-1])
            results[side].append(figures_)
            print(f"round {round_} {side:5} (load {load}): {json.dumps(figures_)}", flush=True)
    for side, runs in results.items():
        print(f"median {side} ({other if side == 'other' else 'this checkout'}): "
              f"{json.dumps(_medians(runs))}, "
              f"duplicates {sum(int(r['duplicates']) for r in runs)}, "  # type: ignore[call-overload]
              f"fired {[r['fired'] for r in runs]}", flush=True)


def run_processes(url: str, n: int, window: float, workers: int, timeout: float,
                  startup: float = 10.0) -> dict[str, object]:
    db = Database(url)
    start = seed(db, n, window)
    env = {**os.environ, "SOPFLOW_DATABASE_URL": url, "SOPFLOW_CLOCK_CONTROL": "1"}
    root = Path(__file__).resolve().parent.parent
    procs = [subprocess.Popen([sys.executable, "-m", "api.cli", "worker"], cwd=root, env=env,  # noqa: S603
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(workers)]
    try:
        time.sleep(startup)  # let the processes import and go to sleep with nothing due
        move_clock_to(db, start - timedelta(seconds=3))  # seen within the offset cache (0.5 s) + one sleep (1 s)
        wait_for(db, n, timeout)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=10)
    install(db)
    return figures(db, n, start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--timers", type=int, default=10_000)
    parser.add_argument("--window", type=float, default=10.0, help="seconds over which the timers fall due")
    parser.add_argument("--database-url", default="")
    parser.add_argument("--postgres", action="store_true", help="start a throwaway PostgreSQL cluster")
    parser.add_argument("--workers", type=int, nargs="*", default=[1],
                        help="PostgreSQL: sopflow worker processes; SQLite: timer processes of the embedded "
                             "configuration (this process's worker + N-1 sopflow worker children)")
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--compare", metavar="CHECKOUT", help="before/after against another checkout (SQLite)")
    parser.add_argument("--rounds", type=int, default=None,
                        help="rounds of --compare (default 3) or of SQLite --workers (default 1)")
    parser.add_argument("--processes", type=int, default=1, help=argparse.SUPPRESS)  # one run of --workers
    parser.add_argument("--lead", type=float, default=1.0, help=argparse.SUPPRESS)  # clock moved to start - lead
    parser.add_argument("--from-seed", metavar="DB", help=argparse.SUPPRESS)  # one side of --compare
    parser.add_argument("--engine-root", metavar="CHECKOUT", help=argparse.SUPPRESS)  # read before the imports
    args = parser.parse_args()
    if args.from_seed:
        print(json.dumps(fire_seeded(f"sqlite:///{args.from_seed}", args.timeout, args.processes, args.lead)),
              flush=True)
        return
    if args.compare:
        rounds = args.rounds or 3
        print(f"SQLite, embedded worker, {args.timers} timers due within {args.window} s, "
              f"{rounds} rounds: {args.compare} vs this checkout", flush=True)
        compare(args.compare, args.timers, args.window, rounds, args.timeout)
        return
    if not args.database_url and not args.postgres and (args.workers != [1] or args.rounds):
        rounds = args.rounds or 1
        print(f"SQLite, embedded configuration with {' / '.join(map(str, args.workers))} timer process(es), "
              f"{args.timers} timers due within {args.window} s, {rounds} round(s), {os.cpu_count()} cores", flush=True)
        timer_processes(args.workers, args.timers, args.window, rounds, args.timeout)
        return
    if not args.database_url and not args.postgres:
        path = Path(tempfile.mkdtemp(prefix="sopflow-bench-")) / "timers.db"
        url = f"sqlite:///{path}"
        migrate.upgrade(url)
        print(f"SQLite, embedded worker, {args.timers} timers due within {args.window} s", flush=True)
        result = run_embedded(url, args.timers, args.window, args.timeout)
        print(json.dumps(result), flush=True)
        print(against_targets(result), flush=True)
        return
    cluster = None
    if args.postgres:
        from tests.conftest import PgCluster

        cluster = PgCluster()
    try:
        for workers in args.workers:
            if cluster is not None:
                name = f"bench_{workers}_{int(time.time())}"
                cluster.execute(f"CREATE DATABASE {name}")
                url = cluster.url(name)
            else:
                url = args.database_url
            migrate.upgrade(url)
            with Database(url).transaction() as s:
                s.execute(text("SELECT 1"))
            print(f"PostgreSQL, {workers} worker process(es), {args.timers} timers due within {args.window} s",
                  flush=True)
            result = run_processes(url, args.timers, args.window, workers, args.timeout)
            print(json.dumps(result), flush=True)
            print(against_targets(result), flush=True)
    finally:
        if cluster is not None:
            cluster.stop()


if __name__ == "__main__":
    main()
