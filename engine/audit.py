"""Append-only, hash-chained audit log and its verification.

Each event's hash is ``sha256(prev_hash || canonical_json(event))``. There is one chain
per process instance (its head lives on the instance row and moves under the same
revision check as the workflow state, so writers on different instances never wait on
each other) and one chain each for deployments and identity (head in
``audit_chain_heads``, updated with a compare-and-set on its sequence).

:func:`verify` walks every chain and reports the first broken link: a changed event,
a deleted or reordered event, or a chain whose stored head does not match its tail.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID

from sqlalchemy import insert, select, update
from sqlalchemy.orm import Session

from engine import clock
from engine.errors import StaleInstance
from engine.store.db import rowcount
from engine.store.models import AuditEventRow, ChainHeadRow, InstanceRow

GENESIS = "0" * 64
DEPLOYMENTS_CHAIN = "deployments"
IDENTITY_CHAIN = "identity"


def _default(value: Any) -> Any:
    if isinstance(value, (datetime, date, time)):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, (Decimal, UUID)):
        return str(value)
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    return repr(value)


def canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=_default, ensure_ascii=False)


@dataclass
class Event:
    action: str
    actor: str | None
    payload: dict[str, Any] = field(default_factory=dict)
    task_id: str | None = None
    occurred_at: datetime | None = None


def _hash(prev_hash: str, chain: str, chain_seq: int, row: dict[str, Any]) -> str:
    body = canonical({**row, "chain": chain, "chain_seq": chain_seq})
    return hashlib.sha256((prev_hash + body).encode()).hexdigest()


HASHED_FIELDS = ("occurred_at", "actor", "action", "instance_id", "task_id", "definition_id", "definition_key",
                 "definition_version", "payload")


def _hashed_fields(get: Any) -> dict[str, Any]:
    """What an event's hash covers, read through ``get(name)`` (a stored row or a new one)."""
    return {k: get(k).isoformat() if k == "occurred_at" else get(k) for k in HASHED_FIELDS}


def _rows(chain: str, start_seq: int, prev_hash: str, events: list[Event], *, instance_id: str | None,
          definition: tuple[str | None, str | None, int | None]) -> tuple[list[dict[str, Any]], str]:
    rows: list[dict[str, Any]] = []
    definition_id, key, version = definition
    now = clock.now()
    for i, ev in enumerate(events, start=1):
        row: dict[str, Any] = {
            "chain": chain, "chain_seq": start_seq + i, "occurred_at": ev.occurred_at or now,
            "actor": ev.actor, "action": ev.action, "instance_id": instance_id, "task_id": ev.task_id,
            "definition_id": definition_id, "definition_key": key, "definition_version": version,
            "payload": canonical(ev.payload), "prev_hash": prev_hash,
        }
        row["hash"] = prev_hash = _hash(prev_hash, chain, row["chain_seq"], _hashed_fields(row.__getitem__))
        rows.append(row)
    return rows, prev_hash


def chain_instance_events(instance_id: str, definition: tuple[str | None, str | None, int | None],
                          seen_seq: int, seen_hash: str | None,
                          events: list[Event]) -> tuple[list[dict[str, Any]], str, int]:
    """Rows for an instance's chain; the caller stores the new head with the revision check."""
    rows, head = _rows(instance_id, seen_seq, seen_hash or GENESIS, events, instance_id=instance_id,
                       definition=definition)
    return rows, head, seen_seq + len(rows)


_INSERT_EVENTS = insert(AuditEventRow)


def insert_rows(session: Session, rows: list[dict[str, Any]]) -> None:
    """Bulk insert (Core): audit rows are write-once and need no identity tracking."""
    session.connection().execute(_INSERT_EVENTS, rows)


