"""Service, send and business-rule tasks that wait for external workers (Camunda's external tasks).

sopflow never runs user code other than sandboxed expressions and scripts, so every
element that BPMN gives an implementation (a Java class, an expression, a connector, a
SpiffWorkflow service operator) becomes an *external task* on a topic instead:

| the element says | topic |
|---|---|
| ``camunda:type="external" camunda:topic="T"`` (Flowable: ``flowable:type="external-worker" flowable:topic="T"``) | ``T`` |
| ``camunda:class="com.acme.Billing"`` (also ``flowable:``/``activiti:``) | ``com.acme.Billing`` |
| ``camunda:delegateExpression="${billing}"`` / ``camunda:expression="${mailer.send(x)}"`` | ``billing`` / ``mailer.send(x)`` (the text inside ``${...}``) |
| a ``camunda:connector`` with ``camunda:connectorId="http-connector"`` | ``http-connector`` |
| ``spiffworkflow:serviceTaskOperator id="http/GetRequest"`` | ``http/GetRequest`` (its parameters are evaluated in the sandbox and handed to the worker) |

A ``serviceTask`` must say one of these (Camunda refuses a service task without an
implementation at deploy; so does sopflow, naming the element). A ``sendTask`` or a
``businessRuleTask`` is external only when it says one of these; otherwise a send task
throws its message and a business-rule task calls its DMN decision as before.

The task spec (:class:`ExternalTaskMixin`) makes SpiffWorkflow *not* run the work: when the
token reaches it, its run hook returns ``None``, which SpiffWorkflow records as STARTED, and
the engine's step loop only ever runs READY tasks. Only the external-task commands finish it
(``task.complete()``) or interrupt it (an error boundary event). Boundary timers and
messages on it work as on any activity.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from lxml import etree
from SpiffWorkflow.bpmn.parser.event_parsers import SendTaskParser
from SpiffWorkflow.bpmn.parser.ValidationException import ValidationException
from SpiffWorkflow.bpmn.serializer.helpers.spec import TaskSpecConverter
from SpiffWorkflow.bpmn.specs.defaults import SendTask as BpmnSendTask
from SpiffWorkflow.bpmn.specs.mixins.bpmn_spec_mixin import BpmnSpecMixin
from SpiffWorkflow.camunda.parser.task_spec import BusinessRuleTaskParser as CamundaBusinessRuleTaskParser
from SpiffWorkflow.camunda.parser.task_spec import CamundaTaskParser
from SpiffWorkflow.camunda.specs.business_rule_task import BusinessRuleTask as CamundaBusinessRuleTask
from SpiffWorkflow.specs.base import TaskSpec
from SpiffWorkflow.spiff.parser.event_parsers import SpiffSendTaskParser
from SpiffWorkflow.spiff.parser.task_spec import BusinessRuleTaskParser as SpiffBusinessRuleTaskParser
from SpiffWorkflow.spiff.parser.task_spec import ServiceTaskParser as SpiffServiceTaskParser
from SpiffWorkflow.spiff.parser.task_spec import SpiffTaskParser
from SpiffWorkflow.spiff.serializer.task_spec import SpiffBpmnTaskConverter
from SpiffWorkflow.spiff.specs.defaults import BusinessRuleTask as SpiffBusinessRuleTask
from SpiffWorkflow.spiff.specs.defaults import SendTask as SpiffSendTask
from SpiffWorkflow.spiff.specs.spiff_task import SpiffBpmnTask
from SpiffWorkflow.task import Task
from SpiffWorkflow.util.task import TaskState

CAMUNDA_NS = "http://camunda.org/schema/1.0/bpmn"
FLOWABLE_NS = "http://flowable.org/bpmn"
ACTIVITI_NS = "http://activiti.org/bpmn"
SPIFF_NS = "http://spiffworkflow.org/bpmn/schema/1.0/core"

_EXPRESSION = re.compile(r"^\s*[$#]\{(.*)\}\s*$", re.S)


@dataclass(frozen=True)
class Implementation:
    """What an element names as its implementation: the topic workers fetch, and where it came from."""

    topic: str
    source: str  # e.g. "camunda:topic", "flowable:class", "spiffworkflow:serviceTaskOperator"
    priority: int = 0


def _strip_expression(value: str) -> str:
    match = _EXPRESSION.match(value)
    return match.group(1).strip() if match else value.strip()


def implementation(node: etree._Element) -> Implementation | None:
    """The external implementation an element declares, in any supported dialect, or None.

    Raises ``ValueError`` with a message for the designer when the declaration is incomplete
    (``type="external"`` without a topic).
    """
    for prefix, ns, external in (("camunda", CAMUNDA_NS, "external"), ("flowable", FLOWABLE_NS, "external-worker"),
                                 ("activiti", ACTIVITI_NS, "external-worker")):
        def attr(name: str, ns: str = ns) -> str | None:
            value = node.get(f"{{{ns}}}{name}")
            return value.strip() if value is not None and value.strip() else None

        priority_text = attr("taskPriority") or "0"
        priority = int(priority_text) if re.fullmatch(r"-?\d{1,9}", priority_text) else 0
        kind = attr("type")
        if kind is not None and kind == external:
            topic = attr("topic")
            if topic is None:
                raise ValueError(f'{prefix}:type="{external}" needs a {prefix}:topic naming what workers fetch')
            return Implementation(topic, f"{prefix}:topic", priority)
        for name in ("class", "delegateExpression", "expression"):
            value = attr(name)
            if value is not None:
                return Implementation(_strip_expression(value), f"{prefix}:{name}", priority)
        if prefix == "camunda":
            connector = node.find(f"{{*}}extensionElements/{{{CAMUNDA_NS}}}connector/{{{CAMUNDA_NS}}}connectorId")
            if connector is not None and (connector.text or "").strip():
                return Implementation((connector.text or "").strip(), "camunda:connector", priority)
    operator = node.find(f"{{*}}extensionElements/{{{SPIFF_NS}}}serviceTaskOperator")
    if operator is not None and operator.get("id"):
        return Implementation(str(operator.get("id")), "spiffworkflow:serviceTaskOperator")
    return None


class ExternalTaskMixin(TaskSpec):  # type: ignore[misc]
    """A task that waits, STARTED, until an external worker completes it through sopflow's commands.

    ``params`` (SpiffWorkflow operator parameters: name -> ``{"value": expression, "type": ...}``)
    are evaluated in the sandbox when the token arrives and kept in the task's internal data
    (``external_params``), for the worker to read as local variables.
    """

    def __init__(self, wf_spec: Any, bpmn_id: str, topic: str = "", source: str = "", priority: int = 0,
                 element_type: str = "serviceTask", params: dict[str, Any] | None = None,
                 **kwargs: Any) -> None:
        super().__init__(wf_spec, bpmn_id, **kwargs)
        self.topic = topic
        self.source = source
        self.priority = priority
        self.element_type = element_type
        self.params = params or {}

    def _run_hook(self, my_task: Task) -> None:
        if self.params:
            engine = my_task.workflow.script_engine
            my_task.internal_data["external_params"] = {
                name: engine.evaluate(my_task, param["value"]) for name, param in self.params.items()}
        return None  # SpiffWorkflow marks the task STARTED: it waits for an external-task command


class CamundaExternalTask(ExternalTaskMixin, BpmnSpecMixin):  # type: ignore[misc]
    pass


class SpiffExternalTask(ExternalTaskMixin, SpiffBpmnTask):  # type: ignore[misc]
    pass


def is_waiting_external(task: Task) -> bool:
    """A STARTED external task: one that workers may fetch."""
    return task.state == TaskState.STARTED and isinstance(task.task_spec, ExternalTaskMixin)


def _external_fields(spec: ExternalTaskMixin) -> dict[str, Any]:
    return {"topic": spec.topic, "source": spec.source, "priority": spec.priority,
            "element_type": spec.element_type, "params": spec.params}


class CamundaExternalTaskConverter(TaskSpecConverter):  # type: ignore[misc]
    def to_dict(self, spec: ExternalTaskMixin) -> dict[str, Any]:
        dct: dict[str, Any] = self.get_default_attributes(spec)
        dct.update(_external_fields(spec))
        return dct

    def from_dict(self, dct: dict[str, Any]) -> Any:
        return self.task_spec_from_dict(dct)


class SpiffExternalTaskConverter(SpiffBpmnTaskConverter):  # type: ignore[misc]
    def to_dict(self, spec: ExternalTaskMixin) -> dict[str, Any]:
        dct: dict[str, Any] = super().to_dict(spec)
        dct.update(_external_fields(spec))
        return dct


# ------------------------------------------------------------------ parsers


def _implementation_or_refuse(parser: Any) -> Implementation | None:
    try:
        return implementation(parser.node)
    except ValueError as exc:
        raise ValidationException(str(exc), node=parser.node, file_name=parser.filename) from None


def _local(parser: Any) -> str:
    return str(etree.QName(parser.node).localname)


def _refuse_without(parser: Any) -> None:
    raise ValidationException(
        f"{_local(parser)} '{parser.bpmn_id}' has no implementation: sopflow hands service work to external "
        'workers, so give it camunda:type="external" camunda:topic="..." (or camunda:class, '
        "camunda:delegateExpression, camunda:expression, flowable:type=\"external-worker\" flowable:topic, "
        "or a spiffworkflow:serviceTaskOperator)",
        node=parser.node, file_name=parser.filename)


def _spiff_params(parser: Any) -> dict[str, Any]:
    operator = SpiffTaskParser._parse_extensions(parser.node).get("serviceTaskOperator") or {}
    params: dict[str, Any] = operator.get("parameters") or {}
    return params


class CamundaServiceTaskParser(CamundaTaskParser):  # type: ignore[misc]
    def create_task(self) -> Any:
        impl = _implementation_or_refuse(self)
        if impl is None:
            _refuse_without(self)
        assert impl is not None  # noqa: S101 - _refuse_without raised
        return CamundaExternalTask(self.spec, self.bpmn_id, topic=impl.topic, source=impl.source,
                                   priority=impl.priority, element_type=_local(self), **self.bpmn_attributes)


class CamundaExternalSendTaskParser(SendTaskParser):  # type: ignore[misc]
    def create_task(self) -> Any:
        impl = _implementation_or_refuse(self)
        if impl is None:
            return super().create_task()
        return CamundaExternalTask(self.spec, self.bpmn_id, topic=impl.topic, source=impl.source,
                                   priority=impl.priority, element_type="sendTask", **self.bpmn_attributes)

    def parse_extensions(self, node: Any = None) -> dict[str, Any]:
        extensions: dict[str, Any] = CamundaTaskParser.parse_extensions(self, node)
        return extensions


class CamundaExternalBusinessRuleTaskParser(CamundaBusinessRuleTaskParser):  # type: ignore[misc]
    @staticmethod
    def get_decision_ref(node: Any) -> str | None:
        ref = node.get(f"{{{CAMUNDA_NS}}}decisionRef")
        return str(ref) if ref is not None else None  # None for an external one (the stock parser raises)

    def create_task(self) -> Any:
        impl = None if self.node.get(f"{{{CAMUNDA_NS}}}decisionRef") else _implementation_or_refuse(self)
        if impl is None:
            if not self.node.get(f"{{{CAMUNDA_NS}}}decisionRef"):
                raise ValidationException(
                    f"businessRuleTask '{self.bpmn_id}' needs camunda:decisionRef (a DMN decision) or an "
                    'external implementation (camunda:type="external" camunda:topic="...")',
                    node=self.node, file_name=self.filename)
            return super().create_task()
        return CamundaExternalTask(self.spec, self.bpmn_id, topic=impl.topic, source=impl.source,
                                   priority=impl.priority, element_type="businessRuleTask", **self.bpmn_attributes)


def _spiff_external(parser: Any, impl: Implementation, element_type: str) -> Any:
    extensions = parser.parse_extensions()
    return SpiffExternalTask(parser.spec, parser.bpmn_id, topic=impl.topic, source=impl.source,
                             priority=impl.priority, element_type=element_type,
                             params=_spiff_params(parser) if impl.source == "spiffworkflow:serviceTaskOperator"
                             else None,
                             prescript=extensions.get("preScript"), postscript=extensions.get("postScript"),
                             **parser.bpmn_attributes)


class SpiffExternalServiceTaskParser(SpiffServiceTaskParser):  # type: ignore[misc]
    def create_task(self) -> Any:
        impl = _implementation_or_refuse(self)
        if impl is None:
            _refuse_without(self)
        assert impl is not None  # noqa: S101 - _refuse_without raised
        return _spiff_external(self, impl, "serviceTask")


class SpiffExternalSendTaskParser(SpiffSendTaskParser):  # type: ignore[misc]
    def create_task(self) -> Any:
        impl = _implementation_or_refuse(self)
        return super().create_task() if impl is None else _spiff_external(self, impl, "sendTask")


class SpiffExternalBusinessRuleTaskParser(SpiffBusinessRuleTaskParser):  # type: ignore[misc]
    def create_task(self) -> Any:
        impl = None if self.get_decision_ref(self.node) else _implementation_or_refuse(self)
        return super().create_task() if impl is None else _spiff_external(self, impl, "businessRuleTask")


def _tag(name: str) -> str:
    return f"{{http://www.omg.org/spec/BPMN/20100524/MODEL}}{name}"


CAMUNDA_PARSERS: dict[str, tuple[Any, Any]] = {
    _tag("serviceTask"): (CamundaServiceTaskParser, CamundaExternalTask),
    _tag("sendTask"): (CamundaExternalSendTaskParser, BpmnSendTask),
    _tag("businessRuleTask"): (CamundaExternalBusinessRuleTaskParser, CamundaBusinessRuleTask),
}
SPIFF_PARSERS: dict[str, tuple[Any, Any]] = {
    _tag("serviceTask"): (SpiffExternalServiceTaskParser, SpiffExternalTask),
    _tag("sendTask"): (SpiffExternalSendTaskParser, SpiffSendTask),
    _tag("businessRuleTask"): (SpiffExternalBusinessRuleTaskParser, SpiffBusinessRuleTask),
}
# Serializer registrations, one per dialect (engine.serialization)
CONVERTERS = {
    "camunda": {CamundaExternalTask: CamundaExternalTaskConverter},
    "spiff": {SpiffExternalTask: SpiffExternalTaskConverter},
}
