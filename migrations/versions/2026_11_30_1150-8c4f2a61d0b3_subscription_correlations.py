"""subscription correlations

A waiting message catch event's correlation values ({key: {property: value}}), so a
message (sent through the API or thrown by another instance) is routed to the instance
whose correlation matches from the event_subscriptions row, without loading workflows.
NULL accepts any message of the subscription's name (SpiffWorkflow's rule).

Revision ID: 8c4f2a61d0b3
Revises: 5b1e0c7d9a2f
Create Date: 2026-11-30 11:50:00
"""
import sqlalchemy as sa
from alembic import op

revision = '8c4f2a61d0b3'
down_revision = '5b1e0c7d9a2f'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('event_subscriptions', schema=None) as batch_op:
        batch_op.add_column(sa.Column('correlations', sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('event_subscriptions', schema=None) as batch_op:
        batch_op.drop_column('correlations')
