"""The inbox query against a plain reference implementation of the visibility rule.

Tasks are opened, claimed, unclaimed, assigned, completed and cancelled through the
engine's own commands (so the offers the inbox indexes are kept the way production keeps
them); then every employee pages through every filter and sort order to the end and must
see exactly what the rule, applied in Python to the ``tasks`` rows, says.
"""
from __future__ import annotations

import random
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select

from engine import queries
from engine.commands import (
    Actor,
    assign_task,
    cancel_instance,
    claim_task,
    complete_task,
    is_candidate,
    start_instance,
    unclaim_task,
)
from engine.errors import InvalidInput
from engine.queries import Paging, TaskFilter, count_tasks, list_tasks
from engine.store.models import TaskCandidateRow, TaskRow
from tests.bpmnkit import Bpmn
from tests.helpers import deploy_xml

ADMIN = Actor("root", roles=frozenset({"admin"}))
USERS = [f"u{i}" for i in range(7)]
GROUPS = [f"g{i}" for i in range(5)]
ORDERS = [(sort, order) for sort in ("created", "due", "priority") for order in ("asc", "desc")]


def _inbox_process(key: str) -> bytes:
    b = Bpmn(key, dialect="camunda").start().user("do", "Do it", camunda={
        "assignee": "${assignee}", "candidateUsers": "${users}", "candidateGroups": "${groups}",
        "dueDate": "${due}", "priority": "${priority}"}).end()
    return b.chain("start", "do", "end").xml()


def _seed(db, clock, rng: random.Random, n: int = 70) -> list[Actor]:
    deploy_xml(db, _inbox_process("inbox"), "inbox.bpmn")
    deploy_xml(db, _inbox_process("other"), "other.bpmn")
    actors = [Actor(u, groups=frozenset(rng.sample(GROUPS, rng.randint(0, 3))), roles=frozenset({"employee"}))
              for u in USERS]
    instances = []
    for _ in range(n):
        if rng.random() < 0.6:
            clock.advance(minutes=rng.choice([1, 2]))  # else the same instant: ties on created
        roll = rng.random()
        users = rng.sample(USERS, rng.randint(1, 2)) if roll < 0.3 else []
        groups = rng.sample(GROUPS, rng.randint(1, 2)) if 0.2 < roll < 0.85 else []
        variables = {
            "assignee": rng.choice(USERS) if rng.random() < 0.15 else None,
            "users": ",".join(users), "groups": ",".join(groups),
            "due": rng.choice([None, "PT1H", "PT2H", "P1D", "P3D"]),
            "priority": rng.choice([10, 50, 50, 90]),
        }
        key = "inbox" if rng.random() < 0.8 else "other"
        inst = db.command(lambda s, k=key, v=variables: start_instance(s, key=k, actor=ADMIN, variables=v))
        instances.append(inst.id)
    with db.read() as s:
        tasks = list(s.scalars(select(TaskRow)))
    for task in tasks:
        roll = rng.random()
        eligible = [a for a in actors if is_candidate(task, a)]
        if roll < 0.2:
            db.command(lambda s, t=task: assign_task(s, task_id=t.id, assignee=rng.choice(USERS), actor=ADMIN))
        elif roll < 0.4 and eligible and task.assignee is None:
            claimer = rng.choice(eligible)
            db.command(lambda s, t=task, a=claimer: claim_task(s, task_id=t.id, actor=a))
            if rng.random() < 0.3:
                db.command(lambda s, t=task: unclaim_task(s, task_id=t.id, actor=ADMIN))
        elif roll < 0.55:
            db.command(lambda s, t=task: complete_task(s, task_id=t.id, actor=ADMIN, variables={}))
        elif roll < 0.62:
            db.command(lambda s, t=task: cancel_instance(s, instance_id=t.instance_id, actor=ADMIN))
    return actors


def _visible(t: TaskRow, actor: Actor) -> bool:
    if actor.is_admin:
        return True
    if t.assignee == actor.name or t.completed_by == actor.name:
        return True
    if t.assignee is not None:
        return False
    named = bool(t.candidate_users or t.candidate_groups)
    return not named or actor.name in t.candidate_users or bool(actor.groups & set(t.candidate_groups))


