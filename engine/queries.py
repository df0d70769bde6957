"""Read side: inbox, instances, history and audit queries, each scoped to who is asking.

These read the indexed projection tables only (never deserialize a workflow). Scoping
rules (the API adds role checks on top):
- an admin sees everything;
- an employee sees a task assigned to them, or an unassigned task they are a candidate
  for (by name or group), or an unassigned task that names no candidates at all; never a
  task assigned to someone else;
- an employee sees an instance they started or in which they are or were assignee,
  candidate or completer of a task.
Paging: ``limit`` + opaque ``cursor`` (or Camunda's ``first_result``/``max_results``);
every list answers its total (the task inbox's is exact up to COUNT_CAP). The task inbox
is index-driven and pages by keyset; see docs/notes/inbox.md.
"""
from __future__ import annotations

import base64
import binascii
import json
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import and_, bindparam, exists, func, literal_column, or_, select, true, tuple_, union
from sqlalchemy.orm import Session, aliased
from sqlalchemy.sql import Select

from engine import clock
from engine.actor import Actor
from engine.errors import Forbidden, InvalidInput, NotFound
from engine.store.models import (
    AttachmentRow,
    AuditEventRow,
    CommentRow,
    DefinitionRow,
    DeploymentResourceRow,
    DeploymentRow,
    InstanceRow,
    TaskCandidateRow,
    TaskRow,
)

MAX_LIMIT = 500
COUNT_CAP = 1000  # task counts are exact up to here; beyond, "at least COUNT_CAP" (docs/notes/inbox.md)
_CURSOR_CHARS = re.compile(r"[A-Za-z0-9_-]{1,256}={0,2}")
_TASK_ID = re.compile(r"[A-Za-z0-9-]{1,64}")


@dataclass
class Page:
    items: list[Any]
    total: int
    next_cursor: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    total_capped: bool = False  # ``total`` is a lower bound: more items match than it says


MAX_OFFSET = 2**31 - 1


@dataclass(frozen=True)
class Paging:
    """Where a page starts and how many items it holds (``limit``, 1..MAX_LIMIT).

    A page starts at ``offset`` (``first_result``, or an offset cursor of the lists that
    page by offset) or, for the task inbox, after ``after``: the position a keyset cursor
    names, ``(sort, order, sort value, task id)``, checked against the request by
    :func:`list_tasks`. A cursor is base64url JSON, ``{"o": offset}`` or ``{"k": [...]}``;
    anything else is InvalidInput (422) naming ``cursor``.
    """

    offset: int = 0
    limit: int = 50
    after: tuple[str, str, Any, str] | None = None

    @classmethod
    def parse(cls, *, limit: int | None = None, cursor: str | None = None, first_result: int | None = None,
              max_results: int | None = None) -> Paging:
        size = max_results if max_results is not None else (limit if limit is not None else 50)
        if size < 1 or size > MAX_LIMIT:
            raise InvalidInput("limit must be between 1 and {max_limit}", field="limit",
                               params={"max_limit": MAX_LIMIT})
        offset = first_result or 0
        if offset < 0 or offset > MAX_OFFSET:
            raise InvalidInput("first_result must be between 0 and {max_offset}", field="first_result",
                               params={"max_offset": MAX_OFFSET})
        if cursor:
            data = _decode_cursor(cursor)
            if "o" in data:
                offset = data["o"]
            else:
                return cls(0, size, data["k"])
        return cls(offset, size)

    def cursor_after(self, returned: int, total: int) -> str | None:
        nxt = self.offset + returned
        if returned < self.limit or nxt >= total:
            return None
        return _encode_cursor({"o": nxt})


def _encode_cursor(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data, separators=(",", ":")).encode()).decode()


def _decode_cursor(cursor: str) -> dict[str, Any]:
    """A cursor this server issued, strictly: ``{"o": offset}`` or ``{"k": [sort, order, value, id]}``."""
    refused = InvalidInput("cursor is not one this server issued (pass next_cursor from the previous page "
                           "unchanged)", field="cursor")
    if not _CURSOR_CHARS.fullmatch(cursor):
        raise refused
    try:
        data = json.loads(base64.b64decode(cursor.encode("ascii"), altchars=b"-_", validate=True),
                          parse_float=lambda _: None, parse_constant=lambda _: None)
    except (ValueError, binascii.Error):
        raise refused from None
    if not isinstance(data, dict) or len(data) != 1:
        raise refused
    if "o" in data:
        if type(data["o"]) is not int or not 0 <= data["o"] <= MAX_OFFSET:
            raise refused
        return data
    key = data.get("k")
    if not (isinstance(key, list) and len(key) == 4 and key[0] in SORTS and key[1] in ("asc", "desc")
            and isinstance(key[3], str) and _TASK_ID.fullmatch(key[3])):
        raise refused
    return {"k": tuple(key)}


