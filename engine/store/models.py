"""SQLAlchemy 2 models for every table in DESIGN.md.

``process_instances.state`` holds the serialized workflow (without specs) guarded by
``revision``; ``tasks``, ``jobs`` and ``event_subscriptions`` are projections of that
state, re-synced in the same transaction by every command; ``audit_events`` is the
append-only, hash-chained log. Relationships are not declared: queries are explicit.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC in, timezone-aware UTC out, on SQLite and PostgreSQL alike."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store; use engine.clock")
        from datetime import UTC

        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        from datetime import UTC

        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class DeploymentRow(Base):
    __tablename__ = "deployments"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    checksum: Mapped[str] = mapped_column(String(64), unique=True)
    dialect: Mapped[str] = mapped_column(String(20))
    deployed_by: Mapped[str | None] = mapped_column(String(100))
    deployed_at: Mapped[datetime] = mapped_column(UTCDateTime)


class DeploymentResourceRow(Base):
    __tablename__ = "deployment_resources"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    deployment_id: Mapped[str] = mapped_column(ForeignKey("deployments.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(255))
    content: Mapped[bytes] = mapped_column(LargeBinary)
    sha256: Mapped[str] = mapped_column(String(64))


class DefinitionRow(Base):
    __tablename__ = "process_definitions"
    __table_args__ = (UniqueConstraint("key", "version"),)
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    key: Mapped[str] = mapped_column(String(200), index=True)
    version: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(200))
    deployment_id: Mapped[str] = mapped_column(ForeignKey("deployments.id"), index=True)
    resource_name: Mapped[str] = mapped_column(String(255))
    spec: Mapped[str] = mapped_column(Text, deferred=True)  # restored once per process (SpecCache)
    user_tasks: Mapped[dict[str, Any]] = mapped_column(JSON)
    message_names: Mapped[list[str]] = mapped_column(JSON)
    start_messages: Mapped[list[str]] = mapped_column(JSON, default=list)  # caught by a top-level start event
    # the none start event's form ({"element_id", "form_key", "form_fields"}); None: start takes any variables
    start_form: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    content_hash: Mapped[str] = mapped_column(String(64))  # parsed spec + metadata: unchanged => same version
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class InstanceRow(Base):
    __tablename__ = "process_instances"
    __table_args__ = (
        Index("ix_process_instances_status_started", "status", "started_at"),
        Index("ix_process_instances_key_status", "definition_key", "status"),
    )
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    # no index: nothing looks instances up by definition id, and definitions are never deleted
    definition_id: Mapped[str] = mapped_column(ForeignKey("process_definitions.id"))
    definition_key: Mapped[str] = mapped_column(String(200))
    definition_version: Mapped[int] = mapped_column(Integer)
    business_key: Mapped[str | None] = mapped_column(String(200), index=True)
    status: Mapped[str] = mapped_column(String(20))  # running | completed | cancelled
    state: Mapped[str] = mapped_column(Text, deferred=True)
    state_format: Mapped[str] = mapped_column(String(40))
    variables: Mapped[dict[str, Any]] = mapped_column(JSON)
    revision: Mapped[int] = mapped_column(Integer)
    started_by: Mapped[str | None] = mapped_column(String(100), index=True)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    ended_by: Mapped[str | None] = mapped_column(String(100))
    end_reason: Mapped[str | None] = mapped_column(Text)
    last_audit_hash: Mapped[str | None] = mapped_column(String(64))
    audit_seq: Mapped[int] = mapped_column(Integer, default=0)
    # what the projections hold for this instance, kept under the revision check so a
    # command can re-sync them without querying first
    open_task_ids: Mapped[list[str]] = mapped_column(JSON, default=list)
    waits: Mapped[int] = mapped_column(Integer, default=0)  # jobs + event subscriptions


@dataclass(slots=True)
class InstanceRecord:
    """A ``process_instances`` row as a command reads and writes it.

    A plain record, not an ORM object: the unit of work writes it with one guarded INSERT
    or UPDATE, so it needs no identity map, and it costs a fraction of an instrumented
    instance to build. Its fields are the table's columns (a test holds them equal).
    """

    id: str
    definition_id: str
    definition_key: str
    definition_version: int
    business_key: str | None = None
    status: str = "running"
    state: str | None = None
    state_format: str | None = None
    variables: dict[str, Any] | None = None
    revision: int = 0
    started_by: str | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None
    ended_by: str | None = None
    end_reason: str | None = None
    last_audit_hash: str | None = None
    audit_seq: int = 0
    open_task_ids: list[str] | None = None
    waits: int = 0


class TaskRow(Base):
    __tablename__ = "tasks"
    __table_args__ = (
        # the inbox's "assigned to me" branch, one per sort key (engine.queries, docs/notes/inbox.md);
        # each also serves "state + assignee" lookups
        Index("ix_tasks_assignee_created", "assignee", "state", "created_at", "id"),
        Index("ix_tasks_assignee_due", "assignee", "state", "due_at", "id"),
        Index("ix_tasks_assignee_priority", "assignee", "state", "priority", "id"),
        Index("ix_tasks_state_due", "state", "due_at"),
        Index("ix_tasks_instance_state", "instance_id", "state"),
    )
    id: Mapped[str] = mapped_column(String(36), primary_key=True)  # SpiffWorkflow task UUID
    instance_id: Mapped[str] = mapped_column(ForeignKey("process_instances.id", ondelete="CASCADE"))
    definition_id: Mapped[str] = mapped_column(String(36))
    definition_key: Mapped[str] = mapped_column(String(200))  # no index: filtered among what the inbox indexes find
    element_id: Mapped[str] = mapped_column(String(200))
    meta_key: Mapped[str] = mapped_column(String(400))
    name: Mapped[str] = mapped_column(String(400))
    lane: Mapped[str | None] = mapped_column(String(200))
    state: Mapped[str] = mapped_column(String(20))  # open | completed | cancelled
    assignee: Mapped[str | None] = mapped_column(String(100))
    candidate_users: Mapped[list[str]] = mapped_column(JSON)
    candidate_groups: Mapped[list[str]] = mapped_column(JSON)
    form_key: Mapped[str | None] = mapped_column(String(200))
    priority: Mapped[int] = mapped_column(Integer, default=50)
    due_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    at_risk_at: Mapped[datetime | None] = mapped_column(UTCDateTime)  # 75% of the time to due_at spent
    # what the SLA jobs announced (engine.commands.sla): on_time | at_risk | breached; NULL without a due date
    sla_state: Mapped[str | None] = mapped_column(String(20))
    follow_up_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    created_revision: Mapped[int] = mapped_column(Integer, default=0)  # instance revision that opened it
    claimed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    completed_by: Mapped[str | None] = mapped_column(String(100))
    # the task's own scope when it opened: multi-instance item, loopCounter, input parameters
    local_variables: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)


class TaskCandidateRow(Base):
    """Who a task is offered to: one row per candidate user or group, or one ``anyone`` row.

    The inbox's index (engine.queries). ``kind`` is ``user`` or ``group`` (``name`` the user
    or group), or ``anyone`` (``name`` ``*``) for a task that names no candidates, which any
    employee may take. ``offered`` is true while the task is open and unassigned (kept by
    every command that opens, claims, unclaims, assigns, completes or cancels a task);
    ``created_at``, ``due_at`` and ``priority`` are the task's (they never change), so each
    (kind, name) reads its open offers in any inbox order from one index.
    """

    __tablename__ = "task_candidates"
    task_id: Mapped[str] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"), primary_key=True)
    kind: Mapped[str] = mapped_column(String(10), primary_key=True)  # user | group | anyone
    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    offered: Mapped[bool] = mapped_column(Boolean)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    due_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    priority: Mapped[int] = mapped_column(Integer)
    __table_args__ = (
        Index("ix_task_candidates_offers_created", "kind", "name", "offered", "created_at", "task_id"),
        Index("ix_task_candidates_offers_due", "kind", "name", "offered", "due_at", "task_id"),
        Index("ix_task_candidates_offers_priority", "kind", "name", "offered", "priority", "task_id"),
    )


class JobRow(Base):
    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_due", "state", "due_at"),)
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    dedup_key: Mapped[str] = mapped_column(String(200), unique=True)
    kind: Mapped[str] = mapped_column(String(30))  # timer | sla_at_risk | sla_breach | sla_reminder | sla_follow_up
    instance_id: Mapped[str] = mapped_column(ForeignKey("process_instances.id", ondelete="CASCADE"), index=True)
    task_id: Mapped[str | None] = mapped_column(String(36))
    element_id: Mapped[str | None] = mapped_column(String(200))
    due_at: Mapped[datetime] = mapped_column(UTCDateTime)
    state: Mapped[str] = mapped_column(String(20), default="pending")  # pending | failed (incident)
    lock_owner: Mapped[str | None] = mapped_column(String(100))
    lock_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class SubscriptionRow(Base):
    """A waiting message catch event (projection), for correlation without deserializing."""

    __tablename__ = "event_subscriptions"
    __table_args__ = (Index("ix_event_subscriptions_name", "name"),)
    task_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    instance_id: Mapped[str] = mapped_column(ForeignKey("process_instances.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(20))  # message
    element_id: Mapped[str | None] = mapped_column(String(200))
    # what the catch event requires of a message's correlation values ({key: {property: value}});
    # NULL accepts any message of this name (SpiffWorkflow's rule)
    correlations: Mapped[dict[str, Any] | None] = mapped_column(JSON)


class AuditEventRow(Base):
    __tablename__ = "audit_events"
    __table_args__ = (
        # (chain, chain_seq) also serves "events of an instance": an instance's chain is its id.
        # Every index here is written by every command; action and definition filters ride on
        # the time or actor index, or scan in sequence order (audit reads are rare, writes are not).
        UniqueConstraint("chain", "chain_seq"),
        Index("ix_audit_events_actor_time", "actor", "occurred_at"),
    )
    seq: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    chain: Mapped[str] = mapped_column(String(60))
    chain_seq: Mapped[int] = mapped_column(Integer)
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    actor: Mapped[str | None] = mapped_column(String(100))
    action: Mapped[str] = mapped_column(String(60))
    instance_id: Mapped[str | None] = mapped_column(String(36))
    task_id: Mapped[str | None] = mapped_column(String(36))
    definition_id: Mapped[str | None] = mapped_column(String(36))
    definition_key: Mapped[str | None] = mapped_column(String(200))
    definition_version: Mapped[int | None] = mapped_column(Integer)
    payload: Mapped[str] = mapped_column(Text)  # canonical JSON, exactly as hashed
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


class ChainHeadRow(Base):
    """Head of the non-instance audit chains (deployments, identity)."""

    __tablename__ = "audit_chain_heads"
    chain: Mapped[str] = mapped_column(String(60), primary_key=True)
    seq: Mapped[int] = mapped_column(Integer)
    hash: Mapped[str] = mapped_column(String(64))


class UserRow(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    # the name in lower case: no two users' names differ only in case (engine.identity). NULL only for a
    # user who clashed so with an older one before the rule (migration 9d2b6e4f1a37): exact name only.
    name_key: Mapped[str | None] = mapped_column(String(100), unique=True, index=True)
    display_name: Mapped[str | None] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(20))  # designer | employee | auditor | admin
    locale: Mapped[str | None] = mapped_column(String(20))  # en | zh-Hans (notifications); NULL: en
    email: Mapped[str | None] = mapped_column(String(320))  # where e-mail notifications go
    time_zone: Mapped[str | None] = mapped_column(String(64))  # IANA zone the pages show times in; NULL: UTC
    password_hash: Mapped[str | None] = mapped_column(String(200))  # argon2id (engine.passwords); NULL: no sign-in
    failed_sign_ins: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    locked_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class GroupRow(Base):
    __tablename__ = "groups"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)


class MembershipRow(Base):
    __tablename__ = "memberships"
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    group_id: Mapped[int] = mapped_column(ForeignKey("groups.id", ondelete="CASCADE"), primary_key=True)


class ApiTokenRow(Base):
    __tablename__ = "api_tokens"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class BrowserSessionRow(Base):
    """A signed-in browser (engine.browser_sessions): the cookie's token is stored as its SHA-256."""

    __tablename__ = "browser_sessions"
    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)


