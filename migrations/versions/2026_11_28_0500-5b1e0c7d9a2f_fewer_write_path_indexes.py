"""fewer write-path indexes

Every command writes audit_events and tasks (and every start process_instances); each
index on them is one more page in the command's commit. The instance filter on the
audit trail is served by the (chain, chain_seq) key (an instance's chain is its id);
action, definition key and the task inbox's definition key filter ride on the
remaining indexes; nothing looks instances up by definition id.

Revision ID: 5b1e0c7d9a2f
Revises: 3467d2ba621e
Create Date: 2026-11-28 05:00:00
"""
from alembic import op


revision = '5b1e0c7d9a2f'
down_revision = '3467d2ba621e'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('audit_events', schema=None) as batch_op:
        batch_op.drop_index('ix_audit_events_action_time')
        batch_op.drop_index(batch_op.f('ix_audit_events_definition_key'))
        batch_op.drop_index(batch_op.f('ix_audit_events_instance_id'))
    with op.batch_alter_table('tasks', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_tasks_definition_key'))
    with op.batch_alter_table('process_instances', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_process_instances_definition_id'))


def downgrade() -> None:
    with op.batch_alter_table('process_instances', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_process_instances_definition_id'), ['definition_id'], unique=False)
    with op.batch_alter_table('tasks', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_tasks_definition_key'), ['definition_key'], unique=False)
    with op.batch_alter_table('audit_events', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_audit_events_instance_id'), ['instance_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_audit_events_definition_key'), ['definition_key'], unique=False)
        batch_op.create_index('ix_audit_events_action_time', ['action', 'occurred_at'], unique=False)
