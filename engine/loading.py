"""Uploaded BPMN/DMN files -> SpiffWorkflow specs plus the metadata sopflow needs.

- Files are parsed by :mod:`engine.xmlsafe`; SpiffWorkflow gets the safe trees.
- The dialect is chosen per deployment: a bundle whose BPMN declares the Camunda
  namespace is read with a Camunda parser that keeps ``assignee``, ``candidateUsers``,
  ``candidateGroups``, ``dueDate``, ``followUpDate``, ``priority`` (stock
  ``CamundaParser`` drops them); otherwise SpiffWorkflow's own dialect, whose
  ``spiffworkflow:properties`` carry the same names.
- User-task metadata is normalised into :class:`UserTaskMeta`; lanes give candidate
  groups when nothing more specific is set; ``bpmn:documentation`` is the SOP text.
- Every script, condition and timer/loop expression is compiled in the sandbox at
  deploy time; a failure names the file, element id and line (SpiffWorkflow reports
  neither line numbers nor syntax errors before run time).
- Multi-instance collections: Camunda writes ``camunda:collection="${approvers}"`` (an
  expression) or ``"approvers"`` (a variable name); SpiffWorkflow's Camunda parser only
  understands the name, so ``${name}`` is handed to it as ``name``, and any other
  expression is refused at deploy with what to write instead.
- Ad-hoc sub-processes in SpiffWorkflow's dialect read their data objects with the
  dialect's own class (the stock parser makes ones its serializer cannot store).
"""
from __future__ import annotations

import ast
import hashlib
import re
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from lxml import etree
from SpiffWorkflow.bpmn.parser.ProcessParser import AdHocParser, ProcessParser
from SpiffWorkflow.bpmn.parser.util import full_tag
from SpiffWorkflow.bpmn.parser.ValidationException import ValidationException
from SpiffWorkflow.bpmn.specs import AdHocSubprocessSpec
from SpiffWorkflow.bpmn.specs.event_definitions.timer import TimerEventDefinition
from SpiffWorkflow.camunda.parser.CamundaParser import CamundaParser
from SpiffWorkflow.camunda.parser.task_spec import UserTaskParser as CamundaUserTaskParser
from SpiffWorkflow.camunda.specs.user_task import UserTask as CamundaUserTask
from SpiffWorkflow.exceptions import SpiffWorkflowException
from SpiffWorkflow.spiff.parser.process import SpiffBpmnParser, SpiffProcessParser

from engine import clock, external, sandbox, xmlsafe
from engine.config import Settings
from engine.errors import InvalidDefinition, Phrase
from engine.message_events import adopt_camunda_messages

BPMN_NS = "http://www.omg.org/spec/BPMN/20100524/MODEL"
CAMUNDA_NS = "http://camunda.org/schema/1.0/bpmn"
SPIFF_NS = "http://spiffworkflow.org/bpmn/schema/1.0/core"
DMN_NAMESPACES = (
    "https://www.omg.org/spec/DMN/20191111/MODEL/",
    "http://www.omg.org/spec/DMN/20151101/dmn.xsd",
    "http://www.omg.org/spec/DMN/20180521/MODEL/",
)
CAMUNDA_TASK_ATTRIBUTES = ("assignee", "candidateUsers", "candidateGroups", "dueDate", "followUpDate", "priority")


# Above this many sequence flows in one process, its nodes are parsed bottom-up (below).
PARSE_BOTTOM_UP_ABOVE = 150


class _BottomUpParsing:
    """Parse a large process's nodes bottom-up, so parsing never recurses along a long path.

    SpiffWorkflow's ``TaskParser.parse_node`` parses a node, then recursively each target
    of its outgoing flows: a linear chain of n elements recurses about 2n Python frames,
    and a chain of ~470 elements exhausted the default recursion limit (``RecursionError``
    at deploy). A node whose targets are parsed already returns at once, so we first
    parse the nodes reachable from the start events in DFS post-order (computed with an
    explicit stack): every parse then meets only parsed targets (only a loop's back edge
    can still recurse, as far as the loop is long). Boundary events are left to the task
    they are attached to, which parses them itself.

    The resulting spec is the same graph; only the order of ``spec.task_specs`` differs,
    and that order is part of a deployed definition's content hash, so small processes
    (every one the stock parser could handle) keep the stock order and their versions.
    """

    get_outgoing_sequence_flows: Any
    get_boundary_events: Any
    get_node_by_id: Any
    outgoing_sequence_flows: dict[str, list[Any]]
    boundary_events_by_attached: dict[str, list[Any]]
    xpath: Any
    parse_node: Any

    def _successors(self, node_id: str) -> list[str]:
        targets = [str(f.get("targetRef")) for f in self.get_outgoing_sequence_flows(node_id)]
        return targets + [str(e.get("id")) for e in self.get_boundary_events(node_id)]

    def _post_order(self) -> list[Any]:
        order: list[str] = []
        seen: set[str] = set()
        for start in self.xpath("./bpmn:startEvent"):
            root = str(start.get("id"))
            if root in seen:
                continue
            seen.add(root)
            stack = [(root, iter(self._successors(root)))]
            while stack:
                node_id, successors = stack[-1]
                target = next(successors, None)
                if target is None:
                    stack.pop()
                    order.append(node_id)
                elif target not in seen and self.get_node_by_id(target) is not None:
                    seen.add(target)
                    stack.append((target, iter(self._successors(target))))
        boundary = {str(e.get("id")) for events in self.boundary_events_by_attached.values() for e in events}
        return [self.get_node_by_id(n) for n in order if n not in boundary]

    def _parse_bottom_up(self) -> None:
        if sum(len(flows) for flows in self.outgoing_sequence_flows.values()) > PARSE_BOTTOM_UP_ABOVE:
            for node in self._post_order():
                self.parse_node(node)


