"""Small typed helpers shared by the tests (factories, not fixtures)."""
from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import undefer

from engine.commands import Actor, deploy
from engine.loading import UploadedFile
from engine.store.db import Database
from engine.store.models import AuditEventRow, InstanceRow, JobRow, TaskRow

DESIGNER = Actor("dora", roles=frozenset({"designer"}))
ALICE = Actor("alice", groups=frozenset({"staff"}), roles=frozenset({"employee"}))
BOB = Actor("bob", groups=frozenset({"staff"}), roles=frozenset({"employee"}))
MALLORY = Actor("mallory", groups=frozenset({"outsiders"}), roles=frozenset({"employee"}))
SHOP = Actor("shop", roles=frozenset({"integration"}))  # another system, sending messages


def deploy_xml(db: Database, xml: bytes, name: str = "process.bpmn", *extra: UploadedFile):
    return db.command(lambda s: deploy(s, files=[UploadedFile(name, xml), *extra], actor=DESIGNER))


def open_tasks(db: Database, instance_id: str) -> list[TaskRow]:
    with db.read() as s:
        return list(s.scalars(select(TaskRow).where(TaskRow.instance_id == instance_id, TaskRow.state == "open")
                              .order_by(TaskRow.element_id)))


def instance(db: Database, instance_id: str) -> InstanceRow:
    with db.read() as s:
        row = s.get(InstanceRow, instance_id, options=[undefer(InstanceRow.state)])
        assert row is not None
        return row


def jobs(db: Database, instance_id: str) -> list[JobRow]:
    with db.read() as s:
        return list(s.scalars(select(JobRow).where(JobRow.instance_id == instance_id).order_by(JobRow.due_at)))


def audit_actions(db: Database, instance_id: str) -> list[str]:
    with db.read() as s:
        return list(s.scalars(select(AuditEventRow.action).where(AuditEventRow.chain == instance_id)
                              .order_by(AuditEventRow.chain_seq)))


def snapshot(db: Database) -> dict[str, Any]:
    """Row counts and instance revisions: what must not change when a command is refused."""
    from engine.store import models

    with db.read() as s:
        counts = {t.__tablename__: s.query(t).count() for t in (
            models.DeploymentRow, models.DefinitionRow, models.InstanceRow, models.TaskRow, models.JobRow,
            models.AuditEventRow, models.SubscriptionRow)}
        revisions = dict(s.execute(select(InstanceRow.id, InstanceRow.revision)).all())
        states = dict(s.execute(select(TaskRow.id, TaskRow.state)).all())
    return {"counts": counts, "revisions": revisions, "task_states": states}
