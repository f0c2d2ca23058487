"""storage commitment requests and per-AE policy flags

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27 10:00:00

Adds ``commitment_request`` (Storage Commitment Push Model transactions waiting for or
done with their N-EVENT-REPORT, PS3.4 J.3) and the ``allow_*`` columns of ``remote_ae``
(what each registered AE may do; all true for existing rows).
"""
from alembic import op
import sqlalchemy as sa


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None

AE_FLAGS = ('allow_echo', 'allow_store', 'allow_find', 'allow_move', 'allow_get', 'allow_commitment')


def upgrade() -> None:
    op.create_table('commitment_request',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('transaction_uid', sa.String(length=64), nullable=False),
    sa.Column('calling_ae', sa.String(length=16), nullable=False),
    sa.Column('requested_at', sa.Float(), nullable=False),
    sa.Column('items', sa.Text(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('next_attempt_at', sa.Float(), nullable=False),
    sa.Column('last_error', sa.String(length=256), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_commitment_request'))
    )
    with op.batch_alter_table('commitment_request', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_commitment_request_transaction_uid'), ['transaction_uid'], unique=False)
        batch_op.create_index('ix_commitment_request_due', ['status', 'next_attempt_at'], unique=False)

    with op.batch_alter_table('remote_ae', schema=None) as batch_op:
        for name in AE_FLAGS:
            batch_op.add_column(sa.Column(name, sa.Boolean(), server_default=sa.true(), nullable=False))


def downgrade() -> None:
    with op.batch_alter_table('remote_ae', schema=None) as batch_op:
        for name in reversed(AE_FLAGS):
            batch_op.drop_column(name)

    with op.batch_alter_table('commitment_request', schema=None) as batch_op:
        batch_op.drop_index('ix_commitment_request_due')
        batch_op.drop_index(batch_op.f('ix_commitment_request_transaction_uid'))

    op.drop_table('commitment_request')