class ExternalTaskRow(Base):
    """A service/send/business-rule task waiting for (or done by) an external worker.

    One row per SpiffWorkflow task that reached an external implementation (engine.external),
    synced from the workflow like ``tasks``; rows stay after the task ends, as history.
    Fetchable: ``state = 'open'``, retries not exhausted (NULL = never failed) and the lock
    free (``lock_expires_at`` NULL or past; a failure with a retry timeout sets it ahead).
    """

    __tablename__ = "external_tasks"
    __table_args__ = (
        Index("ix_external_tasks_state_topic", "state", "topic"),
        Index("ix_external_tasks_instance_state", "instance_id", "state"),
    )
    id: Mapped[str] = mapped_column(String(36), primary_key=True)  # SpiffWorkflow task UUID
    instance_id: Mapped[str] = mapped_column(ForeignKey("process_instances.id", ondelete="CASCADE"))
    definition_id: Mapped[str] = mapped_column(String(36))
    definition_key: Mapped[str] = mapped_column(String(200))
    definition_version: Mapped[int] = mapped_column(Integer)
    business_key: Mapped[str | None] = mapped_column(String(200))
    element_id: Mapped[str] = mapped_column(String(200))
    element_type: Mapped[str] = mapped_column(String(40))  # serviceTask | sendTask | businessRuleTask
    name: Mapped[str] = mapped_column(String(400))
    topic: Mapped[str] = mapped_column(String(400))
    priority: Mapped[int] = mapped_column(Integer, default=0)
    state: Mapped[str] = mapped_column(String(20))  # open | completed | error (BPMN error caught) | cancelled
    variables: Mapped[dict[str, Any]] = mapped_column(JSON)  # the task's scope, re-synced while it waits
    local_variables: Mapped[dict[str, Any]] = mapped_column(JSON)  # evaluated operator parameters
    extension_properties: Mapped[dict[str, Any]] = mapped_column(JSON)
    worker_id: Mapped[str | None] = mapped_column(String(255))
    lock_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    retries: Mapped[int | None] = mapped_column(Integer)
    error_message: Mapped[str | None] = mapped_column(Text)
    error_details: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    completed_by: Mapped[str | None] = mapped_column(String(255))  # the worker id


