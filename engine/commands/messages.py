"""Message correlation: deliver a named message to the instances waiting for it, or start one.

Two ways in, one set of rules (docs/notes/messages.md):

- :func:`correlate_message` is ``POST /api/messages`` (Camunda's ``/message``): the
  waiting instances are found from ``event_subscriptions`` rows and the stored
  ``process_instances.variables`` (never by loading workflows), narrowed by
  ``business_key``, ``correlation_keys`` (process variables that must equal the given
  values) and the model's correlation properties. Who may send: ``integration`` and
  ``admin`` reach any instance; for anyone else only the instances they may see take part
  in matching (the others are as if they did not wait), so no answer depends on them.
- :func:`route_thrown` delivers the messages an instance threw that nothing inside it
  caught (intermediate throw or end events; SpiffWorkflow leaves them in
  ``workflow.get_events()``), in the same transaction as the command that threw them, so
  a failed delivery stores nothing of that command. Deliveries may throw again; the
  cascade is bounded (:data:`MAX_CASCADE_DEPTH`, :data:`MAX_CASCADE_DELIVERIES`).

Each receiving instance gets a ``message.correlated`` audit event naming the sender
(``{"user": name}`` or ``{"instance_id": id}``); a throwing instance gets
``message.sent`` naming the receivers.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from SpiffWorkflow.bpmn import BpmnEvent
from SpiffWorkflow.bpmn.specs.event_definitions.message import MessageEventDefinition
from SpiffWorkflow.camunda.specs.event_definitions import MessageEventDefinition as SpiffCamundaMessage
from SpiffWorkflow.exceptions import WorkflowException
from SpiffWorkflow.util.task import TaskState
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from engine import projections
from engine import variables as pvars
from engine.actor import Actor
from engine.audit import Event, canonical
from engine.commands import unit
from engine.commands.instances import begin
from engine.config import Settings
from engine.config import load as load_settings
from engine.errors import Conflict, Forbidden, InvalidInput, NotFound, Phrase, ScriptError, StaleInstance
from engine.message_events import correlation_matches, event_correlations, same_json
from engine.queries import instance_scope
from engine.store.models import DefinitionRow, InstanceRow, SubscriptionRow

SYSTEM_ROLES = frozenset({"admin", "integration", "system"})
"""Roles that may correlate to any instance and start processes by message (``system`` is the worker)."""

MAX_CASCADE_DEPTH = 10
"""Hops of instance-to-instance messages in one command (A throws to B, B to C, ...), beyond which
the command is refused (422) and nothing of it is stored: a loop such as A -> B -> A ends here."""

MAX_CASCADE_DELIVERIES = 100
"""Thrown-message deliveries (and message starts) in one command, whatever their depth."""


def may_correlate_anywhere(actor: Actor) -> bool:
    """Systems (``integration``), admins and the worker may reach any instance with a message."""
    return bool(actor.roles & SYSTEM_ROLES)


@dataclass
class _Waiting:
    """A running instance with a catch event waiting for the message."""

    instance_id: str
    definition_id: str
    variables: dict[str, Any]
    subscriptions: list[tuple[str | None, dict[str, Any] | None]] = field(default_factory=list)


def correlate_message(session: Session, *, name: str, actor: Actor, business_key: str | None = None,
                      correlation_keys: dict[str, Any] | None = None, correlation: dict[str, Any] | None = None,
                      variables: dict[str, Any] | None = None, all_matches: bool = False,
                      settings: Settings | None = None) -> list[str]:
    """Deliver message ``name`` to the running instances waiting for it, or start a process with it.

    Matching (Camunda's ``/message``): an instance matches when one of its waiting catch
    events is for ``name``, its business key equals ``business_key`` (when given), each of
    ``correlation_keys`` equals the instance's process variable of that name (strict JSON
    equality: ``true`` is not ``1``), and the catch event's correlation properties (BPMN
    ``correlationProperty`` / SpiffWorkflow ``processVariableCorrelation``) accept the
    message, whose property values are evaluated on its payload (``variables``), as
    SpiffWorkflow does.
    ``correlation`` is the older name of ``correlation_keys``.

    Exactly one match is delivered to (several: :class:`Conflict` unless ``all_matches``);
    ``variables`` are the payload, merged into the catching instance's variables (or put in
    its ``messageVariable`` / ``camunda:resultVariable``). With no match, the latest version
    of the process whose start event catches ``name`` is started with the business key and
    ``variables`` (several: :class:`Conflict` unless ``all_matches``); none: :class:`NotFound`.

    Authorization: see :func:`may_correlate_anywhere`. For anyone else only the instances
    they may see (``GET /api/process-instances``) take part in matching: an instance they may
    not see is neither reached nor counted, so no answer (200, 404, 409) depends on it and
    none tells whether such an instance matched. Starting a process by message needs the same roles
    (:class:`Forbidden` otherwise): people start processes through the start endpoint,
    which applies the start form.

    Returns the ids of the instances that received the message (or were started by it).
    """
    settings = settings or load_settings()
    data = unit.check_variables(variables)
    if not isinstance(name, str) or not name:
        raise InvalidInput("a message needs a name", field="name")
    keys = {**unit.check_variables(correlation, "correlation"),
            **unit.check_variables(correlation_keys, "correlation_keys")}
    keys = unit.json_safe(keys)
    matched = _find_waiting(session, name, business_key=business_key, keys=keys, context=data)
    if matched and not may_correlate_anywhere(actor):
        # Only the instances the sender may see take part: the answer (and what is delivered)
        # must not depend on instances they cannot see. Refusing a message that would also
        # reach a hidden instance was an oracle: an employee starting their own instance
        # with a guessed value learnt from 200 vs 404 whether a hidden instance held it.
        matched = _visible(session, actor, matched)
    if not matched:
        return _start_by_message(session, name=name, actor=actor, business_key=business_key, data=data,
                                 all_matches=all_matches, settings=settings)
    if len(matched) > 1 and not all_matches:
        raise Conflict("{matched_count} instances wait for message '{name}'; narrow it with a business key "
                       "or correlation keys, or deliver to all", message_name=name, matches=len(matched),
                       params={"matched_count": len(matched), "name": name})
    sender = {"user": actor.name}
    for instance_id in matched:
        loaded = unit.load(session, instance_id)
        _deliver(loaded, name, data, _correlations_for(loaded, name, data), actor, sender)
        unit.run(loaded, actor, settings)
        unit.persist(session, loaded, actor)
    return matched


def _find_waiting(session: Session, name: str, *, business_key: str | None, keys: dict[str, Any],
                  context: dict[str, Any]) -> list[str]:
    """Running instances whose waiting catch events accept the message (from stored rows only)."""
    query = (select(SubscriptionRow.instance_id, SubscriptionRow.element_id, SubscriptionRow.correlations,
                    InstanceRow.definition_id, InstanceRow.variables)
             .join(InstanceRow, InstanceRow.id == SubscriptionRow.instance_id)
             .where(SubscriptionRow.name == name, InstanceRow.status == "running"))
    if business_key is not None:
        query = query.where(InstanceRow.business_key == business_key)
    waiting: dict[str, _Waiting] = {}
    for instance_id, element_id, expected, definition_id, values in session.execute(query):
        entry = waiting.setdefault(instance_id, _Waiting(instance_id, definition_id, values or {}))
        entry.subscriptions.append((element_id, expected))
    sent: dict[tuple[str, str | None], dict[str, Any]] = {}  # the message's correlations per catch element

    def accepts(entry: _Waiting, element_id: str | None, expected: dict[str, Any] | None) -> bool:
        if expected is None:
            return True
        key = (entry.definition_id, element_id)
        if key not in sent:
            definition = _catch_definition(session, entry.definition_id, element_id, name)
            sent[key] = _json(event_correlations(definition, context))
        return correlation_matches(expected, sent[key])

    matched = []
    for entry in waiting.values():
        if not all(k in entry.variables and same_json(v, entry.variables[k]) for k, v in keys.items()):
            continue
        if any(accepts(entry, element_id, expected) for element_id, expected in entry.subscriptions):
            matched.append(entry.instance_id)
    return sorted(matched)


def _json(value: dict[str, Any]) -> dict[str, Any]:
    normal: dict[str, Any] = json.loads(canonical(value))
    return normal


def _catch_definition(session: Session, definition_id: str, element_id: str | None, name: str) -> Any:
    """The message definition of a catch element, from the definition's (cached) specs."""
    specs = unit.specs_for(session, unit.get_definition(session, definition_id))
    for spec in [specs.spec, *specs.subprocess_specs.values()]:
        for task_spec in spec.task_specs.values():
            if getattr(task_spec, "bpmn_id", None) != element_id:
                continue
            for definition in projections.message_definitions_of(task_spec):
                if definition.name == name:
                    return definition
    return None