def _aware(value: datetime, name: str) -> datetime:
    """A filter instant in UTC; one without a time zone is refused (it would be read in some unknown zone)."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise InvalidInput("{name} needs a time zone (e.g. 2026-01-01T00:00:00Z)", field=name,
                           params={"name": name})
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise InvalidInput("{name} is out of range once converted to UTC", field=name,
                           params={"name": name}) from None


def _page(session: Session, query: Select[Any], paging: Paging, *, scalars: bool = True) -> Page:
    if paging.after is not None:
        raise InvalidInput("cursor is not one this server issued for this list", field="cursor")
    total = session.scalar(select(func.count()).select_from(query.order_by(None).subquery())) or 0
    rows = session.execute(query.offset(paging.offset).limit(paging.limit))
    items = list(rows.scalars() if scalars else rows)
    return Page(items, total, paging.cursor_after(len(items), total))


# ------------------------------------------------------------------ tasks
#
# The inbox (docs/notes/inbox.md). An employee's open tasks are the union of a few
# "branches", each read in the requested order from one index and cut at the page size:
#   assigned to me                 tasks (assignee, state, sort key, id)
#   offered to me                  task_candidates (kind, name, offered, sort key, task_id)
#   offered to each of my groups   idem, one branch per group
#   offered to no one              idem, the task's single ("anyone", "*") row
# The union (deduplicated by id) is ordered and cut again, so a page reads about
# branches x page rows, whatever the table holds. Anything else (an admin, closed tasks, an
# instance's tasks) is a plain filtered query; counts stop at COUNT_CAP.


# exists-subqueries name the candidates table by an alias of their own: an offers branch reads
# task_candidates in its FROM, and the subquery must not correlate to that
_NAMED = aliased(TaskCandidateRow, name="named")


def _candidate_of(actor: Actor) -> Any:
    return exists().where(
        _NAMED.task_id == TaskRow.id,
        or_(and_(_NAMED.kind == "user", _NAMED.name == actor.name),
            and_(_NAMED.kind == "group", _NAMED.name.in_(sorted(actor.groups)))),
    )


def _no_candidates() -> Any:
    return exists().where(_NAMED.task_id == TaskRow.id, _NAMED.kind == "anyone")


def task_scope(actor: Actor) -> Any:
    """The visibility rule as one SQL condition on ``tasks`` (for single-task checks and plain queries)."""
    if actor.is_admin:
        return true()
    return or_(
        TaskRow.assignee == actor.name,
        TaskRow.completed_by == actor.name,
        and_(TaskRow.assignee.is_(None), or_(_candidate_of(actor), _no_candidates())),
    )


@dataclass
class TaskFilter:
    state: str = "open"
    assignee: str | None = None
    candidate_user: str | None = None
    candidate_group: str | None = None
    include_assigned: bool = False
    unassigned: bool | None = None
    process_instance_id: str | None = None
    definition_key: str | None = None
    due_before: datetime | None = None
    due_after: datetime | None = None
    follow_up_before: datetime | None = None
    min_priority: int | None = None
    sla: str | None = None
    # free text: a case-insensitive substring of the task's name or its instance's business key
    text: str | None = None
    sort: str = "created"
    order: str = "asc"


@dataclass(frozen=True)
class TaskCount:
    """How many tasks match: exact up to ``COUNT_CAP``; ``capped`` means "at least ``count``"."""

    count: int
    capped: bool = False


SORTS = {"due": TaskRow.due_at, "priority": TaskRow.priority, "created": TaskRow.created_at}
_OFFER_SORTS = {"due": TaskCandidateRow.due_at, "priority": TaskCandidateRow.priority,
                "created": TaskCandidateRow.created_at}


def _named(kind: str, name: str) -> Any:
    return exists().where(_NAMED.task_id == TaskRow.id, _NAMED.kind == kind, _NAMED.name == name)


def _filters(f: TaskFilter) -> list[Any]:
    """The filters on the task itself (validated), shared by every branch and the plain query."""
    if f.state not in ("open", "completed", "cancelled", "all"):
        raise InvalidInput("state must be open, completed, cancelled or all", field="state")
    if f.sort not in SORTS:
        raise InvalidInput("sort must be one of {sorts}", field="sort", params={"sorts": ', '.join(SORTS)})
    if f.order not in ("asc", "desc"):
        raise InvalidInput("order must be asc or desc", field="order")
    conditions: list[Any] = []
    if f.process_instance_id:
        conditions.append(TaskRow.instance_id == f.process_instance_id)
    if f.definition_key:
        conditions.append(TaskRow.definition_key == f.definition_key)
    if f.due_before:
        conditions.append(TaskRow.due_at < _aware(f.due_before, "due_before"))
    if f.due_after:
        conditions.append(TaskRow.due_at > _aware(f.due_after, "due_after"))
    if f.follow_up_before:
        conditions.append(TaskRow.follow_up_at < _aware(f.follow_up_before, "follow_up_before"))
    if f.min_priority is not None:
        conditions.append(TaskRow.priority >= f.min_priority)
    if f.text and f.text.strip():
        conditions.append(_text_matches(f.text.strip()))
    if f.sla:
        now = bindparam(_NOW, type_=TaskRow.due_at.type)  # the clock at execution (see _bind_values)
        if f.sla == "breached":
            conditions.append(TaskRow.due_at <= now)
        elif f.sla == "at_risk":
            conditions.append(and_(TaskRow.at_risk_at <= now, TaskRow.due_at > now))
        elif f.sla == "on_time":
            conditions.append(or_(TaskRow.due_at.is_(None), TaskRow.at_risk_at > now))
        else:
            raise InvalidInput("sla must be on_time, at_risk or breached", field="sla")
    return conditions


def _text_matches(text: str) -> Any:
    """The task's name, or its instance's business key, contains ``text`` (case-insensitive, literally:
    ``%`` and ``_`` match themselves). Checked on the rows the inbox's index branches find, so it
    narrows a bounded set rather than scanning every task; the business key is one primary-key
    lookup per row."""
    if len(text) > 200:
        raise InvalidInput("text must be at most 200 characters", field="text")
    if any(ord(ch) < 32 or 0xD800 <= ord(ch) <= 0xDFFF for ch in text):  # PostgreSQL refuses NUL in text
        raise InvalidInput("text must be plain text, without control characters", field="text")
    pattern = "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
    return or_(TaskRow.name.ilike(pattern, escape="\\"),
               exists().where(InstanceRow.id == TaskRow.instance_id,
                              InstanceRow.business_key.ilike(pattern, escape="\\")))


def _plain_conditions(actor: Actor, f: TaskFilter) -> list[Any]:
    """The whole rule and every filter as conditions on ``tasks`` (the query of old, for what branches skip)."""
    conditions = [task_scope(actor), *_filters(f)]
    if f.state != "all":
        conditions.append(TaskRow.state == f.state)
    if f.assignee:
        conditions.append(TaskRow.assignee == (actor.name if f.assignee == "me" else f.assignee))
    named = []
    if f.candidate_user:
        named.append(_named("user", actor.name if f.candidate_user == "me" else f.candidate_user))
    if f.candidate_group:
        named.append(_named("group", f.candidate_group))
    if named:
        conditions += named
        if not f.include_assigned:
            conditions.append(TaskRow.assignee.is_(None))
    if f.unassigned is True:
        conditions.append(TaskRow.assignee.is_(None))
    elif f.unassigned is False:
        conditions.append(TaskRow.assignee.is_not(None))
    return conditions


@dataclass(frozen=True)
class _Branch:
    """One index-ordered way into an employee's open tasks: assigned to ``name`` (``kind`` None) or
    offered to (``kind``, ``name``); ``where`` are further conditions on ``tasks``."""

    kind: str | None
    name: str
    where: tuple[Any, ...] = ()


def _branches(actor: Actor, f: TaskFilter, filters: list[Any]) -> list[_Branch] | None:
    """The branches whose union is exactly what the plain query answers, or None where they do not help.

    An employee's visible open tasks are those assigned to them and those on offer (open,
    unassigned) to them, to one of their groups, or to anyone; an open task has no
    completer, so the rule's "completed by me" adds nothing here. Filters narrow the
    branches: ``assignee`` and ``unassigned`` pick among them; a candidate filter drives
    the offers from that candidate's rows, still requiring that the task is offered to the
    employee (by name or group).
    """
    if actor.is_admin or f.state != "open" or f.process_instance_id:
        return None
    me = actor.name
    assigned: list[Any] | None = []  # None: no "assigned to me" branch
    offers: list[tuple[str, str]] = [("user", me), *(("group", g) for g in sorted(actor.groups)), ("anyone", "*")]
    offer_where: list[Any] = []
    if f.assignee:
        offers = []
        if (me if f.assignee == "me" else f.assignee) != me:
            assigned = None  # someone else's open task is never visible
    if f.unassigned is True:
        assigned = None
    elif f.unassigned is False:
        offers = []
    user = me if f.candidate_user == "me" else f.candidate_user
    group = f.candidate_group
    if user or group:
        named = ([_named("user", user)] if user else []) + ([_named("group", group)] if group else [])
        if not f.include_assigned:
            assigned = None
        elif assigned is not None:
            assigned = named
        drive = ("user", user) if user else ("group", group or "")
        if offers:
            offers = [drive]
            offer_where = named[1:] if user else []
            if drive != ("user", me) and not (drive[0] == "group" and drive[1] in actor.groups):
                offer_where.append(_candidate_of(actor))
    branches = [] if assigned is None else [_Branch(None, me, (*assigned, *filters))]
    return branches + [_Branch(kind, name, (*offer_where, *filters)) for kind, name in offers]


def _keyset(f: TaskFilter, paging: Paging) -> tuple[Any, str] | None:
    """The (sort value, id) a keyset cursor starts after, checked against this request's order."""
    if paging.after is None:
        return None
    sort, order, value, task_id = paging.after
    if (sort, order) != (f.sort, f.order):
        raise InvalidInput("this cursor pages tasks sorted by {sort} {order}, not by {sort2} {order2}; "
                           "start again without a cursor", field="cursor",
                           params={"sort": sort, "order": order, "sort2": f.sort, "order2": f.order})
    refused = InvalidInput("cursor is not one this server issued (pass next_cursor from the previous page "
                           "unchanged)", field="cursor")
    if sort == "priority":
        if type(value) is not int or not -(2**31) <= value < 2**31:
            raise refused
        return value, task_id
    if value is None and sort == "due":
        return None, task_id
    try:
        instant = datetime.fromisoformat(value) if isinstance(value, str) and len(value) <= 40 else None
    except ValueError:
        instant = None
    if instant is None or instant.tzinfo is None:
        raise refused
    return instant.astimezone(UTC), task_id


