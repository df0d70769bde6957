"""Where a `sopflow serve` spends CPU per complete-task request, per process: `--workers 1` and `--workers 2` interleaved.

`.venv/bin/python bench/http_cpu.py [--rounds 3] [--completes 200] [--idle 3] [--serve-arg ARG]`

For each round and each worker count (alternating, so a shared machine's load falls on both
alike) a server is started as bench/http.py does; then (1) the server's processes idle for
``--idle`` seconds and (2) 1 client completes ``--completes`` prepared manager tasks
(bench/http.py's "complete-task alone"). For both phases the CPU (utime+stime) of every
server process is printed by role: the supervisor (with the timer worker, under
``--workers 2``), the HTTP worker processes, and the script-evaluator processes each of them
starts. Read ratios between the two worker counts of one run, not absolute milliseconds.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
if sys.path and Path(sys.path[0] or ".").resolve() == HERE:
    sys.path.pop(0)  # this folder's http.py would shadow the standard library's http

sys.path.insert(0, str(HERE.parent))  # bench/http.py as the package module bench.http: no shadowing
from bench import http as bench  # noqa: E402


def _role(pid: int, root: int) -> str:
    cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    if pid == root:
        return "supervisor" if "--workers 1" not in cmd else "server"
    if "engine.evaluator" in cmd:
        return "evaluators"
    return "http workers"


def _by_role(pids: list[int], root: int) -> dict[str, float]:
    out: dict[str, float] = {}
    for pid in pids:
        try:
            role = _role(pid, root)
        except FileNotFoundError:
            continue
        out[role] = out.get(role, 0.0) + bench.cpu_seconds([pid])
    return out


def _diff(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--completes", type=int, default=200)
    parser.add_argument("--idle", type=float, default=3.0)
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--serve-arg", action="append", default=[])
    args = parser.parse_args()
    totals: dict[int, list[float]] = {}
    for rnd in range(args.rounds):
        for workers in [int(w) for w in args.workers.split(",")]:
            with bench.server(workers, None, tuple(args.serve_arg)) as (port, tokens, _pids):
                bench.Client(port, tokens, []).instance()  # warm up every code path once
                root = _pids[0]
                time.sleep(1)
                pids = bench._tree(root)  # evaluators start lazily: list them after the warm-up
                idle0 = _by_role(pids, root)
                time.sleep(args.idle)
                idle = _diff(_by_role(pids, root), idle0)
                setup = bench.Client(port, tokens, [])
                ready = [setup.up_to_approval()[1] for _ in range(args.completes)]
                client = bench.Client(port, tokens, [])
                time.sleep(0.5)
                pids = bench._tree(root)
                c0, t0 = _by_role(pids, root), time.monotonic()
                half = len(ready) // 2
                for i, task_id in enumerate(ready):
                    if i == half:
                        c_half = _by_role(pids, root)
                    client.call("POST", f"/api/tasks/{task_id}/complete", "max",
                                {"variables": {"manager_approved": True}})
                elapsed = time.monotonic() - t0
                c1 = _by_role(pids, root)
                used = _diff(c1, c0)
                halves = (sum(_diff(c_half, c0).values()) * 1000 / half,
                          sum(_diff(c1, c_half).values()) * 1000 / (len(ready) - half))
            per = {k: v * 1000 / args.completes for k, v in used.items()}
            total = sum(per.values())
            totals.setdefault(workers, []).append(total)
            load = Path("/proc/loadavg").read_text().split()[:3]
            print(f"round {rnd + 1} --workers {workers}: complete-task {total:5.2f} ms CPU/request "
                  f"({', '.join(f'{k} {v:.2f}' for k, v in sorted(per.items()))}); "
                  f"first/second half {halves[0]:.2f}/{halves[1]:.2f}; "
                  f"{elapsed * 1000 / args.completes:.1f} ms wall/request; idle CPU "
                  f"{', '.join(f'{k} {v * 1000 / args.idle:.1f}' for k, v in sorted(idle.items()))} ms/s; "
                  f"load {' '.join(load)}", flush=True)
    for workers, values in totals.items():
        values.sort()
        print(f"--workers {workers}: median {values[len(values) // 2]:.2f} ms CPU per complete over {len(values)} rounds")
    if len(totals) == 2:
        (w1, a), (w2, b) = totals.items()
        print(f"ratio --workers {w2} / --workers {w1}: {b[len(b) // 2] / a[len(a) // 2]:.2f}")
    print(f"(this machine: {os.cpu_count()} cores, shared)")


if __name__ == "__main__":
    main()
