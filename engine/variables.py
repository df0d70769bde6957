"""Process variables with Camunda's scoping, on top of SpiffWorkflow's per-token task data.

**The model** (Camunda 7's): an instance has ONE set of process variables. A value written by
any step (task completion, script, business rule, message payload, timer branch, sub-process)
is what every later step on every path reads; a join never reverts it; the later write in
commit order wins. Local scopes: a multi-instance instance's element variable, output item
and ``loopCounter``; ``camunda:inputOutput`` input parameters of an activity (on an embedded
sub-process: locals every task inside reads); a call activity's called process, which has
its own variables (``camunda:in``/``camunda:out``, ``variables="all"``; SpiffWorkflow: the
called process's data inputs/outputs, else everything). A write goes to the innermost scope
that already has the name, else to the process variables (Camunda's ``setVariable``).

**What SpiffWorkflow does instead.** Every task holds its own copy of the data, inherited from
its parent when it becomes ready; a join deep-merges the copies of all arriving branches,
the last arriving branch winning (so a branch that read ``amount = 100`` and changed nothing
reverts another branch's 120), lists are merged by union, and a multi-instance task merges
every instance's data (element variable included) back into the body.

**How sopflow gets the model on top of it.**

- The authoritative process variables live in the top workflow's ``data`` under ``_pvars``,
  so they are serialized with the instance. Each task's local scope lives in its
  ``internal_data`` (``_sopflow_locals``), also serialized.
- A task's *view* is the process variables overlaid with its locals (for a task with a
  SpiffWorkflow ``ioSpecification``, only its declared data inputs, as SpiffWorkflow does).
- Whenever SpiffWorkflow hands a task its data (``Task._inherit_data``: a task becoming
  ready, a join firing), the task gets a fresh copy of its view instead of a merge of its
  parents' copies.
- Right before a task runs (engine step, user-task completion), its data is refreshed to
  its view again (other branches may have written since it became ready), and that copy is
  remembered as what it was *given*.
- When the task completes, after its own completion hooks (data outputs, multi-instance
  collection) and *before* its successors are updated, every name whose value differs from
  what it was given is written to the process variables (local names are kept local; a
  ``camunda:outputParameter`` is evaluated and written). Successors therefore already see
  the write. A SpiffWorkflow pre-script's changes are written the same way when it runs.
- A multi-instance body does not merge its instances' data (their writes went to the
  process variables already, their element variables are local).

Deleting a variable is not a write: a name a task drops from its data keeps its value
(set it to ``None`` instead).

All of this is switched on per instance (``_pvars`` present); :func:`ensure` turns it on for
instances stored before it existed, from their folded task data.
"""
from __future__ import annotations

import json
import re
from copy import deepcopy
from typing import Any

from SpiffWorkflow.bpmn.exceptions import WorkflowDataException
from SpiffWorkflow.bpmn.specs.mixins.multiinstance_task import LoopTask, MultiInstanceTask
from SpiffWorkflow.bpmn.specs.mixins.subworkflow_task import CallActivity
from SpiffWorkflow.bpmn.specs.mixins.unstructured_join import UnstructuredJoin
from SpiffWorkflow.specs.base import TaskSpec
from SpiffWorkflow.spiff.specs.spiff_task import SpiffBpmnTask
from SpiffWorkflow.task import Task
from SpiffWorkflow.util.task import TaskState

from engine import audit
from engine.errors import Phrase, ScriptError

PVARS = "_pvars"  # key of the process variables in the top workflow's data
LOCALS = "_sopflow_locals"  # key of a task's local variables in its internal data
GIVEN = "_sopflow_given"  # attribute (not stored) on a Task: the view it was given to run with
CHANGES = "_sopflow_changes"  # attribute (not stored) on a Task: what its completion wrote
OUTPUTS = "_sopflow_outputs"  # internal data of a call activity: what its called process hands back
RESERVED = frozenset({"data_objects"})  # SpiffWorkflow's own keys in workflow data
LOOP_COUNTER = "loopCounter"

_EXPRESSION = re.compile(r"^\s*\$\{(.*)\}\s*$", re.S)


