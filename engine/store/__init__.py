"""Persistence: SQLAlchemy 2 models (``models``) and engine/session setup (``db``).

Alembic owns the schema (``migrations/``); nothing calls ``create_all``.
"""