class IncidentRow(Base):
    """Something that needs a person: an external task out of retries, an unhandled BPMN error, a failed job.

    Generic on purpose: ``kind`` says what failed and ``external_task_id`` or ``job_id`` which
    one. Open while ``resolved_at`` is NULL; ``resolution`` says how it closed (``retried``,
    ``task_ended``, ``instance_cancelled``).
    """

    __tablename__ = "incidents"
    __table_args__ = (Index("ix_incidents_open", "resolved_at", "created_at"),)
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    kind: Mapped[str] = mapped_column(String(40))  # failed_external_task | unhandled_bpmn_error | failed_job
    instance_id: Mapped[str | None] = mapped_column(ForeignKey("process_instances.id", ondelete="CASCADE"),
                                                    index=True)
    definition_key: Mapped[str | None] = mapped_column(String(200))
    element_id: Mapped[str | None] = mapped_column(String(200))
    external_task_id: Mapped[str | None] = mapped_column(String(36), index=True)
    job_id: Mapped[str | None] = mapped_column(String(36), index=True)
    message: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    resolved_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    resolved_by: Mapped[str | None] = mapped_column(String(100))
    resolution: Mapped[str | None] = mapped_column(String(40))


class RuntimeSettingRow(Base):
    """Settings every process must agree on at run time (e.g. the admin clock's offset)."""

    __tablename__ = "runtime_settings"
    key: Mapped[str] = mapped_column(String(100), primary_key=True)
    value: Mapped[Any] = mapped_column(JSON)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_by: Mapped[str | None] = mapped_column(String(100))