# --------------------------------------------------------------------------- the variables

_IMMUTABLE = (str, int, float, bool, type(None), bytes)


def _copy(data: dict[str, Any]) -> dict[str, Any]:
    """A copy no task can change in place (deep for containers; scalars are shared, they are immutable)."""
    return {k: v if isinstance(v, _IMMUTABLE) else deepcopy(v) for k, v in data.items()}


def is_scoped(workflow: Any) -> bool:
    """Does this instance keep process variables (every instance does once loaded or started)?"""
    return PVARS in workflow.top_workflow.data


def process_variables(workflow: Any) -> dict[str, Any]:
    """The instance's process variables (the live dict; write through :func:`write`)."""
    pvars: dict[str, Any] = workflow.top_workflow.data[PVARS]
    return pvars


def init(workflow: Any, variables: dict[str, Any]) -> None:
    """Turn scoping on for a new instance, with its start variables."""
    workflow.data[PVARS] = deepcopy(variables)


def ensure(workflow: Any) -> None:
    """Turn scoping on for an instance stored without it: its variables are its tasks' data folded."""
    if is_scoped(workflow):
        return
    if workflow.is_completed() and workflow.success:
        folded = {k: v for k, v in workflow.data.items() if k not in RESERVED}
    else:
        folded = {}
        definite = TaskState.DEFINITE_MASK | TaskState.FINISHED_MASK
        for task in sorted((t for t in workflow.tasks.values() if t.has_state(definite)),
                           key=lambda t: t.last_state_change):
            folded.update(task.data)
    workflow.data[PVARS] = {k: v for k, v in folded.items() if k not in RESERVED}


def write(workflow: Any, values: dict[str, Any]) -> None:
    """Set process variables from outside a task (e.g. a message payload delivered by a command)."""
    process_variables(workflow).update(deepcopy(values))


def as_json(variables: dict[str, Any]) -> dict[str, Any]:
    """JSON-safe copy without internal names (those starting with ``_``)."""
    safe: dict[str, Any] = json.loads(audit.canonical(
        {k: v for k, v in variables.items() if not k.startswith("_")}))
    return safe


def tidy(workflow: Any) -> None:
    """Drop what SpiffWorkflow's end join copies into workflow data (the variables are in ``_pvars``)."""
    for wf in [workflow, *workflow.subprocesses.values()]:
        for key in [k for k in wf.data if k != PVARS and k not in RESERVED]:
            del wf.data[key]


# --------------------------------------------------------------------------- local scopes


def _io(task: Task) -> dict[str, Any]:
    """The element's ``camunda:inputOutput`` (``inputs``/``outputs``) and, on a call activity,
    ``camunda:in``/``camunda:out`` (``in``/``out``): parsed at deploy, attached to the specs."""
    table: dict[str, Any] = getattr(task.workflow.spec, "sopflow_io", None) or {}
    found: dict[str, Any] = table.get(f"{task.workflow.spec.name}/{getattr(task.task_spec, 'bpmn_id', None)}") or {}
    return found


def _loop_children(spec: Any) -> frozenset[str]:
    """Names of the specs that are multi-instance/loop instances in this workflow spec (cached on it)."""
    cached: frozenset[str] | None = getattr(spec, "_sopflow_loop_children", None)
    if cached is None:
        cached = frozenset(str(ts.task_spec) for ts in spec.task_specs.values() if isinstance(ts, LoopTask))
        spec._sopflow_loop_children = cached
    return cached


def _loop_parent(task: Task) -> Any:
    if task.task_spec.name not in _loop_children(task.workflow.spec):
        return None  # the common case, without a parent lookup
    parent = task.parent
    if parent is None:
        return None
    spec = parent.task_spec
    if isinstance(spec, LoopTask) and getattr(spec, "task_spec", None) == task.task_spec.name:
        return spec
    return None


def local_names(task: Task) -> set[str]:
    """Names that are local to this task: never written to the process variables."""
    names = set(task.internal_data.get(LOCALS) or ())
    loop = _loop_parent(task)
    if loop is not None:
        names.add(LOOP_COUNTER)
        if isinstance(loop, MultiInstanceTask):
            for ref in (loop.input_item, loop.output_item):
                if ref is not None:
                    names.add(ref.bpmn_id)
    names.update(p["name"] for p in _io(task).get("inputs", ()))
    return names


