"""SLA state, the shared clock offset, the notification outbox

``tasks.sla_state`` records what the SLA jobs announced; ``runtime_settings`` holds settings
every process must agree on (the admin clock's offset); ``outbox`` + ``outbox_deliveries``
hold notifications written with the event that caused them; users get a ``locale`` and an
``email``. See docs/notes/sla.md.

Revision ID: b7e2d9c41a05
Revises: 7c4e2a9b1d3f
Create Date: 2026-11-30 12:40:00
"""
import sqlalchemy as sa
from alembic import op

revision = 'b7e2d9c41a05'
down_revision = '7c4e2a9b1d3f'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('tasks', schema=None) as batch_op:
        batch_op.add_column(sa.Column('sla_state', sa.String(length=20), nullable=True))
    op.execute("UPDATE tasks SET sla_state = 'on_time' WHERE due_at IS NOT NULL")
    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.add_column(sa.Column('locale', sa.String(length=20), nullable=True))
        batch_op.add_column(sa.Column('email', sa.String(length=320), nullable=True))
    op.create_table(
        'runtime_settings',
        sa.Column('key', sa.String(length=100), nullable=False),
        sa.Column('value', sa.JSON(), nullable=False),
        sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('updated_by', sa.String(length=100), nullable=True),
        sa.PrimaryKeyConstraint('key', name=op.f('pk_runtime_settings')),
    )
    op.create_table(
        'outbox',
        sa.Column('id', sa.String(length=36), nullable=False),
        sa.Column('channel', sa.String(length=20), nullable=False),
        sa.Column('recipient', sa.String(length=400), nullable=False),
        sa.Column('event', sa.String(length=60), nullable=False),
        sa.Column('instance_id', sa.String(length=36), nullable=True),
        sa.Column('task_id', sa.String(length=36), nullable=True),
        sa.Column('subject', sa.Text(), nullable=False),
        sa.Column('body', sa.Text(), nullable=False),
        sa.Column('payload', sa.JSON(), nullable=False),
        sa.Column('state', sa.String(length=20), nullable=False),
        sa.Column('attempts', sa.Integer(), nullable=False),
        sa.Column('next_attempt_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('last_error', sa.Text(), nullable=True),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('delivered_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('read_at', sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_outbox')),
    )
    op.create_index('ix_outbox_recipient', 'outbox', ['channel', 'recipient', 'created_at'], unique=False)
    op.create_index('ix_outbox_pending', 'outbox', ['state', 'next_attempt_at'], unique=False)
    op.create_table(
        'outbox_deliveries',
        sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
        sa.Column('outbox_id', sa.String(length=36), nullable=False),
        sa.Column('attempt', sa.Integer(), nullable=False),
        sa.Column('at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('ok', sa.Boolean(), nullable=False),
        sa.Column('status_code', sa.Integer(), nullable=True),
        sa.Column('error', sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(['outbox_id'], ['outbox.id'], name=op.f('fk_outbox_deliveries_outbox_id_outbox'),
                                ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_outbox_deliveries')),
    )
    op.create_index(op.f('ix_outbox_deliveries_outbox_id'), 'outbox_deliveries', ['outbox_id'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_outbox_deliveries_outbox_id'), table_name='outbox_deliveries')
    op.drop_table('outbox_deliveries')
    op.drop_index('ix_outbox_pending', table_name='outbox')
    op.drop_index('ix_outbox_recipient', table_name='outbox')
    op.drop_table('outbox')
    op.drop_table('runtime_settings')
    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.drop_column('email')
        batch_op.drop_column('locale')
    with op.batch_alter_table('tasks', schema=None) as batch_op:
        batch_op.drop_column('sla_state')
