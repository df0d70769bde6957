"""Changes to SpiffWorkflow 3.2's behaviour that sopflow needs, installed on import of :mod:`engine`.

**Prediction without recursion.** ``TaskSpec._predict`` builds the future of a branch by
recursing into each child: for a task in a definite state (FUTURE, WAITING, READY) the
look-ahead is unbounded, so creating a workflow predicts the whole diagram one Python
frame per element, and a linear process of ~1,000 steps failed with ``RecursionError``
when an instance started. :func:`_predict` below is the same walk with an explicit stack:
the same hooks run on the same tasks in the same order (each task's children are listed
right after its hook ran, and each child's condition is tested when the walk reaches it,
as the recursive version does), so the predicted tree is identical. SpiffWorkflow
documents ``_predict`` as not to be overridden (specs override ``_predict_hook``), and
none of its specs does, so replacing it on the base class covers every spec.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from SpiffWorkflow.bpmn.specs.event_definitions.timer import (
    CycleTimerEventDefinition,
    DurationTimerEventDefinition,
    TimeDateEventDefinition,
)
from SpiffWorkflow.specs.base import TaskSpec
from SpiffWorkflow.util.task import TaskState

from engine import clock


def _enter(spec: Any, task: Any, seen: list[Any], looked_ahead: int, mask: int) -> tuple[Iterator[Any], list[Any],
                                                                                         int, bool]:
    if task.has_state(mask):
        spec._predict_hook(task)
    if task.has_state(TaskState.PREDICTED_MASK):
        seen.append(spec)
    look_ahead = bool(task.has_state(TaskState.DEFINITE_MASK)) or looked_ahead + 1 < spec.lookahead
    return iter(task.children), seen, looked_ahead, look_ahead


def _predict(self: Any, my_task: Any, seen: list[Any] | None = None, looked_ahead: int = 0,
             mask: int = TaskState.PREDICTED_MASK) -> None:
    """``TaskSpec._predict`` as an explicit-stack walk (same visits, same order, no recursion)."""
    stack = [_enter(self, my_task, [] if seen is None else seen, looked_ahead, mask)]
    while stack:
        children, path_seen, ahead, look_ahead = stack[-1]
        child = next(children, None)
        if child is None:
            stack.pop()
        elif child.has_state(mask) and child not in path_seen and look_ahead:
            stack.append(_enter(child.task_spec, child, path_seen[:], ahead + 1, mask))


TaskSpec._predict = _predict


# **Counting cycle-timer firings.** A cycle timer (``R3/PT1H``) that fell behind fires once per
# instant that passed, all in one catch-up; SpiffWorkflow leaves no trace of how many times
# (the timer task may even be pruned afterwards). Inside :func:`counting_cycle_firings`, each
# firing is counted per timer task id, so the audit trail can record one event per firing.
_cycle_firings: ContextVar[dict[UUID, int] | None] = ContextVar("sopflow_cycle_firings", default=None)
_cycle_complete = CycleTimerEventDefinition.cycle_complete


def _counted_cycle_complete(self: Any, my_task: Any) -> bool:
    ready = bool(_cycle_complete(self, my_task))
    counts = _cycle_firings.get()
    if ready and counts is not None:
        counts[my_task.id] = counts.get(my_task.id, 0) + 1
    return ready


@contextmanager
def counting_cycle_firings() -> Iterator[dict[UUID, int]]:
    """Count cycle-timer firings (timer task id -> times fired) in this block."""
    counts: dict[UUID, int] = {}
    token = _cycle_firings.set(counts)
    try:
        yield counts
    finally:
        _cycle_firings.reset(token)



# **The timer gate** (issue 9). SpiffWorkflow fires a timer whenever it re-evaluates a WAITING
# task and "now" is past its due time: at the end of every engine run (``refresh_timers``) and
# after every task completion (``Workflow.update_waiting_tasks``), so any command that ran the
# engine on an instance with an overdue timer fired that timer itself, without its job, and
# behind an event-based gateway a message arriving late ran both paths. Camunda fires a timer
# only when the job executor runs its job; whichever transaction commits first wins. So a timer
# that was already WAITING when the instance was loaded (it has a job) is *gated*: it fires only
# inside the command that fires its job (``engine.commands.timers.run_firing`` lifts the gate
# for exactly those timers). The gate lives on the loaded workflow object (installed by
# ``engine.commands.unit.load``), so every path that runs the engine on that instance in that
# command, whatever calls it, goes through it. Timers a command reaches anew keep
# SpiffWorkflow's behaviour (an already-due one fires at once); their firings are recorded here
# so the command can write their ``timer.fired`` events.
_GATE = "_sopflow_timer_gate"


@dataclass
class TimerGate:
    """The timer gate of one loaded workflow (see above).

    ``gated``: timer task ids that must not fire in this command; ``allowed``: those whose
    jobs this command fires (their events are written by the firing command itself);
    ``fired``: other timers that fired in this command, (task, due instant), oldest first.
    """

    gated: set[UUID] = field(default_factory=set)
    allowed: set[UUID] = field(default_factory=set)
    fired: list[tuple[Any, datetime]] = field(default_factory=list)


def timer_gate(workflow: Any) -> TimerGate:
    """The workflow's timer gate (``workflow``: a top-level ``BpmnWorkflow``), created empty if it has none."""
    gate = getattr(workflow, _GATE, None)
    if not isinstance(gate, TimerGate):
        gate = TimerGate()
        setattr(workflow, _GATE, gate)
    return gate


