"""What an auditor reads about one instance besides its audit events: where it has been and
where it waits (the diagram's markers), and its user tasks with the SOP version they ran under.

Both read only what belongs to an instance the caller has already authorized
(:func:`engine.queries.timeline` / :func:`engine.queries.visible_instance`); they add no rule of
their own about who may see what.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from engine import xmlsafe
from engine.queries import definition_source
from engine.store.models import DefinitionRow, ExternalTaskRow, InstanceRow, JobRow, SubscriptionRow, TaskRow

# audit events that record a BPMN element finishing, and where their element ids are
_ONE_ELEMENT = frozenset({"task.completed", "external_task.completed", "timer.fired"})


@dataclass(frozen=True)
class Markers:
    """Element ids (BPMN ``id`` attributes) for the diagram, no repeats.

    ``completed``: every element the instance finished (start and end events, gateways, tasks,
    caught events), in the order they first finished, read from its audit events; then the
    sequence flows it took (see :func:`taken_flows`). ``current``: where a running instance
    waits now (open user and external tasks, pending timers, message catch events); empty once
    it ended. An element run again in a loop may be in both.
    """

    completed: list[str]
    current: list[str]


BPMN = "{http://www.omg.org/spec/BPMN/20100524/MODEL}"


def taken_flows(source: bytes, order: dict[str, int], current: set[str]) -> list[str]:
    """The sequence flows an instance took, inferred from the elements it finished.

    The trail records elements, not flows, so: a flow is taken when its source finished
    (``order``: element id -> position of its last finish in the trail) and its target finished
    or waits now (``current``). When a target has several such incoming flows, a parallel
    gateway took them all; any other element was reached by the one whose source finished
    last before it (an exclusive or inclusive merge continues on the branch that arrived). For
    an element run again in a loop, only the last pass counts.
    """
    root = xmlsafe.parse(source, "diagram", max_bytes=len(source) + 1, max_depth=10_000)
    parallel = {el.get("id") for el in root.iter(f"{BPMN}parallelGateway")}
    incoming: dict[str, list[tuple[int, str]]] = {}
    for flow in root.iter(f"{BPMN}sequenceFlow"):
        flow_id, src, dst = flow.get("id"), flow.get("sourceRef"), flow.get("targetRef")
        if not (flow_id and src and dst) or src not in order or (dst not in order and dst not in current):
            continue
        incoming.setdefault(dst, []).append((order[src], flow_id))
    taken: list[str] = []
    for target, flows in incoming.items():
        if target in parallel or len(flows) == 1:
            taken.extend(flow_id for _pos, flow_id in flows)
            continue
        reached = order.get(target)
        before = [f for f in flows if reached is None or f[0] <= reached] or flows
        taken.append(max(before)[1])
    return taken


def _unique(ids: list[str | None]) -> list[str]:
    return list(dict.fromkeys(i for i in ids if i))


def diagram_markers(session: Session, instance: InstanceRow, events: list[dict[str, Any]]) -> Markers:
    """The completed and current element ids of ``instance`` (already authorized by the caller).

    ``events`` are the instance's audit events as :func:`engine.queries.event_dict` gives them
    (``timeline(...)["events"]``): ``activities.completed`` lists what the engine ran
    (``payload.activities[].element_id``), ``task.completed``, ``external_task.completed`` and
    ``timer.fired`` name one element each (``payload.element_id``). What waits is read from the
    projections of a running instance: open ``tasks`` and ``external_tasks``, ``timer`` jobs and
    event subscriptions. Flows come from the version's BPMN (:func:`taken_flows`); raises
    ``NotFound`` if that source is not stored.
    """
    completed: list[str | None] = []
    for event in events:
        payload = event.get("payload") or {}
        if event["action"] == "activities.completed":
            completed.extend(a.get("element_id") for a in payload.get("activities") or [] if isinstance(a, dict))
        elif event["action"] in _ONE_ELEMENT:
            completed.append(payload.get("element_id"))
    order = {element: position for position, element in enumerate(completed) if element}
    current: list[str | None] = []
    if instance.status == "running":
        current.extend(session.scalars(select(TaskRow.element_id).where(
            TaskRow.instance_id == instance.id, TaskRow.state == "open").order_by(TaskRow.created_at)))
        current.extend(session.scalars(select(ExternalTaskRow.element_id).where(
            ExternalTaskRow.instance_id == instance.id, ExternalTaskRow.state == "open")))
        current.extend(session.scalars(select(JobRow.element_id).where(
            JobRow.instance_id == instance.id, JobRow.kind == "timer")))
        current.extend(session.scalars(select(SubscriptionRow.element_id).where(
            SubscriptionRow.instance_id == instance.id)))
    waiting = _unique(current)
    definition = session.get(DefinitionRow, instance.definition_id)
    flows = taken_flows(definition_source(session, definition), order, set(waiting)) if definition else []
    return Markers(_unique([*completed, *flows]), waiting)


@dataclass(frozen=True)
class TaskRecord:
    """A user task of an instance with the procedure version it ran under.

    ``definition_key``/``definition_version`` name the deployed version the task belongs to;
    ``sop`` is that version's SOP text for the step (the BPMN ``documentation``, Markdown with
    ``{{ variable }}`` placeholders, as written, never re-rendered against today's data), or None.
    """

    task: TaskRow
    definition_key: str
    definition_version: int
    sop: str | None


def task_records(session: Session, tasks: list[TaskRow]) -> list[TaskRecord]:
    """``tasks`` (rows of one authorized instance, e.g. ``timeline(...)["tasks"]``) with their SOP versions.

    One query for the definitions they ran under; a task whose definition row is missing
    (never expected: definitions are not deleted) gets its own key, version 0 and no SOP text.
    """
    ids = {t.definition_id for t in tasks}
    definitions = {d.id: d for d in session.scalars(select(DefinitionRow).where(DefinitionRow.id.in_(ids)))} \
        if ids else {}
    records = []
    for task in tasks:
        definition = definitions.get(task.definition_id)
        if definition is None:
            records.append(TaskRecord(task, task.definition_key, 0, None))
            continue
        meta = (definition.user_tasks or {}).get(task.meta_key) or {}
        text = meta.get("documentation")
        records.append(TaskRecord(task, definition.key, definition.version, text if isinstance(text, str) else None))
    return records