def _reference(tasks: list[TaskRow], actor: Actor, f: TaskFilter, now) -> list[str]:
    """The rule and the filters, straight from their definitions, over every task row."""
    me = actor.name
    out = []
    for t in tasks:
        if not _visible(t, actor) or (f.state != "all" and t.state != f.state):
            continue
        if f.assignee and t.assignee != (me if f.assignee == "me" else f.assignee):
            continue
        user = me if f.candidate_user == "me" else f.candidate_user
        if user and user not in t.candidate_users:
            continue
        if f.candidate_group and f.candidate_group not in t.candidate_groups:
            continue
        if (user or f.candidate_group) and not f.include_assigned and t.assignee is not None:
            continue
        if f.unassigned is True and t.assignee is not None or f.unassigned is False and t.assignee is None:
            continue
        if f.process_instance_id and t.instance_id != f.process_instance_id:
            continue
        if f.definition_key and t.definition_key != f.definition_key:
            continue
        if f.due_before and not (t.due_at is not None and t.due_at < f.due_before):
            continue
        if f.min_priority is not None and t.priority < f.min_priority:
            continue
        if f.sla == "breached" and not (t.due_at is not None and t.due_at <= now):
            continue
        if f.sla == "on_time" and not (t.due_at is None or (t.at_risk_at is not None and t.at_risk_at > now)):
            continue
        out.append(t)
    desc = f.order == "desc"
    present = [t for t in out if getattr(t, f"{f.sort}_at" if f.sort != "priority" else "priority") is not None]
    absent = [t for t in out if t not in present]
    key = (lambda t: t.due_at) if f.sort == "due" else (lambda t: t.created_at) if f.sort == "created" else (
        lambda t: t.priority)
    ordered = sorted(present, key=lambda t: (key(t), t.id), reverse=desc)
    ordered += sorted(absent, key=lambda t: t.id, reverse=desc)
    return [t.id for t in ordered]


def _filters(rng: random.Random, actor: Actor, instance_ids: list[str], now) -> list[dict[str, Any]]:
    other = rng.choice([u for u in USERS if u != actor.name])
    group = rng.choice(sorted(actor.groups)) if actor.groups and rng.random() < 0.7 else rng.choice(GROUPS)
    return [
        {}, {"assignee": "me"}, {"assignee": other}, {"unassigned": True}, {"unassigned": False},
        {"candidate_user": "me"}, {"candidate_user": other}, {"candidate_group": group},
        {"candidate_group": group, "include_assigned": True}, {"candidate_user": "me", "include_assigned": True},
        {"candidate_user": other, "candidate_group": group},
        {"min_priority": 50}, {"due_before": now + timedelta(hours=3)}, {"sla": "on_time"},
        {"definition_key": "other"}, {"unassigned": True, "min_priority": 50},
        {"state": "completed"}, {"state": "cancelled"}, {"state": "all"},
        {"process_instance_id": rng.choice(instance_ids)},
    ]


def _page_through(s, actor: Actor, f: TaskFilter, size: int) -> list[str]:
    seen: list[str] = []
    cursor = None
    for _ in range(200):
        page = list_tasks(s, actor, f, Paging.parse(limit=size, cursor=cursor))
        seen += [t.id for t in page.items]
        cursor = page.next_cursor
        if cursor is None:
            return seen
    raise AssertionError("paging did not end")


@pytest.mark.parametrize("seed", [2026])
def test_inbox_equals_the_rule_for_every_filter_and_order(db, clock, seed):
    rng = random.Random(seed)  # noqa: S311 - a reproducible data set, not a secret
    actors = _seed(db, clock, rng)
    clock.advance(hours=2)  # some due dates now passed (sla filters)
    now = clock.now()
    with db.read() as s:
        tasks = list(s.scalars(select(TaskRow)))
        instance_ids = sorted({t.instance_id for t in tasks})
        states = {t.state for t in tasks}
        assert {"open", "completed", "cancelled"} <= states and any(t.assignee for t in tasks)
        checked = nonempty = 0
        for actor in [*actors, ADMIN]:
            for spec in _filters(rng, actor, instance_ids, now):
                for sort, order in rng.sample(ORDERS, 3):
                    f = TaskFilter(**spec, sort=sort, order=order)
                    expected = _reference(tasks, actor, f, now)
                    size = rng.choice([1, 3, 7, 50])
                    assert _page_through(s, actor, f, size) == expected, (actor, spec, sort, order, size)
                    assert count_tasks(s, actor, f) == queries.TaskCount(len(expected))
                    assert count_tasks(s, actor, f, cap=3) == queries.TaskCount(min(len(expected), 3),
                                                                               len(expected) > 3)
                    offset = rng.randint(0, 4)
                    page = list_tasks(s, actor, f, Paging.parse(first_result=offset, max_results=3))
                    assert [t.id for t in page.items] == expected[offset:offset + 3]
                    checked += 1
                    nonempty += bool(expected)
    assert nonempty > checked // 2  # the data set exercises the rule, not only empty answers


