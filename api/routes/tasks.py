"""The task inbox: Camunda-style filters, the task with its SOP step and form, and the task commands."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal, TypeVar

from fastapi import APIRouter, Depends, Query

from api.deps import INSTANT_HELP, ActorDep, DbDep, Instant, PagingDep, SettingsDep, require
from api.schemas import AssignRequest, CompleteRequest, Count, InstanceRead, Page, TaskDetail, TaskRead
from api.views import page_body, task_read
from engine.commands import assign_task, claim_task, complete_task, unclaim_task
from engine.queries import TaskFilter, count_tasks, list_tasks, task_detail

router = APIRouter(prefix="/api/tasks", tags=["tasks"])
T = TypeVar("T")


@dataclass
class TaskQuery:
    state: Annotated[Literal["open", "completed", "cancelled", "all"], Query()] = "open"
    assignee: Annotated[str | None, Query(max_length=100, description="a user name, or `me`")] = None
    candidate_user: Annotated[str | None, Query(max_length=100, description="a user name, or `me`")] = None
    candidate_group: Annotated[str | None, Query(max_length=200)] = None
    include_assigned: bool = False
    unassigned: bool | None = None
    process_instance_id: Annotated[str | None, Query(max_length=36)] = None
    definition_key: Annotated[str | None, Query(max_length=200)] = None
    due_before: Annotated[Instant | None, Query(description=INSTANT_HELP)] = None
    due_after: Annotated[Instant | None, Query(description=INSTANT_HELP)] = None
    follow_up_before: Annotated[Instant | None, Query(description=INSTANT_HELP)] = None
    min_priority: Annotated[int | None, Query(ge=-(2**31), le=2**31 - 1)] = None
    sla: Annotated[Literal["on_time", "at_risk", "breached"] | None, Query()] = None
    text: Annotated[str | None, Query(max_length=200, description=(
        "free text: the task's name or its instance's business key contains it (case-insensitive)"))] = None
    sort: Annotated[Literal["due", "priority", "created"], Query()] = "created"
    order: Annotated[Literal["asc", "desc"], Query()] = "asc"

    def filter(self) -> TaskFilter:
        return TaskFilter(**self.__dict__)


QueryDep = Annotated[TaskQuery, Depends()]


@router.get("", response_model=Page[TaskRead])
def get_tasks(db: DbDep, actor: ActorDep, q: QueryDep, paging: PagingDep) -> dict:
    require(actor, "employee")
    with db.read() as s:
        page = list_tasks(s, actor, q.filter(), paging)
    return page_body(page, [task_read(t) for t in page.items])


@router.get("/count", response_model=Count)
def get_task_count(db: DbDep, actor: ActorDep, q: QueryDep) -> Count:
    require(actor, "employee")
    with db.read() as s:
        counted = count_tasks(s, actor, q.filter())
    return Count(count=counted.count, capped=counted.capped)


@router.get("/{task_id}", response_model=TaskDetail)
def get_task(db: DbDep, actor: ActorDep, task_id: str) -> dict:
    require(actor, "employee")
    with db.read() as s:
        detail = task_detail(s, actor, task_id)
    return {**task_read(detail.pop("task")), **detail}


@router.post("/{task_id}/claim", response_model=TaskRead)
def claim(db: DbDep, actor: ActorDep, task_id: str) -> dict:
    require(actor, "employee")
    return task_read(db.command(lambda s: claim_task(s, task_id=task_id, actor=actor)))  # authorizes on its row


@router.post("/{task_id}/unclaim", response_model=TaskRead)
def unclaim(db: DbDep, actor: ActorDep, task_id: str) -> dict:
    require(actor, "employee")
    return task_read(db.command(lambda s: unclaim_task(s, task_id=task_id, actor=actor)))


@router.post("/{task_id}/assign", response_model=TaskRead)
def assign(db: DbDep, actor: ActorDep, task_id: str, body: AssignRequest) -> dict:
    require(actor)  # assigning work to others is an admin right (Camunda's TASK_ASSIGN)
    return task_read(db.command(lambda s: assign_task(s, task_id=task_id, assignee=body.assignee, actor=actor)))


@router.post("/{task_id}/complete", response_model=InstanceRead)
def complete(db: DbDep, actor: ActorDep, settings: SettingsDep, task_id: str, body: CompleteRequest):  # noqa: ANN201
    require(actor, "employee")
    return db.command(lambda s: complete_task(
        s, task_id=task_id, actor=actor, variables=body.variables, settings=settings))
