"""Shared fixtures: the frozen clock, and real databases (SQLite and PostgreSQL).

The PostgreSQL cluster is a throwaway one started from the machine's binaries (as the
``postgres`` user when we run as root; PostgreSQL refuses root). Its schema comes from
``alembic upgrade head`` into a template database; each test gets a fresh copy. Where
PostgreSQL binaries are missing the PostgreSQL half is skipped, unless
``SOPFLOW_TEST_REQUIRE_POSTGRES=1`` (CI), which turns that into a failure.
"""
from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine import clock as clock_module
from engine import migrate
from engine.clock import FrozenClock
from engine.store.db import Database

REQUIRE_PG = os.environ.get("SOPFLOW_TEST_REQUIRE_POSTGRES") == "1"


@pytest.fixture
def clock() -> Iterator[FrozenClock]:
    frozen = FrozenClock()
    previous = clock_module.use(frozen)
    yield frozen
    clock_module.use(previous)


# ---------------------------------------------------------------- SQLite


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sqlite") / "template.db"
    migrate.upgrade(f"sqlite:///{path}")
    return path


def _sqlite_db(template: Path, tmp_path: Path) -> Database:
    target = tmp_path / f"sopflow-{uuid.uuid4().hex[:8]}.db"
    shutil.copyfile(template, target)
    return Database(f"sqlite:///{target}")


# ---------------------------------------------------------------- PostgreSQL


def _pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PgCluster:
    def __init__(self) -> None:
        initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
        if not initdb or not pg_ctl:
            raise RuntimeError("PostgreSQL server binaries (initdb, pg_ctl) not found")
        self.pg_ctl = pg_ctl
        self.dir = Path(tempfile.mkdtemp(prefix="sopflow-pg-"))
        self.data = self.dir / "data"
        self.port = _free_port()
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            self.as_user = ["runuser", "-u", "postgres", "--"]
            shutil.chown(self.dir, "postgres", "postgres")
        self._run([initdb, "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8"])
        options = (f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off "
                   "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
        self._run([pg_ctl, "-D", str(self.data), "-o", options, "-l", str(self.dir / "log"), "-w", "start"])
        self.admin_url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, cmd: list[str]) -> None:
        subprocess.run([*self.as_user, *cmd], check=True, capture_output=True, timeout=120)

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def execute(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres",
                             autocommit=True) as conn:
            conn.execute(sql)

    def stop(self) -> None:
        try:
            self._run([self.pg_ctl, "-D", str(self.data), "-m", "immediate", "stop"])
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster | None]:
    try:
        cluster = PgCluster()
    except (RuntimeError, subprocess.SubprocessError, OSError) as exc:
        if REQUIRE_PG:
            raise
        pytest.skip(f"PostgreSQL not available here: {exc}")
        return
    cluster.execute("CREATE DATABASE sopflow_template")
    migrate.upgrade(cluster.url("sopflow_template"))
    yield cluster
    cluster.stop()


def _pg_db(cluster: PgCluster) -> Database:
    name = f"t_{uuid.uuid4().hex[:12]}"
    for attempt in range(20):
        try:
            cluster.execute(f"CREATE DATABASE {name} TEMPLATE sopflow_template")
            break
        except Exception:  # the template may be briefly in use  # noqa: BLE001
            if attempt == 19:
                raise
            time.sleep(0.1)
    return Database(cluster.url(name))


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, tmp_path: Path, sqlite_template: Path) -> Iterator[Database]:
    """A freshly migrated database of each kind; storage tests run on both."""
    if request.param == "sqlite":
        database = _sqlite_db(sqlite_template, tmp_path)
    else:
        database = _pg_db(request.getfixturevalue("pg_cluster"))
    yield database
    database.dispose()


@pytest.fixture
def sqlite_db(tmp_path: Path, sqlite_template: Path) -> Iterator[Database]:
    database = _sqlite_db(sqlite_template, tmp_path)
    yield database
    database.dispose()


@pytest.fixture
def web(db, clock):
    """The web application over each real database, with the demo organisation (tests/web_helpers.py)."""
    from tests.web_helpers import make_web

    return make_web(db)


@pytest.fixture
def web1(sqlite_db, clock):
    """The web application over SQLite only, for page tests that store nothing database-specific."""
    from tests.web_helpers import make_web

    return make_web(sqlite_db)


@pytest.fixture
def api(db, clock):
    """The HTTP API over each real database, with the demo organisation and its tokens."""
    from tests.api_helpers import make_api

    built = make_api(db)
    with built.client:
        yield built
