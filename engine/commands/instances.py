"""Starting and cancelling process instances."""
from __future__ import annotations

from typing import Any

from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session

from engine import clock, forms, variables
from engine.actor import Actor
from engine.audit import Event
from engine.commands import unit
from engine.commands.unit import DefinitionInfo, Loaded
from engine.config import Settings
from engine.config import load as load_settings
from engine.errors import InvalidInput, NotFound, Phrase
from engine.ids import time_ordered_id
from engine.serialization import Specs, new_workflow
from engine.store.models import DefinitionRow, InstanceRecord

_LATEST_ID = (select(DefinitionRow.id).where(DefinitionRow.key == bindparam("b_key"))
              .order_by(DefinitionRow.version.desc()).limit(1))
_VERSION_ID = select(DefinitionRow.id).where(DefinitionRow.key == bindparam("b_key"),
                                             DefinitionRow.version == bindparam("b_version"))


def latest_definition(session: Session, key: str, version: int | None = None) -> DefinitionRow:
    query = select(DefinitionRow).where(DefinitionRow.key == key)
    query = query.where(DefinitionRow.version == version) if version else query.order_by(
        DefinitionRow.version.desc())
    row = session.scalars(query.limit(1)).first()
    if row is None:
        raise _no_definition(key, version)
    return row


def _no_definition(key: str, version: int | None) -> NotFound:
    if version:
        return NotFound("no process definition with key '{key}' version {version}", key=key,
                        params={"key": key, "version": version})
    return NotFound("no process definition with key '{key}'", key=key, params={"key": key})


def _definition_for_start(session: Session, key: str, version: int | None) -> DefinitionInfo:
    """The definition to start: one light query for its id, the rest from the immutable cache."""
    if version:
        definition_id = session.connection().execute(_VERSION_ID, {"b_key": key, "b_version": version}).scalar()
    else:
        definition_id = session.connection().execute(_LATEST_ID, {"b_key": key}).scalar()
    if definition_id is None:
        raise _no_definition(key, version)
    return unit.get_definition(session, definition_id)


def start_instance(session: Session, *, key: str, actor: Actor, variables: dict[str, Any] | None = None,
                   business_key: str | None = None, version: int | None = None,
                   settings: Settings | None = None) -> InstanceRecord:
    """Start an instance of the latest (or given) version of ``key`` with start variables.

    Start variables follow the start event's form when it has one (Camunda ``formData`` or a
    form key naming a form sopflow has): exactly its fields, validated and coerced like a
    task's (InvalidInput, 422, naming the fields). A start event without a form accepts any
    variables, as Camunda's REST start does.
    """
    definition = _definition_for_start(session, key, version)
    data = check_start_variables(definition, unit.check_variables(variables))
    return start(session, definition, actor=actor, data=data, business_key=business_key,
                 settings=settings or load_settings())


def start_form(definition: DefinitionInfo) -> dict[str, Any] | None:
    """The start event's form (title, JSON schema, UI hints), or None when it declares none sopflow knows."""
    declared = definition.start_form
    if not declared:
        return None
    return forms.form_for(declared.get("form_key"), declared.get("form_fields"))


def check_start_variables(definition: DefinitionInfo, data: dict[str, Any]) -> dict[str, Any]:
    form = start_form(definition)
    if form is None:
        return data
    declared = definition.start_form or {}
    return forms.check_submission(Phrase("the start of process '{key}'", key=definition.key), form, declared.get("form_fields"),
                                  None, data, form_key=declared.get("form_key"))


def get_start_form(session: Session, *, key: str, version: int | None = None) -> dict[str, Any]:
    """What a client needs to start ``key``: its start form, or that it takes any variables."""
    definition = _definition_for_start(session, key, version)
    form = start_form(definition)
    declared = definition.start_form or {}
    return {
        "definition_id": definition.id, "key": definition.key, "version": definition.version,
        "element_id": declared.get("element_id"), "form_key": declared.get("form_key"),
        "form": None if form is None else {"title": form.get("title"), "schema": form["schema"],
                                           "ui": form.get("ui")},
        "accepts": "form" if form is not None else "any",
    }


def start(session: Session, definition: DefinitionInfo, *, actor: Actor, data: dict[str, Any],
          business_key: str | None, settings: Settings) -> InstanceRecord:
    """Create, run to its first wait and store a new instance of ``definition``."""
    loaded = begin(definition=definition, specs=unit.specs_for(session, definition), actor=actor, data=data,
                   business_key=business_key, settings=settings)
    unit.persist(session, loaded, actor, new=True)
    return loaded.row


def begin(*, definition: DefinitionInfo, specs: Specs, actor: Actor, data: dict[str, Any], business_key: str | None,
          settings: Settings, message: str | None = None) -> Loaded:
    """A new instance run to its first wait, not yet stored (the caller persists it)."""
    if business_key is not None and (not isinstance(business_key, str) or len(business_key) > 200):
        raise InvalidInput("business_key must be a string of at most 200 characters", field="business_key")
    workflow = new_workflow(specs)
    variables.init(workflow, data)  # the instance's one set of process variables
    row = InstanceRecord(
        id=time_ordered_id(), definition_id=definition.id, definition_key=definition.key,
        definition_version=definition.version, business_key=business_key, started_by=actor.name,
        started_at=clock.now(), audit_seq=0, revision=0, open_task_ids=[], waits=0, last_audit_hash=None,
    )
    loaded = Loaded(row, definition, specs, workflow, 0, 0)
    loaded.events.append(Event("instance.started", actor.name, {
        "variables": data, "business_key": business_key, "definition_key": definition.key,
        "definition_version": definition.version, **({"message": message} if message else {}),
    }))
    unit.run(loaded, actor, settings)
    return loaded


def cancel_instance(session: Session, *, instance_id: str, actor: Actor, reason: str | None = None) -> None:
    loaded = unit.load(session, instance_id)
    loaded.workflow.cancel()
    loaded.events.append(Event("instance.cancelled", actor.name, {"reason": reason}))
    unit.persist(session, loaded, actor, status="cancelled", end_reason=reason)