def _cursor_of(f: TaskFilter, task: TaskRow) -> str:
    value = getattr(task, SORTS[f.sort].key)
    return _encode_cursor({"k": [f.sort, f.order, value.isoformat() if isinstance(value, datetime) else value,
                                 task.id]})


# named parameters of the task statements, bound at execution (_bind_values), so that one built
# statement serves every page of a list and every instant of the clock
_AFTER_KEY, _AFTER_ID, _NOW = "after_key", "after_id", "now"


def _after(key: Any, ident: Any, desc: bool) -> Any:
    """Rows strictly after the keyset start (``after_key``, ``after_id``) in (key, id) order, ascending or
    descending (key not null)."""
    bound = tuple_(bindparam(_AFTER_KEY, type_=key.type), bindparam(_AFTER_ID, type_=ident.type))
    return tuple_(key, ident) < bound if desc else tuple_(key, ident) > bound


def _after_id(ident: Any) -> Any:
    return bindparam(_AFTER_ID, type_=ident.type)


def _branch_selects(branch: _Branch, f: TaskFilter, after: str | None, n: int) -> list[Any]:
    """The branch's (sort key ``k``, task ``id``) pairs in page order, at most ``n`` after the keyset
    start (``after``: None, or whether its key is a ``"value"`` or ``"null"``): one select per part
    (due dates in order, then tasks without a due date by id, when sorting by due date)."""
    if branch.kind is None:
        key, ident = SORTS[f.sort], TaskRow.id
        base = select(key.label("k"), TaskRow.id.label("id")).where(
            TaskRow.assignee == branch.name, TaskRow.state == "open", *branch.where)
    else:
        key, ident = _OFFER_SORTS[f.sort], TaskCandidateRow.task_id
        base = select(key.label("k"), TaskCandidateRow.task_id.label("id")).where(
            TaskCandidateRow.kind == branch.kind, TaskCandidateRow.name == branch.name,
            TaskCandidateRow.offered == true())
        if branch.where:
            base = base.join(TaskRow, TaskRow.id == TaskCandidateRow.task_id).where(*branch.where)
    desc = f.order == "desc"

    def direction(column: Any) -> Any:
        return column.desc() if desc else column.asc()

    parts = []
    if f.sort != "due" or after != "null":
        part = base.where(key.is_not(None)) if f.sort == "due" else base
        if after is not None:
            part = part.where(_after(key, ident, desc))
        parts.append(part.order_by(direction(key), direction(ident)).limit(n))
    if f.sort == "due":  # no due date: last, whatever the order, by id
        part = base.where(key.is_(None))
        if after == "null":
            part = part.where(ident < _after_id(ident) if desc else ident > _after_id(ident))
        parts.append(part.order_by(direction(ident)).limit(n))
    # columns named, not looked up (``.c``): proxying a subquery's columns costs more than the SQL here
    return [select(_KEY, _ID).select_from(p.subquery()) for p in parts]


