"""Several timer processes on ONE SQLite file (`sopflow worker`, and the ones `sopflow serve` starts)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import func, select

from engine import audit
from engine.commands import start_instance
from engine.store.models import AuditEventRow, InstanceRow, JobRow
from tests.bpmnkit import Bpmn
from tests.helpers import ALICE, deploy_xml
from tests.test_worker_processes import _count, _wait, _worker

ROOT = Path(__file__).resolve().parent.parent


def test_three_worker_processes_on_one_sqlite_file_fire_each_timer_once(sqlite_db, clock):
    db = sqlite_db
    n = 2000
    b = Bpmn("wait").start().timer_catch("pause", '"PT1H"').script("after", "done = sum(range(2000))").end()
    deploy_xml(db, b.chain("start", "pause", "after", "end").xml())
    for _ in range(n):  # due an hour after the test's clock, long past by the system clock the workers read
        db.command(lambda s: start_instance(s, key="wait", actor=ALICE))
    procs = [_worker(db.url) for _ in range(3)]
    owners: set[str] = set()

    def all_fired() -> bool:
        with db.read() as s:
            owners.update(o.split(":")[1] for o in s.scalars(select(JobRow.lock_owner).distinct()) if o)
        return _count(db, select(func.count()).select_from(JobRow)) == 0

    try:
        assert _wait(all_fired, timeout=300), "jobs left unfired"
        assert all(p.poll() is None for p in procs)  # none crashed on a lock
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=20)
    assert [p.returncode for p in procs] == [0, 0, 0]  # SIGTERM: each finished its round and exited
    assert len(owners) >= 2  # leases of several processes were seen at once: they raced for the jobs
    with db.read() as s:
        fired = Counter(s.scalars(select(AuditEventRow.chain).where(AuditEventRow.action == "timer.fired")))
        statuses = Counter(s.scalars(select(InstanceRow.status)))
        verdict = audit.verify(s)
    assert len(fired) == n and set(fired.values()) == {1}  # every timer fired, none twice
    assert statuses == {"completed": n}
    assert verdict.ok, verdict.to_dict()


def test_a_timer_another_process_schedules_is_fired_by_a_sleeping_worker_process_within_about_a_second(sqlite_db):
    # no cross-process wake-up on SQLite: the worker's sleep is capped at its interval (1 s), and a due
    # time it learns of at its next round is slept to exactly
    db = sqlite_db
    deploy_xml(db, Bpmn("wait").start().timer_catch("pause", '"PT1S"').end().chain("start", "pause", "end").xml())
    env = {**os.environ, "SOPFLOW_DATABASE_URL": db.url}
    proc = subprocess.Popen([sys.executable, "-m", "api.cli", "worker"], cwd=ROOT, env=env,  # the 1 s default
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(4)  # started and asleep, with nothing to do
        lateness = []
        for _ in range(3):
            started = db.command(lambda s: start_instance(s, key="wait", actor=ALICE)).id
            assert _wait(lambda i=started: _count(db, select(func.count()).select_from(JobRow)
                                                  .where(JobRow.instance_id == i)) == 0, timeout=30)
            with db.read() as s:
                occurred, payload = s.execute(select(AuditEventRow.occurred_at, AuditEventRow.payload).where(
                    AuditEventRow.chain == started, AuditEventRow.action == "timer.fired")).one()
            due = datetime.fromisoformat(json.loads(payload)["due_at"])
            lateness.append((occurred - (due if due.tzinfo else due.replace(tzinfo=UTC))).total_seconds())
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    assert all(0 <= late < 2.0 for late in lateness), lateness  # about a second at most (a loaded machine: 2)


def _serve(url: str, tmp_path: Path, *args: str) -> subprocess.Popen:
    from tests.test_scale import _free_port

    env = {**os.environ, "SOPFLOW_DATA_DIR": str(tmp_path), "SOPFLOW_DATABASE_URL": url}
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "api.cli", "serve", "--port", str(port), *args],
                              cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    server.port = port  # type: ignore[attr-defined]
    return server


def _timer_children(pid: int) -> list[int]:
    from tests.test_scale import _children

    try:
        return [c for c in _children(pid) if b"api.cli\x00worker" in Path(f"/proc/{c}/cmdline").read_bytes()]
    except FileNotFoundError:
        return []


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.parametrize("http_workers", ["1", "2"])
def test_serve_starts_its_timer_processes_and_stops_them_on_shutdown(sqlite_db, tmp_path, http_workers):
    server = _serve(sqlite_db.url, tmp_path, "--workers", http_workers, "--timer-processes", "3")
    try:
        assert _wait(lambda: len(_timer_children(server.pid)) == 2 or server.poll() is not None, timeout=60)
        children = _timer_children(server.pid)
        assert len(children) == 2 and server.poll() is None  # its own loop + 2 `sopflow worker` children
        time.sleep(2)  # they run (import, sleep), not crash-restart
        assert _timer_children(server.pid) == children
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
    assert _wait(lambda: not any(_alive(c) for c in children), timeout=5), "a timer process outlived sopflow serve"


def test_serve_timer_processes_exit_when_serve_is_killed(sqlite_db, tmp_path):
    server = _serve(sqlite_db.url, tmp_path, "--workers", "1", "--timer-processes", "2")
    try:
        assert _wait(lambda: len(_timer_children(server.pid)) == 1 or server.poll() is not None, timeout=60)
        [child] = _timer_children(server.pid)
    finally:
        server.kill()  # no chance to stop its children
        server.wait(timeout=10)
    assert _wait(lambda: not _alive(child), timeout=10), "an orphaned timer process kept running"


def test_serve_with_no_worker_or_zero_timer_processes_starts_none(sqlite_db, tmp_path):
    import urllib.request

    for args in (["--no-worker", "--timer-processes", "2"], ["--timer-processes", "0"]):
        server = _serve(sqlite_db.url, tmp_path, "--workers", "1", *args)

        def up(server=server) -> bool:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/healthz", timeout=2):  # noqa: S310
                    return True
            except OSError:
                return server.poll() is not None

        try:
            assert _wait(up, timeout=60) and server.poll() is None
            time.sleep(1)  # children would be started before the server listens
            assert _timer_children(server.pid) == []
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=30)