def _correlations_for(loaded: unit.Loaded, name: str, context: dict[str, Any]) -> dict[str, Any]:
    waiting = [t for t in projections.waiting_events(loaded.workflow) if name in projections.message_names(t)]
    return event_correlations(projections.message_definition(waiting[0], name), context) if waiting else {}


def _visible(session: Session, actor: Actor, instance_ids: list[str]) -> list[str]:
    """The ids among ``instance_ids`` that ``actor`` may see (``GET /api/process-instances``'s rule)."""
    return sorted(session.scalars(select(InstanceRow.id)
                                  .where(InstanceRow.id.in_(instance_ids), instance_scope(actor))))


def _deliver(loaded: unit.Loaded, name: str, payload: Any, correlations: dict[str, Any], actor: Actor,
             sender: dict[str, str]) -> None:
    """Hand the message to the instance's waiting catch events (the engine runs them afterwards)."""
    waiting = [t for t in projections.waiting_events(loaded.workflow) if name in projections.message_names(t)]
    if not waiting:  # moved on since it was matched: the edge retries the whole command
        raise StaleInstance("process instance {id} no longer waits for message '{name}'",
                            instance_id=loaded.row.id, params={"id": loaded.row.id, "name": name})
    # the event must be of the catching definition's own class (the dialects differ)
    definition = projections.message_definition(waiting[0], name)
    sent = payload
    if type(definition) is SpiffCamundaMessage:  # a Camunda definition deployed before sopflow adopted them
        sent = {"payload": payload, "result_var": definition.result_var}
    try:
        loaded.workflow.send_event(BpmnEvent(definition, payload=sent, correlations=correlations))
    except WorkflowException:
        raise StaleInstance("process instance {id} no longer accepts message '{name}'",
                            instance_id=loaded.row.id, params={"id": loaded.row.id, "name": name}) from None
    except Exception as exc:  # noqa: BLE001 - a catch evaluates the model's expressions on the payload
        element = waiting[0].task_spec.bpmn_id
        raise ScriptError("element '{element}' could not take message '{name}': the message's correlation "
                          "properties cannot be read from its payload ({exc_type}: {exc})",
                          element_id=element,
                          params={"element": element, "name": name, "exc_type": type(exc).__name__, "exc": exc}) from None
    for task in waiting:
        if task.state == TaskState.WAITING:
            continue  # not this one (another correlation)
        ed = projections.message_definition(task, name)
        if getattr(ed, "message_var", "") is None or type(ed) is SpiffCamundaMessage:
            # SpiffWorkflow drops a payload that has no variable to land in: merge it (Camunda's rule)
            if not isinstance(payload, dict):
                raise ScriptError(
                    "message '{name}' carries a value that is not an object, and element "
                    "'{bpmn_id}' names no variable to put it in (add a messageVariable)",
                    element_id=task.task_spec.bpmn_id,
                    params={"name": name, "bpmn_id": task.task_spec.bpmn_id})
            pvars.write(loaded.workflow, payload)  # a process-variable write (engine.variables)
    loaded.events.append(Event("message.correlated", actor.name, {
        "message": name, "variables": unit.json_safe(payload) if isinstance(payload, dict) else payload,
        "sender": sender}))