class _BottomUpProcessParser(_BottomUpParsing, ProcessParser):
    def add_tasks(self) -> None:
        self._parse_bottom_up()
        super().add_tasks()


class _BottomUpSpiffProcessParser(_BottomUpParsing, SpiffProcessParser):
    def add_tasks(self) -> None:
        self._parse_bottom_up()
        super().add_tasks()


class _AdHocParser(AdHocParser):
    """Ad-hoc sub-processes that can finish without a ``completionCondition``.

    BPMN: without one, an ad-hoc sub-process completes when its activities are done.
    SpiffWorkflow 3.2 evaluates the missing condition (``None``) whenever an activity
    completes and fails, so the sub-process is given the condition ``False`` ("never
    early"): it then ends when every activity has run.
    """

    def create_spec(self) -> Any:
        spec = super().create_spec()
        if not (spec.completion_condition or "").strip():
            spec.completion_condition = "False"
        return spec


_ad_hoc_path_complete = AdHocSubprocessSpec.path_complete


def _path_complete(self: AdHocSubprocessSpec, workflow: Any, task: Any) -> None:
    # SpiffWorkflow 3.2 pops "data_objects" from each copy of the sub-process's data, which
    # only exists when the sub-process declares a data object (KeyError otherwise)
    workflow.data.setdefault("data_objects", {})
    _ad_hoc_path_complete(self, workflow, task)


AdHocSubprocessSpec.path_complete = _path_complete


class _SpiffAdHocParser(_AdHocParser):
    """In SpiffWorkflow's dialect, with its data-object class (the stock one's cannot be serialized)."""

    parse_data_object = SpiffProcessParser.parse_data_object


class _InboxCamundaUserTaskParser(CamundaUserTaskParser):
    """Camunda user-task parser that keeps the inbox attributes the stock one drops."""

    def parse_extensions(self, node: Any = None) -> dict[str, Any]:
        extensions: dict[str, Any] = super().parse_extensions(node)
        for name in CAMUNDA_TASK_ATTRIBUTES:
            value = self.node.get(f"{{{CAMUNDA_NS}}}{name}")
            if value is not None:
                extensions[f"camunda:{name}"] = value
        return extensions


class InboxCamundaParser(CamundaParser):
    PROCESS_PARSER_CLASS = _BottomUpProcessParser
    OVERRIDE_PARSER_CLASSES = {
        **CamundaParser.OVERRIDE_PARSER_CLASSES,
        full_tag("userTask"): (_InboxCamundaUserTaskParser, CamundaUserTask),
        **external.CAMUNDA_PARSERS,
    }
    AD_HOC_PARSER_CLASS = _AdHocParser


_VARIABLE_EXPRESSION = re.compile(r"^\$\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}$")
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _camunda_loops(name: str, root: etree._Element) -> None:
    """Hand SpiffWorkflow multi-instance collections it can read: ``${approvers}`` -> ``approvers``."""
    for loop in _elements(root, "//bpmn:multiInstanceLoopCharacteristics", namespaces={"bpmn": BPMN_NS}):
        for attribute in ("collection", "elementVariable"):
            key = f"{{{CAMUNDA_NS}}}{attribute}"
            raw = loop.get(key)
            if raw is None:
                continue
            value = raw.strip()
            match = _VARIABLE_EXPRESSION.match(value)
            if match and attribute == "collection":
                loop.set(key, match.group(1))
            elif not _IDENTIFIER.match(value):
                owner = _owner_id(loop)
                params = {"name": name, "owner": owner, "attribute": attribute, "raw": raw}
                if attribute == "collection":
                    raise InvalidDefinition(
                        "{name}: multi-instance element '{owner}' has camunda:{attribute}=\"{raw}\" (the list to "
                        "run once per item); sopflow reads it as a process variable name, e.g. "
                        "camunda:{attribute}=\"approvers\" or \"${{approvers}}\"; compute any other list into a "
                        "variable in an earlier step", file=name, element_id=owner, line=_line(loop),
                        params=params)
                raise InvalidDefinition(
                    "{name}: multi-instance element '{owner}' has camunda:{attribute}=\"{raw}\" (the name each "
                    "instance sees its item under); sopflow reads it as a process variable name, e.g. "
                    "camunda:{attribute}=\"approvers\"", file=name, element_id=owner, line=_line(loop),
                    params=params)


class SopflowSpiffParser(SpiffBpmnParser):
    """SpiffWorkflow's dialect, with service work handed to external workers (engine.external)."""

    PROCESS_PARSER_CLASS = _BottomUpSpiffProcessParser
    OVERRIDE_PARSER_CLASSES = {**SpiffBpmnParser.OVERRIDE_PARSER_CLASSES, **external.SPIFF_PARSERS}
    AD_HOC_PARSER_CLASS = _SpiffAdHocParser


