"""The extra timer processes of ``sopflow serve``: ``sopflow worker`` children it starts, watches and stops.

``sopflow serve`` runs one timer worker loop itself (a thread) and, with
``SOPFLOW_TIMER_PROCESSES``/``--timer-processes`` N above 1, N - 1 ``sopflow worker`` child
processes on the same database. They share nothing but the database: jobs are leased under
SQLite's write lock (``FOR UPDATE SKIP LOCKED`` on PostgreSQL) and each firing is guarded by
the instance's revision, so any number of them fire each timer once (engine.worker); a timer
batch computes outside SQLite's write lock, so on SQLite too their firings run on several
cores and only their writes queue.

- Each child gets the serve process's environment and working directory (relative paths in
  settings mean the same) plus the resolved database URL, and runs in
  its own session (a Ctrl-C in the terminal reaches only ``sopflow serve``, which then stops
  the children itself, gracefully).
- A child watches its parent (``SOPFLOW_WORKER_PARENT``): if ``sopflow serve`` dies without
  stopping it (SIGKILL, a crash), the child finishes its round and exits within about a second.
- A child that exits on its own is started again after a second (and logged).
- :meth:`TimerProcesses.stop` sends SIGTERM (the worker finishes the round it is in: nothing it
  leased is left to wait for its lease), waits, and SIGKILLs what is left after ``timeout``.
"""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Mapping
from pathlib import Path

log = logging.getLogger("sopflow.serve")

PARENT_ENV = "SOPFLOW_WORKER_PARENT"  # the pid a `sopflow worker` child exits with
ROOT = Path(__file__).resolve().parent.parent


class TimerProcesses:
    """``count`` supervised ``sopflow worker`` processes on ``url`` (none when ``count`` < 1)."""

    def __init__(self, count: int, url: str, *, env: Mapping[str, str] | None = None,
                 args: tuple[str, ...] = ()) -> None:
        self.count = max(0, count)
        base = {**os.environ, **(env or {})}
        path = os.pathsep.join(p for p in (str(ROOT), base.get("PYTHONPATH", "")) if p)  # this checkout's api
        self.env = {**base, "PYTHONPATH": path, "SOPFLOW_DATABASE_URL": url, PARENT_ENV: str(os.getpid())}
        self.args = args
        self.procs: list[subprocess.Popen[bytes]] = []
        self._stopping = threading.Event()
        self._watch: threading.Thread | None = None
        self._lock = threading.Lock()

    def _spawn(self) -> subprocess.Popen[bytes]:
        return subprocess.Popen([sys.executable, "-m", "api.cli", "worker", *self.args],  # noqa: S603
                                env=self.env, start_new_session=True)  # the serve's working directory

    def start(self) -> None:
        """Start the processes and a thread that restarts any that exits while not stopping."""
        with self._lock:
            self.procs = [self._spawn() for _ in range(self.count)]
        if self.count:
            self._watch = threading.Thread(target=self._supervise, name="sopflow-timer-processes", daemon=True)
            self._watch.start()

    def _supervise(self) -> None:
        while not self._stopping.wait(1.0):
            with self._lock:
                for i, proc in enumerate(self.procs):
                    if proc.poll() is not None and not self._stopping.is_set():
                        log.warning("timer process %s exited with %s; starting another", proc.pid, proc.returncode)
                        self.procs[i] = self._spawn()

    def pids(self) -> list[int]:
        with self._lock:
            return [p.pid for p in self.procs]

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM every process (each finishes its round), wait up to ``timeout`` s, then SIGKILL the rest."""
        self._stopping.set()
        if self._watch is not None:
            self._watch.join(timeout=5)
        with self._lock:
            procs = list(self.procs)
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                log.warning("timer process %s did not stop within %s s; killing it", proc.pid, timeout)
                proc.kill()
                proc.wait(timeout=5)