def gate_timers(workflow: Any, task_ids: Iterable[UUID]) -> None:
    """Gate these WAITING timer tasks of a loaded workflow: they do not fire in this command."""
    timer_gate(workflow).gated.update(task_ids)


def allow_timers(workflow: Any, task_ids: Iterable[UUID]) -> None:
    """Lift the gate for these timer tasks: their jobs are due and fired by this command."""
    gate = timer_gate(workflow)
    ids = set(task_ids)
    gate.gated.difference_update(ids)
    gate.allowed.update(ids)


def take_timer_firings(workflow: Any) -> list[tuple[Any, datetime]]:
    """The firings of not-gated, not-allowed timers since the last call: [(timer task, due instant)]."""
    gate = getattr(workflow, _GATE, None)
    if not isinstance(gate, TimerGate) or not gate.fired:
        return []
    fired, gate.fired = gate.fired, []
    return fired


def _gate_of(my_task: Any) -> TimerGate | None:
    gate = getattr(my_task.workflow.top_workflow, _GATE, None)
    return gate if isinstance(gate, TimerGate) else None


def _instant(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return clock.parse_instant(value)
    except ValueError:
        return None


def _gated_has_fired(original: Callable[[Any, Any], bool]) -> Callable[[Any, Any], bool]:
    def has_fired(self: Any, my_task: Any) -> bool:
        gate = _gate_of(my_task)
        if gate is not None and my_task.id in gate.gated and not my_task._get_internal_data("event_fired", False):
            return False  # not fired, and nothing about the task changed
        before = bool(my_task._get_internal_data("event_fired", False))
        fired = bool(original(self, my_task))
        if fired and not before and gate is not None and my_task.id not in gate.allowed:
            due = _instant(my_task._get_internal_data("event_value"))
            gate.fired.append((my_task, due or clock.now()))
        return fired

    return has_fired


TimeDateEventDefinition.has_fired = _gated_has_fired(TimeDateEventDefinition.has_fired)
DurationTimerEventDefinition.has_fired = _gated_has_fired(DurationTimerEventDefinition.has_fired)


def _gated_cycle_complete(self: Any, my_task: Any) -> bool:
    gate = _gate_of(my_task)
    if gate is not None and my_task.id in gate.gated:
        return False  # not advanced: the job of this cycle fires it
    ready = _counted_cycle_complete(self, my_task)
    if ready and gate is not None and my_task.id not in gate.allowed:
        value = my_task._get_internal_data("event_value") or {}
        after = _instant(value.get("next"))
        due = after - timedelta(seconds=float(value.get("duration") or 0)) if after is not None else clock.now()
        gate.fired.append((my_task, due))
    return ready


CycleTimerEventDefinition.cycle_complete = _gated_cycle_complete