@dataclass
class UserTaskMeta:
    element_id: str
    name: str
    lane: str | None = None
    documentation: str | None = None
    assignee: str | None = None
    candidate_users: list[str] = field(default_factory=list)
    candidate_groups: list[str] = field(default_factory=list)
    form_key: str | None = None
    form_fields: list[dict[str, Any]] = field(default_factory=list)
    due_date: str | None = None
    follow_up_date: str | None = None
    priority: str | None = None
    # names a completion may set beyond its form's fields (property ``writes``; ["*"]: any)
    writes: list[str] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> UserTaskMeta:
        return cls(**data)


@dataclass
class UploadedFile:
    name: str
    data: bytes


@dataclass
class ParsedProcess:
    key: str
    name: str
    resource_name: str
    spec: Any
    subprocess_specs: dict[str, Any]
    user_tasks: dict[str, UserTaskMeta]  # keyed by "<process or subprocess spec name>/<element id>"
    message_names: list[str]
    start_messages: list[str]
    # the none start event's form: {"element_id", "form_key", "form_fields"}, or None
    start_form: dict[str, Any] | None = None
    # camunda:inputOutput per element, keyed like user_tasks: {"inputs": [...], "outputs": [...]}
    io: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class ParsedBundle:
    dialect: str
    processes: list[ParsedProcess]
    checksum: str


def _split_list(value: str | None) -> list[str]:
    return [part.strip() for part in (value or "").split(",") if part.strip()]


def bundle_checksum(files: list[UploadedFile]) -> str:
    digest = hashlib.sha256()
    for f in sorted(files, key=lambda f: f.name):
        digest.update(f.name.encode() + b"\0" + hashlib.sha256(f.data).digest())
    return digest.hexdigest()


_ISO_DURATION = re.compile(r"^-?P(?!$)(\d+Y)?(\d+M)?(\d+W)?(\d+D)?(T(?=\d)(\d+H)?(\d+M)?(\d+(\.\d+)?S)?)?$")


_UNQUOTED_TIME = re.compile(r"^(R\d*/)?(-?P[0-9YMWDTHS.]+|\d{4}-\d{2}-\d{2}\S*)(/\S+)?$")


def _elements(node: etree._Element, path: str, **variables: Any) -> list[etree._Element]:
    """The elements an XPath finds (lxml types its result as any XPath value)."""
    found = node.xpath(path, **variables)
    return [e for e in found if isinstance(e, etree._Element)] if isinstance(found, list) else []


def _line(node: etree._Element) -> int | None:
    line = node.sourceline  # lxml-stubs leave its type out
    return line if isinstance(line, int) else None


def _owner_id(node: etree._Element | None) -> str | None:
    while node is not None:
        if node.get("id"):
            return node.get("id")
        node = node.getparent()
    return None


class _Locator:
    """Find an element's line in the uploaded trees (SpiffWorkflow never reports lines)."""

    def __init__(self, trees: dict[str, etree._Element]) -> None:
        self.trees = trees

    def find(self, element_id: str | None, file_name: str | None = None) -> tuple[str | None, int | None]:
        if not element_id:
            return file_name, None
        for name, root in self.trees.items():
            if file_name and name != file_name:
                continue
            hits = _elements(root, "//*[@id=$id]", id=element_id)
            if hits:
                return name, _line(hits[0])
        return file_name, None


def _check_expressions(name: str, root: etree._Element) -> None:
    """Compile every script and expression of one file in the sandbox; refuse with element and line."""
    checks: list[tuple[etree._Element, str, str]] = []
    ns = {"bpmn": BPMN_NS, "spiffworkflow": SPIFF_NS}
    for el in _elements(root, "//bpmn:script | //spiffworkflow:preScript | //spiffworkflow:postScript",
                        namespaces=ns):
        checks.append((el, el.text or "", "exec"))
    expression_paths = (
        "//bpmn:conditionExpression | //bpmn:loopCardinality | //bpmn:completionCondition"
        " | //bpmn:timeDuration | //bpmn:timeDate | //bpmn:timeCycle"
        # messages: payload expressions and correlation retrieval expressions
        " | //spiffworkflow:messagePayload | //spiffworkflow:processVariableCorrelation/spiffworkflow:expression"
        " | //bpmn:correlationPropertyRetrievalExpression/bpmn:formalExpression"
        " | //bpmn:correlationPropertyRetrievalExpression/bpmn:messagePath"
    )
    for el in _elements(root, expression_paths, namespaces=ns):
        checks.append((el, el.text or "", "eval"))
    timer_tags = {f"{{{BPMN_NS}}}{t}" for t in ("timeDuration", "timeDate", "timeCycle")}
    for el, source, mode in checks:
        text = source.strip()
        if el.tag in timer_tags and _UNQUOTED_TIME.match(text):
            raise InvalidDefinition(
                "{name}: timer '{element}' has the bare value {text}; timer expressions are Python, "
                'so write it quoted, e.g. "PT24H"',
                file=name, element_id=_owner_id(el), line=_line(el),
                params={"name": name, "element": _owner_id(el), "text": text},
            )
        if mode == "eval" and not source.strip():
            raise InvalidDefinition(
                "{name}: empty expression in element '{element}'",
                file=name, element_id=_owner_id(el), line=_line(el),
                params={"name": name, "element": _owner_id(el)},
            )
        try:
            sandbox.check(source.strip() if mode == "eval" else source, mode)
        except sandbox.ScriptRefused as exc:
            start = _line(el)
            line = start + (exc.line - 1 if exc.line else 0) if start else None
            raise InvalidDefinition(
                "{name}: element '{element}' has an invalid script or expression: {exc}",
                file=name, element_id=_owner_id(el), line=line,
                params={"name": name, "element": _owner_id(el), "exc": exc},
            ) from None


