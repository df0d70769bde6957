"""inbox offers: index-driven inbox branches

``task_candidates`` becomes the inbox's index of offers: each row carries whether the
task is still on offer (open and unassigned) and the task's sort keys, and a task that
names no candidates gets one ``anyone`` row. ``tasks`` gets one (assignee, state, sort
key, id) index per inbox order in place of (state, assignee). See docs/notes/inbox.md.

Revision ID: 4d7a1c9e2b60
Revises: 8c3e5a1f2b7d
Create Date: 2026-11-30 12:20:00
"""
import sqlalchemy as sa
from alembic import op

revision = '4d7a1c9e2b60'
down_revision = '8c3e5a1f2b7d'
branch_labels = None
depends_on = None

_SORTS = {"created": "created_at", "due": "due_at", "priority": "priority"}


def upgrade() -> None:
    with op.batch_alter_table('task_candidates', schema=None) as batch_op:
        batch_op.add_column(sa.Column('offered', sa.Boolean(), nullable=True))
        batch_op.add_column(sa.Column('created_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('due_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('priority', sa.Integer(), nullable=True))
    op.execute(
        "UPDATE task_candidates SET "
        "offered = (SELECT t.state = 'open' AND t.assignee IS NULL FROM tasks t WHERE t.id = task_candidates.task_id), "
        "created_at = (SELECT t.created_at FROM tasks t WHERE t.id = task_candidates.task_id), "
        "due_at = (SELECT t.due_at FROM tasks t WHERE t.id = task_candidates.task_id), "
        "priority = (SELECT t.priority FROM tasks t WHERE t.id = task_candidates.task_id)"
    )
    op.execute(
        "INSERT INTO task_candidates (task_id, kind, name, offered, created_at, due_at, priority) "
        "SELECT t.id, 'anyone', '*', t.state = 'open' AND t.assignee IS NULL, t.created_at, t.due_at, t.priority "
        "FROM tasks t WHERE NOT EXISTS (SELECT 1 FROM task_candidates c WHERE c.task_id = t.id)"
    )
    with op.batch_alter_table('task_candidates', schema=None) as batch_op:
        batch_op.alter_column('offered', existing_type=sa.Boolean(), nullable=False)
        batch_op.alter_column('created_at', existing_type=sa.DateTime(timezone=True),
                              nullable=False)
        batch_op.alter_column('priority', existing_type=sa.Integer(), nullable=False)
        batch_op.drop_index('ix_task_candidates_kind_name')
        for sort, column in _SORTS.items():
            batch_op.create_index(f'ix_task_candidates_offers_{sort}', ['kind', 'name', 'offered', column, 'task_id'],
                                  unique=False)
    with op.batch_alter_table('tasks', schema=None) as batch_op:
        batch_op.drop_index('ix_tasks_state_assignee')
        for sort, column in _SORTS.items():
            batch_op.create_index(f'ix_tasks_assignee_{sort}', ['assignee', 'state', column, 'id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('tasks', schema=None) as batch_op:
        for sort in _SORTS:
            batch_op.drop_index(f'ix_tasks_assignee_{sort}')
        batch_op.create_index('ix_tasks_state_assignee', ['state', 'assignee'], unique=False)
    op.execute("DELETE FROM task_candidates WHERE kind = 'anyone'")
    with op.batch_alter_table('task_candidates', schema=None) as batch_op:
        for sort in _SORTS:
            batch_op.drop_index(f'ix_task_candidates_offers_{sort}')
        batch_op.create_index('ix_task_candidates_kind_name', ['kind', 'name'], unique=False)
        batch_op.drop_column('priority')
        batch_op.drop_column('due_at')
        batch_op.drop_column('created_at')
        batch_op.drop_column('offered')
