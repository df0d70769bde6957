"""User names unique whatever their case: ``users.name_key``

``name_key`` is the name in lower case under a unique index, so ``Rita`` and ``rita`` cannot
both exist (engine.identity.add_user) and sign-in finds a user whatever the case typed.

Existing users whose names differ only in case: the oldest of each such set (lowest id)
gets the key; the others keep their rows, tasks, tokens and history unchanged with
``name_key`` NULL, so they still sign in with their exact name (sign-in tries the exact
name first) and no new user can take any spelling of the name. Nothing is renamed or
deleted; an administrator may review them (``SELECT name FROM users WHERE name_key IS NULL``).

Revision ID: 9d2b6e4f1a37
Revises: e5a91c3d7f24
Create Date: 2026-11-30 18:00:00
"""
import sqlalchemy as sa
from alembic import op

revision = '9d2b6e4f1a37'
down_revision = 'e5a91c3d7f24'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.add_column(sa.Column('name_key', sa.String(length=100), nullable=True))
    # names are ASCII (engine.identity: letters, digits, . _ @ -), so lower() is the same in both databases
    op.execute("UPDATE users SET name_key = lower(name) "
               "WHERE id IN (SELECT min(id) FROM users GROUP BY lower(name))")
    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_users_name_key'), ['name_key'], unique=True)


def downgrade() -> None:
    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_users_name_key'))
        batch_op.drop_column('name_key')