_ID: Any = literal_column("id")
_KEY: Any = literal_column("k")


def _union(selects: list[Any]) -> Any:
    """The distinct (``k``, ``id``) pairs of every part, as a subquery named ``visible``."""
    return union(*selects).subquery("visible") if len(selects) > 1 else selects[0].subquery("visible")


def _first_ids(selects: list[Any], f: TaskFilter, n: int) -> Any:
    """``SELECT id FROM (parts UNION ...) ORDER BY k, id LIMIT n``: the page's ids, merged on the sort
    keys the indexes carry, so only the page's own rows are read from ``tasks`` afterwards."""
    desc = f.order == "desc"
    ordering = [_KEY.desc() if desc else _KEY.asc(), _ID.desc() if desc else _ID.asc()]
    if f.sort == "due":  # tasks without a due date sort last either way
        ordering.insert(0, _KEY.is_(None))
    return select(_ID).select_from(_union(selects)).order_by(*ordering).limit(n)


def _ordered(query: Select[Any], f: TaskFilter) -> Select[Any]:
    key = SORTS[f.sort]
    desc = f.order == "desc"
    ordering: list[Any] = [key.desc() if desc else key.asc(), TaskRow.id.desc() if desc else TaskRow.id.asc()]
    # tasks without a due date sort last either way; the id makes the order total (and keysets exact)
    return query.order_by(key.is_(None), *ordering) if f.sort == "due" else query.order_by(*ordering)


def _plain_after(f: TaskFilter, after: str) -> Any:
    key = SORTS[f.sort]
    desc = f.order == "desc"
    if after == "null":  # within the tasks without a due date
        return and_(key.is_(None), TaskRow.id < _after_id(TaskRow.id) if desc else TaskRow.id > _after_id(TaskRow.id))
    later = _after(key, TaskRow.id, desc)
    return or_(key.is_(None), later) if f.sort == "due" else later


def list_tasks(session: Session, actor: Actor, f: TaskFilter, paging: Paging) -> Page:
    """One page of the tasks ``actor`` may see that match ``f``, in ``f.sort``/``f.order``, ties by id.

    The visibility rule is :func:`task_scope`'s (an employee: tasks assigned to them,
    unassigned tasks offered to them, to one of their groups, or to no one in particular;
    an admin: all). ``next_cursor`` is a keyset cursor: the next page starts after this
    page's last task, so it costs the same however deep it is, and tasks opened meanwhile
    neither repeat nor shift items (``first_result`` still pages by offset). ``total`` is
    exact up to :data:`COUNT_CAP`; beyond, it is COUNT_CAP with ``total_capped``. Raises
    InvalidInput (422) for a bad filter value or a cursor this server did not issue for
    this sort order.
    """
    start = _keyset(f, paging)
    after = None if start is None else "null" if start[0] is None else "value"
    want = paging.limit + 1  # one more says whether a next page exists
    query = _statement(("page", actor, _frozen(f), after, paging.offset, want),
                       lambda: page_query(actor, f, after, offset=paging.offset, limit=want))
    if query is None:
        return Page([], 0)
    rows = list(session.scalars(query, _bind_values(start)))
    items = rows[:paging.limit]
    nxt = _cursor_of(f, items[-1]) if len(rows) > paging.limit else None
    if start is None and paging.offset == 0 and nxt is None:
        return Page(items, len(items))
    counted = count_tasks(session, actor, f)
    return Page(items, counted.count, nxt, total_capped=counted.capped)


