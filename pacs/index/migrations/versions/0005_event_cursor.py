"""event consumers' cursors, the reading worklist, reports, outbox HTTP methods

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04 00:45:00

Adds ``event_cursor`` (how far each named event consumer, pacs/consumers.py, has applied
the event log) and ``reading_item`` (the radiologists' reading worklist,
worklist/reading_models.py), ``report`` (report versions, same module) and the HTTP
``method`` of outbox messages (FHIR updates are PUTs).
"""
from alembic import op
import sqlalchemy as sa


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('event_cursor',
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('last_id', sa.BigInteger(), nullable=False),
    sa.Column('updated_at', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('name', name=op.f('pk_event_cursor'))
    )
    op.create_table('reading_item',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('study_uid', sa.String(length=64), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('priority', sa.Integer(), nullable=False),
    sa.Column('priority_reason', sa.String(length=256), nullable=False),
    sa.Column('assigned_to', sa.String(length=64), nullable=False),
    sa.Column('claimed_at', sa.Float(), nullable=True),
    sa.Column('patient_id', sa.String(length=64), nullable=False),
    sa.Column('patient_name', sa.String(length=324), nullable=False),
    sa.Column('accession_number', sa.String(length=64), nullable=False),
    sa.Column('study_date', sa.String(length=8), nullable=False),
    sa.Column('study_description', sa.String(length=64), nullable=False),
    sa.Column('modalities', sa.String(length=256), nullable=False),
    sa.Column('num_instances', sa.Integer(), nullable=False),
    sa.Column('entered_by', sa.String(length=32), nullable=False),
    sa.Column('entered_at', sa.Float(), nullable=False),
    sa.Column('updated_at', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_reading_item')),
    sa.UniqueConstraint('study_uid', name=op.f('uq_reading_item_study_uid'))
    )
    op.create_index(op.f('ix_reading_item_assigned_to'), 'reading_item', ['assigned_to'], unique=False)
    op.create_index(op.f('ix_reading_item_study_date'), 'reading_item', ['study_date'], unique=False)
    op.create_index('ix_reading_item_queue', 'reading_item', ['state', 'priority', 'entered_at'], unique=False)
    op.create_table('report',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('study_uid', sa.String(length=64), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('author', sa.String(length=64), nullable=False),
    sa.Column('findings', sa.Text(), nullable=False),
    sa.Column('impression', sa.Text(), nullable=False),
    sa.Column('codes', sa.Text(), nullable=False),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.Column('signed_at', sa.Float(), nullable=True),
    sa.Column('sr_sop_uid', sa.String(length=64), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_report')),
    sa.UniqueConstraint('study_uid', 'version', name='uq_report_version')
    )
    op.create_index(op.f('ix_report_study_uid'), 'report', ['study_uid'], unique=False)
    op.add_column('outbox_message', sa.Column('method', sa.String(length=8), nullable=False, server_default='POST'))


def downgrade() -> None:
    with op.batch_alter_table('outbox_message') as batch:
        batch.drop_column('method')
    op.drop_table('report')
    op.drop_table('reading_item')
    op.drop_table('event_cursor')
