"""Driving SpiffWorkflow: engine steps with budgets, and history pruning.

**Why prune.** SpiffWorkflow keeps every finished task in the instance's tree, so the
cost of loading, stepping and saving an instance grows with its history (a step after
1000 loop iterations costs ~10x one after 100), and a gateway loop stalls silently at
the task iterator's depth cap (~500 iterations). sopflow keeps history in its own
tables (``tasks``, ``audit_events``), so the workflow tree only has to hold what can
still influence the future. After every engine round we:

1. drop finished subtrees that hang under a finished parent (cancelled branches,
   completed parallel branches, consumed join tokens, fired cycle-timer children);
2. splice out finished tasks that sit in the middle of a finished chain
   (finished parent, exactly one child, which is itself finished).

What is never touched, because SpiffWorkflow reads it later:
- any unfinished task and its direct parent (joins identify the arriving flow by
  ``task.parent.task_spec``; inclusive gateways likewise);
- above every unfinished task, the nearest ancestor of each spec that feeds a
  multi-input parallel or inclusive gateway (the parallel gateway walks ancestors to
  decide which inputs a loop's next token has already passed);
- the newest cancelled token of each join per arriving flow, with its parent
  (a join's next firing merges that parent's data, e.g. the end join merging a
  finished non-interrupting branch);
- the children of boundary-event and start-event splits while anything below them
  is unfinished, and of unfinished multi-instance, loop, sub-process and
  event-based-gateway tasks (their specs inspect their children);
- the root.
Sub-workflows whose parent task was removed are deleted with it. The tree then stays
bounded by the diagram's width, not by the instance's history.

``run_engine`` replaces ``BpmnWorkflow.do_engine_steps`` with the same rounds plus
pruning and a budget of tasks and wall time, so a runaway loop fails the command
with a clear error instead of stalling a worker.

**Where the budget is checked.** Counting finished tasks is not enough: one step can
be long (a join over a 3000-branch split walks every task, so the steps of such a
split cost O(branches) each and the split O(branches²) in all). While a budget is
active (``with budget:``) every task SpiffWorkflow's iterators visit (all of its
tree walks use them) also looks at the clock, so a command stops within a few
milliseconds of its deadline wherever it is; the workflow object it leaves behind is
discarded (the command wrote nothing).
"""
from __future__ import annotations

import contextvars
import time
from collections.abc import Callable
from typing import Any

from SpiffWorkflow.bpmn import BpmnWorkflow
from SpiffWorkflow.bpmn.specs.control import BoundaryEventSplit, StartEventSplit
from SpiffWorkflow.bpmn.specs.mixins.events.intermediate_event import EventBasedGateway
from SpiffWorkflow.bpmn.specs.mixins.multiinstance_task import LoopTask
from SpiffWorkflow.bpmn.specs.mixins.subworkflow_task import SubWorkflowTask
from SpiffWorkflow.bpmn.specs.mixins.unstructured_join import UnstructuredJoin
from SpiffWorkflow.bpmn.util.task import BpmnTaskIterator
from SpiffWorkflow.task import Task
from SpiffWorkflow.util.task import TaskIterator, TaskState

from engine import variables
from engine.errors import ScriptError

_SPLITS = (BoundaryEventSplit, StartEventSplit)
_CHILD_INSPECTING = (LoopTask, SubWorkflowTask, EventBasedGateway)
_FINISHED = TaskState.COMPLETED | TaskState.CANCELLED


def _finished(task: Task) -> bool:
    return bool(task.has_state(_FINISHED))


def _join_inputs(spec: Any) -> frozenset[Any]:
    """Specs that feed a multi-input parallel/inclusive gateway (cached per workflow spec)."""
    cached = getattr(spec, "_sopflow_join_inputs", None)
    if cached is None:
        cached = frozenset(
            i for ts in spec.task_specs.values()
            if isinstance(ts, UnstructuredJoin) and len(ts.inputs) > 1 for i in ts.inputs
        )
        spec._sopflow_join_inputs = cached
    return cached