def _start_candidates(session: Session, name: str) -> list[DefinitionRow]:
    latest = select(DefinitionRow.key, func.max(DefinitionRow.version).label("v")).group_by(
        DefinitionRow.key).subquery()
    return sorted((
        d for d in session.scalars(select(DefinitionRow).join(
            latest, (latest.c.key == DefinitionRow.key) & (latest.c.v == DefinitionRow.version)))
        if name in (d.start_messages or [])
    ), key=lambda d: d.key)


def _no_match(name: str) -> NotFound:
    return NotFound("no running instance is waiting for message '{name}' with that business key and those "
                    "correlation keys, and no process starts with it", message_name=name,
                    params={"name": name})


def _start_by_message(session: Session, *, name: str, actor: Actor, business_key: str | None,
                      data: dict[str, Any], all_matches: bool, settings: Settings) -> list[str]:
    """No instance waits for the message: start the latest definitions whose start event catches it."""
    candidates = _start_candidates(session, name)
    if not candidates:
        raise _no_match(name)
    if not may_correlate_anywhere(actor):
        raise Forbidden("no running instance you may see waits for message '{name}', and starting a process "
                        "by message needs the integration or admin role; start it with "
                        "POST /api/process-definitions/{{key}}/start", message_name=name,
                        params={"name": name})
    if len(candidates) > 1 and not all_matches:
        raise Conflict("{candidates_count} processes start with message '{name}'; deliver to all or rename one",
                       message_name=name, matches=len(candidates),
                       params={"candidates_count": len(candidates), "name": name})
    started = []
    for d in candidates:
        loaded = _begin_by_message(session, d, name, data, business_key, actor, settings)
        _deliver(loaded, name, data, event_correlations(_start_definition(loaded, name), data),
                 actor, {"user": actor.name})
        unit.run(loaded, actor, settings)
        unit.persist(session, loaded, actor, new=True)
        started.append(loaded.row.id)
    return started