def page_query(actor: Actor, f: TaskFilter, after: str | None = None, *, offset: int = 0,
               limit: int = 51) -> Select[Any] | None:
    """The statement :func:`list_tasks` runs: ``limit`` TaskRows after ``offset`` in order (and, with
    ``after`` = ``"value"`` or ``"null"``, after the keyset start bound as ``after_key``/``after_id``;
    ``now`` is bound for an ``sla`` filter); None when no task can match. Raises InvalidInput for a bad
    filter value.

    For an employee's open tasks it is the branches' union: each branch reads at most
    ``offset + limit`` (key, id) entries from its index, the union is merged and cut on those keys,
    and only the remaining ids are read from ``tasks``.
    """
    filters = _filters(f)
    branches = _branches(actor, f, filters)
    if branches is None:
        query = select(TaskRow).where(*_plain_conditions(actor, f))
        if after is not None:
            query = query.where(_plain_after(f, after))
    elif not branches:
        return None
    else:
        n = offset + limit
        selects = [s for b in branches for s in _branch_selects(b, f, after, n)]
        query = select(TaskRow).where(TaskRow.id.in_(_first_ids(selects, f, n)))
    return _ordered(query, f).offset(offset).limit(limit)


def count_tasks(session: Session, actor: Actor, f: TaskFilter, *, cap: int | None = None) -> TaskCount:
    """How many tasks :func:`list_tasks` would list in all (cursor and paging aside), up to ``cap``
    (default :data:`COUNT_CAP`).

    Exact while at most ``cap`` match; beyond that ``TaskCount(cap, capped=True)``: "at
    least ``cap``". Stopping there keeps a count as cheap as a few pages (each branch
    reads at most ``cap + 1`` index entries) instead of a scan of every open task.
    """
    cap = COUNT_CAP if cap is None else cap
    query = _statement(("count", actor, _frozen(f), cap), lambda: count_query(actor, f, cap))
    found = (session.scalar(query, _bind_values(None)) or 0) if query is not None else 0
    return TaskCount(min(found, cap), found > cap)


def _frozen(f: TaskFilter) -> tuple[Any, ...]:
    return tuple(f.__dict__.values())


def _bind_values(start: tuple[Any, str] | None) -> dict[str, Any]:
    """The values of a task statement's named parameters: the keyset start and the clock."""
    values: dict[str, Any] = {_NOW: clock.now()}
    if start is not None:
        values[_AFTER_KEY], values[_AFTER_ID] = start
    return values


# Built task statements by (kind, actor, filter, keyset shape, paging): building the union of an
# employee's branches and computing its SQLAlchemy cache key cost more CPU than running it, and an
# inbox asks the same few questions again and again. A statement holds no data of its own.
_STATEMENTS: OrderedDict[tuple[Any, ...], Select[Any] | None] = OrderedDict()
_STATEMENTS_MAX = 512
_STATEMENTS_LOCK = threading.Lock()


def _statement(key: tuple[Any, ...], build: Callable[[], Select[Any] | None]) -> Select[Any] | None:
    """The statement built for ``key`` (least recently used ones dropped beyond ``_STATEMENTS_MAX``)."""
    with _STATEMENTS_LOCK:
        if key in _STATEMENTS:
            _STATEMENTS.move_to_end(key)
            return _STATEMENTS[key]
    statement = build()  # outside the lock: it may raise InvalidInput (not cached)
    with _STATEMENTS_LOCK:
        _STATEMENTS[key] = statement
        while len(_STATEMENTS) > _STATEMENTS_MAX:
            _STATEMENTS.popitem(last=False)
    return statement


def count_query(actor: Actor, f: TaskFilter, cap: int) -> Select[Any] | None:
    """The statement :func:`count_tasks` runs: the number of matching tasks, counting at most ``cap + 1``;
    None when no task can match."""
    filters = _filters(f)
    branches = _branches(actor, f, filters)
    if branches is None:
        matching = select(TaskRow.id).where(*_plain_conditions(actor, f))
    elif not branches:
        return None
    else:
        plain = TaskFilter(**{**f.__dict__, "sort": "created", "order": "asc"})  # any one index order
        matching = select(_ID).select_from(_union([s for b in branches
                                                   for s in _branch_selects(b, plain, None, cap + 1)]))
    return select(func.count()).select_from(matching.limit(cap + 1).subquery())


def sla_state(task: TaskRow, now: datetime | None = None) -> str | None:
    if task.due_at is None or task.state != "open":
        return None
    now = now or clock.now()
    if task.due_at <= now:
        return "breached"
    if task.at_risk_at is not None and task.at_risk_at <= now:
        return "at_risk"
    return "on_time"


def visible_task(session: Session, actor: Actor, task_id: str) -> TaskRow:
    # out of scope reads as absent: an employee must not learn that someone else's task exists
    task = session.scalar(select(TaskRow).where(TaskRow.id == task_id, task_scope(actor)))
    if task is None:
        raise NotFound("task {task_id} not found", task_id=task_id, params={"task_id": task_id})
    return task


# ------------------------------------------------------------------ instances