def _pinned(workflow: Any, tasks: dict[Any, Task]) -> set[Any]:
    """The nearest ancestor of each join-input spec above every unfinished task.

    SpiffWorkflow's parallel gateway decides which inputs a join still waits for by walking
    a task's ancestors until it meets a task of an input spec; one such ancestor per spec and
    path is all it ever needs, so that one is kept and older ones may go.
    """
    inputs = _join_inputs(workflow.spec)
    if not inputs:
        return set()
    pinned: set[Any] = set()
    for task in tasks.values():
        if _finished(task):
            continue
        seen: set[Any] = set()
        node = tasks.get(task._parent)
        while node is not None and len(seen) < len(inputs):
            if node.task_spec in inputs and node.task_spec not in seen:
                seen.add(node.task_spec)
                pinned.add(node.id)
            node = tasks.get(node._parent)
    return pinned


def _prune_tree(workflow: Any, removed: list[Task]) -> None:
    root = workflow.task_tree
    tasks = workflow.tasks
    pinned = _pinned(workflow, tasks)
    # pre-order over an explicit stack (reversed, it is a post-order for the liveness pass)
    order: list[Task] = []
    stack = [root]
    while stack:
        task = stack.pop()
        order.append(task)
        stack.extend(tasks[c] for c in task._children if c in tasks)
    # the newest superseded (cancelled) token of each join, per arriving flow, is merged into
    # the join's next firing (UnstructuredJoin._run_hook reads its parent's data): keep it
    # and its parent
    newest: dict[tuple[Any, Any], Task] = {}
    for task in order:
        if (isinstance(task.task_spec, UnstructuredJoin) and task.state == TaskState.CANCELLED
                and task._parent in tasks):
            key = (task.task_spec, tasks[task._parent].task_spec)
            if key not in newest or task.last_state_change >= newest[key].last_state_change:
                newest[key] = task
    for token in newest.values():
        pinned.add(token.id)
        pinned.add(token._parent)
    live: dict[Any, bool] = {}  # does the subtree hold an unfinished task?
    for task in reversed(order):
        live[task.id] = not _finished(task) or any(live.get(c, False) for c in task._children)

    def inspects_children(parent: Task) -> bool:
        if isinstance(parent.task_spec, _SPLITS):
            return live[parent.id]  # a split completes at once; its children matter while any is live
        return isinstance(parent.task_spec, _CHILD_INSPECTING) and not _finished(parent)

    def remove(task: Task) -> None:
        sub = [task]
        while sub:
            t = sub.pop()
            sub.extend(tasks[c] for c in t._children if c in tasks)
            tasks.pop(t.id, None)
            removed.append(t)

    for task in order:
        if task.id not in tasks or task is root:
            continue
        parent = tasks.get(task._parent)
        if parent is None:
            continue
        inspecting = inspects_children(parent)
        if task.id not in pinned and not live[task.id] and _finished(parent) and not inspecting:
            parent._children.remove(task.id)
            remove(task)
            continue
        if (
            task.id not in pinned
            and _finished(task)
            and _finished(parent)
            and not inspecting
            and not (isinstance(task.task_spec, _SPLITS) and live[task.id])
            and len(task._children) == 1
        ):
            child = tasks.get(task._children[0])
            if child is not None and _finished(child):
                index = parent._children.index(task.id)
                parent._children[index] = child.id
                child._parent = parent.id
                tasks.pop(task.id)
                removed.append(task)


def prune(workflow: BpmnWorkflow) -> int:
    """Remove history that cannot influence the future; returns the number of tasks removed."""
    removed: list[Task] = []
    _prune_tree(workflow, removed)
    for sub in list(workflow.subprocesses.values()):
        _prune_tree(sub, removed)
    if not removed:
        return 0
    gone = {t.id for t in removed}
    # sub-workflows hang off a task id of their parent workflow; drop those orphaned
    changed = True
    while changed:
        changed = False
        for task_id, sub in list(workflow.subprocesses.items()):
            if task_id in gone:
                del workflow.subprocesses[task_id]
                gone.update(sub.tasks.keys())
                changed = True
    for wf in [workflow, *workflow.subprocesses.values()]:
        if wf.last_task is not None and wf.last_task.id in gone:
            wf.last_task = None
    for task_id in list(workflow.event_manager.tasks):
        if task_id in gone:
            workflow.event_manager.tasks.pop(task_id, None)
    return len(removed)


