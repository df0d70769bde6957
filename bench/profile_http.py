"""Where the server's CPU goes on the procurement procedure over HTTP: a CPU-clock profile of a live `sopflow serve`.

`.venv/bin/python bench/profile_http.py [--phase complete|instance] [--count 200] [--no-worker] [--top 45]`

Needs yappi (``.venv/bin/pip install yappi``: a profiler that follows every thread and
counts CPU time, not wall time, so the fsync of a COMMIT or a sleeping worker costs nothing).
Starts a server as bench/http.py does, with one process (``--workers 1``; with more, the
HTTP workers are spawned processes the profiler does not follow: ``--no-worker`` gives what
one of them does, since there the job worker runs in the supervisor), prepares work, then
profiles the server process while one client runs the phase:

- ``complete``: ``--count`` manager tasks prepared beforehand (started, submitted, claimed),
  then completed one after the other (bench/http.py's "complete-task alone");
- ``instance``: ``--count`` whole instances back to back (6 commands + 2 reads each).

Prints the server's CPU per request (unprofiled it is lower: yappi roughly doubles it),
the CPU of each thread, and the functions with the most inclusive CPU time per request.
Read shares, not absolute milliseconds.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
if sys.path and Path(sys.path[0] or ".").resolve() == HERE:
    sys.path.pop(0)  # this folder's http.py would shadow the standard library's http

sys.path.insert(0, str(HERE.parent))  # bench/http.py as the package module bench.http: no shadowing
from bench import http as bench  # noqa: E402

PROFILE_ENV = "SOPFLOW_BENCH_PROFILE"  # the server side: where to write the stats


def serve_profiled(argv: list[str]) -> None:
    """The server side: ``sopflow serve`` under yappi; the stats are written when it stops (SIGTERM)."""
    import yappi

    sys.path.insert(0, str(bench.ROOT))
    from api import cli

    out = os.environ[PROFILE_ENV]
    yappi.set_clock_type("cpu")
    started = False

    def toggle(_signum: int, _frame: object) -> None:  # SIGUSR1: start, SIGUSR2: stop and save
        nonlocal started
        if not started:
            yappi.clear_stats()
            yappi.start(builtins=True, profile_threads=True)
            started = True
            return
        yappi.stop()
        stats = yappi.get_func_stats()
        stats.save(out, type="pstat")
        with open(out + ".threads", "w") as f:
            for t in yappi.get_thread_stats():
                f.write(f"{t.name}\t{t.ttot:.4f}\n")
        Path(out + ".done").touch()

    signal.signal(signal.SIGUSR1, toggle)
    signal.signal(signal.SIGUSR2, toggle)
    sys.argv = ["sopflow", *argv]
    cli.main()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--phase", choices=["complete", "instance"], default="complete")
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--top", type=int, default=45)
    parser.add_argument("--no-worker", action="store_true", help="serve without the embedded job worker")
    parser.add_argument("--stats", type=Path, default=None, help="keep the pstats file here")
    args = parser.parse_args()
    import pstats

    out = str(args.stats or Path(tempfile.mkdtemp(prefix="sopflow-profile-")) / "server.pstat")
    os.environ[PROFILE_ENV] = out
    launcher = (sys.executable, str(Path(__file__).resolve()), "--serve-profiled")
    serve_args = ("--no-worker",) if args.no_worker else ()
    with bench.server(1, None, serve_args, launcher) as (port, tokens, pids):
        client = bench.Client(port, tokens, [])
        client.instance()  # warm up
        ready = [client.up_to_approval()[1] for _ in range(args.count)] if args.phase == "complete" else []
        time.sleep(1.5)  # the job worker's round after the set-up
        os.kill(pids[0], signal.SIGUSR1)
        time.sleep(0.2)
        cpu0 = bench.cpu_seconds(pids)
        began = time.perf_counter()
        if args.phase == "complete":
            for task_id in ready:
                client.call("POST", f"/api/tasks/{task_id}/complete", "max", {"variables": {"manager_approved": True}})
        else:
            for _ in range(args.count):
                client.instance()
        elapsed = time.perf_counter() - began
        time.sleep(0.5)  # let the worker's round after the last command end
        cpu = bench.cpu_seconds(pids) - cpu0
        os.kill(pids[0], signal.SIGUSR2)
        deadline = time.monotonic() + 120
        while not Path(out + ".done").exists() and time.monotonic() < deadline:
            time.sleep(0.2)
    requests = args.count * (1 if args.phase == "complete" else 8)
    print(f"phase {args.phase}{' (no job worker)' if args.no_worker else ''}: {requests} requests in {elapsed:.1f} s,"
          f" server CPU {cpu * 1000 / requests:.1f} ms/request under the profiler")
    print("CPU by thread (ms/request):")
    for line in Path(out + ".threads").read_text().splitlines():
        name, seconds = line.split("\t")
        if float(seconds) * 1000 / requests >= 0.05:
            print(f"  {float(seconds) * 1000 / requests:6.2f}  {name}")
    stats = pstats.Stats(out)
    rows = []
    for (file, line, func), (_cc, _nc, _tt, ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        where = file.replace(str(bench.ROOT) + "/", "").split("site-packages/")[-1]
        rows.append((ct, f"{func} ({where}:{line})"))
    rows.sort(reverse=True)
    print(f"\nfunctions by inclusive CPU, ms/request (top {args.top}):")
    for ct, name in rows[:args.top]:
        print(f"  {ct * 1000 / requests:6.2f}  {name}")
    print(f"\npstats file: {out} (python -m pstats)")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--serve-profiled":
        serve_profiled(sys.argv[2:])
    else:
        main()
