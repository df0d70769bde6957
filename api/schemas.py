"""Request and response bodies (snake_case; every resource has an ``id``; lists answer ``items``)."""
from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from engine import limits

T = TypeVar("T")


def _storable(variables: dict[str, Any]) -> dict[str, Any]:
    problem = limits.find_problem_in_variables(variables)
    if problem is not None:
        raise ValueError(problem.describe("the variable"))
    return variables


# Process data from a request: each value nests at most engine.limits.MAX_DEPTH (20) levels and
# holds at most MAX_NODES values; text is valid Unicode; numbers are finite. Checked here, before
# the engine (which checks names and types again), after api.edge's checks on the whole body.
Variables = Annotated[dict[str, Any], AfterValidator(_storable)]


class Page(BaseModel, Generic[T]):
    items: list[T]
    total: int = Field(description="how many items match, across all pages (the task inbox: exact up to 1000, "
                                   "see total_capped)")
    total_capped: bool = Field(False, description="true when more items match than `total` says: the task "
                                                  "inbox stops counting at 1000 (\"1000+\")")
    next_cursor: str | None = Field(None, description="pass as `cursor` for the next page; null on the last")


class Count(BaseModel):
    count: int = Field(description="how many tasks match, exact up to 1000")
    capped: bool = Field(False, description="true when more than `count` match: counting stops at 1000 "
                                            "(show \"1000+\")")


class DefinitionRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: str
    key: str
    version: int
    name: str
    deployment_id: str
    resource_name: str
    message_names: list[str]
    created_at: datetime


class DeploymentRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: str
    name: str
    checksum: str
    dialect: str
    deployed_by: str | None
    deployed_at: datetime


class DeploymentCreated(BaseModel):
    id: str
    created: bool = Field(description="false when identical files were deployed before (existing versions)")
    definitions: list[dict[str, Any]]


class TaskRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: str
    name: str
    element_id: str
    instance_id: str
    definition_key: str
    state: str
    lane: str | None
    assignee: str | None
    candidate_users: list[str]
    candidate_groups: list[str]
    form_key: str | None
    priority: int
    due_at: datetime | None
    follow_up_at: datetime | None
    created_at: datetime
    claimed_at: datetime | None
    ended_at: datetime | None
    completed_by: str | None
    local_variables: dict[str, Any] | None = Field(
        None, description="the task's own scope: its multi-instance item and loopCounter, its input parameters")
    sla: str | None = Field(None, description="on_time, at_risk or breached (open tasks with a due date)")


class FormRead(BaseModel):
    title: str | None = None
    schema_: dict[str, Any] = Field(alias="schema", serialization_alias="schema")
    ui: dict[str, Any] | None = None
    model_config = ConfigDict(populate_by_name=True)


class StartFormRead(BaseModel):
    definition_id: str
    key: str
    version: int
    element_id: str | None = Field(None, description="the start event that declares the form")
    form_key: str | None = None
    form: FormRead | None = Field(None, description="the form the start variables must fill (null: none)")
    accepts: Literal["form", "any"] = Field(
        description="`form`: start variables are exactly the form's fields; `any`: the start event declares no form")


class TaskDetail(TaskRead):
    sop: str | None = Field(None, description="the SOP text of this step, rendered with the instance's data")
    documentation: str | None = Field(None, description="the SOP text as written in the diagram")
    form: FormRead | None = None
    data: dict[str, Any] = Field(default_factory=dict, description=(
        "what the task shows: the form's `shows`, else every process variable, read through the task's own scope"))


class InstanceRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: str
    definition_id: str
    definition_key: str
    definition_version: int
    business_key: str | None
    status: str
    variables: dict[str, Any]
    revision: int
    started_by: str | None
    started_at: datetime
    ended_at: datetime | None
    ended_by: str | None
    end_reason: str | None


class InstanceDetail(InstanceRead):
    open_tasks: list[TaskRead] = Field(default_factory=list)


class StartRequest(BaseModel):
    variables: Variables = Field(default_factory=dict)
    business_key: str | None = Field(None, max_length=200)
    version: int | None = Field(None, ge=1, le=2**31 - 1, description="a specific version; default the latest")


class CompleteRequest(BaseModel):
    variables: Variables = Field(default_factory=dict)


