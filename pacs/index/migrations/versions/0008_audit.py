"""PHI access audit trail

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-04 01:30:00

Adds ``audit_event`` (pacs/audit.py).
"""
from alembic import op
import sqlalchemy as sa


revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('audit_event',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('time', sa.Float(), nullable=False),
    sa.Column('door', sa.String(length=8), nullable=False),
    sa.Column('action', sa.String(length=32), nullable=False),
    sa.Column('outcome', sa.String(length=8), nullable=False),
    sa.Column('status', sa.Integer(), nullable=False),
    sa.Column('reason', sa.String(length=256), nullable=False),
    sa.Column('actor', sa.String(length=128), nullable=False),
    sa.Column('credential', sa.String(length=64), nullable=False),
    sa.Column('ae_title', sa.String(length=16), nullable=False),
    sa.Column('source', sa.String(length=64), nullable=False),
    sa.Column('route', sa.String(length=128), nullable=False),
    sa.Column('patient_id', sa.String(length=64), nullable=False),
    sa.Column('study_uid', sa.String(length=64), nullable=False),
    sa.Column('details', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_audit_event'))
    )
    op.create_index(op.f('ix_audit_event_time'), 'audit_event', ['time'], unique=False)
    op.create_index(op.f('ix_audit_event_action'), 'audit_event', ['action'], unique=False)
    op.create_index(op.f('ix_audit_event_actor'), 'audit_event', ['actor'], unique=False)
    op.create_index(op.f('ix_audit_event_patient_id'), 'audit_event', ['patient_id'], unique=False)
    op.create_index(op.f('ix_audit_event_study_uid'), 'audit_event', ['study_uid'], unique=False)


def downgrade() -> None:
    op.drop_table('audit_event')