def instance_scope(actor: Actor) -> Any:
    if actor.is_admin or "auditor" in actor.roles:
        return True
    involved = select(TaskRow.instance_id).where(or_(
        TaskRow.assignee == actor.name, TaskRow.completed_by == actor.name, _candidate_of(actor)))
    return or_(InstanceRow.started_by == actor.name, InstanceRow.id.in_(involved))


@dataclass
class InstanceFilter:
    """What an instance search matches (every field optional; all given must hold).

    ``definition_key`` and ``definition_version`` (the procedure and its version);
    ``status`` (running | completed | cancelled); ``business_key`` exact or
    ``business_key_prefix`` (``PR-2026-`` finds ``PR-2026-0001``; case-sensitive, ``%``
    and ``_`` are plain characters); ``started_by`` (a user name); ``started_after`` < started_at <
    ``started_before`` (zone-aware instants; a naive one or an empty window is a 422);
    ``variables``: process variables equal to these values (strings, numbers, booleans,
    null), read from the instance's process variables (``_pvars``, engine.variables),
    i.e. the latest value whichever step wrote it.
    """

    definition_key: str | None = None
    status: str | None = None
    business_key: str | None = None
    started_by: str | None = None
    started_before: datetime | None = None
    started_after: datetime | None = None
    variables: dict[str, Any] = field(default_factory=dict)
    definition_version: int | None = None
    business_key_prefix: str | None = None


def _instance_query(actor: Actor, f: InstanceFilter) -> Select[Any]:
    query = select(InstanceRow).where(instance_scope(actor))
    if f.definition_key:
        query = query.where(InstanceRow.definition_key == f.definition_key)
    if f.definition_version is not None:
        if not 1 <= f.definition_version < 2**31:
            raise InvalidInput("version must be a positive whole number", field="version")
        query = query.where(InstanceRow.definition_version == f.definition_version)
    if f.status:
        if f.status not in ("running", "completed", "cancelled"):
            raise InvalidInput("status must be running, completed or cancelled", field="status")
        query = query.where(InstanceRow.status == f.status)
    if f.business_key:
        query = query.where(InstanceRow.business_key == f.business_key)
    if f.business_key_prefix:
        # substr, not LIKE: SQLite's LIKE ignores ASCII case, and LIKE's wildcards would need escaping
        prefix = f.business_key_prefix
        query = query.where(func.substr(InstanceRow.business_key, 1, len(prefix)) == prefix)
    if f.started_by:
        query = query.where(InstanceRow.started_by == f.started_by)
    before = _aware(f.started_before, "started_before") if f.started_before else None
    after = _aware(f.started_after, "started_after") if f.started_after else None
    if before and after and after >= before:  # an empty window by mistake, not "no instances"
        raise InvalidInput("started_after must be earlier than started_before", field="started_after")
    if before:
        query = query.where(InstanceRow.started_at < before)
    if after:
        query = query.where(InstanceRow.started_at > after)
    return query.order_by(InstanceRow.started_at.desc(), InstanceRow.id)


def _variable_equals(name: str, value: Any) -> Any:
    """``variables[name] == value`` in SQL, typed by the value (JSON paths on SQLite and PostgreSQL)."""
    element = InstanceRow.variables[name]
    if isinstance(value, bool):
        return element.as_boolean() == value
    if isinstance(value, int):
        if not -(2**63) <= value < 2**63:
            raise InvalidInput("variable filter '{name}' compares with a number out of range", field="variable",
                               params={"name": name})
        return element.as_integer() == value
    if isinstance(value, float):
        return element.as_float() == value
    if isinstance(value, str):
        return element.as_string() == value
    if value is None:  # JSON null and a missing variable both read as SQL NULL
        return element.as_string().is_(None)
    raise InvalidInput("variable filter '{name}' must compare with a string, number, boolean or null",
                       field="variable", params={"name": name})


def list_instances(session: Session, actor: Actor, f: InstanceFilter, paging: Paging) -> Page:
    """One page of the instances ``actor`` may see (:func:`instance_scope`) that match ``f``, newest first.

    Items are ``InstanceRow``; ``total`` counts every match. Raises InvalidInput (422) for
    a bad filter value (status, version, naive or empty date window, variable name or value
    type) or cursor.
    """
    query = _instance_query(actor, f)
    for name, value in f.variables.items():
        if not name.isidentifier():
            raise InvalidInput("'{name}' is not a variable name", field="variable", params={"name": name})
        query = query.where(_variable_equals(name, value))
    return _page(session, query, paging)


def visible_instance(session: Session, actor: Actor, instance_id: str) -> InstanceRow:
    row = session.scalar(select(InstanceRow).where(InstanceRow.id == instance_id, instance_scope(actor)))
    if row is None:
        raise NotFound("process instance {instance_id} not found", instance_id=instance_id,
                       params={"instance_id": instance_id})
    return row


def definition_source(session: Session, definition: DefinitionRow) -> bytes:
    """The BPMN file a definition version was deployed from (raises ``NotFound`` if it is not stored)."""
    content = session.scalar(select(DeploymentResourceRow.content).where(
        DeploymentResourceRow.deployment_id == definition.deployment_id,
        DeploymentResourceRow.name == definition.resource_name))
    if content is None:
        raise NotFound("the source of {key} v{version} is not stored", key=definition.key,
                       params={"key": definition.key, "version": definition.version})
    return bytes(content)