def _begin_by_message(session: Session, d: DefinitionRow, name: str, data: dict[str, Any],
                      business_key: str | None, actor: Actor, settings: Settings) -> unit.Loaded:
    definition = unit.definition_info(d)
    return begin(definition=definition, specs=unit.specs_for(session, definition), actor=actor, data=data,
                 business_key=business_key, settings=settings, message=name)


def _start_definition(loaded: unit.Loaded, name: str) -> Any:
    waiting = [t for t in projections.waiting_events(loaded.workflow) if name in projections.message_names(t)]
    return projections.message_definition(waiting[0], name) if waiting else None


# ----------------------------------------------------------------- messages thrown by instances


@dataclass
class Outgoing:
    """A message an instance threw that nothing inside it caught, with where it goes."""

    name: str
    payload: Any
    correlations: dict[str, Any]
    to: list[str]  # waiting instances
    starts: list[str]  # or: definition ids whose start event catches it


def take_thrown(session: Session, loaded: unit.Loaded, actor: Actor) -> list[Outgoing]:
    """Collect the instance's uncaught thrown messages and plan their delivery (before it is stored).

    A message goes to the one running instance (other than the sender) waiting for it whose
    correlation properties accept it; with none, it starts the latest process whose start
    event catches it; with neither, it is recorded as sent to nobody. Several waiting
    instances (or several processes to start) cannot be told apart: :class:`ScriptError`
    (422), and the command stores nothing. Adds ``message.sent`` to the sender's audit.
    """
    events = loaded.workflow.get_events()  # empties SpiffWorkflow's list, so nothing is sent twice
    outgoing = []
    for event in events:
        if not isinstance(event.event_definition, MessageEventDefinition):
            continue  # signals and escalations that nothing caught end here, as in SpiffWorkflow
        name = event.event_definition.name
        payload = event.payload
        if type(event.event_definition) is SpiffCamundaMessage and isinstance(payload, dict):
            payload = payload.get("payload")  # the older Camunda wrapper
        correlations = _json(event.correlations or {})
        to = [i for i in _find_thrown_targets(session, name, correlations) if i != loaded.row.id]
        starts = [] if to else [d.id for d in _start_candidates(session, name)]
        if len(to) > 1 or len(starts) > 1:
            what = (Phrase("{count} waiting instances", count=len(to)) if to
                    else Phrase("{count} processes that start with it", count=len(starts)))
            raise ScriptError("message '{name}' thrown by instance {id} matches {what}; give the "
                              "message correlation properties so that it reaches exactly one",
                              message_name=name, params={"name": name, "id": loaded.row.id, "what": what})
        outgoing.append(Outgoing(name, payload, correlations, to, starts))
        loaded.events.append(Event("message.sent", actor.name, {
            "message": name, "to": to, "starts": starts,
            "variables": unit.json_safe(payload) if isinstance(payload, dict) else payload}))
    return outgoing