def _check_templates(name: str, root: etree._Element) -> None:
    """Check every user/manual task's SOP text as a bounded template (engine.templates); refuse
    with file, element and line: syntax errors, self-calling macros, constant ``range``/``*``/``**``
    beyond the guards, text longer than the output cap, and compiling over a budget."""
    from engine import evaluator

    ns = {"bpmn": BPMN_NS, "spiffworkflow": SPIFF_NS}
    paths = ("//bpmn:userTask/bpmn:documentation | //bpmn:manualTask/bpmn:documentation"
             " | //spiffworkflow:instructionsForEndUser")
    for el in _elements(root, paths, namespaces=ns):
        text = el.text or ""
        if not any(marker in text for marker in ("{{", "{%", "{#")) and len(text) <= evaluator.limits().output_bytes:
            continue  # plain text: nothing to run
        try:
            problem = evaluator.check_template(text)
        except sandbox.ScriptBudgetExceeded as exc:
            problem = (f"compiling it {exc}", None)
        if problem is None:
            continue
        message, offset = problem
        start = _line(el)
        line = start + (offset - 1 if offset else 0) if start else None
        raise InvalidDefinition(
            "{name}: the SOP text of '{element}' cannot be used: {message}",
            file=name, element_id=_owner_id(el), line=line,
            params={"name": name, "element": _owner_id(el), "message": message},
        )


# A '?' outside quotes stands for the input value in a DMN input entry (SpiffWorkflow's rule).
_DMN_PLACEHOLDER = re.compile(r"""(\?)(?=(?:[^'"]|['"][^'"]*['"])*$)""")


def _dmn_children(node: etree._Element, kind: str) -> list[etree._Element]:
    return [c for c in node if isinstance(c.tag, str) and etree.QName(c).localname == kind]


def _dmn_text(node: etree._Element) -> tuple[etree._Element, str]:
    """A DMN expression's ``<text>`` element and its text (the node itself and "" without one)."""
    found = _dmn_children(node, "text")
    return (found[0], found[0].text or "") if found else (node, "")


def _check_dmn(name: str, root: etree._Element) -> None:
    """Compile every DMN expression as SpiffWorkflow will evaluate it; refuse with element and line.

    An input entry is evaluated against its column's input expression: ``4 < ? < 6`` with
    ``?`` bound to the input; an entry that is an expression on its own (``"gold"``, ``250``)
    as ``(input) == (entry)``; any other (``> 100``, ``in (1, 2)``) appended to the input.
    SpiffWorkflow 3.2 appends without a space (``amount`` + ``in (1, 2)`` reads as a call of
    ``amountin``), so such entries get a leading space in the tree handed to its parser.
    """

    def refuse(el: etree._Element, what: str, source: str, exc: Exception) -> InvalidDefinition:
        return InvalidDefinition(
            "{name}: {what} '{value}' of '{element}' is not a valid expression: {exc}",
            file=name, element_id=_owner_id(el), line=_line(el),
            params={"name": name, "what": what, "value": source.strip(), "element": _owner_id(el), "exc": exc},
        )

    def compile_or_refuse(el: etree._Element, what: str, source: str, expression: str) -> None:
        try:
            sandbox.check(expression, "eval")
        except sandbox.ScriptRefused as exc:
            raise refuse(el, what, source, exc) from None

    for table in _elements(root, "//*[local-name()='decisionTable']"):
        inputs: list[str] = []
        for column in _dmn_children(table, "input"):
            expressions = _dmn_children(column, "inputExpression")
            text, source = _dmn_text(expressions[0]) if expressions else (column, "")
            if not source.strip():
                raise refuse(text, Phrase("input expression"), source, ValueError("it is empty"))
            compile_or_refuse(text, Phrase("input expression"), source, source.strip())
            inputs.append(source.strip())
        for rule in _dmn_children(table, "rule"):
            for column_source, entry in zip(inputs, _dmn_children(rule, "inputEntry"), strict=False):
                text, source = _dmn_text(entry)
                source = source.strip()
                if not source or source == "-":
                    continue  # any value matches
                placeholder = _DMN_PLACEHOLDER.sub("dmninputexpr", source)
                if "dmninputexpr" in placeholder:
                    compile_or_refuse(text, Phrase("input entry"), source, placeholder)
                    continue
                try:
                    sandbox.check(source, "eval")
                    compile_or_refuse(text, Phrase("input entry"), source, f"({column_source}) == ({source})")
                except sandbox.ScriptRefused:
                    compile_or_refuse(text, Phrase("input entry"), source, f"{column_source} {source}")
                    text.text = f" {source}"
            for entry in _dmn_children(rule, "outputEntry"):
                text, source = _dmn_text(entry)
                if source.strip():
                    compile_or_refuse(text, Phrase("output entry"), source, source.strip())


def _check_task_expression(meta: UserTaskMeta, attr: str, text: str, file_name: str | None,
                           line: int | None) -> bool:
    """True when ``text`` is a ``${expression}`` (checked: it compiles in the sandbox), else False."""
    if not (text.startswith("${") and text.endswith("}")):
        return False
    try:
        sandbox.check(text[2:-1], "eval")
    except sandbox.ScriptRefused as exc:
        raise InvalidDefinition(
            "user task '{element_id}': {attr} expression is invalid: {exc}",
            file=file_name, element_id=meta.element_id, line=line,
            params={"element_id": meta.element_id, "attr": attr, "exc": exc},
        ) from None
    return True


