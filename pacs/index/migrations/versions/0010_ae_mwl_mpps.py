"""The AE policy names Modality Worklist and MPPS apart from find and store

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-04 00:00:00

Adds ``remote_ae.allow_mwl`` and ``remote_ae.allow_mpps`` (pacs/dimse/policy.py). They
start as the permissions that governed them before: MWL C-FIND followed ``allow_find``,
MPPS N-CREATE/N-SET followed ``allow_store``.
"""
from alembic import op
import sqlalchemy as sa


revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('remote_ae', sa.Column('allow_mwl', sa.Boolean(), server_default=sa.true(), nullable=False))
    op.add_column('remote_ae', sa.Column('allow_mpps', sa.Boolean(), server_default=sa.true(), nullable=False))
    op.execute("UPDATE remote_ae SET allow_mwl = allow_find, allow_mpps = allow_store")


def downgrade() -> None:
    with op.batch_alter_table('remote_ae') as batch:
        batch.drop_column('allow_mpps')
        batch.drop_column('allow_mwl')