class OutboxRow(Base):
    """A notification, written in the same transaction as the event that caused it.

    ``channel`` ``inapp`` rows are the user's in-app notifications (delivered when committed;
    ``read_at`` marks them read); ``email`` and ``webhook`` rows are delivered by the worker
    (``state`` pending -> delivered | failed, ``next_attempt_at`` doubles as the delivery lease
    and the backoff), each attempt recorded in ``outbox_deliveries``.
    """

    __tablename__ = "outbox"
    __table_args__ = (
        Index("ix_outbox_recipient", "channel", "recipient", "created_at"),
        Index("ix_outbox_pending", "state", "next_attempt_at"),
    )
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    channel: Mapped[str] = mapped_column(String(20))  # inapp | email | webhook
    recipient: Mapped[str] = mapped_column(String(400))  # user name | e-mail address | URL
    event: Mapped[str] = mapped_column(String(60))  # task.at_risk | task.breached | task.reminder | ...
    instance_id: Mapped[str | None] = mapped_column(String(36))
    task_id: Mapped[str | None] = mapped_column(String(36))
    subject: Mapped[str] = mapped_column(Text)
    body: Mapped[str] = mapped_column(Text)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    state: Mapped[str] = mapped_column(String(20))  # pending | delivered | failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    read_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class OutboxDeliveryRow(Base):
    """One delivery attempt of an outbox row (e-mail or webhook): when, and how it went."""

    __tablename__ = "outbox_deliveries"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    outbox_id: Mapped[str] = mapped_column(ForeignKey("outbox.id", ondelete="CASCADE"), index=True)
    attempt: Mapped[int] = mapped_column(Integer)
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    ok: Mapped[bool] = mapped_column(Boolean)
    status_code: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)


