"""The SLA model of a user task: due date in business time, at-risk point, reminders, SLA jobs.

Read when a task row is created (engine.projections.new_task_row). A task's extension
properties (``spiffworkflow:property`` / ``camunda:property``) say:

- ``calendar``: the business calendar (engine.calendar) for ``businessDue``; ``default`` if unset.
- ``businessDue``: an ISO 8601 duration read in working time (``P2D`` = two business days);
  it sets the due date and wins over ``dueDate``. Plain ``dueDate`` durations stay calendar time.
- ``atRiskFraction``: share of the allowed time after which the task is at risk (``0.75``
  by default, ``SOPFLOW_SLA_AT_RISK_FRACTION``); measured in working time for ``businessDue``.
- ``reminders``: durations before the due date (``PT4H,PT1H``) at which the assignee or
  candidates are reminded.
- ``escalateToGroup`` / ``escalateToUser``: at breach the task is re-offered to that group
  (assignee cleared) or assigned to that user; ``notifyOnBreach``: more users (a manager)
  told at breach.

A task with a follow-up date (``followUpDate``) gets an ``sla_follow_up`` job at it, which
tells the assignee or candidates (``task.follow_up``); it changes no SLA state.

Each open task with a due date gets jobs (``jobs`` table, kinds in :data:`SLA_JOB_KINDS`,
dedup key ``{kind}:{task id}[:{n}]``) fired by the worker through engine.commands.sla.
"""
from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from SpiffWorkflow.task import Task

from engine import calendar
from engine.errors import InvalidInput, ScriptError
from engine.ids import time_ordered_id
from engine.loading import duration_from

SLA_JOB_KINDS = ("sla_at_risk", "sla_breach", "sla_reminder", "sla_follow_up")


def task_properties(task: Task) -> dict[str, str]:
    """The task's extension properties as strings (both dialects keep them under ``properties``)."""
    ext = getattr(task.task_spec, "extensions", None) or {}
    props = ext.get("properties")
    return {str(k): str(v) for k, v in (props or {}).items() if v is not None} if isinstance(props, dict) else {}


def _fraction(props: dict[str, str], default: float, element_id: str) -> float:
    raw = props.get("atRiskFraction")
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 < value <= 1:
        raise ScriptError("user task '{element_id}': atRiskFraction '{value}' is not a number in (0, 1]",
                          element_id=element_id, params={"element_id": element_id, "value": raw[:40]})
    return value


def due_and_at_risk(props: dict[str, str], due_at: datetime | None, now: datetime, default_fraction: float,
                    element_id: str) -> tuple[datetime | None, datetime | None]:
    """``(due_at, at_risk_at)`` for a task created ``now``: ``businessDue`` wins over ``due_at``.

    ScriptError naming the element when a property cannot be read (unknown calendar, bad duration).
    """
    fraction = _fraction(props, default_fraction, element_id)
    business = props.get("businessDue")
    if business:
        try:
            cal = calendar.get(props.get("calendar"))
            due = cal.add(now, business)
            allowed = cal.working_time_between(now, due)
            return due, cal.add_working_time(now, allowed * fraction)
        except InvalidInput as exc:
            raise ScriptError("user task '{element_id}': {exc}", element_id=element_id,
                              params={"element_id": element_id, "exc": exc}) from None
    if due_at is None:
        return None, None
    return due_at, now + (due_at - now) * fraction


def reminder_offsets(props: dict[str, str], element_id: str) -> list[str]:
    """The ``reminders`` property as a list of ISO durations (ScriptError when one is unreadable)."""
    raw = props.get("reminders") or ""
    found = [p.strip() for p in raw.split(",") if p.strip()]
    for text in found:
        try:
            duration_from(text, datetime(2000, 1, 1, tzinfo=UTC))
        except (ValueError, OverflowError):
            raise ScriptError("user task '{element_id}': reminder '{value}' is not an ISO 8601 duration",
                              element_id=element_id,
                              params={"element_id": element_id, "value": text[:40]}) from None
    return found


def job_rows(task_row: dict[str, Any], props: dict[str, str], now: datetime) -> list[dict[str, Any]]:
    """The SLA jobs (``jobs`` column values) of a new task row: none without a due or follow-up date.

    With a due date: at risk and breach jobs always; one reminder job per ``reminders``
    offset that still lies ahead. With a follow-up date (Camunda's ``followUpDate``) still
    ahead: one ``sla_follow_up`` job at it. Each names the task; the worker's firing checks
    the task is still open.
    """
    due, at_risk, follow_up = task_row.get("due_at"), task_row.get("at_risk_at"), task_row.get("follow_up_at")
    base = {"instance_id": task_row["instance_id"], "task_id": task_row["id"], "element_id": task_row["element_id"],
            "state": "pending", "attempts": 0, "created_at": now, "lock_owner": None, "lock_expires_at": None,
            "last_error": None}
    rows = []
    if follow_up is not None and follow_up > now:
        rows.append({**base, "id": time_ordered_id(), "kind": "sla_follow_up",
                     "dedup_key": f"sla_follow_up:{task_row['id']}", "due_at": follow_up})
    if due is None:
        return rows
    rows.append({**base, "id": time_ordered_id(), "kind": "sla_breach", "dedup_key": f"sla_breach:{task_row['id']}",
                 "due_at": due})
    if at_risk is not None and at_risk < due:
        rows.append({**base, "id": time_ordered_id(), "kind": "sla_at_risk",
                     "dedup_key": f"sla_at_risk:{task_row['id']}", "due_at": at_risk})
    for n, offset in enumerate(reminder_offsets(props, task_row["element_id"])):
        at = duration_from("-" + offset, due)
        if at > now:
            rows.append({**base, "id": time_ordered_id(), "kind": "sla_reminder",
                         "dedup_key": f"sla_reminder:{task_row['id']}:{n}", "due_at": at})
    return rows