def test_offers_follow_every_command(db, clock):
    """task_candidates mirrors each task: offered iff open and unassigned; the task's sort keys; one
    ``anyone`` row for a task that names no candidates."""
    _seed(db, clock, random.Random(11), n=40)  # noqa: S311
    with db.read() as s:
        tasks = {t.id: t for t in s.scalars(select(TaskRow))}
        offers = list(s.scalars(select(TaskCandidateRow)))
    by_task: dict[str, set[tuple[str, str]]] = {}
    for o in offers:
        t = tasks[o.task_id]
        assert o.offered == (t.state == "open" and t.assignee is None), (o.kind, o.name, t.state, t.assignee)
        assert (o.created_at, o.due_at, o.priority) == (t.created_at, t.due_at, t.priority)
        by_task.setdefault(o.task_id, set()).add((o.kind, o.name))
    for t in tasks.values():
        named = {("user", u) for u in t.candidate_users} | {("group", g) for g in t.candidate_groups}
        assert by_task[t.id] == (named or {("anyone", "*")})


def test_keyset_cursor_refusals(db, clock):
    _seed(db, clock, random.Random(3), n=12)  # noqa: S311
    actor = Actor("u1", groups=frozenset(GROUPS), roles=frozenset({"employee"}))
    with db.read() as s:
        page = list_tasks(s, actor, TaskFilter(), Paging.parse(limit=1))
        assert page.next_cursor and page.total > 1
        # a cursor belongs to its sort order
        with pytest.raises(InvalidInput, match="sorted by created asc"):
            list_tasks(s, actor, TaskFilter(sort="due"), Paging.parse(limit=2, cursor=page.next_cursor))
        # a keyset cursor is not an offset cursor of another list
        with pytest.raises(InvalidInput) as refused:
            queries.list_deployments(s, Paging.parse(limit=2, cursor=page.next_cursor))
        assert refused.value.context.get("field") == "cursor"
    k = queries._encode_cursor
    forged = [
        ("created", "not-a-cursor"), ("created", "e30="), ("created", k({"k": ["created", "asc", "yesterday", "x"]})),
        ("created", k({"k": ["created", "asc", "2026-01-01T00:00:00", "x"]})),  # no time zone
        ("priority", k({"k": ["priority", "asc", 2**40, "x"]})), ("priority", k({"k": ["priority", "asc", True, "x"]})),
        ("priority", k({"k": ["priority", "asc", 1.5, "x"]})),
        ("created", k({"k": ["created", "asc", None, "x"]})),
        ("created", k({"k": ["created", "asc", "2026-01-01T00:00:00+00:00", "a'; drop"]})),
        ("created", k({"k": ["name", "asc", 1, "x"]})), ("created", k({"k": [], "o": 1})),
        ("created", k({"o": -1})), ("created", k({"o": 1.5})), ("created", k({"k": "created"})),
    ]
    with db.read() as s:
        for sort, cursor in forged:
            with pytest.raises(InvalidInput) as refused:
                list_tasks(s, actor, TaskFilter(sort=sort), Paging.parse(limit=2, cursor=cursor))
            assert refused.value.context.get("field") == "cursor", cursor


def test_a_reused_statement_binds_the_clock_and_the_cursor_of_each_call(db, clock):
    """Task statements are built once per (actor, filter, paging shape) and reused (queries._statement):
    the SLA filter's "now" and the keyset start are bound at each call, never frozen into the statement."""
    _seed(db, clock, random.Random(5), n=40)  # noqa: S311
    actor = Actor("u1", groups=frozenset(GROUPS), roles=frozenset({"employee"}))
    f = TaskFilter(sla="breached", sort="due")
    answers = []
    for _ in range(3):
        now = clock.now()
        with db.read() as s:
            expected = _reference(list(s.scalars(select(TaskRow))), actor, f, now)
            assert _page_through(s, actor, f, 2) == expected
            assert count_tasks(s, actor, f).count == len(expected)
        answers.append(len(expected))
        clock.advance(hours=6)
    assert answers[0] < answers[-1]  # tasks became breached as the clock moved, and the lists followed
