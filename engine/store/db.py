"""Database engines, sessions and the edge's transaction helper.

- SQLite (the embedded default): WAL, ``synchronous=FULL`` (a commit is durable),
  foreign keys on, and writes made under ``BEGIN IMMEDIATE`` so two writers queue on
  the busy timeout instead of failing a read-to-write upgrade.
- PostgreSQL (``postgresql+psycopg://``): the scale-out path; instances are guarded
  by their ``revision`` column and jobs are claimed with ``FOR UPDATE SKIP LOCKED``.

:meth:`Database.command` is the edge of a unit of work: it opens one transaction,
runs the command (which only flushes), commits, and retries the whole command a
bounded number of times when another writer moved the instance first.

**Compute outside the write lock.** A command reads its snapshot, runs the engine and
only then writes. On SQLite the command's transaction therefore starts as a plain
(deferred) read transaction; its first write statement ends that read and opens
``BEGIN IMMEDIATE`` before it runs, so the write lock is held from the first write to
the commit and never while SpiffWorkflow or a script computes. Whatever the command
read before is checked by its guarded writes (the instance's ``UPDATE ... WHERE
revision = :seen``, a task row's ``WHERE state/assignee = :seen``, unique keys); a
write that finds the world moved raises :class:`StaleInstance` (or hits a unique key)
and the whole command is retried. On PostgreSQL nothing needs switching: reads take no
locks (READ COMMITTED), and the row locks of the guarded UPDATEs are the write.
"""
from __future__ import annotations

import fcntl
import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar, cast

from sqlalchemy import create_engine, event
from sqlalchemy.engine import CursorResult, Engine, Result
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from engine import stats
from engine.errors import Conflict, StaleInstance

T = TypeVar("T")


# SQL that reads; anything else (INSERT/UPDATE/DELETE/REPLACE, DDL) needs the write lock first.
_READS = ("SELECT", "PRAGMA", "BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE", "EXPLAIN")
_PHASE = "sopflow_phase"  # on the DBAPI connection's info: "read" while a lazy command has not written yet


class WriteQueue:
    """A fair wait for SQLite's write lock: writers queue on a lock instead of polling it.

    SQLite's busy handler sleeps and retries (1, 2, 5 ... 100 ms steps), so under load a
    waiter wakes late or loses to a newcomer, which gave a multi-second p99. Before
    ``BEGIN IMMEDIATE`` a writer takes a per-process ``threading.Lock`` (threads of one
    server process) and then ``flock`` on ``<database>.writelock`` (the server's processes):
    both block in the kernel and wake the waiter when the holder lets go, with no sleep.
    The lock is let go right after the transaction's COMMIT or ROLLBACK. Writers that do
    not queue (another program on the same file) still meet the busy timeout, so this is
    an optimisation of waiting, never a condition of correctness.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._local = threading.Lock()
        self._fd: int | None = None
        self._pid = 0
        self._held = threading.local()

    def acquire(self) -> None:
        if getattr(self._held, "on", False):
            return
        self._local.acquire()
        try:
            if self._fd is None or self._pid != os.getpid():
                self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
                self._pid = os.getpid()
            fcntl.flock(self._fd, fcntl.LOCK_EX)
        except BaseException:
            self._local.release()
            raise
        self._held.on = True

    def release(self) -> None:
        if not getattr(self._held, "on", False):
            return
        self._held.on = False
        try:
            if self._fd is not None:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._local.release()


def _sqlite_file(url: str) -> str | None:
    """The database file of a SQLite URL, or None for an in-memory database."""
    path = url.split(":///", 1)[1] if ":///" in url else ""
    path = path.split("?", 1)[0]
    return None if not path or path == ":memory:" else path


def _sqlite_setup(engine: Engine, queue: WriteQueue | None) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=FULL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        mode = conn.get_execution_options().get("sopflow_write", False)
        conn.info.pop(_PHASE, None)
        if mode is True and queue is not None:
            queue.acquire()
        conn.exec_driver_sql("BEGIN IMMEDIATE" if mode is True else "BEGIN")
        if mode == "lazy":
            conn.info[_PHASE] = "read"

    @event.listens_for(engine, "before_cursor_execute")
    def _before_write(conn: Any, cursor: Any, statement: str, *_args: Any) -> None:
        if conn.info.get(_PHASE) != "read" or statement.lstrip()[:9].upper().startswith(_READS):
            return
        # The command has computed and now writes: drop the read snapshot and queue for the
        # write lock. What it read is re-checked by its guarded writes (module docstring).
        _upgrade(conn.info, cursor, queue)


def _upgrade(info: dict[Any, Any], cursor: Any, queue: WriteQueue | None) -> None:
    """End a lazy transaction's read phase: COMMIT the read, queue for the lock, ``BEGIN IMMEDIATE``."""
    info[_PHASE] = "write"
    cursor.execute("COMMIT")
    if queue is not None:
        queue.acquire()
    cursor.execute("BEGIN IMMEDIATE")
    stats.incr("write_upgrades")