def _check_task_dates(meta: UserTaskMeta, locate: _Locator) -> None:
    for attr in ("due_date", "follow_up_date"):
        value = getattr(meta, attr)
        if not value:
            continue
        text = value.strip()
        file_name, line = locate.find(meta.element_id)
        if _check_task_expression(meta, attr, text, file_name, line):
            continue
        if text.startswith(("P", "-P")):
            if not _ISO_DURATION.match(text):
                raise InvalidDefinition(
                    "user task '{element_id}': {attr} '{text}' is not an ISO 8601 duration",
                    file=file_name, element_id=meta.element_id, line=line,
                    params={"element_id": meta.element_id, "attr": attr, "text": text},
                )
            _check_horizon(meta, attr, text, lambda now, t=text: duration_from(t, now), file_name, line)
        else:
            try:
                instant = datetime.fromisoformat(text)
            except ValueError:
                raise InvalidDefinition(
                    "user task '{element_id}': {attr} '{text}' is neither an ISO 8601 duration, "
                    "an ISO instant nor a ${{expression}}",
                    file=file_name, element_id=meta.element_id, line=line,
                    params={"element_id": meta.element_id, "attr": attr, "text": text},
                ) from None
            _check_horizon(meta, attr, text, lambda _now, i=instant: i if i.tzinfo else i.replace(tzinfo=UTC),
                           file_name, line)
    _check_priority(meta, locate)


# Literal due/follow-up dates lie within this distance of now (computed ones are checked when a task
# is created, engine.projections); priorities are 32-bit integers, as Camunda's.
DATE_HORIZON = timedelta(days=36525)
PRIORITY_RANGE = (-(2**31), 2**31 - 1)


def duration_from(text: str, base: datetime) -> datetime:
    """``base`` moved by the ISO 8601 duration ``text`` (``P2D``, ``PT24H``, ``-P1D`` for earlier).

    Raises ValueError when ``text`` is not a duration SpiffWorkflow reads, OverflowError when
    the result leaves the calendar. (SpiffWorkflow itself refuses negative durations.)
    """
    negative = text.startswith("-")
    try:
        parsed = TimerEventDefinition.parse_iso_duration(text[1:] if negative else text)
    except Exception as exc:  # noqa: BLE001 - SpiffWorkflow raises a bare Exception('Invalid duration')
        raise ValueError(f"'{text}' is not an ISO 8601 duration") from exc
    delta: timedelta = TimerEventDefinition.get_timedelta_from_start(parsed, base)
    return base - delta if negative else base + delta


def _check_timer_literals(name: str, root: etree._Element) -> None:
    """Refuse timers whose literal value SpiffWorkflow cannot use or that lie beyond 100 years.

    A timer expression that is a plain string literal (``"PT24H"``, ``"2027-01-01T09:00:00Z"``,
    ``"R3/PT1H"``) is read here as SpiffWorkflow will read it when the timer starts, so a
    negative or unreadable duration or one that overflows the calendar (``"P99999999999D"``)
    is refused at deploy, naming the element, instead of failing every instance that reaches it.
    Computed timer expressions are evaluated when the timer starts.
    """
    now = clock.now()
    for el in _elements(root, "//bpmn:timeDuration | //bpmn:timeDate | //bpmn:timeCycle",
                        namespaces={"bpmn": BPMN_NS}):
        try:
            value = ast.literal_eval((el.text or "").strip())
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            continue  # an expression: evaluated at run time
        if not isinstance(value, str):
            continue
        kind = etree.QName(el).localname
        try:
            if kind == "timeDuration":
                due = duration_from(value, now)
            elif kind == "timeDate":
                due = datetime.fromisoformat(value)
                due = due if due.tzinfo else due.replace(tzinfo=UTC)
            else:
                _cycles, start, interval = TimerEventDefinition.parse_iso_recurring_interval(value)
                due = start + interval
            far = not now - DATE_HORIZON <= due <= now + DATE_HORIZON
        except Exception:  # noqa: BLE001 - SpiffWorkflow's parsers raise bare Exception, ValueError, OverflowError
            raise InvalidDefinition(
                "{name}: timer '{element}' has the value {value!r}, which is not an ISO 8601 "
                "{value2} "
                "SpiffWorkflow can schedule", file=name, element_id=_owner_id(el), line=_line(el),
                params={"name": name, "element": _owner_id(el), "value": value[:60], "value2": Phrase("duration") if kind == "timeDuration" else Phrase("date") if kind == "timeDate" else Phrase("cycle")},
            ) from None
        if far and (kind != "timeDate" or due > now):  # a date in the past fires at once; that is fine
            raise InvalidDefinition(
                "{name}: timer '{element}' is due more than 100 years from now ({value!r})",
                file=name, element_id=_owner_id(el), line=_line(el),
                params={"name": name, "element": _owner_id(el), "value": value[:60]},
            )


def _check_horizon(meta: UserTaskMeta, attr: str, text: str, instant: Any, file_name: str | None,
                   line: int | None) -> None:
    now = clock.now()
    try:
        far = not now - DATE_HORIZON <= instant(now) <= now + DATE_HORIZON
    except (OverflowError, ValueError, TypeError):
        far = True
    if far:
        raise InvalidDefinition(
            "user task '{element_id}': {attr} '{text}' is more than 100 years away",
            file=file_name, element_id=meta.element_id, line=line,
            params={"element_id": meta.element_id, "attr": attr, "text": text},
        )


