"""external tasks and incidents

Service, send and non-DMN business-rule tasks wait as external tasks for workers
(fetch-and-lock by topic); incidents record what needs a person (an external task out
of retries, an unhandled BPMN error, later failed jobs).

Revision ID: 8c3e5a1f2b7d
Revises: 8c4f2a61d0b3
Create Date: 2026-11-30 12:00:00
"""
import sqlalchemy as sa
from alembic import op


revision = '8c3e5a1f2b7d'
down_revision = '8c4f2a61d0b3'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'external_tasks',
        sa.Column('id', sa.String(length=36), nullable=False),
        sa.Column('instance_id', sa.String(length=36), nullable=False),
        sa.Column('definition_id', sa.String(length=36), nullable=False),
        sa.Column('definition_key', sa.String(length=200), nullable=False),
        sa.Column('definition_version', sa.Integer(), nullable=False),
        sa.Column('business_key', sa.String(length=200), nullable=True),
        sa.Column('element_id', sa.String(length=200), nullable=False),
        sa.Column('element_type', sa.String(length=40), nullable=False),
        sa.Column('name', sa.String(length=400), nullable=False),
        sa.Column('topic', sa.String(length=400), nullable=False),
        sa.Column('priority', sa.Integer(), nullable=False),
        sa.Column('state', sa.String(length=20), nullable=False),
        sa.Column('variables', sa.JSON(), nullable=False),
        sa.Column('local_variables', sa.JSON(), nullable=False),
        sa.Column('extension_properties', sa.JSON(), nullable=False),
        sa.Column('worker_id', sa.String(length=255), nullable=True),
        sa.Column('lock_expires_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('retries', sa.Integer(), nullable=True),
        sa.Column('error_message', sa.Text(), nullable=True),
        sa.Column('error_details', sa.Text(), nullable=True),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('ended_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('completed_by', sa.String(length=255), nullable=True),
        sa.ForeignKeyConstraint(['instance_id'], ['process_instances.id'],
                                name=op.f('fk_external_tasks_instance_id_process_instances'), ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_external_tasks')),
    )
    with op.batch_alter_table('external_tasks', schema=None) as batch_op:
        batch_op.create_index('ix_external_tasks_state_topic', ['state', 'topic'], unique=False)
        batch_op.create_index('ix_external_tasks_instance_state', ['instance_id', 'state'], unique=False)
    op.create_table(
        'incidents',
        sa.Column('id', sa.String(length=36), nullable=False),
        sa.Column('kind', sa.String(length=40), nullable=False),
        sa.Column('instance_id', sa.String(length=36), nullable=True),
        sa.Column('definition_key', sa.String(length=200), nullable=True),
        sa.Column('element_id', sa.String(length=200), nullable=True),
        sa.Column('external_task_id', sa.String(length=36), nullable=True),
        sa.Column('job_id', sa.String(length=36), nullable=True),
        sa.Column('message', sa.Text(), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('resolved_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('resolved_by', sa.String(length=100), nullable=True),
        sa.Column('resolution', sa.String(length=40), nullable=True),
        sa.ForeignKeyConstraint(['instance_id'], ['process_instances.id'],
                                name=op.f('fk_incidents_instance_id_process_instances'), ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_incidents')),
    )
    with op.batch_alter_table('incidents', schema=None) as batch_op:
        batch_op.create_index('ix_incidents_open', ['resolved_at', 'created_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_incidents_instance_id'), ['instance_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_incidents_external_task_id'), ['external_task_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_incidents_job_id'), ['job_id'], unique=False)


def downgrade() -> None:
    op.drop_table('incidents')
    op.drop_table('external_tasks')