class AssignRequest(BaseModel):
    assignee: str | None = Field(None, max_length=100, description="user name; null unassigns")


class CancelRequest(BaseModel):
    reason: str | None = Field(None, max_length=2000)


class MessageRequest(BaseModel):
    """A message, as Camunda's ``POST /message`` (snake_case, plain values instead of typed ones)."""

    model_config = ConfigDict(extra="forbid")  # a misspelt field is a 422, never silently ignored
    name: str = Field(min_length=1, max_length=200, description="the message name (Camunda's messageName)")
    business_key: str | None = Field(
        None, max_length=200, description="only instances with this business key; a process started by the "
                                          "message gets it")
    correlation_keys: Variables = Field(
        default_factory=dict, description="process variables the receiving instance must have with these values "
                                          "(Camunda's correlationKeys); also the values of the model's "
                                          "correlation properties")
    correlation: Variables = Field(default_factory=dict, description="older name of correlation_keys")
    variables: Variables = Field(default_factory=dict, description="the payload, merged into the receiving "
                                                                        "instance's variables")
    all: bool = Field(False, description="deliver to every matching instance instead of exactly one")


class MessageResult(BaseModel):
    instance_ids: list[str]


class UserCreate(BaseModel):
    name: str = Field(min_length=1, max_length=100)
    role: str
    groups: list[str] = Field(default_factory=list)
    display_name: str | None = Field(None, max_length=200)
    password: str | None = Field(None, max_length=1000, description="an initial password (8 characters or more)")
    generate_password: bool = Field(False, description="make a password and answer it once (not with `password`)")


class UserRead(BaseModel):
    id: str
    name: str
    role: str
    groups: list[str]
    display_name: str | None
    can_sign_in: bool = Field(description="the user has a password for the web application")
    locked_until: datetime | None = Field(description="sign-in is locked until then after repeated failures")
    live_tokens: int = Field(description="API tokens not revoked")


class UserCreated(UserRead):
    password: str | None = Field(description="the generated password, shown once; null unless asked for")


class RoleUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: str


class PasswordSet(BaseModel):
    model_config = ConfigDict(extra="forbid")
    password: str | None = Field(None, max_length=1000, description="the new password (8 characters or more)")
    generate: bool = Field(False, description="make a password and answer it once (instead of `password`)")


class PasswordSetRead(BaseModel):
    password: str | None = Field(description="the generated password, shown once; null when one was given")


class Unlocked(BaseModel):
    unlocked: bool = Field(description="false when the account was not locked (nothing changed)")


class GroupsUpdate(BaseModel):
    groups: list[str]


class TokenRead(BaseModel):
    token: str = Field(description="shown once; store it, sopflow keeps only its hash")


class TokensRevoked(BaseModel):
    revoked: int = Field(description="how many live tokens were revoked")


class GroupRead(BaseModel):
    id: str
    name: str


class AuditEventRead(BaseModel):
    id: int
    seq: int
    chain: str
    chain_seq: int
    occurred_at: str
    actor: str | None
    action: str
    instance_id: str | None
    task_id: str | None
    definition_id: str | None
    definition_key: str | None
    definition_version: int | None
    payload: dict[str, Any]
    prev_hash: str
    hash: str


class Verification(BaseModel):
    ok: bool
    events: int
    chains: int
    broken_chain: str | None = None
    broken_seq: int | None = None
    reason: str | None = None


class HistoryRead(BaseModel):
    id: str
    instance: InstanceRead
    events: list[AuditEventRead]
    tasks: list[TaskRead]


class Me(BaseModel):
    id: str
    name: str
    roles: list[str]
    groups: list[str]


class CommentCreate(BaseModel):
    message: str = Field(min_length=1, max_length=5000, description="plain text, 1..5000 characters (trimmed)")


class CommentRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: str
    task_id: str
    instance_id: str
    author: str
    message: str
    created_at: datetime


class AttachmentRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: str
    task_id: str
    instance_id: str
    name: str = Field(description="the file name as stored (sanitized: no path, no control characters)")
    content_type: str = Field(description="from the file's extension, checked against its content")
    size: int = Field(description="bytes")
    sha256: str = Field(description="hex SHA-256 of the stored bytes, computed by the server")
    description: str | None
    uploaded_by: str
    created_at: datetime
