"""worklist: scheduled procedure steps and MPPS

Revision ID: 0004
Revises: 0003 (0003_outbox)
Create Date: 2026-12-04 00:20:00

Adds ``worklist_item`` (Requested Procedure + Scheduled Procedure Step, PS3.4 K.6,
served by the Modality Worklist SCP and ``/api/worklist/items``) and ``mpps`` (Modality
Performed Procedure Step instances, PS3.4 F.7), models in ``worklist/models.py``.
"""
from alembic import op
import sqlalchemy as sa


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None

BIG_ID = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')


def _text(name: str, length: int) -> sa.Column:
    return sa.Column(name, sa.String(length=length), nullable=False)


def upgrade() -> None:
    op.create_table('worklist_item',
    sa.Column('id', BIG_ID, nullable=False),
    _text('status', 16), _text('priority', 16),
    _text('patient_id', 64), _text('issuer_of_patient_id', 64),
    _text('patient_name', 324), _text('patient_name_norm', 324),
    _text('patient_birth_date', 8), _text('patient_sex', 16),
    _text('accession_number', 16),
    _text('referring_physician_name', 324), _text('referring_physician_norm', 324),
    _text('requested_procedure_id', 16), _text('requested_procedure_description', 64),
    _text('procedure_code_value', 64), _text('procedure_code_scheme', 64), _text('procedure_code_meaning', 64),
    _text('study_uid', 64), _text('step_id', 16), _text('step_description', 64),
    _text('modality', 16), _text('station_ae', 16), _text('station_name', 16),
    _text('start_date', 8), _text('start_time', 16),
    _text('performing_physician_name', 324), _text('performing_physician_norm', 324),
    _text('mpps_uid', 64),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_worklist_item')),
    sa.UniqueConstraint('study_uid', name=op.f('uq_worklist_item_study_uid'))
    )
    with op.batch_alter_table('worklist_item', schema=None) as batch_op:
        for column in ('status', 'patient_id', 'patient_name_norm', 'accession_number', 'modality',
                       'station_ae', 'start_date', 'mpps_uid'):
            batch_op.create_index(batch_op.f(f'ix_worklist_item_{column}'), [column], unique=False)
        batch_op.create_index('ix_worklist_item_schedule', ['start_date', 'start_time'], unique=False)

    op.create_table('mpps',
    sa.Column('id', BIG_ID, nullable=False),
    _text('sop_instance_uid', 64), _text('status', 16),
    sa.Column('worklist_item_fk', BIG_ID, nullable=True),
    _text('study_uid', 64), _text('calling_ae', 16),
    sa.Column('dicom_json', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['worklist_item_fk'], ['worklist_item.id'],
                            name=op.f('fk_mpps_worklist_item_fk_worklist_item')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_mpps')),
    sa.UniqueConstraint('sop_instance_uid', name=op.f('uq_mpps_sop_instance_uid'))
    )
    with op.batch_alter_table('mpps', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_mpps_worklist_item_fk'), ['worklist_item_fk'], unique=False)
        batch_op.create_index(batch_op.f('ix_mpps_study_uid'), ['study_uid'], unique=False)


def downgrade() -> None:
    op.drop_table('mpps')
    op.drop_table('worklist_item')