def _find_thrown_targets(session: Session, name: str, correlations: dict[str, Any]) -> list[str]:
    query = (select(SubscriptionRow.instance_id, SubscriptionRow.correlations)
             .join(InstanceRow, InstanceRow.id == SubscriptionRow.instance_id)
             .where(SubscriptionRow.name == name, InstanceRow.status == "running"))
    return sorted({iid for iid, expected in session.execute(query) if correlation_matches(expected, correlations)})


def route_thrown(session: Session, sender: unit.Loaded, outgoing: list[Outgoing], actor: Actor,
                 settings: Settings) -> None:
    """Deliver planned messages after the sender is stored (same transaction); may cascade.

    Raises :class:`ScriptError` (422, the whole command rolls back) past
    :data:`MAX_CASCADE_DEPTH` hops or :data:`MAX_CASCADE_DELIVERIES` deliveries.
    """
    depth = sender.message_depth + 1
    source = {"instance_id": sender.row.id}
    for message in outgoing:
        for _ in [*message.to, *message.starts]:
            _count_delivery(session, message.name, depth)
        for instance_id in message.to:
            loaded = unit.load(session, instance_id)
            loaded.message_depth = depth
            _deliver(loaded, message.name, message.payload, message.correlations, actor, source)
            unit.run(loaded, actor, settings)
            unit.persist(session, loaded, actor)
        for definition_id in message.starts:
            d = session.get(DefinitionRow, definition_id)
            if d is None:  # pragma: no cover - definitions are never deleted
                continue
            data = message.payload if isinstance(message.payload, dict) else {}
            loaded = _begin_by_message(session, d, message.name, unit.json_safe(data), None, actor, settings)
            loaded.message_depth = depth
            _deliver(loaded, message.name, message.payload, message.correlations, actor, source)
            unit.run(loaded, actor, settings)
            unit.persist(session, loaded, actor, new=True)


def _count_delivery(session: Session, name: str, depth: int) -> None:
    if depth > MAX_CASCADE_DEPTH:
        raise ScriptError("message '{name}' is the {depth}th hop of messages between instances in one command "
                          "(at most {max_cascade_depth}); the diagrams send messages in a loop",
                          message_name=name,
                          params={"name": name, "depth": depth, "max_cascade_depth": MAX_CASCADE_DEPTH})
    count = session.info.get("sopflow_message_deliveries", 0) + 1
    session.info["sopflow_message_deliveries"] = count
    if count > MAX_CASCADE_DELIVERIES:
        raise ScriptError("one command would deliver more than {max_cascade_deliveries} messages between "
                          "instances; the diagrams send messages in a loop or fan out too far", message_name=name,
                          params={"max_cascade_deliveries": MAX_CASCADE_DELIVERIES})
