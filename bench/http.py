"""The procurement procedure end to end over HTTP against a live `sopflow serve`: prints figures against targets.

`.venv/bin/python bench/http.py [--workers 1,2] [--clients 1,10,50] [--seconds 10] [--database-url URL]`

For each ``--workers`` value (default: 1 and the number of cores, in the same run, for the
ratio) a fresh SQLite database (or, with ``--database-url`` of a PostgreSQL server, a fresh
database created there for each server and dropped after) is
migrated, the shipped processes deployed and the demo organisation created; then
``sopflow serve --workers W`` is started and driven by closed-loop clients (1, 10, 50), each
running instances of ``processes/procurement_approval.bpmn`` back to back, then by an open
loop that starts instances at a fixed rate of half the best closed-loop rate.

One instance (amount 500, so no finance step) is 6 commands: start (rita), complete
"Submit" (rita), claim and complete "Approve as manager" (max), claim and complete "Place
the order" (paul); plus 2 reads of the instance (``GET /api/process-instances/{id}``) to
learn the next task's id, which the command answers do not carry. All 8 are timed; the
p50/p95/p99 printed are over every request. Server CPU is the utime+stime of the server's
processes (supervisor and workers, from /proc/<pid>/stat) before and after a phase, divided
by the requests of the phase; "CPU per complete" is measured alone: 1 client completing
manager tasks that were prepared (started, submitted, claimed) beforehand.

The clients run on the same machine as the server (Python threads with http.client): on a
2-core machine they take CPU from the server, so the figures are a floor. Asserts nothing.
"""
from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, this file's folder comes first on sys.path and its name would shadow the
# standard library's `http`; drop that folder (nothing else is imported from it).
if sys.path and Path(sys.path[0] or ".").resolve() == Path(__file__).resolve().parent:
    sys.path.pop(0)

import argparse  # noqa: E402
import http.client  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from concurrent.futures import ThreadPoolExecutor  # noqa: E402
from contextlib import contextmanager  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TODAY_INSTANCES_PER_S = 9.5  # issue 11, measured before this work with one server process
TARGET_RATIO = 3.0
TARGET_CPU_MS = 5.0
TARGET_P99_MS = 50.0
TICK = os.sysconf("SC_CLK_TCK")


class Client:
    """One keep-alive HTTP connection; records (latency seconds) of every request."""

    def __init__(self, port: int, tokens: dict[str, str], latencies: list[float]) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        self.tokens = tokens
        self.latencies = latencies

    def call(self, method: str, path: str, user: str, body: dict | None = None) -> dict:
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Authorization": f"Bearer {self.tokens[user]}", "Content-Type": "application/json"}
        began = time.perf_counter()
        try:
            self.conn.request(method, path, body=data, headers=headers)
            response = self.conn.getresponse()
            payload = response.read()
        except (OSError, http.client.HTTPException):
            self.conn.close()  # reconnect once (a worker may have closed an idle keep-alive connection)
            self.conn.request(method, path, body=data, headers=headers)
            response = self.conn.getresponse()
            payload = response.read()
        self.latencies.append(time.perf_counter() - began)
        if response.status >= 300:
            raise RuntimeError(f"{method} {path} as {user}: {response.status} {payload[:300]!r}")
        return json.loads(payload)

    def open_task(self, instance_id: str, element: str) -> str:
        detail = self.call("GET", f"/api/process-instances/{instance_id}", "admin")
        return next(t["id"] for t in detail["open_tasks"] if t["element_id"] == element)

    def up_to_approval(self) -> tuple[str, str]:
        """Start an instance, submit the request and claim the manager's step as max: (instance, task)."""
        started = self.call("POST", "/api/process-definitions/procurement_approval/start", "rita", {})
        submit = next(t["id"] for t in started["open_tasks"] if t["element_id"] == "submit_request")
        self.call("POST", f"/api/tasks/{submit}/complete", "rita",
                  {"variables": {"item": "chair", "amount": 500, "justification": "bench"}})
        manager = self.open_task(started["id"], "manager_approval")
        self.call("POST", f"/api/tasks/{manager}/claim", "max")
        return started["id"], manager

    def instance(self) -> None:
        """One procurement instance, start to "ordered": 6 commands and 2 reads."""
        instance_id, manager = self.up_to_approval()
        self.call("POST", f"/api/tasks/{manager}/complete", "max", {"variables": {"manager_approved": True}})
        order = self.open_task(instance_id, "place_order")
        self.call("POST", f"/api/tasks/{order}/claim", "paul")
        self.call("POST", f"/api/tasks/{order}/complete", "paul", {"variables": {"po_number": "PO-1"}})


