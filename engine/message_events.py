"""Message event semantics sopflow adds on top of SpiffWorkflow's, shared by both dialects.

- :class:`CamundaMessage` replaces SpiffWorkflow's Camunda-dialect message definition at
  deploy time. SpiffWorkflow's expects every payload wrapped as ``{"payload", "result_var"}``
  (``KeyError: 'payload'`` for anything else) and stores it under ``<element>_Response``;
  Camunda 7 merges a message's variables into the process variables. This one carries a
  plain payload, merges a mapping into the catching task's data, or stores it under
  ``camunda:resultVariable`` when the element names one.
- :func:`event_correlations` computes a message's correlation values (BPMN correlation
  properties with retrieval expressions, ``{correlation key: {property: value}}``) the way
  SpiffWorkflow does, but a property whose expression cannot be evaluated on the payload
  is left out instead of failing the sender.
- :func:`expected_correlations` and :func:`correlation_matches` mirror SpiffWorkflow's
  ``MessageEventDefinition.catches`` so routing across instances can decide from stored
  ``event_subscriptions`` rows, without loading workflows, exactly what the catching
  instance will accept when the message reaches it.
"""
from __future__ import annotations

from copy import deepcopy
from typing import Any

from SpiffWorkflow.bpmn import BpmnEvent
from SpiffWorkflow.bpmn.specs.event_definitions.message import MessageEventDefinition
from SpiffWorkflow.bpmn.specs.event_definitions.multiple import MultipleEventDefinition
from SpiffWorkflow.camunda.specs.event_definitions import MessageEventDefinition as SpiffCamundaMessage
from SpiffWorkflow.task import Task

from engine.sandbox import script_engine


class CamundaMessage(SpiffCamundaMessage):  # type: ignore[misc]
    """A Camunda-dialect message: plain payloads, merged into the process variables (Camunda 7)."""

    def throw(self, my_task: Task) -> None:
        # Camunda 7 has no payload expression of its own; ``camunda:expression`` (when set) is
        # evaluated like SpiffWorkflow's ``messagePayload``, else the process variables are sent
        # (the BPMN default SpiffWorkflow's plain dialect also uses).
        if self.expression:
            payload = my_task.workflow.script_engine.evaluate(my_task, self.expression)
        else:
            payload = deepcopy(my_task.data)
        correlations = self.get_correlations(my_task, payload) if isinstance(payload, dict) else {}
        my_task.workflow.correlations.update(correlations)
        my_task.workflow.top_workflow.catch(BpmnEvent(self, payload=payload, correlations=correlations))

    def catch(self, my_task: Task, event: Any = None) -> None:
        MessageEventDefinition.catch(self, my_task, event)

    def get_correlations(self, my_task: Task, payload: Any) -> dict[str, dict[str, Any]]:
        return event_correlations(self, payload)

    def update_internal_data(self, my_task: Task, event: Any) -> None:
        my_task.internal_data[self.name] = event.payload

    def update_task_data(self, my_task: Task) -> None:
        payload = my_task.internal_data.pop(self.name, None)
        if self.result_var:
            my_task.data[self.result_var] = payload
        elif isinstance(payload, dict):
            my_task.data.update(payload)


def adopt_camunda_messages(spec: Any) -> None:
    """Give every Camunda-dialect message definition of ``spec`` sopflow's semantics (at deploy)."""

    def adopt(ed: Any) -> None:
        if isinstance(ed, MultipleEventDefinition):
            for inner in ed.event_definitions:
                adopt(inner)
        elif type(ed) is SpiffCamundaMessage:
            ed.__class__ = CamundaMessage

    for task_spec in spec.task_specs.values():
        adopt(getattr(task_spec, "event_definition", None))


def event_correlations(definition: Any, payload: Any) -> dict[str, dict[str, Any]]:
    """``{correlation key: {property: value}}`` of a message with ``payload``, as SpiffWorkflow computes it.

    Each correlation property's retrieval expression is evaluated (in the sandbox) with the
    payload's names; one that fails (the payload lacks the name) is left out, so the
    message correlates only with instances that expect no value for it.
    """
    properties = getattr(definition, "correlation_properties", None) or []
    if not properties or not isinstance(payload, dict):
        return {}
    environment = script_engine().environment
    found: dict[str, dict[str, Any]] = {}
    for prop in properties:
        try:
            value = environment.evaluate(prop.retrieval_expression, dict(payload))
        except Exception:  # noqa: BLE001, S112 - a payload without the property does not correlate on it
            continue
        for key in prop.correlation_keys:
            found.setdefault(key, {})[prop.name] = value
    return found


def expected_correlations(task: Task, definition: Any) -> dict[str, dict[str, Any]] | None:
    """What a waiting catch event requires of a message's correlations; ``None`` accepts any.

    SpiffWorkflow's rule: a definition without correlation properties, or an instance that
    has no correlation values yet, catches every message of that name.
    """
    if not getattr(definition, "correlation_properties", None):
        return None
    values: dict[str, dict[str, Any]] = task.workflow.correlations
    return deepcopy(values) if values else None


def correlation_matches(expected: dict[str, Any] | None, sent: dict[str, Any]) -> bool:
    """Whether a message with correlations ``sent`` is caught by a subscription expecting ``expected``.

    SpiffWorkflow's ``catches``: any correlation key of the message whose values equal the
    instance's values for that key.
    """
    if not expected:
        return True
    return any(same_json(sent.get(key), expected.get(key)) for key in sent)


def same_json(a: Any, b: Any) -> bool:
    """JSON equality that tells ``True`` from ``1`` (Python's ``==`` does not)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_json(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same_json(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)