def _check_priority(meta: UserTaskMeta, locate: _Locator) -> None:
    text = (meta.priority or "").strip()
    if not text:
        return
    file_name, line = locate.find(meta.element_id)
    if _check_task_expression(meta, "priority", text, file_name, line):
        return
    low, high = PRIORITY_RANGE
    if not re.fullmatch(r"[+-]?\d{1,12}", text) or not low <= int(text) <= high:
        raise InvalidDefinition(
            "user task '{element_id}': priority '{value}' is not an integer between {low} and {high}",
            file=file_name, element_id=meta.element_id, line=line,
            params={"element_id": meta.element_id, "value": text[:40], "low": low, "high": high},
        )


def _user_task_meta(task_spec: Any, dialect: str) -> UserTaskMeta:
    ext = getattr(task_spec, "extensions", {}) or {}
    meta = UserTaskMeta(
        element_id=task_spec.bpmn_id,
        name=task_spec.bpmn_name or task_spec.bpmn_id,
        lane=task_spec.lane,
        documentation=task_spec.documentation or None,
    )
    props: dict[str, Any] = ext.get("properties", {}) or {}

    def get(key: str) -> Any:
        return ext.get(f"camunda:{key}") if dialect == "camunda" else props.get(key)

    if dialect == "camunda":
        form = getattr(task_spec, "form", None)
        if form is not None:
            meta.form_key = form.key
            for f in form.fields:
                meta.form_fields.append({
                    "id": f.id, "type": f.type, "label": f.label, "default": f.default_value,
                    "required": any(v.name == "required" for v in (f.validation or [])),
                    "options": [{"id": o.id, "name": o.name} for o in getattr(f, "options", [])],
                })
    else:
        meta.form_key = props.get("formKey") or (props.get("formJsonSchemaFilename") or "").removesuffix(
            "-schema.json").removesuffix(".json") or None
        if not meta.documentation and ext.get("instructionsForEndUser"):
            meta.documentation = ext["instructionsForEndUser"]
    meta.assignee = get("assignee")
    meta.candidate_users = _split_list(get("candidateUsers"))
    meta.candidate_groups = _split_list(get("candidateGroups"))
    meta.due_date = get("dueDate")
    meta.follow_up_date = get("followUpDate")
    meta.priority = get("priority")
    writes = ext.get("writes") if dialect == "camunda" else props.get("writes")
    if writes is not None:
        meta.writes = ["*"] if str(writes).strip() == "*" else _split_list(str(writes))
    if not (meta.assignee or meta.candidate_users or meta.candidate_groups) and meta.lane:
        meta.candidate_groups = [meta.lane]
    return meta


def _collect_user_tasks(spec: Any, dialect: str) -> dict[str, UserTaskMeta]:
    found = {}
    for task_spec in spec.task_specs.values():
        if getattr(task_spec, "manual", False) and getattr(task_spec, "bpmn_id", None):
            found[f"{spec.name}/{task_spec.bpmn_id}"] = _user_task_meta(task_spec, dialect)
    return found


def _message_definitions(ed: Any) -> list[Any]:
    if ed is None:
        return []
    defs = getattr(ed, "event_definitions", None) or [ed]
    return [d for d in defs if type(d).__name__.startswith("Message") and getattr(d, "name", None)]


def _is_dmn(root: etree._Element) -> bool:
    return etree.QName(root).namespace in DMN_NAMESPACES


def _check_writes(meta: UserTaskMeta, locate: _Locator) -> None:
    for name in meta.writes or ():
        if name != "*" and (not name.isidentifier() or name.startswith("_")):
            file_name, line = locate.find(meta.element_id)
            raise InvalidDefinition(
                "user task '{element_id}': property writes names '{name}', which is not a variable name "
                "(list names separated by commas, or write *)",
                file=file_name, element_id=meta.element_id, line=line,
                params={"element_id": meta.element_id, "name": name},
            )


_FORM_NS = {"bpmn": BPMN_NS, "camunda": CAMUNDA_NS, "spiffworkflow": SPIFF_NS}


def _camunda_form_fields(node: etree._Element) -> list[dict[str, Any]]:
    """``camunda:formData`` fields in the shape user-task metadata uses (SpiffWorkflow's form model)."""
    fields = []
    for f in _elements(node, "./bpmn:extensionElements/camunda:formData/camunda:formField", namespaces=_FORM_NS):
        fields.append({
            "id": f.get("id"), "type": f.get("type"), "label": f.get("label"), "default": f.get("defaultValue"),
            "required": bool(_elements(f, "./camunda:validation/camunda:constraint[@name='required']",
                                       namespaces=_FORM_NS)),
            "options": [{"id": v.get("id"), "name": v.get("name")}
                        for v in _elements(f, "./camunda:value", namespaces=_FORM_NS)],
        })
    return fields


