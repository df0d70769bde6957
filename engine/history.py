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

from engine.store.models import DefinitionRow, ExternalTaskRow, InstanceRow, JobRow, SubscriptionRow, TaskRow

# audit events that record a BPMN element finishing, and where their element ids are
_ONE_ELEMENT = frozenset({"task.completed", "external_task.completed", "timer.fired"})


@dataclass(frozen=True)
class Markers:
    """Element ids (BPMN ``id`` attributes) for the diagram, each list in first-seen order, no repeats.

    ``completed``: every element the instance finished (start and end events, gateways, tasks,
    caught events), read from its audit events. ``current``: where a running instance waits now
    (open user and external tasks, pending timers, message catch events); empty once it ended.
    An element run again in a loop may be in both. Sequence flows are not marked: the trail
    records the elements, not which outgoing flow a gateway took.
    """

    completed: list[str]
    current: list[str]


def _unique(ids: list[str | None]) -> list[str]:
    return list(dict.fromkeys(i for i in ids if i))


def diagram_markers(session: Session, instance: InstanceRow, events: list[dict[str, Any]]) -> Markers:
    """The completed and current element ids of ``instance`` (already authorized by the caller).

    ``events`` are the instance's audit events as :func:`engine.queries.event_dict` gives them
    (``timeline(...)["events"]``): ``activities.completed`` lists what the engine ran
    (``payload.activities[].element_id``), ``task.completed``, ``external_task.completed`` and
    ``timer.fired`` name one element each (``payload.element_id``). What waits is read from the
    projections of a running instance: open ``tasks`` and ``external_tasks``, ``timer`` jobs and
    event subscriptions.
    """
    completed: list[str | None] = []
    for event in events:
        payload = event.get("payload") or {}
        if event["action"] == "activities.completed":
            completed.extend(a.get("element_id") for a in payload.get("activities") or [] if isinstance(a, dict))
        elif event["action"] in _ONE_ELEMENT:
            completed.append(payload.get("element_id"))
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
    return Markers(_unique(completed), _unique(current))


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