def evaluate(task: Task, source: Any, context: dict[str, Any], what: str) -> Any:
    """A Camunda parameter value: ``${expr}`` is a (sandboxed Python) expression, other text is literal."""
    if isinstance(source, list):
        return [evaluate(task, s, context, what) for s in source]
    if isinstance(source, dict):
        return {k: evaluate(task, s, context, what) for k, s in source.items()}
    if not isinstance(source, str):
        return source
    match = _EXPRESSION.match(source)
    if match is None:
        return source
    try:
        return task.workflow.script_engine.environment.evaluate(match.group(1), dict(context))
    except Exception as exc:  # noqa: BLE001 - any failure is the diagram's, reported as such
        element = getattr(task.task_spec, "bpmn_id", None)
        raise ScriptError("element '{element}': the {what} '{value}' failed: {exc}",
                          element_id=element,
                          params={"element": element, "what": what, "value": source.strip(), "exc": exc}) from None


def locals_of(task: Task) -> dict[str, Any]:
    """The task's local variables, created on first use (the live dict, stored in internal data)."""
    found: dict[str, Any] | None = task.internal_data.get(LOCALS)
    if found is not None:
        return found
    scope: dict[str, Any] = {}
    loop = _loop_parent(task)
    if loop is not None:
        if isinstance(loop, MultiInstanceTask):
            for ref in (loop.input_item, loop.output_item):
                if ref is not None and ref.bpmn_id in task.data:
                    scope[ref.bpmn_id] = task.data[ref.bpmn_id]
            key = task.internal_data.get("key_or_index")
            if isinstance(key, int) and not isinstance(key, bool):
                scope[LOOP_COUNTER] = key
            else:
                siblings = [c for c in task.parent.children if c.task_spec is task.task_spec]
                scope[LOOP_COUNTER] = next((i for i, c in enumerate(siblings) if c is task), 0)
        else:
            scope[LOOP_COUNTER] = task.internal_data.get("iteration", 0)
    inputs = _io(task).get("inputs", ())
    if inputs and is_scoped(task.workflow):
        context = {**_outer(task), **scope}
        for param in inputs:
            scope[param["name"]] = context[param["name"]] = evaluate(
                task, param["value"], context, f"input parameter '{param['name']}'")
    if scope:  # most tasks have no locals: store nothing for them
        task.internal_data[LOCALS] = scope
    return scope


def _is_call(spec: Any) -> bool:
    """A call activity (its own process instance), not an embedded sub-process: SpiffWorkflow's Camunda
    dialect builds both with its CallActivity class; the element kind is in the spec's description."""
    return isinstance(spec, CallActivity) and spec.description == "Call Activity"


def _scopes(task: Task) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The scopes above a task: enclosing embedded sub-processes' locals (innermost first), and the
    variables of its process instance (the top one, or the called process of a call activity)."""
    chain: list[dict[str, Any]] = []
    workflow = task.workflow
    while workflow.parent_task_id is not None:
        parent = workflow.top_workflow.get_task_from_id(workflow.parent_task_id)
        if parent is None or _is_call(parent.task_spec):
            break  # a called process has its own variables (Camunda: a separate process instance)
        chain.append(locals_of(parent))
        workflow = parent.workflow
    if PVARS not in workflow.data:  # a call activity started before scoping existed
        workflow.data[PVARS] = {}
    return chain, workflow.data[PVARS]


def _outer(task: Task) -> dict[str, Any]:
    chain, pvars = _scopes(task)
    merged = dict(pvars)
    for scope in reversed(chain):
        merged.update(scope)
    return merged


def own_scope(task: Task) -> dict[str, Any]:
    """What the task reads beyond the instance's process variables: the called process's variables
    (inside a call activity), enclosing sub-processes' locals and its own (the inbox shows these)."""
    chain, pvars = _scopes(task)
    merged = {} if pvars is task.workflow.top_workflow.data.get(PVARS) else dict(pvars)
    for scope in reversed(chain):
        merged.update(scope)
    merged.update(locals_of(task))
    return merged