def _start_form(process: etree._Element, dialect: str) -> dict[str, Any] | None:
    """The form of the process's none start event (Camunda formKey/formData, Spiff formKey property)."""
    for start in _elements(process, "./bpmn:startEvent", namespaces=_FORM_NS):
        if any(etree.QName(c).localname.endswith("EventDefinition") for c in start if isinstance(c.tag, str)):
            continue  # a message/timer/signal start: its data comes with the event
        if dialect == "camunda":
            form_key = start.get(f"{{{CAMUNDA_NS}}}formKey")
            fields = _camunda_form_fields(start)
        else:
            props = {p.get("name"): p.get("value") for p in _elements(
                start, "./bpmn:extensionElements/spiffworkflow:properties/spiffworkflow:property",
                namespaces=_FORM_NS)}
            form_key = props.get("formKey") or (props.get("formJsonSchemaFilename") or "").removesuffix(
                "-schema.json").removesuffix(".json") or None
            fields = []
        if form_key or fields:
            return {"element_id": start.get("id"), "form_key": form_key, "form_fields": fields}
    return None


_SCOPES = ("process", "subProcess", "transaction", "adHocSubProcess")


def _parameter_value(param: etree._Element) -> Any:
    """A camunda:inputParameter/outputParameter value: text, camunda:list or camunda:map (no scripts)."""
    children = [c for c in param if isinstance(c.tag, str)]
    if not children:
        return param.text if param.text is not None else None
    kind = etree.QName(children[0]).localname
    if kind == "list":
        return [_parameter_value(v) for v in children[0] if isinstance(v.tag, str)]
    if kind == "map":
        return {e.get("key"): _parameter_value(e) for e in children[0] if isinstance(e.tag, str)}
    if kind == "value":
        return children[0].text
    raise ValueError(f"camunda:{kind} is not supported here; write the value as text or ${{expression}}")


def _input_output(name: str, root: etree._Element) -> dict[str, dict[str, Any]]:
    """camunda:inputOutput of every element, keyed "<process or sub-process id>/<element id>"."""
    found: dict[str, dict[str, Any]] = {}
    for io in _elements(root, "//bpmn:extensionElements/camunda:inputOutput", namespaces=_FORM_NS):
        extension = io.getparent()
        element = extension.getparent() if extension is not None else None
        if element is None or not element.get("id"):
            continue
        scope = element.getparent()
        while scope is not None and etree.QName(scope).localname not in _SCOPES:
            scope = scope.getparent()
        if scope is None:
            continue
        entry: dict[str, Any] = {"inputs": [], "outputs": []}
        for kind, tag in (("inputs", "inputParameter"), ("outputs", "outputParameter")):
            for param in _elements(io, f"./camunda:{tag}", namespaces=_FORM_NS):
                pname = param.get("name") or ""
                if not pname.isidentifier() or pname.startswith("_"):
                    raise InvalidDefinition(
                        "{name}: element '{value}' has a camunda:{tag} named '{pname}', which is not "
                        "a variable name", file=name, element_id=element.get("id"), line=_line(param),
                        params={"name": name, "value": element.get('id'), "tag": tag, "pname": pname})
                try:
                    value = _parameter_value(param)
                    for text in _texts(value):
                        expression = text.strip()
                        if expression.startswith("${") and expression.endswith("}"):
                            sandbox.check(expression[2:-1], "eval")
                except (ValueError, sandbox.ScriptRefused) as exc:
                    raise InvalidDefinition(
                        "{name}: camunda:{tag} '{pname}' of element '{value}' is invalid: {exc}",
                        file=name, element_id=element.get("id"), line=_line(param),
                        params={"name": name, "tag": tag, "pname": pname, "value": element.get('id'), "exc": exc}) from None
                entry[kind].append({"name": pname, "value": value})
        found[f"{scope.get('id')}/{element.get('id')}"] = entry
    return found


def _call_mappings(name: str, root: etree._Element) -> dict[str, dict[str, Any]]:
    """camunda:in / camunda:out of every call activity (Camunda passes nothing without them)."""
    found: dict[str, dict[str, Any]] = {}
    for call in _elements(root, "//bpmn:callActivity", namespaces=_FORM_NS):
        scope = call.getparent()
        while scope is not None and etree.QName(scope).localname not in _SCOPES:
            scope = scope.getparent()
        if scope is None or not call.get("id"):
            continue
        entry: dict[str, Any] = {"in": [], "out": []}
        for kind in ("in", "out"):
            for m in _elements(call, f"./bpmn:extensionElements/camunda:{kind}", namespaces=_FORM_NS):
                if m.get("businessKey") is not None:
                    continue  # the business key is not a variable
                if m.get("variables") == "all":
                    entry[kind].append({"all": True})
                    continue
                target, source, expression = m.get("target"), m.get("source"), m.get("sourceExpression")
                problem: Phrase | None = None
                if not target or not target.isidentifier() or target.startswith("_"):
                    problem = Phrase("needs a target that is a variable name (got '{target}')", target=target)
                elif expression is not None:
                    text = expression.strip()
                    if not (text.startswith("${") and text.endswith("}")):
                        problem = Phrase("has a sourceExpression that is not ${{...}}")
                    else:
                        try:
                            sandbox.check(text[2:-1], "eval")
                        except sandbox.ScriptRefused as exc:
                            problem = Phrase("has an invalid sourceExpression: {exc}", exc=exc)
                elif not source:
                    problem = Phrase("needs source, sourceExpression or variables=\"all\"")
                if problem:
                    raise InvalidDefinition("{name}: camunda:{kind} of call activity '{value}' {problem}",
                                            file=name, element_id=call.get("id"), line=_line(m),
                                            params={"name": name, "kind": kind, "value": call.get('id'), "problem": problem})
                entry[kind].append({"target": target, "source": source, "expression": expression})
        found[f"{scope.get('id')}/{call.get('id')}"] = entry
    return found