def instance_diagram(session: Session, actor: Actor, instance_id: str) -> bytes:
    """The BPMN XML of the version an instance runs, for whoever may see the instance (else ``NotFound``)."""
    instance = visible_instance(session, actor, instance_id)
    definition = session.get(DefinitionRow, instance.definition_id)
    if definition is None:
        raise NotFound("the definition of process instance {instance_id} is gone", instance_id=instance_id,
                       params={"instance_id": instance_id})
    return definition_source(session, definition)


def instance_tasks(session: Session, instance_id: str, *, state: str | None = "open") -> list[TaskRow]:
    query = select(TaskRow).where(TaskRow.instance_id == instance_id)
    if state:
        query = query.where(TaskRow.state == state)
    return list(session.scalars(query.order_by(TaskRow.created_revision, TaskRow.created_at, TaskRow.id)))


# ------------------------------------------------------------------ definitions


def list_definitions(session: Session, *, key: str | None, latest: bool, paging: Paging) -> Page:
    query = select(DefinitionRow)
    if key:
        query = query.where(DefinitionRow.key == key)
    if latest:
        newest = select(DefinitionRow.key, func.max(DefinitionRow.version).label("v")).group_by(
            DefinitionRow.key).subquery()
        query = query.join(newest, and_(newest.c.key == DefinitionRow.key, newest.c.v == DefinitionRow.version))
    return _page(session, query.order_by(DefinitionRow.key, DefinitionRow.version.desc()), paging)


def list_deployments(session: Session, paging: Paging) -> Page:
    return _page(session, select(DeploymentRow).order_by(DeploymentRow.deployed_at.desc(), DeploymentRow.id), paging)


def deployments_of(session: Session, ids: set[str]) -> dict[str, DeploymentRow]:
    """The deployments with these ids, by id (who deployed a definition version, and when)."""
    if not ids:
        return {}
    return {row.id: row for row in session.scalars(select(DeploymentRow).where(DeploymentRow.id.in_(sorted(ids))))}


# ------------------------------------------------------------------ history and audit


@dataclass
class AuditFilter:
    actor: str | None = None
    action: str | None = None
    instance_id: str | None = None
    definition_key: str | None = None
    since: datetime | None = None
    until: datetime | None = None


def _audit_query(f: AuditFilter) -> Select[Any]:
    query = select(AuditEventRow)
    if f.actor:
        query = query.where(AuditEventRow.actor == f.actor)
    if f.action:
        query = query.where(AuditEventRow.action == f.action)
    if f.instance_id:
        query = query.where(AuditEventRow.chain == f.instance_id)  # an instance's chain is its id
    if f.definition_key:
        query = query.where(AuditEventRow.definition_key == f.definition_key)
    since = _aware(f.since, "from") if f.since else None
    until = _aware(f.until, "to") if f.until else None
    if since and until and since > until:  # an empty window by mistake, not "no events"
        raise InvalidInput("from is later than to", field="from")
    if since:
        query = query.where(AuditEventRow.occurred_at >= since)
    if until:
        query = query.where(AuditEventRow.occurred_at < until)
    return query.order_by(AuditEventRow.seq)


def list_audit(session: Session, actor: Actor, f: AuditFilter, paging: Paging) -> Page:
    _require_audit_reader(actor)
    return _page(session, _audit_query(f), paging)


def audit_batch(session: Session, actor: Actor, f: AuditFilter, *, after: int = 0,
                batch: int = 1000) -> list[AuditEventRow]:
    """Up to ``batch`` matching events with ``seq > after``, in order (one keyset page of an export)."""
    _require_audit_reader(actor)
    return list(session.scalars(_audit_query(f).where(AuditEventRow.seq > after).limit(batch)))


def iter_audit(session: Session, actor: Actor, f: AuditFilter, batch: int = 1000, *,
               after: int = 0) -> Iterator[AuditEventRow]:
    """Every matching event with ``seq > after``, in order, fetched in keyset batches (for streaming exports)."""
    _require_audit_reader(actor)
    last = after
    while True:
        rows = list(session.scalars(_audit_query(f).where(AuditEventRow.seq > last).limit(batch)))
        yield from rows
        if len(rows) < batch:
            return
        last = rows[-1].seq


def _require_audit_reader(actor: Actor) -> None:
    if not (actor.is_admin or "auditor" in actor.roles):
        raise Forbidden("reading the audit trail needs the auditor or admin role")


def event_dict(row: AuditEventRow) -> dict[str, Any]:
    return {
        "id": row.seq, "seq": row.seq, "chain": row.chain, "chain_seq": row.chain_seq,
        "occurred_at": row.occurred_at.isoformat(), "actor": row.actor, "action": row.action,
        "instance_id": row.instance_id, "task_id": row.task_id, "definition_id": row.definition_id,
        "definition_key": row.definition_key, "definition_version": row.definition_version,
        "payload": json.loads(row.payload), "prev_hash": row.prev_hash, "hash": row.hash,
    }


def timeline(session: Session, actor: Actor, instance_id: str) -> dict[str, Any]:
    """The instance's history: every audit event of its chain, with the user tasks' records."""
    instance = visible_instance(session, actor, instance_id)
    events = [event_dict(e) for e in session.scalars(
        select(AuditEventRow).where(AuditEventRow.chain == instance_id).order_by(AuditEventRow.chain_seq))]
    return {"instance": instance, "events": events, "tasks": instance_tasks(session, instance_id, state=None)}


