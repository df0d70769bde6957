"""Deploying BPMN/DMN bundles as versioned process definitions."""
from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from engine import audit, clock
from engine.actor import Actor
from engine.audit import Event
from engine.config import Settings
from engine.config import load as load_settings
from engine.loading import UploadedFile, bundle_checksum, parse_bundle
from engine.serialization import dump_specs
from engine.store.models import DefinitionRow, DeploymentResourceRow, DeploymentRow
from engine.uploads import sanitize_filename


@dataclass
class DeployResult:
    deployment_id: str
    created: bool
    definitions: list[dict[str, Any]]


def _definitions_of(session: Session, deployment_id: str) -> list[dict[str, Any]]:
    rows = session.scalars(select(DefinitionRow).where(DefinitionRow.deployment_id == deployment_id)
                           .order_by(DefinitionRow.key)).all()
    return [{"id": r.id, "key": r.key, "version": r.version, "name": r.name, "resource": r.resource_name}
            for r in rows]


def _definition_dict(row: DefinitionRow) -> dict[str, Any]:
    return {"id": row.id, "key": row.key, "version": row.version, "name": row.name, "resource": row.resource_name}


def resource_name(raw: str) -> str:
    """The name a deployed file is stored under: its base name, made safe (engine.uploads.sanitize_filename:
    the last part after ``/`` or ``\\``, no control characters, at most 200 characters); "upload.bpmn" when
    nothing is left of it."""
    return sanitize_filename(raw) or "upload.bpmn"


def deploy(session: Session, *, files: list[UploadedFile], actor: Actor, name: str | None = None,
           settings: Settings | None = None) -> DeployResult:
    """Deploy a bundle of BPMN/DMN files; a process whose parsed content is unchanged keeps its version.

    Each file is stored under its base name (:func:`resource_name`: a browser's
    ``C:\\fakepath\\x.bpmn`` or a client's ``../../x.bpmn`` is ``x.bpmn``). Identical bytes
    (under the same names) return the earlier deployment at once. Otherwise each process is
    compared by the hash of its parsed spec and metadata with the latest version of its
    key (so re-uploading one file of a bundle, or a bundle with an untouched file, does
    not create versions nobody changed); a deployment row is written only if something
    is new.
    """
    settings = settings or load_settings()
    files = [UploadedFile(resource_name(f.name), f.data) for f in files]
    checksum = bundle_checksum(files) if files else ""
    existing = session.scalar(select(DeploymentRow).where(DeploymentRow.checksum == checksum))
    if existing is not None:
        return DeployResult(existing.id, False, _definitions_of(session, existing.id))
    bundle = parse_bundle(files, settings)
    now = clock.now()
    deployment_id = str(uuid.uuid4())
    results, new_rows = [], []
    for process in bundle.processes:
        spec_text = dump_specs(bundle.dialect, process.spec, process.subprocess_specs, process.io)
        user_tasks = {k: m.to_dict() for k, m in process.user_tasks.items()}
        content_hash = hashlib.sha256(
            (spec_text + audit.canonical(user_tasks) + audit.canonical(process.message_names)
             + audit.canonical(process.start_form)).encode()).hexdigest()
        latest = session.scalars(select(DefinitionRow).where(DefinitionRow.key == process.key)
                                 .order_by(DefinitionRow.version.desc()).limit(1)).first()
        if latest is not None and latest.content_hash == content_hash:
            results.append(_definition_dict(latest))
            continue
        row = DefinitionRow(
            id=str(uuid.uuid4()), key=process.key, version=(latest.version if latest else 0) + 1, name=process.name,
            deployment_id=deployment_id, resource_name=process.resource_name, spec=spec_text,
            user_tasks=user_tasks, message_names=process.message_names, start_messages=process.start_messages,
            start_form=process.start_form,
            content_hash=content_hash, created_at=now,
        )
        new_rows.append(row)
        results.append(_definition_dict(row))
    if not new_rows:
        deployed_in = session.scalar(select(DefinitionRow.deployment_id).where(DefinitionRow.id == results[0]["id"]))
        return DeployResult(str(deployed_in), False, results)
    session.add(DeploymentRow(id=deployment_id, name=name or ", ".join(sorted(f.name for f in files))[:200],
                              checksum=checksum, dialect=bundle.dialect, deployed_by=actor.name, deployed_at=now))
    session.flush()
    session.add_all([DeploymentResourceRow(deployment_id=deployment_id, name=f.name, content=f.data,
                                           sha256=hashlib.sha256(f.data).hexdigest()) for f in files])
    session.add_all(new_rows)
    session.flush()
    audit.append_global(session, audit.DEPLOYMENTS_CHAIN, [Event("deployment.created", actor.name, {
        "deployment_id": deployment_id, "checksum": checksum, "files": sorted(f.name for f in files),
        "definitions": [{"key": r.key, "version": r.version} for r in new_rows],
    })])
    return DeployResult(deployment_id, True, results)




def deploy_edited(session: Session, *, key: str, data: bytes, actor: Actor, settings: Settings | None = None,
                  name: str | None = None) -> DeployResult:
    """Deploy an edited copy of the file ``key``'s latest version came from (the web modeler's "deploy").

    ``data`` replaces that file (same file name); the deployment's other files go along
    unchanged so that what it calls or decides with (DMN decisions, called processes in
    other files) still resolves: every DMN file, and each other BPMN file only while all
    the definitions it produced are still the latest of their keys (an older file would
    otherwise become a new version that undoes someone's later deployment). Processes
    whose content is unchanged keep their versions, as in :func:`deploy`.
    Raises NotFound for an unknown key and InvalidDefinition (nothing written) when refused.
    """
    from engine.commands.instances import latest_definition

    latest = latest_definition(session, key)
    resources = session.scalars(select(DeploymentResourceRow).where(
        DeploymentResourceRow.deployment_id == latest.deployment_id).order_by(DeploymentResourceRow.name)).all()
    produced = session.execute(select(DefinitionRow.resource_name, DefinitionRow.key, DefinitionRow.version)
                               .where(DefinitionRow.deployment_id == latest.deployment_id)).all()
    files = [UploadedFile(latest.resource_name, data)]
    for resource in resources:
        if resource.name == latest.resource_name:
            continue
        mine = [(k, v) for r, k, v in produced if r == resource.name]
        if all(_newest_version(session, k) == v for k, v in mine):
            files.append(UploadedFile(resource.name, bytes(resource.content)))
    return deploy(session, files=files, actor=actor, settings=settings, name=name or f"{latest.resource_name} (edited)")


def _newest_version(session: Session, key: str) -> int | None:
    return session.scalar(select(DefinitionRow.version).where(DefinitionRow.key == key)
                          .order_by(DefinitionRow.version.desc()).limit(1))