def append_global(session: Session, chain: str, events: list[Event],
                  definition: tuple[str | None, str | None, int | None] = (None, None, None)) -> None:
    """Append to the deployments or identity chain (compare-and-set on its head)."""
    # populate_existing: the guarded UPDATE below is Core (it does not refresh a loaded head), so
    # a head still in the session from an earlier append in this transaction must be re-read,
    # or the next append would compare against a stale seq and fail as if another writer moved it
    head = session.get(ChainHeadRow, chain, populate_existing=True)
    seq, prev = (head.seq, head.hash) if head else (0, GENESIS)
    rows, new_hash = _rows(chain, seq, prev, events, instance_id=None, definition=definition)
    if head is None:
        session.add(ChainHeadRow(chain=chain, seq=seq + len(rows), hash=new_hash))
    else:
        moved = rowcount(session.execute(
            update(ChainHeadRow).where(ChainHeadRow.chain == chain, ChainHeadRow.seq == seq)
            .values(seq=seq + len(rows), hash=new_hash)
            .execution_options(synchronize_session=False)
        ))
        if moved != 1:
            raise StaleInstance("audit chain {chain} moved; retrying", params={"chain": chain})
    insert_rows(session, rows)


@dataclass
class Verification:
    ok: bool
    events: int
    chains: int
    broken_chain: str | None = None
    broken_seq: int | None = None
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


class _ChainWalker:
    """Walks events ordered by (chain, chain_seq), checking links, hashes and recorded heads."""

    def __init__(self, heads: dict[str, tuple[int, str]]) -> None:
        self.heads = heads
        self.count = 0
        self.chains = 0
        self.current: str | None = None
        self.seq = 0
        self.prev = GENESIS

    def fail(self, chain: str | None, seq: int, reason: str) -> Verification:
        return Verification(False, self.count, self.chains, chain, seq, reason)

    def close_chain(self) -> Verification | None:
        if self.current is None:
            return None
        head = self.heads.get(self.current)
        if head is not None and head != (self.seq, self.prev):
            return self.fail(self.current, self.seq, "the chain's recorded head does not match its last event "
                             "(events were removed or appended outside sopflow)")
        return None

    def step(self, row: AuditEventRow) -> Verification | None:
        if row.chain != self.current:
            if (bad := self.close_chain()) is not None:
                return bad
            self.current, self.seq, self.prev = row.chain, 0, GENESIS
            self.chains += 1
        self.seq += 1
        if row.chain_seq != self.seq:
            return self.fail(row.chain, self.seq, "an event is missing from the chain")
        if row.prev_hash != self.prev:
            return self.fail(row.chain, row.chain_seq, "the previous-hash link is broken")
        if _hash(self.prev, row.chain, row.chain_seq, _hashed_fields(lambda k: getattr(row, k))) != row.hash:
            return self.fail(row.chain, row.chain_seq, "the event's content does not match its hash (it was altered)")
        self.prev = row.hash
        self.count += 1
        return None


def verify(session: Session, *, chain: str | None = None) -> Verification:
    heads: dict[str, tuple[int, str]] = {
        h.chain: (h.seq, h.hash) for h in session.scalars(select(ChainHeadRow))
    }
    inst_query = select(InstanceRow.id, InstanceRow.audit_seq, InstanceRow.last_audit_hash)
    for inst_id, seq, last in session.execute(inst_query):
        heads[inst_id] = (seq or 0, last or GENESIS)
    query = select(AuditEventRow).order_by(AuditEventRow.chain, AuditEventRow.chain_seq)
    if chain is not None:
        query = query.where(AuditEventRow.chain == chain)
    walker = _ChainWalker(heads)
    result = session.execute(query.execution_options(yield_per=1000)).scalars()
    try:
        for row in result:
            if (bad := walker.step(row)) is not None:
                return bad
    finally:
        result.close()
    if (bad := walker.close_chain()) is not None:
        return bad
    if chain is None:
        seen = set(session.scalars(select(AuditEventRow.chain).distinct()))
        for name, (seq, _) in heads.items():
            if seq > 0 and name not in seen:
                return walker.fail(name, 1, "all events of a chain were removed")
    return Verification(True, walker.count, walker.chains)
