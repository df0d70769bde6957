"""task scope and start form

``tasks.local_variables``: a task's own scope when it opened (multi-instance item,
loopCounter, camunda:inputOutput inputs), so the task detail and inbox show it without
deserializing the instance. ``process_definitions.start_form``: the none start event's
form, which start variables follow (GET /api/process-definitions/{key}/start-form).

Revision ID: 7c4e2a9b1d3f
Revises: 4d7a1c9e2b60
Create Date: 2026-11-30 12:30:00
"""
from alembic import op
import sqlalchemy as sa


revision = '7c4e2a9b1d3f'
down_revision = '4d7a1c9e2b60'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('tasks', schema=None) as batch_op:
        batch_op.add_column(sa.Column('local_variables', sa.JSON(), nullable=True))
    with op.batch_alter_table('process_definitions', schema=None) as batch_op:
        batch_op.add_column(sa.Column('start_form', sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('process_definitions', schema=None) as batch_op:
        batch_op.drop_column('start_form')
    with op.batch_alter_table('tasks', schema=None) as batch_op:
        batch_op.drop_column('local_variables')