# Prune between engine rounds only once the tree is this large: small trees are cheap to walk,
# and this bounds both the per-round cost and the depth a long script loop can reach.
PRUNE_AT = 64


class BudgetExceeded(ScriptError):
    """A command ran more engine steps or longer than its budget (``SOPFLOW_COMMAND_MAX_*``)."""

    code = "budget_exceeded"


_ACTIVE: contextvars.ContextVar[EngineBudget | None] = contextvars.ContextVar("sopflow_engine_budget",
                                                                               default=None)


class EngineBudget:
    """Steps (tasks run) and wall time one command may spend in SpiffWorkflow.

    ``spend`` is called per finished task; while active (``with budget:``) the task
    iterator also calls ``tick`` at every step it takes. Once exceeded, every later check
    raises the same :class:`BudgetExceeded`, so SpiffWorkflow code that catches and wraps
    exceptions cannot make the command carry on.
    """

    def __init__(self, max_steps: int, max_seconds: float) -> None:
        self.max_steps = max_steps
        self.deadline = time.monotonic() + max_seconds
        self.max_seconds = max_seconds
        self.steps = 0
        self.exceeded: BudgetExceeded | None = None
        self._tokens: list[contextvars.Token[EngineBudget | None]] = []

    def __enter__(self) -> EngineBudget:
        self._tokens.append(_ACTIVE.set(self))
        return self

    def __exit__(self, *exc: object) -> None:
        _ACTIVE.reset(self._tokens.pop())

    def _fail(self, error: BudgetExceeded) -> None:
        self.exceeded = error
        raise error

    def spend(self, task: Task) -> None:
        if self.exceeded is not None:
            raise self.exceeded
        self.steps += 1
        element = task.task_spec.bpmn_id
        if self.steps > self.max_steps:
            self._fail(BudgetExceeded(
                f"the instance ran {self.max_steps} engine steps in one command without reaching a wait "
                f"state; it looks like an endless loop (last element '{element}')", element_id=element))
        self.tick(task)

    def tick(self, task: Task | None = None) -> None:
        if self.exceeded is not None:
            raise self.exceeded
        if time.monotonic() > self.deadline:
            element = getattr(getattr(task, "task_spec", None), "bpmn_id", None)
            where = f" (last element '{element}')" if element else ""
            self._fail(BudgetExceeded(
                f"the instance ran for more than {self.max_seconds:g}s in one command without reaching a "
                f"wait state{where}; nothing was stored", element_id=element))


def _budgeted(step: Callable[[Any], Task]) -> Callable[[Any], Task]:
    def budgeted_step(iterator: Any) -> Task:
        budget = _ACTIVE.get()
        if budget is not None:
            budget.tick()
        return step(iterator)
    return budgeted_step


# Every task SpiffWorkflow's iterators visit (matching or not: ``__next__`` skips non-matching
# tasks inside one call) passes through ``_next``; BpmnTaskIterator overrides it.
TaskIterator._next = _budgeted(TaskIterator._next)
BpmnTaskIterator._next = _budgeted(BpmnTaskIterator._next)


def run_engine(
    workflow: BpmnWorkflow,
    budget: EngineBudget,
    on_completed: Callable[[Task], None] | None = None,
) -> None:
    """Run every non-manual READY task until all tokens wait or the instance ends.

    Process variables (:mod:`engine.variables`): each task is given a fresh copy of the
    process variables (plus its locals) right before it runs, and its completion writes what
    it changed back; ``on_completed`` sees the task with those changes still to be taken
    (:func:`engine.variables.take_changes`).
    """
    variables.ensure(workflow)

    def did_complete(task: Task) -> None:
        budget.spend(task)
        if on_completed is not None:
            on_completed(task)

    while True:
        more = workflow._do_engine_steps(variables.before_run, did_complete)
        if len(workflow.tasks) > PRUNE_AT:
            prune(workflow)
        if not more:
            break
    workflow.refresh_timers()
    prune(workflow)  # what is stored stays small, whatever the threshold
    variables.tidy(workflow)