def _texts(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [t for v in value for t in _texts(v)]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _texts(v)]
    return []


def parse_bundle(files: list[UploadedFile], settings: Settings) -> ParsedBundle:
    if not files:
        raise InvalidDefinition("a deployment needs at least one .bpmn or .dmn file")
    names = [f.name for f in files]
    if len(set(names)) != len(names):
        raise InvalidDefinition("two uploaded files have the same name", files=names)
    trees: dict[str, etree._Element] = {}
    for f in files:
        if not f.name.lower().endswith((".bpmn", ".dmn", ".xml")):
            raise InvalidDefinition("{name}: only .bpmn and .dmn files can be deployed", file=f.name,
                                    params={"name": f.name})
        trees[f.name] = xmlsafe.parse(f.data, f.name, max_bytes=settings.max_upload_bytes,
                                      max_depth=settings.max_xml_depth)
    bpmn = {n: r for n, r in trees.items() if not _is_dmn(r)}
    dmn = {n: r for n, r in trees.items() if _is_dmn(r)}
    for name, root in bpmn.items():
        if etree.QName(root).namespace != BPMN_NS or etree.QName(root).localname != "definitions":
            raise InvalidDefinition("{name} is neither a BPMN 2.0 nor a DMN document", file=name, line=_line(root),
                                    params={"name": name})
        _check_expressions(name, root)
        _check_timer_literals(name, root)
        _check_templates(name, root)
    if not bpmn:
        raise InvalidDefinition("a deployment needs at least one .bpmn file (DMN alone has nothing to run)")
    for name, root in dmn.items():
        _check_dmn(name, root)

    dialect = "camunda" if any(CAMUNDA_NS in root.nsmap.values() or
                               root.xpath("//@*[namespace-uri()=$ns]", ns=CAMUNDA_NS)
                               for root in bpmn.values()) else "spiff"
    parser = InboxCamundaParser() if dialect == "camunda" else SopflowSpiffParser()
    if dialect == "camunda":
        for name, root in bpmn.items():
            _camunda_loops(name, root)
    locate = _Locator(trees)
    io_all: dict[str, dict[str, Any]] = {}
    if dialect == "camunda":
        for name, root in bpmn.items():
            io_all.update(_input_output(name, root))
            for key, mapping in _call_mappings(name, root).items():
                io_all.setdefault(key, {"inputs": [], "outputs": []}).update(mapping)
    try:
        for name, root in dmn.items():
            parser.add_dmn_xml(root, filename=name)
        for name, root in bpmn.items():
            parser.add_bpmn_xml(root, filename=name)
        process_files = {
            str(process.get("id")): name for name, root in bpmn.items()
            for process in _elements(root, "/bpmn:definitions/bpmn:process[@isExecutable='true']",
                                     namespaces={"bpmn": BPMN_NS})
            if process.get("id")
        }
        process_ids = list(process_files)
        if not process_ids:
            raise InvalidDefinition(
                "no executable process found: mark the process isExecutable=\"true\"", files=names
            )
        processes = []
        for pid in process_ids:
            spec = parser.get_spec(pid)
            subprocess_specs = parser.get_subprocess_specs(pid)
            if dialect == "camunda":
                for s in [spec, *subprocess_specs.values()]:
                    adopt_camunda_messages(s)
            user_tasks = _collect_user_tasks(spec, dialect)
            for sub in subprocess_specs.values():
                user_tasks.update(_collect_user_tasks(sub, dialect))
            for meta in user_tasks.values():
                _check_task_dates(meta, locate)
                _check_writes(meta, locate)
            messages = sorted({
                ts.event_definition.name
                for s in [spec, *subprocess_specs.values()] for ts in s.task_specs.values()
                if getattr(getattr(ts, "event_definition", None), "name", None)
                and type(ts.event_definition).__name__.startswith("Message")
            })
            starts = sorted({
                d.name for ts in spec.task_specs.values() if type(ts).__name__ == "StartEvent"
                for d in _message_definitions(getattr(ts, "event_definition", None))
            })
            process_node = _elements(bpmn[process_files[pid]], "/bpmn:definitions/bpmn:process[@id=$id]",
                                     id=pid, namespaces={"bpmn": BPMN_NS})[0]
            scopes = {pid, *subprocess_specs}
            io = {k: v for k, v in io_all.items() if k.split("/", 1)[0] in scopes}
            processes.append(ParsedProcess(pid, spec.description or pid, process_files[pid], spec, subprocess_specs,
                                           user_tasks, messages, starts, _start_form(process_node, dialect), io))
    except ValidationException as exc:
        file_name, line = locate.find(exc.id or None, exc.file_name or None)
        raise InvalidDefinition(
            "{value}: {exc}", file=exc.file_name or file_name,
            element_id=exc.id or None, line=line,
            params={"value": exc.file_name or file_name or 'upload', "exc": exc},
        ) from None
    except SpiffWorkflowException as exc:
        raise InvalidDefinition("the diagram was refused: {exc}", params={"exc": exc}) from None
    except (KeyError, ValueError, TypeError, AttributeError, IndexError) as exc:
        # SpiffWorkflow's parser assumes well-formed BPMN; anything it trips on is the upload's fault
        raise InvalidDefinition("the diagram could not be read ({exc_type}: {exc})",
                                params={"exc_type": type(exc).__name__, "exc": exc}) from None
    return ParsedBundle(dialect, processes, bundle_checksum(files))
