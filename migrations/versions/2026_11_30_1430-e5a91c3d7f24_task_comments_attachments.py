"""Comments and attachments on user tasks

``comments`` (plain text, author, time) and ``attachments`` (sanitized name, content type
from the extension, size, server-computed SHA-256, the bytes) hang off a task and its
instance; each is written with its audit event on the instance's chain. See
docs/notes/attachments.md.

Revision ID: e5a91c3d7f24
Revises: c5a8e3f1d2b9
Create Date: 2026-11-30 14:30:00
"""
import sqlalchemy as sa
from alembic import op

revision = 'e5a91c3d7f24'
down_revision = 'c5a8e3f1d2b9'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'comments',
        sa.Column('id', sa.String(length=36), nullable=False),
        sa.Column('task_id', sa.String(length=36), nullable=False),
        sa.Column('instance_id', sa.String(length=36), nullable=False),
        sa.Column('author', sa.String(length=100), nullable=False),
        sa.Column('message', sa.Text(), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('audit_seq', sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(['instance_id'], ['process_instances.id'],
                                name=op.f('fk_comments_instance_id_process_instances'), ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['task_id'], ['tasks.id'], name=op.f('fk_comments_task_id_tasks'),
                                ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_comments')),
    )
    op.create_index('ix_comments_task', 'comments', ['task_id', 'audit_seq'], unique=False)
    op.create_index('ix_comments_instance', 'comments', ['instance_id', 'audit_seq'], unique=False)
    op.create_table(
        'attachments',
        sa.Column('id', sa.String(length=36), nullable=False),
        sa.Column('task_id', sa.String(length=36), nullable=False),
        sa.Column('instance_id', sa.String(length=36), nullable=False),
        sa.Column('name', sa.String(length=255), nullable=False),
        sa.Column('content_type', sa.String(length=120), nullable=False),
        sa.Column('size', sa.BigInteger(), nullable=False),
        sa.Column('sha256', sa.String(length=64), nullable=False),
        sa.Column('description', sa.Text(), nullable=True),
        sa.Column('content', sa.LargeBinary(), nullable=False),
        sa.Column('uploaded_by', sa.String(length=100), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('audit_seq', sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(['instance_id'], ['process_instances.id'],
                                name=op.f('fk_attachments_instance_id_process_instances'), ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['task_id'], ['tasks.id'], name=op.f('fk_attachments_task_id_tasks'),
                                ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_attachments')),
    )
    op.create_index('ix_attachments_task', 'attachments', ['task_id', 'audit_seq'], unique=False)
    op.create_index('ix_attachments_instance', 'attachments', ['instance_id', 'audit_seq'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_attachments_instance', table_name='attachments')
    op.drop_index('ix_attachments_task', table_name='attachments')
    op.drop_table('attachments')
    op.drop_index('ix_comments_instance', table_name='comments')
    op.drop_index('ix_comments_task', table_name='comments')
    op.drop_table('comments')