class Database:
    def __init__(self, url: str, *, echo: bool = False) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        kwargs: dict[str, Any] = {"echo": echo, "future": True}
        if self.is_sqlite:
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
        else:
            kwargs.update(pool_size=10, max_overflow=20, pool_pre_ping=True)
        self.engine = create_engine(url, **kwargs)
        self.write_queue: WriteQueue | None = None
        if self.is_sqlite:
            path = _sqlite_file(url)
            self.write_queue = WriteQueue(path + ".writelock") if path else None
            _sqlite_setup(self.engine, self.write_queue)
        write_bind = self.engine.execution_options(sopflow_write=True)
        self._write = sessionmaker(bind=write_bind, expire_on_commit=False, autoflush=True)
        lazy_bind = self.engine.execution_options(sopflow_write="lazy")
        self._command = sessionmaker(bind=lazy_bind, expire_on_commit=False, autoflush=True)
        self._read = sessionmaker(bind=self.engine, expire_on_commit=False, autoflush=False)
        self.retries = 5

    @contextmanager
    def read(self) -> Iterator[Session]:
        """A read-only session for queries (never commits)."""
        session = self._read()
        try:
            yield session
        finally:
            session.close()  # ends the transaction; loaded objects stay readable (detached)

    @contextmanager
    def transaction(self, *, lazy: bool = False) -> Iterator[Session]:
        """One write transaction: commit on success, roll back on any error.

        ``lazy=True`` (what :meth:`command` uses) takes SQLite's write lock only at the
        first write statement, so reads and computation before it do not block other
        writers; without it the lock is taken at ``BEGIN`` (``BEGIN IMMEDIATE``), for short
        transactions that read in order to write (e.g. leasing jobs).
        """
        session = (self._command if lazy else self._write)()
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()
            if self.write_queue is not None:
                self.write_queue.release()  # after COMMIT/ROLLBACK: the next writer's turn

    def begin_writing(self, session: Session) -> None:
        """End the read phase of a lazy transaction (:meth:`transaction` ``lazy=True``) now: take the write lock.

        On SQLite, if the transaction has not written yet, its read snapshot ends (COMMIT)
        and ``BEGIN IMMEDIATE`` opens the write transaction, exactly as the first write
        statement would do it; every read after this sees the latest commit and no other
        writer can commit until this transaction ends. Use it before reading what a write
        is guarded by in a separate query (and before a SAVEPOINT, which the implicit
        upgrade would drop). A no-op on PostgreSQL and once the transaction has written.
        """
        if not self.is_sqlite:
            return
        connection = session.connection()
        if connection.info.get(_PHASE) != "read":
            return
        cursor = connection.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        try:
            _upgrade(connection.info, cursor, self.write_queue)
        finally:
            cursor.close()

    def command(self, fn: Callable[[Session], T], *, retries: int | None = None) -> T:
        """Run ``fn`` as one unit of work, retrying when another writer got there first.

        ``fn`` takes the session, reads, computes and flushes; it never commits. Its
        transaction takes the write lock lazily (:meth:`transaction`), so a stale read is
        caught by the guarded writes and the whole of ``fn`` runs again, at most
        ``retries`` more times (:class:`StaleInstance` then reaches the caller, a 409).
        """
        attempts = (self.retries if retries is None else retries) + 1
        for attempt in range(attempts):
            try:
                with self.transaction(lazy=True) as session:
                    result = fn(session)
                stats.incr("commands")
                return result
            except StaleInstance:
                stats.incr("command_conflicts")
                if attempt == attempts - 1:
                    raise
            except IntegrityError:
                # a concurrent writer got there first (same audit chain, same projection rows,
                # same new version number): the retry sees its result
                if attempt == attempts - 1:
                    raise Conflict("another change was stored at the same time; please retry") from None
            except OperationalError as exc:
                transient = any(s in str(exc.orig).lower() for s in ("locked", "deadlock", "serialize"))
                if not transient or attempt == attempts - 1:
                    raise
            time.sleep(random.uniform(0.001, 0.01) * (attempt + 1))  # noqa: S311 (jitter, not crypto)
        raise AssertionError("unreachable")

    def dispose(self) -> None:
        self.engine.dispose()


def rowcount(result: Result[Any]) -> int:
    """Rows an UPDATE or DELETE matched (SQLAlchemy types ``Session.execute`` as a plain ``Result``)."""
    return cast("CursorResult[Any]", result).rowcount
