"""Alembic owns the schema: one head, a clean round trip, and models that match it."""
from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, inspect, pool

from engine import migrate
from engine.store.models import Base


def test_there_is_exactly_one_head():
    assert len(migrate.heads()) == 1


def test_upgrade_downgrade_round_trip(db):
    url = db.url
    db.dispose()
    assert migrate.is_at_head(url)
    migrate.downgrade(url, "base")
    engine = create_engine(url, poolclass=pool.NullPool)
    assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    migrate.upgrade(url)
    assert migrate.is_at_head(url)
    assert {"tasks", "jobs", "audit_events", "process_instances"} <= set(inspect(engine).get_table_names())
    engine.dispose()


def test_models_match_the_migrated_schema(db):
    engine = create_engine(db.url, poolclass=pool.NullPool)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    engine.dispose()
    assert diff == []


def test_instance_record_has_exactly_the_instance_columns():
    from dataclasses import fields

    from engine.store.models import InstanceRecord, InstanceRow

    assert [f.name for f in fields(InstanceRecord)] == [c.name for c in InstanceRow.__table__.columns]