class CommentRow(Base):
    """A comment on a user task (Camunda's task comment): plain text, kept after the task closes."""

    __tablename__ = "comments"
    __table_args__ = (
        Index("ix_comments_task", "task_id", "audit_seq"),
        Index("ix_comments_instance", "instance_id", "audit_seq"),
    )
    id: Mapped[str] = mapped_column(String(36), primary_key=True)  # time-ordered (engine.ids)
    task_id: Mapped[str] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"))
    instance_id: Mapped[str] = mapped_column(ForeignKey("process_instances.id", ondelete="CASCADE"))
    author: Mapped[str] = mapped_column(String(100))
    message: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # chain_seq of its task.comment_added event in the instance's chain: the order of additions
    audit_seq: Mapped[int] = mapped_column(Integer)


class AttachmentRow(Base):
    """A file attached to a user task: its bytes (``content``, loaded only on download) and their SHA-256."""

    __tablename__ = "attachments"
    __table_args__ = (
        Index("ix_attachments_task", "task_id", "audit_seq"),
        Index("ix_attachments_instance", "instance_id", "audit_seq"),
    )
    id: Mapped[str] = mapped_column(String(36), primary_key=True)  # time-ordered (engine.ids)
    task_id: Mapped[str] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"))
    instance_id: Mapped[str] = mapped_column(ForeignKey("process_instances.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(255))  # sanitized (engine.uploads)
    content_type: Mapped[str] = mapped_column(String(120))  # from the extension, never the client's claim
    size: Mapped[int] = mapped_column(BigInteger)  # bytes
    sha256: Mapped[str] = mapped_column(String(64))  # hex, computed by the server
    description: Mapped[str | None] = mapped_column(Text)
    content: Mapped[bytes] = mapped_column(LargeBinary, deferred=True)
    uploaded_by: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # chain_seq of its task.attachment_added event in the instance's chain: the order of additions
    audit_seq: Mapped[int] = mapped_column(Integer)