def _cli(env: dict[str, str], *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "api.cli", *args], cwd=ROOT, env=env, capture_output=True,  # noqa: S603
                          text=True, timeout=300, check=True)
    return done.stdout


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tree(pid: int) -> list[int]:
    pids = [pid]
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        pids.extend(_tree(int(child)))
    return pids


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of these processes so far (Linux ``/proc``; 0 for one that is gone)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / TICK


@contextmanager
def server(workers: int, database_url: str | None, serve_args: tuple[str, ...] = (),
           launcher: tuple[str, ...] = ()) -> Iterator[tuple[int, dict[str, str], list[int]]]:
    """A migrated, deployed database with the demo users and ``sopflow serve`` on it: ``(port, tokens, pids)``.

    ``launcher`` replaces ``python -m api.cli`` for the server (bench/profile_http.py runs it
    under a profiler); ``serve_args`` are appended to ``serve``'s arguments.
    """
    data = Path(tempfile.mkdtemp(prefix="sopflow-bench-"))
    fresh = _fresh_pg(database_url) if database_url else None
    env = {**os.environ, "SOPFLOW_DATA_DIR": str(data), "SOPFLOW_DATABASE_URL": fresh or ""}
    _cli(env, "db", "upgrade")
    _cli(env, "deploy", "processes/")
    tokens = dict(re.findall(r"^\s+(\w+)\s+(sop_\S+)$", _cli(env, "users", "demo"), re.M))
    port = _free_port()
    command = [*(launcher or (sys.executable, "-m", "api.cli")), "serve", "--workers", str(workers), "--port", str(port), *serve_args]
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # noqa: S603
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                conn.request("GET", "/healthz")
                if conn.getresponse().status == 200 and len(_tree(proc.pid)) >= (1 if workers == 1 else workers + 1):
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("sopflow serve did not start")
            time.sleep(0.2)
        time.sleep(1)  # let every worker finish importing
        yield port, tokens, _tree(proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        shutil.rmtree(data, ignore_errors=True)
        if fresh and database_url:
            _admin(database_url, f"DROP DATABASE IF EXISTS {fresh.rsplit('/', 1)[1]}")


def _admin(url: str, sql: str) -> None:
    from sqlalchemy import create_engine, text

    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(sql))
    engine.dispose()


def _fresh_pg(url: str) -> str:
    """A new, empty database on the PostgreSQL server of ``url`` (which must be reachable)."""
    name = f"sopflow_bench_{os.getpid()}_{int(time.time() * 1000) % 10**8}"
    _admin(url, f"CREATE DATABASE {name}")
    return f"{url.rsplit('/', 1)[0]}/{name}"


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000 if ordered else float("nan")


def _line(label: str, instances: int, seconds: float, latencies: list[float], cpu: float) -> dict[str, float]:
    figures = {"ips": instances / seconds, "p50": _pct(latencies, 0.5), "p95": _pct(latencies, 0.95),
               "p99": _pct(latencies, 0.99), "max": max(latencies, default=0) * 1000,
               "cpu_ms": cpu * 1000 / max(1, len(latencies))}
    print(f"  {label:<22} {figures['ips']:7.1f} inst/s  p50 {figures['p50']:6.1f}  p95 {figures['p95']:7.1f}  "
          f"p99 {figures['p99']:7.1f}  max {figures['max']:7.1f} ms  server CPU {figures['cpu_ms']:5.1f} ms/request",
          flush=True)
    return figures