def task_detail(session: Session, actor: Actor, task_id: str) -> dict[str, Any]:
    """A task with what its performer needs: the SOP text rendered, the form, the data it shows.

    The task reads its own scope over the process variables (Camunda's rule): its
    multi-instance item, loop counter and input parameters (``tasks.local_variables``,
    fixed when it opened) over the instance's current process variables. ``data`` is the
    form's ``shows`` list from that scope, or, without ``shows`` (or without a form), all of
    it minus internal names (``_...``), so an approver sees what they approve.
    """
    from engine import forms

    task = visible_task(session, actor, task_id)
    meta = (session.scalar(select(DefinitionRow.user_tasks).where(DefinitionRow.id == task.definition_id))
            or {}).get(task.meta_key) or {}
    process = session.scalar(select(InstanceRow.variables).where(InstanceRow.id == task.instance_id)) or {}
    scope = {**process, **(task.local_variables or {})}
    scope = {k: v for k, v in scope.items() if not k.startswith("_")}
    form = forms.form_for(task.form_key, meta.get("form_fields"))
    shows = form.get("shows") if form else None
    shown = {k: scope[k] for k in shows if k in scope} if shows else dict(scope)
    return {
        "task": task,
        "documentation": meta.get("documentation"),
        "sop": forms.render_sop(meta.get("documentation"), scope, task.element_id),
        "form": None if form is None else {"title": form.get("title"), "schema": form["schema"],
                                           "ui": form.get("ui")},
        "data": shown,
    }


# ------------------------------------------------------------------ task comments and attachments
#
# Written by engine.commands.task_notes. Reading follows the rules above, nothing more:
# a task's comments and files are read by whoever may read the task (readable_task); an
# instance's, by whoever may see the instance (visible_instance); a file's bytes by either.
# Lists are in the order the additions were made: their events' places in the instance's chain
# (``audit_seq``; times alone tie within a millisecond, and a frozen clock ties them all).


def readable_task(session: Session, actor: Actor, task_id: str) -> TaskRow:
    """A task whose records ``actor`` may read: :func:`visible_task`'s rule, plus, for an auditor, any
    task of an instance they may see (:func:`instance_scope`: auditors read every instance's history).

    Raises NotFound (404) otherwise, exactly as for a task that does not exist.
    """
    if actor.is_admin or "auditor" not in actor.roles:
        return visible_task(session, actor, task_id)
    task = session.scalar(select(TaskRow).where(
        TaskRow.id == task_id, or_(task_scope(actor), TaskRow.instance_id.in_(
            select(InstanceRow.id).where(instance_scope(actor))))))
    if task is None:
        raise NotFound("task {task_id} not found", task_id=task_id, params={"task_id": task_id})
    return task


def list_task_comments(session: Session, actor: Actor, task_id: str, paging: Paging) -> Page:
    """One page of a task's comments (``CommentRow``), oldest first. Raises NotFound (404) as :func:`readable_task`."""
    readable_task(session, actor, task_id)
    query = select(CommentRow).where(CommentRow.task_id == task_id)
    return _page(session, query.order_by(CommentRow.audit_seq, CommentRow.id), paging)


def list_instance_comments(session: Session, actor: Actor, instance_id: str, paging: Paging) -> Page:
    """One page of the comments on every task of an instance, oldest first.

    Raises NotFound (404) when ``actor`` may not see the instance (:func:`visible_instance`).
    """
    visible_instance(session, actor, instance_id)
    query = select(CommentRow).where(CommentRow.instance_id == instance_id)
    return _page(session, query.order_by(CommentRow.audit_seq, CommentRow.id), paging)


def list_task_attachments(session: Session, actor: Actor, task_id: str, paging: Paging) -> Page:
    """One page of a task's attachments (``AttachmentRow`` without the bytes), oldest first.

    Raises NotFound (404) as :func:`readable_task`.
    """
    readable_task(session, actor, task_id)
    query = select(AttachmentRow).where(AttachmentRow.task_id == task_id)
    return _page(session, query.order_by(AttachmentRow.audit_seq, AttachmentRow.id), paging)


def list_instance_attachments(session: Session, actor: Actor, instance_id: str, paging: Paging) -> Page:
    """One page of the attachments of every task of an instance (without the bytes), oldest first.

    Raises NotFound (404) when ``actor`` may not see the instance.
    """
    visible_instance(session, actor, instance_id)
    query = select(AttachmentRow).where(AttachmentRow.instance_id == instance_id)
    return _page(session, query.order_by(AttachmentRow.audit_seq, AttachmentRow.id), paging)


def get_attachment(session: Session, actor: Actor, attachment_id: str, *, content: bool = True) -> AttachmentRow:
    """An attachment ``actor`` may read, with its bytes loaded when ``content`` (``row.content``).

    Readable by whoever may read its task (:func:`readable_task`) or see its instance
    (:func:`visible_instance`), i.e. whoever is shown it in either list. Anything else,
    and an unknown id, raises NotFound (404) naming the attachment only.
    """
    missing = NotFound("attachment {attachment_id} not found", attachment_id=attachment_id,
                       params={"attachment_id": attachment_id})
    row = session.scalar(select(AttachmentRow).where(AttachmentRow.id == attachment_id))
    if row is None:
        raise missing
    try:
        readable_task(session, actor, row.task_id)
    except NotFound:
        try:
            visible_instance(session, actor, row.instance_id)
        except NotFound:
            raise missing from None
    if content:  # the bytes are deferred: read them only for someone allowed to have them
        session.refresh(row, ["content"])
    return row