def view(task: Task) -> dict[str, Any]:
    """What the task reads: its process's variables, overlaid with each enclosing scope's locals and its own."""
    merged = _outer(task)
    io_spec = getattr(task.task_spec, "io_specification", None)
    if io_spec is not None and io_spec.data_inputs:  # SpiffWorkflow: the task sees only its inputs
        merged = {v.bpmn_id: merged[v.bpmn_id] for v in io_spec.data_inputs if v.bpmn_id in merged}
    merged.update(locals_of(task))
    return merged


# --------------------------------------------------------------------------- around a task


def before_run(task: Task) -> None:
    """Give the task a fresh copy of its view and remember it (what its completion diffs against)."""
    if not is_scoped(task.workflow) or isinstance(task.task_spec, UnstructuredJoin):
        return
    given = view(task)
    keep: dict[str, Any] = {}
    spec = task.task_spec
    if isinstance(spec, MultiInstanceTask) and spec.data_output is not None:
        name = spec.data_output.bpmn_id  # the collection its instances filled in: the body's write
        if name in task.data:
            keep[name] = task.data[name]
    if _is_call(spec):
        keep.update(task.internal_data.pop(OUTPUTS, None) or {})  # what the called process handed back
    task.data = _copy(given)
    task.data.update(keep)
    setattr(task, GIVEN, given)


