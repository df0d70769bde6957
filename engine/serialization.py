"""Workflow state <-> JSON, with specs stored once per definition version.

SpiffWorkflow embeds the whole spec and every call-activity spec in each serialized
instance. We register a lean converter for ``BpmnWorkflow`` that leaves them out;
the specs live in ``process_definitions.spec`` and are restored once per process
(cached by definition id) and handed back on load.

Invariants kept here:
- every load re-attaches the sandboxed script engine (SpiffWorkflow does not
  serialize it and would silently fall back to plain ``exec``);
- task data may hold what forms and scripts produce: JSON types plus ``date``,
  ``datetime``, ``time``, ``timedelta``, ``Decimal`` and ``UUID``.
"""
from __future__ import annotations

import contextvars
import json
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, time
from decimal import Decimal
from threading import Lock
from typing import Any
from uuid import UUID

from SpiffWorkflow.bpmn import BpmnWorkflow
from SpiffWorkflow.bpmn.serializer import BpmnWorkflowSerializer
from SpiffWorkflow.bpmn.serializer.default.workflow import BpmnWorkflowConverter, WorkflowConverter
from SpiffWorkflow.bpmn.serializer.helpers.registry import DefaultRegistry
from SpiffWorkflow.camunda.serializer.config import CAMUNDA_CONFIG
from SpiffWorkflow.camunda.serializer.event_definition import MessageEventDefinitionConverter
from SpiffWorkflow.spiff.serializer.config import SPIFF_CONFIG

from engine import external
from engine.errors import InvalidDefinition
from engine.message_events import CamundaMessage
from engine.sandbox import script_engine

_specs: contextvars.ContextVar[tuple[Any, dict[str, Any]]] = contextvars.ContextVar("sopflow_specs")


class _LeanWorkflowConverter(BpmnWorkflowConverter):
    """Like SpiffWorkflow's converter, minus the embedded specs (we store them per definition)."""

    def to_dict(self, workflow: BpmnWorkflow) -> dict[str, Any]:
        dct: dict[str, Any] = WorkflowConverter.to_dict(self, workflow)
        dct["subprocesses"] = self.mapping_to_dict(workflow.subprocesses)
        dct["bpmn_events"] = self.registry.convert(workflow.bpmn_events)
        return dct

    def from_dict(self, dct: dict[str, Any]) -> BpmnWorkflow:
        spec, subprocess_specs = _specs.get()
        dct = {**dct, "spec": None, "subprocess_specs": {}}
        dct.pop("spec")
        dct.pop("subprocess_specs")
        workflow = self.target_class(spec, subprocess_specs, deserializing=True)
        workflow.tasks = self.mapping_from_dict(dct["tasks"], UUID, workflow=workflow)
        workflow.task_tree = workflow.tasks.get(UUID(dct["root"]))
        self.set_default_attributes(workflow, dct)
        self.subprocesses_from_dict(dict(dct["subprocesses"]), workflow)
        workflow.bpmn_events = self.registry.restore(dct.get("bpmn_events", []))
        return workflow


def _registry(config: dict[Any, Any], dialect: str) -> DefaultRegistry:
    registry = DefaultRegistry()
    registry.register(date, lambda v: {"value": v.isoformat()}, lambda v: date.fromisoformat(v["value"]))
    registry.register(time, lambda v: {"value": v.isoformat()}, lambda v: time.fromisoformat(v["value"]))
    registry.register(Decimal, lambda v: {"value": str(v)}, lambda v: Decimal(v["value"]))
    return BpmnWorkflowSerializer.configure(
        {**config, **external.CONVERTERS[dialect], BpmnWorkflow: _LeanWorkflowConverter}, registry)


# One serializer per dialect: the registry keys converters by class *name*, and both
# dialects have a ``UserTask``, ``BusinessRuleTask``, ... of their own.
SERIALIZERS = {
    "spiff": BpmnWorkflowSerializer(_registry(SPIFF_CONFIG, "spiff")),
    "camunda": BpmnWorkflowSerializer(_registry({**CAMUNDA_CONFIG, CamundaMessage: MessageEventDefinitionConverter},
                                                "camunda")),
}
STATE_FORMAT = f"sopflow-1/spiff-{SERIALIZERS['spiff'].VERSION}"


def dump_specs(dialect: str, spec: Any, subprocess_specs: dict[str, Any],
              io: dict[str, Any] | None = None) -> str:
    """The definition's specs as stored; raises InvalidDefinition when an element cannot be stored.

    ``io`` is its camunda:inputOutput (see engine.variables). SpiffWorkflow's serializer has
    no converter for some parsed classes (its registry is per dialect); such a diagram is
    refused at deploy instead of failing later.
    """
    registry = SERIALIZERS[dialect].registry
    try:
        return json.dumps({
            "dialect": dialect,
            "spec": registry.convert(spec),
            "subprocess_specs": {name: registry.convert(s) for name, s in subprocess_specs.items()},
            **({"io": io} if io else {}),
        })
    except (TypeError, ValueError) as exc:
        raise InvalidDefinition(
            "process '{name}' uses an element sopflow cannot store in the {dialect} dialect ({exc}); "
            "remove or replace that element", process=spec.name,
            params={"name": spec.name, "dialect": dialect, "exc": exc}) from None


@dataclass(frozen=True)
class Specs:
    dialect: str
    spec: Any
    subprocess_specs: dict[str, Any]


def load_specs(text: str) -> Specs:
    dct = json.loads(text)
    registry = SERIALIZERS[dct["dialect"]].registry
    specs = Specs(dct["dialect"], registry.restore(dct["spec"]),
                  {n: registry.restore(s) for n, s in dct["subprocess_specs"].items()})
    if dct.get("io"):  # local-variable declarations, read by engine.variables through each spec
        for spec in [specs.spec, *specs.subprocess_specs.values()]:
            spec.sopflow_io = dct["io"]
    return specs


class SpecCache:
    """Restored specs per definition id (definitions are immutable once deployed)."""

    def __init__(self, size: int = 256) -> None:
        self._items: OrderedDict[str, Specs] = OrderedDict()
        self._size = size
        self._lock = Lock()

    def get(self, definition_id: str, loader: Callable[[], str]) -> Specs:
        with self._lock:
            if definition_id in self._items:
                self._items.move_to_end(definition_id)
                return self._items[definition_id]
        specs = load_specs(loader())
        with self._lock:
            self._items[definition_id] = specs
            while len(self._items) > self._size:
                self._items.popitem(last=False)
        return specs


SPECS = SpecCache()


def new_workflow(specs: Specs) -> BpmnWorkflow:
    return BpmnWorkflow(specs.spec, specs.subprocess_specs, script_engine=script_engine())


def dump_state(specs: Specs, workflow: BpmnWorkflow) -> str:
    state: str = SERIALIZERS[specs.dialect].serialize_json(workflow)
    return state


def load_state(state: str, specs: Specs) -> BpmnWorkflow:
    token = _specs.set((specs.spec, specs.subprocess_specs))
    try:
        workflow = SERIALIZERS[specs.dialect].deserialize_json(state)
    finally:
        _specs.reset(token)
    workflow.script_engine = script_engine()
    return workflow
