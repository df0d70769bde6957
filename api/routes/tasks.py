"""The task inbox: Camunda-style filters, the task with its SOP step and form, and the task commands."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Literal, TypeVar

from fastapi import APIRouter, Depends, Query
from sqlalchemy.orm import Session

from api.deps import INSTANT_HELP, ActorDep, DbDep, Instant, PagingDep, SettingsDep, require
from api.schemas import AssignRequest, CompleteRequest, Count, InstanceRead, Page, TaskDetail, TaskRead
from api.views import page_body, task_read
from engine.commands import Actor, assign_task, claim_task, complete_task, get_task_row, unclaim_task
from engine.errors import Forbidden, NotFound
from engine.queries import TaskFilter, count_tasks, list_tasks, may_act_on, task_detail, task_exists

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


def _may_act(session: Session, actor: Actor, task_id: str) -> None:
    """Scope check, inside the command's transaction: a task outside the actor's reach is a 404/403.

    It reads the same transaction as the command it guards, so it cannot pass on a row
    that the command then finds changed; the command's own guarded UPDATE re-checks the
    assignee it authorized against.
    """
    if may_act_on(session, actor, task_id):
        return
    if not task_exists(session, task_id):
        raise NotFound(f"task {task_id} not found", task_id=task_id)
    raise Forbidden("this task is not yours: it is assigned to someone else or not offered to your groups",
                    task_id=task_id)


def _acting(actor: Actor, task_id: str, command: Callable[[Session], T]) -> Callable[[Session], T]:
    """``command`` preceded by the scope check, as one unit of work (retried as a whole)."""
    def unit_of_work(session: Session) -> T:
        _may_act(session, actor, task_id)
        return command(session)
    return unit_of_work


def _task(db: DbDep, task_id: str) -> dict:
    with db.read() as s:
        return task_read(get_task_row(s, task_id))


@router.post("/{task_id}/claim", response_model=TaskRead)
def claim(db: DbDep, actor: ActorDep, task_id: str) -> dict:
    require(actor, "employee")
    db.command(_acting(actor, task_id, lambda s: claim_task(s, task_id=task_id, actor=actor)))
    return _task(db, task_id)


@router.post("/{task_id}/unclaim", response_model=TaskRead)
def unclaim(db: DbDep, actor: ActorDep, task_id: str) -> dict:
    require(actor, "employee")
    db.command(_acting(actor, task_id, lambda s: unclaim_task(s, task_id=task_id, actor=actor)))
    return _task(db, task_id)


@router.post("/{task_id}/assign", response_model=TaskRead)
def assign(db: DbDep, actor: ActorDep, task_id: str, body: AssignRequest) -> dict:
    require(actor)  # assigning work to others is an admin right (Camunda's TASK_ASSIGN)
    db.command(lambda s: assign_task(s, task_id=task_id, assignee=body.assignee, actor=actor))
    return _task(db, task_id)


@router.post("/{task_id}/complete", response_model=InstanceRead)
def complete(db: DbDep, actor: ActorDep, settings: SettingsDep, task_id: str, body: CompleteRequest):  # noqa: ANN201
    require(actor, "employee")
    return db.command(_acting(actor, task_id, lambda s: complete_task(
        s, task_id=task_id, actor=actor, variables=body.variables, settings=settings)))