def _commit(task: Task, given: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Write what the task changed (against ``given``) to its scopes; returns ``{name: {from, to}}``.

    Camunda's ``setVariable`` rule: a name goes to the innermost scope that already has it
    (the task's own locals, then each enclosing sub-process), else to the process variables.
    """
    chain, pvars = _scopes(task)
    local = local_names(task)
    own = locals_of(task)
    changes: dict[str, dict[str, Any]] = {}
    targets: dict[str, dict[str, Any]] = {}

    def target(name: str) -> dict[str, Any]:
        return next((scope for scope in chain if name in scope), pvars)

    for name, value in task.data.items():
        if name in RESERVED:
            continue
        if name in local:
            own[name] = value
            continue
        if name in given and given[name] == value:
            continue
        scope = target(name)
        if name in scope and scope[name] == value:
            continue
        changes[name] = {"from": scope.get(name), "to": value}
        targets[name] = scope
    outputs = _io(task).get("outputs", ())
    if outputs:
        context = {**view(task), **task.data}
        for param in outputs:
            name = param["name"]
            value = evaluate(task, param["value"], context, Phrase("output parameter '{name}'", name=name))
            scope = target(name)
            if scope.get(name, object()) != value:
                changes[name] = {"from": scope.get(name), "to": value}
                targets[name] = scope
    for name, change in changes.items():
        targets[name][name] = change["to"] if isinstance(change["to"], _IMMUTABLE) else deepcopy(change["to"])
    return changes


def take_changes(task: Task) -> dict[str, dict[str, Any]]:
    """What the task's completion wrote to the process variables (``{name: {from, to}}``), once."""
    changes: dict[str, dict[str, Any]] = getattr(task, CHANGES, None) or {}
    if changes:
        setattr(task, CHANGES, None)
    return changes


# --------------------------------------------------------------------------- SpiffWorkflow hooks

_inherit_data = Task._inherit_data
_on_complete = TaskSpec._on_complete
_merge_child = MultiInstanceTask.merge_child
_execute_script = SpiffBpmnTask.execute_script
_copy_data = CallActivity.copy_data
_update_data = CallActivity.update_data


def _mapped(task: Task, mappings: list[dict[str, Any]], source: dict[str, Any], what: str) -> dict[str, Any]:
    """Camunda ``camunda:in``/``camunda:out``: ``variables="all"``, ``source``/``target`` or ``sourceExpression``."""
    out: dict[str, Any] = {}
    for mapping in mappings:
        if mapping.get("all"):
            out.update(source)
        elif mapping.get("expression") is not None:
            out[mapping["target"]] = evaluate(task, mapping["expression"], source, f"{what} '{mapping['target']}'")
        else:
            out[mapping["target"]] = source.get(mapping["source"])
    return out


def _scoped_copy_data(self: CallActivity, my_task: Task, subworkflow: Any) -> None:
    """A called process starts with the variables passed in (its own set, Camunda's rule)."""
    if not is_scoped(my_task.workflow) or not _is_call(self):
        _copy_data(self, my_task, subworkflow)
        return
    source = view(my_task)
    mapping = _io(my_task)
    io_spec = subworkflow.spec.io_specification
    if "in" in mapping:  # Camunda: only what camunda:in passes (nothing without one)
        passed = _mapped(my_task, mapping["in"], source, "camunda:in")
    elif io_spec is not None and io_spec.data_inputs:  # SpiffWorkflow: the called process's data inputs
        passed = {}
        for var in io_spec.data_inputs:
            if var.bpmn_id not in source:
                raise WorkflowDataException("You are missing a required Data Input for a call activity.",
                                            task=my_task, data_input=var)
            passed[var.bpmn_id] = source[var.bpmn_id]
    else:  # SpiffWorkflow without inputs: everything the call activity sees
        passed = source
    subworkflow.data[PVARS] = deepcopy(passed)


def _scoped_update_data(self: CallActivity, my_task: Task, subworkflow: Any) -> None:
    """What a called process hands back is written when the call activity completes."""
    if not is_scoped(my_task.workflow) or not _is_call(self):
        _update_data(self, my_task, subworkflow)
        return
    child = subworkflow.data.get(PVARS, {})
    mapping = _io(my_task)
    io_spec = subworkflow.spec.io_specification
    if "out" in mapping:
        returned = _mapped(my_task, mapping["out"], child, "camunda:out")
    elif io_spec is not None and io_spec.data_outputs:
        returned = {}
        for var in io_spec.data_outputs:
            if var.bpmn_id not in child:
                raise WorkflowDataException("The Data Output was not available in the subprocess output.",
                                            task=my_task, data_output=var)
            returned[var.bpmn_id] = child[var.bpmn_id]
    else:
        returned = dict(child)
    my_task.internal_data[OUTPUTS] = deepcopy(returned)


def _scoped_inherit_data(self: Task) -> None:
    if is_scoped(self.workflow):
        self.data = _copy(view(self))
    else:
        _inherit_data(self)


def _scoped_on_complete(self: TaskSpec, my_task: Task) -> None:
    if not is_scoped(my_task.workflow):
        _on_complete(self, my_task)
        return
    # TaskSpec._on_complete with the write between the task's own hooks and its successors' update
    self._on_complete_hook(my_task)
    given = getattr(my_task, GIVEN, None)
    if given is not None:
        setattr(my_task, GIVEN, None)
        setattr(my_task, CHANGES, _commit(my_task, given))
    for child in my_task.children:
        if not child.has_state(TaskState.FINISHED_MASK):
            child.task_spec._update(child)
    my_task.workflow._task_completed_notify(my_task)


def _scoped_merge_child(self: MultiInstanceTask, workflow: Any, child: Task) -> None:
    if is_scoped(child.workflow) and (self.data_output is None or self.output_item is None):
        # the instance's writes are process variables already and its element variable is local
        child.parent.internal_data["merged"].append(str(child.id))
        return
    _merge_child(self, workflow, child)


def _scoped_execute_script(self: SpiffBpmnTask, my_task: Task, script: str) -> None:
    if script is self.prescript and is_scoped(my_task.workflow) and not my_task.has_state(TaskState.FINISHED_MASK):
        given = deepcopy(my_task.data)
        _execute_script(self, my_task, script)
        _commit(my_task, given)  # a pre-script runs when the task becomes ready: its writes count now
        return
    _execute_script(self, my_task, script)


Task._inherit_data = _scoped_inherit_data
TaskSpec._on_complete = _scoped_on_complete
MultiInstanceTask.merge_child = _scoped_merge_child
SpiffBpmnTask.execute_script = _scoped_execute_script
CallActivity.copy_data = _scoped_copy_data
CallActivity.update_data = _scoped_update_data
