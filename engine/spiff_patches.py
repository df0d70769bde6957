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

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any
from uuid import UUID

from SpiffWorkflow.bpmn.specs.event_definitions.timer import CycleTimerEventDefinition
from SpiffWorkflow.specs.base import TaskSpec
from SpiffWorkflow.util.task import TaskState


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


CycleTimerEventDefinition.cycle_complete = _counted_cycle_complete
