"""Message correlation: deliver a named message to the instances waiting for it, or start one."""
from __future__ import annotations

from typing import Any

from SpiffWorkflow.bpmn import BpmnEvent
from SpiffWorkflow.bpmn.specs.event_definitions.message import MessageEventDefinition
from SpiffWorkflow.exceptions import SpiffWorkflowException
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from engine import projections
from engine.actor import Actor
from engine.audit import Event
from engine.commands import unit
from engine.commands.instances import begin
from engine.config import Settings
from engine.config import load as load_settings
from engine.errors import Conflict, InvalidInput, NotFound
from engine.store.models import DefinitionRow, InstanceRow, SubscriptionRow


def correlate_message(session: Session, *, name: str, actor: Actor, business_key: str | None = None,
                      correlation: dict[str, Any] | None = None, variables: dict[str, Any] | None = None,
                      all_matches: bool = False, settings: Settings | None = None) -> list[str]:
    settings = settings or load_settings()
    data = unit.check_variables(variables)
    if not isinstance(name, str) or not name:
        raise InvalidInput("a message needs a name", field="name")
    correlation = unit.check_variables(correlation, "correlation")
    query = (select(SubscriptionRow.instance_id).join(InstanceRow, InstanceRow.id == SubscriptionRow.instance_id)
             .where(SubscriptionRow.name == name, InstanceRow.status == "running").distinct())
    if business_key is not None:
        query = query.where(InstanceRow.business_key == business_key)
    instance_ids = sorted(session.scalars(query))
    if correlation:
        matched = []
        for iid, values in session.execute(select(InstanceRow.id, InstanceRow.variables)
                                           .where(InstanceRow.id.in_(instance_ids))):
            if all(unit.json_safe({k: v}).get(k) == (values or {}).get(k) for k, v in correlation.items()):
                matched.append(iid)
        instance_ids = sorted(matched)
    if not instance_ids:
        return _start_by_message(session, name=name, actor=actor, business_key=business_key, data=data,
                                 all_matches=all_matches, settings=settings)
    if len(instance_ids) > 1 and not all_matches:
        raise Conflict(f"{len(instance_ids)} instances wait for message '{name}'; narrow it with a business key "
                       "or correlation variables, or deliver to all", message_name=name, matches=len(instance_ids))
    for instance_id in instance_ids:
        loaded = unit.load(session, instance_id)
        _deliver(loaded, name, data, actor)
        unit.run(loaded, actor, settings)
        unit.persist(session, loaded, actor)
    return instance_ids


def _deliver(loaded: unit.Loaded, name: str, data: dict[str, Any], actor: Actor) -> None:
    waiting = [t for t in projections.waiting_events(loaded.workflow) if name in projections.message_names(t)]
    # the event must be of the catching definition's own class (Spiff and Camunda dialects differ)
    definition = projections.message_definition(waiting[0], name) if waiting else MessageEventDefinition(name)
    try:
        loaded.workflow.send_event(BpmnEvent(definition, payload=data))
    except SpiffWorkflowException as exc:
        raise unit.spiff_error(exc) from None
    for task in waiting:
        ed = projections.message_definition(task, name)
        if getattr(ed, "message_var", "") is None or getattr(ed, "variable", "") is None:
            task.data.update(data)  # these dialects drop a payload that has no variable to land in
    loaded.events.append(Event("message.correlated", actor.name, {"message": name, "variables": data}))


def _start_by_message(session: Session, *, name: str, actor: Actor, business_key: str | None,
                      data: dict[str, Any], all_matches: bool, settings: Settings) -> list[str]:
    """No instance waits for the message: start the latest definitions whose start event catches it."""
    latest = select(DefinitionRow.key, func.max(DefinitionRow.version).label("v")).group_by(
        DefinitionRow.key).subquery()
    candidates = [
        d for d in session.scalars(select(DefinitionRow).join(
            latest, (latest.c.key == DefinitionRow.key) & (latest.c.v == DefinitionRow.version)))
        if name in (d.start_messages or [])
    ]
    if not candidates:
        raise NotFound(f"no running instance is waiting for message '{name}' and no process starts with it",
                       message_name=name)
    if len(candidates) > 1 and not all_matches:
        raise Conflict(f"{len(candidates)} processes start with message '{name}'; deliver to all or rename one",
                       message_name=name, matches=len(candidates))
    started = []
    for d in sorted(candidates, key=lambda d: d.key):
        definition = unit.definition_info(d)
        loaded = begin(definition=definition, specs=unit.specs_for(session, definition), actor=actor, data=data,
                       business_key=business_key, settings=settings, message=name)
        _deliver(loaded, name, data, actor)  # the start event waits for this very message
        unit.run(loaded, actor, settings)
        unit.persist(session, loaded, actor, new=True)
        started.append(loaded.row.id)
    return started
