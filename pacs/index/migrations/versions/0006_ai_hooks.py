"""AI engine hooks: subscriptions and posted results

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04 01:00:00

Adds ``ai_subscription`` and ``ai_result`` (ai_hooks/models.py).
"""
from alembic import op
import sqlalchemy as sa


revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('ai_subscription',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('filter', sa.Text(), nullable=False),
    sa.Column('trigger', sa.String(length=32), nullable=False),
    sa.Column('delivery', sa.String(length=16), nullable=False),
    sa.Column('url', sa.Text(), nullable=False),
    sa.Column('secret', sa.String(length=128), nullable=False),
    sa.Column('ae_title', sa.String(length=16), nullable=False),
    sa.Column('enabled', sa.Boolean(), nullable=False),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.Column('updated_at', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_ai_subscription')),
    sa.UniqueConstraint('name', name=op.f('uq_ai_subscription_name'))
    )
    op.create_table('ai_result',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('study_uid', sa.String(length=64), nullable=False),
    sa.Column('model_name', sa.String(length=64), nullable=False),
    sa.Column('model_version', sa.String(length=64), nullable=False),
    sa.Column('findings', sa.Integer(), nullable=False),
    sa.Column('critical', sa.Boolean(), nullable=False),
    sa.Column('priority_raised', sa.Boolean(), nullable=False),
    sa.Column('sr_sop_uid', sa.String(length=64), nullable=False),
    sa.Column('body', sa.Text(), nullable=False),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_ai_result'))
    )
    op.create_index(op.f('ix_ai_result_study_uid'), 'ai_result', ['study_uid'], unique=False)


def downgrade() -> None:
    op.drop_table('ai_result')
    op.drop_table('ai_subscription')
