"""Comments and attachments on a user task (Camunda's ``POST /task/{id}/comment/create`` and
``/task/{id}/attachment/create``).

Each addition is one row (``comments`` or ``attachments``) plus one audit event on the
instance's hash chain (``task.comment_added``, ``task.attachment_added``), written in the
same transaction or not at all. Who may add: whoever may see the task
(:func:`engine.queries.visible_task`, the inbox's visibility rule; 404 otherwise, as for
the task itself), while the task is open (a completed or cancelled task keeps its comments
and files, readable, but takes no new ones: 409). Reading is in :mod:`engine.queries`.

Ordering against other commands on the instance: the instance row's audit head is read
*before* the task's state, and the event is appended with a compare-and-set on that head
(:func:`engine.commands.unit.append_events`, the same as claim/unclaim). Every command
that closes a task appends events too (``task.completed``/``task.cancelled``) and its
instance UPDATE is guarded by the head it read, so either this addition lands first (and
the other command is retried after it) or the other lands first (this one's
compare-and-set fails, the edge retries, and the retry sees the closed task: 409).
"""
from __future__ import annotations

import unicodedata
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from engine import clock, uploads
from engine.actor import Actor
from engine.audit import Event
from engine.commands import unit
from engine.config import Settings
from engine.config import load as load_settings
from engine.errors import Conflict, InvalidInput, Phrase, StaleInstance
from engine.ids import time_ordered_id
from engine.queries import visible_task
from engine.store.models import AttachmentRow, CommentRow, InstanceRow, TaskRow

MAX_COMMENT_CHARS = 5000
MAX_DESCRIPTION_CHARS = 1000
_ALLOWED_CONTROLS = {"\n", "\r", "\t"}


# How a field is called in a refusal (a Phrase: translated on the pages; English = the field's id).
_FIELD_LABELS = {"message": Phrase("message"), "description": Phrase("description")}


def check_text(value: Any, what: str, *, max_chars: int, required: bool) -> str | None:
    """Plain text as stored: trimmed, 1..``max_chars`` characters (or None when not ``required`` and blank).

    Refuses (InvalidInput, 422 naming ``what``) a non-string, blank text when required,
    text over the limit, and control, format or surrogate characters other than line
    breaks and tabs (nothing can hide in a comment the way a bidi override hides text).
    """
    field, what = what, _FIELD_LABELS.get(what, what)
    if value is None:
        value = ""
    if not isinstance(value, str):
        raise InvalidInput("{what} must be text", field=field, params={"what": what})
    text = value.strip()
    if not text:
        if required:
            raise InvalidInput("{what} is empty; write at least one character", field=field,
                               params={"what": what})
        return None
    if len(text) > max_chars:
        raise InvalidInput("{what} is {length} characters long; at most {max_chars} are allowed", field=field,
                           params={"what": what, "length": len(text), "max_chars": max_chars})
    for ch in text:
        if ch not in _ALLOWED_CONTROLS and unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co"):
            raise InvalidInput("{what} holds the control character U+{ch:04X}; use plain text", field=field,
                               params={"what": what, "ch": ord(ch)})
    return text


def _open_task(session: Session, actor: Actor, task_id: str, doing: str) -> tuple[TaskRow, InstanceRow, int]:
    """The task (visible to ``actor``, still open), its instance row and the instance chain's head sequence.

    The head is read before the task's state is read again (see the module docstring).
    Raises NotFound (not visible or absent), Conflict (closed).
    """
    task = visible_task(session, actor, task_id)
    instance = session.get(InstanceRow, task.instance_id)
    if instance is None:  # the task row references it; only a concurrent delete could get here
        raise StaleInstance("process instance {instance_id} is gone", instance_id=task.instance_id,
                            params={"instance_id": task.instance_id})
    seen_seq = instance.audit_seq or 0
    state = session.scalar(select(TaskRow.state).where(TaskRow.id == task_id))
    if state != "open" and doing == "commenting":
        raise Conflict("task '{name}' is {state}: its comments and attachments stay readable, but "
                       "commenting is only possible while it is open", task_id=task_id, state=state,
                       params={"name": task.name, "state": state})
    if state != "open":
        raise Conflict("task '{name}' is {state}: its comments and attachments stay readable, but "
                       "attaching a file is only possible while it is open", task_id=task_id, state=state,
                       params={"name": task.name, "state": state})
    return task, instance, seen_seq


def add_comment(session: Session, *, task_id: str, actor: Actor, message: Any) -> CommentRow:
    """Add a plain-text comment (1..5000 characters, trimmed) to an open task ``actor`` may see.

    Writes the ``comments`` row and the ``task.comment_added`` audit event (payload:
    ``comment_id``, ``message``, ``task_name``, ``element_id``) on the instance's chain.
    Returns the stored row. Raises InvalidInput (422) for the message, NotFound (404) for
    a task the actor may not see, Conflict (409) for a completed or cancelled task,
    StaleInstance (retried by the edge) when another command moved the chain first.
    """
    text = check_text(message, "message", max_chars=MAX_COMMENT_CHARS, required=True) or ""  # never blank here
    task, instance, seen_seq = _open_task(session, actor, task_id, "commenting")
    row = CommentRow(id=time_ordered_id(), task_id=task.id, instance_id=task.instance_id, author=actor.name,
                     message=text, created_at=clock.now(), audit_seq=seen_seq + 1)
    unit.append_events(session, instance, seen_seq, [Event("task.comment_added", actor.name, {
        "comment_id": row.id, "message": text, "task_name": task.name, "element_id": task.element_id,
    }, task_id=task.id, occurred_at=row.created_at)])
    session.add(row)
    session.flush()
    return row


def add_attachment(session: Session, *, task_id: str, actor: Actor, filename: str | None, data: bytes,
                   description: Any = None, settings: Settings | None = None) -> AttachmentRow:
    """Attach a file to an open task ``actor`` may see; returns the stored row.

    The file is checked before anything is read or written (:func:`engine.uploads.check_file`:
    size, allowed extension, content matching it, sanitized name); ``description`` is
    optional plain text up to 1000 characters. Stored with its SHA-256 (hex, computed
    here) and the content type of its extension, together with the
    ``task.attachment_added`` audit event (payload: ``attachment_id``, ``name``,
    ``content_type``, ``size`` in bytes, ``sha256``, ``description``, ``task_name``).
    Raises TooLarge (413), UnsupportedType (415), InvalidInput (422: empty file, unusable
    name, description), NotFound (404), Conflict (409: the task is closed).
    """
    settings = settings or load_settings()
    accepted = uploads.check_file(filename, data, max_bytes=settings.max_attachment_bytes,
                                  allowed=settings.attachment_types)
    note = check_text(description, "description", max_chars=MAX_DESCRIPTION_CHARS, required=False)
    task, instance, seen_seq = _open_task(session, actor, task_id, "attaching a file")
    row = AttachmentRow(id=time_ordered_id(), task_id=task.id, instance_id=task.instance_id, name=accepted.name,
                        content_type=accepted.content_type, size=accepted.size, sha256=accepted.sha256,
                        description=note, content=data, uploaded_by=actor.name, created_at=clock.now(),
                        audit_seq=seen_seq + 1)
    unit.append_events(session, instance, seen_seq, [Event("task.attachment_added", actor.name, {
        "attachment_id": row.id, "name": accepted.name, "content_type": accepted.content_type,
        "size": accepted.size, "sha256": accepted.sha256, "description": note, "task_name": task.name,
    }, task_id=task.id, occurred_at=row.created_at)])
    session.add(row)
    session.flush()
    return row
