"""Several `sopflow worker` processes (PostgreSQL and SQLite): each timer fires once, a SIGKILLed worker's jobs after its lease."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select

from engine.commands import start_instance
from engine.commands.clock_control import OFFSET_KEY
from engine.store.models import AuditEventRow, InstanceRow, JobRow, RuntimeSettingRow
from tests.bpmnkit import Bpmn
from tests.helpers import ALICE, deploy_xml

ROOT = Path(__file__).resolve().parent.parent


def _worker(url: str) -> subprocess.Popen:
    env = {**os.environ, "SOPFLOW_DATABASE_URL": url, "SOPFLOW_CLOCK_CONTROL": "1"}
    return subprocess.Popen([sys.executable, "-m", "api.cli", "worker", "--interval", "0.2"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _count(db, query) -> int:
    with db.read() as s:
        return s.scalar(query) or 0


def _wait(predicate, timeout: float = 120) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_a_killed_workers_jobs_fire_once_by_the_others_after_the_lease(db, clock):
    # on SQLite too: a worker killed inside its write transaction leaves no lock (the kernel drops its
    # file locks; WAL never shows its uncommitted frames)
    n = 300
    b = Bpmn("wait").start().timer_catch("pause", '"PT1H"').script("after", "done = sum(range(20000))").end()
    deploy_xml(db, b.chain("start", "pause", "after", "end").xml())
    for _ in range(n):  # due an hour after the test's clock, long past by the system clock the workers read
        db.command(lambda s: start_instance(s, key="wait", actor=ALICE))
    first = _worker(db.url)
    try:
        assert _wait(lambda: _count(db, select(func.count()).select_from(JobRow)
                                    .where(JobRow.lock_owner.is_not(None))) > 0)
        os.kill(first.pid, signal.SIGKILL)  # mid-run: it holds leases on jobs it will never fire
        first.wait(timeout=10)
    finally:
        if first.poll() is None:
            first.kill()
    stranded = _count(db, select(func.count()).select_from(JobRow).where(JobRow.lock_owner.is_not(None)))
    assert stranded > 0  # leased to the dead worker: nobody may take them before the lease ends
    with db.transaction() as s:  # every process's clock jumps past the dead worker's 5-minute lease
        s.add(RuntimeSettingRow(key=OFFSET_KEY, value=timedelta(minutes=10).total_seconds(),
                                updated_at=clock.now(), updated_by="test"))
    others = [_worker(db.url) for _ in range(2)]
    try:
        assert _wait(lambda: _count(db, select(func.count()).select_from(JobRow)) == 0), "jobs left unfired"
    finally:
        for p in others:
            p.terminate()
        for p in others:
            p.wait(timeout=10)
    with db.read() as s:
        fired = Counter(s.scalars(select(AuditEventRow.chain).where(AuditEventRow.action == "timer.fired")))
        statuses = Counter(s.scalars(select(InstanceRow.status)))
    assert len(fired) == n and set(fired.values()) == {1}  # every timer fired, none twice
    assert statuses == {"completed": n}


def test_postgresql_commits_that_schedule_jobs_wake_other_processes(db, clock):
    """A command that schedules a timer sends NOTIFY; a worker's LISTEN thread wakes it."""
    if db.is_sqlite:
        pytest.skip("LISTEN/NOTIFY is PostgreSQL's")
    import threading

    import psycopg
    from sqlalchemy import make_url

    from engine import worker

    conninfo = make_url(db.url).set(drivername="postgresql").render_as_string(hide_password=False)
    b = Bpmn("wait").start().timer_catch("pause", '"PT1H"').end()
    deploy_xml(db, b.chain("start", "pause", "end").xml())
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(f"LISTEN {worker.JOBS_CHANNEL}")
        db.command(lambda s: start_instance(s, key="wait", actor=ALICE))
        assert [n.channel for n in conn.notifies(timeout=5, stop_after=1)] == [worker.JOBS_CHANNEL]

    stop = threading.Event()
    listener = threading.Thread(target=worker.listen, args=(db.url, stop), daemon=True)
    listener.start()
    try:
        woke = False
        with psycopg.connect(conninfo, autocommit=True) as conn:  # another "process" (no SQLAlchemy session)
            deadline = time.monotonic() + 10
            while not woke and time.monotonic() < deadline:  # until the listener is connected
                worker._WAKE.clear()
                conn.execute(f"NOTIFY {worker.JOBS_CHANNEL}")
                woke = worker._WAKE.wait(0.5)
        assert woke
    finally:
        stop.set()
        listener.join(timeout=5)
