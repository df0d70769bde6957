"""When a commit wakes the sleeping job worker: only for a job due before the end of its planned sleep."""
from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime

from engine import worker
from engine.commands import start_instance
from tests.bpmnkit import Bpmn
from tests.helpers import ALICE, audit_actions, deploy_xml, instance


def _waits(key: str, duration: str) -> bytes:
    b = Bpmn(key).start().timer_catch("pause", duration).script("after", "done = True").end()
    return b.chain("start", "pause", "after", "end").xml()


def _until(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


@contextmanager
def _sleeping_worker(db, monkeypatch, interval: float) -> Iterator[list[int]]:
    """An embedded worker (``run_forever``) gone to sleep; yields the list its rounds append to."""
    rounds: list[int] = []
    real = worker.run_once

    def counted(*args, **kwargs):
        rounds.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(worker, "run_once", counted)
    stop = threading.Event()
    thread = threading.Thread(target=worker.run_forever, kwargs={"db": db, "stop": stop, "interval": interval},
                              daemon=True)
    thread.start()
    try:
        assert _until(lambda: bool(worker._SLEEP_ENDS) and all(  # asleep: its sleep's end is published
            isinstance(end, datetime) for end in worker._SLEEP_ENDS.values()), timeout=20)
        time.sleep(0.3)  # PostgreSQL: its LISTEN connection is up
        yield rounds
    finally:
        stop.set()
        worker.wake()
        thread.join(timeout=10)


def test_a_job_due_after_the_planned_sleep_does_not_wake_the_worker_one_due_within_it_does(db, clock, monkeypatch):
    deploy_xml(db, _waits("later", '"PT1H"'))
    deploy_xml(db, _waits("soon", '"PT10S"'))
    with _sleeping_worker(db, monkeypatch, interval=30) as rounds:
        asleep = len(rounds)
        db.command(lambda s: start_instance(s, key="later", actor=ALICE))  # due in an hour; the sleep ends in 30 s
        time.sleep(0.5)
        assert len(rounds) == asleep, "a job due after the worker's sleep ends must not wake it"
        db.command(lambda s: start_instance(s, key="soon", actor=ALICE))  # due in 10 s: before the sleep ends
        assert _until(lambda: len(rounds) > asleep, timeout=2), "a job due before the sleep ends wakes the worker"


def test_a_timer_fires_about_on_time_while_the_worker_sleeps_long(db, monkeypatch):
    """The system clock: a 1 s timer started while the worker sleeps for up to 30 s fires about 1 s later."""
    deploy_xml(db, _waits("second", '"PT1S"'))
    with _sleeping_worker(db, monkeypatch, interval=30):
        began = time.monotonic()
        row = db.command(lambda s: start_instance(s, key="second", actor=ALICE))
        assert _until(lambda: instance(db, row.id).status == "completed", timeout=10)
        assert time.monotonic() - began < 2.0  # due after 1 s, fired within the second after (loaded machine)


def test_a_job_already_due_wakes_the_worker_after_the_clock_moved_past_its_sleep(db, clock, monkeypatch):
    """The sleep's end is on the engine clock; a clock that jumped past it (no wake) must not delay a due job."""
    b = Bpmn("sla").start().user("work", "Work", props={"assignee": "sam", "dueDate": "2026-01-05T09:30:00Z"}).end()
    deploy_xml(db, b.chain("start", "work", "end").xml())  # the test clock starts at 09:00
    with _sleeping_worker(db, monkeypatch, interval=30):  # asleep until 09:00:30 by the engine clock
        clock.advance(hours=2)  # to 11:00, without waking the worker (another process's clock offset, say)
        row = db.command(lambda s: start_instance(s, key="sla", actor=ALICE))  # its breach job: due 09:30, past
        assert _until(lambda: "task.breached" in audit_actions(db, row.id), timeout=5)