def closed_loop(port: int, tokens: dict[str, str], pids: list[int], clients: int, seconds: float) -> dict[str, float]:
    latencies: list[float] = []
    done = [0]
    stop = threading.Event()
    lock = threading.Lock()

    def run() -> None:
        client = Client(port, tokens, latencies)
        while not stop.is_set():
            client.instance()
            with lock:
                done[0] += 1

    cpu0 = cpu_seconds(pids)
    began = time.perf_counter()
    threads = [threading.Thread(target=run, daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - began
    return _line(f"closed, {clients} client(s)", done[0], elapsed, latencies, cpu_seconds(pids) - cpu0)


def open_loop(port: int, tokens: dict[str, str], pids: list[int], rate: float, seconds: float) -> dict[str, float]:
    """Start ``rate`` instances per second on schedule; each instance's requests follow one another."""
    latencies: list[float] = []
    local = threading.local()

    def one(_: int) -> None:
        if not hasattr(local, "client"):
            local.client = Client(port, tokens, latencies)
        local.client.instance()

    count = max(1, int(rate * seconds))
    cpu0 = cpu_seconds(pids)
    began = time.perf_counter()
    with ThreadPoolExecutor(max_workers=200) as pool:
        futures = []
        for i in range(count):
            delay = began + i / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            futures.append(pool.submit(one, i))
        for f in futures:
            f.result()
    elapsed = time.perf_counter() - began
    return _line(f"open, {rate:.1f} inst/s offered", count, elapsed, latencies, cpu_seconds(pids) - cpu0)


def complete_cpu(port: int, tokens: dict[str, str], pids: list[int], count: int) -> float:
    """Server CPU (ms) per complete-task request, alone: manager tasks prepared, then completed by 1 client."""
    setup = Client(port, tokens, [])
    ready = []
    for _ in range(count):
        ready.append(setup.up_to_approval()[1])
    client = Client(port, tokens, [])
    time.sleep(0.5)
    cpu0 = cpu_seconds(pids)
    for task_id in ready:
        client.call("POST", f"/api/tasks/{task_id}/complete", "max", {"variables": {"manager_approved": True}})
    per = (cpu_seconds(pids) - cpu0) * 1000 / count
    print(f"  {'complete-task alone':<22} server CPU {per:5.1f} ms/request over {count} (target <= {TARGET_CPU_MS})",
          flush=True)
    return per


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", default=f"1,{os.cpu_count() or 1}")
    parser.add_argument("--clients", default="1,10,50")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--completes", type=int, default=200)
    parser.add_argument("--database-url", default=None, help="default: a fresh SQLite file per server")
    parser.add_argument("--serve-arg", action="append", default=[],
                        help="one more argument for `sopflow serve` (repeatable), e.g. --serve-arg=--no-worker")
    args = parser.parse_args()
    results: dict[int, dict[str, float]] = {}
    for workers in [int(w) for w in args.workers.split(",")]:
        print(f"sopflow serve --workers {workers} ({'SQLite' if not args.database_url else args.database_url})",
              flush=True)
        with server(workers, args.database_url, tuple(args.serve_arg)) as (port, tokens, pids):
            Client(port, tokens, []).instance()  # warm up every code path once
            best = max(closed_loop(port, tokens, pids, int(c), args.seconds)["ips"]
                       for c in args.clients.split(","))
            half = open_loop(port, tokens, pids, best / 2, args.seconds)
            cpu = complete_cpu(port, tokens, pids, args.completes)
        results[workers] = {"best": best, "p99_half": half["p99"], "cpu": cpu}
    print("\nagainst the targets (issue 11):")
    for workers, r in results.items():
        ratio = r["best"] / TODAY_INSTANCES_PER_S
        print(f"  --workers {workers}: {r['best']:.1f} inst/s = {ratio:.1f}x today's {TODAY_INSTANCES_PER_S} "
              f"(target >= {TARGET_RATIO}x) {'OK' if ratio >= TARGET_RATIO else 'MISSED'}; "
              f"CPU per complete {r['cpu']:.1f} ms (target <= {TARGET_CPU_MS}) "
              f"{'OK' if r['cpu'] <= TARGET_CPU_MS else 'MISSED'}; p99 at half max {r['p99_half']:.1f} ms "
              f"(target <= {TARGET_P99_MS}) {'OK' if r['p99_half'] <= TARGET_P99_MS else 'MISSED'}")
    if len(results) > 1:
        first, last = list(results)[0], list(results)[-1]
        print(f"  --workers {last} / --workers {first}: {results[last]['best'] / results[first]['best']:.2f}x "
              "instances/s in this run")
    print(f"(this machine: {os.cpu_count()} cores, shared; clients run on it too)")


if __name__ == "__main__":
    main()
