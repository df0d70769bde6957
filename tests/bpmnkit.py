"""A tiny builder for test and benchmark diagrams (no diagram interchange, just semantics)."""
from __future__ import annotations

from xml.sax.saxutils import escape, quoteattr

BPMN = "http://www.omg.org/spec/BPMN/20100524/MODEL"
SPIFF = "http://spiffworkflow.org/bpmn/schema/1.0/core"
CAMUNDA = "http://camunda.org/schema/1.0/bpmn"


class Bpmn:
    def __init__(self, process_id: str, name: str | None = None, dialect: str = "spiff") -> None:
        self.id = process_id
        self.name = name or process_id
        self.dialect = dialect
        self.nodes: list[str] = []
        self.flows: list[str] = []
        self.lanes: dict[str, list[str]] = {}
        self.messages: set[str] = set()
        self.extra_processes: list[str] = []
        self._n = 0

    def _add(self, xml: str) -> Bpmn:
        self.nodes.append(xml)
        return self

    def start(self, id: str = "start", timer: str | None = None) -> Bpmn:
        if timer:
            return self._add(f'<bpmn:startEvent id="{id}"><bpmn:timerEventDefinition><bpmn:timeDate>'
                             f'{escape(timer)}</bpmn:timeDate></bpmn:timerEventDefinition></bpmn:startEvent>')
        return self._add(f'<bpmn:startEvent id="{id}"/>')

    def end(self, id: str = "end") -> Bpmn:
        return self._add(f'<bpmn:endEvent id="{id}"/>')

    def script(self, id: str, code: str, name: str | None = None) -> Bpmn:
        return self._add(f'<bpmn:scriptTask id="{id}" name={quoteattr(name or id)} scriptFormat="python">'
                         f'<bpmn:script>{escape(code)}</bpmn:script></bpmn:scriptTask>')

    def user(self, id: str, name: str | None = None, documentation: str | None = None,
             props: dict[str, str] | None = None, camunda: dict[str, str] | None = None,
             form_fields: str = "", writes: str | None = None, extra: str = "") -> Bpmn:
        """A user task; ``writes`` is the property naming what a completion may set (names or *)."""
        if writes is not None and self.dialect == "spiff":
            props = {**(props or {}), "writes": writes}
        attrs = "".join(f" camunda:{k}={quoteattr(v)}" for k, v in (camunda or {}).items())
        inner = f"<bpmn:documentation>{escape(documentation)}</bpmn:documentation>" if documentation else ""
        ext = ""
        if props:
            ext += "<spiffworkflow:properties>" + "".join(
                f"<spiffworkflow:property name={quoteattr(k)} value={quoteattr(v)}/>" for k, v in props.items()
            ) + "</spiffworkflow:properties>"
        if form_fields:
            ext += f"<camunda:formData>{form_fields}</camunda:formData>"
        if writes is not None and self.dialect == "camunda":
            ext += f'<camunda:properties><camunda:property name="writes" value={quoteattr(writes)}/></camunda:properties>'
        ext += extra
        if ext:
            inner += f"<bpmn:extensionElements>{ext}</bpmn:extensionElements>"
        return self._add(f'<bpmn:userTask id="{id}" name={quoteattr(name or id)}{attrs}>{inner}</bpmn:userTask>')

    def xor(self, id: str, default: str | None = None) -> Bpmn:
        d = f' default="{default}"' if default else ""
        return self._add(f'<bpmn:exclusiveGateway id="{id}"{d}/>')

    def parallel(self, id: str) -> Bpmn:
        return self._add(f'<bpmn:parallelGateway id="{id}"/>')

    def inclusive(self, id: str, default: str | None = None) -> Bpmn:
        d = f' default="{default}"' if default else ""
        return self._add(f'<bpmn:inclusiveGateway id="{id}"{d}/>')

    def timer_catch(self, id: str, duration: str) -> Bpmn:
        return self._add(f'<bpmn:intermediateCatchEvent id="{id}"><bpmn:timerEventDefinition><bpmn:timeDuration>'
                         f'{escape(duration)}</bpmn:timeDuration></bpmn:timerEventDefinition></bpmn:intermediateCatchEvent>')

    def message_catch(self, id: str, message: str, variable: str | None = None) -> Bpmn:
        self.messages.add(message)
        return self._add(f'<bpmn:intermediateCatchEvent id="{id}"><bpmn:messageEventDefinition '
                         f'messageRef="msg_{message}"/></bpmn:intermediateCatchEvent>')

    def boundary_timer(self, id: str, attached: str, duration: str | None = None, cycle: str | None = None,
                       interrupting: bool = True) -> Bpmn:
        kind, value = ("timeCycle", cycle) if cycle else ("timeDuration", duration)
        return self._add(f'<bpmn:boundaryEvent id="{id}" attachedToRef="{attached}" '
                         f'cancelActivity="{"true" if interrupting else "false"}"><bpmn:timerEventDefinition>'
                         f'<bpmn:{kind}>{escape(value or "")}</bpmn:{kind}></bpmn:timerEventDefinition></bpmn:boundaryEvent>')

    def call(self, id: str, called: str) -> Bpmn:
        return self._add(f'<bpmn:callActivity id="{id}" calledElement="{called}"/>')

    def raw(self, xml: str) -> Bpmn:
        return self._add(xml)

    def flow(self, source: str, target: str, condition: str | None = None, id: str | None = None) -> Bpmn:
        self._n += 1
        fid = id or f"flow_{self._n}_{source}_{target}"
        cond = (f'<bpmn:conditionExpression xsi:type="bpmn:tFormalExpression">{escape(condition)}'
                f"</bpmn:conditionExpression>") if condition else ""
        self.flows.append(f'<bpmn:sequenceFlow id="{fid}" sourceRef="{source}" targetRef="{target}">{cond}</bpmn:sequenceFlow>')
        return self

    def chain(self, *ids: str) -> Bpmn:
        for a, b in zip(ids, ids[1:], strict=False):
            self.flow(a, b)
        return self

    def lane(self, name: str, *members: str) -> Bpmn:
        self.lanes[name] = list(members)
        return self

    def process_xml(self) -> str:
        lanes = ""
        if self.lanes:
            lanes = '<bpmn:laneSet id="ls_' + self.id + '">' + "".join(
                f'<bpmn:lane id="lane_{i}_{self.id}" name={quoteattr(n)}>' +
                "".join(f"<bpmn:flowNodeRef>{m}</bpmn:flowNodeRef>" for m in ms) + "</bpmn:lane>"
                for i, (n, ms) in enumerate(self.lanes.items())) + "</bpmn:laneSet>"
        return (f'<bpmn:process id="{self.id}" name={quoteattr(self.name)} isExecutable="true">'
                f"{lanes}{''.join(self.nodes)}{''.join(self.flows)}</bpmn:process>")

    def xml(self, *others: Bpmn) -> bytes:
        msgs = set(self.messages)
        for o in others:
            msgs |= o.messages
        messages = "".join(f'<bpmn:message id="msg_{m}" name="{m}"/>' for m in sorted(msgs))
        ns = f'xmlns:spiffworkflow="{SPIFF}"' if self.dialect == "spiff" else f'xmlns:camunda="{CAMUNDA}"'
        body = self.process_xml() + "".join(o.process_xml() for o in others)
        return (f'<?xml version="1.0" encoding="UTF-8"?>\n<bpmn:definitions xmlns:bpmn="{BPMN}" {ns} '
                f'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" id="defs_{self.id}" '
                f'targetNamespace="http://sopflow.example/bpmn">{messages}{body}</bpmn:definitions>').encode()


def straight_scripts(n: int = 5, process_id: str = "straight") -> Bpmn:
    b = Bpmn(process_id).start()
    ids = ["start"]
    for i in range(n):
        b.script(f"s{i}", f"x{i} = {i} * 2")
        ids.append(f"s{i}")
    b.end()
    return b.chain(*ids, "end")


def approval_chain(n: int = 3, process_id: str = "approval", writes: str | None = None) -> Bpmn:
    b = Bpmn(process_id).start()
    ids = ["start"]
    for i in range(n):
        b.user(f"u{i}", f"Approve {i}", props={"candidateGroups": "staff"}, writes=writes)
        ids.append(f"u{i}")
    b.end()
    return b.chain(*ids, "end")


def user_loop(process_id: str = "loop", writes: str | None = None) -> Bpmn:
    """init -> Work (user) -> count += 1 -> back to Work while count < limit."""
    b = (Bpmn(process_id).start().script("init", "count = 0")
         .user("work", "Work", props={"candidateGroups": "staff"}, writes=writes)
         .script("inc", "count += 1").xor("more", default="f_done").end())
    b.chain("start", "init", "work", "inc", "more")
    b.flow("more", "work", condition="count < limit")
    return b.flow("more", "end", id="f_done")


def script_loop(process_id: str = "script_loop") -> Bpmn:
    b = (Bpmn(process_id).start().script("init", "n = 0").script("inc", "n += 1").xor("more", default="f_done")
         .script("finish", "finished = True").end())
    b.chain("start", "init", "inc", "more")
    b.flow("more", "inc", condition="n < target")
    b.flow("more", "finish", id="f_done")
    return b.flow("finish", "end")
